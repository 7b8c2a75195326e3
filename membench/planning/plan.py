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

import dataclasses
import itertools
from dataclasses import dataclass, field

from ..config import SETTING_BY_KEY, ConfigError, expand_grid
from ..measure.flops import gpu_peaks
from ..schema import ESTIMATED, Cell, CellResult
from ..validate import arch_at
from .device_profiles import device_profile_of
from .device_total import deciding_term, judged_bytes
from .parallel import Progress, estimate_cells

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
    arch: str,
    res: int | None,
    batch: int,
    classes: int = 10,
    precisions: tuple[str, ...] = PRECISIONS,
    **token,
) -> list[Cell]:
    """Every configuration ``plan`` tries for one cell (see the module docstring); only those
    the runners accept (``expand_grid``'s checks). ``token``: a token model's ``seq`` and
    ``objective`` (docs/sequence-models.md)."""
    micro = [m for m in MICRO_BATCHES if m < batch and batch % m == 0]
    cell = dict(arch=arch, res=res, batch=batch, classes=classes, warmup=1, steps=1, **token)
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
    """One candidate: its estimate and its bound (None when it has no FLOPs or no peak);
    ``fit_by``: the figure a budget judges it by (docs/device-total.md)."""

    result: CellResult
    bound: ThroughputBound | None = None
    fit_by: str = "total"

    @property
    def cell(self) -> Cell:
        return self.result.cell

    @property
    def peak(self) -> int | None:
        """The figure ``fit_by`` names: the device total, the reserve or the tensors' peak."""
        return judged_bytes(vars(self.result), self.fit_by)

    def fits(self, budget_bytes: int) -> bool:
        # an estimate over the budget is oom (with the allocator model under it, for the total)
        peak = self.peak
        return self.result.status == ESTIMATED and peak is not None and peak <= budget_bytes

    def deciding_term(self, budget_bytes: int) -> str:
        """The term that decides the budget (device_total.deciding_term)."""
        return deciding_term(vars(self.result), budget_bytes, self.fit_by)


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
    fit_by: str = "total"
    profile: str = ""  # the device profile of the estimates' device totals

    @property
    def ranked(self) -> list[PlanRow]:
        fitting = [row for row in self.rows if row.fits(self.budget_bytes) and row.bound]
        return sorted(fitting, key=lambda row: (-row.bound.imgs_per_s, row.peak))

    @property
    def fit_only_by_allocated(self) -> list[PlanRow]:
        """Candidates whose tensors' peak fits the budget but whose judged figure does not."""
        return [
            row
            for row in self.rows
            if not row.fits(self.budget_bytes)
            and row.result.peak_allocated_bytes is not None
            and row.result.peak_allocated_bytes <= self.budget_bytes
        ]

    @property
    def failed(self) -> list[PlanRow]:
        return [row for row in self.rows if row.result.peak_allocated_bytes is None]

    def best_of_each_family(self) -> dict[str, PlanRow]:
        """The fastest configuration that fits, per method family (``ff``, ``bp``), in rank
        order."""
        from ..runners import method_family

        best: dict[str, PlanRow] = {}
        for row in self.ranked:
            best.setdefault(method_family(row.cell.method), row)
        return best

    @property
    def over_budget(self) -> list[PlanRow]:
        """The estimated configurations that do not fit, smallest peak first."""
        over = [row for row in self.rows if not row.fits(self.budget_bytes) and row.peak]
        return sorted(over, key=lambda row: row.peak)


def plan_budget(gpu: str) -> int | None:
    """The budget a device profile given as the GPU sets (laptop-8gb: its ``device_mem``), or
    None when ``gpu`` is a GPU's name or the profile sets none."""
    from ..profiles import ProfileError, load_profile

    try:
        value = load_profile(gpu).settings.get("device_mem")
    except ProfileError:
        return None
    if value is None:
        return None
    return SETTING_BY_KEY["device_mem"].parse(value, "device_mem")


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
    progress: Progress | None = None,
    jobs: int | None = None,
    profile=None,
    fit_by: str = "total",
    **token,
) -> Plan:
    """Estimate every candidate configuration (CUDA), ``jobs`` at once (default: one per core;
    ``planning.parallel``), and bound the throughput of those that fit ``budget_bytes`` on
    ``gpu`` (a name of the peak table), judged by ``fit_by``, the device total on ``profile``'s
    card by default (docs/device-total.md); ``progress(done, total, result)`` as each estimate
    finishes. ConfigError for bad input. ``token``: a token model's ``seq`` and ``objective``."""
    if budget_bytes <= 0 or link_gbps <= 0:
        raise ConfigError("plan needs a positive --device-mem and --link-gbps")
    arch_at(arch, res, **token)  # refused as a sweep refuses it, not "no configuration fits"
    peaks = {precision: spec.tflops for precision, spec in gpu_peaks(gpu).items()}
    cells = candidate_cells(arch, res, batch, classes, precisions, **token)
    profile = device_profile_of(profile)
    result = Plan(arch, res, batch, budget_bytes, gpu, link_gbps, fit_by=fit_by)
    result.profile = profile.name
    # the budget in each cell: the allocator model replays under it (device_total)
    cells = [dataclasses.replace(cell, device_mem_bytes=budget_bytes) for cell in cells]
    estimates = estimate_cells(
        cells,
        "cuda",
        jobs=jobs,
        progress=progress,
        device_profile=profile.path or profile.name,
        fit_by=fit_by,
    )
    for cell, estimate in zip(cells, estimates):
        bound = None
        if estimate.flops_per_step and peaks.get(cell.precision):
            bound = throughput_bound(estimate, peaks[cell.precision], link_gbps)
        result.rows.append(PlanRow(estimate, bound, fit_by))
    return result
