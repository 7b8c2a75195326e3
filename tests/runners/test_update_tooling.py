"""The update's tooling (gradients released at their update, optimizer state in host memory),
BP's tools combined with gradient accumulation, and FF's boundary held once: each changes what
memory holds and nothing else (docs/runners.md, "Standard tooling"). Each verify check is shown
failing on a small mutation."""

from __future__ import annotations

import contextlib

import pytest
import torch

from membench.config import ConfigError, expand_grid
from membench.measure.devices import CpuDevice
from membench.measure.protocol import run_cell
from membench.runners import ff, optim
from membench.schema import Cell
from membench.verify import VerifySetup
from membench.verify.checks import check_gradients, check_layer_gradients, check_same_updates

SETUP = VerifySetup(arch="vgg-d3-w8", res=8, batch=4, classes=4)


def tracked(method: str, micro_batch: int | None = None, **tooling):
    cell = Cell(method, "vgg-d3-w16", 16, 8, micro_batch, warmup=1, steps=1, **tooling)
    result = run_cell(cell, CpuDevice(), count_flops=False)
    assert result.status == "ok", result.error
    return result


@pytest.mark.parametrize("method", ["bp", "bp-ckpt", "ff-pipelined"])
@pytest.mark.parametrize("what", ["grads released", "optimizer state on host", "both"])
def test_the_update_tools_change_no_update(method, what):
    result = check_same_updates(method, SETUP, what)
    assert result.passed, result.detail


def test_the_update_check_fails_when_host_state_is_not_copied_back(monkeypatch):
    def forgetful(self):  # the mutation: the step's new moments never reach the host copies
        with contextlib.ExitStack():
            for state, key, _ in self._moments():
                state[key] = state[key].clone()
            yield
            for state, key, _ in self._moments():
                state[key] = torch.zeros_like(state[key])

    monkeypatch.setattr(optim.HostState, "on_device", contextlib.contextmanager(forgetful))
    assert not check_same_updates("bp", SETUP, "optimizer state on host").passed
    assert not check_same_updates("ff-pipelined", SETUP, "optimizer state on host").passed


def test_the_update_check_fails_when_released_gradients_are_never_applied(monkeypatch):
    monkeypatch.setattr(
        optim.PerParameterAdamW, "in_backward", lambda self: contextlib.nullcontext()
    )
    assert not check_same_updates("bp", SETUP, "grads released").passed
    # FF: the mutation frees a layer's gradients before its step instead of after it.
    original = ff._DTGFFRunner._step

    def released_too_early(self, optimizer):
        if self.release_grads:
            optimizer.zero_grad(set_to_none=True)
        original(self, optimizer)

    monkeypatch.setattr(ff._DTGFFRunner, "_step", released_too_early)
    assert not check_same_updates("ff-pipelined", SETUP, "grads released").passed


def test_released_gradients_and_host_state_leave_the_device():
    plain, released = tracked("ff-pipelined"), tracked("ff-pipelined", grads="released")
    host = tracked("ff-pipelined", optimizer_state="host")
    assert released.breakdown.gradients < plain.breakdown.gradients
    assert released.peak_allocated_bytes < plain.peak_allocated_bytes
    # AdamW's two moments per trained parameter live on the host; the device keeps step counts.
    moments = plain.breakdown.optimizer_state - host.breakdown.optimizer_state
    assert host.offloaded_optimizer_bytes == moments > 0
    assert host.peak_allocated_bytes == plain.peak_allocated_bytes - moments
    assert plain.offloaded_optimizer_bytes is None
    bp, bp_host = tracked("bp"), tracked("bp", grads="released", optimizer_state="host")
    assert bp_host.breakdown.gradients == 0 and bp_host.offloaded_optimizer_bytes > 0
    assert bp_host.peak_allocated_bytes < bp.peak_allocated_bytes


