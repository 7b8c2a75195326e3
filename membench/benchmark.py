"""membench inside pytest-benchmark: the ``membench_benchmark`` fixture and an exact memory gate.

A pytest plugin, registered under the ``pytest11`` entry point ``membench``, so it is loaded by
every pytest run in an environment where membench is installed (``-p no:membench`` turns it
off). It imports only pytest, the standard library and membench's torch-free modules; torch and
membench's measuring modules are imported when the fixture is first used.

A test of the training step one cares about::

    def test_bp_step(membench_benchmark):
        result = membench_benchmark("bp", arch="vgg8", res=32, batch=64)
        assert result.peak_allocated_bytes < 2 * 2**30

The fixture builds the cell's runner and batch and runs its warmup the protocol's way
(``prepare_cell``); on the CPU it then runs the tensor tracker's separate pass for peak memory.
Then ``benchmark.pedantic`` runs one step per round, ``steps`` rounds, the device synchronised in
each round so a CUDA round's time is real; on CUDA the allocator's peak is reset before the rounds
and read after them. Peak, imgs/s, device and cell id go into ``benchmark.extra_info``, so into
pytest-benchmark's JSON. Under ``--benchmark-disable`` pedantic calls its target once, and the
fixture runs the remaining rounds itself. imgs/s = batch x rounds / the rounds' time, each round
timed by ``time.perf_counter`` around one step and the synchronize (what pytest-benchmark times).

``check_peak_memory(result, baseline)`` gates the peak against a pytest-benchmark JSON or a
membench results folder and fails (``MemoryRegression``) with the byte difference; the fixture's
``memory_baseline=`` or ``--membench-memory-baseline`` applies it. Time regressions are left to
pytest-benchmark (``--benchmark-compare-fail=median:10%``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .errors import InputError
from .schema import CELLS_FILE, Cell, MemoryBreakdown, device_kind, format_size

if TYPE_CHECKING:  # for annotations only: it pulls in torch
    from .devices import Device

# The cell options the fixture takes besides method, arch, res and batch; anything else a sweep
# knows (timeout, isolation, estimate, ...) does not apply to one cell measured in this process.
CELL_OPTIONS = ("micro_batch", "classes", "seed", "warmup", "steps", "device", "device_mem")
RECORD_JSON_HINT = "pytest --benchmark-enable --benchmark-json=BASELINE.json"


class MemoryBaselineError(InputError):
    """A memory baseline that cannot be read or is ambiguous for a cell (bad input)."""


class MissingBaselineCell(AssertionError):
    """The baseline has no measurement of this cell on this kind of device (a gate failure)."""


class MemoryRegression(AssertionError):
    """The measured peak grew past the allowed increase over the baseline (a gate failure);
    ``check`` is the MemoryCheck that failed."""

    def __init__(self, message: str, check: MemoryCheck):
        super().__init__(message)
        self.check = check


# -- the result ------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryCheck:
    """One cell's peak against its baseline; ``passed`` when it grew by at most ``allowed``."""

    cell_id: str
    memory_source: str
    baseline: str  # where the baseline figure came from: the file and its entry
    baseline_bytes: int
    measured_bytes: int
    allowed_increase_pct: float
    notes: tuple[str, ...] = ()

    @property
    def difference_bytes(self) -> int:
        return self.measured_bytes - self.baseline_bytes

    @property
    def allowed_bytes(self) -> int:
        return math.floor(self.baseline_bytes * self.allowed_increase_pct / 100)

    @property
    def passed(self) -> bool:
        return self.difference_bytes <= self.allowed_bytes

    def describe(self) -> str:
        diff = self.difference_bytes
        pct = 100 * diff / self.baseline_bytes if self.baseline_bytes else math.inf
        change = "grew" if diff > 0 else "shrank" if diff < 0 else "is unchanged"
        amount = f" by {abs(diff)} B ({format_size(abs(diff))}, {pct:+.3f}%)" if diff else ""
        allowed = ("exact" if self.allowed_increase_pct == 0
                   else f"{self.allowed_increase_pct:g}% = {self.allowed_bytes} B")
        lines = [f"{self.cell_id} ({self.memory_source}): peak_allocated_bytes {change}{amount}: "
                 f"{self.baseline_bytes:,} B in {self.baseline} -> {self.measured_bytes:,} B now; "
                 f"allowed increase: {allowed}"]
        return "\n".join(lines + list(self.notes))


