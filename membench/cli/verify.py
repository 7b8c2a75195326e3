"""``membench verify``: run the correctness checks and print a pass/fail table."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from ..runners import available_methods, get_runner
from ..schema import COMPILE_MODES
from ..verify import PRECISIONS_CHECKED, VerifySetup, verify
from .common import comma_list, fail, reports_input_errors


@reports_input_errors
def verify_command(
    method: str = typer.Option(
        None, "--method", help="Method(s), comma list; default: all registered."
    ),
    arch: str = typer.Option(VerifySetup.arch, "--arch", help="Conv-stack arch the checks run on."),
    res: int = typer.Option(VerifySetup.res, "--res", help="Input resolution."),
    seq: int = typer.Option(
        None, "--seq", help="Sequence length, for a token model (hf:...) instead of --res."
    ),
    objective: str = typer.Option(
        None,
        "--objective",
        help="A token model's objective (causal-lm, masked-lm, classification); the "
        "layer-local methods need classification.",
    ),
    batch: int = typer.Option(
        VerifySetup.batch, "--batch", help="Batch size (even, for bp-accum)."
    ),
    precision: str = typer.Option(
        ",".join(PRECISIONS_CHECKED),
        "--precision",
        help="Reduced precisions checked against fp32, comma list ('' for none).",
    ),
    compile: str = typer.Option(
        None,
        "--compile",
        help="Also check compiled against eager at this torch.compile mode "
        "(default, max-autotune); tens of seconds per method on a CPU.",
    ),
) -> None:
    """Check gradients, first-step FF losses and learning for each runner; exit 1 on any failure."""
    methods = comma_list([method], "--method") if method is not None else available_methods()
    if not methods:
        fail(f"--method names no method; valid: {', '.join(available_methods())}")
    from ..archs import ArchError, validate_arch
    from ..runners import RunnerConfigError

    if batch < 2 or batch % 2:
        fail(f"--batch must be an even number of at least 2, got {batch}")
    setup = VerifySetup(arch=arch, res=res, batch=batch, seq=seq, objective=objective)
    try:
        validate_arch(arch, res, seq=seq, objective=objective)
        for name in methods:
            get_runner(name).check_cell(arch, res, batch, None)
            get_runner(name).check_input(setup.cell(name))
    except (ArchError, RunnerConfigError) as err:
        fail(str(err))
    precisions = tuple(comma_list([precision], "--precision"))
    for name in precisions:
        if name not in PRECISIONS_CHECKED:
            fail(f"--precision takes {', '.join(PRECISIONS_CHECKED)}, got {name!r}")
    if compile is not None and compile not in COMPILE_MODES[1:]:
        fail(f"--compile takes {', '.join(COMPILE_MODES[1:])}, got {compile!r}")
    results = verify(methods, setup, precisions, compile)
    shape = f"res {res}" if seq is None else f"seq {seq}"
    table = Table(title=f"membench verify ({arch}, {shape}, batch {batch}, CPU)")
    for column in ("method", "check", "against", "result", "detail"):
        table.add_column(column)
    for r in results:
        verdict = "[green]pass[/green]" if r.passed else "[red]FAIL[/red]"
        table.add_row(r.method, r.check, r.reference or "-", verdict, r.detail)
    Console(width=140).print(table)
    failed = sum(not r.passed for r in results)
    typer.echo(f"{len(results) - failed} passed, {failed} failed")
    if failed:
        raise typer.Exit(1)
