"""One validation path for what every command takes: an arch at a resolution, a comma list, an
option that only some methods take. ``sweep`` (through ``config.expand_grid``), ``plan``,
``fit`` and ``schedule`` call these, so one bad input is refused by every command the same way,
in one line, before anything runs (a GPU name is ``membench.measure.flops.resolve_gpu``'s,
shared the same way).

This module imports no torch; the archs and runners are imported when a check needs them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .schema import CELL_SETTINGS
from .settings import ConfigError, comma_items
from .units import format_size

# A cell whose fp32 weights alone pass this is refused before anything is built: no device has
# it, and building (or estimating) it would run for minutes before failing.
MAX_PARAMETER_BYTES = 2**40
SETTING_BY_KEY = {s.key: s for s in CELL_SETTINGS}

# What an option means to the methods that take it: (the field of a runner's contract that
# says it takes it, the methods it applies to, in words). A grid where no method takes a given
# option is refused, as a typo.
METHOD_OPTIONS = {
    "micro_batch": ("micro_batch", "methods that split the batch"),
    "schedule": ("pipeline_schedule", "pipelines"),
    "devices": ("spans_devices", "methods that span devices"),
}


def axis(key: str, value, label: str | None = None) -> tuple:
    """A cell setting's grid axis read as a sweep reads it (``'1,2,4'`` -> ``(1, 2, 4)``);
    ConfigError for a bad value or an empty item."""
    s = SETTING_BY_KEY[key]
    return s.parse_axis(value, label or s.option)


def one(key: str, value, label: str | None = None):
    """One value of a cell setting, read by its own parser."""
    s = SETTING_BY_KEY[key]
    return s.parse(value, label or s.option)


def check_parameter_size(arch: str) -> None:
    """ConfigError if a conv stack's fp32 weights alone would pass MAX_PARAMETER_BYTES (the
    parametric family can name any size; every other arch has the size its author gave it)."""
    from .archs import conv_stack_spec, is_conv_stack

    if not is_conv_stack(arch):
        return
    weight_bytes = conv_stack_spec(arch).conv_parameter_count() * 4
    if weight_bytes > MAX_PARAMETER_BYTES:
        raise ConfigError(
            f"{arch} would have {weight_bytes / 2**40:,.1f} TiB of fp32 conv weights "
            f"alone, more than {format_size(MAX_PARAMETER_BYTES)}: refused before "
            "building it"
        )


def arch_at(arch: str, res: int | None = None, **token) -> None:
    """ConfigError (one line, the arch's own reason) unless ``arch`` names a model that builds
    and runs at ``res`` (a token model: on the sequences ``token`` describes, its ``seq``,
    ``objective`` and ``attn_implementation``) and whose weights are not past
    MAX_PARAMETER_BYTES."""
    from .archs import ArchError, validate_arch

    try:
        validate_arch(arch, None if token.get("seq") is not None else res, **token)
        check_parameter_size(arch)
    except ArchError as err:
        raise ConfigError(str(err)) from None


def archs_at(archs: Iterable[str], resolutions: Iterable[int]) -> None:
    """``arch_at`` for every arch at every resolution."""
    resolutions = list(resolutions)
    for arch in archs:
        for res in resolutions:
            arch_at(arch, res)


def option_applies(values: Mapping[str, tuple], runners: Mapping[str, type]) -> None:
    """ConfigError for an option of ``METHOD_OPTIONS`` given (not at its default) where no
    method of the grid takes it: ``--schedule gpipe --method bp`` is a mistake, not a request."""
    from .runners import available_methods, get_runner

    for key, (attribute, who) in METHOD_OPTIONS.items():
        default = SETTING_BY_KEY[key].default
        given = [v for v in values.get(key, (default,)) if v != default]
        if not given or any(getattr(r.contract, attribute) for r in runners.values()):
            continue
        takers = [m for m in available_methods() if getattr(get_runner(m).contract, attribute)]
        methods = list(runners)
        raise ConfigError(
            f"{SETTING_BY_KEY[key].option} applies to {who} ({', '.join(takers)}); "
            f"{', '.join(methods)} take{'s' if len(methods) == 1 else ''} none"
        )


__all__ = [
    "MAX_PARAMETER_BYTES",
    "METHOD_OPTIONS",
    "arch_at",
    "archs_at",
    "axis",
    "check_parameter_size",
    "comma_items",
    "one",
    "option_applies",
]
