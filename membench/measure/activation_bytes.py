"""What a forward keeps for its backward, tensor by tensor: the activation memory of one layer.

``saved_for_backward(forward)`` runs ``forward()`` with autograd's saved-tensor hooks
(``torch.autograd.graph.saved_tensors_hooks``) and a dispatch mode that notes which op made each
storage, and returns one ``SavedTensor`` per storage the graph keeps: its bytes, dtype, and the op
that produced it (``native_layer_norm``, ``addmm``, ``_softmax``, ``native_dropout``,
``_to_copy`` for an autocast copy). A storage saved twice (q and k, views of one projection's
output) is counted once, whole; the storages given as ``exclude`` (parameters, the forward's
input) are left out. Under fake tensors (an estimate's session) nothing is computed or
allocated.

This is how docs/sequence-models.md sets a GPT-2 block beside Korthikanti et al.'s per-layer
activation formula, term by term.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


@dataclass(frozen=True)
class SavedTensor:
    """One storage a forward's graph keeps for the backward."""

    producer: str  # the aten op that made the storage ("input" for one made before the forward)
    dtype: torch.dtype
    shape: tuple[int, ...]  # of the first tensor saved from it
    nbytes: int  # the whole storage's


def _storage_key(tensor: torch.Tensor) -> int:
    # PyTorch keeps one Python object per live storage (real or fake): its id names the storage
    # for as long as a tensor of it is kept alive.
    return id(tensor.untyped_storage())


class _Producers(TorchDispatchMode):
    """Notes the op that made each storage it sees come out of an op."""

    def __init__(self):
        super().__init__()
        self.producer: dict[int, str] = {}
        self.keep: list[torch.Tensor] = []  # so no storage's key is reused while we look

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                key = _storage_key(leaf)
                if key not in self.producer:
                    self.producer[key] = func.overloadpacket.__name__
                    self.keep.append(leaf)
        return out


def saved_for_backward(
    forward: Callable[[], object], exclude: Iterable[torch.Tensor] = ()
) -> list[SavedTensor]:
    """Every storage the graph of ``forward()`` keeps for its backward, once each (see the module
    docstring), leaving out the storages of ``exclude`` (the parameters, the input)."""
    exclude = list(exclude)  # kept alive, so their keys stay theirs
    excluded = {_storage_key(t) for t in exclude}
    saved: dict[int, torch.Tensor] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in excluded:
            saved.setdefault(key, tensor)
        return tensor

    producers = _Producers()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), producers:
        result = forward()
    del result
    return [
        SavedTensor(
            producers.producer.get(key, "input"),
            tensor.dtype,
            tuple(tensor.shape),
            tensor.untyped_storage().nbytes(),
        )
        for key, tensor in saved.items()
    ]


def bytes_by_producer(saved: Iterable[SavedTensor]) -> dict[tuple[str, torch.dtype], int]:
    """The saved bytes summed by (producer op, dtype)."""
    totals: dict[tuple[str, torch.dtype], int] = {}
    for tensor in saved:
        key = (tensor.producer, tensor.dtype)
        totals[key] = totals.get(key, 0) + tensor.nbytes
    return totals
