"""How fast planning without a GPU is: an estimated cell against a bare fake step of the same
model, ``membench plan`` at the paper's cell, ``membench --help``, and the paper's D.7 grid.

    .venv/bin/python benchmarks/estimate_speed.py cells [--depths 8,16,32,64,128]
        [--methods bp,ff-pipelined:16] [--repeats 3] [--device-kind cuda]
    .venv/bin/python benchmarks/estimate_speed.py plan [--jobs N]
    .venv/bin/python benchmarks/estimate_speed.py help [--repeats 5]
    .venv/bin/python benchmarks/estimate_speed.py grid [--device-kind cuda|cpu]
    .venv/bin/python benchmarks/estimate_speed.py fakecache [--depths 8] [--methods ...]

``cells``: for each method (``name`` or ``name:micro-batch``) and depth D, the cell
vgg-dD-w256 at 64x64, batch 128, K = 100 (the depth study's family) is estimated
(``estimate_cell``, FLOPs included) and, in turn with it, a *bare fake step* runs: the cell's
runner built once under plain ``FakeTensorMode`` (not timed) and one ``runner.step`` timed, the
first, so AdamW makes its state in it as in any first step. Each is repeated, the two taking
turns; printed are the minimum and median of each in CPU seconds (``time.process_time``: this
process alone, which a shared machine disturbs least) and wall seconds, and the ratio estimate /
bare step (of the medians, and the median of the per-turn ratios). The FakeTensorMode's own
dispatch cache is warm for both after the first turn.

``plan``: ``membench plan --arch vgg11 --res 224 --batch 128 --classes 100 --gpu laptop-8gb
--top 200`` as a program (its imports and worker processes included), wall and CPU seconds
(children included), and whether its output is today's committed
``results/reference-estimate-paper-d7-plan/plan.txt`` line for line.

``help``: ``membench --help`` as a program, wall and CPU seconds.

``fakecache``: a bare fake step (as in ``cells``) with torch's fake-tensor dispatch cache on (as
torch ships it) and off (``FakeTensorMode.cache_enabled = False``), in turns.

``grid``: ``estimate_cell`` over the paper's App. D.7 grid (VGG11, 224x224, K = 100, batches 32,
64, 96, 128; bp, bp-accum, bp-ckpt, ff-naive, ff-pipelined), seconds per cell and in total.

The script runs against whichever membench is importable, so the same command with another
checkout first on ``PYTHONPATH`` measures that one (how the before/after figures of
docs/estimate.md were taken, the two taking turns).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLAN_REFERENCE = REPO / "results" / "reference-estimate-paper-d7-plan" / "plan.txt"
PLAN_ARGS = [
    "plan",
    *("--arch", "vgg11", "--res", "224", "--batch", "128", "--classes", "100"),
    *("--gpu", "laptop-8gb", "--top", "200"),
]
MEMBENCH = [sys.executable, "-c", "from membench.cli import main; main()"]


class Clock:
    """CPU and wall seconds of a block."""

    def __enter__(self) -> Clock:
        self.cpu, self.wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.cpu, self.wall = time.process_time() - self.cpu, time.perf_counter() - self.wall


def depth_cell(method: str, depth: int):
    from membench.schema import Cell

    name, _, micro = method.partition(":")
    return Cell(name, f"vgg-d{depth}-w256", 64, 128, int(micro) if micro else None, 100)


def bare_step(cell, cache: bool = True) -> Clock:
    """The runner built under plain FakeTensorMode (not timed), then its first step timed;
    ``cache=False``: with the mode's dispatch cache off."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from membench.measure.protocol import build_runner, make_batch

    with torch.random.fork_rng(devices=[]), FakeTensorMode() as mode:
        mode.cache_enabled = cache and mode.cache_enabled
        runner = build_runner(cell, "cpu")
        images, labels = make_batch(cell, torch.device("cpu"))
        with Clock() as clock:
            runner.step(images, labels)
    return clock


def estimated(cell, kind: str) -> Clock:
    from membench.planning.estimate import estimate_cell

    with Clock() as clock:
        result = estimate_cell(cell, kind)
    if result.status != "estimated":
        raise SystemExit(f"{cell.cell_id}: {result.status}: {result.error}")
    return clock


