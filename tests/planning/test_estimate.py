"""Planning without a GPU: fake-tensor estimates agree with the CPU tracker, allocate nothing,
carry CUDA's rounding, and ``fit`` finds the largest batch under a budget."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_ARCH, TINY_RES
from helpers import usage_error
from torch._subclasses.fake_tensor import FakeTensorMode
from typer.testing import CliRunner

from membench.cli import app
from membench.config import ConfigError
from membench.measure.devices import CpuDevice, host_peak_rss_bytes, reset_host_peak_rss
from membench.measure.memtrack import TensorMemoryTracker
from membench.measure.protocol import run_cell
from membench.planning.estimate import EstimateDevice, estimate_cell
from membench.planning.fit import fit_batch
from membench.runners import SINGLE_DEVICE_METHODS
from membench.schema import Cell


class UnroundedEstimate(EstimateDevice):
    """An estimate without the CUDA allocator's rounding (its CUDA kernels kept)."""

    def memory_tracker(self, cell):
        return TensorMemoryTracker()


# Every single-device built-in method (the methods on several devices: tests/multidevice).
BUILTIN_METHODS = SINGLE_DEVICE_METHODS
SMALL_CELLS = ((TINY_ARCH, TINY_RES, 4), ("vgg-d3-w16", 16, 2))


def small_cell(method, arch, res, batch, micro_batch=None, **options):
    if method == "bp-accum" and micro_batch is None:
        micro_batch = batch // 2
    return Cell(method, arch, res, batch, micro_batch, warmup=1, steps=2, **options)


AGREEMENT_CELLS = [small_cell(m, *shape) for m in BUILTIN_METHODS for shape in SMALL_CELLS]
AGREEMENT_CELLS.append(small_cell("bp-accum", "vgg-d3-w16", 16, 8, micro_batch=2))


@pytest.mark.parametrize("cell", AGREEMENT_CELLS, ids=lambda c: c.cell_id)
def test_cpu_estimate_agrees_with_the_tracked_measurement(cell):
    estimate = estimate_cell(cell, "cpu")
    measured = run_cell(cell, CpuDevice())
    assert measured.status == "ok" and measured.memory_source == "tracker"
    assert estimate.status == "estimated", estimate.error
    # The issue asks for 2%; both count the same dispatched storages, so they agree to the byte,
    # and the test holds them to that so any drift between the two paths shows at once.
    assert estimate.peak_allocated_bytes == measured.peak_allocated_bytes
    assert estimate.breakdown.as_columns() == measured.breakdown.as_columns()


def test_estimated_row_is_kept_apart_from_measured_rows():
    row = estimate_cell(small_cell("bp", TINY_ARCH, TINY_RES, 4), "cuda").row()
    assert row["status"] == "estimated"
    assert row["memory_source"] == "estimate"
    assert row["device"] == "cuda (estimate)" and row["device_name"] == "estimate"
    assert row["step_ms_median"] is None and row["imgs_per_s"] is None
    assert row["peak_allocated_bytes"] == sum(
        row[c]
        for c in (
            "parameters_bytes",
            "gradients_bytes",
            "optimizer_state_bytes",
            "activations_bytes",
        )
    )


def test_fake_storages_are_freed_in_the_tracker():
    tracker = TensorMemoryTracker()
    with FakeTensorMode(), tracker:
        x = torch.empty(1000)
        y = x * 2
        assert tracker.current_bytes == 8000
        del x, y
        assert tracker.current_bytes == 0
    assert tracker.peak_bytes == 8000


def test_a_huge_cell_is_estimated_without_allocating_it():
    cell = Cell("bp", "vgg11", 224, 512, classes=100)
    reset_host_peak_rss()
    rss_before = _vm_rss_bytes()
    result = estimate_cell(cell, "cuda")
    rss_growth = host_peak_rss_bytes() - rss_before
    assert result.status == "estimated", result.error
    assert result.peak_allocated_bytes > 10 * 2**30
    assert rss_growth < result.peak_allocated_bytes / 20


