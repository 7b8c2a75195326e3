"""Where a cell runs: in this process, or in an isolated worker process that can die instead.

A *target* is what runs a cell: a device (``cpu``, ``cuda:0``) measured under the protocol, or a
kind of device predicted by ``membench.planning.estimate``. ``open_target`` gives the function that
runs
one cell there; the sweep calls it in-process (``isolation="none"``) or through an
``IsolatedWorker``.

Workers come from a multiprocessing *forkserver* that has imported torch and membench once, so a
fresh worker costs a fork, not an interpreter start. A worker holds no results file: it sends
each result over its pipe, as typed messages (``Hello``, then one ``CellDone`` per ``RunCell``),
and exits as soon as the sweep process goes away (it watches its parent's sentinel), so a worker
left behind by a killed sweep can never write anything. A crash, ``os._exit``, a segfault or a
hang past the timeout becomes a row (``error``, ``timeout``) and the worker is replaced.
"""

from __future__ import annotations

import datetime as dt
import gc
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

from ..measure.peaks import PeakSpec
from ..schema import ERROR, TIMEOUT, Cell, CellResult
from .children import exit_text, start_child, without_main_module

# Importing torch in a fresh interpreter can take many seconds on a loaded machine; a worker that
# has not said hello by then is broken, not slow.
WORKER_START_TIMEOUT_S = 300.0


class WorkerStartError(RuntimeError):
    """A worker process that could not start; the message is one line."""


# -- messages ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """What runs the cells: a device spec, or (``estimate_kind`` set) the estimator for a kind;
    ``peak_tflops`` is the user's peak for MFU, if given; ``precisions`` the cells' precisions,
    whose peaks are found (a CPU calibrated) when the target opens, before any cell;
    ``timeline`` and ``timeline_snapshot`` the sweep's options of the same name (one more step
    recorded); ``alloc_conf``, ``device_profile`` and ``fit_by`` as the comment below says."""

    device_spec: str
    estimate_kind: str | None = None
    peak_tflops: float | None = None
    precisions: tuple[str, ...] = ("fp32",)
    timeline: bool = False
    timeline_snapshot: bool = False
    # docs/device-total.md: the allocator configuration a worker's process starts with (a
    # cell's alloc_conf), and for estimates the card planned for and what a budget judges.
    alloc_conf: str = ""
    device_profile: str | None = None
    fit_by: str = "total"

    def timeline_options(self) -> dict[str, bool]:
        """``run_cell``'s (and ``estimate_cell``'s) timeline keywords; none when it is off."""
        return (
            dict(timeline=True, timeline_snapshot=self.timeline_snapshot) if self.timeline else {}
        )


@dataclass(frozen=True)
class WorkerSetup:
    """Sent once to a new worker: what to run on, and the sweep's environment and threads."""

    target: Target
    threads: int
    methods: tuple[str, ...]
    environ: dict[str, str] = field(default_factory=dict)
    collect_env: bool = False
    peaks: dict[str, PeakSpec] = field(default_factory=dict)  # known already: not calibrated again


@dataclass(frozen=True)
class Hello:
    """A worker's first message: it is ready, on this device (as the worker names it), with the
    peaks its cells are held against (by cell precision)."""

    device: str
    device_name: str
    env: dict | None
    peaks: dict[str, PeakSpec]
    precisions: tuple[str, ...] = ()  # what torch can autocast to here; () if any


@dataclass(frozen=True)
class RunCell:
    cell: Cell
    timeout_s: float | None = None  # the time it has (a cell on several devices bounds its ranks)


@dataclass(frozen=True)
class CellDone:
    result: CellResult


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# -- running a cell here ------------------------------------------------------------------------
@dataclass
class OpenTarget:
    """A target opened in this process: the device as it names itself, the peaks its cells are
    held against (by cell precision), and ``run(cell)``, which always returns a result (a
    failure is a row)."""

    device: str
    device_name: str
    peaks: dict[str, PeakSpec]
    run: Callable[..., CellResult]  # (cell, timeout_s=None) -> its result
    precisions: tuple[str, ...] = ()  # what torch can autocast to on the device; () if any

    @property
    def notes(self) -> tuple[str, ...]:
        """What the user should read once about the peaks (e.g. no peak for this GPU)."""
        return tuple(dict.fromkeys(peak.note for peak in self.peaks.values() if peak.note))


