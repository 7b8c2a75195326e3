"""``PYTORCH_CUDA_ALLOC_CONF`` parsed as PyTorch 2.14 parses it, into a frozen ``AllocatorConfig``
the caching-allocator model (``model.py``) runs under (docs/allocator.md, "Configuration").

The rules follow c10/core/AllocatorConfig.cpp (``AcceleratorAllocatorConfig::parseArgs``: the
keys every accelerator shares) and c10/cuda/CUDAAllocatorConfig.{h,cpp} (``getKeys``, the CUDA
keys): the same tokens (``key:value`` pairs split on ``,``, lists in ``[...]``, whitespace
ignored), the same keys, the same range checks. A key PyTorch does not know, or a value it would
refuse, is an ``AllocatorConfigError`` (one line). Keys that only touch pinned host memory or
locking are checked and then carry no weight in the model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from membench.errors import InputError

MIB = 1024 * 1024
SIZE_MAX = 2**64 - 1  # std::numeric_limits<size_t>::max(): "no limit" for max_split_size
# c10/core/AllocatorConfig.h: allocations between 1 and 10 MiB may use a large segment
MIN_LARGE_ALLOC = 10 * MIB
DEFAULT_LARGE_SEGMENT = 20 * MIB  # AllocatorConfig.h: large_segment_size_ default, 20 MiB
# AllocatorConfig.cpp: roundup_power2_divisions has 16 intervals, one per power of two from
# 1 MiB (2**20) to 64 GiB; sizes below 1 MiB use the first, sizes above 32 GiB the last.
POWER2_INTERVALS = 16
POWER2_START_LOG2 = 20
ENV_VARIABLES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF", "PYTORCH_ALLOC_CONF")

_BOOL_KEYS = frozenset(
    {
        "expandable_segments",
        "pinned_use_background_threads",
        "release_lock_on_cudamalloc",
        "release_lock_on_hipmalloc",
        "pinned_use_cuda_host_register",
        "pinned_use_hip_host_register",
        "graph_capture_record_stream_reuse",
        "pinned_free_catch_all",
        "throw_on_cudamalloc_oom",
    }
)
_MB_KEYS = frozenset(
    {
        "large_segment_size_mb",
        "max_split_size_mb",
        "max_non_split_rounding_mb",
        "pinned_max_round_threshold_mb",
        "pinned_max_cached_size_mb",
        "pinned_reserve_segment_size_mb",
        "pinned_num_register_threads",
    }
)
_OTHER_KEYS = frozenset(
    {
        "garbage_collection_threshold",
        "per_process_memory_fraction",
        "roundup_power2_divisions",
        "backend",
    }
)
KNOWN_KEYS = _BOOL_KEYS | _MB_KEYS | _OTHER_KEYS


class AllocatorConfigError(InputError):
    """A ``PYTORCH_CUDA_ALLOC_CONF`` string PyTorch would refuse, or one the model cannot run."""


@dataclass(frozen=True)
class AllocatorConfig:
    """The settings of PyTorch's CUDA caching allocator that decide its layout. Sizes in bytes."""

    expandable_segments: bool = False
    max_split_size: int = SIZE_MAX  # blocks this large are never split ("oversize")
    # how much larger than the request a cached oversize block may be and still serve it
    max_non_split_rounding: int = DEFAULT_LARGE_SEGMENT
    large_segment_size: int = DEFAULT_LARGE_SEGMENT  # segment for 1-10 MiB requests; page size
    roundup_power2_divisions: tuple[int, ...] = (0,) * POWER2_INTERVALS
    garbage_collection_threshold: float = 0.0
    per_process_memory_fraction: float = 1.0
    backend: str = "native"
    text: str = ""  # the string it was parsed from

    def divisions_for(self, size: int) -> int:
        """``AcceleratorAllocatorConfig::roundup_power2_divisions(size)``: the divisions of the
        power-of-two interval ``size`` falls in (0 or 1: no power-of-two rounding)."""
        index = min(max(size.bit_length() - 1 - POWER2_START_LOG2, 0), POWER2_INTERVALS - 1)
        return self.roundup_power2_divisions[index]


