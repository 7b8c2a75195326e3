"""membench inside pytest-benchmark: the ``membench_benchmark`` fixture and an exact memory gate.

A pytest plugin, registered under the ``pytest11`` entry point ``membench``, so it is loaded by
every pytest run in an environment where membench is installed (``-p no:membench`` turns it
off). It imports only pytest, the standard library and membench's torch-free modules; torch and
membench's measuring modules are imported when the fixture is first used.

A test of the training step one cares about::

    def test_bp_step(membench_benchmark):
        result = membench_benchmark("bp", arch="vgg8", res=32, batch=64)
        assert result.peak_allocated_bytes < 2 * 2**30

The fixture measures the cell under the protocol itself (``membench.measure.protocol.run_cell``:
FLOPs, warmup, on the CPU the tracker's pass, on CUDA the allocator's peaks), with one change:
the timed steps are pytest-benchmark's rounds. ``benchmark.pedantic`` runs one step per round,
``steps`` rounds, the device synchronised in each round so a CUDA round's time is real. Under
``--benchmark-disable`` pedantic calls its target once, and the fixture runs the remaining rounds
itself. The result is the protocol's ``CellResult``; its cells.csv row goes into
``benchmark.extra_info``, so into pytest-benchmark's JSON. A cell that does not run ``ok`` (an
OOM, a runner error) fails the test with the row's error.

``check_peak_memory(result, baseline)`` gates the peak against a pytest-benchmark JSON or a
membench results folder and fails (``MemoryRegression``) with the byte difference; the fixture's
``memory_baseline=`` or ``--membench-memory-baseline`` applies it. Time regressions are left to
pytest-benchmark (``--benchmark-compare-fail=median:10%``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .config import SETTINGS
from .errors import InputError
from .schema import CELLS_FILE, OK, Cell, CellResult, device_kind
from .units import format_size

if TYPE_CHECKING:  # for annotations only: it pulls in torch
    from .measure.devices import Device

# The settings the fixture takes besides the method: a cell's, and its device; anything else a
# sweep knows (timeout, isolation, estimate, ...) does not apply to one cell in this process.
CELL_OPTIONS = tuple(s.key for s in SETTINGS if "fixture" in s.commands and s.key != "method")
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
        allowed = (
            "exact"
            if self.allowed_increase_pct == 0
            else f"{self.allowed_increase_pct:g}% = {self.allowed_bytes} B"
        )
        lines = [
            f"{self.cell_id} ({self.memory_source}): peak_allocated_bytes {change}{amount}: "
            f"{self.baseline_bytes:,} B in {self.baseline} -> {self.measured_bytes:,} B now; "
            f"allowed increase: {allowed}"
        ]
        return "\n".join(lines + list(self.notes))


# -- building and measuring one cell ---------------------------------------------------------
def make_cell(method: str, **options) -> tuple[Cell, str]:
    """The one cell these options name, validated by ``membench.config.build_config`` (one-line
    ConfigError otherwise), and the device spec (``auto`` unless ``device`` is given)."""
    from .config import ConfigError, build_config

    unknown = sorted(set(options) - set(CELL_OPTIONS))
    if unknown:
        raise ConfigError(
            f"membench_benchmark does not take {unknown[0]!r}; cell options: "
            f"{', '.join(CELL_OPTIONS)}"
        )
    config = build_config(method=method, **options)
    if len(config.cells) != 1:
        raise ConfigError(
            f"membench_benchmark measures one cell, but these options make "
            f"{len(config.cells)} ({', '.join(c.cell_id for c in config.cells)}); "
            "parametrize the test instead"
        )
    return config.cells[0], config.options.device


class CellFailed(AssertionError):
    """The fixture's cell did not run ok (an OOM or a runner error): a test failure."""


