"""membench compare: matching, memory and timing gates, unmatched cells, bad input."""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import usage_error
from report_fixtures import MIB, sample_rows
from report_fixtures import cell_row as report_cell_row
from report_fixtures import write_results as write_report_results
from typer.testing import CliRunner

from membench.cli import app
from membench.compare import (
    CompareError,
    bootstrap_median_ratio_ci,
    can_reach_alpha,
    compare_results,
    judge_timing,
    mann_whitney_greater,
)
from membench.errors import InputError
from membench.schema import BREAKDOWN_COLUMNS, CELL_COLUMNS, STEP_COLUMNS, device_kind

METHODS = ["bp", "ff-pipelined", "bp-ckpt"]
PEAKS = {"bp": 1_000_000, "ff-pipelined": 800_000, "bp-ckpt": 600_000}
STEPS = 20
BASE_MS = 100.0


def cell_row(method: str, **overrides) -> dict:
    """A complete ok cells.csv row on the CPU with the tracker as memory source."""
    row = dict.fromkeys(CELL_COLUMNS, "")
    row.update(
        cell_id=f"{method}_vgg-d3-w8_r8_b4_k10",
        method=method,
        arch="vgg-d3-w8",
        res=8,
        batch=4,
        micro_batch="",
        classes=10,
        seed=0,
        device="cpu",
        device_name="Test CPU",
        status="ok",
        warmup=1,
        steps=STEPS,
        imgs_per_s=4 / BASE_MS * 1e3,
        peak_allocated_bytes=PEAKS[method],
        memory_source="tracker",
        parameters_bytes=1000,
        gradients_bytes=1000,
        optimizer_state_bytes=2000,
        activations_bytes=PEAKS[method] - 4000,
        torch_version="2.x",
    )
    row.update(overrides)
    return row


def noisy_steps(seed: int, scale: float = 1.0, n: int = STEPS, noise: float = 0.05) -> np.ndarray:
    """Per-step times with multiplicative noise and an occasional slow outlier, like a busy box."""
    rng = np.random.default_rng(seed)
    times = BASE_MS * scale * rng.lognormal(0.0, noise, n)
    times[rng.random(n) < 0.1] *= 1.5
    return times


def write_results(
    folder: Path, rows: list[dict], steps: dict[str, np.ndarray] | None = None
) -> Path:
    """Write a results folder: cells.csv and, if given, steps.csv keyed by cell_id."""
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=CELL_COLUMNS).to_csv(folder / "cells.csv", index=False)
    if steps is not None:
        long = [
            {"cell_id": cell_id, "device": "cpu", "step": i, "step_ms": ms}
            for cell_id, times in steps.items()
            for i, ms in enumerate(times)
        ]
        pd.DataFrame(long, columns=STEP_COLUMNS).to_csv(folder / "steps.csv", index=False)
    return folder


def run_pair(tmp_path, new_rows=None, new_scale=None, seeds=(1, 2), new_steps=True):
    """A baseline of METHODS and a NEW folder (same rows unless given), both with step times."""
    base_rows = [cell_row(m) for m in METHODS]
    base_steps = {r["cell_id"]: noisy_steps(seeds[0] + i) for i, r in enumerate(base_rows)}
    new_rows = new_rows if new_rows is not None else [cell_row(m) for m in METHODS]
    scale = new_scale or {}
    steps = {
        r["cell_id"]: noisy_steps(seeds[1] + 100 + i, scale.get(r["method"], 1.0))
        for i, r in enumerate(new_rows)
    }
    base = write_results(tmp_path / "base", base_rows, base_steps)
    new = write_results(tmp_path / "new", new_rows, steps if new_steps else None)
    return base, new


def cli(*args: str):
    return CliRunner().invoke(app, ["compare", *map(str, args)])


