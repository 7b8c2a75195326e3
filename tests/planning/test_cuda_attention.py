"""CUDA's attention kernel on fake CPU tensors (membench/planning/cuda_attention.py): the
backend CUDA would pick, and what it saves for the backward: a log-sum-exp, never the attention
matrix, where the CPU's math path (taken with dropout) saves s × s tensors."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from membench.planning import estimate
from membench.planning.cuda_attention import (
    EFFICIENT,
    FLASH,
    MATH,
    cuda_attention,
    cuda_sdpa_backend,
)
from membench.planning.estimate import estimate_cell
from membench.schema import Cell

B, H, S, D = 2, 4, 10, 8
BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


def qkv(dtype, head_dim=D, kv_heads=H, q_seq=S):
    return (
        torch.empty(B, H, q_seq, head_dim, dtype=dtype),
        torch.empty(B, kv_heads, S, head_dim, dtype=dtype),
        torch.empty(B, kv_heads, S, head_dim, dtype=dtype),
    )


MASK = torch.ones(S, S, dtype=torch.bool)


@pytest.mark.parametrize(
    ("inputs", "options", "backend"),
    [
        (qkv(BF16), {}, FLASH),
        (qkv(FP16), {"is_causal": True}, FLASH),
        (qkv(BF16, head_dim=12), {}, FLASH),  # padded to 16 for flash
        (qkv(FP32), {}, EFFICIENT),  # flash needs fp16/bf16
        (qkv(BF16), {"attn_mask": MASK}, EFFICIENT),  # flash takes no mask
        (qkv(BF16, head_dim=512), {}, EFFICIENT),  # flash's head dim is at most 256
        (qkv(BF16, q_seq=4), {"is_causal": True}, EFFICIENT),  # flash's causal mask is square
        (qkv(BF16, kv_heads=2), {"enable_gqa": True}, FLASH),
        (qkv(FP32, kv_heads=2), {"enable_gqa": True}, EFFICIENT),
        (qkv(BF16, kv_heads=2), {}, MATH),  # other head counts need enable_gqa
        (qkv(FP32, head_dim=6), {}, MATH),  # memory-efficient needs fp32 head dims % 4
        (qkv(BF16, head_dim=12)[:2] + (torch.empty(B, H, S, 12, dtype=BF16)[..., :4],), {}, MATH),
        (tuple(t[0] for t in qkv(BF16)), {}, MATH),  # 3-D inputs: math only
        (qkv(torch.float64), {}, MATH),
    ],
)
def test_the_backend_follows_cudas_selection_rules(inputs, options, backend):
    assert cuda_sdpa_backend(*inputs, **options) == backend


def test_a_disabled_backend_is_not_picked():
    previous = torch.backends.cuda.flash_sdp_enabled()
    torch.backends.cuda.enable_flash_sdp(False)
    try:
        assert cuda_sdpa_backend(*qkv(BF16)) == EFFICIENT
    finally:
        torch.backends.cuda.enable_flash_sdp(previous)


def saved_by_attention(dtype, dropout_p, cuda=True, mask=False):
    """(shape, dtype) of every tensor autograd saves for one attention call on q, k, v that
    require gradients, on fake CPU tensors, with the CUDA model or without it."""
    with FakeTensorMode(), cuda_attention() if cuda else contextlib.nullcontext():
        q, k, v = (t.requires_grad_() for t in qkv(dtype))
        attn_mask = torch.ones(S, S, dtype=torch.bool) if mask else None
        saved = []

        def pack(tensor):
            saved.append((tuple(tensor.shape), tensor.dtype))
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p)
        assert out.shape == q.shape and out.dtype == dtype
    return saved


def nbytes(saved) -> int:
    return sum(torch.Size(shape).numel() * dtype.itemsize for shape, dtype in saved)


def test_flash_at_bf16_saves_the_output_and_the_log_sum_exp_not_the_attention_matrix():
    saved = saved_by_attention(BF16, dropout_p=0.1)
    # q, k, v and the output; the log-sum-exp, float32, one per query row and head; the
    # dropout's RNG state (a seed and an offset)
    assert sorted(saved, key=str) == sorted(
        [((B, H, S, D), BF16)] * 4 + [((B, H, S), FP32), ((2,), torch.uint64), ((), torch.uint64)],
        key=str,
    )
    assert nbytes(saved) == 4 * B * H * S * D * 2 + B * H * S * 4 + 16 + 8


def test_memory_efficient_at_fp32_saves_a_log_sum_exp_padded_to_32_rows():
    saved = saved_by_attention(FP32, dropout_p=0.1)
    assert ((B, H, 32), FP32) in saved  # ceil(S / 32) * 32 rows (the kernel's block)
    assert not any(shape[-2:] == (S, S) for shape, _ in saved)


def test_the_cpus_kernel_with_dropout_saves_the_attention_matrix():
    # The mutation: without the model, the CPU's math path (dropout > 0) keeps s x s tensors;
    # the checks above fail on it.
    saved = saved_by_attention(BF16, dropout_p=0.1, cuda=False)
    assert any(shape[-2:] == (S, S) for shape, _ in saved)
    assert ((B, H, S), FP32) not in saved
    assert nbytes(saved) > nbytes(saved_by_attention(BF16, dropout_p=0.1))


def test_a_boolean_mask_is_saved_additive_and_padded_as_cuda_pads_it():
    saved = saved_by_attention(BF16, dropout_p=0.0, mask=True)
    assert ((B, H, S, S), BF16) in saved  # the expanded bias, a view of a (B, H, S, 16) pad
    assert ((B, H, 32), FP32) in saved


def test_a_cuda_estimate_of_attention_with_dropout_keeps_no_attention_matrix(monkeypatch):
    cell = Cell(
        "bp",
        "tiny_models:tiny_vit_attention_dropout",
        16,
        8,
        classes=3,
        warmup=1,
        steps=1,
        precision="bf16",
    )
    fused = estimate_cell(cell, "cuda", count_flops=False)
    monkeypatch.setattr(estimate, "cuda_attention", contextlib.nullcontext)
    cpu_kernels = estimate_cell(cell, "cuda", count_flops=False)
    assert fused.status == cpu_kernels.status == "estimated", (fused.error, cpu_kernels.error)
    assert fused.breakdown.activations < cpu_kernels.breakdown.activations
