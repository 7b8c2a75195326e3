"""What a backprop step keeps for its backward pass, and the standard tools that keep less.

- ``checkpointed(fn, x, policy=...)``: ``torch.utils.checkpoint`` (non-reentrant, RNG state
  preserved, so dropout recomputes the same mask): ``"full"`` keeps only ``x`` and recomputes
  everything; ``"selective"`` keeps the outputs of convolutions and matmuls (the expensive ops)
  and recomputes the cheap ones (ReLU, LayerNorm, dropout, pooling), through a policy from
  ``create_selective_checkpoint_contexts``.
- ``checkpoint_torchvision_stages``: the same for torchvision classifiers, at real stage
  boundaries (VGG's feature segments between pools, ResNet's ``layer1..4``, √n segments of any
  other top-level ``Sequential``), and for a transformer (a ViT, an ``hf:`` model) at each
  block of its block list (``membench.archs.block_lists``: GPT-2's ``transformer.h``, Llama's
  ``model.layers``, BERT's ``encoder.layer``).
- ``OffloadSavedTensors``: saved-tensor hooks that move every tensor saved for backward to host
  memory (pinned on CUDA) and back when backward needs it, as
  ``torch.autograd.graph.save_on_cpu`` does, counting the bytes offloaded. On the CPU, where host
  and device are the same memory, the copies are allocated under ``host_memory.host_memory()`` so
  the tracker reports the device peak a GPU would see; unpacking makes a device copy, as on a GPU.
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
    noop_context_fn,
)

from ..archs.block_lists import largest_block_list
from .host_memory import host_memory

CHECKPOINT_POLICIES = ("full", "selective")
_aten = torch.ops.aten
# Kept by selective checkpointing: what is expensive to recompute, convolutions, matmuls and
# fused attention (each backend's kernel: CPU flash, CUDA flash, memory-efficient, cuDNN).
SAVED_OPS = frozenset(
    {
        _aten.convolution.default,
        _aten.mm.default,
        _aten.addmm.default,
        _aten.bmm.default,
        _aten._scaled_dot_product_flash_attention_for_cpu.default,
        _aten._scaled_dot_product_flash_attention.default,
        _aten._scaled_dot_product_efficient_attention.default,
        _aten._scaled_dot_product_cudnn_attention.default,
    }
)


def save_convs_and_matmuls(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """The selective policy: save convolution and matmul outputs, recompute everything else."""
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def checkpointed(fn, *args, policy: str, **kwargs):
    """``fn(*args, **kwargs)`` under ``policy`` (``"full"`` or ``"selective"``), RNG state
    preserved."""
    context = (
        partial(create_selective_checkpoint_contexts, save_convs_and_matmuls)
        if policy == "selective"
        else noop_context_fn
    )
    return checkpoint(fn, *args, use_reentrant=False, context_fn=context, **kwargs)


class Checkpointed(nn.Module):
    """A module run under ``checkpointed``; its parameters stay where they were. Whatever the
    module takes passes through (a transformer block's mask, positions and rotary tables; timm's
    BEiT blocks get ``shared_rel_pos_bias=``)."""

    def __init__(self, inner: nn.Module, policy: str):
        super().__init__()
        self.inner, self.policy = inner, policy

    def __getattr__(self, name: str):
        """What the module has (its owner may read a member's attributes: timm's MetaFormer
        ``head.global_pool.feat_mult()``), where the wrapper has nothing of that name."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "inner":  # not set yet
                raise
            return getattr(self.inner, name)

    def forward(self, *args, **kwargs):
        return checkpointed(self.inner, *args, policy=self.policy, **kwargs)


_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _segments(members: list[nn.Module]) -> list[list[nn.Module]]:
    """Members cut after each pooling layer, or into about √n runs when there is none."""
    if any(isinstance(m, _POOLS) for m in members):
        cuts, current = [], []
        for member in members:
            current.append(member)
            if isinstance(member, _POOLS):
                cuts.append(current)
                current = []
        return cuts + ([current] if current else [])
    size = max(1, math.ceil(math.sqrt(len(members))))
    return [members[i : i + size] for i in range(0, len(members), size)]


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


