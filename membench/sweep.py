"""The sweep engine: run a grid's cells isolated, append each result as it finishes, resume.

Isolation. With ``isolation="process"`` (the default) every cell runs in a worker process
(``membench.worker``), so a CUDA OOM, a segfault, ``os._exit`` or a hang in one cell becomes a row
(``oom``, ``error``, ``timeout``) and the sweep goes on. One worker is reused across cells until a
cell ends in anything but ``ok`` (or the device budget changes); then it is discarded and the next
cell gets a fresh one, so a poisoned CUDA context or a fragmented allocator never leaks into the
next measurement. Estimates run the same way, so ``timeout_s`` bounds them too.

Only the sweep process writes results (``membench.results``), under an exclusive lock on the
folder; a folder holding another program's CSV is refused before anything runs.

Resume. A cell counts as finished when ``cells.csv`` has a row with the same cell id, device,
device name (the GPU or CPU model), warmup, steps, seed and device budget (whatever its status,
except estimates). The device name comes from the first worker's hello, sent before any cell, so
the sweep process never opens a CUDA context; rows measured on another machine stay in the file
and do not count as finished here. Rerunning the same sweep skips finished cells; ``redo=True``
drops their rows (this machine's only) and runs them again. Before running, ``steps.csv`` rows
that belong to no row of ``cells.csv`` (a sweep killed between the two appends) are removed, so a
rerun cell never has its steps twice. Estimates are cheap and deterministic, so they are always
recomputed, replacing earlier estimate rows of the same cells for the same device kind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from .config import SETTING_BY_KEY, SweepConfig
from .devices import Device
from .envinfo import collect_env
from .flops import PeakSpec
from .results import (
    append_result, cell_key, check_results_folder, latest_rows, prune_results, results_lock,
    row_key, write_env,
)
from .schema import ENV_FILE, ERROR, OK, TIMEOUT, Cell, CellResult, is_estimate_row
from .worker import IsolatedWorker, Target, WorkerStartError, open_target


class SweepError(RuntimeError):
    """A sweep that cannot go on (its worker cannot start); the message is one line."""


class SweepProgress:
    """Hooks a sweep calls as it goes; subclass and override what you need (all no-ops here)."""

    def device_ready(self, device: str, device_name: str) -> None:
        """The cells run on ``device`` (e.g. ``cuda:0``), a ``device_name`` (the GPU or CPU model,
        as the worker names it); called once, before ``sweep_started``."""

    def note(self, text: str) -> None:
        """Something the user should read once (e.g. no peak is known for this GPU)."""

    def sweep_started(self, total: int, to_run: int, out_dir: Path) -> None:
        """``total`` cells in the grid, ``to_run`` of them not finished yet."""

    def cell_started(self, index: int, cell: Cell) -> None:
        """Cell number ``index`` (0-based among the cells to run) is starting."""

    def cell_finished(self, index: int, result: CellResult, wall_s: float) -> None:
        """Cell number ``index`` is done and its row is on disk."""

    def sweep_finished(self, results: list[CellResult]) -> None:
        """Every cell to run has a row."""


def sweep(config: SweepConfig, out_dir: Path, *, redo: bool = False,
          progress: SweepProgress | None = None) -> list[CellResult]:
    """Run (or, with ``config.estimate``, predict) every cell of a configuration into ``out_dir``.
    Returns the results of the cells run by this call."""
    if config.estimate:
        return estimate_sweep(list(config.cells), config.estimate_kind, out_dir,
                              isolation=config.isolation, timeout_s=config.timeout_s,
                              progress=progress)
    return run_sweep(list(config.cells), config.device, out_dir, isolation=config.isolation,
                     timeout_s=config.timeout_s, redo=redo, progress=progress,
                     peak_tflops=config.peak_tflops)


def run_sweep(cells: list[Cell], device: Device | str, out_dir: Path, *,
              isolation: str = "process", timeout_s: float | None = None, redo: bool = False,
              progress: SweepProgress | None = None,
              peak_tflops: float | None = None) -> list[CellResult]:
    """Measure every unfinished cell on ``device`` (a Device or a spec: ``cpu``, ``cuda:0``,
    ``auto``), appending each row to ``out_dir`` as it completes.

    ``isolation="process"`` runs cells in worker processes (see the module docstring);
    ``"none"`` runs them here, for debugging, and cannot enforce ``timeout_s``. Cells already in
    ``cells.csv`` for this device and device model are skipped unless ``redo``. Returns the
    results of the cells run by this call, in order. ``peak_tflops`` replaces the device's peak
    (datasheet or calibrated) for MFU. Raises ConfigError for bad arguments, ResultsError (or
    SweepLockedError) for a folder it cannot use.
    """
    return _sweep(cells, Target(str(device), peak_tflops=peak_tflops), out_dir, isolation,
                  timeout_s, progress, redo=redo)


def estimate_sweep(cells: list[Cell], device_kind: str, out_dir: Path, *,
                   isolation: str = "process", timeout_s: float | None = None,
                   progress: SweepProgress | None = None) -> list[CellResult]:
    """Predict every cell with ``membench.estimate`` for a kind of device (``cuda`` or ``cpu``)
    and append the rows, replacing earlier estimates of the same cells for the same kind (a
    ``cuda (estimate)`` row survives a ``cpu`` estimate). ``env.json`` is written only where the
    folder has none, so an estimate never replaces a measured run's provenance."""
    return _sweep(cells, Target(device_kind, estimate_kind=device_kind), out_dir, isolation,
                  timeout_s, progress, redo=True)


