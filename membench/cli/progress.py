"""The sweep's live display: a bar with the cells done, elapsed time and time left, and one
spinner line per cell running now, on a terminal; one plain line per event otherwise."""

from __future__ import annotations

import sys

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

from ..execute.sweep import SweepProgress
from ..schema import ESTIMATE_DEVICE_NAME, CellResult
from .display import cell_line


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