def open_target(target: Target, peaks: dict[str, PeakSpec] | None = None) -> OpenTarget:
    """Open a target here (DeviceError if its device does not exist) and find the peak of each
    of its precisions. ``peaks``: those found earlier in the sweep, so a CPU is calibrated once
    per sweep and precision, not once per worker."""
    if target.estimate_kind is not None:
        from ..planning.estimate import estimate_cell
        from ..schema import ESTIMATE_DEVICE_NAME, estimate_device

        def estimate(cell: Cell, timeout_s: float | None = None) -> CellResult:
            start = time.perf_counter()
            if cell.devices > 1:  # every rank, one after another, in a fake process group
                from ..multidevice.fake_group import estimate_ranks

                result = estimate_ranks(cell, target.estimate_kind)
            else:
                result = estimate_cell(
                    cell,
                    target.estimate_kind,
                    profile=target.device_profile,
                    fit_by=target.fit_by,
                    **target.timeline_options(),
                )
            return _ran_here(result, start)

        return OpenTarget(estimate_device(target.estimate_kind), ESTIMATE_DEVICE_NAME, {}, estimate)

    from ..measure.devices import resolve_device
    from ..measure.flops import device_peak_spec
    from ..measure.protocol import run_cell

    device = resolve_device(target.device_spec)
    found = dict(peaks or {})

    def peak_for(precision: str) -> PeakSpec:
        if precision not in found:
            found[precision] = device_peak_spec(
                device.kind, device.name(), target.peak_tflops, precision
            )
        return found[precision]

    for precision in dict.fromkeys(("fp32", *target.precisions)):
        peak_for(precision)  # before any cell: a calibration never runs inside a cell's time

    def measure(cell: Cell, timeout_s: float | None = None) -> CellResult:
        start = time.perf_counter()
        if cell.devices > 1:  # N ranks launched from here (docs/multi-device.md, "Launch")
            from ..multidevice.launch import run_multi_device

            result = run_multi_device(
                cell, str(device), device.name(), peak_for(cell.precision), timeout_s
            )
        else:
            result = run_cell(
                cell, device, peak=peak_for(cell.precision), **target.timeline_options()
            )
        return _ran_here(result, start)

    return OpenTarget(str(device), device.name(), found, measure, device.autocast_precisions())


def _ran_here(result: CellResult, start: float) -> CellResult:
    """``result`` as this machine ran it since ``start``: its host, and its wall time where the
    row has none of its own (a cell on several devices: every rank's work)."""
    result.host = socket.gethostname()
    if result.wall_s is None:
        result.wall_s = time.perf_counter() - start
    return result


def failed_result(
    cell: Cell,
    device: str,
    device_name: str,
    status: str,
    error: str,
    started_at: str,
    host: str | None = None,
) -> CellResult:
    """The row of a cell that produced nothing (its worker died, hung or could not run it);
    ``host``: where it ran, when that is not this machine (a Ray node; '' if unknown)."""
    from ..measure.protocol import provenance

    return CellResult(
        cell,
        device,
        device_name,
        status=status,
        error=error,
        started_at=started_at,
        host=socket.gethostname() if host is None else host,
        **provenance(),
    )


# -- the worker process ---------------------------------------------------------------------------
def _worker_loop(conn: Connection, setup: WorkerSetup) -> None:
    """A worker: say hello, then run each cell received and send its result back."""
    start_child(setup.environ)
    import torch

    from .. import runners
    from ..envinfo import collect_env

    torch.set_num_threads(setup.threads)
    target = open_target(setup.target, setup.peaks)
    for method in setup.methods:
        try:
            runners.get_runner(method)  # import runner modules now, outside any cell's timeout
        except Exception:  # the cell itself will report it
            pass
    # Everything alive now (torch, membench, the target) lives as long as the worker: frozen out
    # of the collector's reach, the full collection after each measured cell scans only what
    # cells made (a tenth of a second less per cell; the heap holds torch's few hundred
    # thousand objects).
    gc.collect()
    gc.freeze()
    conn.send(
        Hello(
            target.device,
            target.device_name,
            collect_env() if setup.collect_env else None,
            target.peaks,
            target.precisions,
        )
    )
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        result = target.run(message.cell, message.timeout_s)
        try:
            conn.send(CellDone(result))
        except (BrokenPipeError, OSError):
            return


def worker_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context workers come from: a forkserver with torch preloaded.

    Forking from a server that imported torch but never touched CUDA makes a fresh worker cost
    milliseconds instead of an interpreter start, and stays CUDA-safe (plain fork from the sweep
    process would not be). Falls back to spawn where forkserver does not exist.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        from .. import runners

        context = multiprocessing.get_context("forkserver")
        # Built-in runners only: a third-party plugin that touched CUDA at import would poison
        # every worker forked from the server; plugins are imported in each worker instead.
        # torch._dynamo (with sympy) is imported lazily by the first optimizer step: seconds that
        # every fresh worker would otherwise pay inside its first cell.
        context.set_forkserver_preload(
            [
                "membench.execute.worker",
                "membench.measure.protocol",
                "torch._dynamo",
                *runners.builtin_runner_modules(),
            ]
        )
        _start_forkserver()
        return context
    return multiprocessing.get_context("spawn")


