"""Executors: where a sweep's cells run, behind one small interface the sweep loop drives.

An executor opens its target (``start``: the device rows will name, every device model a cell
may run on), says where the results come from (``provenance``: env.json), runs a list of cells
and yields each result as it finishes (``run``), and releases what it holds (``close``). It
never writes a file: the sweep process appends every row itself, so resume, locking and SIGKILL
safety are the sweep's and hold for every executor.

``LocalExecutor`` runs cells one at a time on this machine, in worker processes
(``membench.execute.worker``) or in this process; ``ParallelExecutor`` runs estimates several at
once, one worker process per core. ``membench.execute.ray_cluster.RayExecutor`` runs them as Ray
tasks on a cluster, several at once; it is imported only when asked for, so a local sweep never
imports Ray.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from ..measure.cuda_env import apply_alloc_conf, with_alloc_conf
from ..measure.peaks import PeakSpec
from ..schema import ERROR, MEASURED_STATUSES, OK, TIMEOUT, Cell, CellResult
from ..stability import combine_rounds
from .worker import IsolatedWorker, Target, WorkerStartError, open_target

# Called as each cell starts running: (index in the list given to run, the cell).
CellStarted = Callable[[int, Cell], None]


class SweepError(RuntimeError):
    """A sweep that cannot go on (its worker cannot start); the message is one line."""


@dataclass(frozen=True)
class Placement:
    """Where a sweep's cells run: the ``device`` their rows name (``cuda:0``, ``cpu``), every
    ``device_names`` (GPU or CPU model) a cell may run on, and notes the user should read once."""

    device: str
    device_names: tuple[str, ...]
    notes: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ()  # what the device can autocast to; () when not known


class Executor(ABC):
    """Runs a sweep's cells somewhere; see the module docstring."""

    @abstractmethod
    def start(self) -> Placement:
        """Open the target; SweepError (or an InputError) if it cannot be used."""

    @abstractmethod
    def provenance(self) -> dict:
        """What env.json records about where the cells run."""

    @abstractmethod
    def run(
        self, cells: list[Cell], started: CellStarted
    ) -> Iterator[tuple[int, CellResult, float]]:
        """Run ``cells``; yield ``(index, result, wall_s)`` as each finishes, in any order. A
        failure is a result (an ``error``, ``oom`` or ``timeout`` row), never an exception."""

    @abstractmethod
    def close(self) -> None:
        """Stop whatever still runs and release it; safe to call twice."""


class LocalExecutor(Executor):
    """Cells one at a time on this machine: in worker processes (``isolation="process"``),
    replacing a worker after a cell that is not ok, or in this process (``"none"``)."""

    def __init__(self, target: Target, isolation: str, timeout_s: float | None, methods: list[str]):
        self.target, self.isolation, self.timeout_s, self.methods = (
            target,
            isolation,
            timeout_s,
            methods,
        )
        self.worker: IsolatedWorker | None = None
        self.local: Callable[[Cell], CellResult] | None = None
        self.env: dict | None = None
        self.peaks: dict[str, PeakSpec] = {}  # by cell precision, found by the first worker

    def start(self) -> Placement:
        """Open the target (a first worker, which names the device so this process never opens
        a CUDA context)."""
        if self.isolation == "none":
            if self.target.estimate_kind is None:  # before CUDA initialises in this process
                apply_alloc_conf(self.target.alloc_conf)
            opened = open_target(self.target)
            self.local, self.peaks = opened.run, opened.peaks
            device, name, precisions = opened.device, opened.device_name, opened.precisions
        else:
            self.worker = self._new_worker(collect_env_info=True)
            self.env, self.peaks = self.worker.env, self.worker.peaks
            device, name = self.worker.device, self.worker.device_name
            precisions = self.worker.precisions
        notes = tuple(dict.fromkeys(peak.note for peak in self.peaks.values() if peak.note))
        return Placement(device, (name,), notes, precisions)

    def provenance(self) -> dict:
        """env.json: the worker's (or this process's) environment and the peaks MFU is held
        to (``peak``: an fp32 cell's; ``peaks``: by cell precision)."""
        from ..envinfo import collect_env  # torch: only where cells run in this process

        env = dict(self.env or collect_env())
        if "fp32" in self.peaks:
            env["peak"] = asdict(self.peaks["fp32"])
        if self.peaks:
            env["peaks"] = {precision: asdict(peak) for precision, peak in self.peaks.items()}
        return env

    def _new_worker(self, collect_env_info: bool = False) -> IsolatedWorker:
        worker = IsolatedWorker(
            self.target,
            self.methods,
            collect_env_info=collect_env_info,
            peaks=self.peaks,
            environ=with_alloc_conf(os.environ, self.target.alloc_conf),
        )
        try:
            worker.wait_ready()
        except WorkerStartError as err:
            raise SweepError(str(err)) from None
        return worker

    def run(
        self, cells: list[Cell], started: CellStarted
    ) -> Iterator[tuple[int, CellResult, float]]:
        for index, cell in enumerate(cells):
            started(index, cell)
            start = time.perf_counter()
            result = self.run_one(cell)
            yield index, result, time.perf_counter() - start

    def run_one(self, cell: Cell) -> CellResult:
        """Run one cell (its worker started if there is none; a failure is a row): with
        ``rounds`` R > 1, R rounds, each in a fresh worker (a new process: its own placement,
        allocator and clock), combined (``combine_rounds``); the timeout bounds each round."""
        if cell.rounds == 1:
            return self._run_round(cell)
        results = []
        for _ in range(cell.rounds):
            if self.local is None:
                self.close()
            results.append(self._run_round(cell))
            if results[-1].status not in MEASURED_STATUSES:
                break
        return combine_rounds(results)

    def _run_round(self, cell: Cell) -> CellResult:
        if self.local is not None:
            return self.local(cell)
        measuring = self.target.estimate_kind is None
        if (
            self.worker is not None
            and self.worker.cells_run
            and measuring
            and self.worker.budget != cell.device_mem_bytes
        ):
            self.close()  # a CUDA memory fraction cannot be raised back reliably in-process
        if measuring and cell.alloc_conf != self.target.alloc_conf:
            # PyTorch reads the allocator's configuration once per process: a worker of its own
            self.close()
            self.target = dataclasses.replace(self.target, alloc_conf=cell.alloc_conf)
        if self.worker is None:
            self.worker = self._new_worker()
        result = self.worker.run(cell, self.timeout_s)
        # A measured cell that failed may have poisoned its process (a CUDA OOM, a fragmented
        # allocator); an estimate over its budget has not, but a crashed or hung one has. A
        # cell on several devices ran in its ranks, whose processes are gone: its worker is fine.
        poisoned = result.status in (ERROR, TIMEOUT) or (measuring and result.status != OK)
        if poisoned and not (cell.devices > 1 and self.worker.process.is_alive()):
            self.close()
        return result

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