def test_identical_runs_pass(tmp_path):
    base, _ = run_pair(tmp_path)
    comparison = compare_results(base, base)
    assert comparison.passed and not comparison.regressions
    assert len(comparison.rows) == len(METHODS)
    result = cli(base, base / "cells.csv")
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output


def test_ten_percent_more_memory_fails(tmp_path):
    rows = [cell_row(m) for m in METHODS]
    rows[1]["peak_allocated_bytes"] = int(PEAKS["ff-pipelined"] * 1.10)
    base, new = run_pair(tmp_path, new_rows=rows)
    comparison = compare_results(base, new)
    assert not comparison.passed
    assert [r.cell_id for r in comparison.regressions] == [rows[1]["cell_id"]]
    assert comparison.regressions[0].mem_change_pct == pytest.approx(10.0)
    result = cli(base, new)
    assert result.exit_code == 1
    assert "REGRESSION ff-pipelined" in result.output
    # The threshold is the user's: 10 % more is allowed under --max-mem-increase 15.
    assert cli(base, new, "--max-mem-increase", "15").exit_code == 0


def test_tracker_gates_one_byte_but_allocator_allows_noise(tmp_path):
    rows = [cell_row(m) for m in METHODS]
    rows[0]["activations_bytes"] += 1
    base, new = run_pair(tmp_path, new_rows=rows)
    regressions = compare_results(base, new).regressions
    assert len(regressions) == 1 and "activations_bytes" in regressions[0].reasons[0]

    def allocator(peak_factor):
        return [
            cell_row(
                m,
                device="cuda:0",
                device_name="GPU X",
                memory_source="cuda_allocator",
                peak_allocated_bytes=int(PEAKS[m] * peak_factor),
            )
            for m in METHODS
        ]

    base = write_results(tmp_path / "gpu_base", allocator(1.0))
    assert compare_results(base, write_results(tmp_path / "gpu_small", allocator(1.005))).passed
    assert not compare_results(base, write_results(tmp_path / "gpu_big", allocator(1.02))).passed


def test_timing_noise_does_not_fail(tmp_path):
    # Independent draws of the same distribution, many seed pairs: none may fail the gate.
    for seed in range(10):
        base, new = run_pair(tmp_path / str(seed), seeds=(seed, seed + 1000))
        comparison = compare_results(base, new)
        assert comparison.passed, [r.reasons for r in comparison.regressions]
        assert all(r.timing.method == "mann-whitney" for r in comparison.rows)


@pytest.mark.parametrize("slowdown", [1.15, 1.20])
def test_clear_slowdown_fails(tmp_path, slowdown):
    base, new = run_pair(tmp_path, new_scale={"bp-ckpt": slowdown})
    comparison = compare_results(base, new)
    assert [r.cell_id.split("_")[0] for r in comparison.regressions] == ["bp-ckpt"]
    timing = comparison.regressions[0].timing
    assert timing.p_value < 0.01 and timing.tput_change_pct < -10
    assert timing.ratio_ci[0] > 1.0
    result = cli(base, new)
    assert result.exit_code == 1 and "throughput" in result.output
    # Gating is off with --ignore-timing, and a looser threshold lets it through.
    assert cli(base, new, "--ignore-timing").exit_code == 0
    assert cli(base, new, "--max-tput-drop", "30").exit_code == 0


def test_significant_but_small_slowdown_passes(tmp_path):
    base, new = run_pair(tmp_path, new_scale={"bp": 1.05})
    row = next(r for r in compare_results(base, new).rows if r.cell_id.startswith("bp_"))
    assert not row.regressed and row.timing.tput_change_pct > -10


def test_speedup_never_fails(tmp_path):
    base, new = run_pair(tmp_path, new_scale={m: 0.7 for m in METHODS})
    assert compare_results(base, new).passed