def _start_forkserver() -> None:
    """Start the forkserver (if it is not running) with SIGINT ignored, which it keeps across
    exec and hands to every worker: Ctrl-C reaches the whole process group, and a forkserver
    importing torch must not print a traceback for it. The sweep process alone acts on Ctrl-C;
    a worker exits when the sweep process is gone. From another thread (fit's searches start
    their workers in threads), where no handler can be set, SIGINT is blocked in that thread
    instead: the forkserver inherits the mask across exec and holds the signal until it
    ignores it (a pending signal set to be ignored is dropped); this process's main thread
    still takes Ctrl-C."""
    from multiprocessing import forkserver, resource_tracker

    if threading.current_thread() is not threading.main_thread():
        # The resource tracker first: starting it unblocks SIGINT in this thread when done.
        resource_tracker.ensure_running()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            forkserver.ensure_running()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)


class IsolatedWorker:
    """One worker process and its pipe; ``run`` gives a CellResult whatever the worker does."""

    def __init__(
        self,
        target: Target,
        methods: list[str],
        *,
        collect_env_info: bool = False,
        peaks: dict[str, PeakSpec] | None = None,
        environ: dict[str, str] | None = None,
        threads: int | None = None,
    ):
        """A worker for ``target``; by default with this process's environment and torch
        threads, or with ``environ`` and ``threads`` (a Ray task passes the sweep's);
        ``peaks``: those an earlier worker found."""
        if threads is None:
            import torch

            threads = torch.get_num_threads()
        context = worker_context()
        self.conn, child_conn = context.Pipe(duplex=True)
        setup = WorkerSetup(
            target,
            threads,
            tuple(methods),
            dict(os.environ if environ is None else environ),
            collect_env_info,
            dict(peaks or {}),
        )
        self.process = context.Process(
            target=_worker_loop, args=(child_conn, setup), name="membench-worker", daemon=True
        )
        with without_main_module():
            self.process.start()
        # Only the worker may hold its end: then a dead worker reads as EOF on ours.
        child_conn.close()
        self.device = self.device_name = ""
        self.env: dict | None = None
        self.peaks: dict[str, PeakSpec] = {}
        self.budget: int | None = None
        self.cells_run = 0

    def wait_ready(self) -> None:
        """Block until the worker has said hello; WorkerStartError if it cannot start."""
        hello = None
        if wait([self.conn, self.process.sentinel], WORKER_START_TIMEOUT_S) and self.conn.poll():
            try:
                hello = self.conn.recv()
            except (EOFError, OSError):
                pass
        if not isinstance(hello, Hello):
            self.close()
            raise WorkerStartError(f"worker process did not start ({self._exit_text()})")
        self.device, self.device_name, self.env = hello.device, hello.device_name, hello.env
        self.peaks, self.precisions = hello.peaks, hello.precisions

    def run(self, cell: Cell, timeout_s: float | None) -> CellResult:
        """Run ``cell`` in the worker; a crash, a hang past ``timeout_s`` or EOF becomes a row."""
        started_at = now()
        self.budget = cell.device_mem_bytes
        self.cells_run += 1
        try:
            self.conn.send(RunCell(cell, timeout_s))
        except (BrokenPipeError, OSError):
            return self._failed(cell, started_at, ERROR, self._died_text())
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait([self.conn, self.process.sentinel], left)
            if self.conn.poll():  # a result, or EOF from a worker that died
                try:
                    return self.conn.recv().result
                except (EOFError, OSError):
                    return self._failed(cell, started_at, ERROR, self._died_text())
            if ready:  # the process ended without sending a result
                return self._failed(cell, started_at, ERROR, self._died_text())
            if deadline is not None and time.monotonic() >= deadline:
                self.close()
                return self._failed(
                    cell,
                    started_at,
                    TIMEOUT,
                    f"no result within {timeout_s:g} s (--timeout); worker killed",
                )

    def _failed(self, cell: Cell, started_at: str, status: str, error: str) -> CellResult:
        return failed_result(cell, self.device, self.device_name, status, error, started_at)

    def _exit_text(self) -> str:
        self.process.join(5)
        return exit_text(self.process)

    def _died_text(self) -> str:
        return f"WorkerDied: worker process ended during the cell ({self._exit_text()})"

    def close(self) -> None:
        """Stop the worker (at once: it may be hung) and release its pipe."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)
        self.conn.close()
