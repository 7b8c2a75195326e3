"""FLOPs of a training step, and the peak a device could reach: what explains a throughput.

``step_flops`` runs one step under ``torch.utils.flop_counter.FlopCounterMode``; the protocol
calls it on one eager step of the cell's real runner on fake tensors (``FakeTensorMode``,
``protocol.count_step_flops``): nothing is computed or allocated, every op's FLOPs come from its
shapes. It counts what the step dispatches,
so recomputation (``bp-ckpt``), ``ff-naive``'s second conv pass, readouts, heads and every
micro-batch are in; a convolution's input gradient is counted only where autograd asks for it,
which is why DTG-FF (each layer's input detached) costs about two thirds of BP. Optimizer
updates and elementwise ops are not counted (FlopCounterMode counts matmuls and convolutions,
fused attention as its two matmuls: ``ATTENTION_FORWARD``).

The peak a cell is held against (``PeakSpec``): a GPU's dense datasheet figure for the cell's
precision (``membench.measure.peaks``), a user's ``--peak-tflops``, or on the CPU the best GEMM or
convolution rate calibrated at the start of the sweep (``membench.measure.calibrate``, about two
seconds per precision on any CPU). MFU = achieved TFLOP/s / peak, never above 1: a step that ran
faster than its peak has no defensible one, and its MFU is left empty (``apply_peak``);
docs/measurement.md ("FLOPs and MFU") says what each peak means.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    conv_flop_count,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from ..schema import PRECISIONS
from .calibrate import cpu_peak
from .peaks import PeakSpec, gpu_peak

if TYPE_CHECKING:
    from ..schema import CellResult

DATASHEET, USER = "datasheet", "user"


def conv_backward_flop(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    groups,
    output_mask,
    out_shape=None,
    **kwargs,
) -> int:
    """FLOPs of ``aten.convolution_backward``, grouped convolutions counted right.

    torch's formula (``torch.utils.flop_counter.conv_backward_flop``) counts the weight gradient
    as one convolution of the input with the output gradient over *all* input and output
    channels, which is right only for ``groups = 1``: with g groups each output channel sees
    C_in / g input channels, so it counts g times too much (a depthwise conv of C channels, C
    times). Its input-gradient term is right (the weight's shape already holds C_in / g). This
    formula is torch's with the weight-gradient term divided by the groups: per group, a dense
    convolution of C_in / g to C_out / g channels (docs/measurement.md, "FLOPs and MFU").
    """

    def t(shape):
        return [shape[1], shape[0], *shape[2:]]

    flops = 0
    if output_mask[0]:  # grad_input: a transposed convolution of grad_out with the weight
        flops += conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
    if output_mask[1]:  # grad_weight: input with grad_out, batch and channels swapped
        if transposed:
            whole = conv_flop_count(t(grad_out_shape), t(x_shape), t(out_shape[1]), False)
        else:
            whole = conv_flop_count(t(x_shape), t(grad_out_shape), t(out_shape[1]), False)
        flops += whole // groups
    return flops


def attention_flop(query_shape, key_shape, value_shape, *_args, out_shape=None, **_kwargs) -> int:
    """FLOPs of a fused attention forward: torch's formula (``sdpa_flop_count``), the two
    matmuls q·kᵀ and attention·v, 2·2·b·heads·s_q·s_k·d (4·b·s²·h for self-attention of width
    h = heads·d). Softmax, scaling and masking are not counted, as for an explicit softmax.
    Causal attention counts the full square, as torch's formula does (it does not halve it for
    the masked half, which a causal kernel skips): a convention, not the kernel's work."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def attention_backward_flop(
    grad_out_shape, query_shape, key_shape, value_shape, *_args, out_shape=None, **_kwargs
) -> int:
    """FLOPs of a fused attention backward: torch's formula (``sdpa_backward_flop_count``),
    five matmuls of the forward's size, 2.5 times the forward: the scores recomputed (a fused
    kernel saves no attention matrix), then the gradients of attention·v (two) and of q·kᵀ
    (two). Explicit matmuls' backward is four, 2 times their forward."""
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_aten = torch.ops.aten
# The fused attention kernels torch 2.14's FLOP table (torch.utils.flop_counter.flop_registry)
# does not know, by the backend that dispatches them: the CPU's flash kernel (every
# F.scaled_dot_product_attention on the CPU without dropout, fake tensors included) and the
# out-of-tree backends' (PrivateUse1) overrideable one; MPS's math kernel runs only without
# gradients. Torch's table has CUDA's flash, memory-efficient and cuDNN kernels; the math
# backend is a composite of matmuls, counted as such. Their query, key and value (the
# backward's gradient, query, key, value) come first, so torch's formulas apply.
ATTENTION_FORWARD = (
    _aten._scaled_dot_product_flash_attention_for_cpu,
    _aten._scaled_dot_product_fused_attention_overrideable,
    _aten._scaled_dot_product_attention_math_for_mps,
)
ATTENTION_BACKWARD = (
    _aten._scaled_dot_product_flash_attention_for_cpu_backward,
    _aten._scaled_dot_product_fused_attention_overrideable_backward,
)

