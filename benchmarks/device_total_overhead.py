"""What the device total costs an estimate: ``estimate_cell`` with the allocator replay (the step's
stream recorded by ``StreamTracker``, replayed with its workspaces, ``device_total.step_terms``)
against the same estimate without it (the plain tensor tracker, no replay), side by side:
interleaved, in one process, the same cells, timed in this process's CPU time (on one torch
thread by default), so other processes' load does not enter the figures.

    .venv/bin/python benchmarks/device_total_overhead.py [--repeats 7]

Prints each cell's median CPU seconds both ways and their ratio, the ratio of the fastest runs
(end to end: the stream's recording and the replay), and the replay alone (``step_terms``,
timed inside the estimate) as a share of the estimate with it. Then the recording on its own:
the memory pass (the protocol's tracked steps of one prepared cell) with the recording tracker
against the plain one, the fastest of many short runs each.
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
    start = time.process_time()
    terms = _step_terms(*args, **kwargs)
    REPLAY_SECONDS.append(time.process_time() - start)
    return terms


def timed(cell: Cell, replay: bool) -> float:
    """Seconds of one estimate of ``cell``, with the device total's replay or without it."""
    from membench.measure.protocol import run_cell

    start = time.process_time()  # this process's CPU time: other processes' load aside
    if replay:
        estimate_cell(cell, count_flops=False)
    else:
        run_cell(cell, WithoutReplay("cuda"), count_flops=False)
    return time.process_time() - start


def recording_ratio(cell: Cell, repeats: int) -> tuple[float, float]:
    """The memory pass alone (the protocol's tracked steps of one prepared cell, as many as an
    estimate tracks), with the stream-recording tracker and with the plain one, interleaved:
    (fastest with, fastest without), in CPU seconds of this process. Short runs, so many of
    them: the fastest is the least disturbed."""
    from membench.measure.protocol import prepare_cell, tracked_steps
    from membench.planning.step_stream import StreamTracker

    device = EstimateDevice("cuda")
    with device.session(), device.cell_settings(cell):
        prepared = prepare_cell(cell, device)
        trackers = {
            True: lambda: StreamTracker(rounding=cuda_allocated_size),
            False: lambda: TensorMemoryTracker(rounding=cuda_allocated_size),
        }
        steps = tracked_steps(prepared.runner, cell)  # as many as the estimate's memory pass
        times = {True: [], False: []}
        for repeat in range(repeats):
            for stream in (True, False) if repeat % 2 == 0 else (False, True):
                start = time.process_time()  # this process's CPU time: others' load aside
                prepared.tracked(trackers[stream](), steps)
                times[stream].append(time.process_time() - start)
    return min(times[True]), min(times[False])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # one thread: CPU time is the work, not spinning
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
    print("recording the stream: the memory pass alone, fastest of", 4 * args.repeats)
    for cell in CELLS:
        with_stream, plain = recording_ratio(cell, 4 * args.repeats)
        print(
            f"{cell.cell_id:40s} with {with_stream:6.3f} s  plain {plain:6.3f} s  "
            f"ratio {with_stream / plain:5.3f}"
        )


if __name__ == "__main__":
    main()
