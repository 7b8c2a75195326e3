"""One sweep configuration: typed, validated once, the same from the CLI, a profile or Python.

Settings merge in one order: defaults < profiles (in the order given) < explicit values (command
-line flags or keyword arguments). ``build_config`` does the merge and checks every value with
its setting's own parser (``membench.settings``); the result is a frozen ``SweepConfig`` whose
``cells`` are the validated grid, expanded::

    from membench.config import build_config
    config = build_config(["quick"], batch=[16, 32], steps=3)
    config.cells  # (Cell(method='bp', arch='vgg-d4-w64', res=32, batch=16, ...), ...)

Every setting of a ``Cell`` is a grid axis: a list, which may differ per ``[[grid]]`` table of
a profile (the sweep runs the union of the grids, each a cross product). The settings of how a
sweep runs are ``SweepOptions``. Adding a setting is one field declaration in either class and
the code that uses the value (docs/design.md, "Adding a setting").

This module imports no torch: the registry and the archs are imported when a grid is expanded.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path

from .profiles import load_profile
from .schema import CELL_SETTINGS, FIT_BY, Cell, device
from .settings import (
    ConfigError,
    choice,
    finite_positive,
    flag,
    name,
    optional,
    setting,
    settings_of,
    whole,
)

# Re-exported: the arch checks moved to membench.validate, where every command reads them.
from .validate import (
    MAX_PARAMETER_BYTES,
    arch_at,
    archs_at,
    check_parameter_size,
    option_applies,
)

# Named here (not imported) so this module stays free of the planning package's imports; a test
# holds it to membench.planning.device_profiles.DEFAULT_DEVICE_PROFILE.
DEFAULT_DEVICE_PROFILE = "a100-40gb"
ISOLATION_CHOICES = ("process", "none")
EXECUTOR_CHOICES = ("local", "ray")
SWEEP = ("sweep",)
# A grid is walked arch by arch, then resolution, batch and method; other settings vary fastest.
SWEEP_ORDER = ("arch", "res", "seq", "batch", "method")
# The settings of a token cell only (docs/sequence-models.md); an image cell has none of them.
TOKEN_SETTINGS = ("seq", "objective", "attn_implementation")


@dataclass(frozen=True)
class SweepOptions:
    """How and where a sweep runs: every setting that is not part of a cell. Values are
    checked (and normalised) by their settings' parsers on construction; ConfigError (one
    line) for a bad value or a combination that cannot work."""

    device: str = setting(
        "auto",
        device,
        "Device: auto (cuda when present), cpu, cuda or cuda:N.",
        commands=("sweep", "run", "fixture"),
    )
    timeout_s: float | None = setting(
        None,
        optional(finite_positive("seconds (a finite number > 0)")),
        "Seconds one cell may take before it is killed and recorded as timeout.",
        key="timeout",
        commands=SWEEP,
        metavar="SECONDS",
    )
    isolation: str = setting(
        "process",
        choice(ISOLATION_CHOICES),
        "process (each cell in a worker process) or none (in this process, for debugging).",
        commands=SWEEP,
    )
    # Where the cells run: on this machine, or one Ray task per cell on a Ray cluster
    # (docs/scale-out.md); the next two apply to the ray executor only.
    executor: str = setting(
        "local",
        choice(EXECUTOR_CHOICES),
        "local (this machine, one cell at "
        "a time) or ray (one Ray task per cell; docs/scale-out.md).",
        commands=SWEEP,
    )
    ray_address: str | None = setting(
        None,
        optional(name),
        "Join the Ray cluster at ADDRESS (host:port, or auto); none starts one here.",
        commands=SWEEP,
        metavar="ADDRESS",
    )
    cpus_per_cell: int | None = setting(
        None,
        optional(whole(1)),
        "CPUs a Ray task asks for; none: a node's cores on the CPU, 1 on CUDA.",
        commands=SWEEP,
    )
    estimate: bool = setting(
        False,
        flag,
        "Predict each cell on fake tensors instead of running "
        "it (CUDA unless --device cpu; docs/estimate.md).",
        commands=SWEEP,
    )
    jobs: int | None = setting(
        None,
        optional(whole(1)),
        "Estimates run at once, each in its own worker process (--estimate, fit, plan); "
        "none: one per core.",
        commands=SWEEP,
        metavar="N",
    )
    peak_tflops: float | None = setting(
        None,
        optional(finite_positive("TFLOP/s (a finite number > 0)")),
        "The device's peak "
        "TFLOP/s for MFU, replacing the datasheet's (GPU) or the calibrated one (CPU).",
        metavar="TFLOPS",
    )
    # Memory over time (docs/timeline.md): one more step, after the measured ones, recorded; it
    # changes nothing a cell measures, so it is no part of a cell.
    timeline: bool = setting(
        False,
        flag,
        "Record one more step after the measured ones: live "
        "memory over time by category and phase (timeline.csv).",
    )
    timeline_snapshot: bool = setting(
        False,
        flag,
        "With --timeline, also write each cell's PyTorch memory snapshot "
        "(snapshots/*.pickle) for `python -m torch.cuda._memory_viz` and pytorch.org/memory_viz.",
        commands=SWEEP,
    )
    # The GPU a device profile stands for (e.g. laptop-8gb): the peak that bounds estimates'
    # throughput in `membench report --gpu PROFILE` and `membench fit --gpu`.
    gpu: str | None = setting(
        None, optional(name), "The GPU a device profile stands for.", commands=()
    )
    # The card an estimate plans for (docs/device-total.md): a device profile's context and
    # workspaces make its device total; a device profile file sets it to its own name.
    device_profile: str | None = setting(
        None,
        optional(name),
        "Device profile estimates plan for (a100-40gb, laptop-8gb, ...; `membench list "
        "profiles`): its CUDA context and workspaces complete an estimate's device total. "
        f"Default: {DEFAULT_DEVICE_PROFILE}.",
        commands=SWEEP,
        metavar="NAME",
    )
    fit_by: str = setting(
        "total",
        choice(FIT_BY),
        "What --device-mem judges an estimate by: total (what the card must hold: the "
        "allocator's reserve, the CUDA context and workspaces), reserved (the allocator's "
        "reserve) or allocated (the tensors' peak).",
        commands=SWEEP,
    )

    def __post_init__(self) -> None:
        for s in OPTION_SETTINGS:
            object.__setattr__(self, s.name, s.parse(getattr(self, s.name), s.option))
        if self.timeline_snapshot and not self.timeline:
            raise ConfigError("--timeline-snapshot needs --timeline")
        if self.timeout_s is not None and self.isolation == "none":
            raise ConfigError(
                "--timeout needs --isolation process: a cell running in this "
                "process cannot be stopped"
            )
        if (self.jobs or 1) > 1 and not self.estimate:
            raise ConfigError(
                "--jobs runs estimates at once (--estimate); measured cells run one at a "
                "time, as cells measured side by side would slow each other down"
            )
        check_executor(self)
        if self.device_profile is not None:
            check_device_profile(self.device_profile)

    @property
    def estimate_kind(self) -> str:
        """The device kind an estimate plans for: cpu only when asked for, else cuda."""
        return "cpu" if self.device == "cpu" else "cuda"


OPTION_SETTINGS = settings_of(SweepOptions)
SETTINGS = (*CELL_SETTINGS, *OPTION_SETTINGS)
SETTING_BY_KEY = {s.key: s for s in SETTINGS}
PROFILE_KEYS = sorted([*SETTING_BY_KEY, "description", "grid", "card"])

# One cross product: a tuple of values per cell setting, generated from Cell's declarations.
Grid = make_dataclass(
    "Grid", [(s.name, tuple, field(default=(s.default,))) for s in CELL_SETTINGS], frozen=True
)
Grid.__doc__ = "One cross product of grid axes: a tuple of values per setting of a Cell."


@dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep needs, typed and validated; ``cells`` is the expanded grid."""

    grids: tuple
    options: SweepOptions = field(default_factory=SweepOptions)
    profiles: tuple[str, ...] = ()
    cells: tuple[Cell, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        cells: dict[Cell, None] = {}
        for grid in self.grids:
            axes = {f.name: getattr(grid, f.name) for f in fields(grid)}
            cells.update(dict.fromkeys(expand_grid(estimate=self.options.estimate, **axes)))
        object.__setattr__(self, "cells", tuple(cells))
        confs = {cell.alloc_conf for cell in cells}
        if len(confs) > 1 and self.options.isolation == "none" and not self.options.estimate:
            raise ConfigError(
                "--alloc-conf with several values needs --isolation process: PyTorch reads "
                "the allocator's configuration once per process"
            )
        if self.options.estimate and self.options.estimate_kind == "cuda":
            for conf in sorted(confs):
                check_modelled_alloc_conf(conf)
        if any(cell.rounds > 1 for cell in cells):
            if self.options.estimate:
                raise ConfigError("--rounds repeats timed steps; an estimate times none")
            if self.options.isolation == "none":
                raise ConfigError(
                    "--rounds runs each round in a fresh worker process; --isolation none "
                    "runs every cell in this one"
                )
        if self.options.timeline and any(cell.devices > 1 for cell in cells):
            raise ConfigError(
                "--timeline records one device's step; a cell on several devices "
                "(--devices 2 or more) has none: drop one of them"
            )


def check_device_profile(ref: str) -> None:
    """ConfigError (one line, with the choices) unless ``ref`` names a device profile that
    reads: found before the first estimate, not as an error row in every cell."""
    from .planning.device_profiles import DeviceProfileError, device_profile

    try:
        device_profile(ref)
    except DeviceProfileError as err:
        raise ConfigError(f"--device-profile: {err}") from None


def check_modelled_alloc_conf(conf: str) -> None:
    """ConfigError unless the allocator model runs under ``conf``: a CUDA estimate replays the
    step through it (docs/allocator.md, "Configuration"), and a setting it does not model
    (backend:cudaMallocAsync) would otherwise fail every estimate of the grid."""
    from .planning.allocator.conf import AllocatorConfigError, parse_alloc_conf
    from .planning.allocator.model import CachingAllocatorModel

    try:
        CachingAllocatorModel(parse_alloc_conf(conf))
    except AllocatorConfigError as err:
        raise ConfigError(f"--alloc-conf {conf!r} cannot be estimated: {err}") from None


# Options of a CUDA estimate only: a measured cell's budget is held by the allocator itself,
# and a CPU estimate has no CUDA context, allocator reserve or workspaces to judge.
CUDA_ESTIMATE_OPTIONS = ("device_profile", "fit_by")


def check_estimate_options(options: SweepOptions, given: Mapping[str, object]) -> None:
    """ConfigError for --device-profile or --fit-by (not at its default) given on the command
    line (or as a keyword) to a sweep that makes no CUDA estimate: ignored, they would be a
    silent no-op, as --schedule on bp would. A device profile file (-p laptop-8gb) sets them
    for any sweep: it is also the emulated card of a measured one."""
    if options.estimate and options.estimate_kind == "cuda":
        return
    for key in CUDA_ESTIMATE_OPTIONS:
        s = SETTING_BY_KEY[key]
        if key in given and given[key] != s.default:
            what = "a CPU estimate" if options.estimate else "a measured sweep"
            raise ConfigError(
                f"{s.option} applies to CUDA estimates (--estimate without --device cpu); "
                f"{what} has no device total to judge"
            )


def check_executor(options: SweepOptions) -> None:
    """ConfigError (one line) for settings that do not go with the executor: the Ray settings
    without ``executor="ray"``, and, with it, what only a local sweep can do."""
    from .schema import DeviceSpecError, parse_device

    if options.executor != "ray":
        for value, option in (
            (options.ray_address, "--ray-address"),
            (options.cpus_per_cell, "--cpus-per-cell"),
        ):
            if value is not None:
                raise ConfigError(f"{option} needs --executor ray")
        return
    if options.isolation == "none":
        raise ConfigError(
            "--executor ray runs every cell in a worker process on the cluster; "
            "--isolation none cannot apply"
        )
    if options.estimate:
        raise ConfigError("--estimate predicts cells on this machine; drop --executor ray")
    try:
        index = parse_device(options.device)[1]
    except DeviceSpecError as err:
        raise ConfigError(str(err)) from None
    if index is not None:
        raise ConfigError(
            f"--device {options.device} names one GPU of this machine; with "
            "--executor ray Ray gives each cell its GPU: use --device cuda, cpu "
            "or auto"
        )


def _label(key: str, source: str | None) -> str:
    return f"profile {source}: {key}" if source else SETTING_BY_KEY[key].option


def _profile_values(profiles: tuple[str, ...], raw: dict) -> list[tuple[dict, str | None]]:
    """Fold the profiles' settings into ``raw`` (key -> (value, profile)); their grid tables."""
    cell_keys = {s.key for s in CELL_SETTINGS}
    grid_tables: list[tuple[dict, str | None]] = [({}, None)]
    for ref in profiles:
        profile = load_profile(ref)
        for key, value in profile.settings.items():
            if key not in SETTING_BY_KEY:
                raise ConfigError(
                    f"profile {profile.name}: unknown key {key!r}; valid: {', '.join(PROFILE_KEYS)}"
                )
            raw[key] = (value, profile.name)
        if profile.grids is not None:
            for table in profile.grids:
                extra = sorted(set(table) - cell_keys)
                if extra:
                    raise ConfigError(
                        f"profile {profile.name}: unknown key {extra[0]!r} in "
                        f"[[grid]]; valid: {', '.join(sorted(cell_keys))}"
                    )
            grid_tables = [(table, profile.name) for table in profile.grids]
    return grid_tables


def build_config(profiles: Iterable[str | Path] = (), **values) -> SweepConfig:
    """Defaults < ``profiles`` (names or .toml paths, later ones win key by key) < ``values``
    (keyword arguments named like the profile keys; None means "not given"). Raises
    ConfigError (or ProfileError) with one line on the first bad value."""
    profiles = tuple(str(p) for p in profiles)
    unknown = sorted(set(values) - set(SETTING_BY_KEY))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}; valid: {', '.join(SETTING_BY_KEY)}")
    # key -> (raw value, the profile it came from, or None for an explicit value or default)
    raw: dict[str, tuple[object, str | None]] = {s.key: (s.default, None) for s in SETTINGS}
    grid_tables = _profile_values(profiles, raw)
    given = {key: value for key, value in values.items() if value is not None}
    raw.update({key: (value, None) for key, value in given.items()})

    options = SweepOptions(
        **{s.name: s.parse(raw[s.key][0], _label(s.key, raw[s.key][1])) for s in OPTION_SETTINGS}
    )
    check_estimate_options(options, given)
    grids = []
    for table, source in grid_tables:
        axes = {}
        for s in CELL_SETTINGS:
            value, origin = raw[s.key]
            if s.key in table and s.key not in given:
                value, origin = table[s.key], source
            axes[s.name] = s.parse_axis(value, _label(s.key, origin))
        grids.append(Grid(**axes))
    return SweepConfig(tuple(grids), options, profiles)


