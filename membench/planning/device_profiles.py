"""Device profiles: what a card holds besides a step's tensors, each figure with its source.

A device profile is a profile file (``membench/profiles/NAME.toml``, or ``./profiles/NAME.toml``
where ``membench device calibrate`` writes one) with a ``[card]`` table. The same file is a
sweep profile: its ``gpu`` names the GPU of the datasheet peak table (``measure/peaks.py``), and
its usable memory is the sweep's ``device_mem`` budget unless the file sets one. So each card is
one row, in one place (docs/device-total.md, "The device table")::

    gpu = "NVIDIA A100-SXM4-40GB"

    [card]
    compute_capability = "8.0"
    memory = { value = "39.50GiB", source = "...", assumed = false }
    usable = { value = "39.50GiB", source = "...", assumed = true }
    context = { value = "426MiB", source = "...", assumed = true }
    context_eager = { value = "788MiB", source = "...", assumed = true }
    # optional: cublas_workspace (default: torch's rule for the compute capability),
    # conv_workspace_off, conv_workspace_on (ratios, default: the assumed ones of workspace.py)

Figures:

- ``memory``: what ``torch.cuda.mem_get_info()`` reports as total (``cudaMemGetInfo``: the
  board's memory less what the driver keeps), not the marketing size;
- ``usable``: what one process can hold on the idle card, its own context included: the free
  memory ``mem_get_info`` reports right after CUDA initialises, plus that process's context
  (which it already counts as used). The device total of a step is judged against it;
- ``context``: what the process holds outside PyTorch's caching allocator (the CUDA context,
  loaded kernels, library handles) with lazy module loading, the default (NVIDIA CUDA
  Programming Guide, "Lazy Loading": default on Linux since CUDA 12.2); ``context_eager`` with
  ``CUDA_MODULE_LOADING=EAGER``;
- ``cublas_workspace``: the bytes torch gives each cuBLAS handle and stream
  (``workspace.cublas_workspace_bytes``);
- ``conv_workspace_off`` / ``conv_workspace_on``: the ratio of a convolution's workspace to its
  lowered matrix with ``cudnn.benchmark`` off and on (``workspace.conv_workspace_bytes``).

Every figure carries a ``source`` (a document, a source file with its version, or a measurement
with its command) and ``assumed = true`` where it is not this card's own measurement.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import InputError
from ..profiles import ProfileError, available_profiles, load_profile
from ..units import format_size, parse_bytes
from .workspace import cublas_workspace_bytes

# Lazy module loading is the CUDA default (NVIDIA CUDA Programming Guide, "Lazy Loading":
# Linux since 12.2); CUDA_MODULE_LOADING=EAGER turns it off.
MODULE_LOADING_ENV = "CUDA_MODULE_LOADING"
# When no device profile is named, estimates use this one's context and workspaces (a row
# names the profile it used, in its device_profile column).
DEFAULT_DEVICE_PROFILE = "a100-40gb"


class DeviceProfileError(InputError):
    """A device profile that cannot be found or read; one line."""


@dataclass(frozen=True)
class Figure:
    """One figure of a device profile: its value (bytes, or a ratio), where it comes from, and
    whether it is an assumption rather than this card's own measurement."""

    value: float
    source: str
    assumed: bool = False

    def label(self) -> str:
        """The source as a table shows it, an assumption marked as one."""
        return f"assumed: {self.source}" if self.assumed else self.source


