"""Units and names: memory sizes as people write them and as membench spells them in ids, and
the slugs of file and folder names.

Imports nothing but the standard library.
"""

from __future__ import annotations

import re

BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
GIB = 2**30
_BINARY_UNITS = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def parse_bytes(text: str | int) -> int:
    """'8GiB' -> 8589934592; '8GB' -> 8e9; a plain number is bytes. ValueError (one line)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match[2].lower() not in BYTE_UNITS:
        raise ValueError(f"cannot read a memory size from {text!r}; write e.g. 8GiB, 512MiB or 8GB")
    value = int(float(match[1]) * BYTE_UNITS[match[2].lower()])
    if value <= 0:
        raise ValueError(f"memory size must be positive, got {text!r}")
    return value


def format_bytes(value: int) -> str:
    """The shortest exact binary spelling, for ids and file names: 8589934592 -> '8GiB',
    1536 -> '1.5KiB', 1000 -> '1000B'."""
    for unit, size in _BINARY_UNITS:
        if value >= size and (value * 10) % size == 0:
            return f"{value / size:g}{unit}"
    return f"{value}B"


def format_size(value_bytes: float) -> str:
    """A memory size as a person writes it: '8 GiB', '1.5 GiB', '64 MiB', '12.5 KiB', '512 B'."""
    for unit, size in _BINARY_UNITS:
        if abs(value_bytes) >= size:
            return f"{value_bytes / size:.4g} {unit}"
    return f"{value_bytes:.4g} B"


def format_gib(value_bytes: float | None, digits: int = 3) -> str:
    """'1.234 GiB' at a fixed number of decimals, for columns of figures; '-' when missing. A
    size that would keep fewer than two significant digits there (under 0.01 GiB at three
    decimals) takes the unit that fits it instead ('4.512 MiB', '0 B'), never '0.000 GiB'."""
    if value_bytes is None or value_bytes != value_bytes:
        return "-"
    if abs(value_bytes) < GIB * 10 ** (1 - digits):
        return format_size(value_bytes)
    return f"{value_bytes / GIB:.{digits}f} GiB"


def slug(name: str, empty: str = "unknown") -> str:
    """A file or folder name for a device model or an arch: 'NVIDIA H200' -> 'nvidia-h200';
    ``empty`` for a name without a letter or digit."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or empty
