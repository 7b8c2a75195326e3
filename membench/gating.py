"""The fixed grids that gate CI, where their baselines live, and how to measure them.

The tests (tests/measure/test_memory_gate.py, tests/test_gpu_perf.py) and the recording script
(scripts/record_baseline.py) both take their cells from here, so a baseline is always recorded on
exactly the grid it is checked against. The committed baselines are package data
(``membench/baselines``), found through the installed package, so the gate means the same in a
wheel as in a checkout.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from .config import expand_grid
from .results import append_result, read_cells, write_env
from .runners import SINGLE_DEVICE_METHODS
from .units import slug

if TYPE_CHECKING:
    from .measure.devices import Device
from .schema import CELLS_FILE, ENV_FILE, STEPS_FILE, Cell

# The committed baselines, as installed with the package (a folder of a checkout's package in
# an editable install, where the recording script writes them).
BASELINES_DIR = Path(str(files("membench") / "baselines"))
CPU_BASELINE_DIR = BASELINES_DIR / "cpu"
GPU_BASELINES_DIR = BASELINES_DIR / "gpu"
RECORD_CPU_COMMAND = "python scripts/record_baseline.py --cpu"
RECORD_GPU_COMMAND = "python scripts/record_baseline.py --gpu"

# The GPU gate's switches, read from the environment (the workflow sets them):
# MEMBENCH_REQUIRE_GPU=1 makes a missing CUDA (tests/conftest.py) and a missing baseline for the
# GPU model (committed_gpu_baseline, in tests/test_gpu_perf.py) failures instead of skips;
# MEMBENCH_GPU_BASELINES moves the folder of committed GPU baselines (default
# membench/baselines/gpu);
# MEMBENCH_NEW_GPU_BASELINE_DIR is where a run without a baseline saves its measurement as one.
REQUIRE_GPU_ENV = "MEMBENCH_REQUIRE_GPU"
GPU_BASELINES_ENV = "MEMBENCH_GPU_BASELINES"
NEW_GPU_BASELINE_ENV = "MEMBENCH_NEW_GPU_BASELINE_DIR"

# Built-in methods only, named in membench.runners rather than taken from the entry points, so
# an installed third-party runner does not change the gate's grid.
GPU_PERF_METHODS = ["bp", "bp-accum", "bp-ckpt", "ff-pipelined", "ff-naive"]

# The tracker's bytes are deterministic, so one tracked step after one warmup step (which
# materialises the optimizer state) is enough; the timed step is a by-product nobody gates.
CPU_GATE_TRACKER_STEPS = 1


def cpu_gate_cells() -> list[Cell]:
    """Every built-in method of one device on a tiny arch, and bp and ff-pipelined in bf16:
    the CPU memory gate's grid."""
    grid = dict(arch="vgg-d3-w16", res=16, batch=4, warmup=1, steps=1)
    return expand_grid(method=list(SINGLE_DEVICE_METHODS), **grid) + expand_grid(
        method=["bp", "ff-pipelined"], precision="bf16", **grid
    )


def gpu_perf_cells() -> list[Cell]:
    """The GPU perf gate's grid: VGG8 at 32x32, batch 64, the five methods the paper timed, and
    bp in bf16 (autocast, as trained in practice); three rounds a cell, so throughput is judged
    against run-to-run noise (docs/gating.md)."""
    grid = dict(arch="vgg8", res=32, batch=64, warmup=3, steps=10, rounds=3)
    return expand_grid(method=GPU_PERF_METHODS, **grid) + expand_grid(
        method="bp", precision="bf16", **grid
    )


def gpu_baseline_dir(device_name: str, root: Path = GPU_BASELINES_DIR) -> Path:
    """Where the committed GPU baseline for this GPU model lives."""
    return Path(root) / slug(device_name, empty="unknown-gpu")


def gpu_required() -> bool:
    """Whether this run must measure on a GPU and compare against its baseline
    (``MEMBENCH_REQUIRE_GPU=1``): then neither a missing CUDA nor a missing baseline may skip."""
    return os.environ.get(REQUIRE_GPU_ENV) == "1"


def gpu_baselines_root() -> Path:
    """The folder of committed GPU baselines: ``MEMBENCH_GPU_BASELINES`` or
    membench/baselines/gpu."""
    return Path(os.environ.get(GPU_BASELINES_ENV) or GPU_BASELINES_DIR)


def new_gpu_baseline_dir() -> Path | None:
    """Where a run without a baseline saves its measurement (``MEMBENCH_NEW_GPU_BASELINE_DIR``)."""
    value = os.environ.get(NEW_GPU_BASELINE_ENV)
    return Path(value) if value else None


class MissingGpuBaseline(LookupError):
    """No committed baseline for the measured GPU model; the message says how to record one.
    ``saved_to`` is where this run's measurement was saved as a baseline, if it was."""

    def __init__(self, message: str, saved_to: Path | None = None):
        super().__init__(message)
        self.saved_to = saved_to


