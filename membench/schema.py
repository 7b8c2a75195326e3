"""The row schema: what one result row holds, and how to read its values.

This module imports neither torch nor matplotlib, so every reader of results (sweep resume,
``compare``, ``report``, a notebook) shares it cheaply. It holds

- ``CellResult``: one cell's outcome; its ``cells.csv`` row (``row()``) and the inverse
  (``CellResult.from_row``) are derived from its fields and ``Cell``'s, never listed by hand;
- the columns of ``cells.csv`` and ``steps.csv`` with their types (derived the same way) and
  the status values.

What a cell is (``Cell``, its settings, device strings, what makes a row an estimate) is
``membench.cell``; its names are also read from here, where every reader of rows finds them.
The column semantics are documented in docs/measurement.md ("The row").
"""

from __future__ import annotations

import statistics
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from .cell import (  # noqa: F401 (the cell's names, read from here by every reader of rows)
    ATTN_IMPLEMENTATIONS,
    CAUSAL_LM,
    CELL_COMMANDS,
    CELL_SETTINGS,
    CLASSIFICATION,
    COMPARED_SETTINGS,
    COMPILE_MODES,
    CUDNN_BENCHMARK_MODES,
    DEVICE_CHOICES,
    ESTIMATE_DEVICE_NAME,
    ESTIMATE_KINDS,
    ESTIMATE_SOURCE,
    ESTIMATE_SUFFIX,
    FIT_BY,
    GRADIENT_MODES,
    IDENTITY_SETTINGS,
    MASKED_LM,
    MEMORY_FORMATS,
    OBJECTIVES,
    OPTIMIZER_STATE_PLACES,
    PIPELINE_SCHEDULES,
    PRECISIONS,
    SETTING_COLUMN_TYPES,
    TOOLING_SETTINGS,
    Cell,
    DeviceSpecError,
    alloc_conf,
    alloc_conf_id,
    cell_setting,
    column_kind,
    cuda_index,
    device,
    device_kind,
    estimate_device,
    is_estimate_row,
    memory_size,
    parse_device,
    parse_typed,
    tooling_parts,
)

# -- statuses -----------------------------------------------------------------------------------
OK, OOM, ERROR, TIMEOUT, ESTIMATED = "ok", "oom", "error", "timeout", "estimated"
STATUSES = (OK, OOM, ERROR, TIMEOUT, ESTIMATED)
FAILED_STATUSES = frozenset({OOM, ERROR, TIMEOUT})
# Statuses whose row carries a peak (and, for ok, a throughput).
MEASURED_STATUSES = frozenset({OK, ESTIMATED})

CELLS_FILE, STEPS_FILE, ENV_FILE = "cells.csv", "steps.csv", "env.json"

# Memory categories of the breakdown at the peak, bottom to top in figures.
CATEGORIES = ("parameters", "gradients", "optimizer_state", "activations")
BREAKDOWN_COLUMNS = [f"{category}_bytes" for category in CATEGORIES]


@dataclass
class MemoryBreakdown:
    """Bytes per category at the peak; ``total`` is the peak itself."""

    parameters: int = 0
    gradients: int = 0
    optimizer_state: int = 0
    activations: int = 0

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_state + self.activations

    def as_columns(self) -> dict[str, int]:
        return {f"{name}_bytes": getattr(self, name) for name in CATEGORIES}


TIMING_STATS = ("median", "p10", "p90", "mean")
# Columns computed from a result's step times (and FLOPs and peak): properties of CellResult of
# the same name. A result read back from cells.csv has no step times; it keeps these as recorded.
DERIVED_COLUMN_TYPES = {
    **{f"step_ms_{stat}": "float" for stat in TIMING_STATS},
    "imgs_per_s": "float",
    "tokens_per_s": "float",
    "achieved_tflops": "float",
    "mfu": "float",
}
COLUMNS = "membench.columns"  # field metadata: the columns a composite field stands for


