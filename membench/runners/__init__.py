"""The training methods on one device, and the registry of every method (docs/runners.md).

- ``base``: the ``Runner`` base class and what every runner shares (the tooling's torch
  objects, DTG-FF's spatial goodness); ``contract``: ``RunnerContract``, what a runner declares
  on its class (what it takes, its family, what ``membench verify`` holds it to);
- ``bp``: the backprop family (``bp``, ``bp-accum``, ``bp-ckpt``, ``bp-sac``, ``bp-offload``,
  ``bp-deepsup``); ``ff``: DTG-FF (``ff-naive``, ``ff-pipelined``);
- ``saved_tensors``: checkpointing and offloading what forward saves; ``optim``: the recipe's
  AdamW and the update's tooling; ``host_memory``: the marker for host memory, which the device
  count leaves out.

The methods that span devices are ``membench.multidevice``'s. This module is the registry:
every runner, built-in or third-party, comes from the ``membench.methods`` entry-point group, so
``membench list methods`` and the sweep see them the same way.

Importing the registry imports no torch: a runner's module (and torch with it) is imported when
the runner is first asked for, and ``Runner`` and ``RunnerConfigError`` when first named."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from ..errors import InputError
from .contract import RunnerContract

if TYPE_CHECKING:
    from .base import Runner

ENTRY_POINT_GROUP = "membench.methods"

__all__ = [
    "ENTRY_POINT_GROUP",
    "BUILTIN_METHODS",
    "MULTI_DEVICE_METHODS",
    "SINGLE_DEVICE_METHODS",
    "Runner",
    "RunnerContract",
    "RunnerConfigError",
    "UnknownMethodError",
    "available_methods",
    "builtin_runner_modules",
    "get_runner",
    "method_family",
    "refresh_registry",
]


class UnknownMethodError(InputError):
    """A method name that no installed package registers."""


@cache
def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def refresh_registry() -> None:
    """Forget the entry points read so far, so packages installed since are found."""
    _entry_points.cache_clear()
    method_family.cache_clear()


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
# (``--devices N``, docs/multi-device.md).
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


# Class attributes a runner declared before its contract was one object, and what replaced each;
# a runner that still declares one would have it ignored, so it is refused by name instead.
RETIRED_ATTRIBUTES = {
    "needs_conv_stack": "layer_stack",
    "uses_micro_batch": "micro_batch",
    "spans_devices": "spans_devices",
    "uses_schedule": "pipeline_schedule",
    "default_schedule": "default_schedule",
    "supports_grad_release": "grads_released",
    "supports_host_optimizer_state": "host_optimizer_state",
    "same_gradients_as": "same_gradients_as",
    "same_gradients_with_dropout": "same_gradients_with_dropout",
    "same_first_step_losses_as": "same_first_step_losses_as",
    "same_layer_gradients_as": "same_layer_gradients_as",
}


def _refuse_retired_attributes(name: str, cls: type) -> None:
    for klass in cls.__mro__:
        for attribute in RETIRED_ATTRIBUTES.keys() & vars(klass).keys():
            raise UnknownMethodError(
                f"runner {name!r} ({klass.__module__}.{klass.__qualname__}) declares "
                f"{attribute!r}, which membench reads from its contract now: "
                f"contract = RunnerContract({RETIRED_ATTRIBUTES[attribute]}=...)"
            )


@cache
def method_family(method: str) -> str:
    """The family ``method``'s contract declares (``RunnerContract.family``): "bp", "ff", or
    the method's own name where it is of a family of its own or not installed here (a row
    measured with another machine's plugin). Loads the runner, and torch with it."""
    if method not in _entry_points():
        return method
    return get_runner(method).contract.family_of(method)


def get_runner(name: str) -> type[Runner]:
    """Load the runner class registered as ``name``."""
    eps = _entry_points()
    if name not in eps:
        raise UnknownMethodError(f"unknown method {name!r}; valid: {', '.join(eps)}")
    from .base import Runner

    cls = eps[name].load()
    if isinstance(cls, type):
        _refuse_retired_attributes(name, cls)
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
