"""Architectures: the paper's conv stacks, a parametric depth/width family, and torchvision models.

A *conv stack* is a list of 3x3 conv layers (stride 1, padding 1, bias, ReLU). Between two conv
blocks every method uses the same propagation path::

    channel-wise LayerNorm (over C at each (b, h, w), no affine) -> Dropout(0.1) -> AvgPool2d(2)?

The pool is present only after the layers listed in ``pool_after``. Nothing follows the last conv
layer except the method's head, so a pool listed after the last layer (VGG11's layer 7) does not
change any computation: global average pooling of an even-sized map equals global average pooling
of its 2x2 average pool. It still counts for the naming and for ``layer_shapes``.

Every method walks a stack the same way, through ``ConvStack.layers()``: each ``ConvLayer`` has
its ``block`` (conv+ReLU) and its ``propagate`` path (None for the last layer), so the rule "the
propagation path runs only between two layers" is written once, here.

Parametric family naming rule (``vgg-d{D}-w{W}[-p{P}]``): D conv layers of W channels each, a
2x2 average pool after layers 1, 3, 5, ... (every second layer, 0-based) for the first P of
them (P defaults to 3). So ``vgg-d4-w256`` pools after layers 1 and 3, ``vgg-d10-w256`` after
1, 3 and 5, and two members of the family with the same W and P share their first layers exactly:
only depth differs.

Torchvision classification models are named ``tv:NAME`` (e.g. ``tv:resnet50``); only the
backprop runners accept them, because the layer-local methods need a conv stack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PARAMETRIC_PATTERN = re.compile(r"^vgg-d(?P<depth>\d+)-w(?P<width>\d+)(?:-p(?P<pools>\d+))?$")
TORCHVISION_PREFIX = "tv:"
PARAMETRIC_RULE = (
    "vgg-d{D}-w{W}[-p{P}]: D conv layers of W channels, 2x2 avg pool after layers 1, 3, 5, ... "
    "for the first P of them (default P=3)"
)


class ArchError(ValueError):
    """An arch name or arch/resolution combination that cannot be built."""


@dataclass(frozen=True)
class ConvStackSpec:
    """The shape of a conv stack: output channels per layer and where pooling follows."""

    name: str
    channels: tuple[int, ...]
    pool_after: frozenset[int]
    in_channels: int = 3

    @property
    def depth(self) -> int:
        return len(self.channels)

    def spatial_sizes(self, res: int) -> list[int]:
        """Spatial size (H = W) of each conv layer's output at input resolution ``res``."""
        sizes, size = [], res
        for layer in range(self.depth):
            sizes.append(size)
            if layer in self.pool_after:
                size //= 2
        return sizes

    def check_resolution(self, res: int) -> None:
        """Raise ArchError unless every layer sees a map of at least 2x2 at ``res``."""
        if res < 2 or self.spatial_sizes(res)[-1] < 2:
            smallest = minimum_resolution(self)
            raise ArchError(
                f"resolution {res} is too small for {self.name}: its last conv layer would see a "
                f"map smaller than 2x2 (smallest valid resolution: {smallest})"
            )

    def conv_parameter_count(self) -> int:
        """Weights plus biases of the conv layers alone (no heads)."""
        total, c_in = 0, self.in_channels
        for c_out in self.channels:
            total += c_in * c_out * 9 + c_out
            c_in = c_out
        return total

    def layer_shapes(self, res: int) -> list[tuple[int, int, int]]:
        """(C, H, W) of each conv layer's output at ``res``."""
        return [(c, s, s) for c, s in zip(self.channels, self.spatial_sizes(res))]


BUILTIN_ARCHS: dict[str, ConvStackSpec] = {
    # The paper's "VGG8": 7 conv layers, full resolution through layer 1. The paper quotes 5.5M
    # parameters, which this channel list does not give (it gives ~9.15M conv weights); the
    # channel list is what the paper's code builds, so it wins.
    "vgg8": ConvStackSpec("vgg8", (128, 256, 256, 512, 512, 512, 512), frozenset({1, 3, 4, 5})),
    # VGG11 configuration "A" conv stack without the large FC layers (~9.2M conv parameters).
    "vgg11": ConvStackSpec(
        "vgg11", (64, 128, 256, 256, 512, 512, 512, 512), frozenset({0, 1, 3, 5, 7})
    ),
}


def minimum_resolution(spec: ConvStackSpec) -> int:
    """Smallest input resolution at which every layer of ``spec`` sees at least a 2x2 map."""
    pools_before_last = sum(1 for layer in spec.pool_after if layer < spec.depth - 1)
    return 2 ** (pools_before_last + 1)


def parametric_spec(name: str) -> ConvStackSpec:
    """Build the spec of a ``vgg-d{D}-w{W}[-p{P}]`` name (see the module docstring)."""
    match = PARAMETRIC_PATTERN.match(name)
    if not match:
        raise ArchError(f"not a parametric arch name: {name!r} ({PARAMETRIC_RULE})")
    depth, width = int(match["depth"]), int(match["width"])
    pools = int(match["pools"]) if match["pools"] is not None else 3
    if depth < 1 or width < 1:
        raise ArchError(f"{name}: depth and width must be at least 1")
    pool_after = frozenset(layer for layer in range(1, depth, 2)[:pools])
    return ConvStackSpec(name, (width,) * depth, pool_after)


