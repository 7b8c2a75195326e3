"""A model of PyTorch's CUDA caching allocator, to predict what a card reserves (docs/allocator.md).

- ``conf``: ``PYTORCH_CUDA_ALLOC_CONF`` parsed as PyTorch parses it (``parse_alloc_conf``);
- ``model``: the allocator itself (``CachingAllocatorModel``: rounding, pools, segments, best
  fit, splitting, merging, ``max_split_size_mb``, expandable segments, streams), with
  ``blocks`` and ``expandable`` its bookkeeping;
- ``replay``: a stream of ``Alloc``/``Free``/``EmptyCache`` events through the model, to its peak
  reserved bytes and the fragmentation at that peak (``replay``, ``ReplayResult``);
- ``history``: a real ``torch.cuda.memory._snapshot()`` history replayed and compared with its
  segments byte for byte.

Plain Python, no torch.
"""

from .conf import AllocatorConfig, AllocatorConfigError, parse_alloc_conf
from .replay import Alloc, EmptyCache, Free, ReplayResult, replay

__all__ = [
    "Alloc",
    "AllocatorConfig",
    "AllocatorConfigError",
    "EmptyCache",
    "Free",
    "ReplayResult",
    "parse_alloc_conf",
    "replay",
]
