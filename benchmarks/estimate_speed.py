"""Time ``estimate_cell`` over the paper's App. D.7 grid and print seconds per cell and in total.

The grid: VGG11 at 224x224, K = 100, batches 32, 64, 96, 128; methods bp, bp-accum, bp-ckpt,
ff-naive, ff-pipelined. bp-accum uses the paper's micro-batch 64 where it divides the batch and
the sweep's default (batch/2) where it does not (batches 32 and 96).

    .venv/bin/python benchmarks/estimate_speed.py [--device-kind cuda|cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from membench.planning.estimate import estimate_cell
from membench.schema import Cell

ARCH, RES, CLASSES = "vgg11", 224, 100
BATCHES = (32, 64, 96, 128)
METHODS = ("bp", "bp-accum", "bp-ckpt", "ff-naive", "ff-pipelined")
PAPER_MICRO_BATCH = 64


def paper_d7_cells() -> list[Cell]:
    """The App. D.7 grid as cells (bp-accum micro-batch 64 where it divides, else batch/2)."""
    cells = []
    for batch in BATCHES:
        for method in METHODS:
            micro = None
            if method == "bp-accum":
                micro = PAPER_MICRO_BATCH if batch % PAPER_MICRO_BATCH == 0 else batch // 2
            cells.append(Cell(method, ARCH, RES, batch, micro, CLASSES))
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device-kind", default="cuda", choices=("cuda", "cpu"))
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device kind "
        f"{args.device_kind}"
    )
    total_start = time.perf_counter()
    for cell in paper_d7_cells():
        start = time.perf_counter()
        result = estimate_cell(cell, args.device_kind)
        seconds = time.perf_counter() - start
        peak = result.peak_allocated_bytes
        figure = f"{peak / 2**30:7.3f} GiB" if peak is not None else result.error
        print(f"{cell.cell_id:40s} {seconds:6.2f} s  {result.status:9s} {figure}")
    total = time.perf_counter() - total_start
    count = len(paper_d7_cells())
    print(f"total {total:.1f} s for {count} cells ({total / count:.2f} s per cell)")


if __name__ == "__main__":
    main()
