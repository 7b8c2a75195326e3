"""CUDA's choice of attention kernel, on the CPU's fake tensors: what the backward keeps.

``F.scaled_dot_product_attention`` (and ``nn.MultiheadAttention``, timm's and transformers'
attention, which call it) picks a kernel at run time by the device, dtype and shapes. On the
CPU's fake tensors of a CUDA estimate it picks the CPU's: its flash kernel without dropout (it
saves the output and a float32 log-sum-exp), the math composite with dropout (it saves the
attention matrix, b·heads·s² per layer, and the dropout's noise of the same size). CUDA picks
flash or memory-efficient attention for nearly every training shape, which save the output, a
float32 log-sum-exp of b·heads·s and the dropout's RNG state, never the attention matrix.

``cuda_attention()`` makes the estimate run the kernel CUDA would run: for as long as it is open
it registers a kernel for ``aten::scaled_dot_product_attention`` at the ``AutogradCPU`` dispatch
key (below autocast, which has cast q, k and v by then, as on CUDA) that picks the backend with
``cuda_sdpa_backend`` and calls that backend's aten op as ``scaled_dot_product_attention`` does
on CUDA (attention.cpp, torch 2.14.1): ``_scaled_dot_product_flash_attention`` (head dims
padded to a multiple of 8), ``_scaled_dot_product_efficient_attention`` (a boolean mask made
additive, padded to a multiple of 16) or ``_scaled_dot_product_attention_math``. Those ops have
shape functions for fake tensors on any device and their own derivative formulas, so autograd
saves what it saves on CUDA, and the FLOP counter knows them. The dispatcher sees every caller,
also a checkpoint's recomputation in the backward.

The selection (``cuda_sdpa_backend``) follows ``select_sdp_backend`` in
``aten/src/ATen/native/transformers/cuda/sdp_utils.cpp`` for a GPU of compute capability 8.0 or
newer (A100, H100: bf16 and flash need it) with PyTorch's CUDA wheels (flash and
memory-efficient attention compiled in), in the default order flash, memory-efficient, math,
honouring ``torch.backends.cuda.enable_*_sdp``. Not modelled, because what they change is small:

- cuDNN attention, which torch 2.14 tries first on sm90 and sm100 (H100, B200) with cuDNN newer
  than 9.15 (``check_prefer_cudnn_attention``; the cu130 wheels ship 9.24): it saves the output
  and a float32 log-sum-exp of b·heads·s too, the same bytes as flash;
- sm86/sm89's refusal of flash for training with head dims in (192, 224], and
  ``check_cudnn_*``'s and ROCm's rules.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

FLASH, EFFICIENT, MATH = "flash", "efficient", "math"

FLASH_DTYPES = (torch.float16, torch.bfloat16)  # check_dtypes_low_precision, sm80 and newer
EFFICIENT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FLASH_MAX_HEAD_DIM = 256  # check_head_dim_size_flash
FLASH_HEAD_DIM_PAD = 8  # attention.cpp pads q, k, v's last dim to it for flash (pad_last_dim)
EFFICIENT_MASK_ALIGNMENT = 16  # attention.cpp's preprocess_mask (mem_eff_alignment)


def efficient_alignment(dtype: torch.dtype) -> int:
    """The head-dim alignment memory-efficient attention needs on sm80 and newer
    (``minimum_gemm_alignment``: 128 bits of tensor-core input, at least 4 elements)."""
    return max(4, 128 // (torch.finfo(dtype).bits))


def _heads_fit(query, key, value, enable_gqa: bool) -> bool:
    """``check_batch_size_and_num_heads_dense`` for flash and memory-efficient attention: one
    batch size; key and value share their heads, and the query's are theirs or, with
    ``enable_gqa``, a multiple of them."""
    if not query.size(0) == key.size(0) == value.size(0) or key.size(1) != value.size(1):
        return False
    if query.size(1) == key.size(1):
        return True
    return enable_gqa and query.size(1) % key.size(1) == 0


def _flash_fits(query, key, value, attn_mask, is_causal: bool) -> bool:
    """``can_use_flash_attention``'s dense constraints: fp16/bf16, no mask, one head dim of
    at most 256, a causal mask only on a square, the last dim contiguous."""
    head_dim = query.size(-1)
    return (
        torch.backends.cuda.flash_sdp_enabled()
        and query.dtype in FLASH_DTYPES
        and attn_mask is None
        and key.size(-1) == value.size(-1) == head_dim
        and head_dim <= FLASH_MAX_HEAD_DIM
        and not (is_causal and query.size(-2) != key.size(-2))
        and all(t.stride(-1) == 1 or t.size(-1) == 1 for t in (query, key, value))
    )


def _efficient_fits(query, key, value) -> bool:
    """``can_use_mem_efficient_attention``'s dense constraints: fp16/bf16/fp32, head dims
    aligned (``check_head_dim_size_mem_efficient``), storage offsets aligned
    (``check_data_ptr_alignment_mem_efficient``), the last dim contiguous."""
    if not torch.backends.cuda.mem_efficient_sdp_enabled() or query.dtype not in EFFICIENT_DTYPES:
        return False
    alignment = efficient_alignment(query.dtype)
    return (
        query.size(-1) == key.size(-1)
        and query.size(-1) % alignment == 0
        and value.size(-1) % alignment == 0
        and all(t.storage_offset() % alignment == 0 for t in (query, key, value))
        and all(t.stride(-1) == 1 for t in (query, key, value))
    )


def cuda_sdpa_backend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    enable_gqa: bool = False,
) -> str:
    """The kernel CUDA's ``scaled_dot_product_attention`` would run for these inputs (the
    module docstring): ``FLASH``, ``EFFICIENT`` or ``MATH``."""
    dense = (
        query.dim() == key.dim() == value.dim() == 4
        and min(query.size(-2), key.size(-2)) > 0
        and _heads_fit(query, key, value, enable_gqa)
    )
    if dense and _flash_fits(query, key, value, attn_mask, is_causal):
        return FLASH
    if dense and _efficient_fits(query, key, value):
        return EFFICIENT
    return MATH


def _additive_mask(attn_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """attention.cpp's ``convert_boolean_attn_mask``: a boolean mask as 0 / -inf."""
    if attn_mask is None or attn_mask.dtype != torch.bool:
        return attn_mask
    return torch.zeros_like(attn_mask, dtype=dtype).masked_fill_(attn_mask.logical_not(), -math.inf)


