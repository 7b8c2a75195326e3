"""The sweep engine: run cells isolated, append each result as it finishes, resume after a crash.

Isolation. With ``isolation="process"`` (the default) every cell runs in a worker process, so a
CUDA OOM, a segfault, ``os._exit`` or a hang in one cell becomes a row (``oom``, ``error``,
``timeout``) and the sweep goes on. Workers come from a multiprocessing *forkserver* that has
imported torch and membench once, so a fresh worker costs a fork, not an interpreter start. One
worker is reused across cells until a cell ends in anything but ``ok`` (or the device budget
changes); then it is discarded and the next cell gets a fresh one, so a poisoned CUDA context or a
fragmented allocator never leaks into the next measurement.

Only the sweep process writes results. A worker holds no file of the results folder; it sends
each result over its pipe and exits when the sweep process goes away (it watches its parent's
sentinel), so a worker left behind by a killed sweep can never write anything.

Resume. A cell counts as finished when ``cells.csv`` has a row with the same cell id, device,
device name (the GPU or CPU model), warmup, steps, seed and device budget (whatever its status,
except estimates). The device name comes from the first worker's hello, sent before any cell, so
the sweep process never opens a CUDA context; rows measured on another machine stay in the file
and do not count as finished here. Rerunning the same sweep skips finished cells; ``redo=True``
drops their rows (this machine's only) and runs them again. Before running,
``steps.csv`` rows that belong to no row of ``cells.csv`` (a sweep killed between the two appends)
are removed, so a rerun cell never has its steps twice.

Locking. A sweep holds an exclusive ``fcntl`` lock on ``.membench-sweep.lock`` in the results
folder from before it reads the folder until its last row is written; a second sweep on the same
folder fails at once with SweepLockedError.
"""

from __future__ import annotations

import csv
import datetime as dt
import fcntl
import gc
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection, wait
from pathlib import Path

from .devices import Device, resolve_device
from .envinfo import collect_env
from .grid import Cell
from .protocol import CellResult, _one_line, _where, run_cell
from .results import CELLS_FILE, ENV_FILE, STEPS_FILE, append_result, read_rows, write_env

ISOLATION_CHOICES = ("process", "none")
LOCK_FILE = ".membench-sweep.lock"
# Importing torch in a fresh interpreter can take many seconds on a loaded machine; a worker that
# has not said hello by then is broken, not slow.
WORKER_START_TIMEOUT_S = 300.0


class SweepError(RuntimeError):
    """A sweep that cannot start or go on; the message is one line."""


class SweepLockedError(SweepError):
    """Another sweep holds the results folder."""


# -- progress ---------------------------------------------------------------------------------
class SweepProgress:
    """Hooks a sweep calls as it goes; subclass and override what you need (all no-ops here)."""

    def device_ready(self, device: str, device_name: str) -> None:
        """The cells run on ``device`` (e.g. ``cuda:0``), a ``device_name`` (the GPU or CPU model,
        as the worker names it); called once, before ``sweep_started``."""

    def sweep_started(self, total: int, to_run: int, out_dir: Path) -> None:
        """``total`` cells in the grid, ``to_run`` of them not finished yet."""

    def cell_started(self, index: int, cell: Cell) -> None:
        """Cell number ``index`` (0-based among the cells to run) is starting."""

    def cell_finished(self, index: int, result: CellResult, wall_s: float) -> None:
        """Cell number ``index`` is done and its row is on disk."""

    def sweep_finished(self, results: list[CellResult]) -> None:
        """Every cell to run has a row."""


# -- resume keys and the results folder ----------------------------------------------------
def cell_key(cell: Cell, device: str, device_name: str) -> tuple:
    """What makes two measurements the same: cell id, device, device model and the protocol
    settings: ``(cell_id, device, device_name, warmup, steps, seed, device_mem_bytes)``."""
    return (cell.cell_id, str(device), device_name, cell.warmup, cell.steps, cell.seed,
            cell.device_mem_bytes)


def _int_or_none(text: str) -> int | None:
    return int(float(text)) if text not in ("", None) else None


