"""An analytic model of the peak memory of each family's best configuration against depth, for
conv stacks: the prediction the depth-crossover section sets beside the estimates.

Bytes, per step, derived from what each step keeps alive (docs/design.md, "The depth crossover",
has the derivation). For layer l of a stack at batch B: ``in_l`` the elements of one sample's
input (3·R² for layer 0), ``s_l`` of its output (C·h_l²), ``nx_l`` of the next layer's input
(after the pool, if one follows; 0 after the last layer); ``a`` the bytes of the autocast dtype
(2 for bf16, 4 for fp32), fp32 tensors 4 bytes. N parameters.

- Checkpointed BP with gradient accumulation over micro-batches of m (``bp-ckpt --micro-batch
  m``, optimizer state on the host, gradients kept: accumulation needs them):
  ``4N (weights) + 4N (gradients) + B·4·in_0 (the batch) + m·Σ_l 4·in_l (each layer's
  checkpointed input, fp32: the propagation path's output) + m·max_l r_l``, where one layer's
  recomputed graph and its gradients are ``r_l = a·in_l + (a + 4 + 1 + 4 + 4)·s_l + 8·nx_l``
  (conv input in a; ReLU output in a; LayerNorm's fp32 input, dropout's mask, dropout's fp32
  output; the gradients of the layer output and of the propagation path).
- Pipelined DTG-FF in chunks of m, its boundary held once in a, gradients released, optimizer
  state on the host: ``4N + buffers + B·4·in_0 + max_l [B·a·(in_l [l ≥ 1] + nx_l) + m·f_l]``,
  with the chunk's own memory ``f_l = max(forward and backward: a·in_0 [l = 0] + 5·a·s_l,
  propagation after it: a·s_l + (4 + 4 + 4 + 1)·s_l + (4 + a)·nx_l)`` (ReLU output, z², their
  gradients; LayerNorm's fp32 input and output, dropout's output and mask, the pooled output
  and its cast). The buffers are the fixed readouts (4·C_l·K·4 bytes per layer) and the
  classifier's Linear over the concatenated features.

The model is not fitted to the estimates: its constants are counts of tensors, so where it
disagrees with an estimate the difference is what it leaves out (the caching allocator's
rounding, small tensors, the exact moment of the peak).
"""

from __future__ import annotations

from dataclasses import dataclass

FP32 = 4
FAMILIES = ("bp", "ff")


@dataclass(frozen=True)
class StackShape:
    """Per-layer sizes of a conv stack at one resolution (elements per sample)."""

    inputs: tuple[int, ...]  # in_l
    outputs: tuple[int, ...]  # s_l
    next_inputs: tuple[int, ...]  # nx_l (0 after the last layer)
    parameters: int
    channels: tuple[int, ...]


def stack_shape(arch: str, res: int, classes: int) -> StackShape:
    """The sizes of a conv stack (``vgg8``, ``vgg11``, ``vgg-dD-wW[-pP]``) at ``res``."""
    from ..archs import conv_stack_spec

    spec = conv_stack_spec(arch)
    sizes = spec.spatial_sizes(res)
    channels = spec.channels
    inputs = tuple(c * h * h for c, h in zip((spec.in_channels, *channels[:-1]), sizes))
    outputs = tuple(c * h * h for c, h in zip(channels, sizes))
    pooled = [h // 2 if layer in spec.pool_after else h for layer, h in enumerate(sizes)]
    next_inputs = tuple(c * h * h for c, h in zip(channels[:-1], pooled[:-1])) + (0,)
    head = channels[-1] * classes + classes
    return StackShape(inputs, outputs, next_inputs, spec.conv_parameter_count() + head, channels)


def bp_checkpointed_accumulation(shape: StackShape, batch: int, micro_batch: int,
                                 a: int = 2) -> int:
    """Predicted peak of ``bp-ckpt --micro-batch m`` (the module docstring)."""
    static = 2 * FP32 * shape.parameters
    checkpoints = micro_batch * sum(FP32 * n for n in shape.inputs)
    recompute = max(a * i + (a + 4 + 1 + 4 + 4) * s + 8 * nx
                    for i, s, nx in zip(shape.inputs, shape.outputs, shape.next_inputs))
    return static + batch * FP32 * shape.inputs[0] + checkpoints + micro_batch * recompute


def ff_pipelined(shape: StackShape, batch: int, micro_batch: int, classes: int,
                 a: int = 2) -> int:
    """Predicted peak of ``ff-pipelined --micro-batch m`` with its boundary held once (the
    module docstring)."""
    buffers = sum(4 * c * classes * FP32 for c in shape.channels)
    classifier = (sum(shape.channels[1:]) + 1) * classes * FP32
    static = FP32 * (shape.parameters + classifier) + buffers
    worst = 0
    for layer, (i, s, nx) in enumerate(zip(shape.inputs, shape.outputs, shape.next_inputs)):
        held = batch * a * ((i if layer else 0) + nx)
        backward = (a * i if layer == 0 else 0) + 5 * a * s
        propagate = a * s + (4 + 4 + 4 + 1) * s + (4 + a) * nx
        worst = max(worst, held + micro_batch * max(backward, propagate))
    return static + batch * FP32 * shape.inputs[0] + worst


def predicted_peaks(arch: str, res: int, batch: int, micro_batch: int, classes: int,
                    a: int = 2) -> dict[str, int]:
    """Both families' predicted peaks for one cell of the depth study."""
    shape = stack_shape(arch, res, classes)
    return {"bp": bp_checkpointed_accumulation(shape, batch, micro_batch, a),
            "ff": ff_pipelined(shape, batch, micro_batch, classes, a)}


def predicted_crossover(family_arch: str, res: int, batch: int, micro_batch: int, classes: int,
                        max_depth: int = 4096) -> int | None:
    """The smallest depth D at which FF's predicted peak is below BP's, for the parametric
    family of ``family_arch`` (its width and pools); None when none up to ``max_depth``."""
    from ..archs import PARAMETRIC_PATTERN

    match = PARAMETRIC_PATTERN.match(family_arch)
    if not match:
        return None
    pools = f"-p{match['pools']}" if match["pools"] is not None else ""
    for depth in range(1, max_depth + 1):
        peaks = predicted_peaks(f"vgg-d{depth}-w{match['width']}{pools}", res, batch,
                                micro_batch, classes)
        if peaks["ff"] < peaks["bp"]:
            return depth
    return None