@dataclass(frozen=True)
class BenchmarkResult:
    """What ``membench_benchmark`` measured for one cell.

    ``peak_allocated_bytes`` is the allocator's peak over the timed rounds on CUDA
    (``memory_source`` ``cuda_allocator``) or the tensor tracker's peak over its separate pass on
    the CPU (``tracker``, with the ``breakdown`` at the peak). ``step_ms`` holds each round's time
    (one step plus a device synchronize); ``imgs_per_s`` = batch x rounds / their total time.
    """

    cell: Cell
    device: str  # 'cpu', 'cuda:0'
    device_name: str  # the CPU or GPU model
    peak_allocated_bytes: int
    memory_source: str
    step_ms: tuple[float, ...]
    benchmark_enabled: bool  # False under --benchmark-disable: no pytest-benchmark stats
    peak_reserved_bytes: int | None = None
    nvml_used_bytes: int | None = None
    breakdown: MemoryBreakdown | None = None
    torch_version: str = ""
    membench_version: str = ""
    memory_check: MemoryCheck | None = field(default=None, compare=False)

    @property
    def cell_id(self) -> str:
        return self.cell.cell_id

    @property
    def imgs_per_s(self) -> float:
        total_s = sum(self.step_ms) / 1e3
        return self.cell.batch * len(self.step_ms) / total_s if total_s > 0 else math.inf

    @property
    def step_ms_median(self) -> float:
        return statistics.median(self.step_ms)

    def extra_info(self) -> dict:
        """What goes into ``benchmark.extra_info`` (JSON-serialisable)."""
        info = {"cell_id": self.cell_id, **dataclasses.asdict(self.cell),
                "device": self.device, "device_name": self.device_name,
                "memory_source": self.memory_source,
                "peak_allocated_bytes": self.peak_allocated_bytes,
                "imgs_per_s": self.imgs_per_s, "step_ms_median": self.step_ms_median,
                "torch_version": self.torch_version, "membench_version": self.membench_version}
        if self.peak_reserved_bytes is not None:
            info["peak_reserved_bytes"] = self.peak_reserved_bytes
        if self.nvml_used_bytes is not None:
            info["nvml_used_bytes"] = self.nvml_used_bytes
        if self.breakdown is not None:
            info.update(self.breakdown.as_columns())
        return info


# -- building and measuring one cell ---------------------------------------------------------
def make_cell(method: str, *, arch=None, res=None, batch=None, **options) -> tuple[Cell, str]:
    """The one cell these options name, validated by ``membench.config.build_config`` (one-line
    ConfigError otherwise), and the device spec (``auto`` unless ``device`` is given)."""
    from .config import ConfigError, build_config

    unknown = sorted(set(options) - set(CELL_OPTIONS))
    if unknown:
        raise ConfigError(f"membench_benchmark does not take {unknown[0]!r}; cell options: "
                          f"arch, res, batch, {', '.join(CELL_OPTIONS)}")
    config = build_config(method=method, arch=arch, res=res, batch=batch, **options)
    if len(config.cells) != 1:
        raise ConfigError(f"membench_benchmark measures one cell, but these options make "
                          f"{len(config.cells)} ({', '.join(c.cell_id for c in config.cells)}); "
                          "parametrize the test instead")
    return config.cells[0], config.device


