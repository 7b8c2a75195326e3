"""The throughput gate's false-positive rate over identical reruns, and its power against a
1-thread slowdown, measured: a small grid swept again and again on this machine.

Usage: python benchmarks/gate_noise.py [--reruns 20] [--slow 10] [--rounds 3] [--out DIR]

One baseline sweep at the machine's thread count, ``--reruns`` identical sweeps (each compared
with ``membench compare``'s gate against the baseline: any cell flagged is a false positive),
and ``--slow`` sweeps of the same grid with one torch thread (each cell a real slowdown the
gate should flag). Beside the gate, the step-level test it replaced is applied to the same
data (the first round of each side, one process's steps as independent samples, Mann-Whitney
at the same alpha and threshold) so the two can be compared on identical measurements.
Prints one line per sweep and a summary; writes every folder and ``summary.json`` to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from membench.compare import (
    DEFAULT_ALPHA,
    DEFAULT_TPUT_DROP_PCT,
    compare_results,
    judge_between_runs,
    run_medians,
)
from membench.config import expand_grid
from membench.execute.sweep import run_sweep
from membench.results import read_cells, read_steps


def grid(rounds: int, steps: int) -> list:
    return expand_grid(
        method=["bp", "ff-pipelined"],
        arch="vgg-d4-w32",
        res=16,
        batch=16,
        warmup=2,
        steps=steps,
        rounds=rounds,
    )


def sweep(cells, folder: Path, threads: int) -> float:
    torch.set_num_threads(threads)  # the workers take the sweep's thread count
    start = time.monotonic()
    run_sweep(cells, "cpu", folder)
    return time.monotonic() - start


def step_level_flags(base: Path, new: Path, steps: int) -> int:
    """Cells the replaced gate would flag: first round of each side, Mann-Whitney on steps."""
    flagged = 0
    base_steps, new_steps = read_steps(base), read_steps(new)
    for row in read_cells(base).to_dict("records"):
        a = base_steps[base_steps["cell_id"] == row["cell_id"]]["step_ms"].to_numpy()[:steps]
        b = new_steps[new_steps["cell_id"] == row["cell_id"]]["step_ms"].to_numpy()[:steps]
        p = stats.mannwhitneyu(b, a, alternative="greater").pvalue
        drop = (1 - np.median(a) / np.median(b)) * 100
        flagged += bool(p < DEFAULT_ALPHA and drop > DEFAULT_TPUT_DROP_PCT)
    return flagged


def judged(base: Path, new: Path, steps: int) -> dict:
    comparison = compare_results(base, new)
    base_cells, new_cells = read_cells(base), read_cells(new)
    ratios, core = [], 0
    for row in comparison.rows:
        b = base_cells[base_cells["cell_id"] == row.cell_id].to_dict("records")[0]
        n = new_cells[new_cells["cell_id"] == row.cell_id].to_dict("records")[0]
        base_runs, new_runs = run_medians(read_steps(base), b), run_medians(read_steps(new), n)
        ratios.append(float(np.median(new_runs)) / float(np.median(base_runs)))
        # the test alone, as if the machine had been quiet (no abstention for its load)
        core += judge_between_runs(base_runs, new_runs, DEFAULT_TPUT_DROP_PCT).regressed
    return dict(
        cells=len(comparison.rows),
        flagged=len(comparison.regressions),
        not_judged=sum(r.timing.method == "not judged" for r in comparison.rows),
        test_alone_flagged=core,
        step_level_flagged=step_level_flags(base, new, steps),
        median_ratio=[round(r, 3) for r in ratios],
        p=[
            None if r.timing.p_value is None else round(r.timing.p_value, 5)
            for r in comparison.rows
        ],
        unstable=int((new_cells["stability"] == "unstable").sum()),
        cpu_others=[round(float(v), 2) for v in new_cells["cpu_others"]],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reruns", type=int, default=20)
    parser.add_argument("--slow", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("gate-noise"))
    args = parser.parse_args()
    cells = grid(args.rounds, args.steps)
    base = args.out / "baseline"
    seconds = sweep(cells, base, args.threads)
    print(
        f"baseline: {len(cells)} cells x {args.rounds} rounds, {args.threads} threads, "
        f"{seconds:.0f} s"
    )
    runs = {"rerun": [], "one-thread": []}
    for kind, count, threads in (
        ("rerun", args.reruns, args.threads),
        ("one-thread", args.slow, 1),
    ):
        for index in range(count):
            folder = args.out / f"{kind}-{index:02d}"
            seconds = sweep(cells, folder, threads)
            got = judged(base, folder, args.steps)
            runs[kind].append(got)
            print(
                f"{kind} {index:2d} ({threads} thread(s), {seconds:.0f} s): flagged "
                f"{got['flagged']}/{got['cells']}, not judged {got['not_judged']} (the test "
                f"alone: {got['test_alone_flagged']}, the step-level test: "
                f"{got['step_level_flagged']}), "
                f"median ratio {got['median_ratio']}, p {got['p']}, unstable {got['unstable']}, "
                f"others {got['cpu_others']}"
            )
    torch.set_num_threads(args.threads)
    reruns, slow = runs["rerun"], runs["one-thread"]
    summary = dict(
        grid=[c.cell_id for c in cells],
        rounds=args.rounds,
        steps=args.steps,
        threads=args.threads,
        load_average=os.getloadavg()[0],
        false_positive_cells=sum(r["flagged"] for r in reruns),
        rerun_cells=sum(r["cells"] for r in reruns),
        false_positive_runs=sum(r["flagged"] > 0 for r in reruns),
        reruns=len(reruns),
        not_judged_rerun_cells=sum(r["not_judged"] for r in reruns),
        test_alone_false_positive_cells=sum(r["test_alone_flagged"] for r in reruns),
        step_level_false_positive_cells=sum(r["step_level_flagged"] for r in reruns),
        detected_cells=sum(r["flagged"] for r in slow),
        slow_cells=sum(r["cells"] for r in slow),
        not_judged_slow_cells=sum(r["not_judged"] for r in slow),
        test_alone_detected_cells=sum(r["test_alone_flagged"] for r in slow),
        step_level_detected_cells=sum(r["step_level_flagged"] for r in slow),
        runs=runs,
    )
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(
        f"false positives: {summary['false_positive_cells']}/{summary['rerun_cells']} cells "
        f"({summary['false_positive_runs']}/{len(reruns)} reruns flagged anything; "
        f"{summary['not_judged_rerun_cells']} not judged for the machine's load); the test "
        f"alone: {summary['test_alone_false_positive_cells']}; the step-level test on the same "
        f"data: {summary['step_level_false_positive_cells']}"
    )
    print(
        f"power against one thread: {summary['detected_cells']}/{summary['slow_cells']} cells "
        f"flagged ({summary['not_judged_slow_cells']} not judged); the test alone: "
        f"{summary['test_alone_detected_cells']}; the step-level test: "
        f"{summary['step_level_detected_cells']}; load average now "
        f"{summary['load_average']:.1f}"
    )


if __name__ == "__main__":
    main()