def test_ok_to_oom_is_a_regression(tmp_path):
    rows = [cell_row(m) for m in METHODS]
    rows[0].update(
        status="oom",
        error="OutOfMemoryError: budget",
        memory_source="",
        peak_allocated_bytes="",
        imgs_per_s="",
    )
    base, new = run_pair(tmp_path, new_rows=rows)
    comparison = compare_results(base, new)
    assert not comparison.only_in_baseline and not comparison.only_in_new
    assert [r.status_new for r in comparison.regressions] == ["oom"]


def test_missing_and_extra_cells_are_listed(tmp_path):
    rows = [cell_row(m) for m in METHODS[:2]] + [
        cell_row("bp", batch=8, cell_id="bp_vgg-d3-w8_r8_b8_k10")
    ]
    base, new = run_pair(tmp_path, new_rows=rows)
    comparison = compare_results(base, new)
    assert [c["method"] for c in comparison.only_in_baseline] == ["bp-ckpt"]
    assert [c["batch"] for c in comparison.only_in_new] == [8]
    assert not comparison.regressions and not comparison.passed
    result = cli(base, new)
    assert result.exit_code == 1
    assert (
        "MISSING in new: bp-ckpt" in result.output
        and "only in new: bp_vgg-d3-w8_r8_b8" in result.output
    )
    assert cli(base, new, "--allow-missing").exit_code == 0
    # Cells only in NEW are new coverage, not a failure.
    assert compare_results(new, base, allow_missing=True).passed


def test_gpu_models_do_not_match_but_cpu_models_do(tmp_path):
    def on(device, name, source):
        return [cell_row(m, device=device, device_name=name, memory_source=source) for m in METHODS]

    h200 = write_results(tmp_path / "h200", on("cuda:0", "NVIDIA H200", "cuda_allocator"))
    laptop = write_results(tmp_path / "laptop", on("cuda:0", "RTX 4060 Laptop", "cuda_allocator"))
    comparison = compare_results(h200, laptop)
    assert not comparison.rows and len(comparison.only_in_baseline) == len(METHODS)
    assert any("no cell matched" in note for note in comparison.notes)

    base, _ = run_pair(tmp_path)
    other_cpu = write_results(
        tmp_path / "other_cpu",
        on("cpu", "Other CPU", "tracker"),
        {cell_row(m)["cell_id"]: noisy_steps(7, 2.0) for m in METHODS},
    )
    comparison = compare_results(base, other_cpu)
    assert comparison.passed and len(comparison.rows) == len(METHODS)
    assert all(r.timing.method == "not compared" for r in comparison.rows)


def test_without_steps_falls_back_to_imgs_per_s(tmp_path):
    rows = [cell_row(m) for m in METHODS]
    rows[2]["imgs_per_s"] *= 0.8
    base, new = run_pair(tmp_path, new_rows=rows, new_steps=False)
    comparison = compare_results(base, new)
    assert [r.timing.method for r in comparison.rows] == ["imgs_per_s"] * len(METHODS)
    assert [r.cell_id.split("_")[0] for r in comparison.regressions] == ["bp-ckpt"]
    result = cli(base, new)
    assert result.exit_code == 1 and "without a noise test" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["{tmp}/nowhere", "{base}"],
        ["{base}", "{tmp}/nowhere/cells.csv"],
        ["{base}", "{bad}"],
        ["{base}", "{base}", "--max-mem-increase", "-1"],
        ["{base}", "{base}", "--max-tput-drop", "-5"],
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args):
    base, _ = run_pair(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cells.csv").write_text(
        "cell_id,method,arch,res,batch,device,status\nx,bp,vgg8,32,4,cpu,ok\n"
    )
    usage_error(cli(*[a.format(tmp=tmp_path, base=base, bad=bad) for a in args]))


def test_library_rejects_bad_thresholds(tmp_path):
    base, _ = run_pair(tmp_path)
    with pytest.raises(CompareError):
        compare_results(base, base, max_mem_increase_pct=-0.1)