def measure(benchmark, cell: Cell, device: Device) -> BenchmarkResult:
    """Measure ``cell`` on ``device`` inside ``benchmark`` (pytest-benchmark's fixture).

    Warmup (the protocol's), then on the CPU the tracker pass, then ``cell.steps`` rounds of one
    step each through ``benchmark.pedantic``. Errors (an OOM included) propagate.
    """
    import torch

    from . import __version__
    from .protocol import prepare_cell

    info = benchmark.extra_info  # mutated, never replaced: pytest-benchmark's stats share it
    info.update({"cell_id": cell.cell_id, "device": str(device), "device_name": device.name()})
    prepared = None
    try:
        prepared = prepare_cell(cell, device)
        peak = breakdown = reserved = nvml_used = None
        source = ""
        if device.needs_tracker_pass:
            tracker = prepared.tracked_memory()
            peak, breakdown, source = tracker.peak_bytes, tracker.peak_breakdown(), "tracker"

        round_s: list[float] = []

        def one_round() -> None:
            start = time.perf_counter()
            prepared.step()
            device.synchronize()
            round_s.append(time.perf_counter() - start)

        device.reset_peak_memory()
        benchmark.pedantic(one_round, rounds=cell.steps, iterations=1, warmup_rounds=0)
        # Disabled, pytest-benchmark ran the target once: run the rest of the cell's rounds.
        while len(round_s) < cell.steps:
            one_round()
        allocator = device.read_peak_memory()
        if allocator is not None:
            peak, source = allocator.peak_allocated_bytes, allocator.source
            reserved, nvml_used = allocator.peak_reserved_bytes, allocator.nvml_used_bytes
    finally:
        prepared = None  # the runner and batch go before the next test's cell is built
        if cell.device_mem_bytes is not None and device.total_memory_bytes():
            device.set_memory_budget(device.total_memory_bytes())  # lift the cap for later tests
        device.release_cached_memory()
    result = BenchmarkResult(
        cell, str(device), device.name(), int(peak), source,
        # --benchmark-cprofile adds a profiled round after the timed ones: not counted.
        tuple(s * 1e3 for s in round_s[:cell.steps]), benchmark_enabled=not benchmark.disabled,
        peak_reserved_bytes=reserved, nvml_used_bytes=nvml_used, breakdown=breakdown,
        torch_version=torch.__version__, membench_version=__version__,
    )
    info.update(result.extra_info())
    return result


# -- the memory gate -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    """One measurement of a cell in a baseline, whatever the file it came from."""

    where: str
    cell_id: str
    device: str
    device_name: str
    memory_source: str
    peak_allocated_bytes: int | None
    status: str = "ok"
    torch_version: str = ""


