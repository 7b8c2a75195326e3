"""Convolution FLOPs, forward and backward, for every kind of convolution: counted by membench's
FlopCounterMode (torch's registry with ``convolution_backward`` corrected for groups) against
the analytic count, and against the same convolution run group by group as dense ones."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from membench.archs import build_arch
from membench.measure.flops import flop_counter, step_flops
from membench.measure.protocol import count_step_flops
from membench.schema import Cell

aten = torch.ops.aten
B, H = 2, 10
KINDS = {  # one convolution of each kind, 8 input channels at 10 x 10
    "dense": nn.Conv2d(8, 16, 3, padding=1),
    "grouped": nn.Conv2d(8, 16, 3, padding=1, groups=4),
    "depthwise": nn.Conv2d(8, 8, 3, padding=1, groups=8),
    "strided": nn.Conv2d(8, 16, 3, stride=2, padding=1),
    "dilated": nn.Conv2d(8, 16, 3, padding=2, dilation=2),
    "transposed": nn.ConvTranspose2d(8, 16, 3, stride=2, padding=1),
    "grouped transposed": nn.ConvTranspose2d(8, 16, 3, stride=2, padding=1, groups=4),
}


def analytic_forward(conv: nn.Module, x: torch.Tensor, out: torch.Tensor) -> int:
    """2 x multiply-adds: each output point of a conv (each input point of a transposed conv)
    meets C_in / g (C_out / g) channels of a k x k filter, for each of its C_out (C_in)."""
    g, k = conv.groups, math.prod(conv.kernel_size)
    if isinstance(conv, nn.ConvTranspose2d):
        return 2 * B * conv.in_channels * (conv.out_channels // g) * k * math.prod(x.shape[2:])
    return 2 * B * conv.out_channels * (conv.in_channels // g) * k * math.prod(out.shape[2:])


def counted(conv: nn.Module, input_grad: bool, counter: FlopCounterMode) -> dict:
    x = torch.randn(B, 8, H, H, requires_grad=input_grad)
    with counter:
        out = conv(x)
        out.sum().backward()
    counts = counter.get_flop_counts()["Global"]
    return {
        "x": x,
        "out": out,
        "forward": counts[aten.convolution],
        "backward": counts[aten.convolution_backward],
    }


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("input_grad", [True, False])
def test_backward_is_forward_once_per_gradient_asked_for(kind, input_grad):
    conv = KINDS[kind]
    got = counted(conv, input_grad, flop_counter())
    forward = analytic_forward(conv, got["x"], got["out"])
    assert got["forward"] == forward
    # weight gradient always, input gradient only where autograd asks for it
    assert got["backward"] == forward * (2 if input_grad else 1)


@pytest.mark.parametrize("kind", ["grouped", "depthwise", "grouped transposed"])
def test_a_grouped_conv_counts_what_its_groups_count_as_dense_convs(kind):
    conv = KINDS[kind]
    g = conv.groups
    whole = counted(conv, True, flop_counter())["backward"]
    # The same convolution, group by group, as dense ones: torch's own formula is right there.
    dense_type = type(conv)
    options = dict(
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
    )
    part = dense_type(conv.in_channels // g, conv.out_channels // g, **options)
    per_group = counted_dense(part, conv.in_channels // g)
    assert whole == g * per_group
    # torch's stock formula counts the weight gradient g times (the bug this corrects)
    stock = counted(conv, True, FlopCounterMode(display=False))["backward"]
    assert stock == whole // 2 * (1 + g)


def counted_dense(conv: nn.Module, channels: int) -> int:
    x = torch.randn(B, channels, H, H, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        conv(x).sum().backward()
    return counter.get_flop_counts()["Global"][aten.convolution_backward]


def test_the_issues_depthwise_conv_backward():
    """64 channels of a depthwise 3x3 at 56x56, batch 1: forward 3.6 MFLOP; torch counted the
    backward as 235 MFLOP, a weight gradient 64 times too big."""
    conv = nn.Conv2d(64, 64, 3, padding=1, groups=64)
    x = torch.randn(1, 64, 56, 56, requires_grad=True)
    forward = 2 * 64 * 9 * 56 * 56
    assert step_flops(lambda: conv(x).sum().backward()) == 3 * forward
    with FlopCounterMode(display=False) as stock:
        conv(x).sum().backward()
    assert stock.get_total_flops() == forward + forward + 64 * forward  # 3.6 + 235 MFLOP


@pytest.mark.slow  # a torchvision model on fake tensors: seconds
def test_a_mobilenet_training_step_costs_about_three_forwards():
    """bp on tv:mobilenet_v3_small (depthwise convs throughout): the step's FLOPs over the
    forward's are 3 but for the first conv's input gradient, never the stock count's ~20."""
    cell = Cell("bp", "tv:mobilenet_v3_small", 32, 2, classes=10)
    step = count_step_flops(cell)
    with FakeTensorMode():
        model = build_arch(cell.arch, 10).train()
        images = torch.randn(2, 3, 32, 32)
        forward = step_flops(lambda: model(images))
    assert 2.9 < step / forward <= 3.0
