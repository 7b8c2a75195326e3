"""The BP family on torchvision models and its validation."""

import pytest
import torch

from membench.runners import RunnerConfigError, get_runner
from membench.runners.bp import BPCheckpointRunner, BPRunner


def test_torchvision_models_run_under_bp_and_checkpointing_keeps_gradients():
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    grads = []
    for runner_cls in (BPRunner, BPCheckpointRunner):
        runner = runner_cls("tv:resnet18", 32, 3, seed=0, total_steps=2)
        runner.step(images, labels)
        grads.append([p.grad for p in runner.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["bp-deepsup", "ff-naive", "ff-pipelined"])
def test_layer_local_and_deepsup_runners_refuse_torchvision(method):
    with pytest.raises(RunnerConfigError, match="conv stack"):
        get_runner(method).check_cell("tv:resnet50", 224, 32, None)


def test_accumulation_micro_batch_must_divide_the_batch():
    runner = get_runner("bp-accum")
    runner.check_cell("vgg8", 32, 12, 4)
    with pytest.raises(RunnerConfigError, match="does not divide"):
        runner.check_cell("vgg8", 32, 12, 5)
