"""Running a cell on several devices: N ranks of ``torch.distributed``, inside the cell's worker.

``launch_ranks(fn, task, world, kind)`` starts ``world`` processes with torch's own launcher
(``torch.multiprocessing.start_processes``), each in a process group (gloo on the CPU, NCCL on
CUDA, rank r on GPU ``first_index + r``) that meets at a ``TCPStore`` this process serves on the
loopback interface on a port the system picks: nothing listens beyond this machine and no two
cells share a port. Each rank runs ``fn(rank, world, task)`` and sends back ``(value, ok)``; a
rank that is not ok exits non-zero, and the launcher then stops the others (torch's
``ProcessContext``), so no rank waits forever for one that gave up.

Ranks come from a forkserver (``rank_context``): a fork of the process that starts them would
inherit its autograd and OpenMP threads, which a forked child cannot use (nor CUDA, once the
parent has touched it); a spawned one costs an interpreter start per rank. Each rank takes its
share of the threads and the starter's environment (plugins on its PYTHONPATH).

A deadline (``timeout_s``) bounds the ranks: every process group gets a third of it as its
collective timeout, so a rank blocked on a peer that hung gives up and says so, and at the
deadline every rank still running is killed. Each rank also exits as soon as this process is
gone. ``run_multi_device`` is the measured cell: every rank measures itself under the protocol
(``membench.multidevice.rank_device``) and ``membench.multidevice.rows`` makes the row, naming a
failed rank.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from multiprocessing.connection import wait

import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp
from torch.multiprocessing.spawn import ProcessException

from ..errors import error_text
from ..execute.children import exit_text, start_child, without_main_module
from ..measure.flops import apply_peak
from ..schema import ERROR, Cell, CellResult, DeviceSpecError, parse_device
from ..stability import judge
from .rows import RankEnd, combine_ranks, measured, rank_failure

LOOPBACK = "127.0.0.1"  # ranks meet on this machine only
COLLECTIVE_TIMEOUT_SHARE = 1 / 3  # of the deadline: a peer's wait gives up well before it
STOP_GRACE_S = 1.0


def rank_context() -> multiprocessing.context.BaseContext:
    """The forkserver ranks come from: a process that imported torch and the runners and never
    ran a step, so each rank costs a fork (its first start costs an interpreter)."""
    from .. import runners

    context = multiprocessing.get_context("forkserver")
    # Takes effect when this process first starts its forkserver: what every rank would
    # otherwise import in its cell, seconds each (torch._dynamo comes with the first optimizer
    # step; pipelining and FSDP2 with their runners).
    context.set_forkserver_preload(
        [
            "membench.multidevice.rank_device",
            "membench.multidevice.launch",
            "torch._dynamo",
            "torch.distributed.pipelining",
            "torch.distributed.fsdp",
            "torch.distributed.device_mesh",
            *runners.builtin_runner_modules(),
        ]
    )
    return context


def _rank_main(
    rank: int,
    fn: Callable,
    task,
    world: int,
    port: int,
    writers,
    threads: int,
    timeout_s: float | None,
    kind: str,
    first_index: int,
    environ: dict,
) -> None:
    """One rank: join the group, run ``fn``, send ``("done", value, ok)`` (or ``("raised",
    text)``), exit non-zero unless ok."""
    start_child(environ)
    writer = writers[rank]
    torch.set_num_threads(threads)
    options = {}
    if kind == "cuda":
        options["device_id"] = torch.device("cuda", first_index + rank)
        torch.cuda.set_device(options["device_id"])
    timeout = None if timeout_s is None else dt.timedelta(seconds=timeout_s)
    try:
        store = dist.TCPStore(
            LOOPBACK,
            port,
            world,
            is_master=False,
            **({} if timeout is None else {"timeout": timeout}),
        )
        dist.init_process_group(
            "gloo" if kind == "cpu" else "nccl",
            store=store,
            rank=rank,
            world_size=world,
            timeout=timeout,
            **options,
        )
        value, ok = fn(rank, world, task)
    except Exception as err:  # a rank that crashes says why before it goes
        _send(writer, ("raised", error_text(err)))
        sys.exit(1)
    _send(writer, ("done", value, ok, time.monotonic()))
    if not ok:
        sys.exit(1)
    dist.destroy_process_group()


@contextmanager
def _may_have_children() -> Iterator[None]:
    """Let a daemonic process (a sweep's worker: the sweep never waits for it at exit) start
    the ranks, which watch it and exit with it instead."""
    config = multiprocessing.current_process()._config
    daemon = config.pop("daemon", None)
    try:
        yield
    finally:
        if daemon is not None:
            config["daemon"] = daemon


def _send(writer, message: tuple) -> None:
    # Plain pickle: tensors go by value. The pipe's own pickler would share their storage
    # through a file descriptor, which is gone by the time the launcher reads a rank that exited.
    writer.send_bytes(pickle.dumps(message))


def launch_ranks(
    fn: Callable,
    task,
    world: int,
    kind: str,
    *,
    timeout_s: float | None = None,
    first_index: int = 0,
    threads: int | None = None,
) -> list[RankEnd]:
    """Run ``fn(rank, world, task)`` on ``world`` ranks (see the module docstring); how each
    rank ended, in rank order. Every rank's process is gone when this returns."""
    threads = max(1, (threads or torch.get_num_threads()) // world)
    context = rank_context()
    pipes = [context.Pipe(duplex=False) for _ in range(world)]
    readers, writers = [r for r, _ in pipes], [w for _, w in pipes]
    store = dist.TCPStore(LOOPBACK, 0, world, is_master=True, wait_for_workers=False)
    collective_s = None if timeout_s is None else max(1.0, timeout_s * COLLECTIVE_TIMEOUT_SHARE)
    with without_main_module(), _may_have_children():
        processes = torch_mp.start_processes(
            _rank_main,
            args=(
                fn,
                task,
                world,
                store.port,
                writers,
                threads,
                collective_s,
                kind,
                first_index,
                dict(os.environ),
            ),
            nprocs=world,
            join=False,
            start_method="forkserver",
        )
    for writer in writers:
        writer.close()  # only the ranks hold them: a dead rank reads as EOF here
    try:
        messages, hung = _collect(processes, readers, timeout_s)
    finally:
        for process in processes.processes:
            if process.is_alive():
                process.kill()
            process.join()
        for reader in readers:
            reader.close()
        del store  # closes the TCPStore's listening socket now, not at the next collection
    return [
        _end(rank, process, messages.get(rank), hung, timeout_s)
        for rank, process in enumerate(processes.processes)
    ]


def _collect(processes, readers, timeout_s: float | None) -> tuple[dict, bool]:
    """Every rank's message until all ended, one failed (the others then stopped) or the
    deadline passed; whether it did."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    messages: dict[int, tuple] = {}
    open_readers = dict(enumerate(readers))
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        wait([*open_readers.values(), *processes.sentinels], left)
        _read(open_readers, messages)
        try:
            if processes.join(timeout=0, grace_period=STOP_GRACE_S):
                break
        except ProcessException:  # a rank failed; join stopped the others
            break
        if deadline is not None and time.monotonic() >= deadline:
            _read(open_readers, messages)
            return messages, True
    _read(open_readers, messages)
    return messages, False


def _read(open_readers: dict, messages: dict) -> None:
    for rank, reader in list(open_readers.items()):
        try:
            if reader.poll():
                messages[rank] = pickle.loads(reader.recv_bytes())
                del open_readers[rank]
        except (EOFError, OSError):
            del open_readers[rank]


def _end(rank: int, process, message: tuple | None, hung: bool, timeout_s: float | None) -> RankEnd:
    if message is not None and message[0] == "done":
        return RankEnd(rank, message[1], exit_text(process), at=message[3])
    if message is not None:  # it raised before it could send a result
        return RankEnd(rank, None, f"raised {message[1]}")
    if hung and process.exitcode in (None, -signal.SIGKILL):
        return RankEnd(rank, None, f"no result within {timeout_s:g} s", hung=True)
    text = exit_text(process)
    if process.exitcode == -signal.SIGTERM:
        text = f"stopped after another rank failed ({text})"
    return RankEnd(rank, None, text)


def gpu_shortage(kind: str, first_index: int, devices: int) -> str | None:
    """Why a CUDA cell cannot have its GPUs here (the row's error), or None."""
    if kind != "cuda":
        return None
    count = torch.cuda.device_count()
    if first_index + devices > count:
        return (
            f"--devices {devices} from cuda:{first_index} needs {first_index + devices} "
            f"GPU(s); this machine has {count}"
        )
    return None


def cell_peak(peak, devices: int, kind: str):
    """The peak a cell on ``devices`` ranks is held against, from one device's: N GPUs are N
    peaks; N ranks on one CPU share its cores, whose peak the calibration measured with all of
    them (the ranks split its threads), so one. A 2-rank DDP cell on 2 cores was held against
    twice the CPU's, and past the check that keeps MFU at or below 100 % (``apply_peak``)."""
    return replace(peak, tflops=peak.tflops * (devices if kind == "cuda" else 1))


def run_multi_device(
    cell: Cell, device: str, device_name: str, peak=None, timeout_s: float | None = None
) -> CellResult:
    """Measure a cell on ``cell.devices`` ranks from ``device`` (``cpu``, ``cuda:N``): its row
    (``membench.multidevice.rows``); ``peak`` is one device's (the row's is N times it);
    ``timeout_s`` the
    time the cell has."""
    from ..measure.protocol import new_result
    from .fake_group import rank_flops
    from .rank_device import RankTask, measure_rank

    start = time.monotonic()
    try:
        kind, index = parse_device(device)
    except DeviceSpecError as err:
        return new_result(cell, device, device_name, status=ERROR, error=str(err))
    refusal = gpu_shortage(kind, index or 0, cell.devices)
    if refusal:
        return new_result(cell, device, device_name, status=ERROR, error=refusal)
    flops = rank_flops(cell)
    left = None if timeout_s is None else max(1.0, 0.9 * timeout_s - (time.monotonic() - start))
    ends = launch_ranks(
        measure_rank,
        RankTask(cell, kind, index or 0),
        cell.devices,
        kind,
        timeout_s=left,
        first_index=index or 0,
    )
    results = [end.result for end in ends]
    if measured(results):
        for result, count in zip(results, flops):
            result.flops_per_step = count
        row = combine_ranks(results)
        if peak is not None and peak.tflops is not None:
            apply_peak(row, cell_peak(peak, cell.devices, kind))
        judge(row)
        return row
    status, error = rank_failure(ends)
    row = new_result(cell, device, device_name, status=status, error=error)
    row.ranks = [r for r in results if r is not None]
    return row


__all__ = ["cell_peak", "gpu_shortage", "launch_ranks", "run_multi_device"]
