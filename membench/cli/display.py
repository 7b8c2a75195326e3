"""What the measuring commands print: a one-cell summary, a line per finished cell, the live
progress bar (or plain lines when stdout is not a terminal), and the end-of-sweep table."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ..execute.sweep import SweepProgress
from ..schema import ESTIMATE_DEVICE_NAME, MEASURED_STATUSES, OK, CellResult
from ..stability import OTHERS_THRESHOLD, is_unstable
from ..units import format_gib


def describe(result: CellResult) -> str:
    """A readable one-cell summary."""
    cell = result.cell
    head = f"{cell.cell_id} on {result.device} ({result.device_name}): {result.status}"
    if result.status != OK:
        return f"{head}\n  {result.error}"
    stats = result.summary_stats()
    lines = [
        head,
        f"  step time   median {stats['median']:.1f} ms  (p10 {stats['p10']:.1f}, p90 "
        f"{stats['p90']:.1f}, mean {stats['mean']:.1f}) over {len(result.step_ms)} steps",
        f"  throughput  {result.imgs_per_s:.1f} imgs/s",
        f"  compute     {flops_text(result)}",
        f"  peak memory {format_gib(result.peak_allocated_bytes)} allocated "
        f"(source: {result.memory_source})",
    ]
    if result.breakdown:
        parts = ", ".join(
            f"{k.removesuffix('_bytes').replace('_', ' ')} {v / 2**20:.1f} MiB"
            for k, v in result.breakdown.as_columns().items()
        )
        lines.append(f"  breakdown   {parts}")
    if result.host_peak_rss_bytes:
        lines.append(f"  host RSS    {format_gib(result.host_peak_rss_bytes, 2)} peak")
    if result.stability:
        lines.append(f"  timing      {result.stability}: {result.stability_reason}")
    return "\n".join(lines)


def flops_text(result: CellResult) -> str:
    """ "1,470 GFLOP per step, 0.35 TFLOP/s achieved, MFU 12.3% of 2.9 TFLOP/s (...)"."""
    if result.flops_per_step is None:
        return "FLOPs not counted (the runner cannot run on fake tensors)"
    parts = [f"{result.flops_per_step / 1e9:,.3g} GFLOP per step"]
    if result.achieved_tflops is not None:
        parts.append(f"{result.achieved_tflops:.3g} TFLOP/s achieved")
    if result.mfu is not None:
        parts.append(
            f"MFU {significant(result.mfu * 100)}% of {result.peak_tflops:.3g} TFLOP/s "
            f"({result.peak_source}, {result.peak_precision})"
            + (
                f", on a shared CPU (others used {result.cpu_others:.0%} of it)"
                if shared_cpu(result)
                else ""
            )
        )
    return ", ".join(parts)


def cell_line(index: int, total: int, result: CellResult, wall_s: float, host: bool = False) -> str:
    """One line per finished cell (``index``: how many finished before it), for logs and above
    the progress bar; ``host`` names the machine it ran on (a sweep on a Ray cluster)."""
    where = f" on {result.host}" if host and result.host else ""
    head = f"[{index + 1}/{total}] {result.cell.cell_id}{where} {result.status}"
    if result.status not in MEASURED_STATUSES:
        return f"{head} ({wall_s:.1f} s): {result.error}"
    parts = []
    median = result.summary_stats()["median"]
    if median is not None:
        parts.append(f"median {median:.1f} ms, {result.imgs_per_s:.0f} imgs/s")
    if result.peak_allocated_bytes is not None:
        parts.append(f"peak {format_gib(result.peak_allocated_bytes)}")
    if result.mfu is not None:
        parts.append(f"MFU {significant(result.mfu * 100)}%{shared_mark(result)}")
    if is_unstable(result):
        parts.append(f"unstable: {result.stability_reason}")
    return f"{head} ({wall_s:.1f} s): {', '.join(parts)}"


def shared_cpu(result: CellResult) -> bool:
    """Whether a CPU cell's timed steps shared the machine (other processes' CPU time past
    ``stability.OTHERS_THRESHOLD``): its MFU, and the calibrated peak behind it, moved with
    the load."""
    others = result.cpu_others
    return result.device.startswith("cpu") and others is not None and others >= OTHERS_THRESHOLD


def shared_mark(result: CellResult) -> str:
    """'*' after the MFU of a cell measured on a shared CPU (``shared_cpu``)."""
    return "*" if result.mfu is not None and shared_cpu(result) else ""


class CliProgress(SweepProgress):
    """What both progress displays share: the device (and every device model) the sweep named,
    for the summary table, and how many cells finished, in the order they finish."""

    def __init__(self):
        self.total = self.finished = 0
        self.device = ""
        self.device_names: list[str] = []
        self.hosts: set[str] = set()

    @property
    def device_name(self) -> str:
        return ", ".join(self.device_names)

    def device_ready(self, device, device_name):
        self.device = device
        self.device_names.append(device_name)

    def finished_line(self, result: CellResult, wall_s: float) -> str:
        """The next finished cell's line; it names hosts once cells have run on two of them."""
        self.hosts.add(result.host)
        self.finished += 1
        return cell_line(self.finished - 1, self.total, result, wall_s, host=len(self.hosts) > 1)

    @property
    def where(self) -> str:
        """'cpu (AMD EPYC)'; an estimate's device alone ('cuda (estimate)'): its name says no
        more."""
        names = [n for n in self.device_names if n != ESTIMATE_DEVICE_NAME]
        return f"{self.device} ({', '.join(names)})" if names else self.device

    def started_line(self, total, to_run, out_dir) -> str:
        return (
            f"membench: {total} cell(s) on {self.where}, "
            f"{total - to_run} already finished, {to_run} to run -> {out_dir}"
        )

    def stop(self) -> None:
        """End the display early (Ctrl-C)."""

    def note(self, text: str) -> None:
        typer.echo(f"membench: note: {text}", err=True)


