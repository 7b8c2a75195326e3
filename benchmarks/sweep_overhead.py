"""What process isolation costs per cell: the same tiny cells swept in-process and isolated.

Usage: python benchmarks/sweep_overhead.py [--cells 8] [--arch vgg-d2-w8] [--res 8]

Prints, side by side, the wall time per cell of ``run_sweep(isolation="none")`` and of
``run_sweep(isolation="process")`` (one warm worker reused), the one-off cost of starting the
first worker (forkserver + imports), and the cost of a fresh worker after a failed cell.

Neither side calibrates the CPU's peak: both sweeps are given one (``peak_tflops``), and a fresh
worker gets the peaks the first one found, as a sweep's next worker does; a calibration (about
two seconds per precision, once per sweep) would otherwise be most of what is timed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from membench.execute.sweep import run_sweep
from membench.execute.worker import IsolatedWorker, Target
from membench.schema import Cell


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=8)
    parser.add_argument("--arch", default="vgg-d2-w8")
    parser.add_argument("--res", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Distinct seeds make distinct cells, so resume never skips one.
    cells = [
        Cell("bp", args.arch, args.res, 2, warmup=1, steps=2, seed=i) for i in range(args.cells)
    ]
    peak = dict(peak_tflops=1.0)  # no calibration on either side (the module docstring)
    # Both sides pay torch's lazy first-step imports up front, so neither is charged for them.
    run_sweep(cells[:1], "cpu", Path(tempfile.mkdtemp()), isolation="none", **peak)

    first = IsolatedWorker(Target("cpu", **peak), ["bp"])
    first_start = timed(first.wait_ready)
    peaks = first.peaks
    first.close()
    in_process = timed(
        lambda: run_sweep(cells, "cpu", Path(tempfile.mkdtemp()), isolation="none", **peak)
    )
    isolated = timed(
        lambda: run_sweep(cells, "cpu", Path(tempfile.mkdtemp()), isolation="process", **peak)
    )

    fresh = []
    for _ in range(3):

        def start_and_stop() -> None:
            worker = IsolatedWorker(Target("cpu", **peak), ["bp"], peaks=peaks)
            worker.wait_ready()
            worker.close()

        fresh.append(timed(start_and_stop))

    n = len(cells)
    print(
        f"{n} cells of bp {args.arch} r{args.res} b2, warmup 1, steps 2, {args.threads} thread(s)"
    )
    print(f"{'':34}{'in-process':>12}{'isolated':>12}")
    print(f"{'sweep wall time (s)':34}{in_process:12.3f}{isolated:12.3f}")
    print(f"{'per cell (ms)':34}{in_process / n * 1e3:12.1f}{isolated / n * 1e3:12.1f}")
    print(
        f"isolation overhead per cell: {(isolated - in_process) / n * 1e3:.1f} ms "
        f"(includes one worker start per sweep)"
    )
    print(f"first worker of a process (forkserver start + imports): {first_start:.2f} s")
    print(
        f"fresh worker after a failed cell (start + stop): "
        f"{min(fresh) * 1e3:.0f} ms best, {sum(fresh) / len(fresh) * 1e3:.0f} ms mean of 3"
    )


if __name__ == "__main__":
    main()
