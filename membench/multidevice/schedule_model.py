"""A schedule model: the step time of a pipeline on N devices, from one device's per-layer costs.

Where a pipeline cannot be measured (N GPUs this machine lacks), its step time follows from what
each stage does per micro-batch and how the schedule orders it (docs/multi-device.md, "The
schedule model", has the assumptions). The costs are per layer and per micro-batch (chunk), in
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

The split into stages is ``membench.multidevice.split``'s, the same the pipeline runners use.
This module imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .split import balanced_stages

GPIPE, ONE_F_ONE_B, FORWARD_ONLY = "gpipe", "1f1b", "ff-forward-only"


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
    return {
        GPIPE: gpipe(forward, backward, chunks),
        ONE_F_ONE_B: one_f_one_b(forward, backward, chunks),
        FORWARD_ONLY: forward_only(local, chunks, costs.classifier),
    }


__all__ = [
    "FORWARD_ONLY",
    "GPIPE",
    "LayerCosts",
    "ONE_F_ONE_B",
    "ScheduleTime",
    "forward_only",
    "gpipe",
    "one_f_one_b",
    "pipeline_times",
    "stage_sums",
]
