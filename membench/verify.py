"""Correctness checks for runners (``membench verify``): a runner's numbers are only worth
measuring if it trains what it claims to train.

The checks, each applicable to any registered runner, third-party ones included:

- ``gradients``: a runner that declares ``same_gradients_as = "bp"`` must leave the same parameter
  gradients as that reference after one step on the same batch from the same weights (dropout
  off); with ``same_gradients_with_dropout = True`` also with dropout on (checkpointing must
  recompute the same masks).
- ``layer gradients``: a layer-local runner that declares ``same_layer_gradients_as = "ff-naive"``
  must give each layer's own parameters the reference's first-step gradients (dropout off), also
  with its batch split into micro-batches when it takes ``--micro-batch``.
- ``first-step losses``: a runner that declares ``same_first_step_losses_as = "ff-naive"`` must
  report the same per-layer local losses (``runner.layer_losses``) on the first step.
- ``learns``: every runner lowers its loss on a small learnable synthetic task within a few dozen
  steps, in fp32 and in every reduced precision.
- ``first-step loss (bf16)``, ``(fp16)``: under autocast the first-step loss differs from fp32's
  (autocast ran) by at most a stated tolerance.
- ``compiled``: on request (slow on a CPU), compiled and eager first steps agree on loss and
  gradients within a stated tolerance.
"""

from __future__ import annotations

import math
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
# A first-step loss in reduced precision must differ from fp32's (else autocast did nothing) by
# no more than this, relative: bf16 keeps 8 bits of mantissa, fp16 11.
PRECISION_LOSS_RTOL = {"bf16": 5e-2, "fp16": 1e-2}
PRECISIONS_CHECKED = tuple(PRECISION_LOSS_RTOL)
# Compiled against eager: the same math, reordered (fused kernels, other reductions).
COMPILED_RTOL = 1e-3


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


def _build(method: str, setup: VerifySetup, *, dropout: bool, total_steps: int,
           precision: str = "fp32", compile: str = "none") -> Runner:
    runner_cls = get_runner(method)
    micro_batch = runner_cls.default_micro_batch(setup.batch) if runner_cls.uses_micro_batch else None
    return runner_cls(setup.arch, setup.res, setup.classes, "cpu", seed=setup.seed,
                      total_steps=total_steps, micro_batch=micro_batch, dropout=dropout,
                      precision=precision, compile=compile)


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


def _after_first_step(name: str, setup: VerifySetup, dropout: bool = False,
                      micro_batch: int | None = None, unclipped: bool = False) -> Runner:
    """A runner built from the setup's seed (dropout off unless asked), after one step on the
    random batch; ``micro_batch`` replaces its default split; ``unclipped`` lifts a layer-local
    runner's gradient clipping, which would hide a wrong scale (both sides clipped to norm 1)."""
    runner = _build(name, setup, dropout=dropout, total_steps=1)
    if micro_batch is not None:
        runner.micro_batch = micro_batch
    if unclipped:
        runner.clip_norm = math.inf
    runner.step(*random_batch(setup))
    return runner


