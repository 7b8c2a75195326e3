"""What the measuring commands print: a one-cell summary, a line per finished cell, the
end-of-sweep table, and the bar of the commands that estimate (``plan``, ``fit``). The sweep's
live display is ``membench.cli.progress``'s; nothing here imports the sweep engine (pandas), so
``membench --help`` stays light."""

from __future__ import annotations

from pathlib import Path

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

from ..schema import MEASURED_STATUSES, OK, CellResult
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
        f"  throughput  {throughput_text(result, '.1f')}",
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
    return "\n".join(lines)


def throughput_text(result: CellResult, spec: str) -> str:
    """'1234 imgs/s' for an image cell; '12 sequences/s, 12288 tokens/s' for a token cell."""
    if not result.cell.takes_tokens:
        return f"{result.imgs_per_s:{spec}} imgs/s"
    return f"{result.samples_per_s:{spec}} sequences/s, {result.tokens_per_s:{spec}} tokens/s"


def flops_text(result: CellResult) -> str:
    """ "1,470 GFLOP per step, 0.35 TFLOP/s achieved, MFU 12.3% of 2.9 TFLOP/s (...)"."""
    if result.flops_per_step is None:
        return "FLOPs not counted (the runner cannot run on fake tensors)"
    parts = [f"{result.flops_per_step / 1e9:,.3g} GFLOP per step"]
    if result.achieved_tflops is not None:
        parts.append(f"{result.achieved_tflops:.3g} TFLOP/s achieved")
    if result.mfu is not None:
        parts.append(
            f"MFU {result.mfu:.1%} of {result.peak_tflops:.3g} TFLOP/s "
            f"({result.peak_source}, {result.peak_precision})"
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
        parts.append(f"median {median:.1f} ms, {throughput_text(result, '.0f')}")
    if result.peak_allocated_bytes is not None:
        parts.append(f"peak {format_gib(result.peak_allocated_bytes)}")
    if result.mfu is not None:
        parts.append(f"MFU {result.mfu:.1%}")
    return f"{head} ({wall_s:.1f} s): {', '.join(parts)}"


class EstimatesBar:
    """The bar of a command that estimates many cells (``plan``, ``fit``): done of total,
    elapsed and time left, on stderr while it is a terminal (stdout holds the command's table,
    so a pipe or a file gets the table alone); nothing otherwise. ``update(done, total, _)``
    is the library's progress callback."""

    def __init__(self, what: str, console: Console | None = None):
        self.what = what
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None

    def __enter__(self) -> EstimatesBar:
        if self.console.is_terminal:
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn(self.what),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("elapsed"),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.progress.start()
        return self

    def update(self, done: int, total: int, result: object = None) -> None:
        if self.progress is None:
            return
        if self.task is None:
            self.task = self.progress.add_task(self.what, total=total)
        self.progress.update(self.task, completed=done, total=total)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


def summary_table(results: list[CellResult], title: str) -> Table:
    """The end-of-sweep table: one line per cell."""
    table = Table(title=title)
    # A sweep with token cells names each input (r32, s1024) and counts samples and tokens; an
    # image sweep's table is as it always was.
    tokens = any(result.cell.takes_tokens for result in results)
    for name in ("method", "arch", "input" if tokens else "res", "batch", "tooling", "status"):
        table.add_column(name)
    rates = ("samples/s", "tokens/s") if tokens else ("imgs/s",)
    for name in ("median ms", *rates, "peak GiB", "GFLOP/step", "MFU"):
        table.add_column(name, justify="right")
    for result in results:
        cell, median, imgs = result.cell, result.summary_stats()["median"], result.imgs_per_s
        peak, flops, mfu = result.peak_allocated_bytes, result.flops_per_step, result.mfu
        per_token = result.tokens_per_s
        shown_rates = ["-" if imgs is None else f"{imgs:.0f}"]
        if tokens:
            shown_rates.append("-" if per_token is None else f"{per_token:.0f}")
        table.add_row(
            cell.method,
            cell.arch,
            (f"s{cell.seq}" if cell.takes_tokens else f"r{cell.res}") if tokens else str(cell.res),
            str(cell.batch),
            " ".join(tooling_parts(cell)) or "-",
            result.status,
            "-" if median is None else f"{median:.1f}",
            *shown_rates,
            "-" if peak is None else f"{peak / 2**30:.3f}",
            "-" if flops is None else f"{flops / 1e9:,.1f}",
            "-" if mfu is None else f"{mfu:.1%}",
        )
    return table


def tooling_parts(cell) -> list[str]:
    """What tells cells of one method, arch, res and batch apart: ['bf16', 'optim-host', 'mb16']."""
    return [*cell.tooling(), *([f"mb{cell.micro_batch}"] if cell.micro_batch is not None else [])]


def default_out_dir(profiles: list[str]) -> Path:
    """A stable folder per profile combination, so rerunning the same command resumes."""
    if profiles:
        return Path("results") / "+".join(Path(ref).stem for ref in profiles)
    return Path("results") / "sweep"
