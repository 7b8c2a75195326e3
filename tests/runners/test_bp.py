"""The BP family on torchvision models and its validation."""

import pytest
import torch

from membench.runners import RunnerConfigError, get_runner
from membench.runners.bp import BPCheckpointRunner, BPRunner
from membench.schema import Cell


def test_torchvision_models_run_under_bp_and_checkpointing_keeps_gradients():
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    grads = []
    for runner_cls in (BPRunner, BPCheckpointRunner):
        runner = runner_cls(Cell(runner_cls.name, "tv:resnet18", 32, 2, classes=3), total_steps=2)
        runner.step(images, labels)
        grads.append([p.grad for p in runner.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["bp-deepsup", "ff-naive", "ff-pipelined"])
def test_layer_local_and_deepsup_runners_refuse_torchvision(method):
    with pytest.raises(RunnerConfigError, match="needs a layer stack"):
        get_runner(method).check_cell("tv:resnet50", 224, 32, None)


def test_accumulation_micro_batch_must_divide_the_batch():
    runner = get_runner("bp-accum")
    runner.check_cell("vgg8", 32, 12, 4)
    with pytest.raises(RunnerConfigError, match="does not divide"):
        runner.check_cell("vgg8", 32, 12, 5)


# -- selective checkpointing, offloading, torchvision stages ------------------------------------
def _cuda_estimate(method: str, arch: str, res: int, batch: int) -> int:
    from membench.planning.estimate import estimate_cell
    from membench.schema import Cell

    result = estimate_cell(Cell(method, arch, res, batch, warmup=1, steps=1), "cuda")
    assert result.status == "estimated", result.error
    return result.peak_allocated_bytes


def test_selective_checkpointing_sits_between_bp_and_full_checkpointing_on_vgg8():
    peaks = {m: _cuda_estimate(m, "vgg8", 32, 32) for m in ("bp", "bp-sac", "bp-ckpt")}
    assert peaks["bp-ckpt"] < peaks["bp-sac"] < peaks["bp"], peaks


def test_offloading_lowers_the_device_peak_and_counts_what_went_to_the_host():
    from membench.measure.devices import CpuDevice
    from membench.measure.memtrack import TensorMemoryTracker
    from membench.measure.protocol import prepare_cell
    from membench.schema import Cell

    bp = _cuda_estimate("bp", "vgg8", 32, 32)
    assert _cuda_estimate("bp-offload", "vgg8", 32, 32) < bp
    prepared = prepare_cell(Cell("bp-offload", "vgg-d3-w16", 16, 4, warmup=1), CpuDevice())
    tracker = prepared.tracked(TensorMemoryTracker(), 2)
    offloaded = prepared.runner.offloaded_peak_bytes
    assert offloaded > 0 and prepared.runner.offload.current_bytes == 0  # all freed after backward
    plain = prepare_cell(Cell("bp", "vgg-d3-w16", 16, 4, warmup=1), CpuDevice()).tracked(
        TensorMemoryTracker(), 2
    )
    assert tracker.peak_bytes < plain.peak_bytes  # the host copies are not device memory


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["tv:vgg11", "tv:resnet18"])
def test_checkpointing_a_torchvision_model_at_its_stages_lowers_the_peak(arch):
    bp = _cuda_estimate("bp", arch, 224, 32)
    assert _cuda_estimate("bp-ckpt", arch, 224, 32) < bp
    assert _cuda_estimate("bp-sac", arch, 224, 32) < bp  # in-place ReLUs made out-of-place
