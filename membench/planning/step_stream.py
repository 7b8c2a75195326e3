"""A step's allocation stream, as the estimate's tensor tracker sees it, for the allocator replay.

``StreamTracker`` is the tensor tracker (``measure.memtrack``) that also keeps, in order, every
allocation and free of the tracked pass (what was live before it first, as the pass counts it),
a ``START`` mark where the steps begin, every cuDNN convolution call (a ``workspace.ConvCall``
per pass: forward, backward data, backward weight), and which threads ran a GEMM (the forward's,
and the autograd engine's in the backward pass). ``device_total.replay_step`` turns that into
the allocator's reserve with the library workspaces in place (docs/device-total.md).
"""

from __future__ import annotations

import torch

from ..measure.memtrack import TensorMemoryTracker
from .device_total import START
from .workspace import ConvCall

_aten = torch.ops.aten
CONV_OPS = frozenset({_aten.convolution, _aten.convolution_backward})
# The ATen ops that run on cuBLAS (or cuBLASLt, which shares its workspace) on CUDA.
GEMM_OPS = frozenset(
    {_aten.mm, _aten.addmm, _aten.bmm, _aten.baddbmm, _aten.addbmm, _aten._addmm_activation}
)


class StreamTracker(TensorMemoryTracker):
    """The tensor tracker that keeps the stream the allocator replay needs (module docstring).
    ``events``: ``("alloc", key, bytes)``, ``("free", key, bytes)``, ``START``, ``ConvCall``;
    ``gemm_threads``: the subset of ``workspace.GEMM_THREADS`` that ran a GEMM."""

    def __init__(self, rounding=None):
        super().__init__(rounding=rounding, recorder=self._record)
        self.events: list = []
        self.gemm_threads: set[str] = set()
        self._open = True

    def _record(self, action: str, key: int, nbytes: int, category: str) -> None:
        if self._open and action != "category":
            self.events.append((action, key, nbytes))

    def opened(self) -> None:
        self.events.append(START)

    def closed(self) -> None:
        self._open = False  # what is freed after the pass belongs to no tracked step

    def saw(self, func, args: tuple, kwargs: dict, out) -> None:
        # every op the tracker sees, as a mode of its own or fed by the estimate's fake-tensor
        # mode (memtrack.TrackingFakeTensorMode)
        super().saw(func, args, kwargs, out)
        packet = func.overloadpacket
        if packet in CONV_OPS:
            self.events.extend(conv_calls(packet, args, out))
        elif packet in GEMM_OPS:
            backward = torch._C._current_autograd_node() is not None
            self.gemm_threads.add("backward" if backward else "forward")


def conv_calls(packet, args, out) -> list[ConvCall]:
    """The cuDNN calls of one ``aten.convolution`` (a forward) or ``aten.convolution_backward``
    (backward data and backward weight, as its output mask asks), from their arguments."""
    if packet is _aten.convolution:
        x, weight, transposed = args[0], args[1], bool(args[6])
        return [
            ConvCall(
                "forward",
                tuple(x.shape),
                tuple(out.shape),
                tuple(weight.shape[2:]),
                x.element_size(),
                transposed,
            )
        ]
    grad_output, x, weight, transposed, mask = args[0], args[1], args[2], bool(args[7]), args[10]
    kinds = [kind for kind, wanted in zip(("backward_data", "backward_weight"), mask) if wanted]
    return [
        ConvCall(
            kind,
            tuple(x.shape),
            tuple(grad_output.shape),
            tuple(weight.shape[2:]),
            grad_output.element_size(),
            transposed,
        )
        for kind in kinds
    ]


__all__ = ["CONV_OPS", "GEMM_OPS", "StreamTracker", "conv_calls"]
