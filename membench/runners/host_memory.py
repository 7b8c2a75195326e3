"""Host memory, as a runner marks it: what the device's count leaves out.

A runner that moves tensors off the device (``bp-offload``'s saved activations, optimizer state
kept on the host) allocates them here. On a GPU they are host tensors anyway; on the CPU, where
host and device are one memory, the tensor tracker (``membench.measure.memtrack``) asks
``is_host_allocation`` and ``is_host_storage`` so that it reports the device peak a GPU would
see. The runners mark, the tracker reads: this module sits below both.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_HOST_ALLOCATIONS = threading.local()
# Storages that live in host memory for as long as they exist (offloaded optimizer state): the
# tracker never counts them, whenever it meets them (an in-place copy into one, a tensor counted
# as "existing" at the start of a pass).
_HOST_STORAGES: weakref.WeakSet = weakref.WeakSet()


@contextmanager
def host_memory() -> Iterator[None]:
    """Storages allocated inside are host memory, not the device's: the tracker leaves them out
    of its count (how offloading is measured on a CPU, where both are the same memory)."""
    _HOST_ALLOCATIONS.depth = getattr(_HOST_ALLOCATIONS, "depth", 0) + 1
    try:
        yield
    finally:
        _HOST_ALLOCATIONS.depth -= 1


def is_host_allocation() -> bool:
    """Whether this thread is inside ``host_memory()``."""
    return getattr(_HOST_ALLOCATIONS, "depth", 0) > 0


def is_host_storage(storage) -> bool:
    """Whether ``storage`` was made by ``host_tensor``."""
    return storage in _HOST_STORAGES


def tensor_storage(t: torch.Tensor):
    """``t``'s untyped storage, or None for a tensor without one (sparse, nested, ...)."""
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse, nested and other storage-less tensors
        return None


def host_tensor(like: torch.Tensor, pin: bool = False) -> torch.Tensor:
    """An empty tensor shaped like ``like`` that lives in host memory (pinned when ``pin``, for
    asynchronous copies to and from a GPU): allocated outside the tracker's count and marked so
    that the tracker never counts it later either."""
    with host_memory():
        tensor = torch.empty(
            like.size(), dtype=like.dtype, layout=like.layout, device="cpu", pin_memory=pin
        )
    storage = tensor_storage(tensor)
    if storage is not None:
        _HOST_STORAGES.add(storage)
    return tensor