# -- expanding a grid ---------------------------------------------------------------------------
def check_compile(cells: Sequence[Cell], estimate: bool) -> None:
    """ConfigError for a compiled cell that would compile inside a timed step or be estimated."""
    compiled = [cell for cell in cells if cell.compile != "none"]
    if compiled and estimate:
        raise ConfigError(
            "an estimate of a compiled cell is refused: torch.compile's buffers are "
            "allocated where fake tensors cannot see them; drop --compile or "
            "--estimate"
        )
    if any(cell.warmup < 1 for cell in compiled):
        raise ConfigError(
            "--compile needs --warmup 1 or more: compilation must happen in warmup, "
            "never in a timed step"
        )


def _axis_values(setting_name: str, values: Mapping[str, object]) -> tuple:
    s = next(s for s in CELL_SETTINGS if s.name == setting_name)
    return s.parse_axis(values.get(s.name, s.default), s.option)


def _runners_of(values: dict) -> dict:
    """The runner class of each method of the grid; ConfigError for an unknown method or an
    option (a micro-batch, a schedule, devices) that no method of the grid takes."""
    from .runners import UnknownMethodError, get_runner

    runners = {}
    for method in values["method"]:
        try:
            runners[method] = get_runner(method)
        except UnknownMethodError as err:
            raise ConfigError(str(err)) from None
    option_applies(values, runners)
    return runners


