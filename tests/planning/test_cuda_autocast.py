"""CUDA's autocast on fake CPU tensors (membench/planning/cuda_autocast.py): every spelling of
an op CUDA runs in float32 gives a float32 result and saves float32 tensors, also when a
checkpoint recomputes it in the backward; the policies are the running torch's."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint

from membench.measure.memtrack import TensorMemoryTracker
from membench.planning import cuda_autocast as model
from membench.planning.cuda_autocast import CUDA_AUTOCAST_POLICIES, aten_op, cuda_autocast
from membench.planning.estimate import EstimateDevice

WIDTH = 16
# Spellings of CUDA's float32 ops that membench's runners, torchvision, timm and transformers
# call (softmax, log_softmax, layer_norm, group_norm, exp, pow, rms_norm, cross entropy, sum).
SPELLINGS = {
    "F.softmax": lambda h: F.softmax(h, dim=-1),
    "torch.softmax": lambda h: torch.softmax(h, -1),
    "Tensor.softmax": lambda h: h.softmax(-1),
    "nn.Softmax": nn.Softmax(dim=-1),
    "F.log_softmax": lambda h: F.log_softmax(h, dim=-1),
    "torch.log_softmax": lambda h: torch.log_softmax(h, -1),
    "Tensor.log_softmax": lambda h: h.log_softmax(-1),
    "F.layer_norm": lambda h: F.layer_norm(h, (WIDTH,)),
    "torch.layer_norm": lambda h: torch.layer_norm(h, (WIDTH,)),
    "F.group_norm": lambda h: F.group_norm(h.unsqueeze(-1), 4),
    "F.rms_norm": lambda h: F.rms_norm(h, (WIDTH,)),
    "torch.exp": torch.exp,
    "Tensor.exp": lambda h: h.exp(),
    "torch.pow": lambda h: torch.pow(h, 2),
    "Tensor.pow": lambda h: h.pow(2),
    "**": lambda h: h**2,
    "torch.square": torch.square,
    "Tensor.sum": lambda h: h.sum(-1),
    "F.cross_entropy": lambda h: F.cross_entropy(
        h, torch.zeros(h.size(0), dtype=torch.long), reduction="none"
    ),
}


def run(spelling, autocast_model=True, dtype=torch.bfloat16):
    """(result dtype, tracker peak bytes) of Linear -> the spelling -> sum, forward and
    backward on fake CPU tensors under autocast to ``dtype``."""
    with FakeTensorMode(), cuda_autocast() if autocast_model else contextlib.nullcontext():
        linear = nn.Linear(WIDTH, WIDTH)
        x = torch.randn(64, WIDTH)
        tracker = TensorMemoryTracker()
        tracker.add_existing("parameters", linear.parameters())
        with tracker:
            with torch.autocast("cpu", dtype=dtype):
                out = spelling(linear(x))
            out.float().sum().backward()
    return out.dtype, tracker.peak_bytes


@pytest.mark.parametrize("name", list(SPELLINGS))
def test_every_spelling_runs_in_float32_under_the_cuda_model(name):
    assert run(SPELLINGS[name])[0] == torch.float32
    assert run(SPELLINGS[name], dtype=torch.float16)[0] == torch.float32


def test_the_cpus_autocast_alone_leaves_them_in_bf16():
    # what the model corrects: without it these run in the lower precision (the loss, whose
    # cross_entropy_loss the CPU's own list casts, is the exception)
    low = [
        name
        for name in SPELLINGS
        if run(SPELLINGS[name], autocast_model=False)[0] == torch.bfloat16
    ]
    assert set(SPELLINGS) - set(low) == {"F.cross_entropy"}


def test_each_spelling_saves_what_f_softmax_saves():
    # The tracker's bytes for a module using torch.softmax or Tensor.softmax equal those using
    # F.softmax, and are above what the CPU's autocast alone gives (a bf16 softmax output).
    peaks = {
        name: run(SPELLINGS[name])[1]
        for name in ("F.softmax", "torch.softmax", "Tensor.softmax", "nn.Softmax")
    }
    assert len(set(peaks.values())) == 1
    assert peaks["torch.softmax"] > run(SPELLINGS["torch.softmax"], autocast_model=False)[1]


def test_without_its_policy_an_op_is_left_in_bf16(monkeypatch):
    # the mutation: softmax's entry removed, every spelling of softmax is bf16 and smaller
    with_policy = run(SPELLINGS["torch.softmax"])
    monkeypatch.delitem(CUDA_AUTOCAST_POLICIES, "softmax.int")
    without = run(SPELLINGS["torch.softmax"])
    assert without == run(SPELLINGS["torch.softmax"], autocast_model=False)
    assert without[0] == torch.bfloat16 and without[1] < with_policy[1]


class _SoftmaxDtypes(TorchDispatchMode):
    """The dtypes of every softmax the dispatcher runs while active."""

    def __init__(self):
        super().__init__()
        self.dtypes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._softmax.default:
            self.dtypes.append(out.dtype)
        return out


def recomputed_softmax_dtypes(autocast_model: bool) -> list[torch.dtype]:
    with FakeTensorMode(), cuda_autocast() if autocast_model else contextlib.nullcontext():
        linear = nn.Linear(WIDTH, WIDTH)
        x = torch.randn(8, WIDTH, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = checkpoint(lambda h: torch.softmax(linear(h), -1), x, use_reentrant=False)
        recorded = _SoftmaxDtypes()
        with recorded:
            y.float().sum().backward()
    return recorded.dtypes


def test_a_checkpoints_recomputation_in_the_backward_is_float32_too():
    assert recomputed_softmax_dtypes(True) == [torch.float32]
    assert recomputed_softmax_dtypes(False) == [torch.bfloat16]  # the check can fail


def test_explicit_dtypes_norm_and_promotion_follow_cudas_policies():
    with FakeTensorMode(), cuda_autocast(), torch.autocast("cpu", dtype=torch.bfloat16):
        low, full = torch.randn(4, 4, dtype=torch.bfloat16), torch.randn(4, 4)
        assert torch.softmax(low, -1, dtype=torch.bfloat16).dtype == torch.bfloat16  # kept
        assert low.norm().dtype == torch.float32 and low.norm(dim=0).dtype == torch.float32
        assert torch.addcmul(low, low, low).dtype == torch.bfloat16  # the widest input
        assert torch.addcmul(low, low, full).dtype == torch.float32
        assert low.double().exp().dtype == torch.float64  # float64 is not cast


def test_the_registrations_end_with_the_context_and_are_the_cuda_estimates():
    with FakeTensorMode(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = torch.randn(4, 4, dtype=torch.bfloat16)
        with cuda_autocast():
            assert low.softmax(-1).dtype == torch.float32
        assert low.softmax(-1).dtype == torch.bfloat16
    for kind, dtype in (("cuda", torch.float32), ("cpu", torch.bfloat16)):
        with EstimateDevice(kind).session(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.randn(4, 4, dtype=torch.bfloat16).softmax(-1).dtype == dtype


# CUDA's lower-precision list (autocast_mode.h, AT_FORALL_LOWER_PRECISION_FP, and
# autocast_mode.cpp's cudnn_convolution*), its banned binary_cross_entropy, and the two ops
# registered for CUDA's autocast outside autocast_mode.cpp: what the model leaves alone.
CUDA_LOWER_PRECISION = (
    "_convolution.deprecated",
    "_convolution",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_tbc",
    "conv_transpose1d",
    "conv_transpose2d.input",
    "conv_transpose3d.input",
    "convolution",
    "prelu",
    "addmm",
    "addmv",
    "addr",
    "matmul",
    "einsum",
    "mm",
    "mv",
    "linalg_vecdot",
    "linear",
    "addbmm",
    "baddbmm",
    "bmm",
    "chain_matmul",
    "linalg_multi_dot",
    "_thnn_fused_lstm_cell",
    "_thnn_fused_gru_cell",
    "lstm_cell",
    "gru_cell",
    "rnn_tanh_cell",
    "rnn_relu_cell",
    "_scaled_dot_product_flash_attention",
    "scaled_dot_product_attention",
    "cudnn_convolution",
    "cudnn_convolution_transpose",
)
CUDA_OTHER = ("binary_cross_entropy", "_cudnn_rnn", "linalg_matrix_sqrth")


def cuda_autocast_ops() -> set[str]:
    """The aten ops with a kernel for CUDA's autocast key in the running torch (torchvision's
    own ops, registered on import, are not aten's)."""
    return {
        name.removeprefix("aten::")
        for name in torch._C._dispatch_get_all_op_names()
        if name.startswith("aten::")
        and torch._C._dispatch_has_kernel_for_dispatch_key(name, "AutocastCUDA")
    }


def test_the_policies_are_the_running_torchs_cuda_autocast_lists():
    for name in CUDA_AUTOCAST_POLICIES:
        aten_op(name)  # every name is an op of this torch
    listed = {*CUDA_AUTOCAST_POLICIES, *CUDA_LOWER_PRECISION, *CUDA_OTHER}
    assert cuda_autocast_ops() == listed
    # the check can fail: a torch whose CUDA list gained or lost an op is another torch
    assert cuda_autocast_ops() != listed - {"exp"}
    assert set(model._FP32_OPS) <= cuda_autocast_ops()