def _tokens(text: str) -> list[str]:
    """``ConfigTokenizer``: ``,`` ``:`` ``[`` ``]`` are tokens of their own; spaces vanish."""
    return [t for t in re.split(r"([,:\[\]])", re.sub(r"\s+", "", text)) if t]


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0

    def fail(self, why: str) -> AllocatorConfigError:
        return AllocatorConfigError(f"allocator config {self.text!r}: {why}")

    def take(self, what: str = "a value") -> str:
        if self.i >= len(self.tokens):
            raise self.fail(f"ended where {what} was expected")
        self.i += 1
        return self.tokens[self.i - 1]

    def expect(self, token: str) -> None:
        got = self.take(repr(token))
        if got != token:
            raise self.fail(f"expected {token!r}, found {got!r}")

    def integer(self, key: str, token: str | None = None) -> int:
        token = self.take(f"a number for {key}") if token is None else token
        if not token.isdigit():
            raise self.fail(f"{key} needs a whole number, not {token!r}")
        return int(token)

    def number(self, key: str) -> float:
        token = self.take(f"a number for {key}")
        try:
            value = float(token)
        except ValueError:
            raise self.fail(f"{key} needs a number, not {token!r}") from None
        if not math.isfinite(value):
            raise self.fail(f"{key} needs a finite number, not {token!r}")
        return value

    def boolean(self, key: str) -> bool:
        token = self.take(f"True or False for {key}")
        if token not in ("True", "False"):
            raise self.fail(f"{key} needs True or False (PyTorch's spelling), not {token!r}")
        return token == "True"


def _power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def fill_above(divisions: list[int], last_index: int, value: int) -> None:
    """``>:D`` sets every interval above the last one named (AllocatorConfig.cpp)."""
    divisions[last_index + 1 :] = [value] * (len(divisions) - last_index - 1)


def _roundup_divisions(p: _Parser) -> tuple[int, ...]:
    """``parseRoundUpPower2Divisions``: one power of two for every interval, or a list
    ``[B:D,...,>:D]`` where B (a power of two, in MiB) names the interval starting at B MiB. The
    first entry also fills every interval below it; ``>`` fills those above the last one named."""
    if p.take("a value for roundup_power2_divisions") != "[":
        p.i -= 1
        value = p.integer("roundup_power2_divisions")
        if not _power_of_two(value):
            raise p.fail(f"roundup_power2_divisions must be a power of 2, not {value}")
        return (value,) * POWER2_INTERVALS
    divisions = [0] * POWER2_INTERVALS
    first, last_index = True, 0
    while True:
        boundary = p.take("an interval or ']' in roundup_power2_divisions")
        if boundary == "]":
            return tuple(divisions)
        p.expect(":")
        value = p.integer("roundup_power2_divisions")
        if value and not _power_of_two(value):
            raise p.fail(
                f"roundup_power2_divisions: divisions must be 0 or a power of 2, not {value}"
            )
        if boundary == ">":
            fill_above(divisions, last_index, value)
        else:
            start = p.integer("roundup_power2_divisions", boundary)
            if not _power_of_two(start):
                raise p.fail(f"roundup_power2_divisions: interval {start} is not a power of 2")
            index = min(start.bit_length() - 1, POWER2_INTERVALS - 1)
            if first:
                divisions[:index] = [value] * index
                first = False
            divisions[index] = value
            last_index = index
        if p.i < len(p.tokens) and p.tokens[p.i] != "]":
            p.expect(",")


