"""An analytic model of the peak memory of each family's best configuration against depth, for
conv stacks: the prediction the depth-crossover section sets beside the estimates.

Bytes, per step, derived from what each step keeps alive (docs/depth-crossover.md, "The model",
has the derivation). For layer l of a stack at batch B: ``in_l`` the elements of one sample's
input (3·R² for layer 0), ``s_l`` of its output (C·h_l²), ``nx_l`` of the next layer's input
(after the pool, if one follows; 0 after the last layer); ``a`` the bytes of the autocast dtype
(2 for bf16, 4 for fp32), fp32 tensors 4 bytes. N parameters.

- Checkpointed BP with gradient accumulation over micro-batches of m (``bp-ckpt --micro-batch
  m``, optimizer state on the host, gradients kept: accumulation needs them):
  ``4N (weights) + 4N (gradients) + B·4·in_0 (the batch) + m·max_l [Σ_{0<k≤l} 4·in_k + r_l]``:
  while the backward recomputes layer l, the checkpointed inputs (fp32: the propagation path's
  output) of layers 1..l are held and those after l are already freed; one layer's recomputed
  graph in its backward is ``r_l = (a + c + 4 + 1 + 4)·s_l + 4·nx_l`` (the ReLU output in a,
  LayerNorm's fp32 copy of it c = 4 where a < 4, dropout's fp32 output and mask, one gradient
  of the layer's size; the gradient of its output). The model takes fp32 (a = 4): under CUDA's
  autocast bf16 keeps more, its casts' copies.
- Pipelined DTG-FF in chunks of m, its boundary held once in a, gradients released, optimizer
  state on the host: ``4N + buffers + B·4·in_0 + max_l [B·a·(in_l [l ≥ 1] + nx_l) + m·f_l]``,
  with the chunk's own memory ``f_l = max(forward and backward: a·in_0 [l = 0] + a·s_l + c·s_l
  + 12·s_l + a·s_l [a < 4], propagation after it: a·s_l + c·s_l + 8·s_l + s_l + (4 + a)·nx_l)``
  (the ReLU output z in a, z in fp32 (c = 4 where a < 4: the goodness squares in fp32 under
  autocast) and z² in fp32, their gradients and the cast back; LayerNorm's fp32 input and
  output, dropout's output and mask, the pooled output and its cast). The model takes bf16
  (a = 2). The buffers are the fixed readouts (4·C_l·K·4 bytes per layer) and the classifier's
  Linear over the concatenated features.

The model is not fitted to the estimates: its constants are counts of tensors, so where it
disagrees with an estimate the difference is what it leaves out (the caching allocator's
rounding, small tensors, the exact moment of the peak).
"""

from __future__ import annotations

from dataclasses import dataclass

FP32 = 4


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


def bp_checkpointed_accumulation(
    shape: StackShape, batch: int, micro_batch: int, a: int = FP32
) -> int:
    """Predicted peak of ``bp-ckpt --micro-batch m`` (the module docstring)."""
    static = 2 * FP32 * shape.parameters
    # The backward runs last layer first: while layer l is recomputed, the checkpoints of the
    # layers after it are gone and those up to it are still held.
    worst, held = 0, 0
    for layer, (i, s, nx) in enumerate(zip(shape.inputs, shape.outputs, shape.next_inputs)):
        held += FP32 * i if layer else 0
        worst = max(worst, micro_batch * (held + _bp_layer(a, i, s, nx)))
    return static + batch * FP32 * shape.inputs[0] + worst


def _bp_layer(a: int, i: int, s: int, nx: int) -> int:
    """One layer's recomputed graph in its backward, per sample: what the recompute saves (the
    ReLU output, LayerNorm's fp32 copy of it where a < 4, dropout's output and mask), the
    gradient of the layer's output, and one layer-sized gradient on its way through (the
    backward frees each saved tensor and gradient as it passes it)."""
    cast = FP32 * s if a < FP32 else 0
    return a * s + cast + (FP32 + 1) * s + FP32 * nx + FP32 * s


def ff_pipelined(shape: StackShape, batch: int, micro_batch: int, classes: int, a: int = 2) -> int:
    """Predicted peak of ``ff-pipelined --micro-batch m`` with its boundary held once (the
    module docstring)."""
    buffers = sum(4 * c * classes * FP32 for c in shape.channels)
    classifier = (sum(shape.channels[1:]) + 1) * classes * FP32
    static = FP32 * (shape.parameters + classifier) + buffers
    worst = 0
    for layer, (i, s, nx) in enumerate(zip(shape.inputs, shape.outputs, shape.next_inputs)):
        held = batch * a * ((i if layer else 0) + nx)
        worst = max(worst, held + micro_batch * _ff_chunk(a, i if layer == 0 else 0, s, nx))
    return static + batch * FP32 * shape.inputs[0] + worst


def _ff_chunk(a: int, cast_input: int, s: int, nx: int) -> int:
    """One chunk of one layer, per sample: its forward and backward (the ReLU output z; z in
    fp32 and z² in fp32, since the goodness squares in fp32 under autocast; their gradients and
    the cast back), or the propagation after it (z, LayerNorm's fp32 input and output,
    dropout's output and mask, the pooled output and its cast), whichever is larger."""
    cast = FP32 * s if a < FP32 else 0
    backward = a * cast_input + a * s + cast + FP32 * s + 2 * FP32 * s + (a * s if cast else 0)
    propagate = a * s + cast + 2 * FP32 * s + s + (FP32 + a) * nx
    return max(backward, propagate)


def predicted_peaks(
    arch: str, res: int, batch: int, micro_batch: int, classes: int
) -> dict[str, int]:
    """Both families' predicted peaks for one cell of the depth study: checkpointed BP in fp32
    (under CUDA's autocast bf16 keeps more, its casts' copies), pipelined FF in bf16."""
    shape = stack_shape(arch, res, classes)
    return {
        "bp": bp_checkpointed_accumulation(shape, batch, micro_batch, FP32),
        "ff": ff_pipelined(shape, batch, micro_batch, classes, 2),
    }


def predicted_crossover(
    family_arch: str, res: int, batch: int, micro_batch: int, classes: int, max_depth: int = 4096
) -> int | None:
    """The smallest depth D at which FF's predicted peak is below BP's, for the parametric
    family of ``family_arch`` (its width and pools); None when none up to ``max_depth``."""
    from ..archs import PARAMETRIC_PATTERN

    match = PARAMETRIC_PATTERN.match(family_arch)
    if not match:
        return None
    pools = f"-p{match['pools']}" if match["pools"] is not None else ""

    def ff_below(depth: int) -> bool:
        peaks = predicted_peaks(
            f"vgg-d{depth}-w{match['width']}{pools}", res, batch, micro_batch, classes
        )
        return peaks["ff"] < peaks["bp"]

    # Every depth up to 64, then doubling, and the first bracket that flips bisected: each
    # prediction walks every layer, so a scan of every depth to 4096 would take seconds.
    probes = [*range(1, min(64, max_depth) + 1)]
    while probes[-1] < max_depth:
        probes.append(min(2 * probes[-1], max_depth))
    below = None
    for depth in probes:
        if ff_below(depth):
            below = depth
            break
        above = depth
    if below is None:
        return None
    while below - above > 1 and below > 64:
        middle = (above + below) // 2
        above, below = (above, middle) if ff_below(middle) else (middle, below)
    return below
