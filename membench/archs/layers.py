"""The layer-decomposition contract: a model as an ordered sequence of local units.

The layer-local methods (DTG-FF's ``ff-naive`` and ``ff-pipelined``) and ``bp-deepsup`` train
every unit on its own loss, so they need a model cut into units; ``bp``, ``bp-ckpt`` and the rest
of the BP family run the same units end to end (``bp-ckpt`` checkpoints each one). A
``LayerStack`` is that cut (docs/archs.md, "The layer-stack contract"):

- its units ("layers") come in order; layer l has a ``block``, the module that owns all of the
  layer's parameters and maps the layer's input to a B x C_l x H_l x W_l map z_l;
- a ``propagate`` path leads from z_l to the next layer's input: the model's own path between
  two units (LayerNorm, dropout and pool for the conv stacks, the identity for a ResNet's
  blocks), without parameters, and nothing after the last layer;
- ``spec.channels`` holds C_l for every layer (the methods size their heads from it before any
  forward), ``len(stack)`` the number of layers;
- a block reads nothing but its input: no unit keeps a tensor for another (a shortcut that
  crossed a unit boundary would carry a gradient across it). ``membench verify``'s layer-isolation
  check fails on a stack that breaks this (tests/archs/test_layer_stacks.py shows it failing).

What the layer-local methods read from a unit's output is the stack's, not the method's: DTG-FF's
goodness features (``goodness``: the squared output averaged over four regions, 4·C_l features;
for a map the 2 x 2 spatial quadrants, channel-wise per location) and the pooled features of its
classifier (``pooled``: C_l). A ``TokenStack`` (a transformer's blocks, B x S x H hidden states)
averages over four consecutive segments of the sequence instead, token-wise over the hidden size
(docs/sequence-models.md).

Walk a stack with ``layers()``: each ``Layer`` has ``index``, ``block``, ``propagate``,
``channels``, ``is_last``, ``next_input(z)`` and ``parameters()``; calling it runs block then
propagation where a next layer exists. A plugin model takes part by being a ``LayerStack``:
``LayerStack(blocks, channels)`` (identity paths between blocks) or a subclass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .specs import ArchError


@dataclass(frozen=True)
class LayerStackSpec:
    """What the methods read from a stack before running it: its name and every layer's C."""

    name: str
    channels: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Layer:
    """One local unit of a stack, the way every method walks it.

    ``block`` computes the layer's output map; ``propagate`` is the path from it to the next
    layer's input, or None for the last layer, after which nothing runs but the method's head.
    ``channels`` is the output's channel count. ``Layer`` only refers to the stack's modules; it
    owns no parameters of its own.
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
        """The block's parameters (the propagation path has none)."""
        return self.block.parameters()


class LayerStack(nn.Module):
    """A model as local units: ``blocks[l]`` computes layer l, ``propagate[l]`` leads to layer
    l + 1 (the identity unless given). Walk it with ``layers()``; the two ModuleLists are the
    storage (and the state_dict keys). See the module docstring for the contract."""

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        channels: Sequence[int],
        propagate: Sequence[nn.Module] | None = None,
        name: str = "layer-stack",
    ):
        super().__init__()
        blocks, channels = list(blocks), tuple(int(c) for c in channels)
        if propagate is None:
            propagate = [nn.Identity() for _ in blocks[1:]]
        if not blocks or len(channels) != len(blocks) or len(propagate) != len(blocks) - 1:
            raise ArchError(
                f"{name}: a layer stack needs at least one block, a channel count per "
                f"block and a path between each two (got {len(blocks)} blocks, "
                f"{len(channels)} channel counts, {len(propagate)} paths)"
            )
        self.blocks = nn.ModuleList(blocks)
        self.propagate = nn.ModuleList(propagate)
        self.spec = LayerStackSpec(name, channels)
        check_contract(self)

    def __len__(self) -> int:
        return len(self.blocks)

    # Whether a unit's first op casts its input to the autocast dtype (a conv), so that a
    # layer-local method may hold the next input in that dtype and change no value; a
    # transformer block adds its input to its output (the residual stream), so it may not.
    casts_input_first: bool = True

    @staticmethod
    def goodness(z: torch.Tensor) -> torch.Tensor:
        """DTG-FF's goodness features of a B x C x H x W output:
        flatten(AdaptiveAvgPool2d(z**2, (2, 2))), B x 4C."""
        return F.adaptive_avg_pool2d(z.square(), (2, 2)).flatten(1)

    @staticmethod
    def pooled(z: torch.Tensor) -> torch.Tensor:
        """The classifier's features of an output: its global average, B x C."""
        return z.mean(dim=(2, 3))

    @staticmethod
    def output_problem(z: object, batch: int, channels: int) -> str | None:
        """What breaks the contract in a unit's output (None if nothing): a B x C_l x H x W map."""
        if isinstance(z, torch.Tensor) and z.dim() == 4 and z.shape[:2] == (batch, channels):
            return None
        got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        return f"returned {got}, where the layer-stack contract needs B x {channels} x H x W"

    def layer(self, index: int) -> Layer:
        """Layer ``index`` (0-based; negative counts from the end)."""
        index = range(len(self.blocks))[index]  # IndexError past either end
        last = index == len(self.blocks) - 1
        return Layer(
            index,
            self.blocks[index],
            None if last else self.propagate[index],
            self.spec.channels[index],
        )

    def layers(self) -> list[Layer]:
        """Every layer, first to last."""
        return [self.layer(index) for index in range(len(self.blocks))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """End-to-end pass (the BP methods): the last layer's output map."""
        for layer in self.layers():
            x = layer(x)
        return x


class TokenStack(LayerStack):
    """A stack of units over token sequences (a transformer's blocks): each maps B x S x H_l
    hidden states (token ids, B x S, into the first) to B x S x H_l. Its goodness is token-wise
    over the hidden size: the squared hidden states averaged over four consecutive segments of
    the sequence, B x 4H (the analogue of the conv stacks' 2 x 2 quadrants); its pooled features
    the mean over the tokens, B x H."""

    casts_input_first = False

    @staticmethod
    def goodness(z: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool1d(z.square().transpose(1, 2), 4).flatten(1)

    @staticmethod
    def pooled(z: torch.Tensor) -> torch.Tensor:
        return z.mean(dim=1)

    @staticmethod
    def output_problem(z: object, batch: int, channels: int) -> str | None:
        """What breaks the contract in a unit's output: B x S x H_l hidden states."""
        if isinstance(z, torch.Tensor) and z.dim() == 3 and z.shape[0] == batch:
            if z.shape[-1] == channels:
                return None
        got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        return f"returned {got}, where a token stack's unit returns B x S x {channels}"


def check_contract(stack: LayerStack) -> None:
    """ArchError unless every parameter belongs to exactly one block and no path has any (what
    can be checked without running the stack; the probe checks each output map's shape)."""
    owner: dict[int, int] = {}
    for index, block in enumerate(stack.blocks):
        for parameter in block.parameters():
            if owner.setdefault(id(parameter), index) != index:
                raise ArchError(
                    f"{stack.spec.name}: blocks {owner[id(parameter)]} and {index} "
                    "share a parameter; each layer must own its parameters alone"
                )
    for index, path in enumerate(stack.propagate):
        if any(True for _ in path.parameters()):
            raise ArchError(
                f"{stack.spec.name}: the path after layer {index} has parameters; "
                "put them in a block (nothing would train them in DTG-FF)"
            )
