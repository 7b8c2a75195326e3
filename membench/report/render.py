"""report.md: its text from loaded cells and figures, and writing a report folder."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from .. import __version__
from ..durable import signals_deferred
from ..schema import ESTIMATED, OK
from ..timeline.figure import cut_timeline_notes, timeline_figures
from ..units import format_size, slug
from .crossover import crossover_markdown
from .figures import ReportFigure, make_figures
from .layout import device_groups, panel_title, panels
from .load import LoadedCells, load_cells
from .multi_device import multi_device_markdown
from .paper import PAPER_SOURCE, paper_tables, tooling_tables
from .tables import best_table, failures_table, panel_table

REPORT_FILE = "report.md"
FIGURES_DIR = "figures"
STAGING_PREFIX = ".membench-report-"  # the new report, until it is complete
FIGURE_ALT = {
    "frontier": "memory-throughput frontier",
    "batch": "memory and throughput against batch",
    "breakdown": "memory breakdown",
    "crossover": "peak memory against depth",
    "timeline": "memory over one step",
    "estimates": "estimated memory of every configuration",
}
READING_NOTE = (
    "Each device has its own section; rows from different devices are never combined. Memory is "
    "the peak allocated by training tensors (`memory from`: `tracker` on the CPU, "
    "`cuda_allocator` on CUDA, `estimate` for predictions); 1 GiB = 2^30 bytes. Ratios are to "
    "`bp` at the same arch, resolution, batch and device. How to read the figures: "
    "`docs/report.md`."
)


def default_report_dir(inputs: Sequence[Path], now: dt.datetime | None = None) -> Path:
    """``reports/<name>``: the input folders' names joined by '+', or a timestamp when the
    inputs have no useful name (e.g. '.')."""
    names = []
    for path in map(Path, inputs):
        if path.name == "cells.csv":
            path = path.parent
        raw = path.resolve().name if path.name not in ("", ".", "..") else ""
        name = slug(raw, "unknown-gpu") if re.search(r"[a-z0-9]", raw.lower()) else ""
        if name and name not in names:
            names.append(name)
    name = "+".join(names)
    if len(name) > 60:
        name = f"{names[0]}+{len(names) - 1}-more"
    if not name:
        name = f"report-{(now or dt.datetime.now()):%Y%m%d-%H%M%S}"
    return Path("reports") / name


def display_path(path: Path) -> str:
    """A path relative to the current directory where it lies below it, else as given."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def summary_counts(rows: pd.DataFrame) -> str:
    """'4 ok, 1 estimated, 1 OOM': the rows' kinds, those present only."""
    counts = rows["kind"].value_counts()
    parts = [
        f"{counts.get(k, 0)} {name}"
        for k, name in (
            ("ok", "ok"),
            ("estimated", "estimated"),
            ("oom", "OOM"),
            ("failed", "error/timeout"),
        )
        if counts.get(k, 0)
    ]
    return ", ".join(parts)


def replaced_text(replaced: Sequence[tuple[str, str, int]]) -> str:
    """Which file's rows were left out for which file's later runs: '35 of
    `results/reference/cells.csv`, run again later in `results/quick/cells.csv`'."""
    parts = []
    for old, new, count in replaced:
        where = (
            "run again later in the same file"
            if old == new
            else f"run again later in `{display_path(Path(new))}`"
        )
        parts.append(f"{count} of `{display_path(Path(old))}`, {where}")
    return "; ".join(parts)


def _any_plotted(cells: pd.DataFrame) -> bool:
    return bool(cells["kind"].isin(["ok", "estimated"]).any())


def _preamble(loaded: LoadedCells, budgets_bytes: Sequence[int], now: dt.datetime) -> list[str]:
    """The title, where the rows came from, what was shown and left out, how to read it."""
    cells = loaded.cells
    lines = ["# membench report", ""]
    lines.append(
        f"Generated {now:%Y-%m-%d %H:%M %Z} by membench "
        f"{__version__} from {len(loaded.sources)} results file(s):"
    )
    lines += [f"- `{display_path(path)}` ({n} row(s))" for path, n in loaded.sources]
    lines.append("")
    lines.append(f"{len(cells)} cell(s) shown: {summary_counts(cells)}.")
    if loaded.superseded:
        lines.append(
            f"Where a cell was run more than once on the same device, only its latest run "
            f"(by `started_at`) is shown: {loaded.superseded} earlier row(s) left out"
            + (f": {replaced_text(loaded.replaced)}." if loaded.replaced else ".")
        )
    else:
        lines.append(
            "No cell was run more than once on the same device; had one been, only its "
            "latest run (by `started_at`) would be shown."
        )
    lines += loaded.notes
    if budgets_bytes:
        lines.append(
            "Budgets asked for with `--budget`: "
            + ", ".join(format_size(b) for b in budgets_bytes)
            + "."
        )
    if not _any_plotted(cells):
        lines += [
            "",
            "**No cell succeeded**: every row is an OOM, an error or a timeout, so there "
            "is nothing to plot. The failures are listed below.",
        ]
    return lines + ["", READING_NOTE, ""]


