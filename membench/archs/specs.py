"""The shapes of membench's built-in architectures, without torch: what a name means, how many
parameters it has and what each layer sees at a resolution (docs/archs.md).

- Conv stacks: the paper's ``vgg8`` and ``vgg11`` and the parametric family
  ``vgg-d{D}-w{W}[-p{P}]``: D conv layers of W channels each, a 2x2 average pool after layers 1,
  3, 5, ... (every second layer, 0-based) for the first P of them (P defaults to 3). So
  ``vgg-d4-w256`` pools after layers 1 and 3, ``vgg-d10-w256`` after 1, 3 and 5, and two members
  with the same W and P share their first layers exactly: only depth differs.
- CIFAR ResNets (He et al. 2016, Sec. 4.2): ``resnet{6n+2}`` (``resnet20``, ``32``, ``44``,
  ``56``, ``110``, ...), a 3x3 stem of 16 channels and three stages of n basic blocks with
  16, 32 and 64 channels, the second and third starting with a stride-2 block. The local unit of
  the layer-local methods is one block; ``-stage`` makes it one stage (``resnet110-stage``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InputError

PARAMETRIC_PATTERN = re.compile(r"^vgg-d(?P<depth>\d+)-w(?P<width>\d+)(?:-p(?P<pools>\d+))?$")
PARAMETRIC_RULE = (
    "vgg-d{D}-w{W}[-p{P}]: D conv layers of W channels, 2x2 avg pool after layers 1, 3, 5, ... "
    "for the first P of them (default P=3)"
)
RESNET_PATTERN = re.compile(r"^resnet(?P<depth>\d+)(?P<stage>-stage)?$")
RESNET_RULE = (
    "resnet{6n+2}[-stage]: He et al.'s CIFAR ResNet (resnet20, 32, 44, 56, 110), "
    "one block per local unit, or one stage with -stage"
)
RESNET_WIDTHS = (16, 32, 64)
# torchvision's ImageNet ResNets: 50 and 152 are also 6n+2, but a bare resnet50 meaning a
# CIFAR ResNet-50 would be a trap, so those depths stay tv:'s.
TORCHVISION_RESNETS = frozenset({"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"})


class ArchError(InputError):
    """An arch name or arch/resolution combination that cannot be built (one line)."""


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
            raise ArchError(
                f"resolution {res} is too small for {self.name}: its last conv layer would see a "
                f"map smaller than 2x2 (smallest valid resolution: {minimum_resolution(self)})"
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


def is_conv_stack(name: str) -> bool:
    """Whether ``name`` is one of the conv stacks (built-in or parametric)."""
    return name in BUILTIN_ARCHS or bool(PARAMETRIC_PATTERN.match(name))


def conv_stack_spec(name: str) -> ConvStackSpec:
    """The spec of a built-in or parametric conv stack; ArchError for anything else."""
    if name in BUILTIN_ARCHS:
        return BUILTIN_ARCHS[name]
    if name.startswith("vgg-d"):
        return parametric_spec(name)
    raise ArchError(
        f"{name!r} is not a conv stack; valid: {', '.join(BUILTIN_ARCHS)}, {PARAMETRIC_RULE}"
    )


@dataclass(frozen=True)
class CifarResNetSpec:
    """He et al.'s CIFAR ResNet of ``6n + 2`` layers, cut into blocks or stages as local units."""

    name: str
    blocks_per_stage: int  # n
    unit: str  # "block" | "stage"

    @property
    def depth(self) -> int:
        return 6 * self.blocks_per_stage + 2

    @property
    def channels(self) -> tuple[int, ...]:
        """Output channels of each local unit."""
        per_unit = 1 if self.unit == "stage" else self.blocks_per_stage
        return tuple(width for width in RESNET_WIDTHS for _ in range(per_unit))

    def spatial_sizes(self, res: int) -> list[int]:
        """H = W of each unit's output: the stride-2 3x3 convs (padding 1) give ceil(size / 2)."""
        stages = (res, -(-res // 2), -(-res // 4))
        per_unit = 1 if self.unit == "stage" else self.blocks_per_stage
        return [size for size in stages for _ in range(per_unit)]

    def layer_shapes(self, res: int) -> list[tuple[int, int, int]]:
        return [(c, s, s) for c, s in zip(self.channels, self.spatial_sizes(res))]

    def check_resolution(self, res: int) -> None:
        """ArchError unless the last stage sees at least a 2x2 map (inputs of 5x5 and up), as
        for the conv stacks: DTG-FF's spatial goodness then has a distinct value per quadrant."""
        if self.spatial_sizes(res)[-1] < 2:
            raise ArchError(
                f"resolution {res} is too small for {self.name}: its last stage would "
                "see a map smaller than 2x2 (smallest valid resolution: 5)"
            )

    def parameter_count(self) -> int:
        """Conv weights and BatchNorm scales and shifts (the convs have no bias; the option-A
        shortcuts have no parameters); no head."""
        total, c_in = 3 * 16 * 9 + 2 * 16, 16  # the stem
        for width in RESNET_WIDTHS:
            for _ in range(self.blocks_per_stage):
                total += (c_in * width + width * width) * 9 + 4 * width
                c_in = width
        return total


def is_cifar_resnet(name: str) -> bool:
    return bool(RESNET_PATTERN.match(name))


def cifar_resnet_spec(name: str) -> CifarResNetSpec:
    """The spec of a ``resnet{6n+2}[-stage]`` name; ArchError for a depth that is not 6n + 2."""
    match = RESNET_PATTERN.match(name)
    if not match:
        raise ArchError(f"not a CIFAR ResNet name: {name!r} ({RESNET_RULE})")
    depth = int(match["depth"])
    if f"resnet{depth}" in TORCHVISION_RESNETS:
        raise ArchError(
            f"{name}: torchvision's ImageNet ResNet is tv:resnet{depth}; membench's "
            "CIFAR ResNets are resnet20, resnet32, resnet44, resnet56, resnet110 "
            "(6n+2 layers; depths torchvision uses are left to it)"
        )
    if depth < 8 or (depth - 2) % 6:
        raise ArchError(
            f"{name}: a CIFAR ResNet has 6n+2 layers (20, 32, 44, 56, 110, ...), not "
            f"{depth}; torchvision's ImageNet ResNets are tv:resnet18, tv:resnet50, ..."
        )
    return CifarResNetSpec(name, (depth - 2) // 6, "stage" if match["stage"] else "block")


CIFAR_RESNETS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")
