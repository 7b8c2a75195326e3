"""One device's per-layer costs of a cell, the schedule model's input (``schedule_model``).

``layer_costs`` runs each piece of a step on its own, at the cell's micro-batch, on one device:
BP's forward of each conv layer (block and propagation path) and its backward (input and weight
gradients), the head's, DTG-FF's local step of each layer on one chunk (forward, readout, loss,
the weight-only backward, the chunk's propagation) and the classifier's step on the whole batch.
``source="flops"`` counts each piece's FLOPs on fake tensors (``FlopCounterMode``: convolutions
and matmuls), which a GPU's peak turns into time; ``source="cpu"`` measures each on the CPU
(the median of a few runs, after one unmeasured). The weights are the runners' own (``bp`` and
``ff-pipelined``, built for the cell), so a piece is exactly what a stage runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from ..archs import conv_stack_spec
from ..measure.flops import step_flops
from ..multidevice.schedule_model import LayerCosts
from ..multidevice.split import conv_costs
from ..runners import get_runner
from ..schema import Cell

SOURCES = ("flops", "cpu")
REPEATS = 5


def _measure(piece: Callable[[], object], source: str, repeats: int) -> float:
    """FLOPs of one run of ``piece``, or its median time in ms over ``repeats`` runs."""
    if source == "flops":
        return float(step_flops(piece))
    piece()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        piece()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _bp_pieces(
    runner, spec, res: int, rows: int, classes: int
) -> tuple[list, list, Callable, Callable]:
    """Forward and backward of each BP layer, and of the head, as pieces."""
    sizes, forward, backward = spec.spatial_sizes(res), [], []
    for layer in runner.model.backbone.layers():
        channels = spec.in_channels if layer.index == 0 else spec.channels[layer.index - 1]
        x = torch.randn(
            rows, channels, sizes[layer.index], sizes[layer.index], requires_grad=layer.index > 0
        )
        state: dict = {}

        def run_forward(layer=layer, x=x, state=state):
            with runner.autocast():
                state["y"] = layer(x)

        def run_backward(state=state, run_forward=run_forward):
            run_forward()  # a fresh graph each time: the timed part is the backward alone
            start = time.perf_counter()
            state["y"].backward(torch.ones_like(state["y"]))
            state["backward_ms"] = (time.perf_counter() - start) * 1e3

        forward.append(run_forward)
        backward.append((run_backward, state))
    last = torch.randn(rows, spec.channels[-1], sizes[-1], sizes[-1], requires_grad=True)
    labels = torch.randint(0, classes, (rows,))

    def head_loss():
        with runner.autocast():
            return F.cross_entropy(runner.model.head(last.mean(dim=(2, 3))), labels)

    return forward, backward, head_loss, lambda: head_loss().backward()


def _ff_pieces(
    runner, spec, res: int, rows: int, batch: int, classes: int
) -> tuple[list, Callable]:
    """Each DTG-FF layer's local step on one chunk, and the classifier's step, as pieces."""
    sizes, local = spec.spatial_sizes(res), []
    labels = torch.randint(0, classes, (rows,))
    for layer in runner.model.backbone.layers():
        channels = spec.in_channels if layer.index == 0 else spec.channels[layer.index - 1]
        x = torch.randn(rows, channels, sizes[layer.index], sizes[layer.index])

        def run(layer=layer, x=x):
            with runner.autocast():
                z, loss = runner.local_loss[layer.index](x, labels)
            (loss * runner.loss_share(rows, batch)).backward()
            with runner.autocast(), torch.no_grad():
                z.mean(dim=(2, 3))
                runner.model.propagate(layer.index, z)

        local.append(run)
    features = torch.randn(batch, sum(spec.channels[1:]))
    all_labels = torch.randint(0, classes, (batch,))
    return local, lambda: runner._classifier_step(features, all_labels)


def layer_costs(
    arch: str,
    res: int,
    batch: int,
    micro_batch: int,
    classes: int = 10,
    precision: str = "fp32",
    source: str = "flops",
    repeats: int = REPEATS,
) -> LayerCosts:
    """The per-layer costs of a cell (the module docstring); ValueError for an unknown source."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; valid: {', '.join(SOURCES)}")
    spec = conv_stack_spec(arch)
    fake = FakeTensorMode() if source == "flops" else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[]), fake:
        cell = Cell("bp", arch, res, batch, classes=classes, precision=precision, seed=0)
        bp = get_runner("bp")(cell, "cpu", total_steps=10)
        ff_cell = dataclasses.replace(cell, method="ff-pipelined", micro_batch=micro_batch)
        ff = get_runner("ff-pipelined")(ff_cell, "cpu", total_steps=10)
        forward, backward, head_forward, head_backward = _bp_pieces(
            bp, spec, res, micro_batch, classes
        )
        local, classifier = _ff_pieces(ff, spec, res, micro_batch, batch, classes)
        forward_costs = [_measure(piece, source, repeats) for piece in forward]
        costs = dict(
            forward=forward_costs,
            backward=[
                _backward(piece, state, cost, source, repeats)
                for (piece, state), cost in zip(backward, forward_costs)
            ],
            local=[_measure(piece, source, repeats) for piece in local],
            head_forward=_measure(head_forward, source, repeats),
            classifier=_measure(classifier, source, repeats),
        )
        head_total = _measure(head_backward, source, repeats)
    return LayerCosts(
        "flops" if source == "flops" else "ms",
        tuple(costs["forward"]),
        tuple(costs["backward"]),
        tuple(costs["local"]),
        costs["head_forward"],
        max(0.0, head_total - costs["head_forward"]),
        costs["classifier"],
        tuple(conv_costs(spec.channels, spec.spatial_sizes(res), spec.in_channels)),
    )


def _backward(
    piece: Callable[[], None], state: dict, forward: float, source: str, repeats: int
) -> float:
    """A layer's backward alone: the FLOPs of forward and backward less the forward's, or the
    median of its own timings (each run builds its graph again, untimed)."""
    if source == "flops":
        return _measure(piece, source, repeats) - forward
    times = []
    for index in range(repeats + 1):
        piece()
        if index:  # the first is not measured
            times.append(state["backward_ms"])
    return statistics.median(times)


__all__ = ["SOURCES", "layer_costs"]
