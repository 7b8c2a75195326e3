"""What every runner that spans devices shares (docs/multi-device.md).

A runner that spans devices is built once per rank of ``torch.distributed``, inside a process
group the cell's launcher made (``membench.multidevice.launch``), or a fake one an estimate made
(``membench.multidevice.fake_group``); each rank's instance trains its part. This module holds the
refusals they share, the rank's view of the group, the split of a conv stack into pipeline
stages, and the clock that measures how much of a step a rank spends computing (the rest of a
pipeline's step is idle: its bubble, and waiting for its neighbours).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
import torch.distributed as dist

from ..archs import conv_stack_spec, is_conv_stack
from ..runners.base import Runner, RunnerConfigError
from .split import balanced_stages, conv_costs

FAKE_BACKEND = "fake"  # the backend of torch.testing's fake process group (estimates)
# What a runner that spans devices changes in the contract of the method it extends
# (RunnerContract.but(**SPANS_DEVICES)): it runs on ranks, and takes neither update tool
# (docs/multi-device.md, "Refusals"); a pipeline also splits the batch into
# micro-batches and a conv stack into stages.
SPANS_DEVICES = dict(spans_devices=True, grads_released=False, host_optimizer_state=False)
PIPELINE = dict(SPANS_DEVICES, micro_batch=True, layer_stack=True)


class SpansDevices:
    """Mixin for a ``Runner`` that spans ``cell.devices`` ranks: put it first in the bases."""

    @classmethod
    def check_tooling(cls, cell) -> None:
        super().check_tooling(cell)
        if cell.devices < 2:
            raise RunnerConfigError(
                f"{cls.name} spans devices: give --devices 2 or more (on one "
                "device, use its single-device method)"
            )
        if cell.compile != "none":
            raise RunnerConfigError(f"{cls.name} does not take --compile (ranks run eager)")
        if cell.precision == "fp16":
            raise RunnerConfigError(
                f"{cls.name} does not take fp16: its GradScaler would have to "
                "agree across ranks on skipping a step; use bf16"
            )
        cls.check_devices(cell)

    @classmethod
    def check_devices(cls, cell) -> None:
        """Raise RunnerConfigError for a device count this runner cannot split the cell over."""


class Pipeline(SpansDevices):
    """Mixin for a pipeline across devices: a stage of contiguous layers per rank, the batch in
    micro-batches (chunks) of ``--micro-batch``, eight of them unless given."""

    @staticmethod
    def default_micro_batch(batch: int) -> int:
        return max(1, batch // 8)

    @classmethod
    def check_cell(cls, arch, res, batch, micro_batch) -> None:
        # The stages are balanced over each conv layer's cost, which only a conv stack's spec
        # gives before anything is built (docs/archs.md, "Conv stacks").
        if not is_conv_stack(arch):
            raise RunnerConfigError(
                f"{cls.name} splits a conv stack into pipeline stages "
                f"(vgg8, vgg11, vgg-dD-wW), not {arch}"
            )
        super().check_cell(arch, res, batch, micro_batch)

    @classmethod
    def check_devices(cls, cell) -> None:
        pipeline_check(cls.name, cell)


def data_parallel_check(name: str, cell) -> None:
    """The batch must split evenly over the ranks of a data-parallel runner."""
    if cell.batch % cell.devices:
        raise RunnerConfigError(
            f"{name}: batch {cell.batch} does not split over {cell.devices} "
            "devices; choose a multiple of --devices"
        )


def pipeline_check(name: str, cell) -> None:
    """A pipeline needs a conv stack with at least one layer per stage."""
    depth = conv_stack_spec(cell.arch).depth
    if cell.devices > depth:
        raise RunnerConfigError(
            f"{name}: {cell.arch} has {depth} layer(s), fewer than the "
            f"{cell.devices} pipeline stages --devices asks for"
        )


def group_view(runner: Runner) -> tuple[int, int]:
    """(rank, world size) of the process group this rank's runner runs in; RunnerConfigError
    outside one, or in one of another size than the cell's."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RunnerConfigError(
            f"{runner.name} spans devices and runs only inside torch."
            "distributed ranks: measure it as a cell with --devices N"
        )
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != runner.devices:
        raise RunnerConfigError(
            f"{runner.name}: process group of {world} rank(s) for a cell of "
            f"{runner.devices} device(s)"
        )
    return rank, world


def estimating() -> bool:
    """Whether this rank runs in an estimate's fake process group (nothing is communicated)."""
    return dist.get_backend() == FAKE_BACKEND


def rank_part(tensor: torch.Tensor | None, rank: int, world: int) -> torch.Tensor | None:
    """Rank ``rank``'s contiguous share of a batch, as its own storage (the rest is freed)."""
    return None if tensor is None else tensor.chunk(world)[rank].clone()


def pipeline_stages(arch: str, res: int, devices: int) -> list[range]:
    """The contiguous layers of each pipeline stage: ``balanced_stages`` over each conv's
    multiply-accumulates, so the slowest stage is as fast as a contiguous split allows."""
    spec = conv_stack_spec(arch)
    return balanced_stages(
        conv_costs(spec.channels, spec.spatial_sizes(res), spec.in_channels), devices
    )


class BusyClock:
    """The time a rank spends computing, as the sum of ``with clock.busy():`` spans: CUDA events
    on the current stream (read after one synchronize), ``perf_counter`` on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.spans: list = []

    def reset(self) -> None:
        self.spans = []

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.spans.append((start, end))
        else:
            start = time.perf_counter()
            yield
            self.spans.append((time.perf_counter() - start) * 1e3)

    def total_ms(self) -> float:
        """Milliseconds computed since the last reset."""
        if self.cuda:
            torch.cuda.synchronize()
            return sum(start.elapsed_time(end) for start, end in self.spans)
        return float(sum(self.spans))


__all__ = [
    "BusyClock",
    "FAKE_BACKEND",
    "Pipeline",
    "SpansDevices",
    "data_parallel_check",
    "estimating",
    "group_view",
    "pipeline_check",
    "pipeline_stages",
    "rank_part",
]