def _panel_section(
    title: str, label: str, panel: pd.DataFrame, figures: list[ReportFigure]
) -> list[str]:
    lines = [f"### {title}", ""]
    if not figures:
        lines += ["No cell of this configuration has a peak to plot.", ""]
    for figure in figures:
        lines += [
            f"![{FIGURE_ALT[figure.kind]}, {title}, {label}]({FIGURES_DIR}/{figure.filename})",
            "",
        ]
    lines += [panel_table(panel), ""]
    best = best_table(panel)
    if best is not None:
        lines += [
            "Best configuration of each method family in this panel (cells that fit):",
            "",
            best,
            "",
        ]
    return lines


def _device_section(
    label: str, rows: pd.DataFrame, by_panel: dict[tuple[str, str], list[ReportFigure]]
) -> list[str]:
    """One device: its panels (figures and table), its failed cells, the paper beside it."""
    lines = [f"## {label}", "", f"{len(rows)} cell(s): {summary_counts(rows)}.", ""]
    for key, panel in panels(rows):
        title = panel_title(*key)
        lines += _panel_section(title, label, panel, by_panel.get((label, title), []))
    if (~rows["status"].isin([OK, ESTIMATED])).any():
        lines += [f"### Cells without a measurement on {label}", "", failures_table(rows), ""]
    tables = paper_tables(rows)
    if tables:
        lines += [
            f"### Beside the paper on {label}",
            "",
            f"Source: {PAPER_SOURCE}. The hardware differs, so compare the ratios to "
            "bp, not the absolute figures.",
            "",
        ]
        for heading, table in tables + tooling_tables(rows):
            lines += [f"**{heading}**", "", table, ""]
    return lines


def render_report(
    loaded: LoadedCells,
    figures: list[ReportFigure],
    budgets_bytes: Sequence[int] = (),
    now: dt.datetime | None = None,
) -> str:
    """report.md's text for loaded cells and their figures (saved under figures/). ``now`` is
    the time it says it was generated (default: now, in the local time zone)."""
    now = now if now is not None else dt.datetime.now().astimezone()
    lines = _preamble(loaded, budgets_bytes, now)
    by_panel: dict[tuple[str, str], list[ReportFigure]] = {}
    for figure in figures:
        by_panel.setdefault((figure.device, figure.panel), []).append(figure)
    for label, _, rows in device_groups(loaded.cells):
        lines += _device_section(label, rows, by_panel)
    lines += crossover_markdown(loaded.cells, by_panel)
    lines += multi_device_markdown(loaded.cells)
    return "\n".join(lines).rstrip() + "\n"


