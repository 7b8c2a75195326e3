"""GPU perf gate: the gating grid on CUDA against the committed baseline for this GPU model.

The grid is swept in worker processes (``run_sweep``) and compared with ``membench compare``'s
rules; the GPU model is the ``device_name`` of the measured rows, so the sweep runs before this
process opens a CUDA context of its own. Then each cell is measured once more in this process by
the ``membench_benchmark`` fixture (pytest-benchmark's rounds; ``--benchmark-json`` keeps them)
and its allocator peak checked against the sweep's.

The ``gpu``-marked tests are skipped without CUDA (conftest); with ``MEMBENCH_REQUIRE_GPU=1``
(the workflow) a missing CUDA is a collection error and a missing baseline for this GPU model is
a failure that gives the record command (``python scripts/record_baseline.py --gpu``), never a
skip. ``MEMBENCH_NEW_GPU_BASELINE_DIR`` names where such a run saves its measurement as the
baseline to commit. The last test checks that rule on the CPU.
"""

from __future__ import annotations

import pytest

from membench.compare import compare_results
from membench.execute.sweep import run_sweep
from membench.gating import (
    GPU_BASELINES_ENV,
    NEW_GPU_BASELINE_ENV,
    RECORD_GPU_COMMAND,
    REQUIRE_GPU_ENV,
    MissingGpuBaseline,
    committed_gpu_baseline,
    cpu_gate_cells,
    gpu_baseline_dir,
    gpu_perf_cells,
    gpu_required,
    measure_cpu_gate,
    measured_device_name,
    new_gpu_baseline_dir,
)
from membench.measure.devices import resolve_device
from membench.pytest_plugin import check_peak_memory
from membench.results import read_cells

gpu = pytest.mark.gpu


def baseline_or_fail(measured):
    """The committed baseline for the GPU model ``measured`` ran on. Missing: a failure under
    MEMBENCH_REQUIRE_GPU=1, a skip otherwise; the message gives the record command either way."""
    try:
        return committed_gpu_baseline(measured, save_to=new_gpu_baseline_dir())
    except MissingGpuBaseline as err:
        if gpu_required():
            pytest.fail(str(err), pytrace=False)
        pytest.skip(str(err))


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


@gpu
def test_every_gpu_cell_runs(measured):
    cells = read_cells(measured)
    assert len(cells) == len(gpu_perf_cells())
    assert list(cells["status"]) == ["ok"] * len(cells), cells["error"].tolist()
    assert set(cells["memory_source"]) == {"cuda_allocator"}
    assert (cells["peak_allocated_bytes"] > 0).all()


@gpu
def test_gpu_memory_and_throughput_within_thresholds(measured):
    baseline = baseline_or_fail(measured)
    comparison = compare_results(baseline, measured)
    reasons = [f"{r.cell_id}: {reason}" for r in comparison.regressions for reason in r.reasons]
    reasons += [f"missing: {c['cell_id']}" for c in comparison.only_in_baseline]
    assert comparison.passed, "\n".join(
        reasons
        + comparison.notes
        + [f"if intended, re-record with `{RECORD_GPU_COMMAND}` and commit it"]
    )
    assert len(comparison.rows) == len(gpu_perf_cells())


# After the sweeps: the fixture measures in this process, which opens its CUDA context.
@gpu
@pytest.mark.parametrize("cell", gpu_perf_cells(), ids=lambda cell: cell.method)
def test_hot_step_peak_matches_the_sweep(membench_benchmark, device, measured, cell):
    """The same cell in this process, one step per pytest-benchmark round, has the sweep
    worker's allocator peak within the allocator's 1 % (its repeatability, which the gate's
    default threshold relies on)."""
    result = membench_benchmark.cell(cell, str(device))
    assert result.memory_source == "cuda_allocator" and len(result.step_ms) == cell.steps
    check = check_peak_memory(result, measured)  # fails past +1 %
    assert abs(check.difference_bytes) <= check.allowed_bytes, check.describe()


# -- runs on the CPU: the rule above, without CUDA --------------------------------------------
def outcome(measured):
    """What ``baseline_or_fail`` did: the folder it returned, or the fail or skip it raised."""
    try:
        return baseline_or_fail(measured)
    except (pytest.fail.Exception, pytest.skip.Exception) as raised:
        return raised


def test_a_required_gate_fails_without_a_baseline(tmp_path, monkeypatch):
    """MEMBENCH_REQUIRE_GPU=1 and no baseline for the measured model: a failure with the record
    command (and the measurement saved as a baseline to commit), not a skip. A CPU results folder
    stands in for the GPU sweep's: only its rows' device_name matters here."""
    measured = measure_cpu_gate(tmp_path / "measured", cpu_gate_cells()[:1])
    name = measured_device_name(measured)
    empty = tmp_path / "baselines-gpu"
    empty.mkdir()
    monkeypatch.setenv(GPU_BASELINES_ENV, str(empty))
    monkeypatch.setenv(NEW_GPU_BASELINE_ENV, str(tmp_path / "new"))
    monkeypatch.setenv(REQUIRE_GPU_ENV, "1")

    failed = outcome(measured)
    assert isinstance(failed, pytest.fail.Exception), f"not a failure: {failed!r}"
    message = str(failed)
    assert f"no GPU baseline for {name!r} at {gpu_baseline_dir(name, empty)}" in message
    assert f"`{RECORD_GPU_COMMAND}`" in message
    saved = gpu_baseline_dir(name, tmp_path / "new")
    assert f"saved as a baseline to {saved}" in message
    assert read_cells(saved)["cell_id"].tolist() == read_cells(measured)["cell_id"].tolist()

    # Not required: the same message, as a skip (an ordinary developer run without a baseline).
    monkeypatch.delenv(REQUIRE_GPU_ENV)
    skipped = outcome(measured)
    assert isinstance(skipped, pytest.skip.Exception) and RECORD_GPU_COMMAND in str(skipped)

    # With the saved baseline committed, the gate has its baseline and compares.
    monkeypatch.setenv(REQUIRE_GPU_ENV, "1")
    monkeypatch.setenv(GPU_BASELINES_ENV, str(tmp_path / "new"))
    assert outcome(measured) == saved
