"""Sweep profiles: named TOML files of sweep settings, so a whole grid is one ``--profile NAME``.

A profile is a flat TOML table whose keys are the sweep's options (``arch``, ``res``, ``batch``,
``method``, ``micro_batch``, ``classes``, ``warmup``, ``steps``, ``seed``, ``device``,
``device_mem``, ``timeout``, ``isolation``) plus an optional ``description``. Lists may be TOML
arrays or comma strings. Several profiles combine left to right, each key of a later profile
replacing the earlier value (so ``--profile paper-d7 --profile laptop-8gb`` is the paper's grid on
an emulated 8 GiB card); options given on the command line replace them all.

Profiles are found by name in ``./profiles`` (the current directory) and in the ``profiles``
folder next to the membench package (a source checkout), in that order; a value that is a path
to a ``.toml`` file is read directly.

A grid that is not one cross product is written as ``[[grid]]`` tables: the sweep runs the union
of the grids, each grid taking the profile's top-level keys and replacing the grid keys it sets
(``arch``, ``res``, ``batch``, ``method``, ``micro_batch``). A later profile's ``[[grid]]`` tables
replace an earlier one's; grid flags on the command line apply to every grid.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import membench

from .grid import GridError, parse_bytes
from .sweep import ISOLATION_CHOICES

PROFILE_SUFFIX = ".toml"
# The ``profiles`` folder of a source checkout, next to the membench package.
PACKAGE_PROFILES_DIR = Path(membench.__file__).resolve().parents[1] / "profiles"

# What a sweep uses for a setting that neither a profile nor the command line gives.
SWEEP_DEFAULTS: dict[str, object] = {
    "arch": "vgg8", "res": "32", "batch": "32", "method": "bp", "micro_batch": None,
    "classes": 10, "warmup": 5, "steps": 20, "seed": 0, "device": "auto", "device_mem": None,
    "timeout": None, "isolation": "process",
}
LIST_KEYS = {"arch": str, "method": str, "res": int, "batch": int, "micro_batch": int}
INT_KEYS = {"classes": 1, "warmup": 0, "steps": 1, "seed": 0}  # key -> smallest valid value
GRID_TABLE_KEYS = ("arch", "res", "batch", "method", "micro_batch")
PROFILE_KEYS = sorted([*SWEEP_DEFAULTS, "description", "grid"])


class ProfileError(ValueError):
    """A profile that cannot be found or read; the message is one line."""


@dataclass
class Profile:
    """One profile file: its name, where it lives, and its settings in command-line form."""

    name: str
    path: Path
    description: str = ""
    settings: dict[str, object] = field(default_factory=dict)


def profile_dirs() -> list[Path]:
    """Where profiles are looked up by name, first match wins: ./profiles, then the checkout's."""
    candidates = [Path.cwd() / "profiles", PACKAGE_PROFILES_DIR]
    dirs = []
    for folder in candidates:
        if folder.is_dir() and all(folder.resolve() != d.resolve() for d in dirs):
            dirs.append(folder)
    return dirs


def available_profiles() -> dict[str, Path]:
    """Every profile name that ``--profile NAME`` can find, with its file."""
    found: dict[str, Path] = {}
    for folder in profile_dirs():
        for path in sorted(folder.glob(f"*{PROFILE_SUFFIX}")):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def find_profile(ref: str) -> Path:
    """The file a ``--profile`` value names: a path to a .toml file, or a profile name."""
    path = Path(ref).expanduser()
    if ref.endswith(PROFILE_SUFFIX) or "/" in ref or path.is_file():
        if not path.is_file():
            raise ProfileError(f"profile file {ref} does not exist")
        return path
    profiles = available_profiles()
    if ref not in profiles:
        valid = ", ".join(profiles) or f"none found (looked in ./profiles and {PACKAGE_PROFILES_DIR})"
        raise ProfileError(f"unknown profile {ref!r}; valid: {valid}")
    return profiles[ref]


