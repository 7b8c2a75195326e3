"""A reference for a transformer's activation memory: a GPT-2 block's saved tensors against
Korthikanti et al. (2022), "Reducing Activation Recomputation in Large Transformer Models",
Sec. 4.1: s·b·h·(34 + 5·a·s/h) bytes per layer with 16-bit activations and 1-byte dropout masks
(docs/sequence-models.md, "Activation memory of a GPT-2 block").

The block is transformers' GPT-2 block with eager attention (the formula keeps the softmax and
its dropout, a S x S matrix per head) and the tanh GeLU fused (``gelu_pytorch_tanh``: the formula
keeps only the GeLU's input), run on fake tensors under the CUDA estimate's models (CUDA's
autocast policy, its fused dropout), so nothing is allocated at GPT-2 small's real size.
"""

from __future__ import annotations

import pytest
import torch

from membench.measure.activation_bytes import bytes_by_producer, saved_for_backward
from membench.planning.estimate import EstimateDevice

pytest.importorskip("transformers")

H, HEADS, S, B = 768, 12, 1024, 8  # GPT-2 small's width and heads; a sequence of 1024, batch 8
SBH = S * B * H
LAYER_NORM_STATISTICS = 2 * 2 * B * S * 4  # two LayerNorms' float32 mean and rstd per token
LINEAR_WEIGHTS = 12 * H * H  # c_attn 3h², attention c_proj h², c_fc 4h², MLP c_proj 4h²


def korthikanti(bytes_per_value: int) -> int:
    """Sec. 4.1's terms with activations of ``bytes_per_value`` bytes and 1-byte masks:
    attention 11sbh + 5as²b at 2 bytes (QKV input 2, Q and K 4, softmax output 2as²b, its
    dropout mask as²b, dropout output 2as²b and V 2, projection input 2 and dropout mask 1),
    MLP 19sbh (input 2, GeLU input 8, its output 8, dropout mask 1), two LayerNorm inputs 4sbh."""
    v = bytes_per_value
    attention = SBH * (v + 2 * v + v + v + 1) + HEADS * S * S * B * (v + 1 + v)
    mlp = SBH * (v + 4 * v + 4 * v + 1)
    return attention + mlp + SBH * 2 * v


def saved_by_a_gpt2_block(precision: str, kind: str = "cuda"):
    """The saved tensors of one training-mode GPT-2 block forward, as an estimate for ``kind``
    sees it (fake tensors), the block's parameters and its input's storage counted apart."""
    from transformers import masking_utils

    from membench.archs import build_arch

    with EstimateDevice(kind).session():
        task = build_arch(
            "hf:gpt2?n_layer=1&activation_function=gelu_pytorch_tanh",
            2,
            attn_implementation="eager",
        ).train()
        block = task.model.transformer.h[0]
        x = torch.randn(B, S, H, requires_grad=True)
        mask = masking_utils.create_causal_mask(
            config=task.model.config,
            inputs_embeds=x,
            attention_mask=None,
            cache=None,
            position_ids=torch.arange(S)[None],
        )
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

        def forward():
            with autocast:
                return block(x, attention_mask=mask)

        return saved_for_backward(forward, exclude=[*block.parameters(), mask])


def test_in_fp32_a_gpt2_block_keeps_the_formula_and_its_layer_norm_statistics():
    saved = saved_by_a_gpt2_block("fp32")
    total = sum(t.nbytes for t in saved)
    assert total == korthikanti(4) + LAYER_NORM_STATISTICS
    assert total / korthikanti(4) == pytest.approx(1.0001, abs=5e-5)


def test_under_bf16_autocast_the_excess_is_what_autocast_keeps_term_by_term():
    """34 + 5as/h at 2 bytes, plus what CUDA's autocast keeps: the softmax's float32 output
    (+2as²b), the float32 residual stream into both LayerNorms (+2sbh each), the bf16 copies of
    the four linear weights autograd holds (2 bytes x 12h²), and the LayerNorm statistics."""
    saved = saved_by_a_gpt2_block("bf16")
    by_producer = bytes_by_producer(saved)
    softmax = by_producer[("_softmax", torch.float32)]
    assert softmax == 4 * HEADS * S * S * B
    # the block's input and the residual sum: float32, what each LayerNorm saves
    assert by_producer[("input", torch.float32)] == by_producer[("add", torch.float32)] == 4 * SBH
    assert by_producer[("_to_copy", torch.bfloat16)] == 2 * 2 * SBH + 2 * LINEAR_WEIGHTS
    excess = 2 * HEADS * S * S * B + 2 * 2 * SBH + 2 * LINEAR_WEIGHTS + LAYER_NORM_STATISTICS
    total = sum(t.nbytes for t in saved)
    assert total == korthikanti(2) + excess
    assert total / korthikanti(2) == pytest.approx(1.336, abs=1e-3)


def test_the_decomposition_fails_without_cudas_dropout_kernel():
    """The term-by-term check can fail: as the CPU runs it (the estimate for a CPU), dropout
    saves its noise in the activations' dtype, not CUDA's 1-byte mask, and the total is no
    longer the formula plus autocast's terms."""
    saved = saved_by_a_gpt2_block("bf16", kind="cpu")
    assert ("native_dropout", torch.bool) not in bytes_by_producer(saved)
    excess = 2 * HEADS * S * S * B + 2 * 2 * SBH + 2 * LINEAR_WEIGHTS + LAYER_NORM_STATISTICS
    assert sum(t.nbytes for t in saved) != korthikanti(2) + excess
