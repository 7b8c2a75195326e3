"""The step's stream the allocator replays: every allocation and free the tensor tracker
counts, the convolution calls of each pass, the threads that ran a GEMM; replayed with no
workspace, its requested peak is the tracker's peak to the byte."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from membench.measure.memtrack import cuda_allocated_size
from membench.planning.allocator.conf import parse_alloc_conf
from membench.planning.device_total import START, Workspaces, replay_step
from membench.planning.step_stream import StreamTracker
from membench.planning.workspace import ConvCall


def _tracked_step(tracker: StreamTracker):
    with FakeTensorMode():
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
            torch.nn.Flatten(),
            torch.nn.Linear(8 * 4 * 4, 5),
        )
        images = torch.randn(4, 3, 8, 8)
        tracker.add_existing("parameters", model.parameters())
        tracker.add_existing("activations", [images])
        tracker.reset_peak()
        with tracker, tracker.watch_gradients(model.parameters()):
            model(images).sum().backward()
    return tracker


def test_the_stream_holds_the_passes_of_every_convolution_and_the_gemm_threads():
    tracker = _tracked_step(StreamTracker(rounding=cuda_allocated_size))
    calls = [e for e in tracker.events if isinstance(e, ConvCall)]
    assert [c.kind for c in calls] == [
        "forward",
        "forward",
        "backward_data",  # the second conv's input needs a gradient
        "backward_weight",
        "backward_weight",  # the first conv's input (the batch) needs none: no backward data
    ]
    assert calls[1] == ConvCall("forward", (4, 8, 8, 8), (4, 8, 4, 4), (3, 3), 4)
    assert tracker.gemm_threads == {"forward", "backward"}
    start = tracker.events.index(START)
    assert all(e[0] == "alloc" for e in tracker.events[:start])  # what was live first
    assert start == 7  # three weights, three biases and the batch


def check_requested_peak_is_the_trackers(tracker: StreamTracker) -> None:
    replay = replay_step(tracker.events, parse_alloc_conf(""), Workspaces())
    assert replay.peak_requested == tracker.peak_bytes


def test_replayed_without_workspaces_the_requested_peak_is_the_trackers_to_the_byte():
    tracker = _tracked_step(StreamTracker(rounding=cuda_allocated_size))
    check_requested_peak_is_the_trackers(tracker)
    # mutant: a stream that lost what was live before the steps began
    start = tracker.events.index(START)
    tracker.events = tracker.events[start:]
    with pytest.raises((AssertionError, KeyError)):
        check_requested_peak_is_the_trackers(tracker)


def test_frees_after_the_pass_are_not_part_of_the_step():
    tracker = _tracked_step(StreamTracker())
    before = len(tracker.events)
    tracker._record("free", 123, 512, "activations")  # what gc frees later
    assert len(tracker.events) == before