def _input_settings(settings: dict, tokens: bool) -> None:
    """One input per cell: a token model's cell has no res, an image model's none of the token
    settings (a grid over both kinds of arch gives each its own)."""
    if tokens:
        settings["res"] = None
    else:
        settings.update(dict.fromkeys(TOKEN_SETTINGS))


def _token_archs(values: Mapping[str, tuple]) -> set[str]:
    """The grid's archs whose input is token sequences; ConfigError where a token setting is
    given and no arch of the grid takes tokens."""
    from .archs import ArchError, takes_tokens

    try:
        tokens = {arch for arch in values["arch"] if takes_tokens(arch)}
    except ArchError as err:
        raise ConfigError(str(err)) from None
    if not tokens:
        for key in TOKEN_SETTINGS:
            if values[key] != (None,):
                option = next(s.option for s in CELL_SETTINGS if s.name == key)
                raise ConfigError(
                    f"{option} applies to token models (hf:...); "
                    f"{', '.join(values['arch'])} take images"
                )
    return tokens


def _validate_archs(values: Mapping[str, tuple], tokens: set[str]) -> None:
    """Every arch of the grid runs on every input of the grid (``validate.arch_at``, every
    command's one check)."""
    for arch in values["arch"]:
        if arch not in tokens:
            archs_at([arch], values["res"])
            continue
        for seq, objective, attention in itertools.product(
            values["seq"], values["objective"], values["attn_implementation"]
        ):
            arch_at(arch, seq=seq, objective=objective, attn_implementation=attention)


