"""``membench compare``: parse, call membench.compare, print; exit 1 on a regression."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from ..units import format_size
from .common import reports_input_errors

if TYPE_CHECKING:
    from ..compare import Comparison

REGRESSION_EXIT = 1
# membench.compare's defaults (tests/cli/test_cli.py holds them equal): importing it (scipy, pandas)
# only to show them in the options' help would cost every `membench` command a second.
DEFAULT_TPUT_DROP_PCT, DEFAULT_ALPHA = 10.0, 0.01


def _size(value: int | None) -> str:
    return "-" if value is None else format_size(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}%"


def render(comparison: Comparison, console: Console) -> None:
    """Print the table of matched cells, the unmatched cells and the verdict."""
    table = Table(title=f"{comparison.baseline} -> {comparison.new}", show_lines=False)
    for column in (
        "cell",
        "device",
        "status",
        "peak base",
        "peak new",
        "mem",
        "tput",
        "runs",
        "p",
        "median ratio CI",
        "verdict",
    ):
        table.add_column(
            column, justify="right" if column not in ("cell", "device", "verdict") else "left"
        )
    for row in comparison.rows:
        timing = row.timing
        ci = f"{timing.ratio_ci[0]:.3f}-{timing.ratio_ci[1]:.3f}" if timing.ratio_ci else "-"
        p = f"{timing.p_value:.2g}" if timing.p_value is not None else "-"
        runs = f"{timing.n_baseline}/{timing.n_new}" if timing.n_baseline else "-"
        verdict = "[red]REGRESSED[/red]" if row.regressed else "ok"
        if not row.regressed and any(note.startswith("timing unstable") for note in row.notes):
            verdict = "ok (unstable)"
        status = (
            row.status_new
            if row.status_baseline == row.status_new
            else (f"{row.status_baseline}->{row.status_new}")
        )
        table.add_row(
            row.cell_id,
            f"{row.device} {row.memory_source}".strip(),
            status,
            _size(row.peak_baseline),
            _size(row.peak_new),
            _pct(row.mem_change_pct),
            _pct(timing.tput_change_pct),
            runs,
            p,
            ci,
            verdict,
        )
    console.print(table)

    for row in comparison.regressions:
        for reason in row.reasons:
            console.print(f"REGRESSION {row.cell_id} ({row.device}): {reason}", markup=False)
    for row in comparison.rows:
        for note in row.notes + ([row.timing.note] if row.timing.note else []):
            console.print(f"note {row.cell_id}: {note}", markup=False)
    missing_label = "MISSING" if not comparison.allow_missing else "missing (allowed)"
    for cell in comparison.only_in_baseline:
        console.print(
            f"{missing_label} in new: {cell['cell_id']} ({cell['device']}, "
            f"{cell['device_name']}, {cell['status']})",
            markup=False,
        )
    for cell in comparison.only_in_new:
        console.print(
            f"only in new: {cell['cell_id']} ({cell['device']}, {cell['device_name']}, "
            f"{cell['status']})",
            markup=False,
        )
    for note in comparison.notes:
        console.print(f"note: {note}", markup=False)
    regressions, missing = len(comparison.regressions), len(comparison.only_in_baseline)
    summary = (
        f"{len(comparison.rows)} matched, {regressions} regressed, {missing} missing in new, "
        f"{len(comparison.only_in_new)} only in new"
    )
    console.print(("PASS: " if comparison.passed else "FAIL: ") + summary, markup=False)


@reports_input_errors
def compare(
    baseline: Path = typer.Argument(..., help="Baseline results folder or cells.csv."),
    new: Path = typer.Argument(..., help="New results folder or cells.csv."),
    max_mem_increase: float = typer.Option(
        None,
        "--max-mem-increase",
        metavar="PCT",
        help="Allowed peak-memory increase in percent; default 0 for tracker/estimate, 1 for the "
        "CUDA allocator.",
    ),
    max_tput_drop: float = typer.Option(
        DEFAULT_TPUT_DROP_PCT,
        "--max-tput-drop",
        metavar="PCT",
        help="Allowed throughput drop in percent; fails only if also significant against "
        "run-to-run noise (cells swept with --rounds 2 or more on one side at least).",
    ),
    alpha: float = typer.Option(
        DEFAULT_ALPHA, "--alpha", help="Significance level of the timing test."
    ),
    ignore_timing: bool = typer.Option(False, "--ignore-timing", help="Gate memory only."),
    allow_missing: bool = typer.Option(
        False, "--allow-missing", help="Do not fail when a baseline cell is absent from NEW."
    ),
) -> None:
    """Compare NEW against BASELINE cell by cell; exit 1 if any cell regressed past a threshold."""
    from ..compare import compare_results

    comparison = compare_results(
        baseline,
        new,
        max_mem_increase,
        None if ignore_timing else max_tput_drop,
        alpha=alpha,
        allow_missing=allow_missing,
    )
    console = Console(width=None if Console().is_terminal else 160)
    render(comparison, console)
    if not comparison.passed:
        raise typer.Exit(REGRESSION_EXIT)
