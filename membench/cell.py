"""What a cell is: one point of a grid, every setting that determines a measurement.

``Cell`` declares each setting once, as a field (``membench.settings.setting``): its parser,
default, help, id part, and whether it is tooling or compared; the CLI's options, a profile's
keys, the grid, the cell id and the ``cells.csv`` setting columns all derive from it. Also here:
the choices a setting takes, device-string parsing (``parse_device``, ``device_kind``) and the
cell's tooling label. What a cell's *result* holds is ``membench.schema``. No torch.
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass

from .settings import ConfigError, Setting, choice, name, optional, setting, settings_of, whole
from .units import format_bytes, parse_bytes

# The standard tooling's choices (torch's objects for them are in membench.runners.base).
PRECISIONS = ("fp32", "bf16", "fp16")
MEMORY_FORMATS = ("contiguous", "channels_last")
COMPILE_MODES = ("none", "default", "max-autotune")
GRADIENT_MODES = ("kept", "released")
OPTIMIZER_STATE_PLACES = ("device", "host")
PIPELINE_SCHEDULES = ("gpipe", "1f1b")  # bp-pp's (docs/multi-device.md)
CUDNN_BENCHMARK_MODES = ("off", "on")  # torch.backends.cudnn.benchmark on CUDA
# What a budget judges an estimate by (docs/device-total.md): the device total (what the card
# must hold: the allocator's reserve, the CUDA context and library workspaces), the allocator's
# peak reserve, or the peak of allocated tensor bytes.
FIT_BY = ("total", "reserved", "allocated")
# What a token cell trains (docs/sequence-models.md): its loss and the head it needs.
CAUSAL_LM, MASKED_LM, CLASSIFICATION = "causal-lm", "masked-lm", "classification"
OBJECTIVES = (CAUSAL_LM, MASKED_LM, CLASSIFICATION)
# transformers' attention implementations (its `attn_implementation`); flash needs its package.
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3")

# -- estimates ------------------------------------------------------------------------------------
# An estimate's device is the kind of device it predicts for, e.g. 'cuda (estimate)', so it never
# matches a row measured on 'cuda:0' in resume, compare or report.
ESTIMATE_SUFFIX = " (estimate)"
ESTIMATE_KINDS = ("cuda", "cpu")  # the kinds of device an estimate plans for
ESTIMATE_SOURCE = "estimate"  # its memory_source
ESTIMATE_DEVICE_NAME = "estimate"  # its device_name


def estimate_device(kind: str) -> str:
    """The ``device`` of an estimated row: ``'cuda'`` -> ``'cuda (estimate)'``."""
    return f"{kind}{ESTIMATE_SUFFIX}"


def is_estimate_row(row: Mapping) -> bool:
    """Whether a results row is a prediction rather than a measurement: its device is an
    estimate's (``'cuda (estimate)'``) or its memory came from the estimator. The one place that
    decides it; readers put the answer in an ``is_estimate`` column."""
    device = str(row.get("device") or "").strip()
    return (
        device.endswith(ESTIMATE_SUFFIX) or str(row.get("memory_source") or "") == ESTIMATE_SOURCE
    )


# -- devices ------------------------------------------------------------------------------------
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N"
_DEVICE_PATTERN = re.compile(r"(auto|cpu|cuda)(?::(\d+))?")


class DeviceSpecError(ValueError):
    """A device string that is not ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""


def parse_device(spec: str) -> tuple[str, int | None]:
    """``'cuda:1'`` -> ``('cuda', 1)``, ``'cuda'`` -> ``('cuda', None)``, ``'cpu'``/``'auto'`` ->
    ``(kind, None)``; DeviceSpecError (one line, with the choices) for anything else."""
    match = _DEVICE_PATTERN.fullmatch(str(spec).strip().lower())
    if not match or (match[2] is not None and match[1] != "cuda"):
        raise DeviceSpecError(f"unknown device {spec!r}; valid: {DEVICE_CHOICES}")
    return match[1], None if match[2] is None else int(match[2])


def device_kind(device: str) -> str:
    """The kind of a row's device: 'cpu', 'cuda:0' and 'cuda (estimate)' -> 'cpu', 'cuda',
    'cuda'."""
    return str(device).strip().removesuffix(ESTIMATE_SUFFIX).split(":")[0]


