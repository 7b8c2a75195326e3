"""Run a sweep's cells on a Ray cluster: one Ray task per cell, one whole GPU (or N CPUs) each.

Ray schedules; membench only submits. Every cell is one Ray task that asks for ``num_gpus=1`` on
CUDA, or ``cpus_per_cell`` CPUs on the CPU (by default all of a node's cores: two CPU cells on
one node disturb each other's timing). Ray runs as many at once as the cluster has room for.

Inside its task a cell runs exactly as on one machine: in a fresh ``membench.execute.worker``
IsolatedWorker process, forked from a forkserver that the Ray worker process starts once, so the
Ray worker itself never builds a runner or opens CUDA. Every cell gets a fresh worker
(a Ray worker may be given another GPU for its next task, and an idle CUDA context must not sit
on a GPU Ray has handed to another cell), so a cell that is not ``ok`` never shares a process
with the next one. A crash inside the cell is the worker's ``error`` row, as locally.

The task is a Ray generator: it yields ``Started`` once its worker is ready, then the result.
The sweep process times each cell from ``Started``; past ``timeout_s`` it cancels the task with
``ray.cancel(force=True)``, which kills the Ray worker and with it the cell's worker, and writes
a ``timeout`` row. A task whose Ray worker or node dies becomes an ``error`` row with Ray's reason
(tasks are never retried: ``max_retries=0``). Tasks never write files: only the sweep process
appends rows, so killing it leaves nothing that can write afterwards.

Before any cell, one probe task per node that can run a cell (pinned to it) starts a worker there:
it names the node's device model, collects its provenance for env.json and finds the peak its
cells are held to (a CPU's GEMM calibration runs once per node).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from ..envinfo import cluster_env
from ..errors import InputError, one_line
from ..measure.cuda_env import with_alloc_conf
from ..measure.peaks import PeakSpec
from ..schema import ERROR, MEASURED_STATUSES, TIMEOUT, Cell, CellResult, parse_device
from ..stability import combine_rounds
from .local import CellStarted, Executor, Placement, SweepError
from .worker import IsolatedWorker, Target, WorkerStartError, failed_result, now

# A local cluster's object store holds a few kilobytes per cell (a row and its step times);
# Ray's default, 30% of RAM in /dev/shm, would be reserved for nothing.
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20
# How long the sweep process blocks at most between two looks at its deadlines and Ctrl-C.
POLL_S = 1.0
# How long the sweep waits for a Ray head's port to answer before it says it cannot reach it.
CONNECT_TIMEOUT_S = 10.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class RayClusterError(InputError):
    """A Ray cluster that cannot run the sweep: Ray missing or unreachable, or no node with the
    device a cell needs; the message is one line."""


def require_ray():
    """The ``ray`` module; RayClusterError naming the extra to install when it is missing."""
    try:
        import ray
    except ImportError:
        raise RayClusterError("--executor ray needs Ray: pip install 'membench[ray]'") from None
    return ray


def forwarded_environ() -> dict[str, str]:
    """What the sweep's environment passes to every cell on the cluster: membench's settings
    (``MEMBENCH_*``) and the PYTHONPATH a plugin runner may live on. Nothing else: a node keeps
    its own PATH, CUDA and Ray variables."""
    return {
        key: value
        for key, value in os.environ.items()
        if key.startswith("MEMBENCH_") or key == "PYTHONPATH"
    }


# -- what runs on the cluster ------------------------------------------------------------------
@dataclass(frozen=True)
class TaskSetup:
    """What every task of a sweep gets: the target, the methods to preload, the forwarded
    environment, torch threads, and the peaks each probed node found (by Ray node id, then by
    cell precision)."""

    target: Target
    methods: tuple[str, ...]
    environ: dict[str, str]
    threads: int
    peaks: dict[str, dict[str, PeakSpec]] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeHello:
    """A probe's answer: the node, its device (as its worker names it) and its provenance."""

    node_id: str
    host: str
    device: str
    device_name: str
    env: dict
    peaks: dict[str, PeakSpec]


@dataclass(frozen=True)
class Started:
    """A cell's worker is ready on ``host``; the cell starts now (its timeout counts from here)."""

    node_id: str
    host: str
    started_at: str


