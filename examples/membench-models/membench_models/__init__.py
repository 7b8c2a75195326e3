"""Example third-party models for membench: each a factory taking ``num_classes``."""

from torch import nn

from membench.archs import LayerStack


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


def plain_net(num_classes: int) -> nn.Module:
    """A classifier (images -> logits): every BP method but bp-deepsup trains it."""
    return nn.Sequential(
        conv_bn(3, 16),
        conv_bn(16, 32, 2),
        conv_bn(32, 64, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


def plain_stack(num_classes: int) -> LayerStack:
    """The same convs as a layer stack, one unit per conv block: every method trains it (the
    heads are the methods', so num_classes is not needed here)."""
    return LayerStack(
        [conv_bn(3, 16), conv_bn(16, 32, 2), conv_bn(32, 64, 2)],
        channels=[16, 32, 64],
        name="plain-stack",
    )
