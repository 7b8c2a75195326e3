"""Runner registry: every runner, built-in or third-party, comes from the ``membench.methods``
entry-point group, so ``membench list methods`` and the sweep see them the same way."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from .base import Runner, RunnerConfigError

ENTRY_POINT_GROUP = "membench.methods"

__all__ = ["ENTRY_POINT_GROUP", "Runner", "RunnerConfigError", "available_methods", "get_runner"]


class UnknownMethodError(ValueError):
    """A method name that no installed package registers."""


@cache
def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


BUILTIN_METHODS = ("bp", "bp-accum", "bp-ckpt", "bp-deepsup", "ff-naive", "ff-pipelined")


def available_methods() -> list[str]:
    """Names of every registered runner: the built-ins in the spec's order, then the rest sorted."""
    names = set(_entry_points())
    return [m for m in BUILTIN_METHODS if m in names] + sorted(names.difference(BUILTIN_METHODS))


def get_runner(name: str) -> type[Runner]:
    """Load the runner class registered as ``name``."""
    eps = _entry_points()
    if name not in eps:
        raise UnknownMethodError(f"unknown method {name!r}; valid: {', '.join(eps)}")
    cls = eps[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Runner)):
        raise UnknownMethodError(f"entry point {name!r} ({eps[name].value}) is not a membench Runner")
    return cls