def row_key(row: dict) -> tuple | None:
    """The resume key of a ``cells.csv`` row (strings as read by csv), or None if unreadable."""
    try:
        return (row["cell_id"], row["device"], row.get("device_name") or "", int(row["warmup"]),
                int(row["steps"]), int(row["seed"]), _int_or_none(row.get("device_mem_bytes", "")))
    except (KeyError, TypeError, ValueError):
        return None


def is_estimate_row(row: dict) -> bool:
    return (row.get("status") == "estimated" or row.get("memory_source") == "estimate"
            or row.get("device_name") == "estimate")


def read_cell_rows(out_dir: Path) -> list[dict]:
    """Every complete row of ``cells.csv`` in the folder, as strings, in file order."""
    return read_rows(Path(out_dir) / CELLS_FILE)[1]


def finished_keys(out_dir: Path) -> set[tuple]:
    """Keys of the measured cells that already have a row (any status but estimates)."""
    keys = set()
    for row in read_cell_rows(out_dir):
        key = row_key(row)
        if key is not None and not is_estimate_row(row):
            keys.add(key)
    return keys


def _step_blocks(rows: list[dict]) -> list[list[dict]]:
    """``steps.csv`` rows cut into one block per measured cell (a block restarts at step 0)."""
    blocks: list[list[dict]] = []
    for row in rows:
        ident = (row.get("cell_id"), row.get("device"))
        last = blocks[-1][-1] if blocks else None
        if last is None or (last.get("cell_id"), last.get("device")) != ident or row.get("step") == "0":
            blocks.append([])
        blocks[-1].append(row)
    return blocks


