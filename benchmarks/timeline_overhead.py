"""What ``--timeline`` costs: the same grid swept without it, with it, and with
``--timeline-snapshot``, cell by cell in one run.

    python benchmarks/timeline_overhead.py [--arch vgg8] [--res 32] [--batch 64]
        [--classes 10] [--method bp,...] [--warmup 2] [--steps 5] [--device cpu]
        [--estimate] [--out DIR]

For every cell, three one-cell sweeps run back to back (off, timeline, timeline + snapshot, the
order rotating from cell to cell), so the machine's drift hits all three alike; each is timed from
the cell's start to its row on
disk (the timeline's step, its transfer from the worker and its files included; the worker's
start, once per sweep, is not). Prints seconds per cell, the bytes each cell adds to
``timeline.csv`` and ``snapshots/``, and the two parts of the cost that the machine's noise does
not hide: the recorded step itself (``Timeline.seconds``, beside a measured step's median) and
writing its files (timed again here into a scratch folder). The ``--timeline`` folder is kept as
``--out``; the other
two go to temporary folders.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from membench.config import build_config
from membench.execute.sweep import SweepProgress, run_cells
from membench.runners import BUILTIN_METHODS
from membench.timeline.files import TIMELINE_FILE, snapshot_path, write_timeline


class CellClock(SweepProgress):
    """Seconds from a cell's start to its row on disk."""

    def cell_started(self, index, cell):
        self.start = time.perf_counter()

    def cell_finished(self, index, result, wall_s):
        self.seconds, self.result = time.perf_counter() - self.start, result


def size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg8")
    parser.add_argument("--res", default="32")
    parser.add_argument("--batch", default="64")
    parser.add_argument("--classes", default="10")
    parser.add_argument("--method", default=",".join(BUILTIN_METHODS))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--estimate", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("results/timeline-overhead"))
    args = parser.parse_args()
    grid = dict(
        arch=args.arch,
        res=args.res,
        batch=args.batch,
        classes=args.classes,
        method=args.method,
        warmup=args.warmup,
        steps=args.steps,
        device=args.device,
        estimate=args.estimate,
    )
    folders = {
        "off": Path(tempfile.mkdtemp()),
        "timeline": args.out,
        "snapshot": Path(tempfile.mkdtemp()),
    }
    flags = {
        "off": {},
        "timeline": {"timeline": True},
        "snapshot": {"timeline": True, "timeline_snapshot": True},
    }
    print(
        f"{'cell':40s} {'off s':>7s} {'on s':>7s} {'snap s':>7s} {'+s':>6s} "
        f"{'step ms':>8s} {'rec ms':>7s} {'snap ms':>8s} {'write ms':>9s} {'csv KiB':>8s} "
        f"{'pickle KiB':>10s}"
    )
    for number, cell in enumerate(build_config(**grid).cells):
        seconds, files, results = {}, {}, {}
        order = list(folders)[number % 3 :] + list(folders)[: number % 3]
        for variant in order:
            folder = folders[variant]
            config = build_config(**grid, **flags[variant])
            clock = CellClock()
            before = size(folder / TIMELINE_FILE)
            run_cells([cell], config.options, folder, progress=clock)
            seconds[variant], results[variant] = clock.seconds, clock.result
            files[variant] = (
                size(folder / TIMELINE_FILE) - before,
                size(snapshot_path(folder, cell.cell_id, clock.result.device)),
            )
        start = time.perf_counter()
        write_timeline(Path(tempfile.mkdtemp()), results["snapshot"])
        write_ms = (time.perf_counter() - start) * 1e3
        median = results["off"].step_ms_median
        print(
            f"{cell.cell_id:40s} {seconds['off']:7.2f} {seconds['timeline']:7.2f} "
            f"{seconds['snapshot']:7.2f} {seconds['timeline'] - seconds['off']:+6.2f} "
            f"{'-' if median is None else f'{median:.0f}':>8s} "
            f"{results['timeline'].timeline.seconds * 1e3:7.0f} "
            f"{results['snapshot'].timeline.seconds * 1e3:8.0f} {write_ms:9.0f} "
            f"{files['timeline'][0] / 1024:8.0f} {files['snapshot'][1] / 1024:10.0f}"
        )


if __name__ == "__main__":
    main()
