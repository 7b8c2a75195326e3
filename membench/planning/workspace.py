"""Library workspaces: the device memory cuBLAS and cuDNN take through PyTorch's caching allocator
on top of a step's tensors (docs/device-total.md, "Workspaces").

Both allocate through the caching allocator, so they count in ``max_memory_allocated`` and shape
the reserve; neither is a tensor, so no dispatch-level model (the tensor tracker) sees them.

**cuBLAS** (aten/src/ATen/cuda/CublasHandlePool.cpp, torch 2.14.1): each (handle, stream) pair
gets one workspace, allocated by the caching allocator at its first GEMM and held until the
process ends (``setWorkspaceForHandle``, ``cublas_handle_stream_to_workspace``); cuBLASLt GEMMs
share it (``TORCH_CUBLASLT_UNIFIED_WORKSPACE``, on by default; the 2.14.1 wheel's
libtorch_cuda.so holds that name and no ``TORCH_CUBLAS_WORKSPACE_CACHE``, the later switch that
stops the caching). Handles are reserved per thread (a thread-local ``PoolWindow``), and the
autograd engine runs a CUDA backward pass on its own device thread, so a training step whose
forward and backward both run a GEMM holds two workspaces on one stream. Their size is
``getChosenWorkspaceSize``: ``CUBLAS_WORKSPACE_CONFIG`` (``:SIZE_KiB:COUNT`` pairs, summed), by
default ``:4096:2:16:8`` (8 MiB + 128 KiB), 32 MiB on compute capability 9.x, 10.x, 11.x and
12.x (``parseChosenWorkspaceSize``).

**cuDNN** (aten/src/ATen/native/cudnn/Conv_v8.cpp, the default path; Conv_v7.cpp alike): each
convolution call allocates its plan's workspace through the caching allocator for the length of
the call (``run_conv_plan``) and frees it at once. The plan is cuDNN's choice and its workspace
is known only to cuDNN at run time, so what is *bound* and what is *assumed* is kept apart:

- bound (source): a plan is used only if its workspace can be allocated. With
  ``cudnn.benchmark`` off PyTorch runs the heuristic's first plan and, when its workspace
  allocation fails, the next (``run_single_conv``, ``try_configs`` catching the OOM), down to
  plans that need none; with it on, the search keeps only plans whose workspace is at most
  ``cacheInfo``'s largest block (the largest cached free block, or the device's free memory,
  whichever is larger: ``get_available_workspace``), allocates the largest of them (halving on
  OOM), times them, empties the cache (``_cudnn_get_conv_benchmark_empty_cache``, on by default)
  and keeps the fastest. So a convolution's workspace never exceeds the memory free at the
  call, and it never causes an out-of-memory error by itself: it is *elastic* (the replay,
  ``device_total``, skips one that does not fit);
- figure (assumed unless a device profile calibrated it): the workspace is taken as a ratio of
  the call's *lowered matrix* (``lowered_bytes``: the explicit-GEMM (im2col) matrix of the whole
  batch, the classic workspace of a GEMM-based convolution): 0 with benchmark off (the
  heuristics' first choices for common shapes are implicit-GEMM engines that need little or
  none) and 1 with benchmark on (the search is free to pick an engine whose workspace is of the
  order of that matrix). ``membench device calibrate`` measures both ratios on a card.

This module imports no torch: its inputs are shapes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

KIB = 1024
CUBLAS_SOURCE = (
    "aten/src/ATen/cuda/CublasHandlePool.cpp (torch 2.14.1), parseChosenWorkspaceSize: "
    "CUBLAS_WORKSPACE_CONFIG default"
)
# parseChosenWorkspaceSize: ":4096:2:16:8" (2 x 4096 KiB + 8 x 16 KiB) by default; 4096 KiB x 8
# (32 MiB) on these compute capability majors (Hopper, Blackwell).
CUBLAS_DEFAULT_CONFIG = ":4096:2:16:8"
CUBLAS_32MIB_MAJORS = (9, 10, 11, 12)
CUBLAS_32MIB_CONFIG = ":4096:8"
CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
# The threads that run GEMMs in a training step, each with its own handle and so its own
# workspace on the default stream: the forward's (calling) thread and the autograd engine's
# device thread (see the module docstring).
GEMM_THREADS = ("forward", "backward")


def parse_cublas_config(text: str) -> int | None:
    """The bytes a ``CUBLAS_WORKSPACE_CONFIG`` value gives each handle and stream, as torch
    reads it (every ``:SIZE:COUNT`` pair, SIZE KiB x COUNT, summed); None where torch finds no
    pair and falls back to its default."""
    pairs = re.findall(r":([0-9]+):([0-9]+)", text)
    if not pairs:
        return None
    return sum(int(size) * KIB * int(count) for size, count in pairs)


def cublas_workspace_bytes(
    capability: tuple[int, int], environ_value: str | None = None
) -> tuple[int, str]:
    """(bytes, source) of one cuBLAS workspace on a GPU of ``capability``: torch's default for
    it, or what a ``CUBLAS_WORKSPACE_CONFIG`` value gives."""
    if environ_value:
        size = parse_cublas_config(environ_value)
        if size is not None:
            return size, f"{CUBLAS_ENV}={environ_value} ({CUBLAS_SOURCE.split(',')[0]})"
    config = CUBLAS_32MIB_CONFIG if capability[0] in CUBLAS_32MIB_MAJORS else CUBLAS_DEFAULT_CONFIG
    return parse_cublas_config(config), f"{CUBLAS_SOURCE} {config} for sm_{capability[0]}x"


@dataclass(frozen=True)
class ConvCall:
    """One cuDNN convolution call of a step: which pass, the shapes and the element size.

    ``input``/``output`` are the convolution's own (N, C, *spatial) shapes, ``kernel`` its
    spatial kernel size; ``transposed`` for a transposed convolution, whose input is the
    low-resolution side."""

    kind: str  # forward | backward_data | backward_weight
    input: tuple[int, ...]
    output: tuple[int, ...]
    kernel: tuple[int, ...]
    itemsize: int
    transposed: bool = False


def lowered_bytes(call: ConvCall) -> int:
    """The explicit-GEMM (im2col) matrix of the whole batch for ``call``: N x (channels of the
    high-resolution side x kernel elements) x (spatial positions of the low-resolution side) x
    element size. The same matrix serves the forward pass and both backward passes."""
    high, low = (call.output, call.input) if call.transposed else (call.input, call.output)
    batch, channels = high[0], high[1]
    return batch * channels * math.prod(call.kernel) * math.prod(low[2:]) * call.itemsize


def conv_workspace_bytes(call: ConvCall, ratio: float) -> int:
    """The workspace figure of one convolution call: ``ratio`` x its lowered matrix (an
    assumption unless the ratio was calibrated; never more than the memory free at the call,
    which the replay enforces)."""
    return int(ratio * lowered_bytes(call))


__all__ = [
    "ConvCall",
    "GEMM_THREADS",
    "conv_workspace_bytes",
    "cublas_workspace_bytes",
    "lowered_bytes",
    "parse_cublas_config",
]