@dataclass
class CellResult:
    """One cell's measurement; carries its own configuration and provenance.

    Every field but ``cell``, ``step_ms``, ``breakdown``, ``recorded`` and ``timeline`` is one
    ``cells.csv`` column of the same name, typed by its annotation; ``cell`` gives one column
    per setting; ``step_ms`` (the measured step times, written to ``steps.csv``) gives the
    derived columns above, ``breakdown`` the four ``*_bytes`` columns.
    ``CellResult.from_row(row).row() == row``
    for every membench row.
    """

    cell: Cell
    device: str
    device_name: str
    host: str = ""  # hostname of the machine the cell ran on (a Ray node, or this machine)
    status: str = OK
    error: str = ""
    step_ms: list[float] = field(default_factory=list, metadata={COLUMNS: DERIVED_COLUMN_TYPES})
    compile_s: float | None = None  # the first warmup step, where torch.compile compiles
    flops_per_step: int | None = None  # FLOPs of one training step (membench.measure.flops)
    peak_tflops: float | None = None  # the device's peak for this cell's precision, if known
    peak_precision: str = ""
    peak_source: str = ""  # datasheet | user | gemm-calibrated
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    host_peak_rss_bytes: int | None = None
    nvml_used_bytes: int | None = None
    offloaded_bytes: int | None = None  # most saved-tensor bytes held in host memory at once
    offloaded_optimizer_bytes: int | None = None  # optimizer state held in host memory
    memory_source: str = ""
    # Cells on several devices (docs/multi-device.md, "What a row records"): the rank with the
    # peak, the most bytes a rank sent per step, the ranks' mean idle fraction (pipelines); every
    # rank's own row in `ranks`.
    peak_rank: int | None = None
    sent_bytes_per_step: int | None = None
    idle_fraction: float | None = None
    ranks: list[CellResult] = field(default_factory=list, repr=False, metadata={COLUMNS: {}})
    breakdown: MemoryBreakdown | None = field(
        default=None, metadata={COLUMNS: dict.fromkeys(BREAKDOWN_COLUMNS, "int")}
    )
    # What the card must hold (docs/device-total.md): the device total and its terms. Estimates:
    # peak_reserved_bytes is the allocator model's replay of the step, the total = reserve +
    # context, and total = peak_allocated_bytes + workspace + reserve slack + context. Measured
    # CUDA rows: the total is the process's figure from NVML, each term measured on its own.
    # Empty (not zero) where a term does not exist (CPU rows).
    device_total_bytes: int | None = None
    context_bytes: int | None = None  # held outside the caching allocator (CUDA context, ...)
    workspace_bytes: int | None = None  # what library workspaces add to the requested peak
    reserve_slack_bytes: int | None = None  # reserved beyond the requested peak
    device_profile: str = ""  # an estimate's device profile (its context and workspaces)
    torch_version: str = ""
    membench_version: str = ""
    torch_threads: int = 0
    started_at: str = ""
    wall_s: float | None = None  # seconds the whole cell took (an estimate: the estimate's)
    # How far the timed steps can be trusted (membench.measure.stability; docs/sweeps.md,
    # "Timings that say when they are noise"): their relative IQR, the verdict and its reason,
    # and what ran beside them: the 1-minute load average at their end, and the shares of the
    # machine's CPU time (all cores = 1) this cell and every other process used meanwhile.
    step_ms_rel_iqr: float | None = None
    stability: str = ""  # stable | unstable | '' (nothing timed)
    stability_reason: str = ""
    load_average: float | None = None
    cpu_self: float | None = None
    cpu_others: float | None = None
    # The timeline.csv rows of this run's recorded step: a shorter block is a cut file.
    timeline_events: int | None = None
    recorded: dict[str, float | None] = field(
        default_factory=dict, repr=False, metadata={COLUMNS: {}}
    )
    # With --timeline: one more step's memory over time (a membench.timeline.events.Timeline),
    # carried to the sweep process, which writes it to timeline.csv; not a cells.csv column.
    timeline: object | None = field(default=None, repr=False, compare=False, metadata={COLUMNS: {}})

    @property
    def cell_id(self) -> str:
        return self.cell.cell_id

    @property
    def is_estimate(self) -> bool:
        return is_estimate_row({"device": self.device, "memory_source": self.memory_source})

    def _recorded(self, column: str) -> float | None:
        return self.recorded.get(column)

    def summary_stats(self) -> dict[str, float | None]:
        """Median, p10, p90 and mean step time in ms (None without measured steps)."""
        if not self.step_ms:
            return {stat: self._recorded(f"step_ms_{stat}") for stat in TIMING_STATS}
        ordered = sorted(self.step_ms)
        if len(ordered) >= 2:
            deciles = statistics.quantiles(ordered, n=10, method="inclusive")
            p10, p90 = deciles[0], deciles[-1]
        else:
            p10 = p90 = ordered[0]
        return {
            "median": statistics.median(ordered),
            "p10": p10,
            "p90": p90,
            "mean": statistics.fmean(ordered),
        }

    step_ms_median = property(lambda self: self.summary_stats()["median"])
    step_ms_p10 = property(lambda self: self.summary_stats()["p10"])
    step_ms_p90 = property(lambda self: self.summary_stats()["p90"])
    step_ms_mean = property(lambda self: self.summary_stats()["mean"])

    @property
    def imgs_per_s(self) -> float | None:
        """Samples (images, or sequences of a token cell) per second over the measured steps:
        batch x steps / total measured time."""
        if not self.step_ms:
            return self._recorded("imgs_per_s")
        total_s = sum(self.step_ms) / 1e3
        return self.cell.batch * len(self.step_ms) / total_s if total_s > 0 else None

    @property
    def samples_per_s(self) -> float | None:
        """Samples (images or sequences) per second: the ``imgs_per_s`` column, whose name
        earlier rows keep."""
        return self.imgs_per_s

    @property
    def tokens_per_s(self) -> float | None:
        """Tokens per second of a token cell: samples per second x seq (None for images)."""
        if not self.step_ms:
            return self._recorded("tokens_per_s")
        samples = self.imgs_per_s
        seq = self.cell.tokens_per_sample
        return None if samples is None or seq is None else samples * seq

    @property
    def achieved_tflops(self) -> float | None:
        """FLOPs per step / median step time, in TFLOP/s."""
        if not self.step_ms:
            return self._recorded("achieved_tflops")
        median = self.step_ms_median
        if self.flops_per_step is None or not median:
            return None
        return self.flops_per_step / (median / 1e3) / 1e12

    @property
    def mfu(self) -> float | None:
        """Model FLOPs utilisation: achieved TFLOP/s / the device's peak."""
        if not self.step_ms:
            return self._recorded("mfu")
        achieved = self.achieved_tflops
        if achieved is None or not self.peak_tflops:
            return None
        return achieved / self.peak_tflops

    def row(self) -> dict:
        """This result as one ``cells.csv`` row, keyed by CELL_COLUMNS."""
        row = {"cell_id": self.cell.cell_id, **self.cell.settings()}
        for f in fields(self):
            if f.name == "cell":
                continue
            columns = f.metadata.get(COLUMNS)
            if columns is None:
                row[f.name] = getattr(self, f.name)
            elif f.name == "breakdown":
                row.update(self.breakdown.as_columns() if self.breakdown else {})
            else:
                row.update({column: getattr(self, column) for column in columns})
        return {column: row.get(column) for column in CELL_COLUMNS}

    @classmethod
    def from_row(cls, row: Mapping) -> CellResult:
        """The inverse of ``row()``: a result from a ``cells.csv`` row, as strings (csv) or typed
        values (a DataFrame record). Missing columns read as empty. ValueError for a value that
        does not fit its column's type."""
        values = {column: parse_value(column, row.get(column)) for column in CELL_COLUMNS}
        plain = {}
        for f in fields(cls):
            if f.name != "cell" and COLUMNS not in f.metadata:
                value = values[f.name]
                plain[f.name] = f.default if value is None and f.default is not None else value
        breakdown = None
        if all(values[c] is not None for c in BREAKDOWN_COLUMNS):
            breakdown = MemoryBreakdown(*(values[c] for c in BREAKDOWN_COLUMNS))
        return cls(
            Cell.from_row(values),
            breakdown=breakdown,
            recorded={c: values[c] for c in DERIVED_COLUMN_TYPES},
            **plain,
        )


