"""The row schema: what a cell is, what one result row holds, and how to read its values.

This module imports neither torch nor matplotlib, so every reader of results (sweep resume,
``compare``, ``report``, a notebook) shares it cheaply. It holds

- ``Cell``: one point of a grid, every setting that determines a measurement (each declared
  once, as a field, with ``membench.settings.setting``), and its id;
- ``CellResult``: one cell's outcome; its ``cells.csv`` row (``row()``) and the inverse
  (``CellResult.from_row``) are derived from its fields and ``Cell``'s, never listed by hand;
- the columns of ``cells.csv`` and ``steps.csv`` with their types (derived the same way), the
  status values, and what makes a row an estimate (``is_estimate_row``, the one place that
  decides it);
- device-string parsing (``parse_device``, ``device_kind``); memory sizes are ``membench.units``.

The column semantics are documented in docs/measurement.md ("The row").
"""

from __future__ import annotations

import math
import re
import statistics
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from .settings import ConfigError, Setting, choice, name, optional, setting, settings_of, whole
from .units import format_bytes, parse_bytes

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

# The standard tooling's choices (torch's objects for them are in membench.runners.base).
PRECISIONS = ("fp32", "bf16", "fp16")
MEMORY_FORMATS = ("contiguous", "channels_last")
COMPILE_MODES = ("none", "default", "max-autotune")
GRADIENT_MODES = ("kept", "released")
OPTIMIZER_STATE_PLACES = ("device", "host")
PIPELINE_SCHEDULES = ("gpipe", "1f1b")  # bp-pp's (docs/multi-device.md)

# -- estimates ------------------------------------------------------------------------------------
# An estimate's device is the kind of device it predicts for, e.g. 'cuda (estimate)', so it never
# matches a row measured on 'cuda:0' in resume, compare or report.
ESTIMATE_SUFFIX = " (estimate)"
ESTIMATE_KINDS = ("cuda", "cpu")  # the kinds of device an estimate plans for
ESTIMATE_SOURCE = "estimate"  # its memory_source
ESTIMATE_DEVICE_NAME = "estimate"  # its device_name


def estimate_device(kind: str) -> str:
    """The ``device`` of an estimated row: ``'cuda'`` -> ``'cuda (estimate)'``."""
    return f"{kind}{ESTIMATE_SUFFIX}"


def is_estimate_row(row: Mapping) -> bool:
    """Whether a results row is a prediction rather than a measurement: its device is an
    estimate's (``'cuda (estimate)'``) or its memory came from the estimator. The one place that
    decides it; readers put the answer in an ``is_estimate`` column."""
    device = str(row.get("device") or "").strip()
    return (
        device.endswith(ESTIMATE_SUFFIX) or str(row.get("memory_source") or "") == ESTIMATE_SOURCE
    )


# -- devices --------------------------------------------------------------------------------------
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N"
_DEVICE_PATTERN = re.compile(r"(auto|cpu|cuda)(?::(\d+))?")