def save_figures(figures: list[ReportFigure], figures_dir: Path) -> None:
    """Save the figures as PNGs, replacing every PNG of an earlier report there."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    for stale in figures_dir.glob("*.png"):
        stale.unlink()
    for figure in figures:
        figure.figure.savefig(figures_dir / figure.filename)


def add_throughput_bound(
    loaded: LoadedCells, gpu_name: str, peaks: dict[str, tuple[float, str]]
) -> None:
    """Give every estimated row an upper bound on imgs/s on ``gpu_name`` (``bound_imgs_per_s``:
    peak x batch / FLOPs per step, the peak for the row's precision: ``peaks`` maps a cell
    precision to (TFLOP/s, the datasheet precision it is), which the figures and tables show
    where nothing was timed."""
    cells = loaded.cells
    estimated = cells["is_estimate"] & cells["flops_per_step"].gt(0)
    peak = cells["precision"].map({p: tflops for p, (tflops, _) in peaks.items()})
    cells["bound_imgs_per_s"] = (peak * 1e12 * cells["batch"] / cells["flops_per_step"]).where(
        estimated
    )
    used = ", ".join(
        f"{tflops:g} TFLOP/s for {p} cells ({label})"
        for p, (tflops, label) in peaks.items()
        if p in set(cells.loc[estimated, "precision"])
    )
    loaded.notes.append(
        f"Throughput of estimates is bounded for {gpu_name} at its datasheet peak, {used}: imgs/s "
        "\u2264 peak \u00d7 batch \u00f7 FLOPs per step, drawn hollow and labelled as a bound; "
        "no real step runs at peak."
    )


def build_report(
    inputs: Sequence[Path],
    out_dir: Path,
    budgets_bytes: Sequence[int] = (),
    on_warning: Callable[[str], None] | None = None,
    now: dt.datetime | None = None,
    gpu: tuple[str, dict[str, tuple[float, str]]] | None = None,
) -> Path:
    """Write ``report.md`` and ``figures/*.png`` for every cells.csv at or under ``inputs``.

    ``budgets_bytes`` adds memory-budget lines to the figures. ``gpu`` (name, {cell precision:
    (peak TFLOP/s, datasheet precision)}) bounds the throughput of estimates on that GPU. An
    earlier report in the same folder is replaced once the new one is complete
    (``write_report_folder``). ``now`` is the generation time written in the report (default
    now). Returns report.md's path. Raises ResultsError when there is nothing to report; a
    report whose every row failed is written and says so (and ``on_warning`` is told).
    """
    loaded = load_cells(inputs)
    if gpu is not None:
        add_throughput_bound(loaded, *gpu)
    budgets = sorted({int(b) for b in budgets_bytes})
    across = [(old, new, n) for old, new, n in loaded.replaced if old != new]
    if across and on_warning:  # another folder's rows hidden by these: never without a word
        on_warning(
            f"{sum(n for *_, n in across)} row(s) left out for later runs of the same cells on "
            f"the same device: {replaced_text(across)} (report the folders apart to see both)"
        )
    for note in cut_timeline_notes(loaded.cells):
        loaded.notes.append(note)
        if on_warning:
            on_warning(note)
    figures = make_figures(loaded.cells, budgets) + timeline_figures(loaded.cells)
    text = render_report(loaded, figures, budgets, now=now)
    report = write_report_folder(Path(out_dir), text, figures)
    if on_warning and not _any_plotted(loaded.cells):
        on_warning("no cell succeeded (all OOM, error or timeout); the report lists the failures")
    return report


def write_report_folder(out_dir: Path, text: str, figures: list[ReportFigure]) -> Path:
    """Write report.md and figures/ into ``out_dir``, replacing an earlier report only once the
    new one is complete: it is written into a staging folder inside ``out_dir`` and swapped in
    by two renames with Ctrl-C held (``durable.signals_deferred``), so an interrupt, an error or
    a full disk at any point leaves the earlier report whole (its report.md never links to a
    figure that is gone) and nothing of the new one. Other files in ``out_dir`` are kept, and
    so are files other than PNGs in figures/. Returns report.md's path."""
    created = [path for path in (*reversed(out_dir.parents), out_dir) if not path.exists()]
    out_dir.mkdir(parents=True, exist_ok=True)
    for leftover in out_dir.glob(STAGING_PREFIX + "*"):  # a staging folder a kill left
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    swapped = False
    try:
        save_figures(figures, staging / FIGURES_DIR)
        (staging / REPORT_FILE).write_text(text, encoding="utf-8")
        with signals_deferred():
            _swap_in(staging, out_dir)
            swapped = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not swapped:  # a report folder this call made holds nothing: it goes too
            for path in reversed(created):
                with contextlib.suppress(OSError):
                    path.rmdir()
    return out_dir / REPORT_FILE


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Put the staged figures/ and report.md in place of the earlier ones (renames within one
    folder); the earlier figures go into the staging folder, deleted after."""
    old, new = out_dir / FIGURES_DIR, staging / FIGURES_DIR
    if old.is_dir():
        for kept in old.iterdir():  # not membench's figures: carried over
            if kept.suffix != ".png" and not (new / kept.name).exists():
                kept.rename(new / kept.name)
        old.rename(staging / "earlier-figures")
    new.rename(old)
    os.replace(staging / REPORT_FILE, out_dir / REPORT_FILE)
