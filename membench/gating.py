"""The fixed grids that gate CI, where their baselines live, and how to measure them.

The tests (tests/test_memory_gate.py, tests/test_gpu_perf.py) and the recording script
(scripts/record_baseline.py) both take their cells from here, so a baseline is always recorded on
exactly the grid it is checked against.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from .devices import CpuDevice, Device
from .grid import Cell, expand_grid
from .protocol import run_cell
from .results import append_result, write_env

# Repository root: baselines are committed next to the package, not installed with it.
REPO_ROOT = Path(__file__).resolve().parent.parent
BASELINES_DIR = REPO_ROOT / "baselines"
CPU_BASELINE_DIR = BASELINES_DIR / "cpu"
GPU_BASELINES_DIR = BASELINES_DIR / "gpu"
RECORD_CPU_COMMAND = "python scripts/record_baseline.py --cpu"
RECORD_GPU_COMMAND = "python scripts/record_baseline.py --gpu"

# Named explicitly rather than taken from the entry points, so an installed third-party runner
# does not change the gate's grid.
BUILTIN_METHODS = ["bp", "bp-accum", "bp-ckpt", "bp-deepsup", "ff-naive", "ff-pipelined"]
GPU_PERF_METHODS = ["bp", "bp-accum", "bp-ckpt", "ff-pipelined", "ff-naive"]

# The tracker's bytes are deterministic, so one tracked step after one warmup step (which
# materialises the optimizer state) is enough; the timed step is a by-product nobody gates.
CPU_GATE_TRACKER_STEPS = 1


def cpu_gate_cells() -> list[Cell]:
    """Every built-in method on a tiny arch: the CPU memory gate's grid."""
    return expand_grid(BUILTIN_METHODS, ["vgg-d3-w16"], [16], [4], warmup=1, steps=1)


def gpu_perf_cells() -> list[Cell]:
    """The GPU perf gate's grid: VGG8 at 32x32, batch 64, the five methods the paper timed."""
    return expand_grid(GPU_PERF_METHODS, ["vgg8"], [32], [64], warmup=3, steps=10)


def gpu_slug(device_name: str) -> str:
    """A folder name for a GPU model: 'NVIDIA H200' -> 'nvidia-h200'."""
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "unknown-gpu"


def gpu_baseline_dir(device_name: str, root: Path = GPU_BASELINES_DIR) -> Path:
    """Where the committed GPU baseline for this GPU model lives."""
    return Path(root) / gpu_slug(device_name)


def measure_cpu_gate(out_dir: Path, cells: list[Cell] | None = None) -> Path:
    """Run the CPU gate's cells in this process (tracker memory pass) and write a results folder.

    In-process on purpose: a child process per cell would cost more than the cells themselves.
    """
    out_dir = Path(out_dir)
    device = CpuDevice()
    for cell in cells if cells is not None else cpu_gate_cells():
        append_result(out_dir, run_cell(cell, device, tracker_steps=CPU_GATE_TRACKER_STEPS))
    return out_dir


def replace_folder(target: Path, fill) -> Path:
    """Build a folder with ``fill(tmp_dir)`` and only then swap it in for ``target``.

    Results files are appended to, so recording into an existing baseline would duplicate rows;
    a failed recording must also leave the old baseline intact.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fill(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def record_cpu_baseline(target: Path = CPU_BASELINE_DIR) -> Path:
    """Measure the CPU gate's grid and write it as the baseline folder (replacing any old one)."""
    from .envinfo import collect_env

    def fill(folder: Path) -> None:
        write_env(folder, collect_env())
        measure_cpu_gate(folder)

    return replace_folder(target, fill)


def record_gpu_baseline(device: Device, target: Path | None = None) -> Path:
    """Sweep the GPU perf grid on ``device`` and write it as that GPU model's baseline folder."""
    from .sweep import run_sweep

    target = target or gpu_baseline_dir(device.name())
    return replace_folder(target, lambda folder: run_sweep(gpu_perf_cells(), device, folder))
