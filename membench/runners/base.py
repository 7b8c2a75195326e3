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
from torch import nn

from ..archs import build_arch, is_layer_stack, objective_of
from ..schema import MEMORY_FORMATS, PRECISIONS, Cell
from .contract import RunnerContract

# The shared recipe (docs/runners.md, "Training recipe"): the propagation path's dropout is the
# conv stacks' (membench.archs.conv_stack); the optimizer's part is in optim.py.

# Standard tooling every runner takes (docs/runners.md, "Standard tooling"), as torch's objects;
# the settings' choices are membench.schema's.
AUTOCAST_DTYPES = dict(zip(PRECISIONS, (None, torch.bfloat16, torch.float16)))
TORCH_MEMORY_FORMATS = dict(zip(MEMORY_FORMATS, (torch.contiguous_format, torch.channels_last)))


class RunnerConfigError(ValueError):
    """A cell this runner cannot run (wrong arch kind, bad micro-batch, ...)."""


class Runner(ABC):
    """One training method, built for one cell.

    A runner is built from the ``Cell`` it runs (``membench.schema.Cell``: every setting, the
    tooling included, as one object, so a new setting reaches every runner with no keyword to
    add): its arch, resolution, class count, seed, micro-batch and tooling (precision under
    ``torch.autocast`` with weights and optimizer state in fp32 and fp16 through one
    ``torch.amp.GradScaler``; memory format; ``torch.compile`` mode; gradients kept or released
    at their update and optimizer state on the device or the host, ``membench.runners.optim``).
    ``total_steps`` is the length of the cosine schedule (warmup + measured steps by default),
    so every step of a cell runs with a learning rate from the same curve whatever the method;
    ``dropout=False`` turns every dropout off, which ``membench verify`` needs to compare methods.

    What the runner takes and what ``membench verify`` holds it to is its ``contract``
    (``RunnerContract``), declared on the class; ``check_cell`` and ``check_tooling`` refuse, before
    anything runs, what it cannot honour.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    contract: ClassVar[RunnerContract] = RunnerContract()
    # fp16's GradScaler starts here (torch's default, 2^16, suits BP's small gradients).
    initial_grad_scale: ClassVar[float] = 2.0**16

    def __init__(
        self,
        cell: Cell,
        device: torch.device | str = "cpu",
        *,
        total_steps: int | None = None,
        dropout: bool = True,
    ):
        self.cell = cell
        self.device = torch.device(device)
        self.total_steps = cell.warmup + cell.steps if total_steps is None else total_steps
        self.dropout = dropout
        self.release_grads = cell.grads == "released"
        self.state_on_host = cell.optimizer_state == "host"
        # Disabled (a pass-through) unless fp16, whose small gradients would underflow.
        self.scaler = torch.amp.GradScaler(
            self.device.type, init_scale=self.initial_grad_scale, enabled=cell.precision == "fp16"
        )

    # The cell's settings a step reads most, by their names.
    arch = property(lambda self: self.cell.arch)
    res = property(lambda self: self.cell.res)
    classes = property(lambda self: self.cell.classes)
    seed = property(lambda self: self.cell.seed)
    micro_batch = property(lambda self: self.cell.micro_batch)
    precision = property(lambda self: self.cell.precision)
    devices = property(lambda self: self.cell.devices)

    @classmethod
    def check_cell(cls, arch: str, res: int, batch: int, micro_batch: int | None) -> None:
        """Raise RunnerConfigError if this runner cannot run the cell (called before any run)."""
        if cls.contract.layer_stack and not is_layer_stack(arch, res):
            raise RunnerConfigError(
                f"{cls.name} needs a layer stack (vgg8, vgg11, vgg-dD-wW, resnet20 ... resnet110, "
                f"or a plugin model that is a membench.archs.LayerStack), not {arch}"
            )
        if cls.contract.micro_batch:
            mb = micro_batch if micro_batch is not None else cls.default_micro_batch(batch)
            if mb is not None and (mb <= 0 or batch % mb != 0):
                raise RunnerConfigError(
                    f"micro-batch {mb} does not divide batch {batch} for {cls.name}; choose a "
                    f"divisor of {batch}"
                )

    @classmethod
    def check_tooling(cls, cell) -> None:
        """Raise RunnerConfigError for update tooling this runner cannot honour (``cell``: a
        ``membench.schema.Cell``) and a token cell it cannot run (``check_input``); called
        before any run, after ``check_cell``."""
        cls.check_input(cell)
        if cell.grads == "released" and not cls.contract.grads_released:
            raise RunnerConfigError(
                f"{cls.name} cannot release gradients at their update (--grads released)"
            )
        if cell.optimizer_state == "host" and not cls.contract.host_optimizer_state:
            raise RunnerConfigError(
                f"{cls.name} cannot keep its optimizer state in host memory "
                "(--optimizer-state host)"
            )

    @classmethod
    def check_input(cls, cell) -> None:
        """Raise RunnerConfigError for a token cell (``cell.seq``) this runner cannot run: its
        objective (the arch's default where the cell names none) not among the contract's
        ``token_objectives`` (none: image cells only; the layer-local methods classify each
        block's goodness), or channels_last (a memory format of images)."""
        if not cell.takes_tokens:
            return
        taken = cls.contract.token_objectives
        if not taken:
            raise RunnerConfigError(
                f"{cls.name} runs image cells only, not token sequences ({cell.arch})"
            )
        objective = objective_of(cell.arch, cell.objective)
        if objective not in taken:
            raise RunnerConfigError(
                f"{cls.name} trains {' or '.join(taken)} on token sequences, not {objective}: "
                f"give --objective {taken[0]}"
            )
        if cell.memory_format != "contiguous":
            raise RunnerConfigError("--memory-format channels_last applies to images only")

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

    # What the protocol, a rank and `membench verify` read of a runner besides its step; each is
    # None (or empty) unless the runner has one.
    offloaded_peak_bytes: int | None = None  # most bytes of saved tensors held on the host
    offloaded_optimizer_bytes: int | None = None  # optimizer state held on the host
    layer_losses: list[torch.Tensor] | None = None  # a layer-local step's per-layer losses
    clock = None  # a rank's BusyClock (membench.multidevice.spanning): its time computing
    stages: list[range] | None = None  # a pipeline's layers per stage

    def held_tensors(self) -> list[torch.Tensor]:
        """Tensors kept from one step to the next outside the modules and optimizers (a pipeline
        stage's receive buffers), which a rank's tracker counts as held memory."""
        return []

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
        if self.cell.compile == "none":
            return fn
        return torch.compile(fn, mode=None if self.cell.compile == "default" else self.cell.compile)

    def place(self, module: nn.Module) -> nn.Module:
        """Move a freshly built module to the runner's device, in training mode.

        Modules are built on the CPU (so a seed gives the same weights on every device) and moved
        only when the device differs: ``Module.to`` on a model built under ``FakeTensorMode``
        fails even when nothing would move, and ``membench.planning.estimate`` builds runners that
        way.
        """
        if self.device != torch.device("cpu"):
            module = module.to(self.device)
        if self.cell.memory_format != "contiguous":
            for parameter in module.parameters():
                if parameter.dim() == 4:  # conv weights; the rest have no spatial layout
                    parameter.data = parameter.data.contiguous(
                        memory_format=TORCH_MEMORY_FORMATS[self.cell.memory_format]
                    )
        return module.train()

    def build_arch(self) -> nn.Module:
        """The cell's arch, built for this runner: its class count, dropout, and for a token
        model its objective and attention implementation."""
        return build_arch(
            self.arch,
            self.classes,
            dropout=self.dropout,
            objective=self.cell.objective,
            attn_implementation=self.cell.attn_implementation,
        )

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules() for p in m.parameters()]

    def local_parameters(self) -> list[list[nn.Parameter]]:
        """Layer-local runners: each layer's own parameters (what one local optimizer trains)."""
        raise NotImplementedError(
            f"{self.name} trains end to end; it has no layer-local parameters"
        )

    def buffers(self) -> list[torch.Tensor]:
        return [b for m in self.modules() for b in m.buffers()]
