"""The device total of a measured CUDA cell and its terms, each measured on its own
(docs/device-total.md, "Measured rows"), so a GPU run checks every term of an estimate:

- ``device_total_bytes``: the process's device memory as NVML reports it (the process's entry in
  the GPU's list of compute processes), read after the timed pass;
- ``context_bytes``: that figure less what the caching allocator holds at the same moment
  (``memory_reserved``): the CUDA context, loaded kernels and library handles;
- ``reserve_slack_bytes``: ``max_memory_reserved`` less the peak of requested bytes
  (``memory_stats()["requested_bytes.all.peak"]``) over the same timed pass;
- ``workspace_bytes``: over one more step, after the timed pass and never timed, the allocator's
  peak of requested bytes less the tensor tracker's peak of tensor bytes: what allocations that
  are no tensor (cuBLAS and cuDNN workspaces, a kernel's own temporaries) add to the peak.

Only PyTorch's documented APIs and NVML (``nvidia-ml-py``). A compiled cell has no workspace
figure: its buffers are allocated where the tracker cannot see them.
"""

from __future__ import annotations

import torch

from .memtrack import TensorMemoryTracker

REQUESTED_PEAK = "requested_bytes.all.peak"


def record_cuda_terms(prepared, result, index: int, process_bytes: int | None) -> None:
    """The terms of a measured CUDA cell into ``result`` (module docstring); ``prepared`` is the
    cell's ``protocol.PreparedCell``, its timed pass done and its peaks read; ``process_bytes``
    NVML's figure for this process now (``devices.nvml_process_bytes``; None: unknown)."""
    torch.cuda.synchronize(index)
    requested_peak = torch.cuda.memory_stats(index).get(REQUESTED_PEAK)
    if result.peak_reserved_bytes is not None and requested_peak is not None:
        result.reserve_slack_bytes = result.peak_reserved_bytes - requested_peak
    if process_bytes is not None:
        result.device_total_bytes = process_bytes
        result.context_bytes = process_bytes - torch.cuda.memory_reserved(index)
    if prepared.cell.compile == "none":
        result.workspace_bytes = measured_workspace_bytes(prepared, index)


def measured_workspace_bytes(prepared, index: int) -> int | None:
    """One more step: the allocator's requested peak over it less its tensors' peak."""
    torch.cuda.reset_peak_memory_stats(index)
    tracker = prepared.tracked(TensorMemoryTracker(), 1)
    torch.cuda.synchronize(index)
    requested_peak = torch.cuda.memory_stats(index).get(REQUESTED_PEAK)
    return None if requested_peak is None else requested_peak - tracker.peak_bytes


__all__ = ["measured_workspace_bytes", "record_cuda_terms"]
