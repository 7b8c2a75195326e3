"""Every built-in runner side by side in one run, as ratios to bp, next to the paper's ratios.

    python benchmarks/runners_side_by_side.py [--arch vgg8] [--res 32] [--batch 64] [--out DIR]

Writes a normal results folder (cells.csv, steps.csv, env.json) and prints imgs/s and peak memory
of each runner divided by bp's, next to the paper's VGG8 figures (32x32, batch 256, RTX 4060
Laptop; docs/measurement.md, "Paper reference figures") as ratios too, so the comparison is about
balance, not hardware.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from membench.config import expand_grid
from membench.execute.sweep import run_sweep
from membench.measure.devices import resolve_device
from membench.results import read_cells
from membench.runners import SINGLE_DEVICE_METHODS

# The one-device runners (those that span devices need --devices N: README, "Cells on several
# devices").
METHODS = list(SINGLE_DEVICE_METHODS)
# Paper Sec. 6.2 (docs/measurement.md, "Paper reference figures"), VGG8 at 32x32, batch 256:
# ratios to bp.
PAPER_RATIOS_VGG8_32 = {
    "ff-pipelined": {"imgs_per_s": 1726 / 1586, "peak": 1.535 / 1.589},
    "ff-naive": {"imgs_per_s": 0.70, "peak": 1.05},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg8")
    parser.add_argument("--res", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("results/side-by-side"))
    args = parser.parse_args()

    cells = expand_grid(
        method=METHODS,
        arch=args.arch,
        res=args.res,
        batch=args.batch,
        warmup=args.warmup,
        steps=args.steps,
    )
    run_sweep(cells, resolve_device(args.device), args.out)
    frame = read_cells(args.out)
    frame = (
        frame[frame["batch"] == args.batch]
        .drop_duplicates("method", keep="last")
        .set_index("method")
    )
    bp = frame.loc["bp"]
    print(
        f"{args.arch} res {args.res} batch {args.batch} on {bp['device']} ({bp['device_name']}), "
        f"memory source {bp['memory_source']}"
    )
    print(
        f"{'method':14s} {'imgs/s':>8s} {'x bp':>6s} {'peak GiB':>9s} {'x bp':>6s}   paper x bp "
        "(tput, mem)"
    )
    for method in METHODS:
        row = frame.loc[method]
        paper = PAPER_RATIOS_VGG8_32.get(method)
        paper_text = f"{paper['imgs_per_s']:.2f}, {paper['peak']:.2f}" if paper else ""
        print(
            f"{method:14s} {row['imgs_per_s']:8.1f} {row['imgs_per_s'] / bp['imgs_per_s']:6.2f} "
            f"{row['peak_allocated_bytes'] / 2**30:9.3f} "
            f"{row['peak_allocated_bytes'] / bp['peak_allocated_bytes']:6.2f}   {paper_text}"
        )


if __name__ == "__main__":
    main()
