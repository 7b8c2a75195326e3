"""DTG-FF (paper Sec. 4, App. A and D.7): ``ff-naive`` and ``ff-pipelined``.

Each conv layer l trains on its own loss: spatial goodness u_l = flatten(AvgPool(z_l**2, 2x2)),
a learnable temperature T_l = 0.5 + 1.5 * sigmoid(alpha_l), and a fixed random readout
logits_l = (u_l / T_l) @ R_l + b_l, with R_l, b_l ~ N(0, 1/K) kept as buffers. Every layer has
its own AdamW, cosine schedule and gradient-norm clipping; no gradient crosses a layer boundary.
A classifier on the detached, globally pooled features of layers 1..L-1 trains with its own
AdamW; the backbone never sees its gradient.

The two runners compute the same per-layer losses and differ only in the schedule of one step,
which is the whole point of measuring them side by side. docs/design.md ("DTG-FF") explains the
method and why the two schedules differ in memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import clip_grad_norm_

from ..archs import ConvStack, build_conv_stack
from .base import PROPAGATION_DROPOUT, Runner, RunnerConfigError, adamw_with_cosine, spatial_goodness

T_MIN, T_MAX = 0.5, 2.0
CLIP_NORM = 1.0
CLASSIFIER_DROPOUT = 0.2
LABEL_SMOOTHING = 0.1
INFERENCE_MODES = ("concat", "logit-sum")


class GoodnessReadout(nn.Module):
    """Temperature-scaled spatial goodness through a fixed random projection to K logits."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(()))
        std = (1.0 / classes) ** 0.5
        self.register_buffer("projection", torch.randn(4 * channels, classes) * std)
        self.register_buffer("bias", torch.randn(classes) * std)

    def temperature(self) -> torch.Tensor:
        return T_MIN + (T_MAX - T_MIN) * torch.sigmoid(self.alpha)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (spatial_goodness(z) / self.temperature()) @ self.projection + self.bias


