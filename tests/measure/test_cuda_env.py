"""A cell's CUDA runtime settings reach its process: the allocator configuration in a worker's
environment before CUDA initialises (a new worker when it changes), a refusal where the process
runs another, cudnn.benchmark for the cell's steps only; CPU cells refuse both."""

from __future__ import annotations

import dataclasses

import torch

from membench.execute import local
from membench.execute.local import LocalExecutor
from membench.execute.worker import Target
from membench.measure.cuda_env import (
    alloc_conf_refusal,
    apply_alloc_conf,
    environ_alloc_conf,
    with_alloc_conf,
)
from membench.measure.devices import CpuDevice, CudaDevice
from membench.schema import OK, Cell, CellResult

EXPANDABLE = "expandable_segments:True"


def test_the_cells_configuration_replaces_whatever_the_environment_held():
    environ = {"PYTORCH_ALLOC_CONF": "max_split_size_mb:64", "PATH": "/bin"}
    assert environ_alloc_conf(environ) == "max_split_size_mb:64"
    assert with_alloc_conf(environ, EXPANDABLE) == {
        "PATH": "/bin",
        "PYTORCH_CUDA_ALLOC_CONF": EXPANDABLE,
    }
    assert with_alloc_conf(environ, "") == {"PATH": "/bin"}  # PyTorch's defaults
    apply_alloc_conf(EXPANDABLE, environ)
    assert environ_alloc_conf(environ) == EXPANDABLE and "PYTORCH_ALLOC_CONF" not in environ


def test_a_process_under_another_configuration_refuses_the_cell():
    assert (
        alloc_conf_refusal(EXPANDABLE, {"PYTORCH_CUDA_ALLOC_CONF": " expandable_segments:True"})
        is None
    )
    refusal = alloc_conf_refusal(EXPANDABLE, {})
    assert "--isolation process" in refusal and "\n" not in refusal
    cuda = CudaDevice(0)  # constructing it touches no GPU
    assert cuda.refusal(Cell()) == alloc_conf_refusal("", None)


def test_cudnn_benchmark_is_the_cells_for_its_steps_only():
    before = torch.backends.cudnn.benchmark
    with CudaDevice(0).cell_settings(Cell(cudnn_benchmark="on")):
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark == before
    with CudaDevice(0).cell_settings(Cell()):
        assert torch.backends.cudnn.benchmark is False


def test_cpu_cells_refuse_cuda_only_settings_and_are_unchanged_by_default():
    cpu = CpuDevice()
    assert cpu.refusal(Cell()) is None
    assert "CUDA" in cpu.refusal(Cell(alloc_conf=EXPANDABLE))
    assert "CUDA" in cpu.refusal(Cell(cudnn_benchmark="on"))


class FakeWorker:
    """A worker that remembers the environment it was started with."""

    started: list = []

    def __init__(self, target, methods, *, environ, **_):
        self.target, self.environ = target, environ
        self.cells_run, self.budget = 0, None
        FakeWorker.started.append(self)

    def wait_ready(self):
        pass

    def run(self, cell, timeout_s):
        self.cells_run += 1
        return CellResult(cell, "cuda:0", "fake", status=OK)

    def close(self):
        pass


def test_a_worker_starts_with_its_cells_configuration_and_a_new_one_for_another(monkeypatch):
    monkeypatch.setattr(local, "IsolatedWorker", FakeWorker)
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:64")
    FakeWorker.started = []
    executor = LocalExecutor(Target("cuda"), "process", None, ["bp"])
    cells = [Cell(), Cell(batch=64), Cell(alloc_conf=EXPANDABLE), Cell(alloc_conf=EXPANDABLE)]
    for cell in cells:
        executor.run_one(cell)
    confs = [environ_alloc_conf(w.environ) for w in FakeWorker.started]
    assert confs == ["", EXPANDABLE]  # the user's variable replaced; one worker per config
    # an estimate's worker never restarts for it: no CUDA allocator runs there
    FakeWorker.started = []
    estimating = LocalExecutor(Target("cuda", estimate_kind="cuda"), "process", None, ["bp"])
    for cell in cells:
        estimating.run_one(dataclasses.replace(cell))
    assert len(FakeWorker.started) == 1