def test_cuda_estimate_carries_the_allocator_rounding():
    cell = small_cell("ff-pipelined", TINY_ARCH, TINY_RES, 3)  # odd batch: sizes not 512-aligned
    cuda = estimate_cell(cell, "cuda")
    unrounded = run_cell(cell, UnroundedEstimate("cuda")).peak_allocated_bytes
    assert cuda.peak_allocated_bytes % 512 == 0
    assert all(v % 512 == 0 for v in cuda.breakdown.as_columns().values())
    assert unrounded % 512 != 0
    assert cuda.peak_allocated_bytes >= unrounded


def test_cuda_estimate_models_the_fused_dropout_mask():
    # At this size rounding is small next to the dropout saving: CUDA saves a 1-byte mask where
    # the CPU saves 4-byte noise, so the CUDA estimate comes out below the CPU one.
    cell = small_cell("bp", "vgg-d3-w16", 16, 8)
    cuda_kernels = run_cell(cell, UnroundedEstimate("cuda")).peak_allocated_bytes
    cpu_kernels = run_cell(cell, EstimateDevice("cpu")).peak_allocated_bytes
    assert cuda_kernels < cpu_kernels


def test_budget_exceeded_estimate_says_so():
    cell = small_cell("bp", TINY_ARCH, TINY_RES, 4)
    full = estimate_cell(cell, "cpu").peak_allocated_bytes
    over = estimate_cell(small_cell("bp", TINY_ARCH, TINY_RES, 4, device_mem_bytes=full - 1), "cpu")
    assert over.status == "oom" and over.memory_source == "estimate"
    assert over.error.startswith("estimated ") and "> budget" in over.error
    assert over.peak_allocated_bytes == full
    fits = estimate_cell(small_cell("bp", TINY_ARCH, TINY_RES, 4, device_mem_bytes=full), "cpu")
    assert fits.status == "estimated"


def test_unknown_device_kind_is_refused():
    with pytest.raises(ValueError, match="valid: cuda, cpu"):
        estimate_cell(small_cell("bp", TINY_ARCH, TINY_RES, 4), "tpu")


def _estimate(method, batch, micro_batch=None):
    return estimate_cell(
        Cell(method, TINY_ARCH, TINY_RES, batch, micro_batch), "cpu"
    ).peak_allocated_bytes


def test_fit_returns_the_largest_batch_under_the_budget():
    budget = _estimate("bp", 13) + 1
    result = fit_batch("bp", TINY_ARCH, TINY_RES, budget, device_kind="cpu", max_batch=256)
    assert result.batch >= 13 and result.next_batch == result.batch + 1
    assert result.peak_bytes == _estimate("bp", result.batch) <= budget
    assert result.next_peak_bytes == _estimate("bp", result.batch + 1) > budget
    assert not result.capped


def test_fit_for_bp_accum_steps_over_multiples_of_the_micro_batch():
    budget = _estimate("bp-accum", 24, 4) + 1
    result = fit_batch(
        "bp-accum", TINY_ARCH, TINY_RES, budget, device_kind="cpu", max_batch=512, micro_batch=4
    )
    assert result.micro_batch == 4 and result.batch % 4 == 0
    assert result.next_batch == result.batch + 4
    assert (
        _estimate("bp-accum", result.batch, 4)
        <= budget
        < _estimate("bp-accum", result.next_batch, 4)
    )


def test_fit_starts_at_two_when_batchnorm_refuses_one_sample_and_caps_at_max_batch():
    result = fit_batch("ff-pipelined", TINY_ARCH, TINY_RES, 2**40, device_kind="cpu", max_batch=8)
    assert result.batch == 8 and result.capped and result.next_batch is None


def test_fit_reports_none_when_nothing_fits():
    result = fit_batch("bp", TINY_ARCH, TINY_RES, 1024, device_kind="cpu", max_batch=8)
    assert result.batch is None and result.next_batch == 1 and result.next_peak_bytes > 1024