class DTGFF(nn.Module):
    """Backbone, one readout per layer, and the detached concat classifier."""

    def __init__(self, backbone: ConvStack, classes: int, classifier_dropout: float):
        super().__init__()
        self.backbone = backbone
        self.readouts = nn.ModuleList(GoodnessReadout(c, classes) for c in backbone.spec.channels)
        feature_dim = sum(backbone.spec.channels[1:])
        self.classifier = nn.Sequential(
            nn.BatchNorm1d(feature_dim), nn.Dropout(classifier_dropout), nn.Linear(feature_dim, classes)
        )

    def layer_parameters(self, layer: int) -> list[nn.Parameter]:
        """What layer l's optimizer trains: its conv and its temperature."""
        return [*self.backbone.layer(layer).parameters(), self.readouts[layer].alpha]

    @torch.no_grad()
    def propagate(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """Next layer's input from layer l's detached activation (LayerNorm, dropout, pool)."""
        return self.backbone.layer(layer).next_input(z.detach())

    @torch.no_grad()
    def classifier_features(self, images: torch.Tensor) -> torch.Tensor:
        """A full no_grad conv pass: GAP of every layer but the first, concatenated."""
        x, features = images, []
        for layer in self.backbone.layers():
            z = layer.block(x)
            if layer.index >= 1:
                features.append(z.mean(dim=(2, 3)))
            x = layer.next_input(z)
        return torch.cat(features, dim=1)

    @torch.no_grad()
    def infer_logits(self, images: torch.Tensor, how: str = "concat") -> torch.Tensor:
        """Inference (not timed; call it in eval mode): ``"concat"``, the classifier on the
        concatenated features, or ``"logit-sum"``, the sum over all layers of the fixed random
        readouts' logits (no trained head at all)."""
        if how not in INFERENCE_MODES:
            raise ValueError(f"unknown inference mode {how!r}; valid: {', '.join(INFERENCE_MODES)}")
        if how == "concat":
            return self.classifier(self.classifier_features(images))
        x, total = images, 0
        for layer in self.backbone.layers():
            z = layer.block(x)
            total = total + self.readouts[layer.index](z)
            x = layer.next_input(z)
        return total


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """The batch from its chunks (the one tensor itself when there is one, with no copy)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class _DTGFFRunner(Runner):
    """Shared construction; subclasses differ only in ``step``."""

    @classmethod
    def check_cell(cls, arch, res, batch, micro_batch):
        super().check_cell(arch, res, batch, micro_batch)
        if batch < 2:
            raise RunnerConfigError(f"{cls.name} needs a batch of at least 2 (its classifier's "
                                    f"BatchNorm1d cannot train on one sample), got {batch}")

    def __init__(self, arch, res, classes, device="cpu", **options):
        super().__init__(arch, res, classes, device, **options)
        torch.manual_seed(self.seed)
        self.model = self.place(DTGFF(
            build_conv_stack(arch, PROPAGATION_DROPOUT if self.dropout else 0.0),
            classes,
            CLASSIFIER_DROPOUT if self.dropout else 0.0,
        ))
        self.depth = len(self.model.backbone)
        self.layer_params = [self.model.layer_parameters(l) for l in range(self.depth)]
        self.layer_optimizers, self.layer_schedules = zip(
            *(adamw_with_cosine(params, self.total_steps) for params in self.layer_params)
        )
        self.classifier_optimizer, self.classifier_schedule = adamw_with_cosine(
            self.model.classifier.parameters(), self.total_steps
        )
        # Each layer's own region (block, readout and loss), compiled on its own with --compile
        # so the schedule between layers stays as written.
        self.local_loss = [self.compiled(lambda x, y, l=l: self._local_loss(l, x, y))
                           for l in range(self.depth)]
        self.layer_losses: list[torch.Tensor] = []

    def _local_loss(self, layer: int, x: torch.Tensor, labels: torch.Tensor):
        """Layer l's output z and its local loss: CE of the goodness readout of z."""
        z = self.model.backbone.layer(layer).block(x)
        return z, F.cross_entropy(self.model.readouts[layer](z), labels)

    def modules(self):
        return [self.model]

    def optimizers(self):
        return [*self.layer_optimizers, self.classifier_optimizer]

    def local_parameters(self):
        return [list(params) for params in self.layer_params]

    clip_norm = CLIP_NORM  # `membench verify` lifts it to compare gradients before clipping

    def _clip_and_step(self, layer: int) -> None:
        """Layer l's update: clip its gradient norm to CLIP_NORM (unscaled first under fp16),
        then its AdamW and cosine step."""
        self.scaler.unscale_(self.layer_optimizers[layer])
        clip_grad_norm_(self.layer_params[layer], self.clip_norm)
        self.scaler.step(self.layer_optimizers[layer])
        self.layer_schedules[layer].step()

    def _classifier_step(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.classifier_optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = F.cross_entropy(self.model.classifier(features), labels,
                                   label_smoothing=LABEL_SMOOTHING)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.classifier_optimizer)
        self.classifier_schedule.step()
        return loss.detach()


class FFNaiveRunner(_DTGFFRunner):
    """DTG-FF as first released: every layer's graph alive at once, then a second conv pass."""

    name = "ff-naive"
    summary = "DTG-FF, naive: all local losses in one graph, one backward, then a no_grad re-pass"

    def step(self, images, labels):
        model = self.model
        for optimizer in self.layer_optimizers:
            optimizer.zero_grad(set_to_none=True)

        # 1. Forward with grad through every layer; each layer's graph stays alive.
        x, losses = images, []
        with self.autocast():
            for layer in model.backbone.layers():
                z, loss = self.local_loss[layer.index](x, labels)
                losses.append(loss)
                if not layer.is_last:  # so x keeps the last layer's input alive until the end
                    x = model.propagate(layer.index, z)

        # 2. One backward of the sum (no cross-layer path: inputs were detached), per-layer steps.
        self.scaler.scale(torch.stack(losses).sum()).backward()
        for layer in range(self.depth):
            self._clip_and_step(layer)

        # 3. A second, no_grad pass recomputes every conv for the classifier's features.
        with self.autocast():
            features = model.classifier_features(images)
        classifier_loss = self._classifier_step(features, labels)
        self.scaler.update()
        self.layer_losses = [loss.detach() for loss in losses]
        return torch.stack(self.layer_losses).sum() + classifier_loss


class FFPipelinedRunner(_DTGFFRunner):
    """DTG-FF in a single conv pass: layer by layer, train, free the graph, then propagate."""

    name = "ff-pipelined"
    summary = ("DTG-FF, pipelined: per layer forward -> backward -> step -> propagate z.detach(); "
               "--micro-batch M runs each layer's forward/backward in chunks of M")
    same_first_step_losses_as = "ff-naive"
    same_layer_gradients_as = "ff-naive"
    uses_micro_batch = True

    @staticmethod
    def default_micro_batch(batch: int) -> int | None:
        """No split unless --micro-batch is given: the paper's pipelined step."""
        return None

    @staticmethod
    def loss_share(chunk: int, batch: int) -> float:
        """M/B: each chunk's mean loss times this sums to the whole batch's mean loss."""
        return chunk / batch

    def step(self, images, labels):
        """One DTG-FF step in the paper's pipelined schedule (App. D.7)::

            x = images                                     B x 3 x H x W
            for each layer l:
                z_l    = block_l(x)                        forward with grad, B x C_l x H_l x W_l
                loss_l = CE(readout_l(z_l), labels)        the local loss
                backward(loss_l)                           frees layer l's graph
                clip(grad_l, 1); AdamW step of layer l
                x      = propagate_l(z_l.detach())         the next input, from the pre-step z_l
                feature_l = GAP(z_l)                       B x C_l, for the classifier (l >= 1)
            classifier step on concat(feature_1 .. feature_{L-1})

        With ``--micro-batch M`` each layer's forward, loss and backward run in chunks of M
        (loss x M/B, the gradient accumulating), then one clip and one step: the same update,
        one chunk's graph alive at a time.
        """
        x, features, self.layer_losses = images, [], []
        for layer in self.model.backbone.layers():
            outputs = self._train_layer(layer, x, labels)  # its chunks' z, detached
            feature, x = self._propagate(layer, outputs, x)
            if feature is not None:
                features.append(feature)
        classifier_loss = self._classifier_step(torch.cat(features, dim=1), labels)
        self.scaler.update()
        return torch.stack(self.layer_losses).sum() + classifier_loss

    def _train_layer(self, layer, x: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        """Forward, local loss and backward of one layer, chunk by chunk (the whole batch
        without --micro-batch), then its clip and step. Returns each chunk's z, detached: the
        graph is gone, so only one chunk's graph ever existed."""
        index, batch = layer.index, x.shape[0]
        chunk = self.micro_batch or batch
        self.layer_optimizers[index].zero_grad(set_to_none=True)
        outputs, losses = [], []
        for x_part, y_part in zip(x.split(chunk), labels.split(chunk)):
            with self.autocast():
                z_part, loss = self.local_loss[index](x_part, y_part)
            if chunk != batch:
                loss = loss * self.loss_share(x_part.shape[0], batch)
            self.scaler.scale(loss).backward()
            outputs.append(z_part.detach())
            losses.append(loss.detach())
            del z_part, loss
        self._clip_and_step(index)
        self.layer_losses.append(losses[0] if len(losses) == 1 else torch.stack(losses).sum())
        return outputs

    def _propagate(self, layer, outputs: list[torch.Tensor], x: torch.Tensor
                   ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Only after the layer's step: its classifier feature and the next layer's input, both
        from the detached outputs (computed with the pre-step weights, as in the paper), chunk
        by chunk, each chunk's output freed as soon as it has been used. The last layer feeds
        no next input, so ``x`` is returned as it was."""
        feature_parts, next_parts = [], []
        while outputs:
            z = outputs.pop(0)  # chunk x C_l x H_l x W_l
            if layer.index >= 1:
                feature_parts.append(z.mean(dim=(2, 3)))  # chunk x C_l
            if not layer.is_last:
                with self.autocast():
                    next_parts.append(self.model.propagate(layer.index, z))
            del z
        feature = _joined(feature_parts) if feature_parts else None
        return feature, (_joined(next_parts) if next_parts else x)