def cuda_index(device: str) -> int | None:
    """The CUDA device index a measured row ran on ('cuda' is 0); None for anything else."""
    try:
        kind, index = parse_device(device)
    except DeviceSpecError:
        return None
    return (index or 0) if kind == "cuda" else None


# -- cells --------------------------------------------------------------------------------------
def memory_size(value, label: str) -> int:
    """A memory size ('8GiB', '512MiB', '8GB', or bytes), as a setting reads it."""
    try:
        return parse_bytes(value)
    except ValueError as err:
        raise ConfigError(f"{label}: {err}") from None


def device(value, label: str) -> str:
    """A device string, normalised ('CUDA:1' -> 'cuda:1'), as a setting reads it."""
    if not isinstance(value, str):
        raise ConfigError(f"{label} takes a device name, got {value!r}")
    try:
        kind, index = parse_device(value)
    except DeviceSpecError as err:
        raise ConfigError(str(err)) from None
    return kind if index is None else f"{kind}:{index}"


def alloc_conf(value, label: str) -> str:
    """A ``PYTORCH_CUDA_ALLOC_CONF`` value as PyTorch reads it ('' or 'default': its defaults),
    whitespace removed; a value PyTorch would refuse is a ConfigError naming why."""
    if not isinstance(value, str):
        raise ConfigError(f"{label} takes a PYTORCH_CUDA_ALLOC_CONF value, got {value!r}")
    text = "".join(value.split())
    if text == "default":
        return ""
    # The parser is the allocator model's own (plain Python, no torch): what it refuses,
    # PyTorch refuses (docs/allocator.md, "Configuration").
    from .planning.allocator.conf import AllocatorConfigError, parse_alloc_conf

    try:
        parse_alloc_conf(text)
    except AllocatorConfigError as err:
        raise ConfigError(f"{label}: {err}") from None
    return text


def alloc_conf_id(value: str) -> str:
    """An allocator config's part of a cell id: 'expandable_segments:True' ->
    'alloc-expandable_segments=True' (no ':' or ',' in a file name)."""
    return "alloc-" + value.replace(":", "=").replace(",", "+")


# The cell settings are options of these commands (and keywords of the pytest fixture).
CELL_COMMANDS = ("sweep", "run", "fixture")


def cell_setting(default, parse, help: str, **options):
    """A setting of a ``Cell``: a grid axis on every command that measures cells."""
    return setting(default, parse, help, commands=CELL_COMMANDS, **options)


