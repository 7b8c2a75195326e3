"""A schedule model: the step time of a pipeline on N devices, from one device's per-layer costs.

Where a pipeline cannot be measured (N GPUs this machine lacks), its step time follows from what
each stage does per micro-batch and how the schedule orders it (docs/design.md, "Cells on
several devices", has the assumptions). The costs are per layer and per micro-batch (chunk), in
any one unit: milliseconds measured on one device, or FLOPs (÷ a GPU's peak for a time):

- ``forward[l]``, ``backward[l]``: BP's forward of layer l (conv, ReLU, propagation path) and its
  backward (input and weight gradients); the head runs on the last stage;
- ``local[l]``: DTG-FF's local step of layer l on one chunk (forward, readout, loss, the backward
  of its weights only, the chunk's propagation); the classifier runs once per batch at the end.

With stage s doing F_s, B_s (or G_s) per micro-batch and m micro-batches, as a flow shop of
identical jobs (exact for equal stages, the usual approximation otherwise):

- GPipe: every forward, then every backward: ``ΣF + (m−1)·max F + ΣB + (m−1)·max B``;
- 1F1B: the same bubble, one forward and one backward per slot in the steady state:
  ``Σ(F+B) + (m−1)·max(F+B)``;
- FF forward-only: chunks flow forward only, no backward crosses a stage:
  ``ΣG + (m−1)·max G`` + the classifier's step.

Communication is left out (a boundary's transfer is overlapped with the next chunk's compute, or
small beside it), and so are the optimizer steps (elementwise, no FLOPs). A stage's busy time is
m·(F_s + B_s) (m·G_s); the bubble is the idle share of N devices over the step.

``balanced_stages`` is the split the pipeline runners use: contiguous layers, the largest stage's
cost as small as it can be. This module imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

GPIPE, ONE_F_ONE_B, FORWARD_ONLY = "gpipe", "1f1b", "ff-forward-only"


def conv_costs(channels: Sequence[int], sizes: Sequence[int], in_channels: int = 3) -> list[int]:
    """Multiply-accumulates of each 3x3 conv layer per sample: C_in·C_out·9·H·W (what the
    pipeline split balances; FLOPs of forward and of each gradient are proportional to it)."""
    costs, c_in = [], in_channels
    for c_out, size in zip(channels, sizes):
        costs.append(c_in * c_out * 9 * size * size)
        c_in = c_out
    return costs


def _split(prefix: list[float], stages: int, score, allowed) -> list[range]:
    """The contiguous split of len(prefix) - 1 layers into ``stages`` runs minimising ``score``
    (an associative fold over the runs' costs), each run's cost ``allowed``."""
    depth = len(prefix) - 1
    best = [[None] * (depth + 1) for _ in range(stages + 1)]  # (score, start of the last run)
    best[0][0] = (0.0, 0)
    for k in range(1, stages + 1):
        for i in range(k, depth + 1):
            for j in range(k - 1, i):
                cost = prefix[i] - prefix[j]
                if best[k - 1][j] is None or not allowed(cost):
                    continue
                value = score(best[k - 1][j][0], cost)
                if best[k][i] is None or value < best[k][i][0]:
                    best[k][i] = (value, j)
    bounds, end = [], depth
    for k in range(stages, 0, -1):
        start = best[k][end][1]
        bounds.append(range(start, end))
        end = start
    return bounds[::-1]


def balanced_stages(costs: Sequence[float], stages: int) -> list[range]:
    """Split layers 0..L-1 into ``stages`` contiguous, non-empty runs: the largest run's summed
    cost as small as it can be (the pipeline's pace), then the runs as even as that allows (the
    least sum of squares: the other stages' memory and work spread out). ValueError unless
    1 <= stages <= L."""
    if not 1 <= stages <= len(costs):
        raise ValueError(f"cannot split {len(costs)} layer(s) into {stages} stage(s)")
    prefix = [0.0]
    for cost in costs:
        prefix.append(prefix[-1] + cost)
    pace = max(sum(costs[i] for i in run) for run in
               _split(prefix, stages, max, lambda cost: True))
    return _split(prefix, stages, lambda total, cost: total + cost * cost,
                  lambda cost: cost <= pace * (1 + 1e-12))


@dataclass(frozen=True)
class ScheduleTime:
    """One schedule's modelled step: its time and each stage's busy time (the costs' unit)."""

    schedule: str
    step: float
    busy: tuple[float, ...]

    @property
    def bubble(self) -> float:
        """The idle fraction of the N devices over the step."""
        return 1.0 - sum(self.busy) / (len(self.busy) * self.step) if self.step > 0 else 0.0


def _flow(per_chunk: Sequence[float], chunks: int) -> float:
    return sum(per_chunk) + (chunks - 1) * max(per_chunk)


def gpipe(forward: Sequence[float], backward: Sequence[float], chunks: int) -> ScheduleTime:
    """GPipe over stages with these per-micro-batch forward and backward costs."""
    step = _flow(forward, chunks) + _flow(backward, chunks)
    return ScheduleTime(GPIPE, step, tuple(chunks * (f + b) for f, b in zip(forward, backward)))


def one_f_one_b(forward: Sequence[float], backward: Sequence[float], chunks: int) -> ScheduleTime:
    """1F1B over stages with these per-micro-batch forward and backward costs."""
    both = [f + b for f, b in zip(forward, backward)]
    return ScheduleTime(ONE_F_ONE_B, _flow(both, chunks), tuple(chunks * c for c in both))


def forward_only(local: Sequence[float], chunks: int, tail: float = 0.0) -> ScheduleTime:
    """DTG-FF's forward-only pipeline: per-chunk local steps, then ``tail`` (the classifier's
    step, on the last stage)."""
    busy = [chunks * g for g in local]
    busy[-1] += tail
    return ScheduleTime(FORWARD_ONLY, _flow(local, chunks) + tail, tuple(busy))


def stage_sums(per_layer: Sequence[float], stages: Sequence[range]) -> list[float]:
    """Per-layer costs summed over each stage."""
    return [sum(per_layer[i] for i in stage) for stage in stages]


@dataclass(frozen=True)
class LayerCosts:
    """One device's per-layer costs of a cell at its micro-batch (see the module docstring):
    ``unit`` is ``"ms"`` (measured) or ``"flops"``; the BP head's forward and backward, and the
    FF classifier's whole step, once per batch."""

    unit: str
    forward: tuple[float, ...]
    backward: tuple[float, ...]
    local: tuple[float, ...]
    head_forward: float
    head_backward: float
    classifier: float
    split: tuple[float, ...]  # what the pipeline runners balance (conv_costs)


def pipeline_times(costs: LayerCosts, devices: int, chunks: int) -> dict[str, ScheduleTime]:
    """GPipe, 1F1B and FF's forward-only pipeline on ``devices`` stages (the runners' split),
    with ``chunks`` micro-batches, from one device's per-layer costs."""
    stages = balanced_stages(costs.split, devices)
    forward = stage_sums(costs.forward, stages)
    backward = stage_sums(costs.backward, stages)
    forward[-1] += costs.head_forward
    backward[-1] += costs.head_backward
    local = stage_sums(costs.local, stages)
    return {GPIPE: gpipe(forward, backward, chunks),
            ONE_F_ONE_B: one_f_one_b(forward, backward, chunks),
            FORWARD_ONLY: forward_only(local, chunks, costs.classifier)}


__all__ = ["FORWARD_ONLY", "GPIPE", "LayerCosts", "ONE_F_ONE_B", "ScheduleTime",
           "balanced_stages", "conv_costs", "forward_only", "gpipe", "one_f_one_b",
           "pipeline_times", "stage_sums"]