def test_mann_whitney_exact_and_normal():
    # Exact: only 1 of C(6,3) = 20 splits puts all of NEW above the baseline.
    assert mann_whitney_greater([1, 2, 3], [4, 5, 6]) == pytest.approx(1 / 20)
    assert mann_whitney_greater([4, 5, 6], [1, 2, 3]) == pytest.approx(1.0)
    # Normal approximation (too many splits for the exact test), with ties.
    rng = np.random.default_rng(0)
    same = np.round(rng.normal(100, 5, 40))
    assert 0.05 < mann_whitney_greater(same[:20], same[20:]) < 0.95
    assert mann_whitney_greater(same[:20], same[20:] + 20) < 1e-4
    assert mann_whitney_greater(np.full(20, 3.0), np.full(20, 3.0)) == 1.0


def test_bootstrap_ci_brackets_the_true_ratio():
    low, high = bootstrap_median_ratio_ci(noisy_steps(1, n=40), noisy_steps(2, 1.2, n=40))
    assert low < 1.2 < high and low > 1.0
    verdict = judge_timing(noisy_steps(1), noisy_steps(2, 1.2), max_tput_drop_pct=10)
    assert verdict.regressed


def brute_force_p(baseline, new) -> float:
    """One-sided exact p of the rank-sum test by enumerating every split of the pooled mid-ranks."""
    pooled = list(new) + list(baseline)
    ranks = [sum(v < x for v in pooled) + (sum(v == x for v in pooled) + 1) / 2 for x in pooled]
    observed = sum(ranks[: len(new)])
    sums = [sum(ranks[i] for i in idx) for idx in combinations(range(len(pooled)), len(new))]
    return sum(total >= observed - 1e-9 for total in sums) / len(sums)


def test_mann_whitney_exact_p_values():
    # No ties: the single most extreme of C(6,3) = 20 splits.
    assert mann_whitney_greater([1, 2, 3], [4, 5, 6]) == pytest.approx(1 / 20, rel=1e-12)
    assert mann_whitney_greater([1, 2, 3, 4], [5, 6, 7, 8]) == pytest.approx(1 / 70, rel=1e-12)
    # Ties: every split enumerated, as the brute force does (the untied exact distribution would
    # give 0.1 and 0.0411 here, the normal approximation 0.079 and 0.029).
    for baseline, new in (([1, 2, 2], [2, 3, 3]), ([1, 1, 2, 3, 3], [2, 3, 3, 4, 4, 4])):
        expected = brute_force_p(baseline, new)
        assert mann_whitney_greater(baseline, new) == pytest.approx(expected, rel=1e-12)
    assert brute_force_p([1, 2, 2], [2, 3, 3]) == pytest.approx(3 / 20)
    # Untied noise at 8 + 8 (12 870 splits, still exact).
    rng = np.random.default_rng(3)
    baseline, new = rng.normal(100, 5, 8), rng.normal(103, 5, 8)
    assert mann_whitney_greater(baseline, new) == pytest.approx(
        brute_force_p(baseline, new), rel=1e-12
    )


def test_mann_whitney_normal_approximation_beyond_the_exact_limit():
    # 20 + 20 steps have C(40, 20) splits: normal approximation with tie and continuity corrections.
    rng = np.random.default_rng(4)
    baseline, new = np.round(rng.normal(100, 5, 20)), np.round(rng.normal(103, 5, 20))
    pooled = np.concatenate([new, baseline])
    ranks = np.array([np.sum(pooled < x) + (np.sum(pooled == x) + 1) / 2 for x in pooled])
    u = ranks[:20].sum() - 20 * 21 / 2
    ties = np.unique(pooled, return_counts=True)[1]
    sigma = math.sqrt(20 * 20 / 12 * (41 - np.sum(ties**3 - ties) / (40 * 39)))
    expected = 0.5 * math.erfc((u - 200 - 0.5) / sigma / math.sqrt(2))
    assert mann_whitney_greater(baseline, new) == pytest.approx(expected, rel=1e-9)