def _list_value(name: str, key: str, value: object, kind: type) -> str:
    items = value if isinstance(value, list) else str(value).split(",") if isinstance(value, str) else [value]
    out = []
    for item in items:
        if isinstance(item, str):
            item = item.strip()
            if not item:
                continue
        if kind is int:
            if isinstance(item, str) and item.lstrip("-").isdigit():
                item = int(item)
            if isinstance(item, bool) or not isinstance(item, int):
                raise ProfileError(f"profile {name}: {key} takes whole numbers, got {item!r}")
            if item < 1:
                raise ProfileError(f"profile {name}: {key} values must be at least 1, got {item}")
        elif not isinstance(item, str):
            raise ProfileError(f"profile {name}: {key} takes names (strings), got {item!r}")
        out.append(str(item))
    if not out:
        raise ProfileError(f"profile {name}: {key} needs at least one value")
    return ",".join(out)


def _check_value(name: str, key: str, value: object) -> object:
    """One setting in the form the command line would give it; ProfileError if it is bad."""
    if key in LIST_KEYS:
        return _list_value(name, key, value, LIST_KEYS[key])
    if key in INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProfileError(f"profile {name}: {key} takes a whole number, got {value!r}")
        if value < INT_KEYS[key]:
            raise ProfileError(f"profile {name}: {key} must be at least {INT_KEYS[key]}, got {value}")
        return value
    if key == "timeout":
        # TOML accepts inf and nan: neither is a usable timeout.
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or value <= 0):
            raise ProfileError(
                f"profile {name}: timeout takes seconds (a finite number > 0), got {value!r}")
        return float(value)
    if key == "device_mem":
        try:
            parse_bytes(value)
        except GridError as err:
            raise ProfileError(f"profile {name}: device_mem: {err}") from None
        return str(value)
    if key == "isolation":
        if value not in ISOLATION_CHOICES:
            raise ProfileError(
                f"profile {name}: isolation must be one of {', '.join(ISOLATION_CHOICES)}, got {value!r}")
        return value
    if key == "grid":
        if not isinstance(value, list) or not all(isinstance(table, dict) for table in value):
            raise ProfileError(f"profile {name}: grid must be [[grid]] tables")
        grids = []
        for table in value:
            unknown = sorted(set(table) - set(GRID_TABLE_KEYS))
            if unknown:
                raise ProfileError(f"profile {name}: unknown key {unknown[0]!r} in [[grid]]; valid: "
                                   f"{', '.join(GRID_TABLE_KEYS)}")
            grids.append({k: _list_value(name, k, v, LIST_KEYS[k]) for k, v in table.items()})
        return grids
    if key in ("device", "description"):
        if not isinstance(value, str):
            raise ProfileError(f"profile {name}: {key} takes a string, got {value!r}")
        return value
    raise ProfileError(f"profile {name}: unknown key {key!r}; valid: {', '.join(PROFILE_KEYS)}")


def load_profile(ref: str | Path) -> Profile:
    """Read and check one profile (a name or a path); ProfileError with one line if it is bad."""
    path = find_profile(str(ref))
    name = path.stem
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ProfileError(f"cannot read profile {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ProfileError(f"profile {path} is not UTF-8 text (byte {err.start} cannot be read); "
                           "save it as UTF-8") from None
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(f"profile {path} is not valid TOML: {err}") from None
    settings = {key: _check_value(name, key, value) for key, value in data.items()}
    description = str(settings.pop("description", ""))
    return Profile(name, path, description, settings)


def merge_profiles(refs: list[str]) -> dict[str, object]:
    """The settings of several profiles, later ones overriding earlier ones key by key."""
    merged: dict[str, object] = {}
    for ref in refs:
        merged.update(load_profile(ref).settings)
    return merged


def resolve_settings(profile_refs: list[str], explicit: dict[str, object]) -> list[dict[str, object]]:
    """One settings dict per grid: defaults, then the profiles in order (a ``[[grid]]`` table
    over its profile's top level), then every explicit (not None) option over all of them."""
    base = dict(SWEEP_DEFAULTS)
    base.update(merge_profiles(profile_refs))
    grids = base.pop("grid", None) or [{}]
    given = {key: value for key, value in explicit.items() if value is not None}
    return [{**base, **grid, **given} for grid in grids]