class DeviceSpecError(ValueError):
    """A device string that is not ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""


def parse_device(spec: str) -> tuple[str, int | None]:
    """``'cuda:1'`` -> ``('cuda', 1)``, ``'cuda'`` -> ``('cuda', None)``, ``'cpu'``/``'auto'`` ->
    ``(kind, None)``; DeviceSpecError (one line, with the choices) for anything else."""
    match = _DEVICE_PATTERN.fullmatch(str(spec).strip().lower())
    if not match or (match[2] is not None and match[1] != "cuda"):
        raise DeviceSpecError(f"unknown device {spec!r}; valid: {DEVICE_CHOICES}")
    return match[1], None if match[2] is None else int(match[2])


def device_kind(device: str) -> str:
    """The kind of a row's device: 'cpu', 'cuda:0' and 'cuda (estimate)' -> 'cpu', 'cuda',
    'cuda'."""
    return str(device).strip().removesuffix(ESTIMATE_SUFFIX).split(":")[0]


def cuda_index(device: str) -> int | None:
    """The CUDA device index a measured row ran on ('cuda' is 0); None for anything else."""
    try:
        kind, index = parse_device(device)
    except DeviceSpecError:
        return None
    return (index or 0) if kind == "cuda" else None


# -- cells --------------------------------------------------------------------------------------
def memory_size(value, label: str) -> int:
    """A memory size ('8GiB', '512MiB', '8GB', or bytes), as a setting reads it."""
    try:
        return parse_bytes(value)
    except ValueError as err:
        raise ConfigError(f"{label}: {err}") from None


def device(value, label: str) -> str:
    """A device string, normalised ('CUDA:1' -> 'cuda:1'), as a setting reads it."""
    if not isinstance(value, str):
        raise ConfigError(f"{label} takes a device name, got {value!r}")
    try:
        kind, index = parse_device(value)
    except DeviceSpecError as err:
        raise ConfigError(str(err)) from None
    return kind if index is None else f"{kind}:{index}"


# The cell settings are options of these commands (and keywords of the pytest fixture).
CELL_COMMANDS = ("sweep", "run", "fixture")


def cell_setting(default, parse, help: str, **options):
    """A setting of a ``Cell``: a grid axis on every command that measures cells."""
    return setting(default, parse, help, commands=CELL_COMMANDS, **options)


@dataclass(frozen=True)
class Cell:
    """One point of a grid under one protocol: every setting that determines a measurement.

    Each field is a grid axis (a comma list on the command line, a list in a profile; the grid
    is their cross product) and a ``cells.csv`` column; its declaration below is the only place
    it is defined (``membench.settings``). A value at its default adds nothing to the cell id,
    so the ids of earlier runs stay what they were.
    """

    method: str = cell_setting(
        "bp", name, "Training method (`membench list methods`).", id_part=str, id_always=True
    )
    arch: str = cell_setting(
        "vgg8",
        name,
        "Architecture: vgg8, vgg11, vgg-dD-wW, resnet20..110, "
        "tv:NAME, timm:NAME, a plugin's or pkg.mod:factory (`membench list archs`).",
        id_part=str,
        id_always=True,
    )
    res: int = cell_setting(
        32, whole(1), "Input resolution (square).", id_part="r{}".format, id_always=True
    )
    batch: int = cell_setting(
        32,
        whole(1),
        "Batch size: the images of one optimizer step.",
        id_part="b{}".format,
        id_always=True,
    )
    micro_batch: int | None = cell_setting(
        None,
        optional(whole(1)),
        "Micro-batch, for methods that split the batch: BP accumulates "
        "over them (bp-accum: batch/2 by default), FF trains in chunks.",
        id_part="mb{}".format,
    )
    classes: int = cell_setting(
        10, whole(1), "Number of classes K.", id_part="k{}".format, id_always=True
    )
    # Standard tooling on both sides of the audit (docs/runners.md, "Standard tooling").
    precision: str = cell_setting(
        "fp32",
        choice(PRECISIONS),
        "Autocast precision (weights and optimizer state stay fp32; fp16 with a GradScaler).",
        id_part=str,
        tooling=True,
    )
    memory_format: str = cell_setting(
        "contiguous",
        choice(MEMORY_FORMATS),
        "Memory format of the conv weights and the batch.",
        id_part=lambda value: value.replace("_", "-"),
        tooling=True,
    )
    compile: str = cell_setting(
        "none",
        choice(COMPILE_MODES),
        "torch.compile mode (compiled in the first warmup step).",
        id_part="compile-{}".format,
        tooling=True,
    )
    grads: str = cell_setting(
        "kept",
        choice(GRADIENT_MODES),
        "Gradients kept until the optimizer step, or released at "
        "their update (BP: AdamW stepped per parameter in the backward pass; FF: each layer's "
        "freed after its step).",
        id_part="grads-{}".format,
        tooling=True,
    )
    optimizer_state: str = cell_setting(
        "device",
        choice(OPTIMIZER_STATE_PLACES),
        "Where AdamW's moments live between updates: on "
        "the device, or in host memory (pinned on CUDA), copied to the device for each "
        "parameter's (BP) or layer's (FF) update.",
        id_part="optim-{}".format,
        tooling=True,
    )
    devices: int = cell_setting(
        1,
        whole(1),
        "Devices one cell spans: N > 1 runs N ranks of torch.distributed (methods "
        "that span devices: bp-ddp, bp-fsdp, bp-pp, ff-pp; others run on one).",
        id_part="dev{}".format,
        tooling=True,
    )
    schedule: str | None = cell_setting(
        None,
        optional(choice(PIPELINE_SCHEDULES)),
        "Pipeline schedule of bp-pp (default 1f1b).",
        id_part=str,
        tooling=True,
    )
    device_mem_bytes: int | None = cell_setting(
        None,
        optional(memory_size),
        "Emulate a card with this much memory, e.g. 8GiB: past it a cell is an oom row.",
        key="device_mem",
        id_part=lambda value: f"mem{format_bytes(value)}",
        metavar="SIZE",
    )
    # The protocol's own settings: part of what a measurement is, not of the configuration
    # compared across runs.
    seed: int = cell_setting(
        0, whole(0), "Seed of the weights and the synthetic batch.", compare=False
    )
    warmup: int = cell_setting(5, whole(0), "Warmup steps, not measured.", compare=False)
    steps: int = cell_setting(20, whole(1), "Measured steps.", compare=False)
    rounds: int = setting(
        1,
        whole(1),
        "Rounds of warmup and measured steps, each in a fresh worker process: their spread is "
        "the run-to-run noise `membench compare` judges throughput against (3 or more).",
        compare=False,
        commands=("sweep",),
    )

    @property
    def cell_id(self) -> str:
        """A readable id, unique within one sweep's grid: each setting's part, where it has one."""
        parts = (s.in_id(getattr(self, s.name)) for s in CELL_SETTINGS)
        return "_".join(part for part in parts if part)

    def settings(self) -> dict[str, object]:
        """Every setting's value, by field name (the ``cells.csv`` columns of the cell)."""
        return {s.name: getattr(self, s.name) for s in CELL_SETTINGS}

    def tooling(self) -> list[str]:
        """The standard tooling not at its defaults, as the cell id names it: ['bf16', ...]."""
        return tooling_parts(self.settings())

    @classmethod
    def from_row(cls, row: Mapping) -> Cell:
        """The cell of a ``cells.csv`` row (strings or typed values): a setting the row leaves
        empty (an earlier membench did not record it) was at its default. ValueError for a
        value that does not fit its column."""
        values = {s.name: parse_value(s.name, row.get(s.name)) for s in CELL_SETTINGS}
        missing = [key for key in IDENTITY_SETTINGS if values[key] in (None, "")]
        if missing:
            raise ValueError(f"a row without {', '.join(missing)} names no cell")
        return cls(**{key: value for key, value in values.items() if value not in (None, "")})


