"""He et al.'s CIFAR ResNets: the paper's sizes, option-A shortcuts, blocks or stages as local
units, and names that leave torchvision's ImageNet ResNets to ``tv:``."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from membench.archs import (
    CIFAR_RESNETS,
    ArchError,
    build_arch,
    build_cifar_resnet,
    cifar_resnet_spec,
    validate_arch,
)
from membench.measure.devices import CpuDevice
from membench.measure.protocol import run_cell
from membench.runners.bp import StackClassifier
from membench.schema import Cell

# He et al. 2016, Table 6: 0.27M parameters for ResNet-20 ... 1.7M for ResNet-110 (with the
# 64 x 10 classifier).
PAPER_PARAMETERS = {
    "resnet20": 0.27e6,
    "resnet32": 0.46e6,
    "resnet44": 0.66e6,
    "resnet56": 0.85e6,
    "resnet110": 1.7e6,
}


@pytest.mark.parametrize("name", CIFAR_RESNETS)
def test_the_papers_depths_and_parameter_counts(name):
    spec = cifar_resnet_spec(name)
    model = build_cifar_resnet(name)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == spec.depth == int(name[len("resnet") :])  # + the classifier
    counted = sum(p.numel() for p in model.parameters())
    assert counted == spec.parameter_count()
    assert counted + 64 * 10 + 10 == pytest.approx(PAPER_PARAMETERS[name], rel=0.02)


def test_units_are_blocks_or_stages_with_the_stem_in_the_first():
    blocks, stages = build_cifar_resnet("resnet20"), build_cifar_resnet("resnet20-stage")
    assert len(blocks) == 9 and len(stages) == 3
    assert (
        blocks.spec.layer_shapes(32) == [(16, 32, 32)] * 3 + [(32, 16, 16)] * 3 + [(64, 8, 8)] * 3
    )
    assert stages.spec.layer_shapes(32) == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for stack in (blocks, stages):
        out = x
        for layer, shape in zip(stack.layers(), stack.spec.layer_shapes(32)):
            out = layer(out)
            assert tuple(out.shape[1:]) == shape
    # Same weights, same function: cutting into stages changes the units, not the network.
    stages.load_state_dict(
        {k: v for k, v in zip(stages.state_dict(), blocks.state_dict().values())}
    )
    torch.testing.assert_close(blocks.eval()(x), stages.eval()(x))


def test_option_a_shortcuts_have_no_parameters_and_pad_channels_with_zeros():
    block = build_cifar_resnet("resnet20").blocks[3]  # the first block of stage 2
    assert block.stride == 2 and block.pad == 16
    x = torch.randn(1, 16, 8, 8)
    shortcut = block.shortcut(x)
    assert shortcut.shape == (1, 32, 4, 4)
    assert torch.equal(shortcut[:, 8:24], x[:, :, ::2, ::2])
    assert not shortcut[:, :8].any() and not shortcut[:, 24:].any()
    assert sum(p.numel() for p in block.parameters()) == (16 * 32 + 32 * 32) * 9 + 4 * 32


def test_bp_trains_the_papers_classifier():
    classifier = StackClassifier(build_arch("resnet20", 3), 3)
    assert classifier.head.in_features == 64  # GAP of the last stage, then Linear(K)
    row = run_cell(Cell("bp", "resnet20", 16, 2, classes=3, warmup=0, steps=1), CpuDevice())
    assert row.status == "ok", row.error
    held = sum(t.nbytes for t in [*classifier.parameters(), *classifier.buffers()])
    assert row.breakdown.parameters == held  # parameters and BatchNorm statistics


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("resnet50", "tv:resnet50"),
        ("resnet18", "tv:resnet18"),
        ("resnet21", "6n+2"),
        ("resnet2", "6n+2"),
    ],
)
def test_names_torchvision_uses_or_no_cifar_depth_are_refused(name, needle):
    with pytest.raises(ArchError, match=re.escape(needle)):
        validate_arch(name, 32)


def test_the_smallest_resolution_is_where_the_last_stage_sees_2x2():
    validate_arch("resnet20", 5)
    with pytest.raises(ArchError, match="smallest valid resolution: 5"):
        validate_arch("resnet20", 4)