class PlainProgress(CliProgress):
    """One line per event on stdout: what CI logs and pipes get."""

    def sweep_started(self, total, to_run, out_dir):
        self.total = to_run
        typer.echo(self.started_line(total, to_run, out_dir))

    def cell_finished(self, index, result, wall_s):
        typer.echo(self.finished_line(result, wall_s))
        sys.stdout.flush()


class RichProgress(CliProgress):
    """A live bar on a terminal: cells done of total, elapsed and time left, and below it one
    spinner line per cell running now (several at once on a Ray cluster)."""

    def __init__(self, console: Console):
        super().__init__()
        self.console = console
        self.running = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
        )  # never started: listed below
        self.progress = _BarAndRunning(
            self.running,
            SpinnerColumn(),
            TextColumn("{task.fields[current]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = None
        self.cells: dict[int, object] = {}  # index of a running cell -> its spinner line

    def sweep_started(self, total, to_run, out_dir):
        self.total = to_run
        self.console.print(self.started_line(total, to_run, out_dir), markup=False, highlight=False)
        self.progress.start()
        self.task = self.progress.add_task("sweep", total=to_run, current="starting")

    def cell_started(self, index, cell):
        self.cells[index] = self.running.add_task(f"  running {cell.cell_id}", total=None)
        self.progress.update(self.task, current=f"{len(self.cells)} running")

    def cell_finished(self, index, result, wall_s):
        self.progress.console.print(
            self.finished_line(result, wall_s), markup=False, highlight=False
        )
        if index in self.cells:
            self.running.remove_task(self.cells.pop(index))
        self.progress.update(self.task, current=f"{len(self.cells)} running")
        self.progress.advance(self.task)

    def sweep_finished(self, results):
        self.progress.update(self.task, current="done")
        self.progress.stop()

    def stop(self) -> None:
        self.progress.stop()


class _BarAndRunning(Progress):
    """The sweep's bar, then the tasks of ``running`` (a Progress never started itself): one
    spinner line per cell running now."""

    def __init__(self, running: Progress, *columns, **kwargs):
        self.running_cells = running  # before Progress.__init__, which renders once
        super().__init__(*columns, **kwargs)

    def get_renderables(self):
        yield from super().get_renderables()
        if self.running_cells.tasks:
            yield self.running_cells.make_tasks_table(self.running_cells.tasks)


def progress_display(console: Console) -> CliProgress:
    """The live bar on a terminal, plain lines otherwise."""
    return RichProgress(console) if sys.stdout.isatty() else PlainProgress()


def summary_table(results: list[CellResult], title: str) -> Table:
    """The end-of-sweep table: one line per cell."""
    table = Table(title=title)
    for name in ("method", "arch", "res", "batch", "tooling", "status"):
        # what tells cells apart is never cut to fit ('plain-…' was plain-net and plain-stack)
        longest = max((len(_identity(result, name)) for result in results), default=0)
        table.add_column(name, min_width=max(len(name), longest), overflow="fold")
    for name in ("median ms", "imgs/s", "peak", "GFLOP/step", "MFU"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("timing", no_wrap=True)
    for result in results:
        cell, median, imgs = result.cell, result.summary_stats()["median"], result.imgs_per_s
        peak, flops, mfu = result.peak_allocated_bytes, result.flops_per_step, result.mfu
        table.add_row(
            cell.method,
            cell.arch,
            str(cell.res),
            str(cell.batch),
            " ".join(tooling_parts(cell)) or "-",
            result.status,
            "-" if median is None else f"{median:.1f}",
            "-" if imgs is None else f"{imgs:.0f}",
            format_gib(peak),
            "-" if flops is None else significant(flops / 1e9),
            "-" if mfu is None else f"{significant(mfu * 100)}%{shared_mark(result)}",
            result.stability or "-",
        )
    unstable = [r for r in results if is_unstable(r)]
    shared = [r for r in results if shared_mark(r)]
    notes = []
    if unstable:
        notes.append(
            f"{len(unstable)} cell(s) unstable (timing: their medians may be noise), e.g. "
            f"{unstable[0].cell.cell_id}: {unstable[0].stability_reason}"
        )
    if shared:
        worst = max(r.cpu_others for r in shared)
        notes.append(
            f"* MFU on a shared CPU: other processes used up to {worst:.0%} of it during the "
            "timed steps, and the peak it is held against was calibrated on the same CPU"
        )
    if notes:
        table.caption = "\n".join(notes)
        table.caption_justify = "left"
    return table


def significant(value: float) -> str:
    """Three significant digits, as a column of figures of any size needs them ('1,470',
    '12.3', '0.0123'), never '0.0' for a small one."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def print_whole(console: Console, table: Table) -> None:
    """Print ``table`` at its natural width where the console is narrower (a pipe, a log): a
    table squeezed to fit cuts the figures and names it shows."""
    needed = Console(width=10_000).measure(table).maximum  # unconstrained: its natural width
    width = console.width
    console.width = max(width, needed)
    try:
        console.print(table)
    finally:
        console.width = width


def _identity(result: CellResult, column: str) -> str:
    """A summary row's text in one of the columns that name the cell."""
    cell = result.cell
    if column == "tooling":
        return " ".join(tooling_parts(cell)) or "-"
    return str(result.status if column == "status" else getattr(cell, column))


def tooling_parts(cell) -> list[str]:
    """What tells cells of one method, arch, res and batch apart: ['bf16', 'optim-host', 'mb16']."""
    return [*cell.tooling(), *([f"mb{cell.micro_batch}"] if cell.micro_batch is not None else [])]


def default_out_dir(profiles: list[str]) -> Path:
    """A stable folder per profile combination, so rerunning the same command resumes."""
    if profiles:
        return Path("results") / "+".join(Path(ref).stem for ref in profiles)
    return Path("results") / "sweep"
