"""Command-line options generated from the settings' declarations (``membench.settings``).

``setting_options("sweep")`` gives a typer command one ``--key`` option per setting that
declares the command, with the setting's help and its default, so no option is written by hand
and none can fall behind its setting. Every option defaults to None ("not given") so a profile's
value can apply; the command receives what was given as one ``settings`` dict, keyed like the
profile keys, and hands it to ``build_config``, which reads and checks every value.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence

import typer

from ..config import SETTINGS
from ..schema import CELL_SETTINGS
from ..settings import Setting, flag


def shown_default(s: Setting, default: object) -> str:
    if default is None:
        return "none"
    if isinstance(default, bool):
        return "on" if default else "off"
    return str(default)


def option_help(s: Setting, default: object) -> str:
    """The setting's help, then 'Comma list' for a grid axis, then its default."""
    listed = "Comma list" if s.separator == "," else f"List separated by '{s.separator}'"
    axis = f" {listed}: one cell per value." if s in CELL_SETTINGS else ""
    return f"{s.help}{axis} Default: {shown_default(s, default)}."


def _parameter(s: Setting, default: object) -> inspect.Parameter:
    if s.parse is flag:
        option, annotation = typer.Option(None, s.option, help=option_help(s, default)), bool
    else:
        option = typer.Option(
            None, s.option, help=option_help(s, default), metavar=s.metavar or s.key.upper()
        )
        annotation = str
    return inspect.Parameter(
        s.key, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation
    )


def setting_options(
    command: str, *, only: Sequence[str] | None = None, defaults: Mapping[str, object] | None = None
) -> Callable:
    """Decorator: add an option per setting of ``command`` (those declaring it, or the keys in
    ``only``); ``defaults`` replaces a setting's default in the help (a command whose own
    defaults differ, e.g. ``fit``). The command gets them as ``settings``: key -> raw value, for
    the options given."""
    chosen = [s for s in SETTINGS if (s.key in only if only is not None else command in s.commands)]
    shown = {s.key: (defaults or {}).get(s.key, s.default) for s in chosen}

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)
        hints = typing.get_type_hints(function)  # the command module's names, resolved there
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in signature.parameters.values()
            if p.name != "settings"
        ]

        @functools.wraps(function)
        def wrapper(**kwargs):
            given = {s.key: kwargs.pop(s.key) for s in chosen}
            return function(**kwargs, settings={k: v for k, v in given.items() if v is not None})

        parameters = own + [_parameter(s, shown[s.key]) for s in chosen]
        wrapper.__signature__ = signature.replace(parameters=parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        wrapper.__annotations__["return"] = hints.get("return", None)
        del wrapper.__wrapped__  # typer must read the new signature, not the function's own
        return wrapper

    return decorate
