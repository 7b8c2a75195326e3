"""One sweep configuration: typed, validated once, the same from the CLI, a profile or Python.

Settings merge in one order: defaults < profiles (in the order given) < explicit values (command
-line flags or keyword arguments). ``build_config`` does the merge and checks every value in one
place, ``SETTINGS`` below, each with its one-line message; the result is a frozen
``SweepConfig`` whose ``cells`` are the validated grid, expanded::

    from membench.config import build_config
    config = build_config(["quick"], batch=[16, 32], steps=3)
    config.cells  # [Cell(method='bp', arch='vgg-d4-w64', res=32, batch=16, ...), ...]

A *grid axis* (arch, res, batch, method, micro_batch) is a list and may differ per ``[[grid]]``
table of a profile: the sweep runs the union of the grids, each a cross product. Adding an axis
means a ``Grid`` field, its entry in ``SETTINGS`` and a ``Cell`` field; nothing else.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .archs import ArchError, conv_stack_spec, is_torchvision, validate_arch
from .errors import InputError
from .profiles import load_profile
from .runners import RunnerConfigError, UnknownMethodError, get_runner
from .runners.base import AUTOCAST_DTYPES, COMPILE_MODES, MEMORY_FORMATS
from .schema import Cell, DeviceSpecError, format_size, parse_bytes, parse_device

ISOLATION_CHOICES = ("process", "none")
EXECUTOR_CHOICES = ("local", "ray")
# A cell whose fp32 weights alone pass this is refused before anything is built: no device has
# it, and building (or estimating) it would run for minutes before failing.
MAX_PARAMETER_BYTES = 2**40


class ConfigError(InputError):
    """A setting that is not valid; the message is one line naming the setting and the choices."""


# -- parsing one value ------------------------------------------------------------------------
def _items(value) -> list:
    """A list from a TOML array, a comma string ('a, b') or a single value."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, str):
        items = value.split(",")
    else:
        items = [value]
    return [item.strip() if isinstance(item, str) else item for item in items
            if not (isinstance(item, str) and not item.strip())]


def _whole(item, label: str, plural: bool) -> int:
    if isinstance(item, str) and item.lstrip("-").isdigit():
        item = int(item)
    if isinstance(item, bool) or not isinstance(item, int):
        what = "whole numbers (a comma list)" if plural else "a whole number"
        raise ConfigError(f"{label} takes {what}, got {item!r}")
    return item


def names(value, label: str) -> tuple[str, ...]:
    """A non-empty list of names."""
    items = _items(value)
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{label} takes names (a comma list), got {item!r}")
    if not items:
        raise ConfigError(f"{label} needs at least one value")
    return tuple(items)


def whole_numbers(minimum: int) -> Callable[[object, str], tuple[int, ...]]:
    def parse(value, label: str) -> tuple[int, ...]:
        items = [_whole(item, label, plural=True) for item in _items(value)]
        if not items:
            raise ConfigError(f"{label} needs at least one value")
        for item in items:
            if item < minimum:
                raise ConfigError(f"{label} must be at least {minimum}, got {item}")
        return tuple(items)
    return parse


def whole_number(minimum: int) -> Callable[[object, str], int]:
    def parse(value, label: str) -> int:
        number = _whole(value, label, plural=False)
        if number < minimum:
            raise ConfigError(f"{label} must be at least {minimum}, got {number}")
        return number
    return parse


def finite_positive(what: str) -> Callable[[object, str], float]:
    """A number > 0 (TOML and the command line both accept inf and nan: never usable here)."""
    def parse(value, label: str) -> float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or value <= 0):
            raise ConfigError(f"{label} takes {what}, got {value!r}")
        return float(value)
    return parse


def memory_size(value, label: str) -> int:
    try:
        return parse_bytes(value)
    except ValueError as err:
        raise ConfigError(f"{label}: {err}") from None


