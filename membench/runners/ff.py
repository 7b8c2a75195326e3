"""DTG-FF (paper Sec. 4, App. A and D.7): ``ff-naive`` and ``ff-pipelined``.

Each conv layer l trains on its own loss: spatial goodness u_l = flatten(AvgPool(z_l**2, 2x2)),
a learnable temperature T_l = 0.5 + 1.5 * sigmoid(alpha_l), and a fixed random readout
logits_l = (u_l / T_l) @ R_l + b_l, with R_l, b_l ~ N(0, 1/K) kept as buffers. Every layer has
its own AdamW, cosine schedule and gradient-norm clipping; no gradient crosses a layer boundary.
A classifier on the detached, globally pooled features of layers 1..L-1 trains with its own
AdamW; the backbone never sees its gradient.

The two runners compute the same per-layer losses and differ only in the schedule of one step,
which is the whole point of measuring them side by side. docs/runners.md ("DTG-FF") explains the
method and why the two schedules differ in memory.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import clip_grad_norm_

from ..archs import LayerStack
from ..schema import CLASSIFICATION
from .base import AUTOCAST_DTYPES, Runner, RunnerConfigError
from .bp import build_layer_stack
from .contract import RunnerContract
from .optim import HostState, adamw_with_cosine

T_MIN, T_MAX = 0.5, 2.0
CLIP_NORM = 1.0
CLASSIFIER_DROPOUT = 0.2
LABEL_SMOOTHING = 0.1
INFERENCE_MODES = ("concat", "logit-sum")


class GoodnessReadout(nn.Module):
    """Temperature-scaled goodness through a fixed random projection to K logits; ``goodness``
    is the stack's (``LayerStack.goodness``: spatial for maps, token-wise for sequences)."""

    def __init__(self, channels: int, classes: int, goodness=LayerStack.goodness):
        super().__init__()
        self.goodness = goodness
        self.alpha = nn.Parameter(torch.zeros(()))
        std = (1.0 / classes) ** 0.5
        self.register_buffer("projection", torch.randn(4 * channels, classes) * std)
        self.register_buffer("bias", torch.randn(classes) * std)

    def temperature(self) -> torch.Tensor:
        return T_MIN + (T_MAX - T_MIN) * torch.sigmoid(self.alpha)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        goodness = self.goodness(z)
        if goodness.dtype == torch.float16:
            # The temperature's gradient sums goodness x its gradient over the batch and every
            # feature; in fp16, scaled by the GradScaler (2^16 at first), that sum passes fp16's
            # 65504 (a BatchNorm stack's first layer: -inf), the layer's clip then turns every
            # gradient NaN and fp16 cells never take their first steps. Divided in fp32, the sum
            # is fp32's; the matmul still runs in fp16. bf16 has fp32's range: unchanged.
            goodness = goodness.float()
        return (goodness / self.temperature()) @ self.projection + self.bias


