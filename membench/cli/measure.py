"""``membench sweep``, ``membench run`` and ``membench list profiles``: parse and validate, then
call the library (membench.sweep, membench.protocol, membench.profiles)."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ..devices import DEVICE_CHOICES, DeviceError, resolve_device
from ..grid import GridError, expand_grid, parse_bytes, parse_int_list, split_list
from ..profiles import ProfileError, available_profiles, load_profile, resolve_settings
from ..protocol import CellResult
from ..sweep import (
    ISOLATION_CHOICES, SweepError, SweepLockedError, SweepProgress, estimate_sweep, grid_rows,
    run_sweep,
)
from .app import app, fail
from .inspect import list_app

# Options default to None so an explicit flag can be told apart from a profile's value; the
# real defaults are profiles.SWEEP_DEFAULTS.
ARCH = typer.Option(None, "--arch", help="Arch(s), comma list: vgg8, vgg11, vgg-dD-wW, tv:NAME. Default: vgg8.")
RES = typer.Option(None, "--res", help="Input resolution(s), comma list. Default: 32.")
BATCH = typer.Option(None, "--batch", help="Batch size(s), comma list. Default: 32.")
METHOD = typer.Option(None, "--method", help="Method(s), comma list (see `membench list methods`). Default: bp.")
MICRO = typer.Option(None, "--micro-batch", help="bp-accum micro-batch(es), comma list; default batch/2.")
CLASSES = typer.Option(None, "--classes", help="Number of classes K. Default: 10.")
WARMUP = typer.Option(None, "--warmup", help="Unmeasured warmup steps. Default: 5.")
STEPS = typer.Option(None, "--steps", help="Measured steps. Default: 20.")
SEED = typer.Option(None, "--seed", help="Seed for weights and the synthetic batch. Default: 0.")
DEVICE = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N. Default: auto.")
DEVICE_MEM = typer.Option(None, "--device-mem", help="Emulate a smaller card, e.g. 8GiB.")
GRID_KEYS = ("arch", "res", "batch", "method", "micro_batch", "classes", "warmup", "steps", "seed",
             "device_mem")


def build_cells(arch, res, batch, method, micro_batch, classes, warmup, steps, seed, device_mem):
    """Validate every option and expand the grid; exits 2 with one line on bad input."""
    try:
        return expand_grid(
            split_list(method), split_list(arch), parse_int_list(res, "--res"),
            parse_int_list(batch, "--batch"),
            micro_batches=parse_int_list(micro_batch, "--micro-batch") if micro_batch else None,
            classes=classes, seed=seed, warmup=warmup, steps=steps,
            device_mem_bytes=parse_bytes(device_mem) if device_mem else None,
        )
    except GridError as err:
        fail(str(err))


def open_device(spec: str):
    try:
        return resolve_device(spec)
    except DeviceError as err:
        fail(str(err))


def settings_or_fail(profiles: list[str], explicit: dict) -> list[dict]:
    """Defaults < profiles (in order) < explicit flags, one dict per grid; exits 2 on a bad profile."""
    try:
        return resolve_settings(profiles, explicit)
    except ProfileError as err:
        fail(str(err))


def cells_of(grids: list[dict]) -> list:
    """The union of every grid's cells, in order, each cell once."""
    cells = []
    for settings in grids:
        for cell in build_cells(*(settings[key] for key in GRID_KEYS)):
            if cell not in cells:
                cells.append(cell)
    return cells


def estimate_device_kind(spec: str) -> str:
    """The device kind an estimate plans for: cpu only when asked for, else cuda (no GPU needed)."""
    spec = spec.strip().lower()
    if spec == "cpu":
        return "cpu"
    if spec == "auto" or re.fullmatch(r"cuda(?::\d+)?", spec):
        return "cuda"
    fail(f"unknown device {spec!r}; valid: {DEVICE_CHOICES}")


def describe(result: CellResult) -> str:
    """A readable one-cell summary."""
    cell = result.cell
    head = f"{cell.cell_id} on {result.device} ({result.device_name}): {result.status}"
    if result.status != "ok":
        return f"{head}\n  {result.error}"
    stats = result.summary_stats()
    lines = [
        head,
        f"  step time   median {stats['median']:.1f} ms  (p10 {stats['p10']:.1f}, p90 "
        f"{stats['p90']:.1f}, mean {stats['mean']:.1f}) over {len(result.step_ms)} steps",
        f"  throughput  {result.imgs_per_s:.1f} imgs/s",
        f"  peak memory {result.peak_allocated_bytes / 2**30:.3f} GiB allocated "
        f"(source: {result.memory_source})",
    ]
    if result.breakdown:
        parts = ", ".join(f"{k.removesuffix('_bytes').replace('_', ' ')} {v / 2**20:.1f} MiB"
                          for k, v in result.breakdown.as_columns().items())
        lines.append(f"  breakdown   {parts}")
    if result.host_peak_rss_bytes:
        lines.append(f"  host RSS    {result.host_peak_rss_bytes / 2**30:.2f} GiB peak")
    return "\n".join(lines)


