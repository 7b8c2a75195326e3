"""The backprop family: ``bp``, ``bp-accum``, ``bp-ckpt`` and ``bp-deepsup``.

All four train end to end with one AdamW and one cosine schedule. ``bp``, ``bp-accum`` and
``bp-ckpt`` share one model (backbone -> global average pool -> Linear(K)) and differ only in how
a step spends memory; ``bp-deepsup`` is the architecture-matched baseline for DTG-FF, with a
learned head per conv layer on the very features DTG-FF scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..archs import ConvStack, build_conv_stack, build_torchvision, is_torchvision
from .base import PROPAGATION_DROPOUT, Runner, adamw_with_cosine, spatial_goodness


class ConvStackClassifier(nn.Module):
    """Backbone -> global average pool -> Linear(K); optionally checkpoints every conv block."""

    def __init__(self, backbone: ConvStack, classes: int, checkpoint_blocks: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.spec.channels[-1], classes)
        self.checkpoint_blocks = checkpoint_blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.backbone.layers():
            if self.checkpoint_blocks:
                # Keep only each block's input; recompute conv, ReLU, LayerNorm, dropout (same
                # RNG state) and pool in the backward pass.
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return self.head(x.mean(dim=(2, 3)))


class _CheckpointedModule(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return checkpoint(self.inner, x, use_reentrant=False)


def checkpoint_torchvision_blocks(model: nn.Module) -> nn.Module:
    """Wrap each member of the model's top-level Sequential children (ResNet's residual blocks,
    VGG's feature layers) in a non-reentrant checkpoint."""
    for child in model.children():
        if isinstance(child, nn.Sequential):
            for index, block in enumerate(child):
                if any(True for _ in block.parameters()):
                    child[index] = _CheckpointedModule(block)
    return model


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
    checkpoint_blocks = False

    def __init__(self, arch, res, classes, device="cpu", **options):
        super().__init__(arch, res, classes, device, **options)
        torch.manual_seed(self.seed)
        model = self.build_model()
        if not self.dropout:
            _without_dropout(model)
        self.model = self.place(model)
        self.optimizer, self.schedule = adamw_with_cosine(self.model.parameters(), self.total_steps)

    def build_model(self) -> nn.Module:
        if is_torchvision(self.arch):
            model = build_torchvision(self.arch, self.classes)
            return checkpoint_torchvision_blocks(model) if self.checkpoint_blocks else model
        dropout = PROPAGATION_DROPOUT if self.dropout else 0.0
        return ConvStackClassifier(
            build_conv_stack(self.arch, dropout), self.classes, checkpoint_blocks=self.checkpoint_blocks
        )

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The end-to-end training loss of one (micro-)batch."""
        return F.cross_entropy(self.model(images), labels)

    def modules(self):
        return [self.model]

    def optimizers(self):
        return [self.optimizer]

    def step(self, images, labels):
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(images, labels)
        loss.backward()
        self.optimizer.step()
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
            loss = self.loss(x, y) / chunks
            loss.backward()
            total += loss.detach()
        self.optimizer.step()
        self.schedule.step()
        return total


class BPCheckpointRunner(BPRunner):
    """The ``bp`` model with activation checkpointing around every conv block."""

    name = "bp-ckpt"
    summary = "bp with torch.utils.checkpoint (use_reentrant=False) around every conv block"
    checkpoint_blocks = True
    same_gradients_as = "bp"


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
        return sum(F.cross_entropy(logits, labels) for logits in self.model(images))
