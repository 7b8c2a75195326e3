"""The README's "bring your own model" example registers, is listed and passes `membench
verify` for a BP method and the layer-local ones."""

from pathlib import Path

import pytest
from helpers import install_example
from typer.testing import CliRunner

from membench import archs
from membench.cli import app
from membench.verify import VerifySetup, verify

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "membench-models"


@pytest.fixture
def example_installed(tmp_path, monkeypatch):
    install_example(
        tmp_path,
        monkeypatch,
        EXAMPLE,
        "membench-models",
        "[membench.archs]\nplain-net = membench_models:plain_net\n"
        "plain-stack = membench_models:plain_stack\n",
    )
    archs.refresh_registry()
    yield
    archs.refresh_registry()


def test_example_models_are_listed(example_installed):
    result = CliRunner().invoke(app, ["list", "archs", "--res", "32"])
    assert result.exit_code == 0, result.output
    assert "plain-net" in result.output and "plain-stack" in result.output
    assert "16x32x32  32x16x16  64x8x8" in result.output  # the stack's units at 32x32


@pytest.mark.parametrize(
    ("arch", "method"), [("plain-net", "bp-ckpt"), ("plain-stack", "ff-pipelined")]
)
def test_example_models_verify(example_installed, arch, method):
    results = verify([method], VerifySetup(arch=arch, res=8, batch=4, classes=3), precisions=())
    failed = [(r.check, r.detail) for r in results if not r.passed]
    assert results and not failed, failed


def _finite_layer_gradients(setup: VerifySetup) -> bool:
    import torch

    from membench.verify.checks import _layer_gradients, after_first_step

    runner = after_first_step("ff-pipelined", setup, unclipped=True, precision="fp16")
    return all(bool(torch.isfinite(g).all()) for g in _layer_gradients(runner))


def test_the_readme_verify_command_passes_in_fp16_too(example_installed, monkeypatch):
    """`membench verify --arch plain-stack --method ff-pipelined,bp-ckpt` failed its fp16 layer
    gradients (NaN): its BatchNorm stack's first fp16 step overflowed at the GradScaler's
    2^16, and the temperature's gradient was summed in fp16."""
    from membench.runners.ff import _DTGFFRunner
    from membench.verify.checks import check_layer_gradients

    setup = VerifySetup(arch="plain-stack")  # the command's setup: res 8, batch 8, K=4
    check = check_layer_gradients("ff-pipelined", "ff-naive", setup, precision="fp16")
    assert check.passed, check.detail
    # Mutation: torch's default initial scale overflows the first step: NaN, the check fails.
    monkeypatch.setattr(_DTGFFRunner, "initial_grad_scale", 2.0**16)
    check = check_layer_gradients("ff-pipelined", "ff-naive", setup, precision="fp16")
    assert not check.passed and "nan" in check.detail


def test_the_temperature_gradient_is_summed_in_fp32(monkeypatch):
    """At a scale the convolutions' fp16 gradients fit (2^13 on resnet20), the temperature's
    fp16 sum did not (its first-step gradient is 14): -inf, then NaN after the clip."""
    from membench.runners.ff import GoodnessReadout, _DTGFFRunner

    setup = VerifySetup(arch="resnet20", res=32, batch=16, classes=10)
    monkeypatch.setattr(_DTGFFRunner, "initial_grad_scale", 2.0**13)
    assert _finite_layer_gradients(setup)

    def summed_in_fp16(self, z):  # the division as it was: in the goodness's own dtype
        return (self.goodness(z) / self.temperature()) @ self.projection + self.bias

    monkeypatch.setattr(GoodnessReadout, "forward", summed_in_fp16)
    assert not _finite_layer_gradients(setup)