# What FlopCounterMode counts differently from torch's own registry, or what the registry lacks
# (docs/measurement.md, "FLOPs and MFU"); every FLOP count of membench goes through it.
FLOP_FORMULAS = {
    _aten.convolution_backward: conv_backward_flop,
    **{op: attention_flop for op in ATTENTION_FORWARD},
    **{op: attention_backward_flop for op in ATTENTION_BACKWARD},
}


def flop_counter(**options) -> FlopCounterMode:
    """A ``FlopCounterMode`` with membench's corrected formulas (``FLOP_FORMULAS``)."""
    return FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS, **options)


def step_flops(step: Callable[[], object]) -> int:
    """The FLOPs ``step()`` dispatches (matmuls and convolutions), counted by FlopCounterMode
    with grouped convolutions' backward corrected (``conv_backward_flop``)."""
    with flop_counter() as counter:
        step()
    return int(counter.get_total_flops())


class FlopTally:
    """FLOPs of the ops a dispatch mode already sees (``count``, called with each op and its
    output): FlopCounterMode's own formulas (its registry, with ``FLOP_FORMULAS``), without its
    mode and module tracker.

    An estimate counts its FLOPs this way on the step it tracks anyway (``protocol.measure_memory``
    hands one to the tensor tracker), where a FlopCounterMode cannot go: its ``ModuleTracker``
    puts multi-grad hooks on every module whose autograd nodes sit in reference cycles, which
    changes when checkpointed graphs die (the tracked peak; see ``membench.timeline.phases``), and
    it costs about half a fake step. The count equals ``step_flops``'s for every built-in runner
    (tests/measure/test_flops.py): the ops FlopCounterMode would decompose first (composite ops
    reaching a Python mode, as under inference mode) do not occur in a training step.
    """

    def __init__(self):
        self.registry = flop_counter().flop_registry
        self.total = 0

    def count(self, func, args: tuple, kwargs: dict, out) -> None:
        formula = self.registry.get(getattr(func, "_overloadpacket", None))
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))


def cuda_precision() -> str:
    """The precision an fp32 conv net runs at on CUDA: TF32 while cuDNN may use it (PyTorch's
    default, ``torch.backends.cudnn.allow_tf32``), else FP32."""
    return "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"


def gpu_peak_spec(device_name: str, precision: str) -> PeakSpec:
    """The datasheet peak of a GPU model for ``precision``; empty with a note if unknown."""
    entry = gpu_peak(device_name)
    value = entry.tflops(precision) if entry is not None else None
    if value is None:
        return PeakSpec(
            None,
            note=f"no datasheet peak for {device_name!r} ({precision}); MFU left "
            "empty: pass --peak-tflops to set one",
        )
    return PeakSpec(value, DATASHEET, precision)


def device_peak_spec(
    kind: str, device_name: str, user_tflops: float | None = None, precision: str = "fp32"
) -> PeakSpec:
    """The peak for cells of ``precision`` on a measured device: the user's, else the
    datasheet's (CUDA; fp32 cells count at TF32 while cuDNN may use it) or the CPU's calibrated
    one (``membench.measure.calibrate.cpu_peak``)."""
    if kind == "cuda" and precision == "fp32":
        precision = cuda_precision()
    if user_tflops is not None:
        return PeakSpec(user_tflops, USER, precision)
    if kind == "cuda":
        return gpu_peak_spec(device_name, precision)
    return shared_cpu_note(cpu_peak)(precision)