def measure(benchmark, cell: Cell, device: Device) -> CellResult:
    """Measure ``cell`` on ``device`` under the protocol, its timed steps ``cell.steps`` rounds
    of ``benchmark.pedantic`` (pytest-benchmark's fixture), each one step and a synchronize.
    CellFailed when the cell is not ok."""
    info = benchmark.extra_info  # mutated, never replaced: pytest-benchmark's stats share it
    info.update({"cell_id": cell.cell_id, "device": str(device), "device_name": device.name()})

    def rounds(step, count: int) -> list[float]:
        round_ms: list[float] = []

        def one_round() -> None:
            start = time.perf_counter()
            step()
            device.synchronize()
            round_ms.append((time.perf_counter() - start) * 1e3)

        benchmark.pedantic(one_round, rounds=count, iterations=1, warmup_rounds=0)
        # Disabled, pytest-benchmark ran the target once: run the rest of the cell's rounds.
        while len(round_ms) < count:
            one_round()
        # --benchmark-cprofile adds a profiled round after the timed ones: not counted.
        return round_ms[:count]

    from .measure.protocol import run_cell

    result = run_cell(cell, device, timer=rounds)
    info.update({key: value for key, value in result.row().items() if value not in (None, "")})
    if result.status != OK:
        raise CellFailed(
            f"membench_benchmark: {cell.cell_id} on {device}: {result.status}: {result.error}"
        )
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
        entries.append(
            _Entry(
                f"{path} [{bench.get('fullname') or bench.get('name')}]",
                str(info["cell_id"]),
                str(info.get("device", "")),
                str(info.get("device_name", "")),
                str(info.get("memory_source", "")),
                int(peak) if peak is not None else None,
                torch_version=str(info.get("torch_version", "")),
            )
        )
    return entries


def _folder_entries(path: Path) -> list[_Entry]:
    from .results import read_cells

    file = path if path.name == CELLS_FILE else path / CELLS_FILE
    entries = []
    for row in read_cells(file).to_dict("records"):
        if row["is_estimate"]:
            continue  # a prediction never gates a measurement
        peak = row["peak_allocated_bytes"]
        entries.append(
            _Entry(
                f"{file} [{row['cell_id']} on {row['device']}]",
                str(row["cell_id"]),
                str(row["device"]),
                str(row["device_name"]),
                str(row["memory_source"] or ""),
                None if peak is None or peak != peak else int(peak),
                str(row["status"]),
                str(row["torch_version"] or ""),
            )
        )
    return entries


def read_memory_baseline(baseline: str | Path) -> list[_Entry]:
    """Every membench measurement in a pytest-benchmark JSON file, or in a membench results
    folder (or its ``cells.csv``). MemoryBaselineError for anything else."""
    path = Path(baseline)
    if (path.is_dir() and (path / CELLS_FILE).is_file()) or (
        path.name == CELLS_FILE and path.is_file()
    ):
        return _folder_entries(path)
    if path.is_file():
        return _json_entries(path)
    what = "folder without a cells.csv" if path.is_dir() else "path that does not exist"
    raise MemoryBaselineError(
        f"memory baseline {path} is a {what}; give a pytest-benchmark JSON "
        "file or a membench results folder"
    )


def check_peak_memory(
    result: CellResult, baseline: str | Path, *, max_increase_pct: float | None = None
) -> MemoryCheck:
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
    same_cell = [
        e
        for e in read_memory_baseline(baseline)
        if e.cell_id == result.cell_id and device_kind(e.device) == kind
    ]
    usable = [
        e
        for e in same_cell
        if e.status == "ok"
        and e.peak_allocated_bytes is not None
        and e.memory_source == result.memory_source
        and (kind != "cuda" or e.device_name == result.device_name)
    ]
    if not usable:
        seen = "; ".join(
            f"{e.device} ({e.device_name}, {e.memory_source or e.status})" for e in same_cell
        )
        raise MissingBaselineCell(
            f"no {result.memory_source} measurement of {result.cell_id} on {kind}"
            f"{f' ({result.device_name})' if kind == 'cuda' else ''} in {baseline}"
            f"{f'; it has this cell only on: {seen}' if seen else ''}. Record the baseline with "
            f"this cell (e.g. `{RECORD_JSON_HINT}`) and commit it"
        )
    peaks = sorted({e.peak_allocated_bytes for e in usable})
    if len(peaks) > 1:
        raise MemoryBaselineError(
            f"{baseline} holds {len(usable)} measurements of {result.cell_id} on {kind} with "
            f"different peaks ({', '.join(map(str, peaks))} B); keep one run per baseline"
        )
    entry = usable[0]
    pct = (
        max_increase_pct
        if max_increase_pct is not None
        else DEFAULT_MEM_INCREASE_PCT.get(result.memory_source, FALLBACK_MEM_INCREASE_PCT)
    )
    notes = ()
    if entry.torch_version and result.torch_version and entry.torch_version != result.torch_version:
        notes = (
            f"note: the baseline ran torch {entry.torch_version}, this run torch "
            f"{result.torch_version}; memory figures can move with torch itself",
        )
    check = MemoryCheck(
        result.cell_id,
        result.memory_source,
        entry.where,
        int(entry.peak_allocated_bytes),
        result.peak_allocated_bytes,
        float(pct),
        notes,
    )
    if not check.passed:
        raise MemoryRegression(
            "membench memory gate: "
            + check.describe()
            + "\nif the change is intended, re-record the baseline",
            check,
        )
    return check


