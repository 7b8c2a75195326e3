"""The paper's conv stacks as layer stacks: 3x3 conv layers (stride 1, padding 1, bias, ReLU),
and between two of them the same propagation path for every method::

    channel-wise LayerNorm (over C at each (b, h, w), no affine) -> Dropout(0.1) -> AvgPool2d(2)?

The pool is present only after the layers the spec lists in ``pool_after``. Nothing follows the
last conv layer except the method's head, so a pool listed after the last layer (VGG11's layer
7) does not change any computation: global average pooling of an even-sized map equals global
average pooling of its 2x2 average pool. It still counts for the naming and for
``layer_shapes``. The names and shapes are ``specs``'s; the walk (``layers()``) is
``LayerStack``'s, so the rule "the propagation path runs only between two layers" is written
once, there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LayerStack
from .specs import ConvStackSpec, conv_stack_spec

# The propagation path's dropout, part of the shared recipe (docs/runners.md, "Training recipe").
PROPAGATION_DROPOUT = 0.1


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at every (b, h, w), without affine parameters.

    No affine so that the propagation path has no parameters: in DTG-FF it runs under no_grad and
    would never train them, and the BP methods must use the very same modules.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.channels, self.eps = channels, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), (self.channels,), eps=self.eps).permute(
            0, 3, 1, 2
        )


class ConvStack(LayerStack):
    """The shared backbone: ``blocks[l]`` is conv+ReLU, ``propagate[l]`` leads to layer l+1;
    ``spec`` is the stack's ``ConvStackSpec``."""

    def __init__(self, spec: ConvStackSpec, dropout: float = PROPAGATION_DROPOUT):
        blocks, propagate, c_in = [], [], spec.in_channels
        for layer, c_out in enumerate(spec.channels):
            blocks.append(nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=1, padding=1), nn.ReLU()))
            if layer < spec.depth - 1:
                path = [ChannelLayerNorm(c_out), nn.Dropout(dropout)]
                if layer in spec.pool_after:
                    path.append(nn.AvgPool2d(2))
                propagate.append(nn.Sequential(*path))
            c_in = c_out
        super().__init__(blocks, spec.channels, propagate, name=spec.name)
        self.spec = spec


def build_conv_stack(name: str, dropout: float = PROPAGATION_DROPOUT) -> ConvStack:
    """The conv stack ``name`` (``vgg8``, ``vgg11``, ``vgg-dD-wW[-pP]``), freshly initialised."""
    return ConvStack(conv_stack_spec(name), dropout=dropout)