def _compare_gradients(check: str, method: str, reference: str, ref: list[torch.Tensor],
                       got: list[torch.Tensor]) -> CheckResult:
    if len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got)):
        return CheckResult(check, method, False, "parameter shapes differ from the reference", reference)
    worst = max(((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item() for a, b in zip(ref, got))
    return CheckResult(check, method, worst <= GRADIENT_RTOL,
                       f"max relative difference {worst:.1e} (tolerance {GRADIENT_RTOL:.0e})", reference)


def check_gradients(method: str, reference: str, setup: VerifySetup,
                    dropout: bool = False) -> CheckResult:
    """Same batch, same initial weights: the gradients must match the reference's. Dropout off,
    or (``dropout=True``, for runners that must reproduce the reference's dropout masks, such as
    checkpointing with the RNG state preserved) on."""
    ref, got = (_gradients(_after_first_step(name, setup, dropout)) for name in (reference, method))
    check = "gradients (dropout on)" if dropout else "gradients"
    return _compare_gradients(check, method, reference, ref, got)


def _layer_gradients(runner: Runner) -> list[torch.Tensor]:
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            for params in runner.local_parameters() for p in params]


def check_layer_gradients(method: str, reference: str, setup: VerifySetup,
                          micro_batch: int | None = None) -> CheckResult:
    """Layer-local training (DTG-FF): each layer's own parameters (conv weight and bias, the
    readout's temperature) must get the reference's first-step gradients, dropout off; with
    ``micro_batch``, when this runner splits each layer's batch into chunks of that size.
    Compared before clipping. The classifier head is left out: its features may come from before
    or after the layers' steps."""
    ref = _layer_gradients(_after_first_step(reference, setup, unclipped=True))
    got = _layer_gradients(_after_first_step(method, setup, micro_batch=micro_batch, unclipped=True))
    check = "layer gradients" + (f" (micro-batch {micro_batch})" if micro_batch else "")
    return _compare_gradients(check, method, reference, ref, got)


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


def check_learns(method: str, setup: VerifySetup, steps: int = LEARN_STEPS,
                 precision: str = "fp32") -> CheckResult:
    """Train on one learnable batch; the loss must drop by LEARN_REQUIRED_DROP or more."""
    images, labels = learnable_batch(setup)
    runner = _build(method, setup, dropout=True, total_steps=LEARN_SCHEDULE_STEPS,
                    precision=precision)
    losses = [float(runner.step(images, labels)) for _ in range(steps)]
    first, last = losses[0], sum(losses[-5:]) / 5
    passed = last <= (1 - LEARN_REQUIRED_DROP) * first and all(map(_finite, losses))
    check = "learns" if precision == "fp32" else f"learns ({precision})"
    return CheckResult(check, method, passed, f"loss {first:.3f} -> {last:.3f} over {steps} steps")


def _first_step_loss(method: str, setup: VerifySetup, **options) -> tuple[float, Runner]:
    runner = _build(method, setup, dropout=False, total_steps=1, **options)
    return float(runner.step(*random_batch(setup))), runner


def check_precision(method: str, precision: str, setup: VerifySetup) -> CheckResult:
    """Same batch and weights: the first-step loss under ``precision`` autocast must differ from
    fp32's (autocast really ran) by at most PRECISION_LOSS_RTOL, relative."""
    reference, _ = _first_step_loss(method, setup)
    got, _ = _first_step_loss(method, setup, precision=precision)
    difference = abs(got - reference) / max(abs(reference), 1e-12)
    tolerance = PRECISION_LOSS_RTOL[precision]
    return CheckResult(f"first-step loss ({precision})", method, 0 < difference <= tolerance,
                       f"{got:.5f} against fp32's {reference:.5f}: relative difference "
                       f"{difference:.1e} (must be in (0, {tolerance:g}])", "fp32")


def check_compiled(method: str, setup: VerifySetup, mode: str = "default") -> CheckResult:
    """Same batch and weights: compiled and eager first steps give the same loss and gradients
    within COMPILED_RTOL. Slow on a CPU (inductor compiles C++), so verify runs it on request."""
    eager_loss, eager = _first_step_loss(method, setup)
    compiled_loss, compiled = _first_step_loss(method, setup, compile=mode)
    worst = abs(compiled_loss - eager_loss) / max(abs(eager_loss), 1e-12)
    for a, b in zip(_gradients(eager), _gradients(compiled)):
        worst = max(worst, ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item())
    return CheckResult(f"compiled ({mode})", method, worst <= COMPILED_RTOL,
                       f"loss and gradients: max relative difference {worst:.1e} (tolerance "
                       f"{COMPILED_RTOL:.0e})", "eager")


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def verify(methods: list[str], setup: VerifySetup = VerifySetup(),
           precisions: tuple[str, ...] = PRECISIONS_CHECKED,
           compile_mode: str | None = None) -> list[CheckResult]:
    """Run every check that applies to each method, the reduced ``precisions`` against fp32,
    and (``compile_mode``, slow) compiled against eager; a crashing check is a failed check."""
    results = []
    for method in methods:
        runner_cls = get_runner(method)
        plan = []
        if getattr(runner_cls, "same_gradients_as", None):
            plan.append(lambda m=method, r=runner_cls.same_gradients_as: check_gradients(m, r, setup))
            if getattr(runner_cls, "same_gradients_with_dropout", False):
                plan.append(lambda m=method, r=runner_cls.same_gradients_as:
                            check_gradients(m, r, setup, dropout=True))
        if getattr(runner_cls, "same_layer_gradients_as", None):
            reference = runner_cls.same_layer_gradients_as
            plan.append(lambda m=method, r=reference: check_layer_gradients(m, r, setup))
            if runner_cls.uses_micro_batch:
                plan.append(lambda m=method, r=reference:
                            check_layer_gradients(m, r, setup, micro_batch=setup.batch // 2))
        if getattr(runner_cls, "same_first_step_losses_as", None):
            plan.append(lambda m=method, r=runner_cls.same_first_step_losses_as:
                        check_first_step_losses(m, r, setup))
        plan.append(lambda m=method: check_learns(m, setup))
        for precision in precisions:
            plan.append(lambda m=method, p=precision: check_precision(m, p, setup))
            plan.append(lambda m=method, p=precision: check_learns(m, setup, precision=p))
        if compile_mode is not None:
            plan.append(lambda m=method: check_compiled(m, setup, compile_mode))
        for run_check in plan:
            try:
                results.append(run_check())
            except Exception as err:  # a runner that crashes fails its check, it does not stop verify
                results.append(CheckResult("crash", method, False, f"{type(err).__name__}: {err}"))
    return results
