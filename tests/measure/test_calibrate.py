"""The CPU's calibrated peak: bounded in time on any CPU, a real ceiling for every precision
(MFU never above 1), and empty with a reason where a step outran it. A CPU without native bf16
is emulated by patching what the calibration sees (its clock and its probes): this machine
may well have native bf16."""

from __future__ import annotations

import pytest
from conftest import TINY_ARCH, TINY_RES
from helpers import mfu_problems

from membench.execute.sweep import run_sweep
from membench.measure import calibrate
from membench.measure.calibrate import CONV_CALIBRATED, cpu_peak, probe_rate
from membench.measure.flops import apply_peak
from membench.measure.peaks import PeakSpec
from membench.results import read_rows
from membench.schema import Cell, CellResult

# What the AVX2 CPU did: one 1024^2 bf16 torch.mm in 3.2 s (0.67 GFLOP/s).
SLOW_BF16_FLOPS_PER_S = 2 * 1024**3 / 3.2


class SlowCpu:
    """A clock that runs ahead by what a slow probe would have taken: each call of a slowed
    (kind, precision) probe advances it by FLOPs / ``rate`` on top of the real call."""

    def __init__(self, monkeypatch, slow: dict[tuple[str, str], float]):
        self.offset, self.calls = 0.0, []
        real_clock, real_probes = calibrate.clock, dict(calibrate.PROBES)
        dtypes = {dtype: name for name, dtype in calibrate.CALIBRATION_DTYPES.items()}
        monkeypatch.setattr(calibrate, "clock", lambda: real_clock() + self.offset)
        for kind, (build, sizes, growth) in real_probes.items():

            def slowed(size, dtype, kind=kind, build=build):
                call, flops = build(size, dtype)
                rate = slow.get((kind, dtypes[dtype]))
                if rate is None:
                    return call, flops

                def slow_call():
                    call()
                    self.offset += flops / rate
                    self.calls.append((kind, size))

                return slow_call, flops

            monkeypatch.setitem(calibrate.PROBES, kind, (slowed, sizes, growth))


@pytest.fixture(autouse=True)
def _fresh_calibration():
    """Each test calibrates for itself, and leaves no emulated rate to later tests."""
    calibrate._rates.cache_clear()
    yield
    calibrate._rates.cache_clear()


def test_a_probe_is_bounded_by_its_budget_however_slow_the_arithmetic(monkeypatch):
    cpu = SlowCpu(monkeypatch, {("gemm", "bf16"): SLOW_BF16_FLOPS_PER_S})
    best, spent = probe_rate("gemm", "bf16", 0.5)
    assert spent <= 1.0 and 0 < best <= SLOW_BF16_FLOPS_PER_S
    assert cpu.calls[0] == ("gemm", calibrate.GEMM_SIZES[0])  # started small
    assert max(size for _, size in cpu.calls) < 1024  # 1024^2 would take 3.2 s: never tried
    # The check can fail: the old fixed list of sizes spends seconds on this CPU.
    monkeypatch.setitem(calibrate.PROBES, "gemm", (calibrate.PROBES["gemm"][0], (1024,), 8))
    assert probe_rate("gemm", "bf16", 0.5)[1] > 3.0


def test_a_reduced_precision_is_held_against_its_best_route(monkeypatch):
    fp32 = cpu_peak("fp32", seconds=0.2)
    assert fp32.precision == "fp32" and fp32.source in calibrate.CALIBRATED_SOURCES
    SlowCpu(
        monkeypatch,
        {("gemm", "bf16"): SLOW_BF16_FLOPS_PER_S, ("conv", "bf16"): SLOW_BF16_FLOPS_PER_S},
    )
    bf16 = cpu_peak("bf16", seconds=0.2)
    # no native bf16: computing in fp32 is faster, so the fp32 rate is the ceiling
    assert (bf16.tflops, bf16.source, bf16.precision) == (fp32.tflops, fp32.source, "fp32")
    assert bf16.tflops * 1e12 > SLOW_BF16_FLOPS_PER_S


