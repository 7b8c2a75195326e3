"""Correctness checks for runners (``membench verify``): a runner's numbers are only worth
measuring if it trains what it claims to train.

Three checks, each applicable to any registered runner, third-party ones included:

- ``gradients``: a runner that declares ``same_gradients_as = "bp"`` must leave the same parameter
  gradients as that reference after one step on the same batch from the same weights (dropout off).
- ``first-step losses``: a runner that declares ``same_first_step_losses_as = "ff-naive"`` must
  report the same per-layer local losses (``runner.layer_losses``) on the first step.
- ``learns``: every runner lowers its loss on a small learnable synthetic task within a few dozen
  steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .runners import Runner, get_runner

GRADIENT_RTOL = 1e-4
LOSS_RTOL = 1e-5
LEARN_STEPS = 50
LEARN_REQUIRED_DROP = 0.1  # the last steps' loss must be at least 10% below the first step's
# The recipe's lr (2e-4) is kept; the cosine schedule is stretched so it stays near 2e-4 over the
# short check instead of decaying to 1e-5 within it.
LEARN_SCHEDULE_STEPS = 100 * LEARN_STEPS


@dataclass
class CheckResult:
    check: str
    method: str
    passed: bool
    detail: str
    reference: str = ""


@dataclass(frozen=True)
class VerifySetup:
    """The small cell every check runs on."""

    arch: str = "vgg-d3-w32"
    res: int = 8
    batch: int = 8
    classes: int = 4
    seed: int = 0


def _build(method: str, setup: VerifySetup, *, dropout: bool, total_steps: int) -> Runner:
    runner_cls = get_runner(method)
    micro_batch = runner_cls.default_micro_batch(setup.batch) if runner_cls.uses_micro_batch else None
    return runner_cls(setup.arch, setup.res, setup.classes, "cpu", seed=setup.seed,
                      total_steps=total_steps, micro_batch=micro_batch, dropout=dropout)


def random_batch(setup: VerifySetup) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(setup.seed + 1)
    images = torch.randn(setup.batch, 3, setup.res, setup.res, generator=generator)
    labels = torch.randint(0, setup.classes, (setup.batch,), generator=generator)
    return images, labels


def learnable_batch(setup: VerifySetup) -> tuple[torch.Tensor, torch.Tensor]:
    """Images = a fixed random template per class plus noise: a task any method can learn."""
    generator = torch.Generator().manual_seed(setup.seed + 2)
    templates = torch.randn(setup.classes, 3, setup.res, setup.res, generator=generator)
    labels = torch.arange(setup.batch) % setup.classes
    noise = torch.randn(setup.batch, 3, setup.res, setup.res, generator=generator)
    return 2.0 * templates[labels] + 0.5 * noise, labels


def _gradients(runner: Runner) -> list[torch.Tensor]:
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            for p in runner.parameters()]


def _after_first_step(name: str, setup: VerifySetup) -> Runner:
    """A runner built from the setup's seed, dropout off, after one step on the random batch."""
    runner = _build(name, setup, dropout=False, total_steps=1)
    runner.step(*random_batch(setup))
    return runner


def check_gradients(method: str, reference: str, setup: VerifySetup) -> CheckResult:
    """Same batch, same initial weights, dropout off: the gradients must match the reference's."""
    ref, got = (_gradients(_after_first_step(name, setup)) for name in (reference, method))
    if len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got)):
        return CheckResult("gradients", method, False, "parameter shapes differ from the reference", reference)
    worst = max(((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item() for a, b in zip(ref, got))
    return CheckResult("gradients", method, worst <= GRADIENT_RTOL,
                       f"max relative difference {worst:.1e} (tolerance {GRADIENT_RTOL:.0e})", reference)


def check_first_step_losses(method: str, reference: str, setup: VerifySetup) -> CheckResult:
    """Same batch and weights: each layer's local loss on the first step must match."""
    losses = {}
    for name in (reference, method):
        layer_losses = getattr(_after_first_step(name, setup), "layer_losses", None)
        if not layer_losses:
            return CheckResult("first-step losses", method, False,
                               f"{name} does not expose layer_losses", reference)
        losses[name] = torch.stack([loss.detach() for loss in layer_losses])
    ref, got = losses[reference], losses[method]
    if ref.shape != got.shape:
        return CheckResult("first-step losses", method, False,
                           f"{len(got)} layer losses, reference has {len(ref)}", reference)
    worst = ((ref - got).abs() / ref.abs().clamp_min(1e-12)).max().item()
    return CheckResult("first-step losses", method, worst <= LOSS_RTOL,
                       f"{len(ref)} layers, max relative difference {worst:.1e}", reference)


def check_learns(method: str, setup: VerifySetup, steps: int = LEARN_STEPS) -> CheckResult:
    """Train on one learnable batch; the loss must drop by LEARN_REQUIRED_DROP or more."""
    images, labels = learnable_batch(setup)
    runner = _build(method, setup, dropout=True, total_steps=LEARN_SCHEDULE_STEPS)
    losses = [float(runner.step(images, labels)) for _ in range(steps)]
    first, last = losses[0], sum(losses[-5:]) / 5
    passed = last <= (1 - LEARN_REQUIRED_DROP) * first and all(map(_finite, losses))
    return CheckResult("learns", method, passed,
                       f"loss {first:.3f} -> {last:.3f} over {steps} steps")


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def verify(methods: list[str], setup: VerifySetup = VerifySetup()) -> list[CheckResult]:
    """Run every check that applies to each method; a crashing check is a failed check."""
    results = []
    for method in methods:
        runner_cls = get_runner(method)
        plan = []
        if getattr(runner_cls, "same_gradients_as", None):
            plan.append(lambda m=method, r=runner_cls.same_gradients_as: check_gradients(m, r, setup))
        if getattr(runner_cls, "same_first_step_losses_as", None):
            plan.append(lambda m=method, r=runner_cls.same_first_step_losses_as:
                        check_first_step_losses(m, r, setup))
        plan.append(lambda m=method: check_learns(m, setup))
        for run_check in plan:
            try:
                results.append(run_check())
            except Exception as err:  # a runner that crashes fails its check, it does not stop verify
                results.append(CheckResult("crash", method, False, f"{type(err).__name__}: {err}"))
    return results