def shared_cpu_note(calibrate):
    """``calibrate`` (a CPU's peak for a precision), watched: a peak calibrated while other
    processes used the CPU is too low, and every MFU held against it too high; its note says
    so (the sweep prints it once)."""

    def watched(precision: str) -> PeakSpec:
        from dataclasses import replace

        from ..stability import OTHERS_THRESHOLD
        from .machine_load import LoadWindow

        window = LoadWindow.start()
        peak = calibrate(precision)
        others = window.stop().cpu_others
        if peak.tflops is None or others is None or others < OTHERS_THRESHOLD:
            return peak
        note = (
            f"the CPU's {precision} peak ({peak.tflops:.3g} TFLOP/s) was calibrated while "
            f"other processes used {others:.0%} of the CPU: it is low, and MFU against it high"
        )
        return replace(peak, note="; ".join(filter(None, [peak.note, note])))

    return watched


def apply_peak(result: CellResult, peak: PeakSpec | None) -> None:
    """Hold ``result`` against ``peak`` (its ``peak_*`` columns, hence its MFU). A step that
    ran faster than the peak shows the peak is not one (a calibration the machine's load
    disturbed, a wrong ``--peak-tflops``): MFU is left empty and ``peak_source`` says why, so
    no row ever claims more than 100 %."""
    if peak is None or peak.tflops is None:
        return
    achieved = result.achieved_tflops
    if achieved is not None and achieved > peak.tflops:
        result.peak_source = (
            f"none: this step ran at {achieved:.3g} TFLOP/s, above the "
            f"{peak.source} peak of {peak.tflops:.3g} ({peak.precision})"
        )
        return
    result.peak_tflops, result.peak_source = peak.tflops, peak.source
    result.peak_precision = peak.precision


def throughput_bound(flops_per_step: float, batch: int, peak_tflops: float) -> float:
    """imgs/s a step could reach if it ran at the device's peak: peak x batch / FLOPs per step.
    An upper bound, never a prediction: no real step runs at peak."""
    return peak_tflops * 1e12 * batch / flops_per_step


def gpu_peaks(name: str) -> dict[str, PeakSpec]:
    """A GPU's datasheet peak for cells of each precision (fp32 cells count at TF32 while
    cuDNN may use it)."""
    return {
        precision: gpu_peak_spec(name, cuda_precision() if precision == "fp32" else precision)
        for precision in PRECISIONS
    }


def resolve_gpu(ref: str) -> tuple[str, PeakSpec]:
    """The GPU a name or a device profile (its ``gpu`` key) stands for, with its datasheet peak
    at the precision an fp32 conv net runs at: the table's name, or the one GPU a partial name
    ('4090') can mean; InputError naming the candidates of an ambiguous one ('H100') and the
    choices of an unknown one. Every command that takes --gpu reads it here."""
    from ..errors import InputError
    from ..profiles import ProfileError, load_profile
    from .peaks import gpu_candidates, known_gpus

    name = ref
    if gpu_peak(ref) is None:
        try:
            name = str(load_profile(ref).settings.get("gpu") or ref)
        except ProfileError:
            candidates = gpu_candidates(ref)
            if len(candidates) > 1:
                raise InputError(
                    f"GPU {ref!r} is ambiguous: it could be {', '.join(candidates)}; name one"
                ) from None
            name = candidates[0] if candidates else ref
    spec = gpu_peak_spec(name, cuda_precision())
    if spec.tflops is None:
        raise InputError(
            f"unknown GPU {ref!r}: neither a GPU of the peak table nor a device "
            f"profile with a gpu key; known GPUs: {', '.join(known_gpus())}"
        )
    entry = gpu_peak(name)
    canonical = next((known for known in known_gpus() if gpu_peak(known) is entry), name)
    return canonical, spec
