"""The row schema: what a cell is, what one result row holds, and how to read its values.

This module imports neither torch nor matplotlib, so every reader of results (sweep resume,
``compare``, ``report``, a notebook) shares it cheaply. It holds

- ``Cell``: one point of a grid, everything that determines a measurement, and its id;
- ``CellResult``: one cell's outcome, with ``row()`` (a ``cells.csv`` row) and its inverse
  ``CellResult.from_row``;
- the columns of ``cells.csv`` and ``steps.csv`` with their types, the status values, and what
  makes a row an estimate (``is_estimate_row``, the one place that decides it);
- device-string parsing (``parse_device``, ``device_kind``) and byte parsing and formatting.

The column semantics are documented in docs/design.md ("Results").
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields

# -- columns ----------------------------------------------------------------------------------
# Every cells.csv column in file order, with the type its values are read as: "str" (empty is
# ""), "int" or "float" (empty is missing). A new column is one entry here and one in row().
CELL_COLUMN_TYPES: dict[str, str] = {
    "cell_id": "str", "method": "str", "arch": "str", "res": "int", "batch": "int",
    "micro_batch": "int", "precision": "str", "memory_format": "str", "compile": "str",
    "classes": "int", "seed": "int",
    "device": "str", "device_name": "str", "host": "str", "device_mem_bytes": "int",
    "status": "str",
    "error": "str", "warmup": "int", "steps": "int",
    "step_ms_median": "float", "step_ms_p10": "float", "step_ms_p90": "float",
    "step_ms_mean": "float", "imgs_per_s": "float", "compile_s": "float",
    "flops_per_step": "int", "achieved_tflops": "float", "peak_tflops": "float",
    "peak_precision": "str", "peak_source": "str", "mfu": "float",
    "peak_allocated_bytes": "int", "peak_reserved_bytes": "int", "host_peak_rss_bytes": "int",
    "nvml_used_bytes": "int", "offloaded_bytes": "int", "memory_source": "str",
    "parameters_bytes": "int", "gradients_bytes": "int", "optimizer_state_bytes": "int",
    "activations_bytes": "int",
    "torch_version": "str", "membench_version": "str", "torch_threads": "int", "started_at": "str",
}
CELL_COLUMNS = list(CELL_COLUMN_TYPES)
NUMERIC_COLUMNS = [c for c, kind in CELL_COLUMN_TYPES.items() if kind != "str"]
TEXT_COLUMNS = [c for c, kind in CELL_COLUMN_TYPES.items() if kind == "str"]
# A file without these is not a membench cells.csv (an older membench always wrote them).
IDENTITY_COLUMNS = ["cell_id", "method", "arch", "res", "batch", "device", "status"]

STEP_COLUMN_TYPES: dict[str, str] = {"cell_id": "str", "device": "str", "step": "int",
                                     "step_ms": "float"}
STEP_COLUMNS = list(STEP_COLUMN_TYPES)

CELLS_FILE, STEPS_FILE, ENV_FILE = "cells.csv", "steps.csv", "env.json"

# Memory categories of the breakdown at the peak, bottom to top in figures.
CATEGORIES = ("parameters", "gradients", "optimizer_state", "activations")
BREAKDOWN_COLUMNS = [f"{category}_bytes" for category in CATEGORIES]

# -- statuses -----------------------------------------------------------------------------------
OK, OOM, ERROR, TIMEOUT, ESTIMATED = "ok", "oom", "error", "timeout", "estimated"
STATUSES = (OK, OOM, ERROR, TIMEOUT, ESTIMATED)
FAILED_STATUSES = frozenset({OOM, ERROR, TIMEOUT})
# Statuses whose row carries a peak (and, for ok, a throughput).
MEASURED_STATUSES = frozenset({OK, ESTIMATED})

# -- estimates ------------------------------------------------------------------------------------
# An estimate's device is the kind of device it predicts for, e.g. 'cuda (estimate)', so it never
# matches a row measured on 'cuda:0' in resume, compare or report.
ESTIMATE_SUFFIX = " (estimate)"
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
    return device.endswith(ESTIMATE_SUFFIX) or str(row.get("memory_source") or "") == ESTIMATE_SOURCE


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
    """The kind of a row's device: 'cpu', 'cuda:0' and 'cuda (estimate)' -> 'cpu', 'cuda', 'cuda'."""
    return str(device).strip().removesuffix(ESTIMATE_SUFFIX).split(":")[0]


def cuda_index(device: str) -> int | None:
    """The CUDA device index a measured row ran on ('cuda' is 0); None for anything else."""
    try:
        kind, index = parse_device(device)
    except DeviceSpecError:
        return None
    return (index or 0) if kind == "cuda" else None


# -- bytes ----------------------------------------------------------------------------------------
BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
              "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
