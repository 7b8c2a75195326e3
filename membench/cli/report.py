"""``membench report``: parse and validate, then call membench.report.build_report."""

from __future__ import annotations

from pathlib import Path

import typer

from ..schema import memory_size
from .common import comma_list, fail, out_folder, reports_input_errors, warn


def profile_budget(ref: str) -> list[int]:
    """The memory a device profile names (its ``device_mem``), to draw as a budget; none for a
    GPU name or a profile without one."""
    from ..profiles import ProfileError, load_profile

    try:
        value = load_profile(ref).settings.get("device_mem")
    except ProfileError:
        return []
    return [] if value is None else [memory_size(value, f"profile {ref}: device_mem")]


@reports_input_errors
def report(
    inputs: list[Path] = typer.Argument(
        ...,
        show_default=False,
        metavar="DIR",
        help="Results folders (searched recursively for cells.csv) or cells.csv files.",
    ),
    out: str = typer.Option(
        None, "--out", help="Report folder (default reports/<input folder name>)."
    ),
    budget: list[str] = typer.Option(
        None,
        "--budget",
        help="Memory budget to draw on the figures, e.g. 8GiB; repeatable "
        "or a comma list. Budgets in the data (--device-mem) are drawn anyway.",
    ),
    gpu: str = typer.Option(
        None,
        "--gpu",
        help="A GPU (e.g. 'RTX 4090', 'H200') or a device profile with a gpu key "
        "(laptop-8gb): bound the imgs/s of estimates by its datasheet peak.",
    ),
) -> None:
    """Write a Markdown report with frontier, batch and breakdown figures for the given results."""
    budgets = [memory_size(text, "--budget") for text in comma_list(budget, "--budget")]
    bound = None
    if gpu is not None:
        from ..measure.flops import gpu_peaks, resolve_gpu

        name, _ = resolve_gpu(gpu)
        bound = (
            name,
            {
                precision: (spec.tflops, spec.precision)
                for precision, spec in gpu_peaks(name).items()
                if spec.tflops
            },
        )
        budgets += profile_budget(gpu)
    from ..report import build_report, default_report_dir  # matplotlib, pandas: only here

    out_dir = default_report_dir(inputs) if out is None else out_folder(out)
    if out_dir.exists() and not out_dir.is_dir():
        fail(f"--out {out_dir} is a file, not a folder")
    try:
        path = build_report(inputs, out_dir, budgets, gpu=bound, on_warning=warn)
    except OSError as err:
        fail(f"cannot write the report to {out_dir}: {err.strerror or err}")
    typer.echo(f"membench: report in {path}")
