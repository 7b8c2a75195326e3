"""What the device total costs an estimate: ``estimate_cell`` with the allocator replay (the step's
stream recorded by ``StreamTracker``, replayed with its workspaces, ``device_total.step_terms``)
against the same estimate without it (the plain tensor tracker, no replay), side by side:
interleaved, in one process, the same cells, so a loaded machine slows both alike.

    .venv/bin/python benchmarks/device_total_overhead.py [--repeats 7]

Prints each cell's median seconds both ways and their ratio, the ratio of the fastest runs (end
to end: the stream's recording and the replay; the fastest run of each is the one the machine's
load disturbed least), and the replay alone (``step_terms``, timed inside the estimate) as a
share of the estimate with it: on a loaded 2-core machine the end-to-end ratio carries the
machine's noise, the replay's own time does not.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from membench.measure.memtrack import TensorMemoryTracker, cuda_allocated_size
from membench.planning import estimate
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


REPLAY_SECONDS: list[float] = []
_step_terms = estimate.step_terms


def timed_step_terms(*args, **kwargs):
    """``step_terms``, its seconds kept in REPLAY_SECONDS."""
    start = time.perf_counter()
    terms = _step_terms(*args, **kwargs)
    REPLAY_SECONDS.append(time.perf_counter() - start)
    return terms


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
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} repeats")
    estimate.step_terms = timed_step_terms
    ratios, shares = [], []
    for cell in CELLS:
        estimate_cell(cell, count_flops=False)  # warm: imports, the model's first build
        with_replay, without = [], []
        REPLAY_SECONDS.clear()
        for repeat in range(args.repeats):  # interleaved, the order alternating (ABBA)
            for replay in (True, False) if repeat % 2 == 0 else (False, True):
                (with_replay if replay else without).append(timed(cell, replay=replay))
        a, b = statistics.median(with_replay), statistics.median(without)
        fastest = min(with_replay) / min(without)  # the least disturbed run of each
        replay = statistics.median(REPLAY_SECONDS)
        ratios.append(fastest)
        shares.append(replay / a)
        print(
            f"{cell.cell_id:40s} median with {a:5.2f} s without {b:5.2f} s ({a / b:5.3f}), "
            f"fastest {fastest:5.3f}; replay {replay * 1e3:5.1f} ms ({100 * replay / a:3.1f} %)"
        )
    print(
        f"end to end, fastest runs: median ratio {statistics.median(ratios):.3f} (max "
        f"{max(ratios):.3f}); the replay alone: at most {100 * max(shares):.1f} % of an estimate"
    )


if __name__ == "__main__":
    main()
