"""The backprop family: ``bp``, ``bp-accum``, ``bp-ckpt``, ``bp-sac``, ``bp-offload`` and
``bp-deepsup``.

All train end to end with AdamW and one cosine schedule, through one step (``BPRunner.step``).
``bp``, ``bp-accum``, ``bp-ckpt``, ``bp-sac`` and ``bp-offload`` share one model (backbone ->
global average pool -> Linear(K)) and differ only in how a step spends memory: micro-batches
(gradient accumulation; every method but ``bp`` and ``bp-deepsup`` takes ``--micro-batch``),
what forward saves for backward (``saved_tensors`` has the tools), and how the update holds its
gradients and optimizer state (``optim``); ``bp-deepsup`` is the architecture-matched baseline
for DTG-FF, with a learned head per conv layer on the very features DTG-FF scores.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..archs import ArchError, LayerStack, build_arch, without_dropout
from .base import Runner, RunnerConfigError, spatial_goodness
from .contract import RunnerContract
from .optim import PerParameterAdamW, WholeModelAdamW
from .saved_tensors import OffloadSavedTensors, checkpoint_torchvision_stages, checkpointed


class StackClassifier(nn.Module):
    """A layer stack -> global average pool -> Linear(K); with a ``checkpointing`` policy
    ("full" or "selective") around every layer (block and propagation path)."""

    def __init__(self, backbone: LayerStack, classes: int, checkpointing: str | None = None):
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


def build_layer_stack(runner: Runner) -> LayerStack:
    """The runner's arch as a layer stack (what bp-deepsup and DTG-FF train), dropout off
    unless the runner has it on."""
    stack = build_arch(runner.arch, runner.classes, dropout=runner.dropout)
    if not isinstance(stack, LayerStack):
        raise ArchError(
            f"{runner.name} needs a layer stack, and {runner.arch} is a "
            f'{type(stack).__name__} (docs/archs.md, "The plugin contract")'
        )
    return stack


class BPRunner(Runner):
    """Vanilla end-to-end backprop; every BP method is this step with its tools switched on."""

    name = "bp"
    summary = "end-to-end backprop: backbone -> GAP -> Linear(K), one AdamW"
    contract = RunnerContract(family="bp", grads_released=True, host_optimizer_state=True)
    checkpointing: str | None = None  # "full" | "selective" (saved_tensors.CHECKPOINT_POLICIES)

    def __init__(self, cell, device="cpu", **options):
        super().__init__(cell, device, **options)
        torch.manual_seed(self.seed)
        model = self.build_model()
        if not self.dropout:
            without_dropout(model)
        self.model = self.place(model)
        self.forward = self.compiled(self.model)  # the model itself without --compile
        if self.release_grads or self.state_on_host:
            self.update = PerParameterAdamW(
                self.model.parameters(),
                self.total_steps,
                self.device,
                release=self.release_grads,
                state_on_host=self.state_on_host,
            )
        else:
            self.update = WholeModelAdamW(self.model.parameters(), self.total_steps)
            # The recipe's optimizer and schedule, by the names runners subclassing bp use.
            self.optimizer, self.schedule = self.update.optimizer, self.update.schedule

    @classmethod
    def check_tooling(cls, cell) -> None:
        super().check_tooling(cell)
        if cell.grads == "released" and cell.micro_batch is not None:
            raise RunnerConfigError(
                f"{cls.name} with --micro-batch accumulates gradients over the "
                "micro-batches, so it cannot release them at their update "
                "(--grads released); drop one of the two"
            )
        if "fp16" == cell.precision and (
            cell.grads == "released" or cell.optimizer_state == "host"
        ):
            raise RunnerConfigError(
                f"{cls.name}: fp16's GradScaler steps one optimizer over every "
                "gradient, which per-parameter updates (--grads released, "
                "--optimizer-state host) do not have; use bf16"
            )

    @staticmethod
    def default_micro_batch(batch: int) -> int | None:
        """No split unless --micro-batch is given (bp-accum's default is batch/2)."""
        return None

    def build_model(self) -> nn.Module:
        """A layer stack with the GAP + Linear(K) head (checkpointed layer by layer), or the
        arch's own classifier (checkpointed at its stages)."""
        model = build_arch(self.arch, self.classes, dropout=self.dropout)
        if isinstance(model, LayerStack):
            return StackClassifier(model, self.classes, checkpointing=self.checkpointing)
        if self.checkpointing:
            return checkpoint_torchvision_stages(model, self.checkpointing)
        return model

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The end-to-end training loss of one (micro-)batch."""
        return F.cross_entropy(self.forward(images), labels)

    def saved_tensors(self) -> contextlib.AbstractContextManager:
        """Where forward's saved tensors go: nowhere special (bp-offload: host memory)."""
        return contextlib.nullcontext()

    def modules(self):
        return [self.model]

    def optimizers(self):
        return self.update.optimizers()

    def step(self, images, labels):
        """One end-to-end step: forward, loss and backward over the batch, or over each
        micro-batch with the loss x 1/n so the gradients accumulate to the batch's; then one
        AdamW update. With --grads released the update happens inside backward, parameter by
        parameter, each gradient freed at once (``optim.PerParameterAdamW``)."""
        parts = (
            list(zip(images.split(self.micro_batch), labels.split(self.micro_batch)))
            if self.micro_batch
            else [(images, labels)]
        )
        self.update.zero_grad()
        total = torch.zeros((), device=images.device) if len(parts) > 1 else None
        with self.update.in_backward():
            for x, y in parts:
                with self.saved_tensors(), self.autocast():
                    loss = self.loss(x, y) if total is None else self.loss(x, y) / len(parts)
                self.scaler.scale(
                    loss
                ).backward()  # the scaler passes everything through unless fp16
                if total is not None:
                    total += loss.detach()
        self.update.step(self.scaler)  # nothing left to do when the backward did it
        self.scaler.update()
        self.update.schedule_step()
        return loss.detach() if total is None else total

    @property
    def offloaded_optimizer_bytes(self) -> int | None:
        """Optimizer state held in host memory (None unless --optimizer-state host)."""
        return self.update.host_bytes if self.state_on_host else None


class BPAccumRunner(BPRunner):
    """The ``bp`` model, the batch split into micro-batches, one optimizer step per batch."""

    name = "bp-accum"
    summary = "bp with gradient accumulation over --micro-batch (default batch/2)"
    contract = BPRunner.contract.but(micro_batch=True, same_gradients_as="bp")

    @staticmethod
    def default_micro_batch(batch: int) -> int:
        return batch // 2


class BPCheckpointRunner(BPRunner):
    """The ``bp`` model with activation checkpointing around every conv layer; with
    --micro-batch, checkpointing and gradient accumulation together."""

    name = "bp-ckpt"
    summary = (
        "bp with torch.utils.checkpoint (use_reentrant=False) around every conv layer; "
        "--micro-batch M adds gradient accumulation"
    )
    checkpointing = "full"
    # The RNG state is preserved, so dropout recomputes alike: the same gradients with it on.
    contract = BPRunner.contract.but(
        micro_batch=True, same_gradients_as="bp", same_gradients_with_dropout=True
    )


class BPSelectiveCheckpointRunner(BPCheckpointRunner):
    """Selective activation checkpointing: conv and matmul outputs kept, cheap ops recomputed."""

    name = "bp-sac"
    summary = (
        "bp with selective checkpointing: conv/matmul outputs saved, ReLU/LayerNorm/"
        "dropout/pool recomputed; --micro-batch M adds gradient accumulation"
    )
    checkpointing = "selective"


class BPOffloadRunner(BPRunner):
    """The ``bp`` model with every tensor saved for backward moved to host memory; with
    --micro-batch, offloading and gradient accumulation together."""

    name = "bp-offload"
    summary = (
        "bp with saved tensors offloaded to host memory (pinned on CUDA) in forward; "
        "--micro-batch M adds gradient accumulation"
    )
    contract = BPRunner.contract.but(
        micro_batch=True, same_gradients_as="bp", same_gradients_with_dropout=True
    )

    def __init__(self, cell, device="cpu", **options):
        super().__init__(cell, device, **options)
        self.offload = OffloadSavedTensors(self.device)

    def saved_tensors(self):
        return self.offload  # the hooks go with what forward saves; backward unpacks them

    @property
    def offloaded_peak_bytes(self) -> int:
        """The most bytes held in host memory at once, over every step so far."""
        return self.offload.peak_bytes


class DeepSupModel(nn.Module):
    """A layer stack with a learned Linear(4*C_l, K) head on each layer's spatial goodness."""

    def __init__(self, backbone: LayerStack, classes: int):
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
    contract = BPRunner.contract.but(layer_stack=True)

    def build_model(self) -> nn.Module:
        return DeepSupModel(build_layer_stack(self), self.classes)

    def loss(self, images, labels):
        return sum(F.cross_entropy(logits, labels) for logits in self.forward(images))
