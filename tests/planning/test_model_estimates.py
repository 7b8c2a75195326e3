"""Estimates of models from elsewhere (torchvision, a plugin's ViT, the CIFAR ResNets) are the
measurement's to the byte, for the models that read values while they are built."""

from __future__ import annotations

import contextlib

import pytest
from tiny_models import position_bias_net

from membench.archs import registry
from membench.measure.devices import CpuDevice
from membench.measure.protocol import count_step_flops, run_cell
from membench.planning.estimate import estimate_cell
from membench.schema import Cell

TINY_VIT = "tiny_models:tiny_vit"
POSITION_BIAS = "tiny_models:position_bias_net"


def cell(method: str, arch: str, res: int = 16) -> Cell:
    return Cell(method, arch, res, 2, classes=3, warmup=1, steps=1)


@pytest.mark.parametrize("method", ["bp", "bp-ckpt"])
@pytest.mark.parametrize("arch", [TINY_VIT, "resnet20-stage", POSITION_BIAS])
def test_the_cpu_estimate_is_the_tracked_measurement(arch, method):
    res = 8 if arch == POSITION_BIAS else 16
    estimate = estimate_cell(cell(method, arch, res), "cpu")
    measured = run_cell(cell(method, arch, res), CpuDevice())
    assert estimate.status == "estimated", estimate.error
    assert measured.status == "ok", measured.error
    assert estimate.peak_allocated_bytes == measured.peak_allocated_bytes
    assert estimate.breakdown.as_columns() == measured.breakdown.as_columns()


def test_checkpointing_a_vit_recomputes_its_encoder_blocks():
    """The blocks are ``encoder.layers``, not a top-level Sequential: bp-ckpt finds them (the
    extra FLOPs are the recomputed forward of the blocks)."""
    assert count_step_flops(cell("bp-ckpt", TINY_VIT)) > count_step_flops(cell("bp", TINY_VIT))


def test_a_vit_estimates_only_because_it_is_built_on_real_tensors(monkeypatch):
    """trunc_normal_'s rejection loop reads values: built inside the fake mode, as before,
    the estimate fails as the issue reported (DataDependentOutputException)."""
    monkeypatch.setattr(registry, "parameters_on_meta", contextlib.nullcontext)
    monkeypatch.setattr(registry, "unset_fake_temporarily", contextlib.nullcontext)
    row = estimate_cell(cell("bp", TINY_VIT), "cuda")
    assert row.status == "error" and "DataDependentOutputException" in row.error


def test_buffers_made_on_the_parameters_device_become_fake_cpu_tensors():
    """A buffer or tensor attribute a constructor makes on its (meta, while building for an
    estimate) parameters' device is a fake CPU tensor like the rest: timm's Swin failed so
    (FakeTensorDeviceMismatchError: cpu and meta); one it fills from that device builds
    (timm's Swin-v2 failed: Cannot copy out of meta tensor), and so does a constructor that
    runs a layer on a real image (timm's hybrid ViTs failed: Tensor on device meta is not on
    the expected device cpu)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        model = registry.build_arch(POSITION_BIAS, 3)
    tensors = (model.index, model.mask, model.scale, *model.parameters())
    assert {t.device.type for t in tensors} == {"cpu"}
    row = estimate_cell(cell("bp", POSITION_BIAS, 8), "cuda")
    assert row.status == "estimated", row.error
    with registry.parameters_on_meta():  # what the constructor itself sees: no values
        assert position_bias_net(3).scale.isnan().all()


def test_a_constructors_op_on_meta_parameters_and_real_tensors_runs_on_meta():
    """Out of place, the result is meta; written into a real tensor, the values are NaN (a
    meta tensor has none), whether by copy_, an in-place op or an index."""
    import torch

    with registry.parameters_on_meta():
        weight = torch.nn.Linear(2, 2).weight
        assert weight.is_meta and (torch.zeros(2, 2) + weight).is_meta
        copied, added, indexed = torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2, 2)
        copied.copy_(weight)
        added += weight
        indexed[0] = weight[0]
        counts = torch.zeros(2, dtype=torch.long)
        counts.copy_(weight[0].long())  # integers have no NaN: left as they were
    assert all(t.isnan().all() for t in (copied, added, indexed))
    assert counts.tolist() == [0, 0]


@pytest.mark.parametrize("method", ["bp-ckpt", "bp-sac"])
def test_checkpointed_segments_that_start_in_place_keep_bps_gradients(method):
    """An in-place ReLU at the start of a segment would modify the input its checkpoint keeps
    (RuntimeError in backward); checkpointing makes activations out-of-place."""
    from membench.verify import VerifySetup
    from membench.verify.checks import check_gradients

    result = check_gradients(
        method, "bp", VerifySetup(arch="tiny_models:inplace_net", res=8, batch=2, classes=3)
    )
    assert result.passed, result.detail


@pytest.mark.parametrize("method", ["bp-ckpt", "bp-sac"])
@pytest.mark.parametrize(
    "arch",
    [
        "keyword_blocks_net",
        "keyword_sequential_net",
        "stage_outputs_net",
        "named_head_net",
        "nested_list_net",
    ],
)
def test_checkpointing_leaves_the_blocks_their_owner_iterates(arch, method):
    """Blocks an owner calls one by one with a keyword beside the input (timm's BEiT from a
    ModuleList, NaFlexViT from a Sequential) get it through the checkpoint, an owner that
    iterates its stages by index (MobileNet-v5) sees as many as it built, one that calls them
    by name and reads their attributes (MetaFormer's head) finds them, and one that iterates a
    list of lists (Twins) finds lists: the gradients are bp's, and bp-ckpt recomputes the
    blocks (more FLOPs than bp; bp-sac keeps what FLOPs count)."""
    from membench.verify import VerifySetup
    from membench.verify.checks import check_gradients

    arch = f"tiny_models:{arch}"
    result = check_gradients(method, "bp", VerifySetup(arch=arch, res=8, batch=2, classes=3))
    assert result.passed, result.detail
    if method == "bp-ckpt":
        assert count_step_flops(cell(method, arch, 8)) > count_step_flops(cell("bp", arch, 8))
