"""The README's "bring your own model" example registers, is listed and passes `membench
verify` for a BP method and the layer-local ones."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from membench import archs
from membench.cli import app
from membench.verify import VerifySetup, verify

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "membench-models"


@pytest.fixture
def example_installed(tmp_path, monkeypatch):
    # What `pip install examples/membench-models` would leave on sys.path: the package plus a
    # dist-info folder carrying its entry points.
    dist = tmp_path / "membench_models-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: membench-models\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[membench.archs]\nplain-net = membench_models:plain_net\n"
                                           "plain-stack = membench_models:plain_stack\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    archs.refresh_registry()
    yield
    archs.refresh_registry()


def test_example_models_are_listed(example_installed):
    result = CliRunner().invoke(app, ["list", "archs", "--res", "32"])
    assert result.exit_code == 0, result.output
    assert "plain-net" in result.output and "plain-stack" in result.output
    assert "16x32x32  32x16x16  64x8x8" in result.output  # the stack's units at 32x32


@pytest.mark.parametrize(("arch", "method"), [("plain-net", "bp-ckpt"),
                                              ("plain-stack", "ff-pipelined")])
def test_example_models_verify(example_installed, arch, method):
    results = verify([method], VerifySetup(arch=arch, res=8, batch=4, classes=3), precisions=())
    failed = [(r.check, r.detail) for r in results if not r.passed]
    assert results and not failed, failed