def _json_entries(path: Path) -> list[_Entry]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MemoryBaselineError(f"cannot read {path} as a pytest-benchmark JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise MemoryBaselineError(f"{path} is not a pytest-benchmark JSON (no 'benchmarks' list)")
    entries = []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info") if isinstance(bench, dict) else None
        if not isinstance(info, dict) or "cell_id" not in info:
            continue  # a benchmark that is not membench's
        peak = info.get("peak_allocated_bytes")
        entries.append(_Entry(
            f"{path} [{bench.get('fullname') or bench.get('name')}]", str(info["cell_id"]),
            str(info.get("device", "")), str(info.get("device_name", "")),
            str(info.get("memory_source", "")), int(peak) if peak is not None else None,
            torch_version=str(info.get("torch_version", ""))))
    return entries


def _folder_entries(path: Path) -> list[_Entry]:
    from .results import read_cells

    file = path if path.name == CELLS_FILE else path / CELLS_FILE
    entries = []
    for row in read_cells(file).to_dict("records"):
        if row["is_estimate"]:
            continue  # a prediction never gates a measurement
        peak = row["peak_allocated_bytes"]
        entries.append(_Entry(
            f"{file} [{row['cell_id']} on {row['device']}]", str(row["cell_id"]), str(row["device"]),
            str(row["device_name"]), str(row["memory_source"] or ""),
            None if peak is None or peak != peak else int(peak), str(row["status"]),
            str(row["torch_version"] or "")))
    return entries


def read_memory_baseline(baseline: str | Path) -> list[_Entry]:
    """Every membench measurement in a pytest-benchmark JSON file, or in a membench results
    folder (or its ``cells.csv``). MemoryBaselineError for anything else."""
    path = Path(baseline)
    if (path.is_dir() and (path / CELLS_FILE).is_file()) or (path.name == CELLS_FILE
                                                              and path.is_file()):
        return _folder_entries(path)
    if path.is_file():
        return _json_entries(path)
    what = "folder without a cells.csv" if path.is_dir() else "path that does not exist"
    raise MemoryBaselineError(f"memory baseline {path} is a {what}; give a pytest-benchmark JSON "
                              "file or a membench results folder")


def check_peak_memory(result: BenchmarkResult, baseline: str | Path, *,
                      max_increase_pct: float | None = None) -> MemoryCheck:
    """Compare ``result``'s peak with the same cell in ``baseline`` and return the check; raise
    MemoryRegression (an AssertionError, so a pytest failure) with the byte difference when it
    grew by more than allowed, and MissingBaselineCell when the baseline has no such cell.

    The same cell is the same ``cell_id`` on the same kind of device with the same memory source,
    and on CUDA the same GPU model, as ``membench compare`` matches. The allowed increase is
    ``max_increase_pct`` or, by default, ``membench compare``'s for the memory source: 0 % (exact)
    for the tracker, 1 % for the CUDA allocator. A decrease always passes.
    """
    from .compare import DEFAULT_MEM_INCREASE_PCT, FALLBACK_MEM_INCREASE_PCT

    if max_increase_pct is not None and not max_increase_pct >= 0:
        raise MemoryBaselineError(f"max_increase_pct must be >= 0, got {max_increase_pct!r}")
    kind = device_kind(result.device)
    same_cell = [e for e in read_memory_baseline(baseline)
                 if e.cell_id == result.cell_id and device_kind(e.device) == kind]
    usable = [e for e in same_cell if e.status == "ok" and e.peak_allocated_bytes is not None
              and e.memory_source == result.memory_source
              and (kind != "cuda" or e.device_name == result.device_name)]
    if not usable:
        seen = "; ".join(f"{e.device} ({e.device_name}, {e.memory_source or e.status})"
                         for e in same_cell)
        raise MissingBaselineCell(
            f"no {result.memory_source} measurement of {result.cell_id} on {kind}"
            f"{f' ({result.device_name})' if kind == 'cuda' else ''} in {baseline}"
            f"{f'; it has this cell only on: {seen}' if seen else ''}. Record the baseline with "
            f"this cell (e.g. `{RECORD_JSON_HINT}`) and commit it")
    peaks = sorted({e.peak_allocated_bytes for e in usable})
    if len(peaks) > 1:
        raise MemoryBaselineError(
            f"{baseline} holds {len(usable)} measurements of {result.cell_id} on {kind} with "
            f"different peaks ({', '.join(map(str, peaks))} B); keep one run per baseline")
    entry = usable[0]
    pct = (max_increase_pct if max_increase_pct is not None
           else DEFAULT_MEM_INCREASE_PCT.get(result.memory_source, FALLBACK_MEM_INCREASE_PCT))
    notes = ()
    if entry.torch_version and result.torch_version and entry.torch_version != result.torch_version:
        notes = (f"note: the baseline ran torch {entry.torch_version}, this run torch "
                 f"{result.torch_version}; memory figures can move with torch itself",)
    check = MemoryCheck(result.cell_id, result.memory_source, entry.where,
                        int(entry.peak_allocated_bytes), result.peak_allocated_bytes, float(pct),
                        notes)
    if not check.passed:
        raise MemoryRegression("membench memory gate: " + check.describe()
                               + "\nif the change is intended, re-record the baseline", check)
    return check


# -- the pytest plugin -----------------------------------------------------------------------
def pytest_addoption(parser) -> None:
    group = parser.getgroup("membench", "membench (membench_benchmark fixture)")
    group.addoption(
        "--membench-device", default=None, metavar="DEVICE",
        help="device for membench_benchmark cells that do not name one: auto (default: cuda if "
             "available, else cpu), cpu, cuda, cuda:N")
    group.addoption(
        "--membench-memory-baseline", default=None, metavar="PATH",
        help="gate every membench_benchmark cell's peak memory against this pytest-benchmark "
             "JSON or membench results folder (exact for the CPU tracker, 1%% on CUDA); a cell "
             "missing from it fails")


class MembenchBenchmark:
    """The ``membench_benchmark`` fixture's value: call it once per test with one cell."""

    def __init__(self, benchmark, config):
        self.benchmark = benchmark  # pytest-benchmark's fixture (group, extra_info, stats)
        self._config = config
        self._used = False
        self.result: BenchmarkResult | None = None

    def __call__(self, method: str, *, arch: str | None = None, res: int | None = None,
                 batch: int | None = None, memory_baseline: str | Path | None = None,
                 max_mem_increase_pct: float | None = None, **cell_options) -> BenchmarkResult:
        """Measure one cell (``build_config``'s settings: method, arch, res, batch and
        micro_batch, classes, seed, warmup, steps, device, device_mem; defaults as in a
        sweep). With ``memory_baseline`` (or ``--membench-memory-baseline``) the peak is gated
        by ``check_peak_memory`` after the rounds."""
        if cell_options.get("device") is None:
            cell_options["device"] = self._config.getoption("membench_device")
        cell, spec = make_cell(method, arch=arch, res=res, batch=batch, **cell_options)
        self._use()
        return self._measure(cell, spec, memory_baseline, max_mem_increase_pct)

    def cell(self, cell: Cell, device: str | None = None, *,
             memory_baseline: str | Path | None = None,
             max_mem_increase_pct: float | None = None) -> BenchmarkResult:
        """Measure a ``Cell`` made elsewhere (``expand_grid``, ``membench.gating``)."""
        self._use()
        return self._measure(cell, device or self._config.getoption("membench_device") or "auto",
                             memory_baseline, max_mem_increase_pct)

    def _use(self) -> None:
        if self._used:
            raise RuntimeError("membench_benchmark measures one cell per test (pytest-benchmark "
                               "times one thing per test); parametrize the test for more cells")
        self._used = True

    def _measure(self, cell: Cell, spec: str, memory_baseline, max_mem_increase_pct
                 ) -> BenchmarkResult:
        from .devices import resolve_device

        self.result = measure(self.benchmark, cell, resolve_device(spec))
        baseline = memory_baseline or self._config.getoption("membench_memory_baseline")
        if baseline is not None:
            try:
                check = check_peak_memory(self.result, baseline,
                                          max_increase_pct=max_mem_increase_pct)
            except MemoryRegression as err:
                self._record_check(err.check)
                raise
            self._record_check(check)
            self.result = dataclasses.replace(self.result, memory_check=check)
        return self.result

    def _record_check(self, check: MemoryCheck) -> None:
        self.benchmark.extra_info.update({"memory_baseline_bytes": check.baseline_bytes,
                                          "memory_difference_bytes": check.difference_bytes})


@pytest.fixture
def membench_benchmark(benchmark, request) -> MembenchBenchmark:
    """``membench_benchmark(method, arch=..., res=..., batch=..., **cell_options)``: one
    membench cell timed by pytest-benchmark; returns a ``BenchmarkResult``. See
    ``membench.benchmark``."""
    return MembenchBenchmark(benchmark, request.config)


__all__ = [
    "BenchmarkResult", "MembenchBenchmark", "MemoryBaselineError", "MemoryCheck",
    "MemoryRegression", "MissingBaselineCell", "check_peak_memory", "make_cell", "measure",
    "membench_benchmark", "read_memory_baseline",
]
