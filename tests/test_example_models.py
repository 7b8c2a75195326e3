"""The README's "bring your own model" example registers, is listed and passes `membench
verify` for a BP method and the layer-local ones."""

from pathlib import Path

import pytest
from helpers import install_example
from typer.testing import CliRunner

from membench import archs
from membench.cli import app
from membench.verify import VerifySetup, verify

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "membench-models"


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