# -- columns ------------------------------------------------------------------------------------
def _cell_column_types() -> dict[str, str]:
    result_hints = typing.get_type_hints(CellResult)
    types = dict(SETTING_COLUMN_TYPES)
    for f in fields(CellResult):
        if f.name != "cell":
            types.update(f.metadata.get(COLUMNS, {f.name: None}))
            if COLUMNS not in f.metadata:
                types[f.name] = column_kind(result_hints[f.name])
    return types


# Every cells.csv column in file order, with the type its values are read as: "str" (empty is
# ""), "int" or "float" (empty is missing); derived from Cell and CellResult, never listed.
CELL_COLUMN_TYPES: dict[str, str] = _cell_column_types()
CELL_COLUMNS = list(CELL_COLUMN_TYPES)
# A file without these is not a membench cells.csv (an older membench always wrote them).
IDENTITY_COLUMNS = ["cell_id", *IDENTITY_SETTINGS, "device", "status"]
# Settings an earlier membench did not record were at their defaults; readers fill them in.
SETTING_DEFAULTS = {
    s.name: s.default
    for s in CELL_SETTINGS
    if s.default is not None and s.name not in IDENTITY_SETTINGS
}

STEP_COLUMN_TYPES: dict[str, str] = {
    "cell_id": "str",
    "device": "str",
    "step": "int",
    "step_ms": "float",
}
STEP_COLUMNS = list(STEP_COLUMN_TYPES)


def parse_value(column: str, value) -> object:
    """One cells.csv value as its column's type: str ('' when empty), int or float (None when
    empty or NaN). ValueError for text that is not a number in a numeric column."""
    return parse_typed(CELL_COLUMN_TYPES.get(column, "str"), value)
