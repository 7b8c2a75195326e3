"""Cells on several devices: the devices setting, N gloo ranks per cell and the rows they make,
broken ranks as rows that name them with no process left behind, estimates in a fake process
group (docs/multi-device.md). Every cell is tiny and spans 2 ranks."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from fake_runners import install_fake_runners
from helpers import usage_error
from typer.testing import CliRunner

from membench.cli import app
from membench.config import expand_grid
from membench.execute.sweep import run_sweep
from membench.multidevice.fake_group import estimate_ranks
from membench.multidevice.launch import run_multi_device
from membench.multidevice.rows import RANKS_FILE, read_ranks
from membench.report.load import load_cells
from membench.report.multi_device import multi_device_markdown
from membench.schema import Cell

cli = CliRunner()
ARCH, RES, BATCH = "vgg-d4-w8", 8, 8


def cell(method: str, **overrides) -> Cell:
    settings = dict(
        method=method,
        arch=ARCH,
        res=RES,
        batch=BATCH,
        devices=2,
        warmup=1,
        steps=2,
        micro_batch=2 if method in ("bp-pp", "ff-pp") else None,
        schedule="1f1b" if method == "bp-pp" else None,
    )
    return Cell(**{**settings, **overrides})


BROKEN_RANKS = '''
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from membench.multidevice.bp_runners import BPDDPRunner


class _OnRankOne(BPDDPRunner):
    """Fails on rank 1 of a real process group (not in the fake one that counts FLOPs)."""

    def step(self, images, labels):
        if dist.get_backend() != "fake":
            Path(os.environ["MEMBENCH_TEST_PIDS"], str(os.getpid())).touch()
            if dist.get_rank() == 1:
                self.fail()
        return super().step(images, labels)


class RaisingRank(_OnRankOne):
    def fail(self):
        raise RuntimeError("deliberate failure on one rank")


class OOMRank(_OnRankOne):
    def fail(self):
        raise torch.OutOfMemoryError("deliberate out of memory on one rank")


class ExitingRank(_OnRankOne):
    def fail(self):
        os._exit(7)


class HangingRank(_OnRankOne):
    def fail(self):
        while True:
            time.sleep(0.05)
'''
BROKEN_NAMES = {
    "test-rank-raise": "RaisingRank",
    "test-rank-oom": "OOMRank",
    "test-rank-exit": "ExitingRank",
    "test-rank-hang": "HangingRank",
}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


# -- the setting ------------------------------------------------------------------------------
def test_devices_is_a_grid_axis_that_one_device_methods_collapse():
    cells = expand_grid(
        method=["bp", "bp-ddp", "bp-pp"],
        arch=ARCH,
        res=RES,
        batch=BATCH,
        devices=[2, 4],
        micro_batch=2,
    )
    ids = sorted(c.cell_id for c in cells)
    assert ids == [
        "bp-ddp_vgg-d4-w8_r8_b8_k10_dev2",
        "bp-ddp_vgg-d4-w8_r8_b8_k10_dev4",
        "bp-pp_vgg-d4-w8_r8_b8_mb2_k10_dev2_1f1b",
        "bp-pp_vgg-d4-w8_r8_b8_mb2_k10_dev4_1f1b",
        "bp_vgg-d4-w8_r8_b8_k10",
    ]
    assert all(c.schedule is None for c in cells if c.method != "bp-pp")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--method", "bp-ddp", "--devices", "1"], "--devices 2 or more"),
        (["--method", "bp-ddp", "--devices", "3"], "does not split over 3 devices"),
        (["--method", "bp-pp", "--devices", "2", "--micro-batch", "8"], "at least as many micro"),
        (["--method", "ff-pp", "--devices", "5"], "fewer than the 5 pipeline stages"),
        (["--method", "bp-fsdp", "--devices", "2", "--precision", "fp16"], "use bf16"),
        (
            ["--method", "bp-pp", "--devices", "2", "--schedule", "zb"],
            "--schedule takes gpipe, 1f1b",
        ),
    ],
)
def test_a_cell_the_ranks_cannot_split_is_one_line_and_exit_2(tmp_path, args, needle):
    result = cli.invoke(
        app,
        [
            "sweep",
            "--arch",
            ARCH,
            "--res",
            str(RES),
            "--batch",
            str(BATCH),
            "--out",
            str(tmp_path),
            *args,
        ],
    )
    assert needle in usage_error(result)


# -- measured on gloo ranks -------------------------------------------------------------------
@pytest.mark.slow
def test_every_method_on_two_ranks_is_a_row_with_its_ranks(tmp_path):
    methods = ["bp-ddp", "bp-fsdp", "bp-pp", "ff-pp"]
    results = run_sweep([cell(m) for m in methods], "cpu", tmp_path, isolation="none")
    assert [r.status for r in results] == ["ok"] * 4, [r.error for r in results]
    ranks = read_ranks(tmp_path)
    assert len(ranks) == 8 and set(ranks["rank"]) == {0, 1}
    for result in results:
        peaks = [r.peak_allocated_bytes for r in result.ranks]
        assert result.peak_allocated_bytes == max(peaks) == peaks[result.peak_rank]
        assert result.step_ms == [max(t) for t in zip(*(r.step_ms for r in result.ranks))]
        assert result.sent_bytes_per_step > 0 and result.flops_per_step > 0
        pipeline = result.cell.method in ("bp-pp", "ff-pp")
        assert (result.idle_fraction is not None) == pipeline
        # The CPU tracker is exact, and a fake process group plans each rank's very bytes, but
        # for what an in-flight send holds: on bp-pp's first stage, one micro-batch's boundary
        # (2 x 8 x 4 x 4 floats), which a fake send, complete at once, never holds.
        planned = [r.peak_allocated_bytes for r in estimate_ranks(result.cell, "cpu").ranks]
        held = [1024, 0] if result.cell.method == "bp-pp" else [0, 0]
        assert [p - q for p, q in zip(peaks, planned)] == held, result.cell_id
    ddp, fsdp, pp, _ = results
    assert len({r.peak_allocated_bytes for r in ddp.ranks}) == 1  # the same model, equal shares
    assert fsdp.ranks[0].breakdown.parameters * 2 == ddp.ranks[0].breakdown.parameters
    assert pp.ranks[0].peak_allocated_bytes != pp.ranks[1].peak_allocated_bytes  # own stages
    with open(tmp_path / RANKS_FILE) as f:
        assert {row["cell_id"] for row in csv.DictReader(f)} == {r.cell_id for r in results}
    section = "\n".join(multi_device_markdown(load_cells([tmp_path]).cells))
    assert section.startswith("## Cells on several devices")
    for result in results:
        assert result.cell_id in section
    assert "Schedule model (a model, not a measurement)" in section
    assert "| 1f1b |" in section and "| ff-forward-only |" in section


@pytest.mark.slow
def test_broken_ranks_become_rows_that_name_the_rank_and_leave_no_process(tmp_path, monkeypatch):
    install_fake_runners(tmp_path / "site", monkeypatch, BROKEN_RANKS, BROKEN_NAMES)
    pids = tmp_path / "pids"
    pids.mkdir()
    monkeypatch.setenv("MEMBENCH_TEST_PIDS", str(pids))
    names = ["test-rank-raise", "test-rank-oom", "test-rank-exit"]
    results = run_sweep([cell(name) for name in names], "cpu", tmp_path / "out", isolation="none")
    assert [r.status for r in results] == ["error", "oom", "error"]
    assert results[0].error.startswith("rank 1: RuntimeError: deliberate failure")
    assert results[1].error.startswith("rank 1: OutOfMemoryError: deliberate out of memory")
    assert results[2].error.startswith("rank 1 failed (exit code 7)")
    # 10 s: the ranks' collectives give up after a third of 0.9 x it, time a loaded machine's
    # ranks need to start (6 s flaked there: rank 0 had not reached its collective yet)
    hung = run_multi_device(cell("test-rank-hang"), "cpu", "cpu", timeout_s=10)
    assert hung.status == "timeout" and hung.error.startswith("rank(s) 1 hung"), hung.error
    assert "rank(s) 0 timed out waiting for them" in hung.error
    started = [int(p.name) for p in pids.iterdir()]
    assert len(started) >= 8 and not any(alive(pid) for pid in started)


@pytest.mark.slow
def test_a_worker_runs_the_ranks_and_survives_a_failed_cell(tmp_path, monkeypatch):
    install_fake_runners(tmp_path / "site", monkeypatch, BROKEN_RANKS, BROKEN_NAMES)
    monkeypatch.setenv("MEMBENCH_TEST_PIDS", str(tmp_path))
    results = run_sweep([cell("test-rank-raise"), cell("ff-pp")], "cpu", tmp_path / "out")
    assert [r.status for r in results] == ["error", "ok"]
    assert results[1].idle_fraction is not None and len(results[1].ranks) == 2


# -- estimated in a fake process group ---------------------------------------------------------
@pytest.mark.slow
def test_an_estimate_plans_every_rank_on_one_machine():
    pp = estimate_ranks(cell("bp-pp", devices=4), "cuda")
    assert pp.status == "estimated" and len(pp.ranks) == 4
    peaks = [r.peak_allocated_bytes for r in pp.ranks]
    assert pp.peak_allocated_bytes == peaks[pp.peak_rank] == max(peaks) and len(set(peaks)) > 1
    # GPipe holds every micro-batch's forward on the first stage, 1F1B at most one per stage.
    first = {
        s: estimate_ranks(cell("bp-pp", schedule=s), "cpu").ranks[0].peak_allocated_bytes
        for s in ("gpipe", "1f1b")
    }
    assert first["gpipe"] > first["1f1b"]
    over = estimate_ranks(cell("bp-ddp", device_mem_bytes=4096), "cuda")
    assert over.status == "oom" and over.error.startswith("rank 0: estimated")
    assert over.peak_allocated_bytes == max(r.peak_allocated_bytes for r in over.ranks)


def test_estimate_sweep_with_devices(tmp_path):
    result = cli.invoke(
        app,
        [
            "sweep",
            "--estimate",
            "--method",
            "bp-fsdp",
            "--arch",
            ARCH,
            "--res",
            str(RES),
            "--batch",
            str(BATCH),
            "--devices",
            "4",
            "--isolation",
            "none",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    ranks = read_ranks(tmp_path)
    assert list(ranks["rank"]) == list(range(4))


@pytest.mark.gpu
def test_two_gpus_measure_each_rank_with_the_allocator():
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    for method in ("bp-ddp", "bp-fsdp", "bp-pp", "ff-pp"):
        result = run_multi_device(cell(method, warmup=2, steps=3), "cuda:0", "gpu", timeout_s=300)
        assert result.status == "ok", result.error
        assert {r.memory_source for r in result.ranks} == {"cuda_allocator"}
        assert result.peak_allocated_bytes == max(r.peak_allocated_bytes for r in result.ranks)
