"""Cells and grids: what one measurement is, and how a sweep's options expand into cells.

All validation of user input that does not need to run anything lives here, so the CLI and the
Python API reject a bad grid the same way, before the first cell runs.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from .archs import ArchError, validate_arch
from .runners import RunnerConfigError, UnknownMethodError, get_runner


class GridError(ValueError):
    """Invalid sweep input; the message is one line naming what is wrong and the valid choices."""


@dataclass(frozen=True)
class Cell:
    """One point of a grid under one protocol: everything that determines a measurement."""

    method: str
    arch: str
    res: int
    batch: int
    micro_batch: int | None = None
    classes: int = 10
    seed: int = 0
    warmup: int = 5
    steps: int = 20
    device_mem_bytes: int | None = None

    @property
    def cell_id(self) -> str:
        """A readable id, unique within one sweep's grid."""
        parts = [self.method, self.arch, f"r{self.res}", f"b{self.batch}"]
        if self.micro_batch is not None:
            parts.append(f"mb{self.micro_batch}")
        parts.append(f"k{self.classes}")
        if self.device_mem_bytes is not None:
            parts.append(f"mem{format_bytes(self.device_mem_bytes)}")
        return "_".join(parts)


BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
              "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'8GiB' -> 8589934592; '8GB' -> 8e9; a plain number is bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match[2].lower() not in BYTE_UNITS:
        raise GridError(f"cannot read a memory size from {text!r}; write e.g. 8GiB, 512MiB or 8GB")
    value = int(float(match[1]) * BYTE_UNITS[match[2].lower()])
    if value <= 0:
        raise GridError(f"memory size must be positive, got {text!r}")
    return value


def format_bytes(value: int) -> str:
    """The shortest exact binary spelling: 8589934592 -> '8GiB', 1536 -> '1536B'... -> '1.5KiB'."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size and (value * 10) % size == 0:
            return f"{value / size:g}{unit}"
    return f"{value}B"


def split_list(text: str | list | tuple | int) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c']; lists and scalars pass through as strings."""
    if isinstance(text, (list, tuple)):
        return [str(item).strip() for item in text if str(item).strip()]
    return [item.strip() for item in str(text).split(",") if item.strip()]


def parse_int_list(text, option: str) -> list[int]:
    values = []
    for item in split_list(text):
        try:
            values.append(int(item))
        except ValueError:
            raise GridError(f"{option} takes whole numbers (a comma list), got {item!r}") from None
    if not values:
        raise GridError(f"{option} needs at least one value")
    return values


def _positive(value: int, option: str) -> None:
    if value <= 0:
        raise GridError(f"{option} must be at least 1, got {value}")


def expand_grid(
    methods: list[str],
    archs: list[str],
    resolutions: list[int],
    batches: list[int],
    *,
    micro_batches: list[int] | None = None,
    classes: int = 10,
    seed: int = 0,
    warmup: int = 5,
    steps: int = 20,
    device_mem_bytes: int | None = None,
) -> list[Cell]:
    """Validate a grid and expand it into cells (arch x res x batch x method [x micro-batch]).

    Raises GridError on the first invalid value, before anything runs.
    """
    for option, values in (("--method", methods), ("--arch", archs), ("--res", resolutions),
                           ("--batch", batches)):
        if not values:
            raise GridError(f"{option} needs at least one value")
    for b in batches:
        _positive(b, "--batch")
    for r in resolutions:
        _positive(r, "--res")
    for mb in micro_batches or []:
        _positive(mb, "--micro-batch")
    _positive(classes, "--classes")
    _positive(steps, "--steps")
    if warmup < 0:
        raise GridError(f"--warmup must be 0 or more, got {warmup}")
    runners = {}
    for method in methods:
        try:
            runners[method] = get_runner(method)
        except UnknownMethodError as err:
            raise GridError(str(err)) from None
    for arch, res in itertools.product(archs, resolutions):
        try:
            validate_arch(arch, res)
        except ArchError as err:
            raise GridError(str(err)) from None

    cells = []
    for arch, res, batch, method in itertools.product(archs, resolutions, batches, methods):
        runner = runners[method]
        splits = (micro_batches or [None]) if runner.uses_micro_batch else [None]
        for micro_batch in splits:
            try:
                runner.check_cell(arch, res, batch, micro_batch)
            except RunnerConfigError as err:
                raise GridError(str(err)) from None
            if runner.uses_micro_batch and micro_batch is None:
                micro_batch = runner.default_micro_batch(batch)
            cells.append(Cell(method, arch, res, batch, micro_batch, classes, seed, warmup, steps,
                              device_mem_bytes))
    return cells
