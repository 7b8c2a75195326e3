"""Sweep profiles: named TOML files of sweep settings, so a whole grid is one ``--profile NAME``.

A profile is a flat TOML table whose keys are the sweep's settings (``membench.config.SETTINGS``:
``arch``, ``res``, ``batch``, ``method``, ``precision``, ``device``, ``timeout``, ...) plus an
optional ``description``. Lists
may be TOML arrays or comma strings. Several profiles combine left to right, each key of a later
profile replacing the earlier value (so ``--profile paper-d7 --profile laptop-8gb`` is the paper's
grid on an emulated 8 GiB card); options given on the command line replace them all.

Profiles are found by name in ``./profiles`` (the current directory) and among the profiles
installed with membench (``membench/profiles``, package data), in that order; a value that is a
path to a ``.toml`` file is read directly.

A grid that is not one cross product is written as ``[[grid]]`` tables: the sweep runs the union
of the grids, each grid taking the profile's top-level keys and replacing the grid axes it sets
(any setting of a cell). A later profile's ``[[grid]]`` tables
replace an earlier one's; grid flags on the command line apply to every grid.

This module only finds and reads the files; ``membench.config`` checks every value, in the one
place where flags and Python arguments are checked too.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from .errors import InputError

PROFILE_SUFFIX = ".toml"
# The profiles installed with membench (package data).
PACKAGE_PROFILES_DIR = Path(str(files("membench") / "profiles"))


class ProfileError(InputError):
    """A profile that cannot be found or read; the message is one line."""


@dataclass
class Profile:
    """One profile file: its name, where it lives, its settings as TOML gave them, its
    ``[[grid]]`` tables (None when it has none) and, for a device profile, its ``[card]``
    table (membench.planning.device_profiles)."""

    name: str
    path: Path
    description: str = ""
    settings: dict[str, object] = field(default_factory=dict)
    grids: list[dict[str, object]] | None = None
    card: dict[str, object] | None = None  # a device profile's [card] table


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
        valid = (
            ", ".join(profiles) or f"none found (looked in ./profiles and {PACKAGE_PROFILES_DIR})"
        )
        raise ProfileError(f"unknown profile {ref!r}; valid: {valid}")
    return profiles[ref]


def load_profile(ref: str | Path) -> Profile:
    """Read one profile (a name or a path); ProfileError with one line if it cannot be read.
    Its values are checked by ``membench.config.build_config``."""
    path = find_profile(str(ref))
    name = path.stem
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ProfileError(f"cannot read profile {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ProfileError(
            f"profile {path} is not UTF-8 text (byte {err.start} cannot be read); save it as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(f"profile {path} is not valid TOML: {err}") from None
    description = data.pop("description", "")
    if not isinstance(description, str):
        raise ProfileError(f"profile {name}: description takes a string, got {description!r}")
    grids = data.pop("grid", None)
    if grids is not None and (
        not isinstance(grids, list) or not all(isinstance(table, dict) for table in grids)
    ):
        raise ProfileError(f"profile {name}: grid must be [[grid]] tables")
    if grids == []:  # would run no cell at all and call that success
        raise ProfileError(
            f"profile {name}: grid is empty; give it at least one [[grid]] table "
            "or leave the key out"
        )
    # A [card] table, not [device]: `device` is the sweep's device setting (cpu, cuda, ...).
    card = data.pop("card", None)
    if card is not None:
        if not isinstance(card, dict):
            raise ProfileError(f"profile {name}: card must be a [card] table")
        # A device profile is the sweep's card: its name (its path where it was named by one:
        # a file outside the profile folders is found by its path only) and, unless the file
        # sets a budget, its usable memory as the budget (planning.device_profiles reads it).
        data.setdefault("device_profile", name if str(ref) == name else str(path.resolve()))
        usable = card.get("usable")
        if isinstance(usable, dict) and "value" in usable:
            data.setdefault("device_mem", usable["value"])
    return Profile(name, path, description, data, grids, card)
