"""The layer-stack contract (docs/archs.md, "The layer-stack contract"): each unit owns its
parameters, the paths between units have none, and no gradient crosses a unit boundary, which
``membench verify``'s layer-isolation check sees for any decomposition."""

from __future__ import annotations

import pytest
from torch import nn

from membench.archs import ArchError, LayerStack
from membench.verify import VerifySetup
from membench.verify.checks import check_layer_gradients, check_layer_isolation


def setup(arch: str) -> VerifySetup:
    return VerifySetup(arch=arch, res=8, batch=4, classes=3)


@pytest.mark.parametrize(
    "arch", ["vgg-d3-w8", "resnet20", "resnet20-stage", "tiny_models:plain_stack"]
)
def test_every_decomposition_keeps_its_units_apart(arch):
    result = check_layer_isolation("ff-pipelined", setup(arch))
    assert result.passed, result.detail


def test_a_shortcut_across_a_unit_boundary_fails_the_isolation_check():
    result = check_layer_isolation("ff-pipelined", setup("tiny_models:leaky_stack"))
    assert not result.passed and "1->0" in result.detail, result.detail


def test_the_pipelined_schedule_matches_the_naive_one_on_a_resnet_stage_cut():
    result = check_layer_gradients("ff-pipelined", "ff-naive", setup("resnet20-stage"))
    assert result.passed, result.detail


def test_the_leak_also_breaks_the_layer_gradient_check():
    """ff-naive's one backward carries the leaked gradient into unit 0; ff-pipelined has freed
    unit 0's graph by then: the two disagree (or the second backward fails)."""
    try:
        result = check_layer_gradients("ff-pipelined", "ff-naive", setup("tiny_models:leaky_stack"))
    except RuntimeError as err:  # backward through unit 0's freed graph
        assert "backward through the graph a second time" in str(err)
        return
    assert not result.passed, result.detail


def test_the_contract_is_checked_when_a_stack_is_built():
    conv = nn.Conv2d(3, 3, 3, padding=1)
    with pytest.raises(ArchError, match="share a parameter"):
        LayerStack([conv, conv], [3, 3])
    with pytest.raises(ArchError, match="has parameters"):
        LayerStack([conv, nn.Conv2d(3, 3, 1)], [3, 3], propagate=[nn.BatchNorm2d(3)])
    with pytest.raises(ArchError, match="a channel count per block"):
        LayerStack([conv], [3, 3])


def test_batchnorm_archs_are_known_to_depend_on_the_split():
    from membench.verify.checks import uses_batch_statistics

    assert uses_batch_statistics(setup("resnet20")) and uses_batch_statistics(setup("tv:resnet18"))
    assert not uses_batch_statistics(setup("vgg-d3-w8"))