def test_bootstrap_ci_contains_the_observed_ratio_and_is_reproducible():
    baseline, new = noisy_steps(5, n=30), noisy_steps(6, 1.1, n=25)
    observed = np.median(new) / np.median(baseline)
    low, high = bootstrap_median_ratio_ci(baseline, new)
    assert low < observed < high
    assert bootstrap_median_ratio_ci(baseline, new) == (low, high)
    assert bootstrap_median_ratio_ci(baseline, new, seed=0) == (low, high)
    assert bootstrap_median_ratio_ci(baseline, new, seed=1) != (low, high)
    wider = bootstrap_median_ratio_ci(baseline, new, confidence=0.99)
    assert wider[0] <= low and wider[1] >= high


def test_older_file_without_optional_columns_compares(tmp_path):
    # An earlier membench wrote no breakdown, budget or torch_version columns: they read as empty,
    # so nothing is gated on them and no "torch differs" note appears.
    base, new = run_pair(tmp_path)
    older = [
        c
        for c in CELL_COLUMNS
        if c not in [*BREAKDOWN_COLUMNS, "device_mem_bytes", "torch_version"]
    ]
    cells = pd.read_csv(base / "cells.csv", dtype=str, keep_default_na=False)
    cells[older].to_csv(base / "cells.csv", index=False)
    comparison = compare_results(base, new)
    assert comparison.passed and len(comparison.rows) == len(METHODS)
    assert not any("torch" in note for note in comparison.notes)
    assert {r.timing.method for r in comparison.rows} == {"mann-whitney"}


def test_compare_error_is_input_error(tmp_path):
    assert issubclass(CompareError, InputError)
    with pytest.raises(InputError, match="does not exist"):
        compare_results(tmp_path / "nowhere", tmp_path / "nowhere")


def one_line_error(*args) -> str:
    return usage_error(cli(*args))


@pytest.mark.parametrize("n_steps", [3, 4])
def test_too_few_steps_for_alpha_fall_back_to_imgs_per_s(tmp_path, n_steps):
    # 3 + 3 steps can never give p < 0.01 (the smallest exact p is 1/20; 1/70 for 4 + 4), so a
    # 30 % slowdown must be judged on imgs_per_s rather than pass as "within noise".
    rows = [cell_row(m, steps=n_steps) for m in METHODS]
    new_rows = [cell_row(m, steps=n_steps) for m in METHODS]
    new_rows[0]["imgs_per_s"] /= 1.3
    base = write_results(
        tmp_path / "base",
        rows,
        {r["cell_id"]: noisy_steps(i, n=n_steps) for i, r in enumerate(rows)},
    )
    new = write_results(
        tmp_path / "new",
        new_rows,
        {
            r["cell_id"]: noisy_steps(50 + i, 1.3 if i == 0 else 1.0, n=n_steps)
            for i, r in enumerate(new_rows)
        },
    )
    comparison = compare_results(base, new)
    assert [r.cell_id.split("_")[0] for r in comparison.regressions] == ["bp"]
    timing = comparison.regressions[0].timing
    assert timing.method == "imgs_per_s" and timing.tput_change_pct == pytest.approx(
        -100 * 0.3 / 1.3
    )
    assert (timing.n_baseline, timing.n_new) == (n_steps, n_steps)
    result = cli(base, new)
    assert result.exit_code == 1 and "without a noise test" in result.output
    # A looser alpha that 1/C(2n, n) can reach brings the rank test back.
    loose = compare_results(base, new, alpha=0.1)
    assert {r.timing.method for r in loose.rows} == {"mann-whitney"}


def test_can_reach_alpha():
    assert not can_reach_alpha(3, 3, 0.01) and not can_reach_alpha(4, 4, 0.01)
    assert can_reach_alpha(5, 5, 0.01) and can_reach_alpha(3, 3, 0.1)
    assert can_reach_alpha(3, 20, 0.01) and not can_reach_alpha(0, 20, 0.5)


