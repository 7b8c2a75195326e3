"""The typer application: every command is a function of a command module, registered here.

The command modules never import this one, so the CLI has no import cycle; each command parses
its options, builds the library's objects and calls the library (see docs/design.md).
"""

from __future__ import annotations

import sys

import typer

from . import compare, inspect, measure, plan, report, schedule, verify

app = typer.Typer(
    name="membench",
    help="Measure what training methods cost in peak memory and throughput.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(measure.sweep)
app.command()(measure.run)
app.add_typer(inspect.list_app, name="list")
app.command("env")(inspect.env)
app.command("verify")(verify.verify_command)
app.command()(report.report)
app.command()(compare.compare)
app.command()(plan.fit)
app.command("plan")(plan.plan_command)
app.command("schedule")(schedule.schedule)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("membench: interrupted; finished cells are saved", err=True)
        sys.exit(130)
