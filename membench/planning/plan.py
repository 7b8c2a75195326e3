"""``membench plan``: the best configuration of each family for one cell on one card, by estimate.

``membench fit`` answers the largest batch of a method; ``plan`` answers, for one arch,
resolution and effective batch, which configuration of each family's tooling fits a device
budget and which is fastest. It estimates every candidate (``candidate_cells``: BP whole-batch
and in micro-batches, with checkpointing, selective checkpointing or offloaded activations;
pipelined DTG-FF whole or in chunks; each in fp32 and bf16, with gradients released and optimizer
state in host memory where the method allows) and ranks those that fit by a throughput bound:

    step time >= FLOPs / the GPU's datasheet peak at the cell's precision
                 + host<->device bytes / the link's bandwidth

The FLOPs are counted on the step as it runs, so checkpointing's recomputed forward is in them;
the bytes are what crosses the link each step: offloaded activations out and back, optimizer
moments in and out. Both terms are lower bounds (no step runs at peak, no copy at the link's
bandwidth) and they are added, not overlapped, so the bound is that of a step that overlaps
nothing; which term is larger says what bounds the configuration.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import ConfigError, expand_grid
from ..measure.flops import gpu_peaks
from ..schema import ESTIMATED, Cell, CellResult
from ..validate import arch_at
from .estimate import estimate_cell

# PCIe 4.0 x16, one direction: 16 GT/s x 16 lanes x 128/130 encoding / 8 bits.
DEFAULT_LINK_GBPS = 31.5
BP_METHODS = ("bp", "bp-ckpt", "bp-sac", "bp-offload")
BP_ACCUMULATING = ("bp-accum", "bp-ckpt", "bp-sac", "bp-offload")
MICRO_BATCHES = (4, 8, 16, 32, 64)
PRECISIONS = ("fp32", "bf16")
# The update's tooling tried: as the recipe has it, and every tool the method may take.
WHOLE_BATCH_UPDATES = ({}, {"grads": "released"}, {"grads": "released", "optimizer_state": "host"})
ACCUMULATING_UPDATES = ({}, {"optimizer_state": "host"})


def candidate_cells(
    arch: str, res: int, batch: int, classes: int = 10, precisions: tuple[str, ...] = PRECISIONS
) -> list[Cell]:
    """Every configuration ``plan`` tries for one cell (see the module docstring); only those
    the runners accept (``expand_grid``'s checks)."""
    micro = [m for m in MICRO_BATCHES if m < batch and batch % m == 0]
    cell = dict(arch=arch, res=res, batch=batch, classes=classes, warmup=1, steps=1)
    grids = [
        dict(method=BP_METHODS, update=WHOLE_BATCH_UPDATES),
        dict(method=BP_ACCUMULATING, micro_batch=micro, update=ACCUMULATING_UPDATES),
        dict(method=("ff-pipelined",), micro_batch=[None, *micro], update=WHOLE_BATCH_UPDATES),
    ]
    cells: dict[Cell, None] = {}
    for grid in grids:
        if "micro_batch" in grid and not grid["micro_batch"]:
            continue
        for method, precision, update in itertools.product(
            grid["method"], precisions, grid["update"]
        ):
            for micro_batch in grid.get("micro_batch", [None]):
                try:
                    found = expand_grid(
                        method=method,
                        precision=precision,
                        micro_batch=micro_batch,
                        **update,
                        **cell,
                    )
                except ConfigError:  # a combination the runner refuses
                    continue
                cells.update(dict.fromkeys(found))
    return list(cells)


@dataclass(frozen=True)
class ThroughputBound:
    """The lower bound on a step's time (see the module docstring), in seconds per step."""

    compute_s: float
    transfer_s: float
    batch: int

    @property
    def imgs_per_s(self) -> float:
        return self.batch / (self.compute_s + self.transfer_s)

    @property
    def bounded_by(self) -> str:
        return "link" if self.transfer_s > self.compute_s else "compute"


def transfer_bytes(result: CellResult) -> int:
    """Bytes that cross the host-device link in one step: every offloaded activation out and
    back (``offloaded_bytes`` is one micro-batch's, held at once), and the optimizer moments
    in and out."""
    cell = result.cell
    micro_batches = cell.batch // cell.micro_batch if cell.micro_batch else 1
    activations = 2 * (result.offloaded_bytes or 0) * micro_batches
    return activations + 2 * (result.offloaded_optimizer_bytes or 0)


def throughput_bound(result: CellResult, peak_tflops: float, link_gbps: float) -> ThroughputBound:
    """The bound of one estimated configuration at a GPU's peak and a link's bandwidth."""
    compute_s = result.flops_per_step / (peak_tflops * 1e12)
    return ThroughputBound(compute_s, transfer_bytes(result) / (link_gbps * 1e9), result.cell.batch)


@dataclass
class PlanRow:
    """One candidate: its estimate and its bound (None when it has no FLOPs or no peak)."""

    result: CellResult
    bound: ThroughputBound | None = None

    @property
    def cell(self) -> Cell:
        return self.result.cell

    def fits(self, budget_bytes: int) -> bool:
        peak = self.result.peak_allocated_bytes
        return self.result.status == ESTIMATED and peak is not None and peak <= budget_bytes


@dataclass
class Plan:
    """Every candidate of one cell on one card; ``ranked``: those that fit, fastest first."""

    arch: str
    res: int
    batch: int
    budget_bytes: int
    gpu: str
    link_gbps: float
    rows: list[PlanRow] = field(default_factory=list)

    @property
    def ranked(self) -> list[PlanRow]:
        fitting = [row for row in self.rows if row.fits(self.budget_bytes) and row.bound]
        return sorted(
            fitting, key=lambda row: (-row.bound.imgs_per_s, row.result.peak_allocated_bytes)
        )

    @property
    def failed(self) -> list[PlanRow]:
        return [row for row in self.rows if row.result.peak_allocated_bytes is None]


def plan(
    arch: str,
    res: int,
    batch: int,
    budget_bytes: int,
    gpu: str,
    *,
    classes: int = 10,
    link_gbps: float = DEFAULT_LINK_GBPS,
    precisions: tuple[str, ...] = PRECISIONS,
    progress: Callable[[int, int, CellResult], None] | None = None,
) -> Plan:
    """Estimate every candidate configuration (CUDA) and bound the throughput of those that fit
    ``budget_bytes`` on ``gpu`` (a name of the peak table); ConfigError for bad input."""
    if budget_bytes <= 0 or link_gbps <= 0:
        raise ConfigError("plan needs a positive --device-mem and --link-gbps")
    arch_at(arch, res)  # refused as a sweep refuses it, not "no configuration fits"
    peaks = {precision: spec.tflops for precision, spec in gpu_peaks(gpu).items()}
    cells = candidate_cells(arch, res, batch, classes, precisions)
    result = Plan(arch, res, batch, budget_bytes, gpu, link_gbps)
    for index, cell in enumerate(cells):
        estimate = estimate_cell(cell, "cuda")
        bound = None
        if estimate.flops_per_step and peaks.get(cell.precision):
            bound = throughput_bound(estimate, peaks[cell.precision], link_gbps)
        result.rows.append(PlanRow(estimate, bound))
        if progress is not None:
            progress(index, len(cells), estimate)
    return result