@dataclass(frozen=True)
class Cell:
    """One point of a grid under one protocol: every setting that determines a measurement.

    Each field is a grid axis (a comma list on the command line, a list in a profile; the grid
    is their cross product) and a ``cells.csv`` column; its declaration below is the only place
    it is defined (``membench.settings``). A value at its default adds nothing to the cell id,
    so the ids of earlier runs stay what they were.
    """

    method: str = cell_setting(
        "bp", name, "Training method (`membench list methods`).", id_part=str, id_always=True
    )
    arch: str = cell_setting(
        "vgg8",
        name,
        "Architecture: vgg8, vgg11, vgg-dD-wW, resnet20..110, "
        "tv:NAME, timm:NAME, hf:MODEL_TYPE[?field=value&...] (transformers, token input), "
        "a plugin's or pkg.mod:factory (`membench list archs`).",
        id_part=str,
        id_always=True,
    )
    # A cell's input is images (res) or token sequences (seq), never both: a cell with a seq
    # has no res (docs/sequence-models.md).
    res: int | None = cell_setting(
        32,
        optional(whole(1)),
        "Input resolution (square) of an image cell.",
        id_part="r{}".format,
        id_always=True,
    )
    seq: int | None = cell_setting(
        None,
        optional(whole(1)),
        "Sequence length of a token cell (an hf: arch): B x seq token ids in, no res.",
        id_part="s{}".format,
        kw_only=True,  # Cell(method, arch, res, batch, ...) keeps its positions
    )
    batch: int = cell_setting(
        32,
        whole(1),
        "Batch size: the images of one optimizer step.",
        id_part="b{}".format,
        id_always=True,
    )
    micro_batch: int | None = cell_setting(
        None,
        optional(whole(1)),
        "Micro-batch, for methods that split the batch: BP accumulates "
        "over them (bp-accum: batch/2 by default), FF trains in chunks.",
        id_part="mb{}".format,
    )
    classes: int = cell_setting(
        10, whole(1), "Number of classes K.", id_part="k{}".format, id_always=True
    )
    objective: str | None = cell_setting(
        None,
        optional(choice(OBJECTIVES)),
        "What a token cell trains: causal-lm, masked-lm or classification (K classes); "
        "default: the arch's own (causal-lm for a decoder, masked-lm for an encoder).",
        id_part=str,
        kw_only=True,
    )
    # Standard tooling on both sides of the audit (docs/runners.md, "Standard tooling").
    precision: str = cell_setting(
        "fp32",
        choice(PRECISIONS),
        "Autocast precision (weights and optimizer state stay fp32; fp16 with a GradScaler).",
        id_part=str,
        tooling=True,
    )
    memory_format: str = cell_setting(
        "contiguous",
        choice(MEMORY_FORMATS),
        "Memory format of the conv weights and the batch.",
        id_part=lambda value: value.replace("_", "-"),
        tooling=True,
    )
    attn_implementation: str | None = cell_setting(
        None,
        optional(choice(ATTN_IMPLEMENTATIONS)),
        "Attention of an hf: arch, transformers' attn_implementation (default: its own, sdpa "
        "where the model has it); flash needs its package and a GPU.",
        id_part="attn-{}".format,
        tooling=True,
        kw_only=True,
    )
    compile: str = cell_setting(
        "none",
        choice(COMPILE_MODES),
        "torch.compile mode (compiled in the first warmup step).",
        id_part="compile-{}".format,
        tooling=True,
    )
    grads: str = cell_setting(
        "kept",
        choice(GRADIENT_MODES),
        "Gradients kept until the optimizer step, or released at "
        "their update (BP: AdamW stepped per parameter in the backward pass; FF: each layer's "
        "freed after its step).",
        id_part="grads-{}".format,
        tooling=True,
    )
    optimizer_state: str = cell_setting(
        "device",
        choice(OPTIMIZER_STATE_PLACES),
        "Where AdamW's moments live between updates: on "
        "the device, or in host memory (pinned on CUDA), copied to the device for each "
        "parameter's (BP) or layer's (FF) update.",
        id_part="optim-{}".format,
        tooling=True,
    )
    devices: int = cell_setting(
        1,
        whole(1),
        "Devices one cell spans: N > 1 runs N ranks of torch.distributed (methods "
        "that span devices: bp-ddp, bp-fsdp, bp-pp, ff-pp; others run on one).",
        id_part="dev{}".format,
        tooling=True,
    )
    schedule: str | None = cell_setting(
        None,
        optional(choice(PIPELINE_SCHEDULES)),
        "Pipeline schedule of bp-pp (default 1f1b).",
        id_part=str,
        tooling=True,
    )
    # The CUDA runtime's own settings (docs/device-total.md): the caching allocator's
    # configuration, set in a cell's process before CUDA initialises, and cuDNN's autotuner.
    # Tooling: a report names a series by them; no runner refuses them (the device applies them).
    cudnn_benchmark: str = cell_setting(
        "off",
        choice(CUDNN_BENCHMARK_MODES),
        "torch.backends.cudnn.benchmark on CUDA: on tries every convolution algorithm once per "
        "shape (workspaces through the caching allocator) and keeps the fastest.",
        id_part=lambda value: f"cudnn-benchmark-{value}",
        tooling=True,
    )
    alloc_conf: str = cell_setting(
        "",
        alloc_conf,
        "PYTORCH_CUDA_ALLOC_CONF of the cell's CUDA process (e.g. expandable_segments:True); "
        "'default' or empty: PyTorch's defaults. Estimates replay the step through the "
        "allocator model under it.",
        id_part=alloc_conf_id,
        tooling=True,
        separator=";",
        metavar="CONF",
    )
    device_mem_bytes: int | None = cell_setting(
        None,
        optional(memory_size),
        "Emulate a card with this much memory, e.g. 8GiB: past it a cell is an oom row.",
        key="device_mem",
        id_part=lambda value: f"mem{format_bytes(value)}",
        metavar="SIZE",
    )
    # The protocol's own settings: part of what a measurement is, not of the configuration
    # compared across runs.
    seed: int = cell_setting(
        0, whole(0), "Seed of the weights and the synthetic batch.", compare=False
    )
    warmup: int = cell_setting(5, whole(0), "Warmup steps, not measured.", compare=False)
    steps: int = cell_setting(20, whole(1), "Measured steps.", compare=False)
    rounds: int = setting(
        1,
        whole(1),
        "Rounds of warmup and measured steps, each in a fresh worker process: their spread is "
        "the run-to-run noise `membench compare` judges throughput against (3 or more).",
        compare=False,
        commands=("sweep",),
    )

    def __post_init__(self) -> None:
        # One input per cell: a sequence length makes it a token cell, whatever res says (the
        # grid's res axis, its default 32 included, does not apply to it).
        if self.seq is not None and self.res is not None:
            object.__setattr__(self, "res", None)
        if self.seq is None and self.res is None:
            raise ConfigError("a cell needs an input: --res (images) or --seq (token sequences)")

    @property
    def takes_tokens(self) -> bool:
        """Whether the cell's input is token sequences (``seq``) rather than images (``res``)."""
        return self.seq is not None

    @property
    def tokens_per_sample(self) -> int | None:
        """The tokens of one sample: seq for a token cell, None for an image cell."""
        return self.seq

    @property
    def cell_id(self) -> str:
        """A readable id, unique within one sweep's grid: each setting's part, where it has one."""
        parts = (s.in_id(getattr(self, s.name)) for s in CELL_SETTINGS)
        return "_".join(part for part in parts if part)

    def settings(self) -> dict[str, object]:
        """Every setting's value, by field name (the ``cells.csv`` columns of the cell)."""
        return {s.name: getattr(self, s.name) for s in CELL_SETTINGS}

    def tooling(self) -> list[str]:
        """The standard tooling not at its defaults, as the cell id names it: ['bf16', ...]."""
        return tooling_parts(self.settings())

    @classmethod
    def from_row(cls, row: Mapping) -> Cell:
        """The cell of a ``cells.csv`` row (strings or typed values): a setting the row leaves
        empty (an earlier membench did not record it) was at its default. ValueError for a
        value that does not fit its column."""
        values = {
            s.name: parse_typed(SETTING_COLUMN_TYPES[s.name], row.get(s.name))
            for s in CELL_SETTINGS
        }
        missing = [key for key in IDENTITY_SETTINGS if values[key] in (None, "")]
        if "res" in missing and values["seq"] is not None:
            missing.remove("res")  # a token cell: its input is seq
        if missing:
            raise ValueError(f"a row without {', '.join(missing)} names no cell")
        return cls(**{key: value for key, value in values.items() if value not in (None, "")})


