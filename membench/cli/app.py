"""The typer application; each command group lives in its own module and registers here."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="membench",
    help="Measure what training methods cost in peak memory and throughput.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

USAGE_ERROR = 2


def fail(message: str, code: int = USAGE_ERROR) -> None:
    """Print a one-line error to stderr and exit (2: bad input, before anything ran)."""
    typer.echo(f"membench: error: {message}", err=True)
    raise typer.Exit(code)


def _register() -> None:
    # Imported for their side effect of adding commands to ``app``.
    from . import inspect, measure  # noqa: F401

    for optional in ("verify", "report", "compare", "plan"):
        try:
            __import__(f"{__package__}.{optional}")
        except ModuleNotFoundError as err:
            if err.name != f"{__package__}.{optional}":
                raise


_register()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("membench: interrupted; finished cells are saved", err=True)
        sys.exit(130)
