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
    if result.stability:
        lines.append(f"  timing      {result.stability}: {result.stability_reason}")
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
        parts.append(f"median {median:.1f} ms, {throughput_text(result, '.0f')}")
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
        # what tells cells apart is never cut to fit ('plain-…' was plain-net and plain-stack)
        longest = max((len(_identity(result, name)) for result in results), default=0)
        table.add_column(name, min_width=max(len(name), longest), overflow="fold")
    rates = ("samples/s", "tokens/s") if tokens else ("imgs/s",)
    for name in ("median ms", *rates, "peak", "GFLOP/step", "MFU"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("timing", no_wrap=True)
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
            _identity(result, "input" if tokens else "res"),
            str(cell.batch),
            " ".join(tooling_parts(cell)) or "-",
            result.status,
            "-" if median is None else f"{median:.1f}",
            *shown_rates,
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
    if column == "input":  # a sweep with token cells: each cell's input, r32 or s1024
        return f"s{cell.seq}" if cell.takes_tokens else f"r{cell.res}"
    return str(result.status if column == "status" else getattr(cell, column))


def tooling_parts(cell) -> list[str]:
    """What tells cells of one method, arch, res and batch apart: ['bf16', 'optim-host', 'mb16']."""
    return [*cell.tooling(), *([f"mb{cell.micro_batch}"] if cell.micro_batch is not None else [])]


def default_out_dir(profiles: list[str]) -> Path:
    """A stable folder per profile combination, so rerunning the same command resumes."""
    if profiles:
        return Path("results") / "+".join(Path(ref).stem for ref in profiles)
    return Path("results") / "sweep"