def _rewrite_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    """Replace a CSV atomically: readers see the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def prune_results(out_dir: Path, drop: Callable[[dict], bool] = lambda row: False) -> int:
    """Remove the ``cells.csv`` rows ``drop`` selects, their steps, and orphan steps.

    A cell's steps are appended just before its row, so ``steps.csv`` holds one block per row
    that has step times, in the same order; blocks are matched to rows in order and a block that
    matches no row (its cell never finished) is an orphan. Call with the folder locked. Returns
    the number of cells rows removed.
    """
    out_dir = Path(out_dir)
    cells_header, cell_rows = read_rows(out_dir / CELLS_FILE)
    steps_header, step_rows = read_rows(out_dir / STEPS_FILE)
    kept_rows = [row for row in cell_rows if not drop(row)]

    timed_rows = [row for row in cell_rows if row.get("step_ms_median") not in ("", None)]
    dropped_ids = {id(row) for row in cell_rows} - {id(row) for row in kept_rows}
    kept_steps, next_row = [], 0
    for block in _step_blocks(step_rows):
        ident = (block[0].get("cell_id"), block[0].get("device"))
        match = next((i for i in range(next_row, len(timed_rows))
                      if (timed_rows[i]["cell_id"], timed_rows[i]["device"]) == ident), None)
        if match is None:
            continue  # orphan: its cell never got a row
        next_row = match + 1
        if id(timed_rows[match]) not in dropped_ids:
            kept_steps.extend(block)

    if len(kept_rows) != len(cell_rows):
        _rewrite_csv(out_dir / CELLS_FILE, cells_header, kept_rows)
    if len(kept_steps) != len(step_rows):
        _rewrite_csv(out_dir / STEPS_FILE, steps_header, kept_steps)
    return len(cell_rows) - len(kept_rows)


@contextmanager
def results_lock(out_dir: Path) -> Iterator[None]:
    """Hold the results folder exclusively; SweepLockedError at once if another sweep has it."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        handle = open(out_dir / LOCK_FILE, "a+", encoding="utf-8")
    except OSError as err:
        raise SweepError(f"cannot use {out_dir} as a results folder: {err.strerror}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise SweepLockedError(
                f"{out_dir} is in use by another sweep (pid {holder}); wait for it to finish or "
                "choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()  # closing the file releases the lock


def grid_rows(out_dir: Path, cells: list[Cell], device: str, device_name: str) -> list[dict]:
    """The latest ``cells.csv`` row of each cell of the grid on ``device`` (a ``device_name``),
    in grid order."""
    latest = {}
    for row in read_cell_rows(out_dir):
        key = row_key(row)
        if key is not None and not is_estimate_row(row):
            latest[key] = row
    keys = [cell_key(cell, device, device_name) for cell in cells]
    return [latest[key] for key in keys if key in latest]


# -- running one cell -------------------------------------------------------------------------
def _release_memory(device: Device) -> None:
    """Free what the last cell left so the next one starts from the same place."""
    gc.collect()
    if device.kind == "cuda":
        import torch

        torch.cuda.empty_cache()


def _run_cell_here(cell: Cell, device: Device) -> CellResult:
    if cell.device_mem_bytes is None:
        # A budget set by an earlier cell in this process must not constrain this one.
        total = device.total_memory_bytes()
        if total:
            device.set_memory_budget(total)
    try:
        return run_cell(cell, device)
    finally:
        _release_memory(device)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _watch_parent() -> None:
    """Exit this worker as soon as the sweep process is gone, even in the middle of a cell."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(3)

    threading.Thread(target=watch, name="membench-parent-watch", daemon=True).start()


def _worker_loop(conn: Connection, setup: dict) -> None:
    """A worker: say hello, then run each cell received and send its result back."""
    # Ctrl-C reaches the whole process group; the sweep process decides what happens to cells.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch_parent()
    # A forkserver child inherits the server's environment, not the sweep's current one.
    os.environ.clear()
    os.environ.update(setup["environ"])
    import importlib

    import torch

    from . import runners

    importlib.invalidate_caches()
    runners._entry_points.cache_clear()
    torch.set_num_threads(setup["threads"])
    device = resolve_device(setup["device"])
    for method in setup["methods"]:
        try:
            runners.get_runner(method)  # import runner modules now, outside any cell's timeout
        except Exception:  # the cell itself will report it
            pass
    env = collect_env() if setup["collect_env"] else None
    conn.send(("ready", str(device), device.name(), env))
    while True:
        try:
            cell = conn.recv()
        except (EOFError, OSError):
            return
        result = _run_cell_here(cell, device)
        try:
            conn.send(("result", result))
        except (BrokenPipeError, OSError):
            return


def worker_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context workers come from: a forkserver with torch preloaded.

    Forking from a server that imported torch but never touched CUDA makes a fresh worker cost
    milliseconds instead of an interpreter start, and stays CUDA-safe (plain fork from the sweep
    process would not be). Falls back to spawn where forkserver does not exist.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        from . import runners

        # Built-in runners only: a third-party plugin that touched CUDA at import would poison every
        # worker forked from the server; plugins are imported in each worker instead.
        runner_modules = sorted({ep.value.split(":")[0] for ep in runners._entry_points().values()
                                 if ep.value.startswith("membench.")})
        context = multiprocessing.get_context("forkserver")
        # torch._dynamo (with sympy) is imported lazily by the first optimizer step: seconds that
        # every fresh worker would otherwise pay inside its first cell.
        context.set_forkserver_preload(["membench.sweep", "torch._dynamo", *runner_modules])
        return context
    return multiprocessing.get_context("spawn")


@contextmanager
def _without_main_module() -> Iterator[None]:
    """Hide ``__main__`` while a worker starts, so the worker does not re-import it.

    multiprocessing re-runs the parent's main script in every child; the worker needs nothing
    from it, and re-running it costs time and breaks scripts without an ``if __name__`` guard.
    """
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


class IsolatedWorker:
    """One worker process and its pipe; ``run`` gives a CellResult whatever the worker does."""

    def __init__(self, device_spec: str, methods: list[str], *, collect_env_info: bool = False):
        import torch

        context = worker_context()
        self.conn, child_conn = context.Pipe(duplex=True)
        setup = {"device": device_spec, "threads": torch.get_num_threads(), "methods": methods,
                 "environ": dict(os.environ), "collect_env": collect_env_info}
        self.process = context.Process(target=_worker_loop, args=(child_conn, setup),
                                       name="membench-worker", daemon=True)
        with _without_main_module():
            self.process.start()
        # Only the worker may hold its end: then a dead worker reads as EOF on ours.
        child_conn.close()
        self.device = self.device_name = ""
        self.env: dict | None = None
        self.budget: int | None = None
        self.cells_run = 0

    def wait_ready(self) -> None:
        """Block until the worker has imported everything; SweepError if it cannot start."""
        if not wait([self.conn, self.process.sentinel], WORKER_START_TIMEOUT_S) or not self.conn.poll():
            self.close()
            raise SweepError(f"worker process did not start ({self._exit_text()})")
        try:
            _, self.device, self.device_name, self.env = self.conn.recv()
        except (EOFError, OSError):
            self.close()
            raise SweepError(f"worker process did not start ({self._exit_text()})") from None

    def run(self, cell: Cell, timeout_s: float | None) -> CellResult:
        """Run ``cell`` in the worker; a crash, a hang past ``timeout_s`` or EOF becomes a row."""
        started_at = _now()
        self.budget = cell.device_mem_bytes
        self.cells_run += 1
        try:
            self.conn.send(cell)
        except (BrokenPipeError, OSError):
            return self._failed(cell, started_at, "error", self._died_text())
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait([self.conn, self.process.sentinel], left)
            if self.conn.poll():  # a result, or EOF from a worker that died
                try:
                    _, result = self.conn.recv()
                    return result
                except (EOFError, OSError):
                    return self._failed(cell, started_at, "error", self._died_text())
            if ready:  # the process ended without sending a result
                return self._failed(cell, started_at, "error", self._died_text())
            if deadline is not None and time.monotonic() >= deadline:
                self.close()
                return self._failed(cell, started_at, "timeout",
                                    f"no result within {timeout_s:g} s (--timeout); worker killed")

    def _failed(self, cell: Cell, started_at: str, status: str, error: str) -> CellResult:
        import torch

        return CellResult(cell, self.device, self.device_name, status=status, error=error,
                          started_at=started_at, torch_threads=torch.get_num_threads())

    def _exit_text(self) -> str:
        self.process.join(5)
        code = self.process.exitcode
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def _died_text(self) -> str:
        return f"WorkerDied: worker process ended during the cell ({self._exit_text()})"

    def close(self) -> None:
        """Stop the worker (at once: it may be hung) and release its pipe."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)
        self.conn.close()


# -- sweeps -----------------------------------------------------------------------------------
def _device_spec(device: Device | str) -> tuple[str, Device | None]:
    if isinstance(device, Device):
        return str(device), device
    return str(resolve_device(device)), None


def run_sweep(
    cells: list[Cell],
    device: Device | str,
    out_dir: Path,
    *,
    isolation: str = "process",
    timeout_s: float | None = None,
    redo: bool = False,
    progress: SweepProgress | None = None,
) -> list[CellResult]:
    """Measure every unfinished cell, appending each row to ``out_dir`` as it completes.

    ``device`` is a Device or a spec (``cpu``, ``cuda:0``, ``auto``). ``isolation="process"``
    runs cells in worker processes (see the module docstring); ``"none"`` runs them here, for
    debugging, and cannot enforce ``timeout_s``. Cells already in ``cells.csv`` for this device
    and device model are skipped unless ``redo``. Returns the results of the cells run by this
    call, in order. Raises SweepLockedError if another sweep holds the folder and ValueError for
    bad arguments.
    """
    if isolation not in ISOLATION_CHOICES:
        raise ValueError(f"isolation must be one of {', '.join(ISOLATION_CHOICES)}, got {isolation!r}")
    if timeout_s is not None and not (math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout must be a finite number of seconds more than 0, got {timeout_s:g}")
    if timeout_s is not None and isolation == "none":
        raise ValueError("a timeout needs isolation='process' (a cell in this process cannot be stopped)")
    progress = progress or SweepProgress()
    out_dir = Path(out_dir)
    device_spec, local_device = _device_spec(device)

    with results_lock(out_dir):
        worker: IsolatedWorker | None = None
        try:
            if isolation == "none":
                local_device = local_device or resolve_device(device_spec)
                device_name = local_device.name()
            else:
                # The worker names the device, so this process never opens a CUDA context.
                worker = IsolatedWorker(device_spec, sorted({cell.method for cell in cells}),
                                        collect_env_info=True)
                worker.wait_ready()
                device_name = worker.device_name
            progress.device_ready(device_spec, device_name)
            grid_keys = {cell_key(cell, device_spec, device_name) for cell in cells}
            if redo:
                prune_results(out_dir, lambda row: row_key(row) in grid_keys and not is_estimate_row(row))
            else:
                prune_results(out_dir)
            done = finished_keys(out_dir)
            todo = [cell for cell in cells if cell_key(cell, device_spec, device_name) not in done]
            progress.sweep_started(len(cells), len(todo), out_dir)
            if not todo:
                results = []
            elif worker is None:
                write_env(out_dir, collect_env())
                results = _run_cells(todo, out_dir, progress, lambda cell: _run_cell_here(cell, local_device))
            else:
                write_env(out_dir, worker.env)
                first, worker = worker, None  # _run_isolated closes every worker it uses
                results = _run_isolated(todo, device_spec, first, out_dir, progress, timeout_s)
        finally:
            if worker is not None:
                worker.close()
    progress.sweep_finished(results)
    return results


def _run_cells(cells, out_dir, progress, execute) -> list[CellResult]:
    results = []
    for index, cell in enumerate(cells):
        progress.cell_started(index, cell)
        start = time.perf_counter()
        result = execute(cell)
        append_result(out_dir, result)
        results.append(result)
        progress.cell_finished(index, result, time.perf_counter() - start)
    return results


def _run_isolated(cells, device_spec, first_worker, out_dir, progress, timeout_s) -> list[CellResult]:
    """Run ``cells`` starting with the ready ``first_worker``; closes every worker it used."""
    methods = sorted({cell.method for cell in cells})
    worker: IsolatedWorker | None = first_worker

    def execute(cell: Cell) -> CellResult:
        nonlocal worker
        if worker is not None and worker.cells_run and worker.budget != cell.device_mem_bytes:
            worker.close()  # a CUDA memory fraction cannot be raised back reliably in-process
            worker = None
        if worker is None:
            worker = IsolatedWorker(device_spec, methods)
            worker.wait_ready()
        result = worker.run(cell, timeout_s)
        if result.status != "ok":
            worker.close()
            worker = None
        return result

    try:
        return _run_cells(cells, out_dir, progress, execute)
    finally:
        if worker is not None:
            worker.close()


def estimate_sweep(
    cells: list[Cell],
    device_kind: str,
    out_dir: Path,
    *,
    progress: SweepProgress | None = None,
) -> list[CellResult]:
    """Predict every cell with ``membench.estimate.estimate_cell`` and append the rows.

    Estimates allocate nothing, so they run in this process. They are cheap and deterministic,
    so they are always recomputed: earlier estimate rows of the same cells for the same device
    kind are replaced (a ``cuda (estimate)`` row survives a ``cpu`` estimate). ``env.json`` is
    written only where the folder has none, so an estimate never replaces a measured run's
    provenance.
    """
    try:
        from .estimate import DEVICE_NAME, estimate_cell, estimate_device
    except ImportError as err:
        raise SweepError(f"--estimate needs membench.estimate, which cannot be imported here ({err})") from None
    progress = progress or SweepProgress()
    out_dir = Path(out_dir)
    device = estimate_device(device_kind)
    grid = {cell_key(cell, device, DEVICE_NAME) for cell in cells}

    def same_estimate(row: dict) -> bool:
        return is_estimate_row(row) and row_key(row) in grid

    def execute(cell: Cell) -> CellResult:
        try:
            return estimate_cell(cell, device_kind)
        except Exception as err:  # one cell the estimator cannot handle must not end the sweep
            return CellResult(cell, device, DEVICE_NAME, status="error",
                              error=f"{_one_line(err)} | {_where(err)}", started_at=_now())

    with results_lock(out_dir):
        prune_results(out_dir, same_estimate)
        progress.device_ready(device, DEVICE_NAME)
        progress.sweep_started(len(cells), len(cells), out_dir)
        if not (out_dir / ENV_FILE).exists():
            write_env(out_dir, collect_env())
        results = _run_cells(cells, out_dir, progress, execute)
    progress.sweep_finished(results)
    return results


__all__ = [
    "ISOLATION_CHOICES", "IsolatedWorker", "SweepError", "SweepLockedError", "SweepProgress",
    "cell_key", "estimate_sweep", "finished_keys", "grid_rows", "prune_results", "results_lock",
    "row_key", "run_sweep",
]