CELL_SETTINGS: tuple[Setting, ...] = settings_of(Cell)
# Every membench row has recorded these since the first release: a row without one names no cell.
IDENTITY_SETTINGS = ("method", "arch", "res", "batch")
TOOLING_SETTINGS = tuple(s for s in CELL_SETTINGS if s.tooling)
# What `membench compare` matches two cells on: the configuration, not the protocol's settings.
COMPARED_SETTINGS = [s.name for s in CELL_SETTINGS if s.compare]


def tooling_parts(values: Mapping) -> list[str]:
    """The tooling settings of a cell or a row not at their defaults (empty counts as the
    default), as a cell id and a report name them: ['bf16', 'channels-last', 'compile-default']."""
    parts = []
    for s in TOOLING_SETTINGS:
        value = values.get(s.name)
        if value not in (None, "") and value == value:
            part = s.in_id(value)
            if part:
                parts.append(part)
    return parts


# -- reading a column's values --------------------------------------------------------------------
def column_kind(annotation) -> str:
    """'str', 'int' or 'float' for a field annotated str, int | None, float | None, ..."""
    types = [t for t in typing.get_args(annotation) if t is not type(None)] or [annotation]
    return {str: "str", int: "int", float: "float"}[types[0]]


def parse_typed(kind: str, value) -> object:
    """A value read as a column of ``kind`` ('str', 'int', 'float'): str ('' when empty), int or
    float (None when empty or NaN). ValueError for text that is not a number in a numeric
    column."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "" if kind == "str" else None
    if kind == "str":
        return str(value).strip()
    text = str(value).strip()
    if text == "" or text.lower() == "nan":
        return None
    number = float(text)
    return int(number) if kind == "int" else number


_CELL_HINTS = typing.get_type_hints(Cell)
# The cell's columns of cells.csv, in file order, with their types (membench.schema adds the
# result's columns after them).
SETTING_COLUMN_TYPES: dict[str, str] = {
    "cell_id": "str",
    **{s.name: column_kind(_CELL_HINTS[s.name]) for s in CELL_SETTINGS},
}
