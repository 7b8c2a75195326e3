"""GPU perf gate: the gating grid on CUDA against the committed baseline for this GPU model.

The GPU model is the ``device_name`` of the measured rows, so the test process never opens a
CUDA context of its own. Skipped without CUDA (conftest) and where no baseline exists for this GPU
model; record one with ``python scripts/record_baseline.py --gpu`` and commit
``baselines/gpu/<gpu-model>/``.
"""

from __future__ import annotations

import pytest

from membench.compare import compare_results
from membench.devices import resolve_device
from membench.gating import (
    RECORD_GPU_COMMAND, gpu_baseline_dir, gpu_perf_cells, measured_device_name,
)
from membench.results import read_cells
from membench.sweep import run_sweep

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def device():
    # Never ask this device for its name here: torch.cuda.get_device_name would open a CUDA
    # context in the test process, on the GPU the workers measure.
    return resolve_device("cuda")


@pytest.fixture(scope="module")
def measured(device, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_perf")
    run_sweep(gpu_perf_cells(), device, out)
    return out


@pytest.fixture(scope="module")
def baseline(measured):
    """The committed baseline for the GPU model the sweep's worker measured on."""
    name = measured_device_name(measured)
    folder = gpu_baseline_dir(name)
    if not (folder / "cells.csv").exists():
        pytest.skip(f"no GPU baseline for {name!r} at {folder}; record one with "
                    f"`{RECORD_GPU_COMMAND}` on this machine and commit it")
    return folder


def test_every_gpu_cell_runs(measured):
    cells = read_cells(measured)
    assert len(cells) == len(gpu_perf_cells())
    assert list(cells["status"]) == ["ok"] * len(cells), cells["error"].tolist()
    assert set(cells["memory_source"]) == {"cuda_allocator"}
    assert (cells["peak_allocated_bytes"] > 0).all()


def test_gpu_memory_and_throughput_within_thresholds(baseline, measured):
    comparison = compare_results(baseline, measured)
    reasons = [f"{r.cell_id}: {reason}" for r in comparison.regressions for reason in r.reasons]
    reasons += [f"missing: {c['cell_id']}" for c in comparison.only_in_baseline]
    assert comparison.passed, "\n".join(reasons + comparison.notes + [
        f"if intended, re-record with `{RECORD_GPU_COMMAND}` and commit it"])
    assert len(comparison.rows) == len(gpu_perf_cells())


def test_allocator_peak_is_repeatable(device, measured, tmp_path):
    """Two sweeps of the same cell agree on max_memory_allocated within 1 % (the allocator default)."""
    cell = gpu_perf_cells()[0]
    run_sweep([cell], device, tmp_path)
    again = read_cells(tmp_path).iloc[0]["peak_allocated_bytes"]
    first = read_cells(measured).set_index("cell_id").loc[cell.cell_id, "peak_allocated_bytes"]
    assert abs(again - first) <= 0.01 * first
