"""He et al.'s CIFAR ResNets (2016, Sec. 4.2) as layer stacks: ``resnet20``, ``32``, ``44``,
``56``, ``110`` and any ``resnet{6n+2}``.

A 3x3 stem (16 channels, BatchNorm, ReLU), then three stages of n basic blocks with 16, 32 and
64 channels; the first block of the second and third stage has stride 2. Shortcuts are the
paper's option A: the identity, and where a block halves the map and doubles the channels, the
input subsampled by 2 and zero-padded in channels, so every shortcut is parameter-free (the
paper's CIFAR networks, 0.27M parameters for ResNet-20 and 1.7M for ResNet-110). After the last
stage only the method's head runs (bp's global average pool and ``Linear(K)`` make the paper's
classifier).

As a ``LayerStack`` (docs/archs.md, "CIFAR ResNets") the local unit is one basic block
(``resnet110``: 54 units) or, with ``-stage``, one stage (``resnet110-stage``: 3 units); the stem
belongs to the first unit. A block's shortcut stays inside its block, so no tensor crosses a
unit boundary but the unit's output, and the path between two units is the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LayerStack
from .specs import RESNET_WIDTHS, CifarResNetSpec, cifar_resnet_spec


class BasicBlock(nn.Module):
    """conv3x3 - BN - ReLU - conv3x3 - BN, plus the option-A shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.pad = stride, c_out - c_in

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Option A: the identity, or subsample by the stride and zero-pad the new channels
        (half before, half after, as the reference implementations do)."""
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _stem() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, RESNET_WIDTHS[0], 3, padding=1, bias=False),
        nn.BatchNorm2d(RESNET_WIDTHS[0]),
        nn.ReLU(),
    )


class CifarResNet(LayerStack):
    """A CIFAR ResNet cut into local units (blocks or stages); ``spec`` is its
    ``CifarResNetSpec``."""

    def __init__(self, spec: CifarResNetSpec):
        stages, c_in = [], RESNET_WIDTHS[0]
        for index, width in enumerate(RESNET_WIDTHS):
            blocks = []
            for b in range(spec.blocks_per_stage):
                blocks.append(BasicBlock(c_in, width, 2 if index > 0 and b == 0 else 1))
                c_in = width
            stages.append(blocks)
        if spec.unit == "stage":
            units = [nn.Sequential(*stage) for stage in stages]
        else:
            units = [block for stage in stages for block in stage]
        units[0] = nn.Sequential(_stem(), units[0])  # the stem trains with the first unit
        super().__init__(units, spec.channels, name=spec.name)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # He et al.'s initialisation
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        self.spec = spec


def build_cifar_resnet(name: str) -> CifarResNet:
    """The CIFAR ResNet ``name`` (``resnet20`` ... ``resnet110``, ``resnet{6n+2}[-stage]``)."""
    return CifarResNet(cifar_resnet_spec(name))
