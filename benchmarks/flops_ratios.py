"""FLOPs per training step of every built-in method, as ratios to bp, at the paper's two
operating points (VGG8 at 32x32, batch 256, K=10; VGG11 at 224x224, batch 128, K=100), beside
the paper's measured throughput ratios (docs/measurement.md, "Paper reference figures").

    python benchmarks/flops_ratios.py

FLOPs are counted on fake tensors (membench.measure.protocol.count_step_flops): no GPU needed,
seconds in
all. bp's FLOPs / a method's FLOPs is the throughput ratio that method would reach if every
step were bound by compute alone.
"""

from __future__ import annotations

from membench.config import expand_grid
from membench.measure.protocol import count_step_flops

METHODS = ["bp", "bp-accum", "bp-ckpt", "bp-deepsup", "ff-naive", "ff-pipelined"]
POINTS = [("vgg8", 32, 256, 10, 128), ("vgg11", 224, 128, 100, 64)]  # bp-accum: 2 micro-batches
# The paper's measured imgs/s / bp's imgs/s (VGG11's bp spilled to host memory: not comparable).
PAPER_THROUGHPUT = {
    ("vgg8", "ff-pipelined"): 1726 / 1586,
    ("vgg8", "ff-naive"): 0.70,
    ("vgg11", "bp-accum"): 157 / 14,
    ("vgg11", "bp-ckpt"): 92 / 14,
    ("vgg11", "ff-pipelined"): 138 / 14,
}


def main() -> None:
    for arch, res, batch, classes, micro in POINTS:
        print(f"\n{arch}, {res}x{res}, batch {batch}, K={classes}")
        print(
            f"{'method':14s}{'GFLOP/step':>14s}{'FLOPs / bp':>12s}"
            f"{'compute-bound imgs/s / bp':>28s}"
            f"{'paper imgs/s / bp':>20s}"
        )
        bp = None
        for method in METHODS:
            [cell] = expand_grid(
                method=method,
                arch=arch,
                res=res,
                batch=batch,
                classes=classes,
                micro_batch=micro if method == "bp-accum" else None,
            )
            flops = count_step_flops(cell)
            bp = bp or flops
            paper = PAPER_THROUGHPUT.get((arch, method))
            print(
                f"{method:14s}{flops / 1e9:14,.1f}{flops / bp:12.3f}{bp / flops:28.3f}"
                f"{'' if paper is None else f'{paper:.2f}':>20s}"
            )


if __name__ == "__main__":
    main()