def is_torchvision(name: str) -> bool:
    return name.startswith(TORCHVISION_PREFIX)


def torchvision_model_names() -> list[str]:
    """Classification models torchvision can build, as ``tv:NAME``."""
    import torchvision

    return [TORCHVISION_PREFIX + n for n in torchvision.models.list_models(torchvision.models)]


def conv_stack_spec(name: str) -> ConvStackSpec:
    """The spec of a built-in or parametric conv stack; ArchError for anything else."""
    if name in BUILTIN_ARCHS:
        return BUILTIN_ARCHS[name]
    if name.startswith("vgg-d"):
        return parametric_spec(name)
    raise ArchError(
        f"unknown arch {name!r}; valid: {', '.join(BUILTIN_ARCHS)}, {PARAMETRIC_RULE}, "
        "or tv:MODEL for a torchvision classifier (BP runners only)"
    )


def validate_arch(name: str, res: int) -> None:
    """Raise ArchError if ``name`` is unknown or cannot run at ``res``."""
    if is_torchvision(name):
        model = name[len(TORCHVISION_PREFIX) :]
        if TORCHVISION_PREFIX + model not in torchvision_model_names():
            raise ArchError(
                f"unknown torchvision model {model!r}; see torchvision.models.list_models()"
            )
        if res < 32:
            raise ArchError(f"resolution {res} is too small for {name} (use at least 32)")
        return
    conv_stack_spec(name).check_resolution(res)


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


@dataclass(frozen=True, eq=False)
class ConvLayer:
    """One conv layer of a stack, the way every method walks it.

    ``block`` is the layer's conv+ReLU; ``propagate`` is the path from its output to the next
    layer's input (LayerNorm, dropout, the arch's pool), or None for the last layer, after which
    nothing runs but the method's head. ``channels`` is the layer's output channel count.
    ``ConvLayer`` only refers to the stack's modules; it owns no parameters of its own.
    """

    index: int
    block: nn.Module
    propagate: nn.Module | None
    channels: int

    @property
    def is_last(self) -> bool:
        return self.propagate is None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Block, then the propagation path if a next layer follows (the end-to-end pass)."""
        return self.next_input(self.block(x))

    def next_input(self, z: torch.Tensor) -> torch.Tensor:
        """The next layer's input from this layer's output ``z``; ``z`` itself after the last
        layer, where the propagation path never runs."""
        return z if self.propagate is None else self.propagate(z)

    def parameters(self):
        """The conv's weight and bias (the propagation path has no parameters)."""
        return self.block.parameters()


class ConvStack(nn.Module):
    """The shared backbone: ``blocks[l]`` is conv+ReLU, ``propagate[l]`` leads to layer l+1.

    Walk it with ``layers()``; the two ModuleLists are the storage (and the state_dict keys).
    """

    def __init__(self, spec: ConvStackSpec, dropout: float = 0.1):
        super().__init__()
        self.spec = spec
        blocks, propagate, c_in = [], [], spec.in_channels
        for layer, c_out in enumerate(spec.channels):
            blocks.append(
                nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=1, padding=1), nn.ReLU())
            )
            if layer < spec.depth - 1:
                path = [ChannelLayerNorm(c_out), nn.Dropout(dropout)]
                if layer in spec.pool_after:
                    path.append(nn.AvgPool2d(2))
                propagate.append(nn.Sequential(*path))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.propagate = nn.ModuleList(propagate)

    def __len__(self) -> int:
        return len(self.blocks)

    def layer(self, index: int) -> ConvLayer:
        """Conv layer ``index`` (0-based; negative counts from the end) as a ConvLayer."""
        index = range(len(self.blocks))[index]  # IndexError past either end
        last = index == len(self.blocks) - 1
        return ConvLayer(
            index, self.blocks[index], None if last else self.propagate[index],
            self.spec.channels[index],
        )

    def layers(self) -> list[ConvLayer]:
        """Every conv layer, first to last."""
        return [self.layer(index) for index in range(len(self.blocks))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """End-to-end pass (the BP methods): the last conv layer's post-ReLU activation."""
        for layer in self.layers():
            x = layer(x)
        return x


def build_conv_stack(name: str, dropout: float = 0.1) -> ConvStack:
    return ConvStack(conv_stack_spec(name), dropout=dropout)


def build_torchvision(name: str, classes: int) -> nn.Module:
    """A randomly initialised torchvision classifier with ``classes`` outputs."""
    import torchvision

    return torchvision.models.get_model(name[len(TORCHVISION_PREFIX) :], weights=None, num_classes=classes)


def builtin_arch_names() -> list[str]:
    return list(BUILTIN_ARCHS)
