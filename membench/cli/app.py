"""The typer application: every command is a function of a command module, registered here.

The command modules never import this one, so the CLI has no import cycle; each command parses
its options, builds the library's objects and calls the library (see docs/design.md, "Folders").

Every way a command line can be wrong ends the same way, one line ``membench: error: ...`` and
exit 2: the settings' own parsers say so for a bad value, and click's usage errors (an unknown
option, a missing argument or option) go through ``MembenchGroup``, which also turns Ctrl-C at
any moment into one line and exit 130 (SIGTERM: exit 143).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator

import typer
from typer.core import TyperGroup

try:  # typer 0.2x vendors click; earlier ones use the click package (pyproject: typer>=0.12)
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_errors

from ..errors import INTERRUPTED, Terminated
from . import compare, device, inspect, measure, plan, report, schedule, timeline, verify, viewer
from .common import USAGE_ERROR


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) inside a command, carried past click, which would print its own."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


@contextlib.contextmanager
def _interrupts_carried() -> Iterator[None]:
    """Ctrl-C as ``Interrupted``: click and typer would print a blank line or nothing."""
    try:
        yield
    except KeyboardInterrupt as err:
        raise Interrupted(Terminated.EXIT if isinstance(err, Terminated) else INTERRUPTED) from None


class MembenchGroup(TyperGroup):
    """The ``membench`` group: click's usage errors as one line (exit 2), an interrupt as one
    line (exit 130, 143 for SIGTERM), whether run as a program or by click's CliRunner."""

    def make_context(self, *args, **kwargs):
        with _interrupts_carried():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: typer.Context):
        with _interrupts_carried():
            return super().invoke(ctx)

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click_errors.NoArgsIsHelpError as err:  # the help, and click's exit code
            typer.echo(err.ctx.get_help() if err.ctx else "")
            code = USAGE_ERROR
        except click_errors.UsageError as err:
            where = f" (see '{err.ctx.command_path} --help')" if err.ctx else ""
            typer.echo(f"membench: error: {err.format_message().rstrip('.')}{where}", err=True)
            code = USAGE_ERROR
        except click_errors.ClickException as err:
            typer.echo(f"membench: error: {err.format_message()}", err=True)
            code = err.exit_code
        except (Interrupted, typer.Abort) as err:
            code = err.code if isinstance(err, Interrupted) else INTERRUPTED
            typer.echo("membench: interrupted", err=True)
        except OSError as err:
            if err.errno not in OUTPUT_ERRNOS:
                raise
            code = _output_failed(err)
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


# What writing the output can fail with: a full disk or quota behind a redirection, a device
# error, a reader that went away (`membench ... | head`). Every file membench itself writes
# maps its errors to one line already (membench.durable); what reaches the group is stdout.
OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EPIPE)
BROKEN_PIPE_EXIT = 128 + 13  # as a shell reports a program SIGPIPE ended


def _output_failed(err: OSError) -> int:
    """One line on stderr (none for a closed pipe, whose reader wanted no more) and the exit
    code; stdout is pointed at /dev/null so the interpreter's last flush of it is silent."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    if err.errno == errno.EPIPE:
        return BROKEN_PIPE_EXIT
    where = f" {err.filename}" if err.filename else " the output"
    typer.echo(f"membench: error: cannot write{where}: {err.strerror}", err=True)
    return 1


app = typer.Typer(
    name="membench",
    help="Measure what training methods cost in peak memory and throughput.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=MembenchGroup,
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
app.command()(timeline.timeline)
app.command("snapshot-html")(viewer.snapshot_html)
app.command("schedule")(schedule.schedule)
app.add_typer(device.device_app, name="device")