GIB = 2**30
_BINARY_UNITS = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def parse_bytes(text: str | int) -> int:
    """'8GiB' -> 8589934592; '8GB' -> 8e9; a plain number is bytes. ValueError (one line)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match[2].lower() not in BYTE_UNITS:
        raise ValueError(f"cannot read a memory size from {text!r}; write e.g. 8GiB, 512MiB or 8GB")
    value = int(float(match[1]) * BYTE_UNITS[match[2].lower()])
    if value <= 0:
        raise ValueError(f"memory size must be positive, got {text!r}")
    return value


def format_bytes(value: int) -> str:
    """The shortest exact binary spelling, for ids and file names: 8589934592 -> '8GiB',
    1536 -> '1.5KiB', 1000 -> '1000B'."""
    for unit, size in _BINARY_UNITS:
        if value >= size and (value * 10) % size == 0:
            return f"{value / size:g}{unit}"
    return f"{value}B"


def format_size(value_bytes: float) -> str:
    """A memory size as a person writes it: '8 GiB', '1.5 GiB', '64 MiB', '12.5 KiB', '512 B'."""
    for unit, size in _BINARY_UNITS:
        if abs(value_bytes) >= size:
            return f"{value_bytes / size:.4g} {unit}"
    return f"{value_bytes:.4g} B"


def format_gib(value_bytes: float | None, digits: int = 3) -> str:
    """'1.234 GiB' at a fixed number of decimals, for columns of figures; '-' when missing."""
    if value_bytes is None or value_bytes != value_bytes:
        return "-"
    return f"{value_bytes / GIB:.{digits}f} GiB"


# -- cells and results ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One point of a grid under one protocol: everything that determines a measurement."""

    method: str
    arch: str
    res: int
    batch: int
    micro_batch: int | None = None
    classes: int = 10
    seed: int = 0
    warmup: int = 5
    steps: int = 20
    device_mem_bytes: int | None = None
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; weights and optimizer state fp32)
    memory_format: str = "contiguous"  # contiguous | channels_last
    compile: str = "none"  # none | default | max-autotune (torch.compile mode)

    @property
    def cell_id(self) -> str:
        """A readable id, unique within one sweep's grid; a setting at its default adds
        nothing, so the ids of earlier runs stay what they were."""
        parts = [self.method, self.arch, f"r{self.res}", f"b{self.batch}"]
        if self.micro_batch is not None:
            parts.append(f"mb{self.micro_batch}")
        parts.append(f"k{self.classes}")
        parts += tooling_parts(self.precision, self.memory_format, self.compile)
        if self.device_mem_bytes is not None:
            parts.append(f"mem{format_bytes(self.device_mem_bytes)}")
        return "_".join(parts)


# Settings an earlier membench did not record were at their defaults; readers fill them in.
SETTING_DEFAULTS = {f.name: f.default for f in fields(Cell)
                    if f.name in ("precision", "memory_format", "compile")}


def tooling_parts(precision: str, memory_format: str, compile_mode: str) -> list[str]:
    """The tooling settings not at their defaults, as a cell id and a report name them:
    ['bf16', 'channels-last', 'compile-default']; [] at the defaults (or left empty)."""
    parts = [] if precision in ("", "fp32") else [precision]
    if memory_format not in ("", "contiguous"):
        parts.append(memory_format.replace("_", "-"))
    if compile_mode not in ("", "none"):
        parts.append(f"compile-{compile_mode}")
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