def default_jobs() -> int:
    """Estimates at once when none is asked for: one per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class ParallelExecutor(Executor):
    """Estimates of independent cells at once: ``jobs`` ``LocalExecutor``s, each with its own
    worker process (its timeout, its replacement after a failed cell), fed from one queue by a
    thread each; results come back as they finish. Only for estimates: measured cells running
    side by side would slow each other down, and their times would show it."""

    def __init__(self, target: Target, timeout_s: float | None, methods: list[str], jobs: int):
        if target.estimate_kind is None:
            raise ValueError("ParallelExecutor runs estimates only")
        self.executors = [
            LocalExecutor(target, "process", timeout_s, methods) for _ in range(max(1, jobs))
        ]
        self._stop = threading.Event()

    def start(self) -> Placement:
        """The first worker says where the cells run; the others start with their first cell."""
        placement = self.executors[0].start()
        for executor in self.executors[1:]:
            executor.peaks = self.executors[0].peaks
        return placement

    def provenance(self) -> dict:
        return self.executors[0].provenance()

    def run(
        self, cells: list[Cell], started: CellStarted
    ) -> Iterator[tuple[int, CellResult, float]]:
        todo: queue.SimpleQueue = queue.SimpleQueue()
        for item in enumerate(cells):
            todo.put(item)
        done: queue.SimpleQueue = queue.SimpleQueue()
        threads = [
            threading.Thread(target=self._work, args=(executor, todo, done), daemon=True)
            for executor in self.executors[: len(cells)]
        ]
        for thread in threads:
            thread.start()
        finished = 0
        while finished < len(cells):
            try:
                event = done.get(timeout=1.0)  # a timeout, so Ctrl-C is seen here at once
            except queue.Empty:
                continue
            if event[0] == "failed":  # a worker that could not start: the sweep cannot go on
                raise event[1]
            if event[0] == "started":  # progress is reported from this thread only
                started(event[1], event[2])
                continue
            finished += 1
            yield event[1:]

    def _work(self, executor: LocalExecutor, todo: queue.SimpleQueue, done: queue.SimpleQueue):
        """One worker's loop: take the next cell, run it, hand its result back."""
        while not self._stop.is_set():
            try:
                index, cell = todo.get_nowait()
            except queue.Empty:
                return
            done.put(("started", index, cell))
            start = time.perf_counter()
            try:
                result = executor.run_one(cell)
            except Exception as err:  # SweepError: no worker could start
                done.put(("failed", err))
                return
            done.put(("finished", index, result, time.perf_counter() - start))

    def close(self) -> None:
        self._stop.set()
        for executor in self.executors:
            executor.close()


__all__ = [
    "CellStarted",
    "Executor",
    "LocalExecutor",
    "ParallelExecutor",
    "Placement",
    "SweepError",
    "default_jobs",
]
