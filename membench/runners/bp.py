"""The backprop family: ``bp``, ``bp-accum``, ``bp-ckpt``, ``bp-sac``, ``bp-offload`` and
``bp-deepsup``.

All train end to end with one AdamW and one cosine schedule. ``bp``, ``bp-accum``, ``bp-ckpt``,
``bp-sac`` and ``bp-offload`` share one model (backbone -> global average pool -> Linear(K)) and
differ only in how a step spends memory (``saved_tensors`` has the tools); ``bp-deepsup`` is the
architecture-matched baseline for DTG-FF, with a learned head per conv layer on the very features
DTG-FF scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..archs import ConvStack, build_conv_stack, build_torchvision, is_torchvision
from .base import PROPAGATION_DROPOUT, Runner, adamw_with_cosine, spatial_goodness
from .saved_tensors import OffloadSavedTensors, checkpoint_torchvision_stages, checkpointed


class ConvStackClassifier(nn.Module):
    """Backbone -> global average pool -> Linear(K); with a ``checkpointing`` policy ("full" or
    "selective") around every conv layer (block and propagation path)."""

    def __init__(self, backbone: ConvStack, classes: int, checkpointing: str | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.spec.channels[-1], classes)
        self.checkpointing = checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.backbone.layers():
            if self.checkpointing:
                # full: keep only the layer's input and recompute conv, ReLU, LayerNorm, dropout
                # (same RNG state) and pool in backward; selective: keep the conv output too.
                x = checkpointed(layer, x, self.checkpointing)
            else:
                x = layer(x)
        return self.head(x.mean(dim=(2, 3)))


def _without_dropout(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


class BPRunner(Runner):
    """Vanilla end-to-end backprop."""

    name = "bp"
    summary = "end-to-end backprop: backbone -> GAP -> Linear(K), one AdamW"
    needs_conv_stack = False
    checkpointing: str | None = None  # "full" | "selective" (saved_tensors.CHECKPOINT_POLICIES)

    def __init__(self, arch, res, classes, device="cpu", **options):
        super().__init__(arch, res, classes, device, **options)
        torch.manual_seed(self.seed)
        model = self.build_model()
        if not self.dropout:
            _without_dropout(model)
        self.model = self.place(model)
        self.forward = self.compiled(self.model)  # the model itself without --compile
        self.optimizer, self.schedule = adamw_with_cosine(self.model.parameters(), self.total_steps)

    def build_model(self) -> nn.Module:
        if is_torchvision(self.arch):
            model = build_torchvision(self.arch, self.classes)
            if self.checkpointing:
                return checkpoint_torchvision_stages(model, self.checkpointing)
            return model
        dropout = PROPAGATION_DROPOUT if self.dropout else 0.0
        return ConvStackClassifier(build_conv_stack(self.arch, dropout), self.classes,
                                   checkpointing=self.checkpointing)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The end-to-end training loss of one (micro-)batch."""
        return F.cross_entropy(self.forward(images), labels)

    def modules(self):
        return [self.model]

    def optimizers(self):
        return [self.optimizer]

    def step(self, images, labels):
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.loss(images, labels)
        self.scaler.scale(loss).backward()  # the scaler passes everything through unless fp16
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        return loss.detach()


class BPAccumRunner(BPRunner):
    """The ``bp`` model, the batch split into micro-batches, one optimizer step per batch."""

    name = "bp-accum"
    summary = "bp with gradient accumulation over --micro-batch (default batch/2)"
    uses_micro_batch = True
    same_gradients_as = "bp"

    def step(self, images, labels):
        micro_batch = self.micro_batch or self.default_micro_batch(images.shape[0])
        chunks = images.shape[0] // micro_batch
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=images.device)
        for x, y in zip(images.split(micro_batch), labels.split(micro_batch)):
            # Mean CE scaled by 1/n sums to the full batch's mean CE, so the gradients match bp.
            with self.autocast():
                loss = self.loss(x, y) / chunks
            self.scaler.scale(loss).backward()
            total += loss.detach()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        return total


class BPCheckpointRunner(BPRunner):
    """The ``bp`` model with activation checkpointing around every conv layer."""

    name = "bp-ckpt"
    summary = "bp with torch.utils.checkpoint (use_reentrant=False) around every conv layer"
    checkpointing = "full"
    same_gradients_as = "bp"
    same_gradients_with_dropout = True  # the RNG state is preserved, so dropout recomputes alike


class BPSelectiveCheckpointRunner(BPCheckpointRunner):
    """Selective activation checkpointing: conv and matmul outputs kept, cheap ops recomputed."""

    name = "bp-sac"
    summary = "bp with selective checkpointing: conv/matmul outputs saved, ReLU/LayerNorm/dropout/pool recomputed"
    checkpointing = "selective"


class BPOffloadRunner(BPRunner):
    """The ``bp`` model with every tensor saved for backward moved to host memory."""

    name = "bp-offload"
    summary = "bp with saved tensors offloaded to host memory (pinned on CUDA) in forward"
    same_gradients_as = "bp"
    same_gradients_with_dropout = True

    def __init__(self, arch, res, classes, device="cpu", **options):
        super().__init__(arch, res, classes, device, **options)
        self.offload = OffloadSavedTensors(self.device)

    def step(self, images, labels):
        self.optimizer.zero_grad(set_to_none=True)
        with self.offload, self.autocast():  # the hooks go with what forward saves
            loss = self.loss(images, labels)
        self.scaler.scale(loss).backward()  # unpacks each saved tensor as backward needs it
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        return loss.detach()

    @property
    def offloaded_peak_bytes(self) -> int:
        """The most bytes held in host memory at once, over every step so far."""
        return self.offload.peak_bytes


class DeepSupModel(nn.Module):
    """A conv stack with a learned Linear(4*C_l, K) head on each layer's spatial goodness."""

    def __init__(self, backbone: ConvStack, classes: int):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleList(nn.Linear(4 * c, classes) for c in backbone.spec.channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer logits, first layer first."""
        logits = []
        for layer in self.backbone.layers():
            z = layer.block(x)
            logits.append(self.heads[layer.index](spatial_goodness(z)))
            x = layer.next_input(z)
        return logits


class BPDeepSupRunner(BPRunner):
    """Architecture-matched BP: end to end, loss = sum over layers of each head's CE."""

    name = "bp-deepsup"
    summary = "end-to-end BP with a learned head per conv layer on DTG-FF's goodness features"
    needs_conv_stack = True

    def build_model(self) -> nn.Module:
        dropout = PROPAGATION_DROPOUT if self.dropout else 0.0
        return DeepSupModel(build_conv_stack(self.arch, dropout), self.classes)

    def loss(self, images, labels):
        return sum(F.cross_entropy(logits, labels) for logits in self.forward(images))
