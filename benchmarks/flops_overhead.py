"""What counting FLOPs adds to a cell: the same cell measured with and without the count,
interleaved in one process, so the ratio is side by side. The count is one eager step of the
cell's runner on fake tensors under ``FlopCounterMode`` (protocol.count_step_flops), before the
cell's first real step, so it reaches no measured step; this measures what it adds to the wall
time of a measured cell and of an estimate.

    python benchmarks/flops_overhead.py [--profile quick] [--estimate-profile paper-d7]
"""

from __future__ import annotations

import argparse
import time

import torch

from membench.config import build_config
from membench.measure.devices import CpuDevice
from membench.measure.protocol import run_cell
from membench.planning.estimate import estimate_cell


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def side_by_side(cells, measure, label: str, repeats: int) -> None:
    print(f"{label}: {len(cells)} cells, {torch.get_num_threads()} thread(s), best of {repeats}")
    print(f"{'cell':42s}{'without s':>10s}{'with s':>10s}{'added':>8s}")
    total_without = total_with = 0.0
    for cell in cells:
        without, with_count = [], []
        for _ in range(repeats):  # interleaved, so drift on a shared machine hits both sides
            without.append(timed(lambda cell=cell: measure(cell, False)))
            with_count.append(timed(lambda cell=cell: measure(cell, True)))
        a, b = min(without), min(with_count)
        total_without, total_with = total_without + a, total_with + b
        print(f"{cell.cell_id:42s}{a:10.3f}{b:10.3f}{b / a - 1:8.1%}")
    print(
        f"{'all':42s}{total_without:10.3f}{total_with:10.3f}{total_with / total_without - 1:8.1%}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--estimate-profile", default="paper-d7")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    device = CpuDevice()
    measured = build_config([args.profile]).cells
    run_cell(measured[0], device)  # pay torch's lazy first-use imports before timing anything
    side_by_side(
        measured,
        lambda cell, count: run_cell(cell, device, count_flops=count),
        f"{args.profile} (run_cell)",
        args.repeats,
    )
    estimated = build_config([args.estimate_profile]).cells
    side_by_side(
        estimated,
        lambda cell, count: estimate_cell(cell, "cuda", count_flops=count),
        f"{args.estimate_profile} (estimate_cell, cuda)",
        args.repeats,
    )


if __name__ == "__main__":
    main()
