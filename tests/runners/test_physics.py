"""Memory orderings that must hold because of how the methods work (CPU tensor tracker)."""

import pytest
import torch

from membench.measure.devices import CpuDevice
from membench.measure.memtrack import TensorMemoryTracker
from membench.measure.protocol import prepare_cell
from membench.schema import Cell


def tracked(method, arch, res, batch, micro_batch=None):
    """One tracked step after one warmup step (which materialises the optimizer state)."""
    cell = Cell(method, arch, res, batch, micro_batch=micro_batch, warmup=1, steps=1)
    return prepare_cell(cell, CpuDevice()).tracked(TensorMemoryTracker(), 1)


@pytest.fixture(scope="module")
def vgg11_r64_b8():
    torch.set_num_threads(1)
    return {
        "bp": tracked("bp", "vgg11", 64, 8),
        "bp-accum": tracked("bp-accum", "vgg11", 64, 8, micro_batch=4),
        "bp-ckpt": tracked("bp-ckpt", "vgg11", 64, 8),
        "ff-naive": tracked("ff-naive", "vgg11", 64, 8),
        "ff-pipelined": tracked("ff-pipelined", "vgg11", 64, 8),
    }


@pytest.mark.slow
def test_checkpointing_lowers_the_bp_peak(vgg11_r64_b8):
    assert vgg11_r64_b8["bp-ckpt"].peak_bytes < vgg11_r64_b8["bp"].peak_bytes


@pytest.mark.slow
def test_accumulation_lowers_the_bp_peak(vgg11_r64_b8):
    assert vgg11_r64_b8["bp-accum"].peak_bytes < vgg11_r64_b8["bp"].peak_bytes


@pytest.mark.slow
def test_pipelining_lowers_the_ff_peak(vgg11_r64_b8):
    naive, pipelined = vgg11_r64_b8["ff-naive"], vgg11_r64_b8["ff-pipelined"]
    assert pipelined.peak_bytes < naive.peak_bytes
    assert pipelined.peak_breakdown().activations < naive.peak_breakdown().activations


@pytest.mark.slow
def test_pipelined_ff_keeps_fewer_activations_than_bp(vgg11_r64_b8):
    assert (
        vgg11_r64_b8["ff-pipelined"].peak_breakdown().activations
        < vgg11_r64_b8["bp"].peak_breakdown().activations
    )


def test_activation_memory_is_linear_in_depth_for_bp_and_constant_for_pipelined_ff():
    # No pooling (-p0): every layer has the same activation volume, so depth is the only change.
    activations = {
        (method, depth): tracked(method, f"vgg-d{depth}-w32-p0", 16, 8).peak_breakdown().activations
        for method in ("bp", "ff-pipelined")
        for depth in (2, 4, 8)
    }
    bp = [activations["bp", d] for d in (2, 4, 8)]
    ff = [activations["ff-pipelined", d] for d in (2, 4, 8)]
    assert bp[0] < bp[1] < bp[2]
    assert bp[2] > 2.5 * bp[0]  # O(L): four times the depth, well over twice the memory
    # O(1): only the per-layer classifier features (B x C per layer) grow with depth.
    feature_bytes_per_layer = 8 * 32 * 4
    assert ff[2] - ff[0] <= 6 * feature_bytes_per_layer + 4096