@dataclass(frozen=True)
class DeviceProfile:
    """One card: its GPU and the figures of its [card] table (see the module docstring)."""

    name: str
    gpu: str
    compute_capability: tuple[int, int]
    memory: Figure
    usable: Figure
    context: Figure
    context_eager: Figure
    cublas_workspace: Figure
    conv_workspace_off: Figure
    conv_workspace_on: Figure
    path: str = ""

    def context_bytes(self, module_loading: str | None = None) -> int:
        """The context figure for a way of loading modules (``CUDA_MODULE_LOADING``: EAGER, or
        anything else for lazy loading, the default); None reads the environment."""
        if module_loading is None:
            module_loading = os.environ.get(MODULE_LOADING_ENV, "LAZY")
        eager = module_loading.strip().upper() == "EAGER"
        return int((self.context_eager if eager else self.context).value)

    def conv_workspace_ratio(self, benchmark: bool) -> Figure:
        """The ratio of a convolution's workspace to its lowered matrix, benchmark off or on."""
        return self.conv_workspace_on if benchmark else self.conv_workspace_off

    def figures(self) -> dict[str, Figure]:
        """Every figure by name, in the table's order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.type == "Figure"}


_LOWERED = "the call's lowered (im2col) matrix"
# benchmark off/on -> the assumed ratio of a convolution's workspace to its lowered matrix
# (planning/workspace.py says why these, and what bounds them).
CONV_WORKSPACE_RATIO = {
    False: Figure(
        0.0,
        f"0 x {_LOWERED} with cudnn.benchmark off: the heuristics' first engines for common "
        "shapes are implicit GEMM (docs/device-total.md); calibrate to measure",
        assumed=True,
    ),
    True: Figure(
        1.0,
        f"1 x {_LOWERED} with cudnn.benchmark on: the search may pick an explicit-GEMM or FFT "
        "engine of that order (docs/device-total.md); calibrate to measure",
        assumed=True,
    ),
}
BYTE_FIGURES = ("memory", "usable", "context", "context_eager")
RATIO_FIGURES = ("conv_workspace_off", "conv_workspace_on")


def _figure(table: dict, key: str, where: str, ratio: bool = False) -> Figure:
    entry = table.get(key)
    if not isinstance(entry, dict) or "value" not in entry or "source" not in entry:
        raise DeviceProfileError(
            f"{where}: [card] {key} must be a table with a value and a source, e.g. "
            f'{key} = {{ value = "512MiB", source = "measured: ...", assumed = false }}'
        )
    source, assumed = entry["source"], entry.get("assumed", False)
    if not isinstance(source, str) or not source.strip() or not isinstance(assumed, bool):
        raise DeviceProfileError(
            f"{where}: [card] {key} needs a non-empty source and assumed = true or false"
        )
    raw = entry["value"]
    try:
        if ratio:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not raw >= 0:
                raise ValueError(f"a ratio must be a number >= 0, got {raw!r}")
            value = float(raw)
        else:
            value = parse_bytes(raw)
    except ValueError as err:
        raise DeviceProfileError(f"{where}: [card] {key}: {err}") from None
    return Figure(value, source.strip(), assumed)


def _capability(text, where: str) -> tuple[int, int]:
    parts = str(text).split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise DeviceProfileError(
            f'{where}: [card] compute_capability takes "MAJOR.MINOR", e.g. "8.0", got {text!r}'
        )
    return int(parts[0]), int(parts[1])


def parse_device_table(name: str, gpu: str, table: dict, path: str = "") -> DeviceProfile:
    """A DeviceProfile from a profile's ``gpu`` and ``[card]`` table; DeviceProfileError
    (one line) for a missing or unreadable figure."""
    where = f"device profile {name}"
    known = {"compute_capability", *BYTE_FIGURES, *RATIO_FIGURES, "cublas_workspace"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise DeviceProfileError(
            f"{where}: unknown [card] key {unknown[0]!r}; valid: {', '.join(sorted(known))}"
        )
    if not gpu:
        raise DeviceProfileError(f"{where}: a device profile needs a gpu key (the GPU's name)")
    capability = _capability(table.get("compute_capability"), where)
    figures = {key: _figure(table, key, where) for key in BYTE_FIGURES}
    if figures["usable"].value > figures["memory"].value:
        raise DeviceProfileError(f"{where}: usable memory is more than the card's memory")
    if "cublas_workspace" in table:
        figures["cublas_workspace"] = _figure(table, "cublas_workspace", where)
    else:
        size, source = cublas_workspace_bytes(capability)
        figures["cublas_workspace"] = Figure(size, source)
    for key, benchmark in (("conv_workspace_off", False), ("conv_workspace_on", True)):
        if key in table:
            figures[key] = _figure(table, key, where, ratio=True)
        else:
            figures[key] = CONV_WORKSPACE_RATIO[benchmark]
    return DeviceProfile(name, gpu, capability, path=path, **figures)


def device_profile(ref: str | Path) -> DeviceProfile:
    """The device profile a name (``a100-40gb``) or a .toml path names; DeviceProfileError (one
    line, with the choices) for one that is not a device profile."""
    try:
        profile = load_profile(ref)
    except ProfileError as err:
        raise DeviceProfileError(
            f"{err}; device profiles: {', '.join(device_profiles())}"
        ) from None
    if profile.card is None:
        raise DeviceProfileError(
            f"profile {profile.name} has no [card] table, so it is no device profile; "
            f"device profiles: {', '.join(device_profiles())}"
        )
    gpu = profile.settings.get("gpu")
    return parse_device_table(profile.name, str(gpu or ""), profile.card, str(profile.path))


@functools.lru_cache(maxsize=32)
def _cached_profile(ref: str) -> DeviceProfile:
    return device_profile(ref)


def device_profile_of(profile: DeviceProfile | str | None) -> DeviceProfile:
    """A device profile, by name (read once per process), or the default one for None."""
    if isinstance(profile, DeviceProfile):
        return profile
    return _cached_profile(str(profile or DEFAULT_DEVICE_PROFILE))


def device_profiles() -> list[str]:
    """The names of every device profile ``--profile NAME`` can find."""
    names = []
    for name in available_profiles():
        try:
            if load_profile(name).card is not None:
                names.append(name)
        except ProfileError:
            continue
    return names


def device_table_markdown(names: list[str] | None = None) -> str:
    """The device table as docs/device-total.md shows it: one row per figure of each profile,
    with its value and its source (an assumption marked as one)."""
    lines = ["| profile | figure | value | source |", "| --- | --- | ---: | --- |"]
    for name in names or device_profiles():
        profile = device_profile(name)
        for key, figure in profile.figures().items():
            if key.startswith("conv_workspace"):
                value = f"{figure.value:g} x lowered matrix"
            else:
                value = format_size(figure.value)
            lines.append(f"| {profile.name} | {key} | {value} | {figure.label()} |")
    return "\n".join(lines)


__all__ = [
    "DEFAULT_DEVICE_PROFILE",
    "DeviceProfile",
    "DeviceProfileError",
    "Figure",
    "device_profile",
    "device_profile_of",
    "device_profiles",
    "device_table_markdown",
    "parse_device_table",
]