def test_a_fast_convolution_sets_the_peak_where_the_gemm_is_slow(monkeypatch):
    SlowCpu(
        monkeypatch,
        {("gemm", "bf16"): SLOW_BF16_FLOPS_PER_S, ("gemm", "fp32"): SLOW_BF16_FLOPS_PER_S},
    )
    peak = cpu_peak("bf16", seconds=0.2)
    assert peak.source == CONV_CALIBRATED and peak.tflops * 1e12 > SLOW_BF16_FLOPS_PER_S


def test_no_probe_that_runs_means_no_peak_and_a_note(monkeypatch):
    def broken(size, dtype):
        raise RuntimeError("not implemented for this dtype")

    for kind, (_, sizes, growth) in list(calibrate.PROBES.items()):
        monkeypatch.setitem(calibrate.PROBES, kind, (broken, sizes, growth))
    peak = cpu_peak("fp16", seconds=0.1)
    assert peak.tflops is None and "--peak-tflops" in peak.note


def test_bf16_cells_on_a_cpu_with_slow_bf16_have_an_mfu_between_0_and_1(tmp_path, monkeypatch):
    slow = 1e7  # a bf16 GEMM at 10 MFLOP/s: a tiny cell's step runs faster than that
    SlowCpu(monkeypatch, {("gemm", "bf16"): slow})
    cells = [
        Cell(method, TINY_ARCH, TINY_RES, 4, precision="bf16", warmup=1, steps=2)
        for method in ("bp", "ff-pipelined")
    ]
    results = run_sweep(cells, "cpu", tmp_path, isolation="none")
    assert all(0 < r.mfu <= 1 for r in results)
    assert mfu_problems(read_rows(tmp_path / "cells.csv")[1]) == []
    # The check can fail: held against the bf16 GEMM alone (the old peak), MFU passes 100 %.
    assert all(r.achieved_tflops * 1e12 > slow for r in results)


def test_a_step_faster_than_its_peak_gets_no_mfu_and_says_why():
    cell = Cell("bp", TINY_ARCH, TINY_RES, 2)
    fast = CellResult(cell, "cpu", "x", step_ms=[1.0, 1.0], flops_per_step=10**10)  # 10 TFLOP/s
    apply_peak(fast, PeakSpec(2.0, "gemm-calibrated", "fp32"))
    assert fast.mfu is None and fast.peak_tflops is None
    assert fast.peak_source.startswith("none: this step ran at 10 TFLOP/s")
    assert mfu_problems([fast.row()]) == []  # empty, and explained
    # The check can fail: the same row held against that peak as is would claim 500 %.
    claimed = CellResult(
        cell,
        "cpu",
        "x",
        step_ms=[1.0, 1.0],
        flops_per_step=10**10,
        peak_tflops=2.0,
        peak_source="gemm-calibrated",
    )
    assert claimed.mfu == pytest.approx(5.0)
    assert mfu_problems([claimed.row()]) != []
    slow = CellResult(cell, "cpu", "x", step_ms=[1.0, 1.0], flops_per_step=10**9)
    apply_peak(slow, PeakSpec(2.0, "gemm-calibrated", "fp32"))
    assert slow.mfu == pytest.approx(0.5) and slow.peak_source == "gemm-calibrated"


def test_the_row_check_of_every_test_finds_a_missing_or_impossible_mfu():
    cell = Cell("bp", TINY_ARCH, TINY_RES, 2)
    good = CellResult(
        cell,
        "cpu",
        "x",
        step_ms=[1.0],
        flops_per_step=10**9,
        peak_tflops=2.0,
        peak_source="gemm-calibrated",
    ).row()
    assert mfu_problems([good]) == []
    assert mfu_problems([{**good, "mfu": ""}])  # a peak but no MFU
    assert mfu_problems([{**good, "mfu": "0"}])
    assert mfu_problems([{**good, "mfu": "1.2"}])