def cell_line(index: int, total: int, result: CellResult, wall_s: float) -> str:
    """One line per finished cell, for logs and above the progress bar."""
    head = f"[{index + 1}/{total}] {result.cell.cell_id} {result.status}"
    if result.status not in ("ok", "estimated"):
        return f"{head} ({wall_s:.1f} s): {result.error}"
    parts = []
    median = result.summary_stats()["median"]
    if median is not None:
        parts.append(f"median {median:.1f} ms, {result.imgs_per_s:.0f} imgs/s")
    if result.peak_allocated_bytes is not None:
        parts.append(f"peak {result.peak_allocated_bytes / 2**30:.3f} GiB")
    return f"{head} ({wall_s:.1f} s): {', '.join(parts)}"


class CliProgress(SweepProgress):
    """What both progress displays share: the device the sweep named, for the summary table."""

    def __init__(self):
        self.total = 0
        self.device = self.device_name = ""

    def device_ready(self, device, device_name):
        self.device, self.device_name = device, device_name

    def started_line(self, total, to_run, out_dir) -> str:
        return (f"membench: {total} cell(s) on {self.device} ({self.device_name}), "
                f"{total - to_run} already finished, {to_run} to run -> {out_dir}")


class PlainProgress(CliProgress):
    """One line per event on stdout: what CI logs and pipes get."""

    def sweep_started(self, total, to_run, out_dir):
        self.total = to_run
        typer.echo(self.started_line(total, to_run, out_dir))

    def cell_started(self, index, cell):
        pass

    def cell_finished(self, index, result, wall_s):
        typer.echo(cell_line(index, self.total, result, wall_s))
        sys.stdout.flush()


class RichProgress(CliProgress):
    """A live bar on a terminal: cells done of total, the current cell, elapsed and time left."""

    def __init__(self, console: Console):
        super().__init__()
        self.console = console
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.fields[current]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
            console=console,
        )
        self.task = None

    def sweep_started(self, total, to_run, out_dir):
        self.total = to_run
        self.console.print(self.started_line(total, to_run, out_dir), markup=False, highlight=False)
        self.progress.start()
        self.task = self.progress.add_task("sweep", total=to_run, current="starting")

    def cell_started(self, index, cell):
        self.progress.update(self.task, current=cell.cell_id)

    def cell_finished(self, index, result, wall_s):
        self.progress.console.print(cell_line(index, self.total, result, wall_s), markup=False,
                                    highlight=False)
        self.progress.advance(self.task)

    def sweep_finished(self, results):
        self.progress.update(self.task, current="done")
        self.progress.stop()

    def stop(self) -> None:
        self.progress.stop()


def _number(value, scale: float = 1.0, fmt: str = "{:.1f}") -> str:
    if value in (None, ""):
        return "-"
    try:
        number = float(value)
    except ValueError:
        return "-"
    return "-" if number != number else fmt.format(number / scale)


def summary_table(rows: list[dict], title: str) -> Table:
    """The end-of-sweep table: one line per cell, from cells.csv rows."""
    table = Table(title=title)
    for name in ("method", "arch", "res", "batch", "status"):
        table.add_column(name)
    for name in ("median ms", "imgs/s", "peak GiB"):
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(
            str(row["method"]), str(row["arch"]), str(row["res"]), str(row["batch"]),
            str(row["status"]), _number(row.get("step_ms_median")),
            _number(row.get("imgs_per_s"), fmt="{:.0f}"),
            _number(row.get("peak_allocated_bytes"), 2**30, "{:.3f}"),
        )
    return table


def default_out_dir(profiles: list[str]) -> Path:
    """A stable folder per profile combination, so rerunning the same command resumes."""
    if profiles:
        return Path("results") / "+".join(Path(ref).stem for ref in profiles)
    return Path("results") / "sweep"


