"""Runner registry: every runner, built-in or third-party, comes from the ``membench.methods``
entry-point group, so ``membench list methods`` and the sweep see them the same way.

Importing the registry imports no torch: a runner's module (and torch with it) is imported when
the runner is first asked for, and ``Runner`` and ``RunnerConfigError`` when first named."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    from .base import Runner

ENTRY_POINT_GROUP = "membench.methods"

__all__ = [
    "ENTRY_POINT_GROUP",
    "BUILTIN_METHODS",
    "MULTI_DEVICE_METHODS",
    "SINGLE_DEVICE_METHODS",
    "Runner",
    "RunnerConfigError",
    "UnknownMethodError",
    "available_methods",
    "builtin_runner_modules",
    "get_runner",
    "refresh_registry",
]


class UnknownMethodError(InputError):
    """A method name that no installed package registers."""


@cache
def _entry_points() -> dict:
    from importlib.metadata import entry_points  # read when a method is first asked for

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def refresh_registry() -> None:
    """Forget the entry points read so far, so packages installed since are found."""
    _entry_points.cache_clear()


def builtin_runner_modules() -> list[str]:
    """The modules of membench's own runners (safe to preload: they touch no device at import)."""
    return sorted(
        {
            ep.value.split(":")[0]
            for ep in _entry_points().values()
            if ep.value.startswith("membench.")
        }
    )


# The built-ins that train on one device, and those that run only as a cell on several
# (``--devices N``, docs/design.md "Cells on several devices").
SINGLE_DEVICE_METHODS = (
    "bp",
    "bp-accum",
    "bp-ckpt",
    "bp-sac",
    "bp-offload",
    "bp-deepsup",
    "ff-naive",
    "ff-pipelined",
)
MULTI_DEVICE_METHODS = ("bp-ddp", "bp-fsdp", "bp-pp", "ff-pp")
BUILTIN_METHODS = SINGLE_DEVICE_METHODS + MULTI_DEVICE_METHODS


def available_methods() -> list[str]:
    """Names of every registered runner: the built-ins in the spec's order, then the rest sorted."""
    names = set(_entry_points())
    return [m for m in BUILTIN_METHODS if m in names] + sorted(names.difference(BUILTIN_METHODS))


def get_runner(name: str) -> type[Runner]:
    """Load the runner class registered as ``name``."""
    eps = _entry_points()
    if name not in eps:
        raise UnknownMethodError(f"unknown method {name!r}; valid: {', '.join(eps)}")
    from .base import Runner

    cls = eps[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Runner)):
        raise UnknownMethodError(
            f"entry point {name!r} ({eps[name].value}) is not a membench Runner"
        )
    return cls


def __getattr__(name: str):
    """``Runner`` and ``RunnerConfigError``, from ``base`` (and torch) when first named."""
    if name in ("Runner", "RunnerConfigError"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
