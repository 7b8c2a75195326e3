"""The stability verdicts of a profile's cells run as the machine is, and again beside a
competing load: what the timing columns say when the CPU is shared.

Usage: python benchmarks/stability_under_load.py [--profile quick] [--load 2] [--out DIR]

Sweeps the profile into DIR/as-is, then starts ``--load`` busy processes (one Python loop each,
pinned nowhere: they compete for every core) and sweeps it again into DIR/loaded, stops them,
and prints per run: the verdicts, the cells' relative IQR and the share of the CPU other
processes used during their timed steps (median and range), the load average, and each
unstable cell's reason. Nothing here makes the machine idle: "as-is" is whatever else runs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

from membench.results import read_cells

BUSY = "while True:\n    pass\n"


def sweep(profile: str, out: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from membench.cli import main; main()",
            "sweep",
            "--profile",
            profile,
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def describe(name: str, out: Path) -> None:
    cells = read_cells(out)
    verdicts = Counter(cells["stability"].fillna("").replace("", "-"))
    spread = cells["step_ms_rel_iqr"].dropna()
    others = cells["cpu_others"].dropna()
    load = cells["load_average"].dropna()
    print(
        f"{name}: {len(cells)} cells, "
        + ", ".join(f"{v} {n}" for v, n in sorted(verdicts.items()))
        + f"; relative IQR median {statistics.median(spread):.1%} ({spread.min():.1%}-"
        f"{spread.max():.1%}); others' CPU share median {statistics.median(others):.0%} "
        f"({others.min():.0%}-{others.max():.0%}); load average {statistics.median(load):.1f}"
    )
    for row in cells[cells["stability"] == "unstable"].to_dict("records"):
        print(f"  {row['cell_id']}: {row['stability_reason']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--load", type=int, default=2, help="busy processes beside the 2nd run")
    parser.add_argument("--out", type=Path, default=Path("stability-under-load"))
    args = parser.parse_args()
    sweep(args.profile, args.out / "as-is")
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.load)]
    try:
        sweep(args.profile, args.out / "loaded")
    finally:
        for process in busy:
            process.kill()
            process.wait()
    describe("as is", args.out / "as-is")
    describe(f"beside {args.load} busy processes", args.out / "loaded")


if __name__ == "__main__":
    main()
