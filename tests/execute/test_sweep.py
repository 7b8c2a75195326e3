"""Sweeps that survive their cells: oom/error/timeout rows, resume after SIGKILL, locking, and
one-line validation errors (exit 2) before any cell runs."""

from __future__ import annotations

import csv
import json
import math
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from conftest import TINY_ARCH, TINY_RES
from fake_runners import install_misbehaving_runners
from helpers import usage_error
from typer.testing import CliRunner

from membench.cli import app
from membench.execute.local import Executor, Placement
from membench.execute.sweep import SweepProgress, _sweep, estimate_sweep, run_sweep
from membench.measure.devices import CpuDevice, cpu_model_name
from membench.results import append_result
from membench.resume import SweepLockedError, grid_rows, prune_results, results_lock
from membench.schema import Cell, CellResult

cli = CliRunner()
WAIT_S = 120  # generous bound on waiting for another process; never a performance threshold


def tiny(method: str = "bp", **overrides) -> Cell:
    settings = dict(method=method, arch="vgg-d2-w8", res=TINY_RES, batch=2, warmup=1, steps=2)
    settings.update(overrides)
    return Cell(**settings)


def rows(out: Path, name: str = "cells.csv") -> list[dict]:
    path = out / name
    return list(csv.DictReader(path.open())) if path.exists() else []


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


# -- isolation: failures become rows and the sweep goes on --------------------------------------
@pytest.mark.slow
def test_cpu_budget_gives_an_oom_row_then_the_sweep_goes_on(tmp_path):
    budget = 2**20  # 1 MiB: batch 32 at 16x16 needs more, batch 2 at 8x8 far less
    cells = [tiny(res=16, batch=32, device_mem_bytes=budget), tiny(device_mem_bytes=budget)]
    results = run_sweep(cells, "cpu", tmp_path)
    assert [r.status for r in results] == ["oom", "ok"]
    assert "budget" in results[0].error
    written = rows(tmp_path)
    assert [r["status"] for r in written] == ["oom", "ok"]
    assert written[0]["device_mem_bytes"] == str(budget)


def test_raising_and_self_killing_runners_give_error_rows(tmp_path, monkeypatch):
    install_misbehaving_runners(tmp_path / "site", monkeypatch)
    cells = [tiny("test-raise"), tiny("test-selfkill"), tiny("test-exit"), tiny("bp")]
    results = run_sweep(cells, "cpu", tmp_path / "out")
    assert [r.status for r in results] == ["error", "error", "error", "ok"]
    assert "deliberate failure in test-raise" in results[0].error
    assert "SIGKILL" in results[1].error
    assert "exit code 7" in results[2].error
    assert [r["status"] for r in rows(tmp_path / "out")] == ["error", "error", "error", "ok"]


@pytest.mark.slow
def test_a_hung_cell_becomes_a_timeout_row(tmp_path, monkeypatch):
    install_misbehaving_runners(tmp_path / "site", monkeypatch)
    monkeypatch.delenv("MEMBENCH_TEST_HANG", raising=False)  # unset: test-slow hangs for ever
    pid_file = tmp_path / "worker.pid"
    monkeypatch.setenv("MEMBENCH_TEST_PID_FILE", str(pid_file))
    results = run_sweep([tiny("test-slow"), tiny("bp")], "cpu", tmp_path / "out", timeout_s=5)
    assert [r.status for r in results] == ["timeout", "ok"]
    assert "5 s" in results[0].error
    assert process_gone(int(pid_file.read_text()))


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
def test_timeout_bounds_an_estimate_as_it_bounds_a_measurement(tmp_path, monkeypatch, jobs):
    install_misbehaving_runners(tmp_path / "site", monkeypatch)
    monkeypatch.delenv("MEMBENCH_TEST_HANG", raising=False)  # test-slow hangs, on fake tensors too
    # generous: the bp estimate after the killed one must finish well inside it on a busy machine
    results = estimate_sweep(
        [tiny("test-slow"), tiny("bp")], "cuda", tmp_path / "out", timeout_s=10, jobs=jobs
    )
    assert [(r.status, r.device) for r in results] == [
        ("timeout", "cuda (estimate)"),
        ("estimated", "cuda (estimate)"),
    ]
    # rows are appended as cells finish: side by side, the estimate may come first
    written = {r["method"]: r["status"] for r in rows(tmp_path / "out")}
    assert written == {"test-slow": "timeout", "bp": "estimated"}


