"""Timings that carry their own trust (membench.stability, membench.measure.machine_load): each
timed cell's spread as torch.utils.benchmark measures it, what else ran on the machine (from a
/proc/stat the test writes, so the load is simulated exactly), the verdict with its reason,
rounds in fresh processes, and where a user sees them (the summary, MFU on a shared CPU)."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import torch.utils.benchmark.utils.common as benchmark_common
from execute.test_sweep import tiny
from fake_runners import install_fake_runners

from membench.execute.sweep import run_sweep
from membench.measure import machine_load
from membench.measure.machine_load import LoadWindow
from membench.schema import Cell, CellResult
from membench.stability import (
    IQR_THRESHOLD,
    STABLE,
    UNKNOWN,
    UNSTABLE,
    combine_rounds,
    judge,
    rel_iqr,
    round_medians,
)


def timed(step_ms, cell: Cell | None = None, **values) -> CellResult:
    cell = cell or Cell("bp", "vgg-d2-w8", 8, 2, steps=len(step_ms))
    return CellResult(cell, "cpu", "Test CPU", step_ms=list(step_ms), **values)


def test_the_spread_is_torch_benchmarks_relative_iqr():
    rng = np.random.default_rng(0)
    for times in (rng.lognormal(0, 0.1, 20), rng.lognormal(0, 0.5, 7), [1.0, 2.0, 3.0, 10.0]):
        measurement = benchmark_common.Measurement(
            1, [t / 1e3 for t in times], benchmark_common.TaskSpec("step()", "pass")
        )
        assert rel_iqr(times) == pytest.approx(measurement.iqr / measurement.median, rel=1e-9)
        # meets_confidence is the stable side of the threshold (torch's default, 10 %)
        assert measurement.meets_confidence() == (rel_iqr(times) < IQR_THRESHOLD)
    assert benchmark_common._IQR_WARN_THRESHOLD == IQR_THRESHOLD


def test_a_quiet_tight_cell_is_stable_and_says_why():
    result = timed([100, 101, 99, 100, 102, 98, 100, 101], cpu_others=0.02)
    judge(result)
    assert result.stability == STABLE
    assert result.stability_reason.startswith("relative IQR 1.")
    assert "others used 2% of the CPU" in result.stability_reason


@pytest.mark.parametrize(
    ("times", "others", "reason"),
    [
        ([100, 140, 60, 100, 130, 70, 100, 120], 0.0, "relative IQR"),  # wide steps
        ([100, 101, 99, 100, 102, 98, 100, 101], 0.62, "other processes used 62%"),  # shared
    ],
)
def test_a_wide_or_shared_cell_is_unstable(times, others, reason):
    result = timed(times, cpu_others=others)
    judge(result)
    assert result.stability == UNSTABLE and reason in result.stability_reason


def test_too_few_steps_have_no_verdict():
    result = timed([100, 300])
    judge(result)
    assert result.stability == UNKNOWN and "too few" in result.stability_reason


def test_rounds_that_disagree_make_a_cell_unstable():
    cell = Cell("bp", "vgg-d2-w8", 8, 2, steps=4, rounds=3)
    rounds = [timed([100, 101, 99, 100], cell) for _ in range(3)]
    rounds[2].step_ms = [130, 131, 129, 130]  # a third run 30 % slower: a neighbour came in
    for r in rounds:
        r.cpu_others = 0.0
    row = combine_rounds(rounds)
    assert row.step_ms == [ms for r in rounds for ms in r.step_ms]
    assert round_medians(row.step_ms, 3) == [100, 100, 130]
    assert row.stability == UNSTABLE and "3 rounds' medians spread 30%" in row.stability_reason
    # A round on its own (in its worker) is judged as one run, never split into three.
    alone = timed([100, 101, 99, 100], cell)
    judge(alone)
    assert alone.stability == STABLE


def fake_proc_stat(path, busy_s: float, idle_s: float, cpus: int = 2) -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    busy, idle = int(busy_s * ticks), int(idle_s * ticks)
    lines = [f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0"]
    lines += [f"cpu{i} 0 0 0 0 0 0 0 0 0 0" for i in range(cpus)]
    path.write_text("\n".join(lines) + "\nintr 0\n")


def test_what_others_used_is_the_machines_busy_time_less_this_process(tmp_path, monkeypatch):
    """A simulated load, exact: over 10 s of a 2-CPU machine (20 CPU-seconds), 15 were busy and
    this process used 4 of them, so others used 11: 55 %."""
    stat = tmp_path / "stat"
    monkeypatch.setattr(machine_load, "PROC_STAT", stat)
    clock = iter([100.0, 110.0])
    own = iter([1.0, 5.0])
    monkeypatch.setattr(machine_load.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(machine_load, "own_cpu_s", lambda: next(own))
    fake_proc_stat(stat, busy_s=1000, idle_s=5000)
    window = LoadWindow.start()
    fake_proc_stat(stat, busy_s=1015, idle_s=5005)
    load = window.stop()
    assert load.cpu_self == pytest.approx(4 / 20) and load.cpu_others == pytest.approx(11 / 20)
    result = timed([100, 101, 99, 100, 102])
    load.record(result)
    judge(result)
    assert result.stability == UNSTABLE and "used 55% of the machine's CPU" in (
        result.stability_reason
    )


def test_without_proc_stat_the_shares_stay_empty(tmp_path, monkeypatch):
    monkeypatch.setattr(machine_load, "PROC_STAT", tmp_path / "none")
    load = LoadWindow.start().stop()
    assert load.cpu_others is None and load.cpu_self is None


ROUND_RUNNER = '''
import os
from pathlib import Path

from membench.runners.bp import BPRunner


class PidRunner(BPRunner):
    """Leaves its process id in MEMBENCH_TEST_PIDS each time it is built."""

    name = "test-pid"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        with open(os.environ["MEMBENCH_TEST_PIDS"], "a") as f:
            f.write(f"{os.getpid()}\\n")
'''


def test_each_round_runs_in_a_fresh_worker_and_steps_csv_keeps_every_round(tmp_path, monkeypatch):
    install_fake_runners(tmp_path, monkeypatch, ROUND_RUNNER, {"test-pid": "PidRunner"})
    pids = tmp_path / "pids"
    monkeypatch.setenv("MEMBENCH_TEST_PIDS", str(pids))
    cells = [tiny("test-pid", steps=4, rounds=3), tiny("test-pid", batch=4, steps=4)]
    run_sweep(cells, "cpu", tmp_path / "out")
    built = pids.read_text().split()  # a CPU cell builds its runner once (FLOPs: its tracked step)
    assert len(built) == 4 and len(set(built[:3])) == 3  # three rounds, three processes
    with open(tmp_path / "out" / "cells.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["rounds"] for r in rows] == ["3", "1"]
    assert all(r["stability"] in (STABLE, UNSTABLE) and r["stability_reason"] for r in rows)
    assert all(r["cpu_self"] and r["load_average"] for r in rows)
    with open(tmp_path / "out" / "steps.csv") as f:
        steps = [r["cell_id"] for r in csv.DictReader(f)]
    assert steps.count(cells[0].cell_id) == 12 and steps.count(cells[1].cell_id) == 4


def test_rounds_are_refused_where_they_cannot_be_rounds():
    from membench.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="an estimate times none"):
        build_config(arch="vgg-d2-w8", res=8, rounds=3, estimate=True)
    with pytest.raises(ConfigError, match="fresh worker process"):
        build_config(arch="vgg-d2-w8", res=8, rounds=3, isolation="none")


def test_the_summary_marks_unstable_cells_and_mfu_on_a_shared_cpu():
    from rich.console import Console

    from membench.cli.display import cell_line, summary_table

    shared = timed(
        [100, 140, 60, 100, 130, 70, 100, 120],
        flops_per_step=10**9,
        peak_tflops=0.1,
        cpu_others=0.84,
    )
    judge(shared)
    console = Console(record=True, width=200)
    console.print(summary_table([shared], "t"))
    text = console.export_text()
    assert "unstable" in text and "1 cell(s) unstable" in text
    assert "%*" in text and "MFU on a shared CPU: other processes used up to 84%" in text
    line = cell_line(0, 1, shared, 1.0)
    assert "%*" in line and "unstable: relative IQR" in line


def test_ranks_on_one_cpu_share_its_peak_and_gpus_add_theirs():
    """A 2-rank DDP cell on 2 cores printed MFU 79.6 %: it was held against twice the CPU's
    calibrated peak, which both ranks share, and bypassed the check against MFU over 100 %."""
    from membench.measure.flops import apply_peak
    from membench.measure.peaks import PeakSpec
    from membench.multidevice.launch import cell_peak

    peak = PeakSpec(0.1, "gemm-calibrated", "fp32")
    assert cell_peak(peak, 2, "cpu").tflops == 0.1 and cell_peak(peak, 4, "cuda").tflops == 0.4
    # 2 ranks together at 0.16 TFLOP/s: past one CPU's peak, so no MFU (and the reason why)
    row = timed([10.0] * 5, Cell("bp-ddp", "vgg-d2-w8", 8, 4, devices=2, steps=5))
    row.flops_per_step = int(0.16e12 * 10 / 1e3)
    apply_peak(row, cell_peak(peak, 2, "cpu"))
    assert row.mfu is None and row.peak_source.startswith("none: this step ran at 0.16")
    apply_peak(row, PeakSpec(0.2, "gemm-calibrated", "fp32"))  # what x2 had made of it
    assert row.mfu == pytest.approx(0.8)