def _mb_value(p: _Parser, key: str, large_segment: int) -> int:
    """A ``*_mb`` key's value in bytes, range-checked as AllocatorConfig.cpp does."""
    value = p.integer(key)
    if key == "large_segment_size_mb" and value <= MIN_LARGE_ALLOC // MIB:
        raise p.fail(f"large_segment_size_mb must be > {MIN_LARGE_ALLOC // MIB}")
    if key in ("max_split_size_mb", "max_non_split_rounding_mb") and value < large_segment // MIB:
        raise p.fail(f"{key} too small, must be >= {large_segment // MIB}")
    if key == "pinned_reserve_segment_size_mb" and value == 0:
        raise p.fail("pinned_reserve_segment_size_mb must be greater than 0")
    if key == "pinned_num_register_threads" and not (_power_of_two(value) and value <= 128):
        raise p.fail("pinned_num_register_threads must be a power of 2 no larger than 128")
    return min(value, SIZE_MAX // MIB) * MIB


def _large_segment(text: str) -> int:
    """``large_segment_size_mb`` is read before every other key (the others' lower bounds
    depend on it)."""
    p = _Parser(text)
    size = DEFAULT_LARGE_SEGMENT
    while p.i < len(p.tokens):
        if p.take() == "large_segment_size_mb" and p.i < len(p.tokens) and p.tokens[p.i] == ":":
            p.i += 1
            size = _mb_value(p, "large_segment_size_mb", size)
    return size


def _value(p: _Parser, key: str, large_segment: int):
    if key in _BOOL_KEYS:
        return p.boolean(key)
    if key in _MB_KEYS:
        return _mb_value(p, key, large_segment)
    if key == "roundup_power2_divisions":
        return _roundup_divisions(p)
    if key == "backend":
        backend = p.take("a backend")
        if backend not in ("native", "cudaMallocAsync"):
            raise p.fail(f"backend must be native or cudaMallocAsync, not {backend!r}")
        return backend
    value = p.number(key)
    if key == "garbage_collection_threshold" and not 0.0 < value < 1.0:
        raise p.fail("garbage_collection_threshold must be in (0.0, 1.0)")
    if key == "per_process_memory_fraction" and not 0.0 <= value <= 1.0:
        raise p.fail("per_process_memory_fraction must be in [0.0, 1.0]")
    return value


_FIELDS = {
    "expandable_segments": "expandable_segments",
    "max_split_size_mb": "max_split_size",
    "max_non_split_rounding_mb": "max_non_split_rounding",
    "large_segment_size_mb": "large_segment_size",
    "roundup_power2_divisions": "roundup_power2_divisions",
    "garbage_collection_threshold": "garbage_collection_threshold",
    "per_process_memory_fraction": "per_process_memory_fraction",
    "backend": "backend",
}


def parse_alloc_conf(text: str | None) -> AllocatorConfig:
    """``text`` (a ``PYTORCH_CUDA_ALLOC_CONF`` value; None or '' for the defaults) as an
    ``AllocatorConfig``. Raises ``AllocatorConfigError`` where PyTorch 2.14 would refuse it."""
    text = text or ""
    large_segment = _large_segment(text)
    # max_non_split_rounding defaults to the large segment size (AllocatorConfig.cpp parseArgs)
    values: dict = {"large_segment_size": large_segment, "max_non_split_rounding": large_segment}
    p = _Parser(text)
    while p.i < len(p.tokens):
        key = p.take()
        if key not in KNOWN_KEYS:
            known = ", ".join(sorted(KNOWN_KEYS))
            raise p.fail(f"unknown key {key!r} (PyTorch 2.14 knows {known})")
        p.expect(":")
        value = _value(p, key, large_segment)
        if key in _FIELDS:
            values[_FIELDS[key]] = value
        if p.i < len(p.tokens):
            p.expect(",")
    return AllocatorConfig(text=text, **values)


def alloc_conf_from_env(environ: Mapping[str, str]) -> str:
    """The allocator config string PyTorch reads from ``environ``: the first set of
    ``PYTORCH_CUDA_ALLOC_CONF``, ``PYTORCH_HIP_ALLOC_CONF``, ``PYTORCH_ALLOC_CONF`` ('' if none)."""
    return next((environ[name] for name in ENV_VARIABLES if name in environ), "")