CELL_SETTINGS: tuple[Setting, ...] = settings_of(Cell)
# Every membench row has recorded these since the first release: a row without one names no cell.
IDENTITY_SETTINGS = ("method", "arch", "res", "batch")
TOOLING_SETTINGS = tuple(s for s in CELL_SETTINGS if s.tooling)
# What `membench compare` matches two cells on: the configuration, not the protocol's settings.
COMPARED_SETTINGS = [s.name for s in CELL_SETTINGS if s.compare]


def tooling_parts(values: Mapping) -> list[str]:
    """The tooling settings of a cell or a row not at their defaults (empty counts as the
    default), as a cell id and a report name them: ['bf16', 'channels-last', 'compile-default']."""
    parts = []
    for s in TOOLING_SETTINGS:
        value = values.get(s.name)
        if value not in (None, "") and value == value:
            part = s.in_id(value)
            if part:
                parts.append(part)
    return parts


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
    torch_version: str = ""
    membench_version: str = ""
    torch_threads: int = 0
    started_at: str = ""
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
        """Images per second over the measured steps: batch x steps / total measured time."""
        if not self.step_ms:
            return self._recorded("imgs_per_s")
        total_s = sum(self.step_ms) / 1e3
        return self.cell.batch * len(self.step_ms) / total_s if total_s > 0 else None

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
def _column_kind(annotation) -> str:
    """'str', 'int' or 'float' for a field annotated str, int | None, float | None, ..."""
    types = [t for t in typing.get_args(annotation) if t is not type(None)] or [annotation]
    return {str: "str", int: "int", float: "float"}[types[0]]


def _cell_column_types() -> dict[str, str]:
    cell_hints = typing.get_type_hints(Cell)
    result_hints = typing.get_type_hints(CellResult)
    types = {"cell_id": "str", **{s.name: _column_kind(cell_hints[s.name]) for s in CELL_SETTINGS}}
    for f in fields(CellResult):
        if f.name != "cell":
            types.update(f.metadata.get(COLUMNS, {f.name: None}))
            if COLUMNS not in f.metadata:
                types[f.name] = _column_kind(result_hints[f.name])
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
    kind = CELL_COLUMN_TYPES.get(column, "str")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "" if kind == "str" else None
    if kind == "str":
        return str(value).strip()
    text = str(value).strip()
    if text == "" or text.lower() == "nan":
        return None
    number = float(text)
    return int(number) if kind == "int" else number
