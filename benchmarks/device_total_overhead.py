"""What the device total costs an estimate: ``estimate_cell`` with the allocator replay (the step's
stream recorded by ``StreamTracker``, replayed with its workspaces, ``device_total.step_terms``)
against the same estimate without it (the plain tensor tracker, no replay), side by side:
interleaved, in one process, the same cells, so a loaded machine slows both alike.

    .venv/bin/python benchmarks/device_total_overhead.py [--repeats 5]

Prints each cell's median seconds both ways, the ratio, and the median of the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from membench.measure.memtrack import TensorMemoryTracker, cuda_allocated_size
from membench.planning.estimate import EstimateDevice, estimate_cell
from membench.schema import Cell

CELLS = (
    Cell("bp", "vgg11", 224, 64, classes=100),
    Cell("ff-pipelined", "vgg11", 224, 64, classes=100),
    Cell("bp-ckpt", "vgg11", 224, 64, classes=100),
    Cell("bp", "tv:resnet50", 224, 32, classes=1000),
    Cell("bp", "tv:mobilenet_v3_large", 224, 32, classes=1000),
)


class WithoutReplay(EstimateDevice):
    """The estimate as it was before the device total: the plain tracker, no replay."""

    def memory_tracker(self, cell):
        return TensorMemoryTracker(rounding=cuda_allocated_size)

    def record_device_terms(self, prepared, result):
        pass


def timed(cell: Cell, replay: bool) -> float:
    """Seconds of one estimate of ``cell``, with the device total's replay or without it."""
    from membench.measure.protocol import run_cell

    start = time.perf_counter()
    if replay:
        estimate_cell(cell, count_flops=False)
    else:
        run_cell(cell, WithoutReplay("cuda"), count_flops=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} repeats")
    ratios = []
    for cell in CELLS:
        estimate_cell(cell, count_flops=False)  # warm: imports, the model's first build
        with_replay, without = [], []
        for _ in range(args.repeats):  # interleaved: the machine's load hits both alike
            with_replay.append(timed(cell, replay=True))
            without.append(timed(cell, replay=False))
        a, b = statistics.median(with_replay), statistics.median(without)
        ratios.append(a / b)
        print(f"{cell.cell_id:45s} with {a:6.2f} s  without {b:6.2f} s  ratio {a / b:5.3f}")
    print(f"median ratio {statistics.median(ratios):.3f} (max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
