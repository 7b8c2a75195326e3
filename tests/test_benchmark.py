"""The membench_benchmark pytest plugin and its memory gate (membench/pytest_plugin.py).

The user-style suite in examples/pytest-benchmark is run the way a user runs it (a separate
pytest process with --benchmark-enable --benchmark-json, in a folder of its own); the fixture is
also used in this suite directly, where membench's addopts disable pytest-benchmark.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import membench.pytest_plugin
from membench.config import ConfigError
from membench.measure.devices import CpuDevice
from membench.measure.protocol import run_cell
from membench.pytest_plugin import (
    CellFailed,
    MemoryBaselineError,
    MemoryRegression,
    MissingBaselineCell,
    check_peak_memory,
)
from membench.results import append_result
from membench.runners import get_runner
from membench.schema import Cell, CellResult

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pytest-benchmark"
# The example's bp cell (examples/pytest-benchmark/test_hot_steps.py).
BP = dict(arch="vgg-d2-w8", res=8, batch=2, warmup=1, steps=3)
BP_CELL = Cell("bp", **BP)
EXAMPLE_CELLS = {
    "bp_vgg-d2-w8_r8_b2_k10",
    "ff-pipelined_vgg-d2-w8_r8_b2_k10",
    "bp-accum_vgg-d2-w8_r8_b2_mb1_k10",
}


def run_user_suite(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """``pytest ARGS`` in a copy of the example, as a user's project would run it."""
    project = folder / "project"
    if not project.exists():
        shutil.copytree(EXAMPLE, project)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MEMBENCH_REQUIRE_GPU", None)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--membench-device",
            "cpu",
            "--benchmark-enable",
            *args,
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def user_json(tmp_path_factory) -> Path:
    """The example suite's pytest-benchmark JSON."""
    folder = tmp_path_factory.mktemp("user_suite")
    out = folder / "bench.json"
    run = run_user_suite(folder, f"--benchmark-json={out}")
    assert run.returncode == 0, run.stdout + run.stderr
    return out


def bp_step_holding_4kib(monkeypatch) -> None:
    """Make the bp runner keep 4 KiB more alive during its step (an injected regression)."""
    bp_runner = get_runner("bp")
    original_step = bp_runner.step

    def hungrier_step(self, images, labels):
        extra = torch.empty(1024)  # 4096 bytes, alive for the whole step
        out = original_step(self, images, labels)
        del extra
        return out

    monkeypatch.setattr(bp_runner, "step", hungrier_step)


# -- the plugin --------------------------------------------------------------------------------
def test_plugin_is_registered_under_pytest11(request):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["pytest11"] == {
        "membench": "membench.pytest_plugin"
    }
    # Loaded through that entry point: only an entry point registers it under this name.
    assert request.config.pluginmanager.get_plugin("membench") is membench.pytest_plugin


