"""``membench sweep`` and ``membench run``: parse the options into a SweepConfig and measure."""

from __future__ import annotations

import typer
from rich.console import Console

from ..config import build_config
from ..errors import INTERRUPTED, InputError, Terminated
from ..schema import MEASURED_STATUSES
from .common import comma_list, fail, out_folder, reports_input_errors, warn
from .display import default_out_dir, describe, print_whole, summary_table
from .options import setting_options


@reports_input_errors
@setting_options("sweep")
def sweep(
    profile: list[str] = typer.Option(
        None,
        "--profile",
        "-p",
        help="Profile name or .toml path (repeat to combine; later ones win, flags win over all).",
    ),
    out: str = typer.Option(
        None, "--out", help="Results folder. Default: results/PROFILE or results/sweep."
    ),
    redo: bool = typer.Option(
        False, "--redo", help="Run every cell again, replacing finished rows."
    ),
    settings: dict = None,
) -> None:
    """Measure every cell of the grid (arch x res x batch x method x ...); resumes an interrupted
    sweep in --out."""
    profiles = comma_list(profile, "--profile")
    config = build_config(profiles, **settings)
    out = default_out_dir(profiles) if out is None else out_folder(out)
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file, not a folder")
    options = config.options
    if not options.estimate and options.executor == "local":
        from ..measure.devices import resolve_device

        resolve_device(options.device)  # a device this machine lacks is bad input, before any cell

    from ..execute.sweep import SweepError  # pandas and the sweep engine: only when one runs
    from ..execute.sweep import sweep as run_config
    from ..resume import grid_rows, read_result_row
    from .progress import progress_display

    console = Console(width=max(Console().width, 100))
    progress = progress_display(console)
    try:
        run_config(config, out, redo=redo, progress=progress)
    except SweepError as err:
        fail(str(err), code=1)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (Terminated)
        progress.stop()
        typer.echo(
            f"membench: interrupted; finished cells are saved in {out}; rerun the same "
            "command to resume",
            err=True,
        )
        raise typer.Exit(Terminated.EXIT if isinstance(err, Terminated) else INTERRUPTED) from None
    except InputError:  # a folder it cannot write to (a full disk): one line, bar stopped
        progress.stop()
        raise
    rows = [
        read_result_row(row, out / "cells.csv", warn)
        for name in progress.device_names
        for row in grid_rows(out, list(config.cells), progress.device, name)
    ]
    where = (
        f"estimates for {options.estimate_kind}"
        if options.estimate
        else f"on {progress.device} ({progress.device_name})"
    )
    print_whole(console, summary_table(rows, f"{len(rows)} cell(s) {where}"))
    typer.echo(f"membench: results in {out}")
    if options.timeline:
        _say_which_have_no_timeline(out, rows)


def _say_which_have_no_timeline(out, rows) -> None:
    """--timeline records a step only for the cells a sweep runs: say so when cells finished
    earlier have none, and what records them."""
    import pandas as pd

    from ..timeline.files import read_timelines, timelines_of

    measured = [r for r in rows if r.status in MEASURED_STATUSES]
    if not measured:
        return
    frame = pd.DataFrame([r.row() for r in measured])
    missing = len(measured) - len(timelines_of(frame, read_timelines(out)))
    if missing:
        warn(
            f"{missing} of {len(measured)} cell(s) have no recorded step: they finished in an "
            "earlier sweep, and --timeline records one only for the cells it runs; add --redo "
            "to run them again with one (then `membench timeline "
            f"{out}`)"
        )


@reports_input_errors
@setting_options("run")
def run(settings: dict = None) -> None:
    """Measure one cell in this process and print a readable summary."""
    from ..execute.worker import Target, open_target
    from .timeline import timeline_peak_text

    config = build_config(**settings)
    if len(config.cells) != 1:
        fail(f"run measures one cell, these options give {len(config.cells)}; use `membench sweep`")
    [cell] = config.cells
    options = config.options
    if options.device != "cpu":  # before anything here initialises CUDA
        from ..measure.cuda_env import apply_alloc_conf

        apply_alloc_conf(cell.alloc_conf)
    opened = open_target(
        Target(
            options.device,
            peak_tflops=options.peak_tflops,
            precisions=(cell.precision,),
            timeline=options.timeline,
            timeline_snapshot=options.timeline_snapshot,
        )
    )
    for note in opened.notes:
        typer.echo(f"membench: note: {note}", err=True)
    result = opened.run(cell)
    typer.echo(describe(result))
    if result.timeline is not None:
        typer.echo(f"  timeline    {timeline_peak_text(result.timeline)}")
    if result.status != "ok":
        raise typer.Exit(1)