def _cell_of(runner, settings: dict) -> Cell:
    """One combination of the grid as the runner's cell: what it does not take reset to the
    default, its own defaults filled in; ConfigError where the runner cannot run it."""
    from .runners import RunnerConfigError

    if not runner.contract.micro_batch:
        settings["micro_batch"] = None
    if not runner.contract.spans_devices:  # as micro_batch: one device for a one-device method
        settings["devices"] = 1
    if not runner.contract.pipeline_schedule or settings["schedule"] is None:
        settings["schedule"] = runner.contract.default_schedule
    try:
        runner.check_cell(
            settings["arch"], settings["res"], settings["batch"], settings["micro_batch"]
        )
        if runner.contract.micro_batch and settings["micro_batch"] is None:
            settings["micro_batch"] = runner.default_micro_batch(settings["batch"])
        cell = Cell(**settings)
        runner.check_tooling(cell)
    except RunnerConfigError as err:
        raise ConfigError(str(err)) from None
    return cell


def expand_grid(*, estimate: bool = False, **axes) -> list[Cell]:
    """Validate one cross product and expand it into cells. ``axes`` are ``Cell``'s settings by
    field name, each a value or a list of values (``expand_grid(method=["bp", "bp-ckpt"],
    arch="vgg8", res=32, batch=[32, 64])``); a setting not given takes its default. Every
    method known, every arch buildable at every resolution, every runner able to run its cell;
    ConfigError on the first problem, before anything runs."""
    unknown = sorted(set(axes) - {s.name for s in CELL_SETTINGS})
    if unknown:
        raise ConfigError(
            f"unknown cell setting {unknown[0]!r}; valid: "
            f"{', '.join(s.name for s in CELL_SETTINGS)}"
        )
    values = {s.name: _axis_values(s.name, axes) for s in CELL_SETTINGS}
    runners = _runners_of(values)
    tokens = _token_archs(values)
    _validate_archs(values, tokens)

    cells: dict[Cell, None] = {}
    order = [*SWEEP_ORDER, *(key for key in values if key not in SWEEP_ORDER)]
    for combination in itertools.product(*(values[key] for key in order)):
        settings = dict(zip(order, combination))
        _input_settings(settings, settings["arch"] in tokens)
        cells[_cell_of(runners[settings["method"]], settings)] = None
    check_compile(list(cells), estimate)
    return list(cells)


__all__ = [
    "MAX_PARAMETER_BYTES",
    "ConfigError",
    "Grid",
    "SETTINGS",
    "SweepConfig",
    "SweepOptions",
    "build_config",
    "check_executor",
    "check_parameter_size",
    "expand_grid",
]