def test_checkpointing_and_offloading_take_micro_batches_as_accumulation():
    for method in ("bp-ckpt", "bp-sac", "bp-offload"):
        assert check_gradients(method, "bp", SETUP, micro_batch=2).passed
    assert tracked("bp-ckpt", 2).peak_allocated_bytes < tracked("bp-ckpt").peak_allocated_bytes
    assert tracked("bp-ckpt", 2).peak_allocated_bytes < tracked("bp-accum", 2).peak_allocated_bytes
    [cell] = expand_grid(method="bp-ckpt", arch="vgg8", res=32, batch=64)
    assert cell.micro_batch is None and cell.cell_id == "bp-ckpt_vgg8_r32_b64_k10"  # ids hold


def _propagate_after_the_step(monkeypatch) -> None:
    """The mutation: the schedule before the boundary was held once, every chunk's output kept
    until the layer's step and only then propagated."""
    waiting = []

    def train_chunk(self, layer, x, labels, share, boundary, start):
        with self.autocast():
            z, loss = self.local_loss[layer.index](x, labels)
        loss = loss * share
        self.scaler.scale(loss).backward()
        waiting.append((boundary, z.detach(), start))
        return loss.detach()

    clip_and_step = ff.FFPipelinedRunner._clip_and_step

    def clip_step_then_propagate(self, index):
        clip_and_step(self, index)
        while waiting:
            boundary, z, start = waiting.pop(0)
            boundary.add(z, start)
            del z

    monkeypatch.setattr(ff.FFPipelinedRunner, "train_chunk", train_chunk)
    monkeypatch.setattr(ff.FFPipelinedRunner, "_clip_and_step", clip_step_then_propagate)


def test_the_micro_batched_boundary_is_held_once(monkeypatch):
    held_once = tracked("ff-pipelined", 2).peak_allocated_bytes
    _propagate_after_the_step(monkeypatch)
    held_twice = tracked("ff-pipelined", 2).peak_allocated_bytes
    # The peak is in layer 1's last chunk (vgg-d3-w16 pools after layer 1). Held twice, the
    # other three chunks' outputs wait there (3/4 of its 8 x 16 x 16 x 16 fp32 output); held
    # once, what waits is the next input (pooled: 1/4 of it) and the classifier feature.
    z_bytes, feature_bytes = 8 * 16 * 16 * 16 * 4, 8 * 16 * 4
    assert held_twice - held_once == 3 * z_bytes // 4 - z_bytes // 4 - feature_bytes


def test_the_bf16_boundary_check_fails_when_the_boundary_changes_its_values(monkeypatch):
    assert check_layer_gradients("ff-pipelined", "ff-naive", SETUP, precision="bf16").passed
    monkeypatch.setitem(ff.AUTOCAST_DTYPES, "bf16", torch.float16)  # the mutation: held in fp16
    monkeypatch.setattr(
        ff.FFPipelinedRunner, "autocast", lambda self: torch.autocast("cpu", dtype=torch.bfloat16)
    )
    assert not check_layer_gradients("ff-pipelined", "ff-naive", SETUP, precision="bf16").passed


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        (dict(method="bp-accum", grads="released"), "cannot release them"),
        (dict(method="bp-ckpt", micro_batch=4, grads="released"), "cannot release them"),
        (dict(method="bp", precision="fp16", optimizer_state="host"), "use bf16"),
    ],
)
def test_tooling_a_runner_cannot_honour_is_refused_in_one_line(settings, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        expand_grid(arch="vgg-d3-w8", res=8, batch=8, **settings)
    assert "\n" not in str(err.value)


def test_a_runner_that_does_not_say_it_supports_the_tooling_is_refused():
    from membench.runners.base import Runner, RunnerConfigError

    class Plain(Runner):
        name = "plain"

    with pytest.raises(RunnerConfigError, match="cannot keep its optimizer state"):
        Plain.check_tooling(Cell("plain", optimizer_state="host"))
