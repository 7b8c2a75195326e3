"""The checks of ``membench verify`` for runners that span devices: their ranks, launched on the
CPU with gloo (``membench.multidevice.launch``), must leave what one device leaves.

- ``bp-ddp``, ``bp-fsdp``, ``bp-pp`` (``same_gradients_as = "bp"``): after one step on the same
  batch from the same weights (dropout off), every parameter's gradient, wherever it lives (on
  every rank for DDP, gathered from its shards for FSDP2, on its stage for a pipeline), is the
  one ``bp`` leaves; a pipeline under each schedule.
- ``ff-pp`` (``same_layer_gradients_as = "ff-pipelined"``): each layer's own parameters, on the
  rank that owns it, get ``ff-pipelined``'s first-step gradients with the same micro-batch,
  compared before clipping.
- ``learns``: on a small learnable task every rank that reports a loss (a data-parallel rank's
  share, a pipeline's last stage, an ``ff-pp`` rank's own layers) lowers it, as every runner must.
"""

from __future__ import annotations

import math

import torch

from ..multidevice.launch import launch_ranks
from ..runners import get_runner
from . import LEARN_REQUIRED_DROP, LEARN_SCHEDULE_STEPS, LEARN_STEPS, CheckResult, VerifySetup
from .checks import after_first_step, compare_gradients, finite, learnable_batch, random_batch

VERIFY_DEVICES = 2
RANK_TIMEOUT_S = 300.0  # a bound on a broken runner, never a performance threshold