@dataclass
class CellResult:
    """One cell's measurement; carries its own configuration and provenance.

    ``step_ms`` holds the measured step times. A result read back from ``cells.csv`` has no step
    times (those are in ``steps.csv``); it keeps the row's recorded statistics instead, so
    ``CellResult.from_row(row).row() == row`` for every membench row.
    """

    cell: Cell
    device: str
    device_name: str
    status: str = OK
    error: str = ""
    step_ms: list[float] = field(default_factory=list)
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    host_peak_rss_bytes: int | None = None
    nvml_used_bytes: int | None = None
    memory_source: str = ""
    breakdown: MemoryBreakdown | None = None
    started_at: str = ""
    torch_threads: int = 0
    torch_version: str = ""
    membench_version: str = ""
    flops_per_step: int | None = None  # FLOPs of one training step (membench.flops)
    compile_s: float | None = None  # the first warmup step, where torch.compile compiles
    offloaded_bytes: int | None = None  # most saved-tensor bytes held in host memory at once
    peak_tflops: float | None = None  # the device's peak for this cell's precision, if known
    peak_precision: str = ""
    peak_source: str = ""  # datasheet | user | gemm-calibrated
    recorded_timing: dict[str, float | None] | None = None  # stats of a row read back, see above
    host: str = ""  # hostname of the machine the cell ran on (a Ray node, or this machine)

    @property
    def is_estimate(self) -> bool:
        return is_estimate_row({"device": self.device, "memory_source": self.memory_source})

    @property
    def imgs_per_s(self) -> float | None:
        """Images per second over the measured steps: batch x steps / total measured time."""
        if not self.step_ms and self.recorded_timing is not None:
            return self.recorded_timing.get("imgs_per_s")
        total_s = sum(self.step_ms) / 1e3
        return self.cell.batch * len(self.step_ms) / total_s if total_s > 0 else None

    @property
    def achieved_tflops(self) -> float | None:
        """FLOPs per step / median step time, in TFLOP/s."""
        median = self.summary_stats()["median"]
        if self.flops_per_step is None or not median:
            return None
        return self.flops_per_step / (median / 1e3) / 1e12

    @property
    def mfu(self) -> float | None:
        """Model FLOPs utilisation: achieved TFLOP/s / the device's peak."""
        achieved = self.achieved_tflops
        if achieved is None or not self.peak_tflops:
            return None
        return achieved / self.peak_tflops

    def summary_stats(self) -> dict[str, float | None]:
        """Median, p10, p90 and mean step time in ms (None without measured steps)."""
        if not self.step_ms:
            recorded = self.recorded_timing or {}
            return {stat: recorded.get(f"step_ms_{stat}") for stat in TIMING_STATS}
        ordered = sorted(self.step_ms)
        if len(ordered) >= 2:
            deciles = statistics.quantiles(ordered, n=10, method="inclusive")
            p10, p90 = deciles[0], deciles[-1]
        else:
            p10 = p90 = ordered[0]
        return {"median": statistics.median(ordered), "p10": p10, "p90": p90,
                "mean": statistics.fmean(ordered)}

    def row(self) -> dict:
        """This result as one ``cells.csv`` row, keyed by CELL_COLUMNS."""
        stats = self.summary_stats()
        cell = self.cell
        row = {
            "cell_id": cell.cell_id, "device": self.device, "device_name": self.device_name,
            "host": self.host, "status": self.status, "error": self.error,
            "imgs_per_s": self.imgs_per_s,
            "peak_allocated_bytes": self.peak_allocated_bytes,
            "peak_reserved_bytes": self.peak_reserved_bytes,
            "host_peak_rss_bytes": self.host_peak_rss_bytes,
            "nvml_used_bytes": self.nvml_used_bytes, "memory_source": self.memory_source,
            "torch_version": self.torch_version, "membench_version": self.membench_version,
            "torch_threads": self.torch_threads, "started_at": self.started_at,
            "flops_per_step": self.flops_per_step, "achieved_tflops": self.achieved_tflops,
            "peak_tflops": self.peak_tflops, "peak_precision": self.peak_precision,
            "peak_source": self.peak_source, "mfu": self.mfu, "compile_s": self.compile_s,
            "offloaded_bytes": self.offloaded_bytes,
            **{f"step_ms_{stat}": stats[stat] for stat in TIMING_STATS},
            **{f.name: getattr(cell, f.name) for f in fields(Cell)},
            **dict.fromkeys(BREAKDOWN_COLUMNS),
        }
        if self.breakdown is not None:
            row.update(self.breakdown.as_columns())
        return {column: row.get(column) for column in CELL_COLUMNS}

    @classmethod
    def from_row(cls, row: Mapping) -> CellResult:
        """The inverse of ``row()``: a result from a ``cells.csv`` row, as strings (csv) or typed
        values (a DataFrame record). Missing columns read as empty. ValueError for a value that
        does not fit its column's type."""
        values = {column: parse_value(column, row.get(column)) for column in CELL_COLUMNS}
        # A setting an earlier membench did not record was at its default.
        cell = Cell(**{f.name: values[f.name] for f in fields(Cell)
                       if values[f.name] not in (None, "") or f.default is MISSING})
        breakdown = None
        if all(values[c] is not None for c in BREAKDOWN_COLUMNS):
            breakdown = MemoryBreakdown(*(values[c] for c in BREAKDOWN_COLUMNS))
        timing = {c: values[c] for c in ("imgs_per_s", *(f"step_ms_{s}" for s in TIMING_STATS))}
        return cls(
            cell, values["device"], values["device_name"], status=values["status"],
            error=values["error"], peak_allocated_bytes=values["peak_allocated_bytes"],
            peak_reserved_bytes=values["peak_reserved_bytes"],
            host_peak_rss_bytes=values["host_peak_rss_bytes"],
            nvml_used_bytes=values["nvml_used_bytes"], memory_source=values["memory_source"],
            breakdown=breakdown, started_at=values["started_at"],
            torch_threads=values["torch_threads"] or 0, torch_version=values["torch_version"],
            membench_version=values["membench_version"], flops_per_step=values["flops_per_step"],
            peak_tflops=values["peak_tflops"], peak_precision=values["peak_precision"],
            peak_source=values["peak_source"], compile_s=values["compile_s"],
            offloaded_bytes=values["offloaded_bytes"], recorded_timing=timing,
            host=values["host"],
        )


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