# -- the pytest plugin -----------------------------------------------------------------------
def pytest_addoption(parser) -> None:
    group = parser.getgroup("membench", "membench (membench_benchmark fixture)")
    group.addoption(
        "--membench-device",
        default=None,
        metavar="DEVICE",
        help="device for membench_benchmark cells that do not name one: auto (default: cuda if "
        "available, else cpu), cpu, cuda, cuda:N",
    )
    group.addoption(
        "--membench-memory-baseline",
        default=None,
        metavar="PATH",
        help="gate every membench_benchmark cell's peak memory against this pytest-benchmark "
        "JSON or membench results folder (exact for the CPU tracker, 1%% on CUDA); a cell "
        "missing from it fails",
    )


class MembenchBenchmark:
    """The ``membench_benchmark`` fixture's value: call it once per test with one cell. After
    the call, ``result`` is the cell's CellResult and ``memory_check`` the gate's MemoryCheck
    (None without a baseline)."""

    def __init__(self, benchmark, config):
        self.benchmark = benchmark  # pytest-benchmark's fixture (group, extra_info, stats)
        self._config = config
        self._used = False
        self.result: CellResult | None = None
        self.memory_check: MemoryCheck | None = None

    def __call__(
        self,
        method: str,
        *,
        memory_baseline: str | Path | None = None,
        max_mem_increase_pct: float | None = None,
        **cell_options,
    ) -> CellResult:
        """Measure one cell: ``method`` and any of ``CELL_OPTIONS`` (a cell's settings, and
        ``device``), as ``build_config`` reads them, defaults as in a sweep. With
        ``memory_baseline`` (or ``--membench-memory-baseline``) the peak is gated by
        ``check_peak_memory`` after the rounds."""
        if cell_options.get("device") is None:
            cell_options["device"] = self._config.getoption("membench_device")
        cell, spec = make_cell(method, **cell_options)
        self._use()
        return self._measure(cell, spec, memory_baseline, max_mem_increase_pct)

    def cell(
        self,
        cell: Cell,
        device: str | None = None,
        *,
        memory_baseline: str | Path | None = None,
        max_mem_increase_pct: float | None = None,
    ) -> CellResult:
        """Measure a ``Cell`` made elsewhere (``expand_grid``, ``membench.gating``)."""
        self._use()
        return self._measure(
            cell,
            device or self._config.getoption("membench_device") or "auto",
            memory_baseline,
            max_mem_increase_pct,
        )

    def _use(self) -> None:
        if self._used:
            raise RuntimeError(
                "membench_benchmark measures one cell per test (pytest-benchmark "
                "times one thing per test); parametrize the test for more cells"
            )
        self._used = True

    def _measure(self, cell: Cell, spec: str, memory_baseline, max_mem_increase_pct) -> CellResult:
        from .measure.devices import resolve_device

        self.result = measure(self.benchmark, cell, resolve_device(spec))
        baseline = memory_baseline or self._config.getoption("membench_memory_baseline")
        if baseline is not None:
            try:
                self.memory_check = check_peak_memory(
                    self.result, baseline, max_increase_pct=max_mem_increase_pct
                )
            except MemoryRegression as err:
                self._record_check(err.check)
                raise
            self._record_check(self.memory_check)
        return self.result

    def _record_check(self, check: MemoryCheck) -> None:
        self.benchmark.extra_info.update(
            {
                "memory_baseline_bytes": check.baseline_bytes,
                "memory_difference_bytes": check.difference_bytes,
            }
        )


@pytest.fixture
def membench_benchmark(benchmark, request) -> MembenchBenchmark:
    """``membench_benchmark(method, arch=..., res=..., batch=..., **cell_options)``: one
    membench cell timed by pytest-benchmark; returns its ``CellResult``. See
    ``membench.pytest_plugin``."""
    return MembenchBenchmark(benchmark, request.config)


__all__ = [
    "CellFailed",
    "MembenchBenchmark",
    "MemoryBaselineError",
    "MemoryCheck",
    "MemoryRegression",
    "MissingBaselineCell",
    "check_peak_memory",
    "make_cell",
    "measure",
    "membench_benchmark",
    "read_memory_baseline",
]