def _shown(path: Path) -> str:
    """A path as a reader of a CI log wants it: relative to the working directory where it lies
    in it (the repository, in CI)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def save_gpu_recording(measured: Path, root: Path) -> Path:
    """Save a measured GPU gate folder as ``root/<gpu-slug>/``, checked as a recorded baseline is
    (every cell ok, passes against itself; BaselineError otherwise). Returns the folder."""
    measured = Path(measured)

    def fill(folder: Path) -> None:
        for name in (CELLS_FILE, STEPS_FILE, ENV_FILE):
            if (measured / name).is_file():
                shutil.copy2(measured / name, folder / name)

    return replace_folder(
        lambda folder: gpu_baseline_dir(measured_device_name(folder), root), fill, parent=root
    )


def committed_gpu_baseline(
    measured: Path, root: Path | None = None, save_to: Path | None = None
) -> Path:
    """The committed baseline for the GPU model ``measured`` (a results folder of the GPU gate's
    grid) ran on, under ``root`` (default ``gpu_baselines_root()``).

    Without one, raises MissingGpuBaseline with the record command; with ``save_to``, first saves
    ``measured`` there as ``<gpu-slug>/`` (``save_gpu_recording``: the same sweep of the same grid
    the record command runs), so a CI run on a new GPU model leaves a baseline to commit. The GPU
    model comes from the rows, never from a CUDA context, so this runs without CUDA.
    """
    root = Path(root) if root is not None else gpu_baselines_root()
    name = measured_device_name(measured)
    folder = gpu_baseline_dir(name, root)
    if (folder / CELLS_FILE).is_file():
        return folder
    lines = [
        f"no GPU baseline for {name!r} at {_shown(folder)}, so memory and throughput were "
        f"not compared. Record one on this machine with `{RECORD_GPU_COMMAND}` and commit "
        f"{_shown(folder)}/."
    ]
    saved = None
    if save_to is not None:
        try:
            saved = save_gpu_recording(measured, Path(save_to))
        except BaselineError as err:
            lines.append(f"This run's measurement is not a usable baseline ({err}).")
        else:
            lines.append(
                f"This run's measurement of the same grid was saved as a baseline to "
                f"{_shown(saved)}: copy it to {_shown(folder)}/ and commit it."
            )
    raise MissingGpuBaseline(" ".join(lines), saved)


def measure_cpu_gate(out_dir: Path, cells: list[Cell] | None = None) -> Path:
    """Run the CPU gate's cells in this process (tracker memory pass) and write a results folder.

    In-process on purpose: a child process per cell would cost more than the cells themselves.
    """
    out_dir = Path(out_dir)
    from .measure.devices import CpuDevice
    from .measure.protocol import run_cell

    device = CpuDevice()
    for cell in cells if cells is not None else cpu_gate_cells():
        append_result(out_dir, run_cell(cell, device, tracker_steps=CPU_GATE_TRACKER_STEPS))
    return out_dir


class BaselineError(RuntimeError):
    """A new recording that is not a usable baseline; the committed one was left as it was."""


def check_baseline(folder: Path) -> int:
    """Raise BaselineError unless every cell of ``folder`` ran ``ok`` and the folder passes
    against itself (else the gate could never pass); returns the number of cells."""
    from .compare import compare_results

    cells = read_cells(folder)
    if not len(cells):
        raise BaselineError("the recording has no cells; not a usable baseline")
    bad = cells[cells["status"] != "ok"]
    if len(bad):
        raise BaselineError(
            f"{len(bad)} cell(s) did not run ok: {', '.join(bad['cell_id'])}; not a usable baseline"
        )
    if not compare_results(folder, folder).passed:
        raise BaselineError("the new recording does not pass against itself")
    return len(cells)


def replace_folder(
    target: Path | Callable[[Path], Path],
    fill: Callable[[Path], object],
    *,
    parent: Path | None = None,
) -> Path:
    """Build a folder with ``fill(tmp_dir)``, check it, and only then swap it in for ``target``.

    Results files are appended to, so recording into an existing baseline would duplicate rows;
    a failed or unusable recording (check_baseline raises BaselineError) must leave the old
    baseline intact. ``target`` is a path, or a function of the filled folder that gives it (a
    GPU baseline is named after the GPU its rows were measured on); then ``parent`` is the folder
    it will lie in, where the temporary folder is made so the swap is a rename.
    """
    if not callable(target):
        target, parent = Path(target), Path(target).parent
    elif parent is None:
        raise ValueError("replace_folder needs parent when target is a function")
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".baseline-", dir=parent))
    try:
        fill(tmp)
        check_baseline(tmp)
        final = Path(target(tmp) if callable(target) else target)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def record_cpu_baseline(target: Path = CPU_BASELINE_DIR) -> Path:
    """Measure the CPU gate's grid and write it as the baseline folder (replacing any old one)."""
    from .envinfo import collect_env

    def fill(folder: Path) -> None:
        write_env(folder, collect_env())
        measure_cpu_gate(folder)

    return replace_folder(target, fill)


def measured_device_name(folder: Path) -> str:
    """The ``device_name`` of a results folder's rows (one device per folder)."""
    names = sorted({str(name) for name in read_cells(folder)["device_name"].dropna()})
    if len(names) != 1:
        raise BaselineError(
            f"{folder} holds rows of {len(names)} device models, not one: "
            f"{', '.join(names) or 'none'}"
        )
    return names[0]


def record_gpu_baseline(
    device: Device, target: Path | None = None, root: Path = GPU_BASELINES_DIR
) -> Path:
    """Sweep the GPU perf grid on ``device`` and write it as that GPU model's baseline folder.

    Without ``target`` the folder is ``root/<gpu-slug>``, named after the ``device_name`` the
    sweep's worker recorded: asking the device for its name here would open a CUDA context in
    this process, on the GPU being measured.
    """
    from .execute.sweep import run_sweep

    def fill(folder: Path) -> None:
        run_sweep(gpu_perf_cells(), device, folder)

    if target is not None:
        return replace_folder(target, fill)
    return replace_folder(
        lambda folder: gpu_baseline_dir(measured_device_name(folder), root), fill, parent=root
    )
