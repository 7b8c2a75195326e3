"""How much does membench's timing add to a step? Compare, in one run, membench's per-step timing
(Device.time_steps, what the protocol uses) with torch.utils.benchmark.Timer on the very same step
function, interleaved so machine noise hits both alike.

    python benchmarks/harness_overhead.py [--arch vgg-d4-w32] [--res 16] [--batch 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.utils.benchmark as tbench

from membench.measure.devices import resolve_device
from membench.measure.protocol import build_runner, make_batch, run_cell
from membench.schema import Cell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg-d4-w32")
    parser.add_argument("--res", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--method", default="bp")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    cell = Cell(args.method, args.arch, args.res, args.batch, warmup=5, steps=args.steps)
    runner = build_runner(cell, device.torch_device)
    images, labels = make_batch(cell, device.torch_device)

    def step():
        runner.step(images, labels)

    for _ in range(5):
        step()
    device.synchronize()

    ours, theirs = [], []
    # Timer defaults to one thread; give it the same thread count the protocol runs with.
    timer = tbench.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
    for _ in range(args.rounds):
        ours.extend(device.time_steps(step, args.steps))
        # blocked_autorange synchronizes CUDA itself; its median is per-run time in seconds.
        measurement = timer.blocked_autorange(
            min_run_time=max(0.2, statistics.median(ours) * args.steps / 1e3)
        )
        theirs.extend(t * 1e3 for t in measurement.times)

    full = run_cell(cell, device)  # the whole protocol, own runner, for reference
    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    print(
        f"cell: {cell.cell_id} on {device} ({device.name()}), torch threads "
        f"{torch.get_num_threads()}"
    )
    print(f"membench Device.time_steps median  {ours_median:9.3f} ms  ({len(ours)} steps)")
    print(f"torch.utils.benchmark.Timer median {theirs_median:9.3f} ms  ({len(theirs)} blocks)")
    print(f"ratio membench / Timer             {ours_median / theirs_median:9.3f}")
    print(
        f"membench run_cell median           {full.summary_stats()['median']:9.3f} ms  (full "
        "protocol)"
    )


if __name__ == "__main__":
    main()