class CheckpointedSequential(nn.Sequential):
    """A Sequential run in checkpointed segments (between pools, else about √n) when it is
    called, whose members are still the original ones in number and order, each checkpointed
    on its own, for an owner that iterates or indexes it instead (timm's NaFlexViT calls each
    block with an attention mask, MobileNet-v5 gathers each stage's output): regrouping the
    members into segments would change what that owner sees."""

    def __init__(self, container: nn.Sequential, policy: str):
        # Under the members' own names: an owner may call them by name (timm's MetaFormer head)
        super().__init__(
            OrderedDict(
                (name, Checkpointed(member, policy)) for name, member in container.named_children()
            )
        )
        self.policy = policy

    def __getitem__(self, index):
        if isinstance(index, slice):  # Sequential's own would call this class with its members
            return nn.Sequential(*list(self)[index])
        return super().__getitem__(index)

    def forward(self, x):
        for part in _segments([wrapped.inner for wrapped in self]):
            x = checkpointed(partial(_run_in_order, part), x, policy=self.policy)
        return x


def _run_in_order(members: list[nn.Module], x):
    for member in members:
        x = member(x)
    return x


def _checkpoint_container(container: nn.Module, policy: str) -> nn.Module:
    """A Sequential in segments (``CheckpointedSequential``), or each member of a ModuleList on
    its own (its owner's forward calls them one by one), a ModuleList member's members where
    it is a ModuleList itself (timm's Twins: a list of stages, each a list of blocks)."""
    if isinstance(container, nn.ModuleList):
        for index, member in enumerate(container):
            container[index] = (
                _checkpoint_container(member, policy)
                if isinstance(member, nn.ModuleList)
                else Checkpointed(member, policy)
            )
        return container
    return CheckpointedSequential(container, policy)


def checkpoint_torchvision_stages(model: nn.Module, policy: str = "full") -> nn.Module:
    """Checkpoint a classifier (torchvision's, timm's, a plugin's) at its stages: ResNet-style
    ``layerN`` children whole, every other top-level ``Sequential`` with parameters in segments
    (between pools, else √n); a model whose top-level Sequentials hold less than half of its
    parameters (a ViT, whose blocks are ``encoder.layers``) at the Sequential or ModuleList
    below that holds the most.
    In-place activations are made out-of-place: one at the start of a segment would modify the
    input its checkpoint keeps for the recomputation (MobileNet, RegNet), and under selective
    checkpointing the conv outputs it keeps."""
    for module in model.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False
    stages = [
        (name, child)
        for name, child in model.named_children()
        if isinstance(child, nn.Sequential) and _has_parameters(child)
    ]
    in_stages = sum(p.numel() for _, child in stages for p in child.parameters())
    # Top-level Sequentials that hold most of the model are its stages; a small one is a head
    # (a ViT's ``heads``), and the blocks are deeper.
    if 2 * in_stages >= sum(p.numel() for p in model.parameters()):
        for name, child in stages:
            if name.startswith("layer"):
                setattr(model, name, Checkpointed(child, policy))
            else:
                setattr(model, name, _checkpoint_container(child, policy))
    elif (found := largest_block_list(model)) is not None:
        name, container = found
        owner_name, _, attribute = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        setattr(owner, attribute, _checkpoint_container(container, policy))
    return model


class OffloadSavedTensors(torch.autograd.graph.saved_tensors_hooks):
    """Saved tensors go to host memory in forward and come back in backward (see the module
    docstring); ``peak_bytes`` is the most ever offloaded at once."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.current_bytes = self.peak_bytes = 0
        super().__init__(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor):
        pin = self.device.type == "cuda"
        with host_memory():
            packed = torch.empty(
                tensor.size(), dtype=tensor.dtype, layout=tensor.layout, pin_memory=pin
            )
            packed.copy_(tensor, non_blocking=pin)
        nbytes = packed.untyped_storage().nbytes()
        self.current_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        weakref.finalize(packed, self._freed, nbytes)
        return packed

    def _freed(self, nbytes: int) -> None:
        self.current_bytes -= nbytes

    def _unpack(self, packed: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            return packed.clone()  # a device copy, as the GPU's would be
        return packed.to(self.device, non_blocking=True)