def test_loading_the_plugin_does_not_import_torch():
    # Every pytest run in an environment with membench loads the plugin.
    code = (
        "import sys, membench.pytest_plugin; "
        "heavy = sorted(m for m in ('torch', 'pandas', 'scipy', 'membench.measure.protocol') "
        "if m in sys.modules); print(heavy); sys.exit(bool(heavy))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


# -- the user-style suite ----------------------------------------------------------------------
@pytest.mark.slow
def test_user_suite_json_carries_membench_figures(user_json):
    benchmarks = json.loads(user_json.read_text())["benchmarks"]
    infos = {b["extra_info"]["cell_id"]: b for b in benchmarks}
    assert set(infos) == EXAMPLE_CELLS
    for bench in infos.values():
        info = bench["extra_info"]
        assert info["peak_allocated_bytes"] > 0
        assert info["imgs_per_s"] > 0
        assert (info["device"], info["memory_source"]) == ("cpu", "tracker")
        assert info["device_name"] == CpuDevice().name()
        # One step per round, as many rounds as the cell's steps.
        assert (bench["stats"]["rounds"], bench["stats"]["iterations"]) == (3, 1)
    # The JSON's peak is the protocol's (run_cell's tracker pass on the same cell).
    assert (
        infos[BP_CELL.cell_id]["extra_info"]["peak_allocated_bytes"]
        == run_cell(BP_CELL, CpuDevice()).peak_allocated_bytes
    )


@pytest.mark.slow
def test_memory_baseline_option_fails_the_grown_cell(user_json, tmp_path):
    """--membench-memory-baseline gates every cell: against a baseline whose bp peak is 4 KiB
    lower, bp fails with the byte difference and the other cells pass."""
    data = json.loads(user_json.read_text())
    for bench in data["benchmarks"]:
        if bench["extra_info"]["cell_id"] == BP_CELL.cell_id:
            bench["extra_info"]["peak_allocated_bytes"] -= 4096
    lower = tmp_path / "lower.json"
    lower.write_text(json.dumps(data))
    run = run_user_suite(tmp_path, f"--membench-memory-baseline={lower}", "-q")
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert "1 failed, 2 passed" in output, output
    assert "test_training_step[bp]" in output and "grew by 4096 B" in output, output


# -- the fixture in this suite (pytest-benchmark disabled) ---------------------------------------
def test_disabled_benchmark_still_measures_the_cell(membench_benchmark):
    assert membench_benchmark.benchmark.disabled  # membench's addopts: --benchmark-disable
    result = membench_benchmark("bp", device="cpu", **BP)
    assert isinstance(result, CellResult) and result is membench_benchmark.result
    assert result.cell == BP_CELL and (result.device, result.memory_source) == ("cpu", "tracker")
    assert len(result.step_ms) == BP_CELL.steps  # every round ran, not pedantic's single call
    assert result.imgs_per_s == pytest.approx(2 * 3 / (sum(result.step_ms) / 1e3))
    assert result.peak_allocated_bytes == run_cell(BP_CELL, CpuDevice()).peak_allocated_bytes
    assert result.breakdown.total == result.peak_allocated_bytes
    info = membench_benchmark.benchmark.extra_info
    assert info["peak_allocated_bytes"] == result.peak_allocated_bytes
    assert info["cell_id"] == BP_CELL.cell_id and info["imgs_per_s"] == result.imgs_per_s


def test_fixture_takes_a_cell(membench_benchmark):
    result = membench_benchmark.cell(BP_CELL, "cpu")
    assert result.cell == BP_CELL and len(result.step_ms) == 3


def test_memory_gate_passes_for_the_unmodified_cell(membench_benchmark, user_json):
    membench_benchmark("bp", device="cpu", memory_baseline=user_json, **BP)
    check = membench_benchmark.memory_check
    assert check.passed and check.difference_bytes == 0 and check.allowed_bytes == 0
    assert membench_benchmark.benchmark.extra_info["memory_difference_bytes"] == 0


def test_memory_gate_fails_on_a_4kib_hold(membench_benchmark, user_json, monkeypatch):
    bp_step_holding_4kib(monkeypatch)
    with pytest.raises(MemoryRegression, match="grew by 4096 B") as info:
        membench_benchmark("bp", device="cpu", memory_baseline=user_json, **BP)
    assert info.value.check.difference_bytes == 4096
    assert membench_benchmark.benchmark.extra_info["memory_difference_bytes"] == 4096


def test_memory_gate_against_a_membench_results_folder(membench_benchmark, tmp_path, monkeypatch):
    append_result(tmp_path, run_cell(BP_CELL, CpuDevice()))
    bp_step_holding_4kib(monkeypatch)
    result = membench_benchmark("bp", device="cpu", **BP)
    with pytest.raises(MemoryRegression, match="grew by 4096 B"):
        check_peak_memory(result, tmp_path)
    check = check_peak_memory(result, tmp_path / "cells.csv", max_increase_pct=11.0)
    assert check.passed and check.difference_bytes == 4096


@pytest.mark.filterwarnings("ignore:Benchmark fixture was not used")
def test_fixture_refuses_what_is_not_one_cell(membench_benchmark):
    with pytest.raises(ConfigError, match="does not take 'timeout'"):
        membench_benchmark("bp", timeout=10, **BP)
    with pytest.raises(ConfigError, match="one cell, but these options make 2"):
        membench_benchmark("bp,bp-ckpt", device="cpu", **BP)
    with pytest.raises(ConfigError, match="too small for vgg8"):
        membench_benchmark("bp", arch="vgg8", res=4, batch=2)


def test_a_cell_that_does_not_run_ok_fails_the_test_with_its_error(membench_benchmark):
    with pytest.raises(CellFailed, match="oom: .*budget"):
        membench_benchmark("bp", device="cpu", device_mem="1KiB", **BP)


def test_fixture_measures_once_per_test(membench_benchmark):
    membench_benchmark("bp", device="cpu", **BP)
    with pytest.raises(RuntimeError, match="one cell per test"):
        membench_benchmark("bp", device="cpu", **BP)


# -- matching in the memory gate (no torch needed) -----------------------------------------------
def result_on(device: str, device_name: str, source: str, peak: int) -> CellResult:
    return CellResult(
        BP_CELL,
        device,
        device_name,
        step_ms=[1.0, 1.0, 1.0],
        peak_allocated_bytes=peak,
        memory_source=source,
    )


def write_json(path: Path, *infos: dict) -> Path:
    path.write_text(
        json.dumps(
            {
                "benchmarks": [
                    {"name": f"test_{i}", "fullname": f"t.py::test_{i}", "extra_info": info}
                    for i, info in enumerate(infos)
                ]
                + [{"name": "not_membench", "extra_info": {}}]
            }
        )
    )
    return path


def info(device: str, device_name: str, source: str, peak: int) -> dict:
    return {
        "cell_id": BP_CELL.cell_id,
        "device": device,
        "device_name": device_name,
        "memory_source": source,
        "peak_allocated_bytes": peak,
    }


def test_gate_matches_device_kind_and_gpu_model(tmp_path):
    baseline = write_json(
        tmp_path / "b.json",
        info("cpu", "Some CPU", "tracker", 1000),
        info("cuda:0", "NVIDIA H200", "cuda_allocator", 100_000),
    )
    # CPU cells match across CPU models; the tracker is exact.
    assert check_peak_memory(result_on("cpu", "Other CPU", "tracker", 1000), baseline).passed
    with pytest.raises(MemoryRegression, match="grew by 1 B"):
        check_peak_memory(result_on("cpu", "Other CPU", "tracker", 1001), baseline)
    # CUDA cells match on the GPU model (cuda:1 is the same kind), 1 % allowed by default.
    check = check_peak_memory(
        result_on("cuda:1", "NVIDIA H200", "cuda_allocator", 101_000), baseline
    )
    assert (check.difference_bytes, check.allowed_bytes) == (1000, 1000)
    with pytest.raises(MemoryRegression, match="grew by 1001 B"):
        check_peak_memory(result_on("cuda:0", "NVIDIA H200", "cuda_allocator", 101_001), baseline)
    with pytest.raises(MemoryRegression):
        check_peak_memory(
            result_on("cuda:0", "NVIDIA H200", "cuda_allocator", 100_001),
            baseline,
            max_increase_pct=0,
        )
    with pytest.raises(MissingBaselineCell, match="only on: cuda:0 \\(NVIDIA H200"):
        check_peak_memory(result_on("cuda:0", "NVIDIA A100", "cuda_allocator", 1), baseline)
    # A decrease passes.
    assert (
        check_peak_memory(result_on("cpu", "x", "tracker", 10), baseline).difference_bytes == -990
    )


def test_gate_refuses_a_bad_or_ambiguous_baseline(tmp_path):
    result = result_on("cpu", "x", "tracker", 1000)
    with pytest.raises(MemoryBaselineError, match="does not exist"):
        check_peak_memory(result, tmp_path / "missing.json")
    with pytest.raises(MemoryBaselineError, match="without a cells.csv"):
        check_peak_memory(result, tmp_path)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(MemoryBaselineError, match="cannot read"):
        check_peak_memory(result, tmp_path / "junk.json")
    two = write_json(
        tmp_path / "two.json", info("cpu", "a", "tracker", 1000), info("cpu", "b", "tracker", 1200)
    )
    with pytest.raises(MemoryBaselineError, match="different peaks"):
        check_peak_memory(result, two)
    with pytest.raises(MissingBaselineCell, match="pytest --benchmark-enable --benchmark-json"):
        check_peak_memory(result, write_json(tmp_path / "none.json"))
