"""What the ray executor costs: Ray's start-up, per-cell overhead against the local executor,
and how well Ray fills its slots.

Usage: python benchmarks/ray_overhead.py [--cells 8] [--slots 4] [--sleepers 16] [--sleep 1]

Starts one local Ray cluster with ``--slots`` CPUs (emulated: Ray may declare more CPUs than the
machine has) and prints

- start-up: ``ray.init`` of the local cluster; the first sweep's fixed cost (a probe per node,
  whose Ray worker starts its forkserver, which imports torch); a warm sweep with nothing to run;
- per cell: the same tiny cells through the local executor (one warm worker) and through Ray with
  one slot (a cell asks for every CPU), warm, and the difference per cell;
- scheduling: ``--sleepers`` cells of a runner that sleeps ``--sleep`` s while it is built, one
  CPU each on ``--slots`` slots, against the ideal ``sleepers / slots * sleep`` seconds; once cold
  (each slot's Ray worker starts its forkserver inside the sweep) and once warm.

Needs pytest (the test runners are registered as the test suite does) and Ray.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fake_runners import install_misbehaving_runners  # noqa: E402

from membench.execute.sweep import SweepProgress, run_sweep  # noqa: E402
from membench.measure.devices import visible_cpu_count  # noqa: E402
from membench.schema import Cell  # noqa: E402


class Packing(SweepProgress):
    """From the first cell's start to the last one's end, and the cells' own wall times."""

    def __init__(self):
        self.first = self.last = None
        self.cell_s = 0.0

    def cell_started(self, index, cell):
        self.first = self.first or time.perf_counter()

    def cell_finished(self, index, result, wall_s):
        self.last, self.cell_s = time.perf_counter(), self.cell_s + wall_s

    def text(self, slots: int) -> str:
        span = self.last - self.first
        return (
            f"cells phase {span:.2f} s, the cells' own wall times / slots "
            f"{self.cell_s / slots:.2f} s: "
            f"packing {self.cell_s / slots / span:.0%}"
        )


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="membench-ray-bench-"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=8)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--sleepers", type=int, default=16)
    parser.add_argument("--sleep", type=float, default=1.0)
    parser.add_argument("--arch", default="vgg-d2-w8")
    parser.add_argument("--res", type=int, default=8)
    args = parser.parse_args()
    threads = min(args.slots, visible_cpu_count())  # what a one-slot Ray cell gets
    torch.set_num_threads(threads)
    cells = [
        Cell("bp", args.arch, args.res, 2, warmup=1, steps=2, seed=i) for i in range(args.cells)
    ]
    sleepers = [
        Cell("test-sleep", args.arch, args.res, 2, warmup=1, steps=2, seed=i)
        for i in range(args.sleepers)
    ]

    def ray_sweep(grid, out, cpus, progress=None):
        return lambda: run_sweep(
            grid, "cpu", out, executor="ray", cpus_per_cell=cpus, progress=progress
        )

    with pytest.MonkeyPatch.context() as patch:
        install_misbehaving_runners(folder(), patch)
        patch.setenv("MEMBENCH_TEST_SLEEP_S", str(args.sleep))
        init = timed(
            lambda: ray.init(
                num_cpus=args.slots,
                include_dashboard=False,
                log_to_driver=False,
                object_store_memory=256 * 2**20,
                logging_level=logging.WARNING,
            )
        )
        first = timed(ray_sweep(cells[:1], folder(), args.slots))
        run_sweep(cells[:1], "cpu", folder())  # this process's forkserver starts: not a cell's cost
        local = timed(lambda: run_sweep(cells, "cpu", folder()))
        warm_out = folder()
        on_ray = timed(ray_sweep(cells, warm_out, args.slots))
        nothing = timed(ray_sweep(cells, warm_out, args.slots))  # all finished: the probe only
        packing = {"cold": Packing(), "warm": Packing()}
        cold = timed(ray_sweep(sleepers, folder(), 1, packing["cold"]))
        warm = timed(ray_sweep(sleepers, folder(), 1, packing["warm"]))
        patch.setenv("MEMBENCH_TEST_SLEEP_S", "0")
        no_sleep = timed(ray_sweep(sleepers, folder(), 1))  # the same cells' CPU work alone
        ray.shutdown()

    n, ideal = len(cells), args.sleepers / args.slots * args.sleep
    print(
        f"ray {ray.__version__}, {visible_cpu_count()} core(s), a local cluster of "
        f"{args.slots} CPU slot(s); cells: bp {args.arch} r{args.res} b2, warmup 1, steps 2"
    )
    print(f"ray.init (local cluster start):                       {init:6.2f} s")
    print(f"first ray sweep of 1 cell (probe, first Ray worker):  {first:6.2f} s")
    print(f"warm ray sweep with nothing to run (probe only):      {nothing:6.2f} s")
    print(
        f"{n} cells, one at a time, {threads} thread(s): local {local:.2f} s "
        f"({local / n * 1e3:.0f} ms/cell), ray {on_ray:.2f} s ({on_ray / n * 1e3:.0f} ms/cell); "
        f"ray overhead {(on_ray - local) / n * 1e3:+.0f} ms/cell with the sweep's probe, "
        f"{(on_ray - nothing - local) / n * 1e3:+.0f} ms/cell without it"
    )
    for label, wall in (("cold", cold), ("warm", warm)):
        print(
            f"{args.sleepers} cells sleeping {args.sleep:g} s on {args.slots} slots, {label}: "
            f"{wall:.2f} s; ideal {ideal:.2f} s; ratio {wall / ideal:.2f}; "
            f"{packing[label].text(args.slots)}"
        )
    print(
        f"the same {args.sleepers} cells without the sleep (their protocol's CPU work and the "
        f"probe), warm: {no_sleep:.2f} s"
    )


if __name__ == "__main__":
    main()