def cells(args) -> list[dict]:
    """Estimate and bare step of each cell, in turns; one record per cell."""
    records = []
    for method in args.methods.split(","):
        for depth in map(int, args.depths.split(",")):
            cell = depth_cell(method, depth)
            bare_step(cell), estimated(cell, args.device_kind)  # imports, the dispatch cache
            bares, estimates = [], []
            for _ in range(args.repeats):
                bares.append(bare_step(cell))
                estimates.append(estimated(cell, args.device_kind))
            record = {"cell": cell.cell_id}
            for name, clocks in (("bare", bares), ("estimate", estimates)):
                for unit in ("cpu", "wall"):
                    values = [getattr(c, unit) for c in clocks]
                    record[f"{name}_{unit}_min"] = min(values)
                    record[f"{name}_{unit}_median"] = statistics.median(values)
            ratios = [e.cpu / b.cpu for e, b in zip(estimates, bares)]
            record["ratio_cpu_of_medians"] = (
                record["estimate_cpu_median"] / record["bare_cpu_median"]
            )
            record["ratio_cpu_median_of_turns"] = statistics.median(ratios)
            records.append(record)
            print(
                f"{cell.cell_id:48s} bare step {record['bare_cpu_median']:7.2f} s cpu "
                f"({record['bare_wall_median']:7.2f} wall)  estimate "
                f"{record['estimate_cpu_median']:7.2f} s cpu ({record['estimate_wall_median']:7.2f}"
                f" wall)  estimate / bare {record['ratio_cpu_of_medians']:.2f} (turns: "
                f"{record['ratio_cpu_median_of_turns']:.2f})",
                flush=True,
            )
    return records


def fakecache(args) -> list[dict]:
    """A bare fake step with torch's dispatch cache on and off, in turns; one record per cell."""
    records = []
    for method in args.methods.split(","):
        for depth in map(int, args.depths.split(",")):
            cell = depth_cell(method, depth)
            bare_step(cell), bare_step(cell, cache=False)
            on, off = [], []
            for _ in range(args.repeats):
                on.append(bare_step(cell).cpu)
                off.append(bare_step(cell, cache=False).cpu)
            record = {"cell": cell.cell_id, "on_cpu_median": statistics.median(on)}
            record["off_cpu_median"] = statistics.median(off)
            records.append(record)
            print(
                f"{cell.cell_id:48s} fake step, cache on {record['on_cpu_median']:7.2f} s cpu, "
                f"off {record['off_cpu_median']:7.2f} s cpu "
                f"({record['off_cpu_median'] / record['on_cpu_median']:.1f}x)",
                flush=True,
            )
    return records


def program(arguments: list[str]) -> dict:
    """Wall and CPU seconds (this child and its own children) of ``membench ARGUMENTS``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run = subprocess.run(MEMBENCH + arguments, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "exit": run.returncode, "stdout": run.stdout}


def plan(args) -> list[dict]:
    extra = ["--jobs", str(args.jobs)] if args.jobs else []
    record = program(PLAN_ARGS + extra)
    reference = PLAN_REFERENCE.read_text().splitlines()
    got = record.pop("stdout").splitlines()
    record["same_as_reference"] = got == reference
    record["lines_differing"] = sum(a != b for a, b in zip(got, reference)) + abs(
        len(got) - len(reference)
    )
    print(
        f"membench {' '.join(PLAN_ARGS + extra)}: {record['wall_s']:.1f} s wall, "
        f"{record['cpu_s']:.1f} s cpu (with its workers), exit {record['exit']}; "
        f"output {'is' if record['same_as_reference'] else 'is NOT'} {PLAN_REFERENCE.name} "
        f"({record['lines_differing']} lines differ)",
        flush=True,
    )
    return [record]


def help_(args) -> list[dict]:
    records = [program(["--help"]) for _ in range(args.repeats)]
    for record in records:
        record.pop("stdout")
    walls, cpus = [r["wall_s"] for r in records], [r["cpu_s"] for r in records]
    print(
        f"membench --help: wall min {min(walls):.2f} median {statistics.median(walls):.2f} s, "
        f"cpu min {min(cpus):.2f} median {statistics.median(cpus):.2f} s ({len(records)} runs)",
        flush=True,
    )
    return records


def grid(args) -> list[dict]:
    from membench.planning.estimate import estimate_cell
    from membench.schema import Cell

    records, total = [], Clock().__enter__()
    for batch in (32, 64, 96, 128):
        for method in ("bp", "bp-accum", "bp-ckpt", "ff-naive", "ff-pipelined"):
            micro = (64 if batch % 64 == 0 else batch // 2) if method == "bp-accum" else None
            cell = Cell(method, "vgg11", 224, batch, micro, 100)
            with Clock() as clock:
                result = estimate_cell(cell, args.device_kind)
            peak = result.peak_allocated_bytes
            figure = f"{peak / 2**30:7.3f} GiB" if peak is not None else result.error
            print(f"{cell.cell_id:40s} {clock.wall:6.2f} s  {result.status:9s} {figure}")
            records.append({"cell": cell.cell_id, "wall_s": clock.wall, "cpu_s": clock.cpu})
    total.__exit__()
    print(f"total {total.wall:.1f} s wall, {total.cpu:.1f} s cpu for {len(records)} cells")
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("cells", "plan", "help", "grid", "fakecache"))
    parser.add_argument("--depths", default="8,16,32,64,128")
    parser.add_argument("--methods", default="bp,ff-pipelined:16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device-kind", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--jobs", type=int, help="plan: estimates at once (default: its own)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    commands = {"cells": cells, "plan": plan, "help": help_, "grid": grid, "fakecache": fakecache}
    records = commands[args.what](args)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