@dataclass(frozen=True)
class WorkerFailed:
    """The cell's worker could not start on its node; ``error`` says why."""

    error: str


def _start_worker(
    setup: TaskSetup, peaks: dict[str, PeakSpec] | None, collect_env_info: bool, alloc_conf=""
) -> IsolatedWorker:
    """A worker in this Ray task: this process's environment (Ray's CUDA_VISIBLE_DEVICES names
    the task's GPU) with the sweep's forwarded variables, PYTHONPATHs joined; torch threads as
    many as the task's CPUs, but never more than the node's cores (a cluster may declare more
    CPUs than it has, and oversubscribed threads make a step many times slower)."""
    from ..measure.devices import visible_cpu_count

    environ = dict(os.environ)
    environ.update({k: v for k, v in setup.environ.items() if k != "PYTHONPATH"})
    paths = [p for p in (setup.environ.get("PYTHONPATH"), os.environ.get("PYTHONPATH")) if p]
    if paths:
        environ["PYTHONPATH"] = os.pathsep.join(paths)
    environ = with_alloc_conf(environ, alloc_conf)  # a cell's allocator configuration
    worker = IsolatedWorker(
        setup.target,
        list(setup.methods),
        collect_env_info=collect_env_info,
        peaks=peaks,
        environ=environ,
        threads=min(setup.threads, visible_cpu_count()),
    )
    worker.wait_ready()
    return worker


def probe_node(setup: TaskSetup) -> NodeHello:
    """A Ray task pinned to one node: start a worker there and report what it found."""
    import ray

    worker = _start_worker(setup, None, collect_env_info=True)
    worker.close()
    return NodeHello(
        ray.get_runtime_context().get_node_id(),
        socket.gethostname(),
        worker.device,
        worker.device_name,
        worker.env or {},
        worker.peaks,
    )