class DTGFF(nn.Module):
    """Backbone, one readout per layer, and the detached concat classifier."""

    def __init__(self, backbone: LayerStack, classes: int, classifier_dropout: float):
        super().__init__()
        self.backbone = backbone
        self.readouts = nn.ModuleList(
            GoodnessReadout(c, classes, backbone.goodness) for c in backbone.spec.channels
        )
        feature_dim = sum(backbone.spec.channels[1:])
        self.classifier = nn.Sequential(
            nn.BatchNorm1d(feature_dim),
            nn.Dropout(classifier_dropout),
            nn.Linear(feature_dim, classes),
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
        """A full no_grad pass: the pooled output (``LayerStack.pooled``: GAP of a map, the mean
        over a sequence's tokens) of every layer but the first, concatenated."""
        x, features = images, []
        for layer in self.backbone.layers():
            z = layer.block(x)
            if layer.index >= 1:
                features.append(self.backbone.pooled(z))
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


class _DTGFFRunner(Runner):
    """Shared construction and updates; subclasses differ only in ``step``."""

    contract = RunnerContract(
        family="ff",
        layer_stack=True,
        token_objectives=(CLASSIFICATION,),  # a readout per block classifies its goodness
        grads_released=True,
        host_optimizer_state=True,
    )
    # A layer's gradient is its own loss's, taken right at the layer: O(1), not a deep chain's
    # small one. At torch's 2^16 the first fp16 step overflowed (and was skipped) on every
    # layer stack measured but the smallest: first-step fp32 gradients reached 8.5 (plain-stack,
    # res 8, batch 8), 6.9 (resnet20), 1.9 (vgg8, res 32, batch 32), times 2^16 past fp16's
    # 65504 (tests/archs/test_example_models.py shows the overflow). 2^12 fits gradients up to 15.9;
    # the scaler grows it after 2000 steps without an overflow, as ever.
    initial_grad_scale = 2.0**12

    @classmethod
    def check_cell(cls, arch, res, batch, micro_batch):
        super().check_cell(arch, res, batch, micro_batch)
        if batch < 2:
            raise RunnerConfigError(
                f"{cls.name} needs a batch of at least 2 (its classifier's "
                f"BatchNorm1d cannot train on one sample), got {batch}"
            )

    def __init__(self, cell, device="cpu", **options):
        super().__init__(cell, device, **options)
        torch.manual_seed(self.seed)
        self.model = self.place(
            DTGFF(
                build_layer_stack(self),
                self.classes,
                CLASSIFIER_DROPOUT if self.dropout else 0.0,
            )
        )
        self.depth = len(self.model.backbone)
        self.layer_params = [self.model.layer_parameters(l) for l in range(self.depth)]
        self.layer_optimizers, self.layer_schedules = zip(
            *(adamw_with_cosine(params, self.total_steps) for params in self.layer_params)
        )
        self.classifier_optimizer, self.classifier_schedule = adamw_with_cosine(
            self.model.classifier.parameters(), self.total_steps
        )
        # --optimizer-state host: each optimizer's moments come to the device for its step only.
        self.host_state = (
            {o: HostState(o, self.device) for o in self.optimizers()} if self.state_on_host else {}
        )
        # Each layer's own region (block, readout and loss), compiled on its own with --compile
        # so the schedule between layers stays as written.
        self.local_loss = [
            self.compiled(lambda x, y, l=l: self._local_loss(l, x, y)) for l in range(self.depth)
        ]
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

    def _step(self, optimizer: torch.optim.Optimizer) -> None:
        """One optimizer's AdamW step (through the fp16 scaler), its moments on the device only
        for it with --optimizer-state host, its gradients freed right after with --grads
        released."""
        host = self.host_state.get(optimizer)
        with host.on_device() if host is not None else contextlib.nullcontext():
            self.scaler.step(optimizer)
        if self.release_grads:
            optimizer.zero_grad(set_to_none=True)

    def _clip_and_step(self, layer: int) -> None:
        """Layer l's update: clip its gradient norm to CLIP_NORM (unscaled first under fp16),
        then its AdamW and cosine step."""
        self.scaler.unscale_(self.layer_optimizers[layer])
        clip_grad_norm_(self.layer_params[layer], self.clip_norm)
        self._step(self.layer_optimizers[layer])
        self.layer_schedules[layer].step()

    def _classifier_step(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.classifier_optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = F.cross_entropy(
                self.model.classifier(features), labels, label_smoothing=LABEL_SMOOTHING
            )
        self.scaler.scale(loss).backward()
        self._step(self.classifier_optimizer)
        self.classifier_schedule.step()
        return loss.detach()

    @property
    def offloaded_optimizer_bytes(self) -> int | None:
        """Optimizer state held in host memory (None unless --optimizer-state host)."""
        if not self.state_on_host:
            return None
        return sum(state.host_bytes for state in self.host_state.values())


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
    summary = (
        "DTG-FF, pipelined: per layer forward -> backward -> step -> propagate z.detach(); "
        "--micro-batch M runs each layer's forward/backward in chunks of M"
    )
    contract = _DTGFFRunner.contract.but(
        micro_batch=True, same_first_step_losses_as="ff-naive", same_layer_gradients_as="ff-naive"
    )

    @staticmethod
    def default_micro_batch(batch: int) -> int | None:
        """No split unless --micro-batch is given: the paper's pipelined step."""
        return None

    @staticmethod
    def loss_share(chunk: int, batch: int) -> float:
        """M/B: each chunk's mean loss times this sums to the whole batch's mean loss."""
        return chunk / batch

    def chunked(self, batch: int) -> bool:
        """Whether a layer of a batch of ``batch`` rows trains in chunks (``--micro-batch M``
        smaller than the batch) rather than whole, as the paper's step does."""
        return self.micro_batch is not None and self.micro_batch < batch

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
        (``train_chunk``: loss x M/B, the gradient accumulating), and each chunk is propagated as
        soon as its backward has freed its graph, into the next input and feature of the whole
        batch: the layer's full-batch output never exists and the boundary is held once. Then
        one clip and one step: the same update (z is the pre-step weights' either way, and the
        chunks' dropout masks are drawn in the same order).
        """
        x, features, self.layer_losses = images, [], []
        for layer in self.model.backbone.layers():
            self.layer_optimizers[layer.index].zero_grad(set_to_none=True)
            boundary = Boundary(self, layer, batch=x.shape[0])
            if self.chunked(x.shape[0]):
                losses = [
                    self.train_chunk(layer, x_part, y_part, share, boundary, start)
                    for start, x_part, y_part, share in self.chunks(x, labels)
                ]
                self._clip_and_step(layer.index)
                loss = torch.stack(losses).sum()
                # the chunks' loss scalars, summed: not held through the next layer's chunks
                del losses
            else:
                with self.autocast():
                    z, loss = self.local_loss[layer.index](x, labels)  # forward, local loss
                self.scaler.scale(loss).backward()  # frees layer l's graph
                self._clip_and_step(layer.index)  # clip to norm 1, then AdamW
                boundary.add(z.detach(), 0)  # propagate the pre-step output, after the step
                # z's only other holder is the boundary's input to the propagation, done now:
                # drop it, so layer l's output is gone before layer l+1 allocates its own.
                del z
            self.layer_losses.append(loss.detach())
            if boundary.feature is not None:
                features.append(boundary.feature)
            if boundary.next_input is not None:  # none after the last layer
                x = boundary.next_input
        classifier_loss = self._classifier_step(torch.cat(features, dim=1), labels)
        self.scaler.update()
        return torch.stack(self.layer_losses).sum() + classifier_loss

    def chunks(self, x: torch.Tensor, labels: torch.Tensor):
        """(first row, images, labels, loss share M/B) of each chunk of ``--micro-batch`` rows."""
        start = 0
        for x_part, y_part in zip(x.split(self.micro_batch), labels.split(self.micro_batch)):
            yield start, x_part, y_part, self.loss_share(x_part.shape[0], x.shape[0])
            start += x_part.shape[0]

    def train_chunk(
        self,
        layer,
        x: torch.Tensor,
        labels: torch.Tensor,
        share: float,
        boundary: Boundary,
        start: int,
    ) -> torch.Tensor:
        """Layer ``layer``'s forward, local loss (x ``share`` of the batch) and backward on one
        chunk, the gradient accumulating; the chunk's output then propagated into ``boundary``
        at row ``start``, its graph already freed. Its loss, detached. The micro-batched step
        and ``ff-pp``'s ranks train every chunk this way."""
        with self.autocast():
            z, loss = self.local_loss[layer.index](x, labels)
        loss = loss * share
        self.scaler.scale(loss).backward()  # frees the chunk's graph
        boundary.add(z.detach(), start)  # chunk x C_l x H_l x W_l: its feature and next input
        return loss.detach()  # z and the chunk's loss go with this frame


class Boundary:
    """What of one layer outlives its step, for the whole batch: the classifier feature (GAP of
    z: B x C_l, layers 1..L-1) and the next layer's input (the propagation path on z.detach()),
    filled chunk by chunk into tensors made once for the whole batch (a single whole-batch
    chunk is kept as it is, with no copy)."""

    def __init__(self, runner: FFPipelinedRunner, layer, batch: int):
        self.runner, self.layer, self.batch = runner, layer, batch
        self.feature: torch.Tensor | None = None
        self.next_input: torch.Tensor | None = None

    def _put(self, whole: torch.Tensor | None, part: torch.Tensor, start: int) -> torch.Tensor:
        if part.shape[0] == self.batch:
            return part
        if whole is None:
            whole = torch.empty((self.batch, *part.shape[1:]), dtype=part.dtype, device=part.device)
        whole[start : start + part.shape[0]].copy_(part)
        return whole

    def add(self, z: torch.Tensor, start: int) -> None:
        """The feature and next input of batch rows ``start ..`` from their detached ``z``.
        Under autocast the next input is held in the autocast dtype where the next layer casts
        its input to it first thing (a conv: ``LayerStack.casts_input_first``), so holding it so
        changes no value, and halves the boundary (the propagation path's LayerNorm leaves it in
        fp32); a transformer block adds its input to its output, so its input stays as it is."""
        backbone = self.runner.model.backbone
        if self.layer.index >= 1:
            self.feature = self._put(self.feature, backbone.pooled(z), start)
        if not self.layer.is_last:
            with self.runner.autocast():
                part = self.runner.model.propagate(self.layer.index, z)
            dtype = AUTOCAST_DTYPES[self.runner.precision]
            if dtype is not None and part.dtype != dtype and backbone.casts_input_first:
                part = part.to(dtype)
            self.next_input = self._put(self.next_input, part, start)