def _full(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A gradient as one plain tensor (a DTensor gathered from its shards), or zeros."""
    if grad is None:
        return torch.zeros(like.shape)
    full = getattr(grad, "full_tensor", None)
    return (full() if full is not None else grad).detach().clone()


def _named_gradients(runner) -> dict[str, torch.Tensor]:
    """This rank's gradients by the name a single-device reference gives them: the ``bp``
    model's parameter names, or ``layer{l}.{k}`` for layer-local parameters."""
    if runner.contract.same_layer_gradients_as:
        return {
            f"layer{l}.{k}": _full(p.grad, p)
            for l, params in enumerate(runner.local_parameters())
            for k, p in enumerate(params)
        }
    stages = runner.stages
    names = {}
    for name, p in runner.model.named_parameters():
        if stages is not None and name.startswith("blocks."):  # a pipeline stage's own numbering
            local, rest = name.split(".", 2)[1:]
            name = f"backbone.blocks.{stages[runner.rank][int(local)]}.{rest}"
        names[name] = _full(p.grad, p)
    return names


def _rank_gradients(rank: int, world: int, task) -> tuple[dict, bool]:
    """One rank: the runner after one step on the setup's batch, dropout off; its gradients."""
    method, setup, options = task
    runner_cls = get_runner(method)
    runner = runner_cls(
        setup.cell(method, devices=world, **options), "cpu", total_steps=1, dropout=False
    )
    runner.clip_norm = math.inf  # layer-local: compared before clipping
    runner.step(*runner.local_batch(*random_batch(setup)))
    return _named_gradients(runner), True


def _reference(runner_cls, setup: VerifySetup, micro_batch: int | None) -> dict:
    reference = runner_cls.contract.same_gradients_as or runner_cls.contract.same_layer_gradients_as
    layer_local = runner_cls.contract.same_layer_gradients_as is not None
    runner = after_first_step(
        reference, setup, micro_batch=micro_batch if layer_local else None, unclipped=layer_local
    )
    if layer_local:
        return {
            f"layer{l}.{k}": _full(p.grad, p)
            for l, params in enumerate(runner.local_parameters())
            for k, p in enumerate(params)
        }
    return {name: _full(p.grad, p) for name, p in runner.model.named_parameters()}


def check_rank_gradients(
    method: str, setup: VerifySetup, schedule: str | None = None, devices: int = VERIFY_DEVICES
) -> CheckResult:
    """``method`` on ``devices`` gloo ranks against its single-device reference (the module
    docstring): every gradient the reference has, from some rank, and the same on every rank
    that holds it."""
    runner_cls = get_runner(method)
    micro_batch = max(1, setup.batch // 4) if runner_cls.contract.micro_batch else None
    options = {
        "micro_batch": micro_batch,
        "schedule": schedule or runner_cls.contract.default_schedule,
    }
    reference = runner_cls.contract.same_gradients_as or runner_cls.contract.same_layer_gradients_as
    check = f"gradients on {devices} ranks" + (f" ({schedule})" if schedule else "")
    ends = launch_ranks(
        _rank_gradients, (method, setup, options), devices, "cpu", timeout_s=RANK_TIMEOUT_S
    )
    failed = [end for end in ends if end.result is None]
    if failed:
        return CheckResult(
            check,
            method,
            False,
            f"rank {failed[0].rank} ended without a result ({failed[0].exit})",
            reference,
        )
    expected = _reference(runner_cls, setup, micro_batch)
    got = {}
    for end in ends:
        for name, grad in end.result.items():
            if name in got and not torch.equal(got[name], grad):
                return CheckResult(check, method, False, f"ranks disagree on {name}", reference)
            got.setdefault(name, grad)
    if set(got) != set(expected):
        missing = sorted(set(expected) - set(got)) or sorted(set(got) - set(expected))
        return CheckResult(
            check,
            method,
            False,
            f"gradients do not cover the reference's: {', '.join(missing[:3])}",
            reference,
        )
    names = sorted(expected)
    return compare_gradients(
        check, method, reference, [expected[n] for n in names], [got[n] for n in names]
    )


def _rank_losses(rank: int, world: int, task) -> tuple[list[float], bool]:
    """One rank: its loss at every step of training on the learnable batch, dropout on."""
    method, setup, micro_batch = task
    cell = setup.cell(method, micro_batch=micro_batch, devices=world)
    runner = get_runner(method)(cell, "cpu", total_steps=LEARN_SCHEDULE_STEPS)
    batch = runner.local_batch(*learnable_batch(setup))
    return [float(runner.step(*batch)) for _ in range(LEARN_STEPS)], True


def check_rank_learns(
    method: str, setup: VerifySetup, devices: int = VERIFY_DEVICES
) -> CheckResult:
    """Every rank that reports a loss lowers it by LEARN_REQUIRED_DROP (the last five steps'
    mean against the first step's), none of them ever non-finite."""
    runner_cls = get_runner(method)
    micro_batch = max(1, setup.batch // 4) if runner_cls.contract.micro_batch else None
    ends = launch_ranks(
        _rank_losses, (method, setup, micro_batch), devices, "cpu", timeout_s=RANK_TIMEOUT_S
    )
    if any(end.result is None for end in ends):
        failed = next(end for end in ends if end.result is None)
        return CheckResult(
            "learns", method, False, f"rank {failed.rank} ended without a result ({failed.exit})"
        )
    curves = {end.rank: end.result for end in ends if any(end.result)}
    drops = {rank: (c[0], sum(c[-5:]) / 5) for rank, c in curves.items()}
    passed = bool(drops) and all(
        last <= (1 - LEARN_REQUIRED_DROP) * first and all(map(finite, curves[rank]))
        for rank, (first, last) in drops.items()
    )
    detail = (
        ", ".join(
            f"rank {rank}: loss {first:.3f} -> {last:.3f}" for rank, (first, last) in drops.items()
        )
        or "no rank reports a loss"
    )
    return CheckResult("learns", method, passed, f"{detail} over {LEARN_STEPS} steps")


def rank_checks(method: str, setup: VerifySetup) -> list[CheckResult]:
    """Every check of a runner that spans devices (each pipeline schedule it takes)."""
    runner_cls = get_runner(method)
    schedules = ("gpipe", "1f1b") if runner_cls.contract.pipeline_schedule else (None,)
    return [
        *(check_rank_gradients(method, setup, schedule) for schedule in schedules),
        check_rank_learns(method, setup),
    ]


__all__ = ["VERIFY_DEVICES", "check_rank_gradients", "rank_checks"]