def test_fit_rejects_bad_input():
    with pytest.raises(ConfigError, match="micro-batch applies only"):
        fit_batch("bp", TINY_ARCH, TINY_RES, 2**30, micro_batch=4)
    with pytest.raises(ConfigError, match="unknown method"):
        fit_batch("nope", TINY_ARCH, TINY_RES, 2**30)


cli = CliRunner()


def test_fit_cli_prints_a_line_per_method():
    result = cli.invoke(
        app,
        [
            "fit",
            "--arch",
            TINY_ARCH,
            "--res",
            str(TINY_RES),
            "--device-mem",
            "256KiB",
            "--method",
            "bp,bp-accum",
            "--device-kind",
            "cpu",
            "--max-batch",
            "32",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("bp ") for line in lines)
    assert any(line.startswith("bp-accum") and "micro" in line for line in lines)


@pytest.mark.parametrize(
    "args",
    [
        ["--arch", "nope", "--device-mem", "8GiB"],
        ["--device-mem", "8XB"],
        ["--device-mem", "8GiB", "--method", "nope"],
        ["--device-mem", "8GiB", "--method", "bp", "--micro-batch", "4"],
        ["--device-mem", "8GiB", "--method", "bp", "--max-batch", "0"],
        ["--device-mem", "8GiB", "--res", "4"],
        ["--device-mem", "8GiB", "--device-kind", "tpu"],
        ["--arch", "tv:resnet18", "--device-mem", "8GiB", "--method", "ff-naive"],
    ],
)
def test_fit_cli_bad_input_exits_2_with_one_line(args):
    result = cli.invoke(app, ["fit", *args])
    usage_error(result)
    assert "largest batch" not in result.output  # refused before any estimate


def _vm_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _collector_frees(cell, monkeypatch) -> list[int]:
    """Bytes of tracked storages that only the garbage collector freed, step by step: each
    tracked step runs with the collector off, then a full collection; what it frees was held
    in a reference cycle, and so would die whenever the collector happens to run."""
    import gc

    from membench.measure.protocol import PreparedCell

    freed, original_tracked, original_step = [], PreparedCell.tracked, PreparedCell.step

    def tracked(self, tracker, *args, **kwargs):
        def step():
            enabled = gc.isenabled()
            gc.disable()
            try:
                original_step(self)
                before = tracker.current_bytes
                gc.collect()
                freed.append(before - tracker.current_bytes)
            finally:
                if enabled:
                    gc.enable()

        monkeypatch.setattr(self, "step", step)
        return original_tracked(self, tracker, *args, **kwargs)

    monkeypatch.setattr(PreparedCell, "tracked", tracked)
    result = estimate_cell(cell, "cuda")
    monkeypatch.setattr(PreparedCell, "tracked", original_tracked)
    assert result.status == "estimated", result.error
    return freed


@pytest.mark.parametrize(
    "method",
    ["bp", "bp-accum", "bp-ckpt", "bp-sac", "bp-offload", "bp-deepsup", "ff-naive", "ff-pipelined"],
)
def test_no_tracked_storage_waits_for_the_garbage_collector(method, monkeypatch):
    """An estimate runs no full collection per cell (EstimateDevice.collect_garbage): it does not
    depend on when the collector runs, because every storage a tracked step frees dies by its
    last reference, not in a cycle."""
    splits = method in ("bp-accum", "bp-ckpt", "bp-sac", "bp-offload", "ff-pipelined")
    cell = small_cell(method, "vgg-d3-w16", 16, 4, micro_batch=2 if splits else None)
    assert set(_collector_frees(cell, monkeypatch)) == {0}


def test_a_storage_held_in_a_cycle_is_seen_waiting_for_the_collector(monkeypatch):
    """The check above can fail: a step that leaves an activation in a reference cycle."""
    from membench.runners.bp import BPRunner

    original = BPRunner.step

    def step(self, images, labels):
        loss = original(self, images, labels)
        cycle = {"activation": images * 2}
        cycle["self"] = cycle
        return loss

    monkeypatch.setattr(BPRunner, "step", step)
    assert max(_collector_frees(small_cell("bp", TINY_ARCH, TINY_RES, 4), monkeypatch)) > 0