def test_two_runs_of_one_cell_on_one_device_are_refused(tmp_path):
    # steps.csv is keyed by (cell_id, device): a second seed would pool its step times.
    rows = [cell_row(m) for m in METHODS] + [cell_row("bp", seed=1)]
    base, _ = run_pair(tmp_path)
    twice = write_results(tmp_path / "twice", rows, {rows[0]["cell_id"]: noisy_steps(1, n=40)})
    line = one_line_error(base, twice)
    assert "more than one row" in line and rows[0]["cell_id"] in line
    with pytest.raises(CompareError, match="more than one row"):
        compare_results(twice, base)


@pytest.mark.parametrize(
    "column", ["peak_allocated_bytes", "imgs_per_s", "activations_bytes", "batch"]
)
def test_non_numeric_cell_value_is_bad_input(tmp_path, column):
    base, new = run_pair(tmp_path)
    cells = pd.read_csv(new / "cells.csv", dtype=str, keep_default_na=False)
    cells.loc[1, column] = "12 MB"
    cells.to_csv(new / "cells.csv", index=False)
    line = one_line_error(base, new)
    assert column in line and "'12 MB'" in line and "not a number" in line
    with pytest.raises(CompareError):
        compare_results(new, base)


def test_non_numeric_step_time_is_bad_input(tmp_path):
    base, new = run_pair(tmp_path)
    steps = pd.read_csv(new / "steps.csv", dtype=str)
    steps.loc[3, "step_ms"] = "slow"
    steps.to_csv(new / "steps.csv", index=False)
    line = one_line_error(base, new)
    assert "step_ms" in line and "'slow'" in line


def test_estimate_rows_compare_without_errors(tmp_path):
    # As membench sweep --estimate writes them: device "<kind> (estimate)", device_name
    # "estimate", status "estimated" or (over the budget) "oom" with the predicted peak.
    estimate = {"device": "cuda (estimate)", "device_name": "estimate", "memory_source": "estimate"}
    rows = sample_rows() + [
        report_cell_row("bp", 32, status="estimated", peak_bytes=9 * MIB, **estimate),
        report_cell_row(
            "bp",
            64,
            status="oom",
            peak_bytes=90 * MIB,
            device_mem_bytes=64 * MIB,
            error="estimated 0.088 GiB > budget 0.062 GiB",
            **estimate,
        ),
    ]
    base = write_report_results(tmp_path / "base", rows).parent
    comparison = compare_results(base, base)
    assert comparison.passed and len(comparison.rows) == len(rows)
    assert not comparison.only_in_baseline and not comparison.only_in_new
    result = cli(base, base)
    assert result.exit_code == 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)

    bigger = [dict(r) for r in rows]
    bigger[-2]["peak_allocated_bytes"] = 10 * MIB  # the cuda estimate of bp b32 grows
    bigger[-1]["status"] = "estimated"  # an estimate that was over its budget now fits
    new = write_report_results(tmp_path / "new", bigger).parent
    comparison = compare_results(base, new)
    assert [(r.device, r.cell_id) for r in comparison.regressions] == [
        ("cuda (estimate)", rows[-2]["cell_id"])
    ]
    assert cli(base, new).exit_code == 1
    # An estimate never stands in for a measurement of the same cell, nor the other way round.
    measured = [r for r in rows if not r["device"].endswith("(estimate)")]
    comparison = compare_results(
        base, write_report_results(tmp_path / "measured", measured).parent, allow_missing=True
    )
    assert comparison.passed
    assert {c["device"] for c in comparison.only_in_baseline} == {
        "cpu (estimate)",
        "cuda (estimate)",
    }


def test_device_kind():
    assert [
        device_kind(d) for d in ("cpu", "cuda:0", "cuda", "cuda (estimate)", "cpu (estimate)")
    ] == ["cpu", "cuda", "cuda", "cuda", "cpu"]
