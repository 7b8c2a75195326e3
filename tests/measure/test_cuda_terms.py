"""A measured CUDA cell's device total and its terms, each measured on its own: the arithmetic
checked on the CPU against a made-up allocator and NVML, and on a GPU (``pytest -m gpu``) a real
cell whose terms must add up and agree with the allocator's own figures."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from membench.measure import cuda_terms
from membench.measure.cuda_env import with_alloc_conf
from membench.schema import Cell, CellResult

MIB = 2**20


class FakeTracker:
    peak_bytes = 90 * MIB


def test_each_term_comes_from_its_own_measurement(monkeypatch):
    stats = iter([{"requested_bytes.all.peak": 100 * MIB}, {"requested_bytes.all.peak": 95 * MIB}])
    fake_cuda = SimpleNamespace(
        synchronize=lambda index: None,
        memory_stats=lambda index: next(stats),
        memory_reserved=lambda index: 120 * MIB,
        reset_peak_memory_stats=lambda index: None,
    )
    monkeypatch.setattr(cuda_terms.torch, "cuda", fake_cuda)
    prepared = SimpleNamespace(cell=Cell(), tracked=lambda tracker, steps: FakeTracker())
    result = CellResult(Cell(), "cuda:0", "fake", peak_reserved_bytes=128 * MIB)
    cuda_terms.record_cuda_terms(prepared, result, 0, 600 * MIB)
    assert result.device_total_bytes == 600 * MIB  # NVML's figure for the process
    assert result.context_bytes == 480 * MIB  # less what the allocator holds now
    assert result.reserve_slack_bytes == 28 * MIB  # max reserved - requested peak, timed pass
    assert result.workspace_bytes == 5 * MIB  # one more step: requested peak - tensors' peak


def test_without_nvml_the_total_and_the_context_stay_empty(monkeypatch):
    fake_cuda = SimpleNamespace(
        synchronize=lambda index: None,
        memory_stats=lambda index: {},
        memory_reserved=lambda index: 0,
        reset_peak_memory_stats=lambda index: None,
    )
    monkeypatch.setattr(cuda_terms.torch, "cuda", fake_cuda)
    prepared = SimpleNamespace(cell=Cell(compile="default"), tracked=None)
    result = CellResult(Cell(), "cuda:0", "fake")
    cuda_terms.record_cuda_terms(prepared, result, 0, None)
    assert result.device_total_bytes is None and result.context_bytes is None
    assert result.workspace_bytes is None  # a compiled cell: buffers the tracker cannot see


@pytest.mark.gpu
def test_a_real_cells_terms_add_up_on_a_gpu():
    """In a fresh process (its own CUDA context): a VGG cell measured; its terms are each
    measured and must be consistent with the allocator's figures."""
    code = textwrap.dedent(
        """
        import json
        from membench.measure.devices import CudaDevice
        from membench.measure.protocol import run_cell
        from membench.schema import Cell
        r = run_cell(Cell("bp", "vgg11", 64, 16, classes=10, warmup=2, steps=3), CudaDevice(0))
        print(json.dumps(r.row()))
        """
    )
    environ = with_alloc_conf(os.environ, "")  # the cell's (default) allocator configuration
    done = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["status"] == "ok", row["error"]
    assert row["reserve_slack_bytes"] >= 0
    # the Linear head runs GEMMs forward and backward: at least two cuBLAS workspaces
    assert row["workspace_bytes"] >= 2 * 128 * 1024
    assert row["peak_allocated_bytes"] <= row["peak_reserved_bytes"]
    if row["device_total_bytes"] is not None:  # NVML sees this process
        assert 50 * MIB < row["context_bytes"] < 4096 * MIB
        assert row["device_total_bytes"] >= row["peak_reserved_bytes"]
