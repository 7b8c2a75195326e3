"""What every command shares: the one-line error and exit code 2 for bad input."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import typer

from ..errors import InputError
from ..settings import comma_items

USAGE_ERROR = 2


def fail(message: str, code: int = USAGE_ERROR) -> None:
    """Print a one-line error to stderr and exit (2: bad input, before anything ran)."""
    typer.echo(f"membench: error: {message}", err=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    """One line on stderr that the user should read; the command goes on."""
    typer.echo(f"membench: warning: {message}", err=True)


def out_folder(value: str, option: str = "--out") -> Path:
    """A folder named on the command line; an empty name (``--out ''``) is bad input, not
    the current directory."""
    if not value.strip():
        fail(f"{option} takes a folder name, got {value!r}")
    return Path(value)


def reports_input_errors(command: Callable) -> Callable:
    """Turn an InputError raised by the library into ``fail``: one line on stderr, exit 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except InputError as err:
            fail(str(err))

    return wrapper


def comma_list(values: list[str] | None, option: str) -> list[str]:
    """Repeatable options that also take comma lists: ['a,b', 'c'] -> ['a', 'b', 'c']; an
    empty item ('a,,b') is bad input, as in every other comma list (``settings.comma_items``)."""
    return [item for value in values or [] for item in comma_items(value, option)]