def test_in_process_isolation_runs_the_same_protocol(tmp_path):
    results = run_sweep([tiny()], "cpu", tmp_path, isolation="none")
    assert results[0].status == "ok" and len(results[0].step_ms) == 2
    with pytest.raises(ValueError, match="timeout"):
        run_sweep([tiny()], "cpu", tmp_path, isolation="none", timeout_s=1)


@pytest.mark.parametrize("timeout_s", [math.inf, math.nan, 0, -1])
def test_run_sweep_refuses_a_timeout_that_is_not_finite_and_positive(tmp_path, timeout_s):
    with pytest.raises(ValueError, match="timeout takes seconds"):
        run_sweep([tiny()], "cpu", tmp_path / "out", timeout_s=timeout_s)
    assert not (tmp_path / "out").exists()


# -- resume, redo, orphan steps, locking ------------------------------------------------------
def sweep_killed_in_its_slow_cell(tmp_path: Path, monkeypatch, *extra: str):
    """Run `membench sweep` over bp, test-slow and ff-naive in a subprocess and SIGKILL it while
    test-slow hangs; returns (args, out, hang file, worker pid file). Unlink the hang file to let
    a rerun's test-slow finish."""
    install_misbehaving_runners(tmp_path / "site", monkeypatch)
    hang, pid_file, out = tmp_path / "hang", tmp_path / "worker.pid", tmp_path / "out"
    hang.touch()
    monkeypatch.setenv("MEMBENCH_TEST_HANG", str(hang))
    monkeypatch.setenv("MEMBENCH_TEST_PID_FILE", str(pid_file))
    args = [
        "sweep",
        "--arch",
        "vgg-d2-w8",
        "--res",
        str(TINY_RES),
        "--batch",
        "2",
        "--method",
        "bp,test-slow,ff-naive",
        "--warmup",
        "1",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--out",
        str(out),
        *extra,
    ]
    sweep = subprocess.Popen(
        [sys.executable, "-c", "from membench.cli import main; main()", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(pid_file.exists, "the slow cell to start")
    finally:
        sweep.send_signal(signal.SIGKILL)
        sweep.wait()
    return args, out, hang, pid_file


@pytest.mark.slow
def test_resume_after_sigkill_loses_nothing_and_reruns_the_killed_cell(tmp_path, monkeypatch):
    args, out, hang, pid_file = sweep_killed_in_its_slow_cell(tmp_path, monkeypatch)
    before = rows(out)
    assert [r["method"] for r in before] == ["bp"]
    worker_pid = int(pid_file.read_text())
    wait_for(lambda: process_gone(worker_pid), "the orphaned worker to exit")

    hang.unlink()
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "1 already finished, 2 to run" in result.output
    after = rows(out)
    assert [r["method"] for r in after] == ["bp", "test-slow", "ff-naive"]
    assert after[0] == before[0]  # the finished cell was neither rerun nor rewritten
    assert all(r["status"] == "ok" for r in after)
    steps = rows(out, "steps.csv")
    assert sorted(r["cell_id"] for r in steps) == sorted(
        r["cell_id"] for r in after for _ in range(2)
    )


def test_orphan_steps_are_dropped_and_redo_replaces_rows(tmp_path):
    cells = [tiny(), tiny(batch=4)]
    run_sweep(cells, "cpu", tmp_path, isolation="none")
    # A sweep killed between appending a cell's steps and its row leaves orphan steps.
    with open(tmp_path / "steps.csv", "a") as f:
        f.write("bp_vgg-d2-w8_r8_b6_k10,cpu,0,1.0\nbp_vgg-d2-w8_r8_b6_k10,cpu,1,1.0\n")
    assert run_sweep(cells, "cpu", tmp_path, isolation="none") == []  # all finished: skipped
    assert len(rows(tmp_path, "steps.csv")) == 4
    first = rows(tmp_path)

    rerun = run_sweep(cells[:1], "cpu", tmp_path, isolation="none", redo=True)
    assert len(rerun) == 1
    after = rows(tmp_path)
    assert sorted(r["batch"] for r in after) == ["2", "4"]
    assert [r for r in after if r["batch"] == "4"] == [r for r in first if r["batch"] == "4"]
    assert len(rows(tmp_path, "steps.csv")) == 4
    assert prune_results(tmp_path) == 0


def _set_device_name(out: Path, name: str) -> None:
    with open(out / "cells.csv", newline="") as f:
        reader = csv.DictReader(f)
        header, table = reader.fieldnames, list(reader)
    for row in table:
        row["device_name"] = name
    with open(out / "cells.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)


def test_rows_measured_on_another_machine_do_not_count_as_finished(tmp_path, monkeypatch):
    """A committed reference run (same cells, same ``cpu`` device, another CPU model) in --out
    must not make a fresh machine skip its measurement, and must stay in the file."""
    cells, here = [tiny()], cpu_model_name()
    run_sweep(cells, "cpu", tmp_path, isolation="none")
    _set_device_name(tmp_path, "Reference CPU 9000")
    reference = rows(tmp_path)

    def no_name_in_the_sweep_process(self):
        raise AssertionError("the sweep process asked the device for its name")

    # With process isolation the name comes from the worker's hello (for CUDA, asking here
    # would open a CUDA context in the sweep process).
    monkeypatch.setattr(CpuDevice, "name", no_name_in_the_sweep_process)
    results = run_sweep(cells, "cpu", tmp_path)
    assert [(r.status, r.device_name) for r in results] == [("ok", here)]
    after = rows(tmp_path)
    assert after[0] == reference[0] and [r["device_name"] for r in after] == [
        "Reference CPU 9000",
        here,
    ]
    assert run_sweep(cells, "cpu", tmp_path) == []  # measured here now: finished
    assert [r["device_name"] for r in grid_rows(tmp_path, cells, "cpu", here)] == [here]

    monkeypatch.undo()
    assert len(run_sweep(cells, "cpu", tmp_path, isolation="none", redo=True)) == 1
    assert [r["device_name"] for r in rows(tmp_path)] == ["Reference CPU 9000", here]
    assert rows(tmp_path)[0] == reference[0]  # --redo replaces this machine's rows only


class TwoModels(Executor):
    """A cluster of two CPU models, "Model A" and "Model B", whose cells all land on B."""

    def start(self):
        return Placement("cpu", ("Model A", "Model B"))

    def provenance(self):
        return {}

    def run(self, cells, started):
        for index, cell in enumerate(cells):
            started(index, cell)
            yield index, CellResult(cell, "cpu", "Model B", host="b"), 0.0

    def close(self):
        pass


def test_a_row_measured_on_any_model_of_the_cluster_counts_as_finished(tmp_path):
    cells = [tiny(batch=batch) for batch in (2, 4, 6)]
    append_result(tmp_path, CellResult(cells[0], "cpu", "Model A", host="a"))
    append_result(tmp_path, CellResult(cells[1], "cpu", "Another CPU", host="elsewhere"))
    results = _sweep(cells, TwoModels(), tmp_path, None, redo=False, estimates=False)
    assert [r.cell for r in results] == cells[1:]  # measured on A: finished on this cluster
    results = _sweep(cells, TwoModels(), tmp_path, None, redo=True, estimates=False)
    assert [r.cell for r in results] == cells  # --redo: every cell again, on this cluster
    assert sorted((r["batch"], r["device_name"]) for r in rows(tmp_path)) == [
        ("2", "Model B"),
        ("4", "Another CPU"),
        ("4", "Model B"),
        ("6", "Model B"),
    ]


def test_a_second_sweep_on_a_locked_folder_fails_with_exit_2(tmp_path):
    with results_lock(tmp_path):
        with pytest.raises(SweepLockedError, match="in use by another sweep"):
            run_sweep([tiny()], "cpu", tmp_path)
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
                "cpu",
                "--out",
                str(tmp_path),
            ],
        )
    assert "in use by another sweep" in usage_error(result)
    assert not (tmp_path / "cells.csv").exists()


# -- the command line -----------------------------------------------------------------------
def test_sweep_cli_prints_one_line_per_cell_a_summary_and_where_results_went(tmp_path):
    out = tmp_path / "out"
    args = [
        "sweep",
        "--arch",
        "vgg-d2-w8",
        "--res",
        str(TINY_RES),
        "--batch",
        "2,4",
        "--warmup",
        "1",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--isolation",
        "none",
        "--out",
        str(out),
    ]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "[1/2] bp_vgg-d2-w8_r8_b2_k10 ok" in result.output
    assert "[2/2] bp_vgg-d2-w8_r8_b4_k10 ok" in result.output
    assert "imgs/s" in result.output and f"results in {out}" in result.output
    assert {r["host"] for r in rows(out)} == {socket.gethostname()}  # where each cell ran
    again = cli.invoke(app, args)
    assert f"on cpu ({cpu_model_name()}), 2 already finished, 0 to run" in again.output
    assert "2 cell(s) on cpu" in again.output  # the summary table shows the finished cells
    assert len(rows(out)) == 2


def test_a_value_error_after_cells_ran_is_not_reported_as_bad_input(tmp_path, monkeypatch):
    def broken_summary(*args):
        raise ValueError("a bug after the sweep")

    monkeypatch.setattr("membench.resume.grid_rows", broken_summary)
    result = cli.invoke(
        app,
        [
            "sweep",
            "--arch",
            "vgg-d2-w8",
            "--res",
            str(TINY_RES),
            "--batch",
            "2",
            "--warmup",
            "1",
            "--steps",
            "1",
            "--device",
            "cpu",
            "--isolation",
            "none",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code != 2 and isinstance(result.exception, ValueError)
    assert len(rows(tmp_path)) == 1


def _fake_estimator(monkeypatch, calls: list) -> None:
    def estimate_device(device_kind):
        return f"{device_kind} (estimate)"

    def estimate_cell(cell, device_kind, **estimate_options):  # profile, fit_by: unused
        calls.append(device_kind)
        return CellResult(
            cell,
            estimate_device(device_kind),
            "estimate",
            status="estimated",
            peak_allocated_bytes=12345,
            memory_source="estimate",
        )

    # Patched in this process only, so the tests that use it run estimates with isolation none.
    monkeypatch.setitem(
        sys.modules,
        "membench.planning.estimate",
        types.SimpleNamespace(estimate_cell=estimate_cell),
    )


def test_estimate_flag_appends_estimate_rows_without_running(tmp_path, monkeypatch):
    calls = []
    _fake_estimator(monkeypatch, calls)
    args = [
        "sweep",
        "--arch",
        "vgg8",
        "--res",
        "32",
        "--batch",
        "64,128",
        "--estimate",
        "--isolation",
        "none",
        "--out",
        str(tmp_path),
    ]
    assert cli.invoke(app, args).exit_code == 0
    assert cli.invoke(app, [*args, "--device", "cpu"]).exit_code == 0
    assert calls == ["cuda", "cuda", "cpu", "cpu"]  # a cuda estimate is no cpu one
    # A cpu estimate replaces earlier cpu estimates only: the cuda ones survive.
    expected = [("cuda (estimate)", "estimated")] * 2 + [("cpu (estimate)", "estimated")] * 2
    assert [(r["device"], r["status"]) for r in rows(tmp_path)] == expected
    assert cli.invoke(app, args).exit_code == 0  # resumed: nothing left to estimate
    assert calls == ["cuda", "cuda", "cpu", "cpu"]
    assert cli.invoke(app, [*args, "--redo"]).exit_code == 0  # recomputed: cuda rows replaced
    assert calls == ["cuda", "cuda", "cpu", "cpu", "cuda", "cuda"]
    written = rows(tmp_path)
    assert sorted((r["device"], r["batch"]) for r in written) == sorted(
        (f"{kind} (estimate)", batch) for kind in ("cuda", "cpu") for batch in ("64", "128")
    )
    assert written[0]["peak_allocated_bytes"] == "12345"


def test_an_estimate_never_replaces_a_measured_runs_env_json(tmp_path, monkeypatch):
    _fake_estimator(monkeypatch, [])
    measured = tmp_path / "measured"
    run_sweep([tiny()], "cpu", measured, isolation="none")
    env = json.loads((measured / "env.json").read_text())
    env["time"] = "the measured run"
    (measured / "env.json").write_text(json.dumps(env))
    estimate_sweep([tiny()], "cuda", measured, isolation="none")
    assert json.loads((measured / "env.json").read_text())["time"] == "the measured run"
    fresh = tmp_path / "fresh"
    estimate_sweep([tiny()], "cuda", fresh, isolation="none")
    assert (fresh / "env.json").exists()  # a folder without provenance gets one


BAD_INPUT = [
    (["--arch", "vgg99"], "arch"),
    (["--method", "nope"], "valid: bp"),
    (["--batch", "0"], "--batch"),
    (["--batch", "6", "--method", "bp-accum", "--micro-batch", "4"], "divide"),
    (["--arch", "vgg8", "--res", "2"], "res"),
    (["--device", "tpu"], "valid: auto, cpu"),
    (["--timeout", "0"], "--timeout"),
    (["--timeout", "-3"], "--timeout"),
    (["--timeout", "inf"], "--timeout"),
    (["--timeout", "nan"], "--timeout"),
    (["--isolation", "thread"], "--isolation takes process, none"),
    (["--isolation", "none", "--timeout", "5"], "--isolation process"),
    (["--profile", "no-such-profile"], "valid: "),
    (["--device-mem", "lots"], "memory size"),
    (["--estimate", "--device", "tpu"], "valid: auto, cpu"),
    (["--executor", "dask"], "--executor takes local, ray"),
    (["--ray-address", "auto"], "--ray-address needs --executor ray"),
    (["--cpus-per-cell", "2"], "--cpus-per-cell needs --executor ray"),
    (["--executor", "ray", "--cpus-per-cell", "0"], "--cpus-per-cell must be at least 1"),
    (["--executor", "ray", "--isolation", "none"], "--isolation none cannot apply"),
    (["--executor", "ray", "--estimate"], "drop --executor ray"),
    (["--executor", "ray", "--device", "cuda:1"], "Ray gives each cell its GPU"),
]


@pytest.mark.parametrize(("extra", "needle"), BAD_INPUT, ids=[" ".join(e) for e, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2_before_any_cell(tmp_path, extra, needle):
    out = tmp_path / "out"
    # Later copies of an option win, so ``extra`` overrides these valid defaults.
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
            "cpu",
            *extra,
            "--out",
            str(out),
        ],
    )
    assert needle in usage_error(result)
    assert not out.exists()


@pytest.mark.slow
def test_a_local_sweep_never_imports_ray(tmp_path):
    code = (
        "import sys; from membench.cli import app; from membench.execute.sweep import run_sweep; "
        "from membench.schema import Cell; "
        f"run_sweep([Cell('bp', 'vgg-d2-w8', {TINY_RES}, 2, warmup=1, steps=1)], 'cpu', "
        f"{str(tmp_path)!r}); print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert [r["status"] for r in rows(tmp_path)] == ["ok"]


def test_the_ray_executor_without_ray_installed_is_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
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
            "cpu",
            "--executor",
            "ray",
            "--out",
            str(out),
        ],
    )
    assert "pip install 'membench[ray]'" in usage_error(result)
    assert not out.exists()


def test_an_interrupted_estimate_sweep_resumes_where_it_stopped(tmp_path, monkeypatch):
    calls = []
    _fake_estimator(monkeypatch, calls)
    cells = [tiny(batch=b) for b in (2, 4, 6, 8)]

    class Stop(SweepProgress):
        def cell_finished(self, index, result, wall_s):
            if index == 1:
                raise KeyboardInterrupt  # Ctrl-C after the second estimate is on disk

    with pytest.raises(KeyboardInterrupt):
        estimate_sweep(cells, "cuda", tmp_path, isolation="none", progress=Stop())
    assert [r["batch"] for r in rows(tmp_path)] == ["2", "4"]
    calls.clear()
    estimate_sweep(cells, "cuda", tmp_path, isolation="none")
    assert len(calls) == 2  # only the two it had not estimated (it used to start from 0)
    assert sorted(r["batch"] for r in rows(tmp_path)) == ["2", "4", "6", "8"]


def test_measuring_into_a_folder_of_estimates_says_so(tmp_path, monkeypatch):
    _fake_estimator(monkeypatch, [])
    estimate_sweep([tiny()], "cuda", tmp_path, isolation="none")
    notes = []

    class Notes(SweepProgress):
        def note(self, text):
            notes.append(text)

    run_sweep([tiny()], "cpu", tmp_path, isolation="none", progress=Notes())
    assert any("holds 1 estimated row(s) (cuda (estimate))" in n for n in notes), notes
    notes.clear()
    run_sweep([tiny(batch=4)], "cpu", tmp_path / "fresh", isolation="none", progress=Notes())
    assert not any("holds" in n for n in notes)