def run_cell_task(cell: Cell, setup: TaskSetup) -> Iterator[Started | WorkerFailed | CellResult]:
    """A Ray generator task: one cell in a fresh worker; yields Started, then the result."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    try:
        worker = _start_worker(
            setup, setup.peaks.get(node_id), collect_env_info=False, alloc_conf=cell.alloc_conf
        )
    except WorkerStartError as err:
        yield Started(node_id, socket.gethostname(), now())
        yield WorkerFailed(str(err))
        return
    try:
        yield Started(node_id, socket.gethostname(), now())
        # The sweep process enforces the timeout (it cancels this task), so none here.
        results = [worker.run(cell, None)]
    finally:
        worker.close()
    for _ in range(cell.rounds - 1):  # each further round in a fresh worker, as locally
        if results[-1].status not in MEASURED_STATUSES:
            break
        worker = _start_worker(setup, setup.peaks.get(node_id), collect_env_info=False)
        try:
            results.append(worker.run(cell, None))
        finally:
            worker.close()
    yield combine_rounds(results)


def ray_reason(err: BaseException) -> str:
    """Ray's reason for a task that failed, on one line: the exception the task raised, or
    what Ray says happened to its worker or node."""
    cause = getattr(err, "cause", None)
    text = one_line(cause if isinstance(cause, BaseException) else err)
    return _ANSI.sub("", text)


def check_reachable(address: str | None, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """RayClusterError (one line) unless ``host:port`` (or ``ray://host:port``) accepts a TCP
    connection within ``timeout_s``: Ray itself retries an unreachable head for minutes without
    a word. None (a local cluster) and ``auto`` (Ray finds it) are left to Ray."""
    if address is None or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port: Ray says what is wrong with it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise RayClusterError(
            f"cannot reach a Ray cluster at {address}: {reason} (within "
            f"{timeout_s:g} s); is a Ray head running there (ray start "
            "--head)?"
        ) from None


# -- the sweep process's side ---------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterPlan:
    """Where a sweep's cells may run: the device kind, the CPUs a cell asks for, the nodes that
    fit one (Ray node id -> hostname) and what the user should know about it."""

    kind: str
    cpus: int
    nodes: dict[str, str]
    notes: tuple[str, ...]


def plan_cluster(nodes: list[dict], kind: str, cpus_per_cell: int | None) -> ClusterPlan:
    """Plan a sweep on the nodes ``ray.nodes()`` lists: ``auto`` is cuda where a node has a
    GPU; a CPU cell asks for ``cpus_per_cell`` CPUs, by default as many as the largest node has
    (one cell per node), a GPU cell for one GPU and ``cpus_per_cell`` (1) CPUs. RayClusterError
    where no node fits a cell."""
    alive = [node for node in nodes if node.get("Alive")]
    gpus = {node["NodeID"]: int(node["Resources"].get("GPU", 0)) for node in alive}
    cpus = {node["NodeID"]: int(node["Resources"].get("CPU", 0)) for node in alive}
    asked = kind
    if kind == "auto":
        kind = "cuda" if any(gpus.values()) else "cpu"
    if kind == "cuda" and not any(gpus.values()):
        raise RayClusterError("--device cuda: the Ray cluster has no GPU; valid: auto, cpu")
    need = cpus_per_cell or (1 if kind == "cuda" else max(cpus.values(), default=0))
    able = [node for node in alive if kind == "cpu" or gpus[node["NodeID"]]]
    fit = [node for node in able if cpus[node["NodeID"]] >= max(need, 1)]
    if not fit:
        raise RayClusterError(
            f"no node of the Ray cluster has {need} CPU(s) for a cell "
            f"(largest: {max(cpus.values(), default=0)}); lower --cpus-per-cell"
        )
    slots = sum(
        min(
            cpus[node["NodeID"]] // need,
            gpus[node["NodeID"]] if kind == "cuda" else cpus[node["NodeID"]],
        )
        for node in fit
    )
    hosts = {
        node["NodeID"]: node.get("NodeManagerHostname") or node["NodeManagerAddress"]
        for node in fit
    }
    names = sorted(set(hosts.values()))
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    notes = [
        f"Ray: {len(fit)} node(s) ({shown}) run up to {slots} cell(s) at a time, each with "
        f"{'one GPU and ' if kind == 'cuda' else ''}{need} CPU(s)"
    ]
    if asked == "auto" and kind == "cpu":  # never a silent CPU measurement of a GPU grid
        notes.append(
            "--device auto: the Ray cluster has no GPU, so its cells are measured on the CPU "
            "(cpu rows, CPU timing); pass --device cpu to mean it, or --ray-address a cluster "
            "with GPUs"
        )
    if len(able) > len(fit):
        notes.append(
            f"{len(able) - len(fit)} smaller node(s) of the cluster run no cell: a cell "
            f"asks for {need} CPU(s); set --cpus-per-cell to use them"
        )
    return ClusterPlan(kind, need, hosts, tuple(notes))


@dataclass
class _Flight:
    """A submitted cell: where and since when it runs, once its task has said so."""

    index: int
    cell: Cell
    started: float | None = None
    node_id: str = ""
    host: str = ""
    started_at: str = ""

    def wall_s(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started


class RayExecutor(Executor):
    """Cells as Ray tasks on a cluster, as many at once as it has room for (module docstring).

    ``address``: None starts a private local cluster on this machine (every GPU of it becomes a
    slot); ``"auto"`` or ``host:port`` joins a running one. Where this process is already
    connected to Ray (``ray.init`` called by a library user), that connection is used and left
    open.
    """

    def __init__(
        self,
        device_spec: str,
        methods: list[str],
        *,
        address: str | None = None,
        cpus_per_cell: int | None = None,
        timeout_s: float | None = None,
        peak_tflops: float | None = None,
        precisions: tuple[str, ...] = ("fp32",),
        timeline: dict | None = None,
    ):
        self.ray = require_ray()
        self.timeline = timeline or {}  # Target's timeline and timeline_snapshot
        self.kind = parse_device(device_spec)[0]
        self.methods, self.address, self.cpus_per_cell = tuple(methods), address, cpus_per_cell
        self.timeout_s, self.peak_tflops, self.precisions = timeout_s, peak_tflops, precisions
        self.owns_connection = False
        self.nodes: dict[str, NodeHello] = {}
        self.flights: dict = {}  # ObjectRefGenerator -> _Flight
        self.options: dict = {}
        self.placement: Placement | None = None
        self.setup: TaskSetup | None = None
        self.node_gpus = 0  # the most GPUs one node has: the most devices a cell can span

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        check_reachable(self.address)
        try:
            if self.address is None:
                ray.init(
                    address="local",
                    include_dashboard=False,
                    log_to_driver=False,
                    object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                    logging_level=logging.WARNING,
                )
            else:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = f"at {self.address}" if self.address else "on this machine"
            raise RayClusterError(
                f"cannot start or reach a Ray cluster {where}: {ray_reason(err)}"
            ) from None
        self.owns_connection = True

    def start(self) -> Placement:
        """Connect, find the nodes that can run a cell, and probe each (SweepError if a node
        cannot start a worker)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._connect()
        plan = plan_cluster(self.ray.nodes(), self.kind, self.cpus_per_cell)
        self.node_gpus = max(
            int(n["Resources"].get("GPU", 0)) for n in self.ray.nodes() if n.get("Alive")
        )
        self.kind = plan.kind
        self.options = dict(num_cpus=plan.cpus, num_gpus=1 if plan.kind == "cuda" else 0)
        setup = TaskSetup(
            Target(
                plan.kind, peak_tflops=self.peak_tflops, precisions=self.precisions, **self.timeline
            ),
            self.methods,
            forwarded_environ(),
            plan.cpus,
        )
        probe = self._remote(probe_node)
        refs = {
            node_id: probe.options(
                **self.options,
                scheduling_strategy=(NodeAffinitySchedulingStrategy(node_id, soft=False)),
            ).remote(setup)
            for node_id in plan.nodes
        }
        for node_id, ref in refs.items():
            try:
                self.nodes[node_id] = self.ray.get(ref)
            except self.ray.exceptions.RayError as err:
                raise SweepError(
                    f"a worker cannot start on Ray node {plan.nodes[node_id]}: {ray_reason(err)}"
                ) from None
        hellos = list(self.nodes.values())
        self.setup = TaskSetup(
            setup.target,
            setup.methods,
            setup.environ,
            setup.threads,
            {hello.node_id: hello.peaks for hello in hellos},
        )
        names = tuple(dict.fromkeys(hello.device_name for hello in hellos))
        notes = list(plan.notes)
        if len(names) > 1:
            notes.append(
                f"the cluster holds {len(names)} device models ({', '.join(names)}): "
                "each row names the one its cell ran on; a cell measured on any of "
                "them counts as finished"
            )
        notes += sorted(
            {peak.note for hello in hellos for peak in hello.peaks.values() if peak.note}
        )
        self.placement = Placement(hellos[0].device, names, tuple(notes))
        return self.placement

    def _remote(self, function):
        # Never retried (a cell that killed its worker would run again and again); the Ray worker
        # holds no CUDA context, so it may serve many tasks (Ray's default for GPU tasks is one).
        return self.ray.remote(max_retries=0, max_calls=0)(function)

    def _cell_options(self, cell: Cell) -> dict:
        """A cell's task: on CUDA, one GPU per device it spans, on one node (a task is never
        split across nodes)."""
        if self.kind == "cuda" and cell.devices > 1:
            return {**self.options, "num_gpus": cell.devices}
        return self.options

    def provenance(self) -> dict:
        """env.json: every node's environment and peak (``nodes``), the first at the top level."""
        nodes = [
            {
                **hello.env,
                "ray_node_id": hello.node_id,
                "device": hello.device,
                "device_name": hello.device_name,
                "peak": asdict(hello.peaks["fp32"]) if "fp32" in hello.peaks else None,
                "peaks": {p: asdict(peak) for p, peak in hello.peaks.items()},
            }
            for hello in self.nodes.values()
        ]
        return cluster_env(
            nodes,
            executor="ray",
            ray_version=self.ray.__version__,
            ray_address=self.address or "local",
        )

    def run(
        self, cells: list[Cell], started: CellStarted
    ) -> Iterator[tuple[int, CellResult, float]]:
        task = self._remote(run_cell_task)
        setup = self.ray.put(self.setup)
        for index, cell in enumerate(cells):  # a task Ray could never place would wait forever
            if self.kind == "cuda" and cell.devices > self.node_gpus:
                yield (
                    index,
                    failed_result(
                        cell,
                        self.placement.device,
                        "",
                        ERROR,
                        (
                            f"--devices {cell.devices}: no node of the Ray cluster has that "
                            "many GPUs "
                            f"(largest: {self.node_gpus})"
                        ),
                        now(),
                        host="",
                    ),
                    0.0,
                )
        self.flights = {
            task.options(**self._cell_options(cell)).remote(cell, setup): _Flight(index, cell)
            for index, cell in enumerate(cells)
            if self.kind != "cuda" or cell.devices <= self.node_gpus
        }
        while self.flights:
            ready, _ = self.ray.wait(list(self.flights), num_returns=1, timeout=self._wait_s())
            for generator in ready:
                finished = self._receive(generator, started)
                if finished is not None:
                    yield finished
            yield from self._expired()

    def _wait_s(self) -> float:
        deadlines = [
            flight.started + self.timeout_s * flight.cell.rounds
            for flight in self.flights.values()
            if flight.started is not None and self.timeout_s is not None
        ]
        return max(0.0, min([POLL_S, *(d - time.monotonic() for d in deadlines)]))

    def _receive(self, generator, started: CellStarted) -> tuple[int, CellResult, float] | None:
        """The next message of a task: Started (tell the progress), or its end (a row)."""
        flight = self.flights[generator]
        try:
            item = self.ray.get(next(generator))
        except StopIteration:
            item = WorkerFailed("the Ray task ended without a result")
        except self.ray.exceptions.RayError as err:
            item = WorkerFailed(ray_reason(err))
        if isinstance(item, Started):
            flight.started, flight.started_at = time.monotonic(), item.started_at
            flight.node_id, flight.host = item.node_id, item.host
            started(flight.index, flight.cell)
            return None
        del self.flights[generator]
        result = item if isinstance(item, CellResult) else self._failed(flight, ERROR, item.error)
        return flight.index, result, flight.wall_s()

    def _expired(self) -> Iterator[tuple[int, CellResult, float]]:
        """Cancel (forcefully) every task past its timeout and give its timeout row."""
        if self.timeout_s is None:
            return
        for generator, flight in list(self.flights.items()):
            late = (
                flight.started is not None
                and flight.wall_s() >= self.timeout_s * flight.cell.rounds  # each round's
            )
            if not late or self.ray.wait([generator], timeout=0)[0]:
                continue  # not late, or its answer is in: the next round reads it
            self.ray.cancel(generator, force=True)
            del self.flights[generator]
            yield (
                flight.index,
                self._failed(
                    flight,
                    TIMEOUT,
                    f"no result within {self.timeout_s:g} s (--timeout); Ray task cancelled",
                ),
                flight.wall_s(),
            )

    def _failed(self, flight: _Flight, status: str, error: str) -> CellResult:
        """The row of a cell that produced nothing, named after the node it ran on (if known)."""
        hello = self.nodes.get(flight.node_id)
        names = self.placement.device_names
        name = hello.device_name if hello else (names[0] if len(names) == 1 else "")
        return failed_result(
            flight.cell,
            self.placement.device,
            name,
            status,
            error,
            flight.started_at or now(),
            host=flight.host,
        )

    def close(self) -> None:
        """Cancel every task still queued or running, then leave the cluster (a local one this
        executor started is shut down)."""
        for generator in list(self.flights):
            try:
                self.ray.cancel(generator, force=True)
            except Exception:  # a task that is already gone needs no cancelling
                pass
        self.flights.clear()
        if self.owns_connection and self.ray.is_initialized():
            self.ray.shutdown()
            self.owns_connection = False


__all__ = [
    "ClusterPlan",
    "RayClusterError",
    "RayExecutor",
    "check_reachable",
    "forwarded_environ",
    "plan_cluster",
    "probe_node",
    "require_ray",
    "run_cell_task",
]