def _efficient_mask(attn_mask: torch.Tensor, query, key) -> torch.Tensor:
    """attention.cpp's ``preprocess_mask``: expanded to (b, heads, s_q, s_k), its last dim
    padded to a multiple of 16 (then sliced back) or made contiguous where its strides are not
    multiples of 16."""
    mask = attn_mask.expand(query.size(0), query.size(1), query.size(2), key.size(2))
    last = mask.size(-1)
    if last % EFFICIENT_MASK_ALIGNMENT:
        return F.pad(mask, (0, EFFICIENT_MASK_ALIGNMENT - last % EFFICIENT_MASK_ALIGNMENT))[
            ..., :last
        ]
    if any(stride % EFFICIENT_MASK_ALIGNMENT for stride in mask.stride()[:3]):
        return mask.contiguous()
    return mask


def _pad_head_dim(tensor: torch.Tensor) -> torch.Tensor:
    short = -tensor.size(-1) % FLASH_HEAD_DIM_PAD
    return F.pad(tensor, (0, short)) if short else tensor


def sdpa_as_on_cuda(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    *,
    scale=None,
    enable_gqa=False,
):
    """``scaled_dot_product_attention`` as CUDA runs it (attention.cpp's CUDA path): the
    backend's aten op, so that autograd saves what that kernel saves."""
    aten = torch.ops.aten
    backend = cuda_sdpa_backend(query, key, value, attn_mask, is_causal, enable_gqa)
    if backend == FLASH:
        head_dim = query.size(-1)
        scale = 1 / math.sqrt(head_dim) if scale is None else scale  # of the unpadded dim
        out = aten._scaled_dot_product_flash_attention(
            _pad_head_dim(query),
            _pad_head_dim(key),
            _pad_head_dim(value),
            dropout_p,
            is_causal,
            False,
            scale=scale,
        )[0]
        return out[..., :head_dim] if out.size(-1) != head_dim else out
    attn_mask = _additive_mask(attn_mask, query.dtype)
    if backend == EFFICIENT:
        keep_lse = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
        if attn_mask is not None:
            attn_mask = _efficient_mask(attn_mask, query, key)
        return aten._scaled_dot_product_efficient_attention(
            query, key, value, attn_mask, keep_lse, dropout_p, is_causal, scale=scale
        )[0]
    return aten._scaled_dot_product_attention_math(
        query, key, value, attn_mask, dropout_p, is_causal, None, scale=scale, enable_gqa=enable_gqa
    )[0]


@contextlib.contextmanager
def cuda_attention() -> Iterator[None]:
    """While open, ``scaled_dot_product_attention`` on CPU tensors runs the kernel CUDA would
    (``sdpa_as_on_cuda``; the module docstring)."""
    library = torch.library.Library("aten", "IMPL")
    try:
        library.impl("scaled_dot_product_attention", sdpa_as_on_cuda, "AutogradCPU")
        yield
    finally:
        # The registration lives as long as the library; end it now, not at its collection.
        library._destroy()