def device(value, label: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{label} takes a device name, got {value!r}")
    try:
        kind, index = parse_device(value)
    except DeviceSpecError as err:
        raise ConfigError(str(err)) from None
    return kind if index is None else f"{kind}:{index}"


def choice(options: Sequence[str]) -> Callable[[object, str], str]:
    def parse(value, label: str) -> str:
        if value not in options:
            raise ConfigError(f"{label} must be one of {', '.join(options)}, got {value!r}")
        return value
    return parse


def text(value, label: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{label} takes a name, got {value!r}")
    return value.strip()


def choices(options: Sequence[str]) -> Callable[[object, str], tuple[str, ...]]:
    """A non-empty list, each one of ``options``."""
    def parse(value, label: str) -> tuple[str, ...]:
        values = names(value, label)
        for item in values:
            if item not in options:
                raise ConfigError(f"{label} takes {', '.join(options)}, got {item!r}")
        return values
    return parse


def flag(value, label: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{label} takes true or false, got {value!r}")
    return value


def optional(parse: Callable[[object, str], object]) -> Callable[[object, str], object]:
    """``parse``, with None (not given) passing through."""
    return lambda value, label: None if value is None else parse(value, label)


# -- the settings -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One setting: its key (profile key; ``--key`` on the command line), how a raw value is
    read and checked, its default, and whether it is a grid axis (a list per ``[[grid]]``)."""

    key: str
    parse: Callable[[object, str], object]
    default: object
    axis: bool = False
    attr: str = ""  # the SweepConfig/Grid field, when it differs from the key

    @property
    def field_name(self) -> str:
        return self.attr or self.key

    @property
    def option(self) -> str:
        return "--" + self.key.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("arch", names, ("vgg8",), axis=True),
    Setting("res", whole_numbers(1), (32,), axis=True),
    Setting("batch", whole_numbers(1), (32,), axis=True),
    Setting("method", names, ("bp",), axis=True),
    Setting("micro_batch", optional(whole_numbers(1)), None, axis=True),
    # Standard tooling on both sides of the audit (docs/design.md, "Standard tooling").
    Setting("precision", choices(tuple(AUTOCAST_DTYPES)), ("fp32",), axis=True),
    Setting("memory_format", choices(tuple(MEMORY_FORMATS)), ("contiguous",), axis=True),
    Setting("compile", choices(COMPILE_MODES), ("none",), axis=True),
    Setting("classes", whole_number(1), 10),
    Setting("warmup", whole_number(0), 5),
    Setting("steps", whole_number(1), 20),
    Setting("seed", whole_number(0), 0),
    Setting("device", device, "auto"),
    Setting("device_mem", optional(memory_size), None, attr="device_mem_bytes"),
    Setting("timeout", optional(finite_positive("seconds (a finite number > 0)")), None,
            attr="timeout_s"),
    Setting("isolation", choice(ISOLATION_CHOICES), "process"),
    # Where the cells run: on this machine, or one Ray task per cell on a Ray cluster
    # (docs/scale-out.md); the last two apply to the ray executor only.
    Setting("executor", choice(EXECUTOR_CHOICES), "local"),
    Setting("ray_address", optional(text), None),
    Setting("cpus_per_cell", optional(whole_number(1)), None),
    Setting("estimate", flag, False),
    Setting("peak_tflops", optional(finite_positive("TFLOP/s (a finite number > 0)")), None),
    # The GPU a device profile stands for (e.g. laptop-8gb): names the peak that bounds the
    # throughput of estimates in `membench report --gpu PROFILE` and `membench fit --gpu`.
    Setting("gpu", optional(text), None),
)
SETTING_BY_KEY = {setting.key: setting for setting in SETTINGS}
AXES = tuple(setting for setting in SETTINGS if setting.axis)
PROFILE_KEYS = sorted([*SETTING_BY_KEY, "description", "grid"])


@dataclass(frozen=True)
class Grid:
    """One cross product of grid axes."""

    arch: tuple[str, ...]
    res: tuple[int, ...]
    batch: tuple[int, ...]
    method: tuple[str, ...]
    micro_batch: tuple[int, ...] | None = None
    precision: tuple[str, ...] = ("fp32",)
    memory_format: tuple[str, ...] = ("contiguous",)
    compile: tuple[str, ...] = ("none",)


@dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep needs, typed and validated; ``cells`` is the expanded grid."""

    grids: tuple[Grid, ...]
    classes: int = 10
    warmup: int = 5
    steps: int = 20
    seed: int = 0
    device: str = "auto"
    device_mem_bytes: int | None = None
    timeout_s: float | None = None
    isolation: str = "process"
    executor: str = "local"
    ray_address: str | None = None
    cpus_per_cell: int | None = None
    estimate: bool = False
    peak_tflops: float | None = None
    gpu: str | None = None
    profiles: tuple[str, ...] = ()
    cells: tuple[Cell, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.timeout_s is not None and self.isolation == "none":
            raise ConfigError("--timeout needs --isolation process: a cell running in this "
                              "process cannot be stopped")
        check_executor(self.executor, isolation=self.isolation, device=self.device,
                       estimate=self.estimate, ray_address=self.ray_address,
                       cpus_per_cell=self.cpus_per_cell)
        cells: list[Cell] = []
        for grid in self.grids:
            if "none" not in grid.compile or len(grid.compile) > 1:
                check_compile(self.warmup, self.estimate)
            for cell in expand_grid(grid.method, grid.arch, grid.res, grid.batch,
                                    micro_batches=grid.micro_batch, classes=self.classes,
                                    seed=self.seed, warmup=self.warmup, steps=self.steps,
                                    device_mem_bytes=self.device_mem_bytes,
                                    precisions=grid.precision, memory_formats=grid.memory_format,
                                    compile_modes=grid.compile):
                if cell not in cells:
                    cells.append(cell)
        object.__setattr__(self, "cells", tuple(cells))

    @property
    def estimate_kind(self) -> str:
        """The device kind an estimate plans for: cpu only when asked for, else cuda."""
        return "cpu" if self.device == "cpu" else "cuda"


def check_executor(executor: str, *, isolation: str = "process", device: str = "auto",
                   estimate: bool = False, ray_address: str | None = None,
                   cpus_per_cell: int | None = None) -> None:
    """ConfigError (one line) for settings that do not go with the executor: the Ray settings
    without ``executor="ray"``, and, with it, what only a local sweep can do."""
    if executor != "ray":
        for value, option in ((ray_address, "--ray-address"), (cpus_per_cell, "--cpus-per-cell")):
            if value is not None:
                raise ConfigError(f"{option} needs --executor ray")
        return
    if isolation == "none":
        raise ConfigError("--executor ray runs every cell in a worker process on the cluster; "
                          "--isolation none cannot apply")
    if estimate:
        raise ConfigError("--estimate predicts cells on this machine; drop --executor ray")
    try:
        index = parse_device(device)[1]
    except DeviceSpecError as err:
        raise ConfigError(str(err)) from None
    if index is not None:
        raise ConfigError(f"--device {device} names one GPU of this machine; with --executor ray "
                          "Ray gives each cell its GPU: use --device cuda, cpu or auto")


def check_compile(warmup: int, estimate: bool) -> None:
    """ConfigError for a compiled cell that would compile inside a timed step or be estimated."""
    if estimate:
        raise ConfigError("an estimate of a compiled cell is refused: torch.compile's buffers are "
                          "allocated where fake tensors cannot see them; drop --compile or "
                          "--estimate")
    if warmup < 1:
        raise ConfigError("--compile needs --warmup 1 or more: compilation must happen in warmup, "
                          "never in a timed step")


def _label(key: str, source: str | None) -> str:
    return f"profile {source}: {key}" if source else SETTING_BY_KEY[key].option


def build_config(profiles: Iterable[str | Path] = (), **values) -> SweepConfig:
    """Defaults < ``profiles`` (names or .toml paths, later ones win key by key) < ``values``
    (keyword arguments named like the profile keys; None means "not given"). Raises
    ConfigError (or ProfileError) with one line on the first bad value."""
    profiles = tuple(str(p) for p in profiles)
    unknown = sorted(set(values) - set(SETTING_BY_KEY))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}; valid: {', '.join(SETTING_BY_KEY)}")
    # key -> (raw value, profile it came from or None for an explicit value / default)
    raw: dict[str, tuple[object, str | None]] = {s.key: (s.default, None) for s in SETTINGS}
    grid_tables: list[tuple[dict, str | None]] = [({}, None)]
    for ref in profiles:
        profile = load_profile(ref)
        for key, value in profile.settings.items():
            if key not in SETTING_BY_KEY:
                raise ConfigError(f"profile {profile.name}: unknown key {key!r}; valid: "
                                  f"{', '.join(PROFILE_KEYS)}")
            raw[key] = (value, profile.name)
        if profile.grids is not None:
            for table in profile.grids:
                extra = sorted(set(table) - {s.key for s in AXES})
                if extra:
                    raise ConfigError(f"profile {profile.name}: unknown key {extra[0]!r} in "
                                      f"[[grid]]; valid: {', '.join(s.key for s in AXES)}")
            grid_tables = [(table, profile.name) for table in profile.grids]
    raw.update({key: (value, None) for key, value in values.items() if value is not None})

    scalars = {s.field_name: s.parse(raw[s.key][0], _label(s.key, raw[s.key][1]))
               for s in SETTINGS if not s.axis}
    grids = []
    for table, source in grid_tables:
        axes = {}
        for setting in AXES:
            value, origin = raw[setting.key]
            if setting.key in table and not (setting.key in values and values[setting.key] is not None):
                value, origin = table[setting.key], source
            axes[setting.field_name] = setting.parse(value, _label(setting.key, origin))
        grids.append(Grid(**axes))
    return SweepConfig(tuple(grids), profiles=profiles, **scalars)


# -- expanding a grid ---------------------------------------------------------------------------
def check_parameter_size(arch: str) -> None:
    """ConfigError if a conv stack's fp32 weights alone would pass MAX_PARAMETER_BYTES."""
    if is_torchvision(arch):
        return
    weight_bytes = conv_stack_spec(arch).conv_parameter_count() * 4
    if weight_bytes > MAX_PARAMETER_BYTES:
        raise ConfigError(f"{arch} would have {weight_bytes / 2**40:,.1f} TiB of fp32 conv weights "
                          f"alone, more than {format_size(MAX_PARAMETER_BYTES)}: refused before "
                          "building it")


def expand_grid(
    methods: Sequence[str],
    archs: Sequence[str],
    resolutions: Sequence[int],
    batches: Sequence[int],
    *,
    micro_batches: Sequence[int] | None = None,
    classes: int = 10,
    seed: int = 0,
    warmup: int = 5,
    steps: int = 20,
    device_mem_bytes: int | None = None,
    precisions: Sequence[str] = ("fp32",),
    memory_formats: Sequence[str] = ("contiguous",),
    compile_modes: Sequence[str] = ("none",),
) -> list[Cell]:
    """Validate one cross product and expand it into cells (arch x res x batch x method
    [x micro-batch]): every method known, every arch buildable at every resolution, every
    runner able to run its cell. ConfigError on the first problem, before anything runs."""
    for option, values in (("--method", methods), ("--arch", archs), ("--res", resolutions),
                           ("--batch", batches)):
        if not values:
            raise ConfigError(f"{option} needs at least one value")
    runners = {}
    for method in methods:
        try:
            runners[method] = get_runner(method)
        except UnknownMethodError as err:
            raise ConfigError(str(err)) from None
    for arch, res in itertools.product(archs, resolutions):
        try:
            validate_arch(arch, res)
            check_parameter_size(arch)
        except ArchError as err:
            raise ConfigError(str(err)) from None

    cells = []
    tooling = list(itertools.product(precisions, memory_formats, compile_modes))
    for arch, res, batch, method in itertools.product(archs, resolutions, batches, methods):
        runner = runners[method]
        splits = (micro_batches or [None]) if runner.uses_micro_batch else [None]
        for micro_batch in splits:
            try:
                runner.check_cell(arch, res, batch, micro_batch)
            except RunnerConfigError as err:
                raise ConfigError(str(err)) from None
            if runner.uses_micro_batch and micro_batch is None:
                micro_batch = runner.default_micro_batch(batch)
            cells += [Cell(method, arch, res, batch, micro_batch, classes, seed, warmup, steps,
                           device_mem_bytes, precision, memory_format, compile_mode)
                      for precision, memory_format, compile_mode in tooling]
    return cells


__all__ = ["ConfigError", "Grid", "SETTINGS", "SweepConfig", "build_config", "check_executor",
           "expand_grid"]
