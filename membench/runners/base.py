"""What every method runner is, and the recipe all of them share.

A runner owns one training method for one grid cell: it builds the model, optimizer(s) and
schedule in ``__init__`` and exposes one training step, ``step(images, labels)``. Subclass
``Runner``, set ``name``, and register the class under the ``membench.methods`` entry-point group;
the built-in runners register exactly that way.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..archs import is_layer_stack
from ..archs.conv_stack import PROPAGATION_DROPOUT  # noqa: F401 (its name here before the split)
from ..schema import MEMORY_FORMATS, PRECISIONS

# The shared recipe (docs/design.md, "Training recipe"): the propagation path's dropout is the
# conv stacks' (membench.archs.conv_stack); the optimizer's part is in optim.py.

# Standard tooling every runner takes (docs/design.md, "Standard tooling"), as torch's objects;
# the settings' choices are membench.schema's.
AUTOCAST_DTYPES = dict(zip(PRECISIONS, (None, torch.bfloat16, torch.float16)))
TORCH_MEMORY_FORMATS = dict(zip(MEMORY_FORMATS, (torch.contiguous_format, torch.channels_last)))


class RunnerConfigError(ValueError):
    """A cell this runner cannot run (wrong arch kind, bad micro-batch, ...)."""


class Runner(ABC):
    """One training method, built for one cell.

    ``total_steps`` is the length of the cosine schedule (warmup + measured steps), so every step
    of a cell runs with a learning rate from the same curve whatever the method.
    ``dropout=False`` turns every dropout off, which ``membench verify`` needs to compare methods.
    ``precision`` (fp32, bf16, fp16) runs forward and loss under ``torch.autocast`` with weights
    and optimizer state in fp32, and fp16 through one ``torch.amp.GradScaler`` for all of the
    runner's optimizers; ``memory_format`` places model and batch contiguous or channels_last;
    ``compile`` is a ``torch.compile`` mode for the runner's forward region(s). ``grads`` (kept
    or released at their update) and ``optimizer_state`` (on the device, or in host memory
    between updates) are the update's tooling (``membench.runners.optim``); a runner that
    honours them says so (``supports_grad_release``, ``supports_host_optimizer_state``), and
    ``check_tooling`` refuses what it cannot honour.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # Whether the runner needs a layer stack (docs/design.md, "Architectures"): the name is
    # older than the layer-stack contract, which the conv stacks were the first to meet.
    needs_conv_stack: ClassVar[bool] = True
    uses_micro_batch: ClassVar[bool] = False
    # Correctness contracts that `membench verify` checks (see membench/verify/): the name of a
    # runner whose gradients (dropout off) or first-step per-layer losses this one must reproduce.
    same_gradients_as: ClassVar[str | None] = None
    same_gradients_with_dropout: ClassVar[bool] = False  # ...also with dropout on (same masks)
    same_first_step_losses_as: ClassVar[str | None] = None
    same_layer_gradients_as: ClassVar[str | None] = None  # layer-local: per-layer parameters
    # The update's tooling this runner honours (docs/design.md, "Standard tooling").
    supports_grad_release: ClassVar[bool] = False
    supports_host_optimizer_state: ClassVar[bool] = False
    # Cells on several devices (docs/design.md): a runner that spans ``devices`` ranks of
    # torch.distributed (one instance per rank), and one that takes a pipeline ``schedule``.
    spans_devices: ClassVar[bool] = False
    uses_schedule: ClassVar[bool] = False
    default_schedule: ClassVar[str | None] = None
    # fp16's GradScaler starts here (torch's default, 2^16, suits BP's small gradients).
    initial_grad_scale: ClassVar[float] = 2.0**16

    def __init__(
        self,
        arch: str,
        res: int,
        classes: int,
        device: torch.device | str = "cpu",
        *,
        seed: int = 0,
        total_steps: int = 25,
        micro_batch: int | None = None,
        dropout: bool = True,
        precision: str = "fp32",
        memory_format: str = "contiguous",
        compile: str = "none",
        grads: str = "kept",
        optimizer_state: str = "device",
        devices: int = 1,
        schedule: str | None = None,
    ):
        self.arch, self.res, self.classes = arch, res, classes
        self.device = torch.device(device)
        self.seed, self.total_steps, self.micro_batch = seed, total_steps, micro_batch
        self.dropout = dropout
        self.precision, self.memory_format, self.compile_mode = precision, memory_format, compile
        self.release_grads = grads == "released"
        self.state_on_host = optimizer_state == "host"
        # (``schedule``: bp.py's runners name their cosine ``self.schedule``)
        self.devices, self.pipeline_schedule = devices, schedule
        # Disabled (a pass-through) unless fp16, whose small gradients would underflow.
        self.scaler = torch.amp.GradScaler(
            self.device.type, init_scale=self.initial_grad_scale, enabled=precision == "fp16"
        )

    @classmethod
    def check_cell(cls, arch: str, res: int, batch: int, micro_batch: int | None) -> None:
        """Raise RunnerConfigError if this runner cannot run the cell (called before any run)."""
        if cls.needs_conv_stack and not is_layer_stack(arch, res):
            raise RunnerConfigError(
                f"{cls.name} needs a layer stack (vgg8, vgg11, vgg-dD-wW, resnet20 ... resnet110, "
                f"or a plugin model that is a membench.archs.LayerStack), not {arch}"
            )
        if cls.uses_micro_batch:
            mb = micro_batch if micro_batch is not None else cls.default_micro_batch(batch)
            if mb is not None and (mb <= 0 or batch % mb != 0):
                raise RunnerConfigError(
                    f"micro-batch {mb} does not divide batch {batch} for {cls.name}; choose a "
                    f"divisor of {batch}"
                )

    @classmethod
    def check_tooling(cls, cell) -> None:
        """Raise RunnerConfigError for update tooling this runner cannot honour (``cell``: a
        ``membench.schema.Cell``); called before any run, after ``check_cell``."""
        if cell.grads == "released" and not cls.supports_grad_release:
            raise RunnerConfigError(
                f"{cls.name} cannot release gradients at their update (--grads released)"
            )
        if cell.optimizer_state == "host" and not cls.supports_host_optimizer_state:
            raise RunnerConfigError(
                f"{cls.name} cannot keep its optimizer state in host memory "
                "(--optimizer-state host)"
            )

    @staticmethod
    def default_micro_batch(batch: int) -> int:
        """The micro-batch a splitting runner uses when none is given: half the batch."""
        return batch // 2

    def local_batch(self, images: torch.Tensor, labels: torch.Tensor):
        """What of the cell's batch this runner holds: all of it on one device; a rank of a
        runner that spans devices keeps only its own part (its shard, or none of the images
        past a pipeline's first stage)."""
        return images, labels

    @abstractmethod
    def step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One full training step; returns the step's loss, detached (no host sync)."""

    @abstractmethod
    def modules(self) -> list[nn.Module]:
        """Every module the runner trains or evaluates (for parameter and buffer accounting)."""

    @abstractmethod
    def optimizers(self) -> list[torch.optim.Optimizer]: ...

    def autocast(self):
        """The context forward and loss run in: ``torch.autocast`` to the cell's precision, or
        nothing at fp32."""
        dtype = AUTOCAST_DTYPES[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def compiled(self, fn):
        """``fn`` under ``torch.compile`` at the cell's mode (compiled on its first call, in
        warmup); ``fn`` itself without compile."""
        if self.compile_mode == "none":
            return fn
        return torch.compile(fn, mode=None if self.compile_mode == "default" else self.compile_mode)

    def place(self, module: nn.Module) -> nn.Module:
        """Move a freshly built module to the runner's device, in training mode.

        Modules are built on the CPU (so a seed gives the same weights on every device) and moved
        only when the device differs: ``Module.to`` on a model built under ``FakeTensorMode``
        fails even when nothing would move, and ``membench.planning.estimate`` builds runners that
        way.
        """
        if self.device != torch.device("cpu"):
            module = module.to(self.device)
        if self.memory_format != "contiguous":
            for parameter in module.parameters():
                if parameter.dim() == 4:  # conv weights; the rest have no spatial layout
                    parameter.data = parameter.data.contiguous(
                        memory_format=TORCH_MEMORY_FORMATS[self.memory_format]
                    )
        return module.train()

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules() for p in m.parameters()]

    def local_parameters(self) -> list[list[nn.Parameter]]:
        """Layer-local runners: each layer's own parameters (what one local optimizer trains)."""
        raise NotImplementedError(
            f"{self.name} trains end to end; it has no layer-local parameters"
        )

    def buffers(self) -> list[torch.Tensor]:
        return [b for m in self.modules() for b in m.buffers()]


def spatial_goodness(z: torch.Tensor) -> torch.Tensor:
    """DTG-FF's goodness features: flatten(AdaptiveAvgPool2d(z**2, (2, 2))), dimension 4*C."""
    return F.adaptive_avg_pool2d(z.square(), (2, 2)).flatten(1)