@app.command()
def sweep(
    profile: list[str] = typer.Option(
        None, "--profile", "-p",
        help="Profile name or .toml path (repeat to combine; later ones win, flags win over all)."),
    arch: str = ARCH, res: str = RES, batch: str = BATCH, method: str = METHOD,
    micro_batch: str = MICRO, classes: int = CLASSES, warmup: int = WARMUP, steps: int = STEPS,
    seed: int = SEED, device: str = DEVICE, device_mem: str = DEVICE_MEM,
    out: Path = typer.Option(
        None, "--out", help="Results folder. Default: results/PROFILE or results/sweep."),
    timeout: float = typer.Option(None, "--timeout", help="Seconds one cell may take before it is "
                                  "killed and recorded as timeout. Default: none."),
    isolation: str = typer.Option(None, "--isolation", help="process (each cell in a worker "
                                  "process) or none (in this process, for debugging). Default: process."),
    redo: bool = typer.Option(False, "--redo", help="Run every cell again, replacing finished rows."),
    estimate: bool = typer.Option(False, "--estimate", help="Predict each cell (membench.estimate) "
                                  "instead of running it; plans for CUDA unless --device cpu."),
) -> None:
    """Measure every cell of arch x res x batch x method; resumes an interrupted sweep in --out."""
    profiles = [ref for value in profile or [] for ref in split_list(value)]
    explicit = {"arch": arch, "res": res, "batch": batch, "method": method,
                "micro_batch": micro_batch, "classes": classes, "warmup": warmup, "steps": steps,
                "seed": seed, "device": device, "device_mem": device_mem, "timeout": timeout,
                "isolation": isolation}
    grids = settings_or_fail(profiles, explicit)
    settings = grids[0]  # device, timeout and isolation are the same in every grid
    if settings["isolation"] not in ISOLATION_CHOICES:
        fail(f"unknown isolation {settings['isolation']!r}; valid: {', '.join(ISOLATION_CHOICES)}")
    timeout_s = settings["timeout"]
    if timeout_s is not None and not (math.isfinite(timeout_s) and timeout_s > 0):
        fail(f"--timeout must be a finite number of seconds more than 0, got {timeout_s:g}")
    if timeout_s is not None and settings["isolation"] == "none" and not estimate:
        fail("--timeout needs --isolation process: a cell running in this process cannot be stopped")
    cells = cells_of(grids)
    out = out or default_out_dir(profiles)
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file, not a folder")

    console = Console(width=max(Console().width, 100))
    live = sys.stdout.isatty()
    progress = RichProgress(console) if live else PlainProgress()
    try:
        if estimate:
            kind = estimate_device_kind(settings["device"])
            results = estimate_sweep(cells, kind, out, progress=progress)
            rows = [result.row() for result in results]
            where = f"estimates for {kind}"
        else:
            dev = open_device(settings["device"])
            run_sweep(cells, dev, out, isolation=settings["isolation"], timeout_s=timeout_s,
                      redo=redo, progress=progress)
            rows = grid_rows(out, cells, progress.device, progress.device_name)
            where = f"on {progress.device} ({progress.device_name})"
    except (SweepLockedError, GridError, DeviceError, ProfileError) as err:
        # Input and lock errors only: anything raised after cells ran is not "bad input".
        fail(str(err))
    except SweepError as err:
        fail(str(err), code=1)
    except KeyboardInterrupt:
        if live:
            progress.stop()
        typer.echo(f"membench: interrupted; finished cells are saved in {out}; rerun the same "
                   "command to resume", err=True)
        raise typer.Exit(130) from None
    console.print(summary_table(rows, f"{len(rows)} cell(s) {where}"))
    typer.echo(f"membench: results in {out}")


@app.command()
def run(
    arch: str = ARCH, res: str = RES, batch: str = BATCH, method: str = METHOD,
    micro_batch: str = MICRO, classes: int = CLASSES, warmup: int = WARMUP, steps: int = STEPS,
    seed: int = SEED, device: str = DEVICE, device_mem: str = DEVICE_MEM,
) -> None:
    """Measure one cell in this process and print a readable summary."""
    from ..protocol import run_cell

    explicit = {"arch": arch, "res": res, "batch": batch, "method": method,
                "micro_batch": micro_batch, "classes": classes, "warmup": warmup, "steps": steps,
                "seed": seed, "device": device, "device_mem": device_mem}
    settings = settings_or_fail([], explicit)[0]
    cells = build_cells(*(settings[key] for key in GRID_KEYS))
    if len(cells) != 1:
        fail(f"run measures one cell, these options give {len(cells)}; use `membench sweep`")
    result = run_cell(cells[0], open_device(settings["device"]))
    typer.echo(describe(result))
    if result.status != "ok":
        raise typer.Exit(1)


@list_app.command("profiles")
def list_profiles() -> None:
    """Every profile `--profile NAME` finds (./profiles, then the membench checkout's)."""
    table = Table(title="profiles", caption="combine with --profile A --profile B: later ones "
                  "override earlier ones key by key; command-line flags override all")
    table.add_column("profile")
    table.add_column("description")
    table.add_column("settings")
    table.add_column("file")
    for name, path in available_profiles().items():
        try:
            loaded = load_profile(str(path))
        except ProfileError as err:
            table.add_row(name, f"[red]unreadable: {err}[/red]", "", str(path))
            continue
        settings = "; ".join(f"{k}={v}" for k, v in loaded.settings.items())
        table.add_row(name, loaded.description, settings, str(path))
    Console(width=200).print(table)
