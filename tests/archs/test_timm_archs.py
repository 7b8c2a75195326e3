"""timm models as ``timm:NAME``: random weights, the cell's class count, and a one-line error
when timm is not installed or does not know the name."""

from __future__ import annotations

import sys

import pytest
from helpers import usage_error
from typer.testing import CliRunner

from membench.archs import ArchError, build_arch, probe_arch, validate_arch
from membench.cli import app
from membench.planning.estimate import estimate_cell
from membench.schema import Cell


def test_without_timm_a_timm_arch_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # what an environment without timm sees
    with pytest.raises(ArchError, match=r"timm is not installed: pip install 'membench\[timm\]'"):
        validate_arch("timm:resnet18", 32)
    line = usage_error(CliRunner().invoke(app, ["sweep", "--arch", "timm:resnet18", "--out", "x"]))
    assert "timm is not installed" in line


@pytest.mark.slow  # importing timm takes seconds
def test_a_timm_model_gets_the_cells_classes_and_random_weights():
    timm = pytest.importorskip("timm")
    model = build_arch("timm:resnet18", 7)
    assert model.get_classifier().out_features == 7
    assert timm.is_model("resnet18")
    with pytest.raises(ArchError, match="unknown timm model 'not_a_model'"):
        validate_arch("timm:not_a_model", 32)


@pytest.mark.slow
def test_a_timm_vit_estimates_at_its_resolution_and_is_refused_below_it():
    pytest.importorskip("timm")
    with pytest.raises(ArchError, match="does not run at resolution 32"):
        probe_arch("timm:vit_tiny_patch16_224", 32)
    row = estimate_cell(Cell("bp", "timm:test_vit", 160, 2, classes=3, warmup=1, steps=1), "cuda")
    assert row.status == "estimated", row.error
    assert row.flops_per_step > 0 and row.peak_allocated_bytes > 0


@pytest.mark.slow  # a real timm model's estimate: tens of seconds on 2 cores
@pytest.mark.parametrize(
    ("model", "res"),
    [
        ("swin_tiny_patch4_window7_224", 224),  # FakeTensorDeviceMismatchError: cpu and meta
        ("vit_tiny_r_s16_p8_224", 224),  # a backbone run on a real image while building
    ],
)
def test_timm_models_that_failed_to_build_on_fake_tensors_estimate(model, res):
    pytest.importorskip("timm")
    row = estimate_cell(
        Cell("bp", f"timm:{model}", res, 2, classes=10, warmup=1, steps=1),
        "cuda",
        count_flops=False,
    )
    assert row.status == "estimated", row.error
    assert row.peak_allocated_bytes > 0