def _sweep(cells: list[Cell], target: Target, out_dir: Path, isolation: str,
           timeout_s: float | None, progress: SweepProgress | None, redo: bool) -> list[CellResult]:
    """The one sweep loop: lock, name the device, prune, skip what is done, run the rest.
    ``redo`` replaces the grid's earlier rows of the same kind (measured or estimated)."""
    isolation = SETTING_BY_KEY["isolation"].parse(isolation, "isolation")
    if timeout_s is not None:
        timeout_s = SETTING_BY_KEY["timeout"].parse(timeout_s, "timeout")
        if isolation == "none":
            raise ValueError("a timeout needs isolation='process' (a cell in this process "
                             "cannot be stopped)")
    progress = progress or SweepProgress()
    out_dir = Path(out_dir)
    with results_lock(out_dir):
        check_results_folder(out_dir)
        cells_runner = _CellsRunner(target, isolation, timeout_s, sorted({c.method for c in cells}))
        try:
            device, device_name = cells_runner.start()
            progress.device_ready(device, device_name)
            if cells_runner.peak is not None and cells_runner.peak.note:
                progress.note(cells_runner.peak.note)
            estimates = target.estimate_kind is not None
            keys = {cell_key(cell, device, device_name) for cell in cells}
            if redo:
                prune_results(out_dir, lambda row: row_key(row) in keys
                              and is_estimate_row(row) == estimates)
            else:
                prune_results(out_dir)  # orphan steps only
            done = set(latest_rows(out_dir, estimates=estimates))
            todo = [cell for cell in cells if cell_key(cell, device, device_name) not in done]
            progress.sweep_started(len(cells), len(todo), out_dir)
            if todo and (not estimates or not (out_dir / ENV_FILE).exists()):
                write_env(out_dir, cells_runner.provenance())
            results = []
            for index, cell in enumerate(todo):
                progress.cell_started(index, cell)
                start = time.perf_counter()
                result = cells_runner.run(cell)
                append_result(out_dir, result)
                results.append(result)
                progress.cell_finished(index, result, time.perf_counter() - start)
        finally:
            cells_runner.close()
    progress.sweep_finished(results)
    return results


class _CellsRunner:
    """Runs cells on one target, here or in workers, replacing a worker after a failed cell."""

    def __init__(self, target: Target, isolation: str, timeout_s: float | None, methods: list[str]):
        self.target, self.isolation, self.timeout_s, self.methods = target, isolation, timeout_s, methods
        self.worker: IsolatedWorker | None = None
        self.local: Callable[[Cell], CellResult] | None = None
        self.env: dict | None = None
        self.peak: PeakSpec | None = None

    def start(self) -> tuple[str, str]:
        """Open the target (a first worker, which names the device so this process never opens
        a CUDA context); returns (device, device_name)."""
        if self.isolation == "none":
            opened = open_target(self.target)
            self.local, self.peak = opened.run, opened.peak
            return opened.device, opened.device_name
        self.worker = self._new_worker(collect_env_info=True)
        self.env, self.peak = self.worker.env, self.worker.peak
        return self.worker.device, self.worker.device_name

    def provenance(self) -> dict:
        """env.json: the worker's (or this process's) environment and the peak MFU is held to."""
        env = dict(self.env or collect_env())
        if self.peak is not None:
            env["peak"] = asdict(self.peak)
        return env

    def _new_worker(self, collect_env_info: bool = False) -> IsolatedWorker:
        worker = IsolatedWorker(self.target, self.methods, collect_env_info=collect_env_info,
                                peak=self.peak)
        try:
            worker.wait_ready()
        except WorkerStartError as err:
            raise SweepError(str(err)) from None
        return worker

    def run(self, cell: Cell) -> CellResult:
        if self.local is not None:
            return self.local(cell)
        measuring = self.target.estimate_kind is None
        if (self.worker is not None and self.worker.cells_run and measuring
                and self.worker.budget != cell.device_mem_bytes):
            self.close()  # a CUDA memory fraction cannot be raised back reliably in-process
        if self.worker is None:
            self.worker = self._new_worker()
        result = self.worker.run(cell, self.timeout_s)
        # A measured cell that failed may have poisoned its process (a CUDA OOM, a fragmented
        # allocator); an estimate over its budget has not, but a crashed or hung one has.
        if result.status in (ERROR, TIMEOUT) or (measuring and result.status != OK):
            self.close()
        return result

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


__all__ = ["SweepError", "SweepProgress", "estimate_sweep", "run_sweep", "sweep"]
