"""The ray executor on a real local Ray cluster (no mock): the same rows as the local executor,
failures and hangs as rows, cells in parallel, and resume after the sweep process is SIGKILLed.

One cluster serves the whole module (Ray's start-up stays out of the tests): 4 CPU slots and no
GPU, whatever the machine has; the tests ask 2 CPUs per cell, so two cells run at once.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from pathlib import Path

import pytest
from conftest import TINY_ARCH, TINY_RES
from fake_runners import install_misbehaving_runners
from helpers import usage_error
from typer.testing import CliRunner

from execute.test_sweep import process_gone, rows, sweep_killed_in_its_slow_cell, tiny, wait_for
from membench.cli import app
from membench.execute.sweep import SweepProgress, run_sweep
from membench.measure.calibrate import CALIBRATED_SOURCES
from membench.measure.devices import cpu_model_name

ray = pytest.importorskip("ray")
from membench.execute.ray_cluster import RayClusterError, plan_cluster  # noqa: E402

cli = CliRunner()


def node(name: str, cpus: int, gpus: int = 0, alive: bool = True) -> dict:
    """A node as ``ray.nodes()`` lists it (the keys membench reads)."""
    resources = {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}
    return {
        "NodeID": f"id-{name}",
        "Alive": alive,
        "NodeManagerHostname": name,
        "NodeManagerAddress": "10.0.0.1",
        "Resources": resources,
    }


# -- planning, without a cluster --------------------------------------------------------------
def test_a_gpu_cluster_runs_one_cell_per_gpu_on_the_nodes_that_have_gpus():
    nodes = [
        node("g1", 64, 8),
        node("g2", 64, 8),
        node("cpu1", 128),
        node("g3", 64, 8, alive=False),
    ]
    plan = plan_cluster(nodes, "auto", None)
    assert (plan.kind, plan.cpus, sorted(plan.nodes.values())) == ("cuda", 1, ["g1", "g2"])
    assert "run up to 16 cell(s) at a time, each with one GPU and 1 CPU(s)" in plan.notes[0]
    assert "up to 8 cell(s)" in plan_cluster(nodes, "cuda", 16).notes[0]  # 64 CPUs / 16 a cell
    assert plan_cluster(nodes, "cpu", None).nodes == {"id-cpu1": "cpu1"}  # all of a node's cores


def test_a_cpu_cell_asks_for_a_whole_node_unless_told_otherwise():
    nodes = [node("big", 8), node("small", 4)]
    plan = plan_cluster(nodes, "auto", None)
    assert (plan.kind, plan.cpus, list(plan.nodes.values())) == ("cpu", 8, ["big"])
    assert "1 smaller node(s) of the cluster run no cell" in " ".join(plan.notes)
    plan = plan_cluster(nodes, "cpu", 4)
    assert "2 node(s) (big, small) run up to 3 cell(s) at a time" in plan.notes[0]


def test_auto_on_a_cluster_without_a_gpu_says_it_measures_on_the_cpu():
    nodes = [node("big", 8)]
    assert "the Ray cluster has no GPU, so its cells are measured on the CPU" in " ".join(
        plan_cluster(nodes, "auto", None).notes
    )
    assert "no GPU" not in " ".join(plan_cluster(nodes, "cpu", None).notes)  # asked for


@pytest.mark.parametrize(
    ("kind", "cpus", "needle"),
    [
        ("cuda", None, "the Ray cluster has no GPU"),
        ("cpu", 16, "no node of the Ray cluster has 16 CPU(s) for a cell (largest: 8)"),
    ],
)
def test_a_cluster_that_cannot_run_a_cell_is_one_line_of_bad_input(kind, cpus, needle):
    with pytest.raises(RayClusterError, match=re.escape(needle)):
        plan_cluster([node("big", 8)], kind, cpus)


# -- on a real local cluster --------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster for this module; yields its address, for sweeps in other processes."""
    ray.init(
        num_cpus=4,
        num_gpus=0,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=128 * 2**20,
        logging_level=logging.WARNING,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def ray_sweep(cells, out: Path, **options):
    return run_sweep(cells, "cpu", out, executor="ray", cpus_per_cell=2, **options)


class Recorder(SweepProgress):
    """Counts the cells running at once."""

    def __init__(self):
        self.running = self.most = 0

    def cell_started(self, index, cell):
        self.running += 1
        self.most = max(self.most, self.running)

    def cell_finished(self, index, result, wall_s):
        self.running -= 1


@pytest.mark.slow
def test_local_and_ray_give_the_same_cells_and_tracker_peaks(cluster, tmp_path):
    cells = [tiny(method, batch=batch) for method in ("bp", "ff-pipelined") for batch in (2, 4)]
    local = run_sweep(cells, "cpu", tmp_path / "local")
    on_ray = ray_sweep(cells, tmp_path / "ray")

    def peaks(results):
        return {r.cell.cell_id: (r.status, r.peak_allocated_bytes, r.breakdown) for r in results}

    assert peaks(on_ray) == peaks(local)
    assert [r.cell for r in on_ray] == cells  # returned in grid order, whatever finished first
    written = rows(tmp_path / "ray")
    assert sorted(r["cell_id"] for r in written) == sorted(cell.cell_id for cell in cells)
    assert {(r["device"], r["device_name"], r["host"]) for r in written} == {
        ("cpu", cpu_model_name(), socket.gethostname())
    }
    env = json.loads((tmp_path / "ray" / "env.json").read_text())
    assert env["executor"] == "ray" and env["ray_version"] == ray.__version__
    assert [node["hostname"] for node in env["nodes"]] == [socket.gethostname()]
    assert env["nodes"][0]["peak"]["source"] in CALIBRATED_SOURCES
    assert ray_sweep(cells, tmp_path / "ray") == []  # a rerun of a finished sweep runs nothing
    assert ray_sweep(cells, tmp_path / "local") == []  # same device model: local rows count


@pytest.mark.slow
def test_cells_run_at_the_same_time(cluster, tmp_path, monkeypatch):
    install_misbehaving_runners(tmp_path / "site", monkeypatch)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    monkeypatch.setenv("MEMBENCH_TEST_BARRIER", str(barrier))
    monkeypatch.setenv("MEMBENCH_TEST_BARRIER_N", "2")
    progress = Recorder()
    results = ray_sweep(
        [tiny("test-barrier", seed=seed) for seed in (0, 1)], tmp_path / "out", progress=progress
    )
    assert [r.status for r in results] == ["ok", "ok"], [r.error for r in results]
    assert progress.most == 2


@pytest.mark.slow
def test_raising_self_killing_and_host_killing_runners_give_error_rows(
    cluster, tmp_path, monkeypatch
):
    install_misbehaving_runners(tmp_path / "site", monkeypatch)
    cells = [tiny("test-raise"), tiny("test-selfkill"), tiny("test-killhost"), tiny("bp")]
    results = ray_sweep(cells, tmp_path / "out")
    assert [r.status for r in results] == ["error", "error", "error", "ok"]
    assert "deliberate failure in test-raise" in results[0].error
    assert "SIGKILL" in results[1].error  # the cell's worker died; its Ray worker said so
    assert results[2].error.startswith("WorkerCrashedError")  # Ray's reason: its Ray worker died
    assert (results[2].host, results[2].device_name) == (socket.gethostname(), cpu_model_name())
    assert sorted(r["status"] for r in rows(tmp_path / "out")) == ["error"] * 3 + ["ok"]


@pytest.mark.slow
def test_cuda_on_a_cluster_without_a_gpu_is_one_line_and_exit_2(cluster, tmp_path):
    out = tmp_path / "out"
    result = cli.invoke(
        app,
        [
            "sweep",
            "--arch",
            TINY_ARCH,
            "--res",
            str(TINY_RES),
            "--batch",
            "2",
            "--device",
            "cuda",
            "--executor",
            "ray",
            "--out",
            str(out),
        ],
    )
    assert "--device cuda: the Ray cluster has no GPU" in usage_error(result)
    assert not (out / "cells.csv").exists()


@pytest.mark.slow
def test_a_hung_cell_is_cancelled_and_becomes_a_timeout_row(cluster, tmp_path, monkeypatch):
    install_misbehaving_runners(tmp_path / "site", monkeypatch)
    monkeypatch.delenv("MEMBENCH_TEST_HANG", raising=False)  # unset: test-slow hangs for ever
    pid_file = tmp_path / "worker.pid"
    monkeypatch.setenv("MEMBENCH_TEST_PID_FILE", str(pid_file))
    results = ray_sweep([tiny("test-slow"), tiny("bp")], tmp_path / "out", timeout_s=5)
    assert [r.status for r in results] == ["timeout", "ok"]
    assert "5 s" in results[0].error and "cancelled" in results[0].error
    worker_pid = int(pid_file.read_text())
    wait_for(lambda: process_gone(worker_pid), "the cancelled cell's worker to exit")


@pytest.mark.slow
def test_sigkill_of_the_sweep_then_a_rerun_loses_and_duplicates_nothing(
    cluster, tmp_path, monkeypatch
):
    # A cell asks for all 4 CPUs of the node: one cell at a time, in grid order.
    args, out, hang, pid_file = sweep_killed_in_its_slow_cell(
        tmp_path, monkeypatch, "--executor", "ray", "--ray-address", cluster
    )
    before = rows(out)
    assert "test-slow" not in [r["method"] for r in before]
    # Ray ends the tasks of a driver that died: the hung cell's worker goes, writing nothing.
    worker_pid = int(pid_file.read_text())
    wait_for(lambda: process_gone(worker_pid), "the killed sweep's cell worker to exit")
    assert rows(out) == before

    hang.unlink()
    result = cli.invoke(app, args)  # this process is connected to the cluster already
    assert result.exit_code == 0, result.output
    assert f"{len(before)} already finished, {3 - len(before)} to run" in result.output
    after = rows(out)
    assert after[: len(before)] == before  # finished cells neither rerun nor rewritten
    assert sorted(r["method"] for r in after) == ["bp", "ff-naive", "test-slow"]
    assert all(r["status"] == "ok" for r in after)
    steps = rows(out, "steps.csv")
    assert sorted(r["cell_id"] for r in steps) == sorted(
        r["cell_id"] for r in after for _ in range(2)
    )
    again = cli.invoke(app, args)
    assert "3 already finished, 0 to run" in again.output and len(rows(out)) == 3
