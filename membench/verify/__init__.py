"""Correctness checks for runners (``membench verify``): a runner's numbers are only worth
measuring if it trains what it claims to train (docs/runners.md, "Correctness").

``verify()`` and the tolerances are here, one function per check in ``checks``, and the checks
of the runners that span devices, on gloo ranks, in ``across_devices``.

The checks, each applicable to any registered runner, third-party ones included:

- ``gradients``: a runner that declares ``same_gradients_as = "bp"`` must leave the same parameter
  gradients as that reference after one step on the same batch from the same weights (dropout
  off); with ``same_gradients_with_dropout = True`` also with dropout on (checkpointing must
  recompute the same masks); a runner that takes ``--micro-batch`` but does not split by default
  (``bp-ckpt``, ``bp-sac``, ``bp-offload``) also with its batch in micro-batches (accumulation).
- ``updates (grads released)``, ``(optimizer state on host)``, ``(both)``: a runner that
  supports a tool of the update changes only what memory holds: its weights' change over two
  steps matches its own without the tool (dropout off).
- ``layer gradients``: a layer-local runner that declares ``same_layer_gradients_as = "ff-naive"``
  must give each layer's own parameters the reference's first-step gradients (dropout off), also
  with its batch split into micro-batches when it takes ``--micro-batch``, and under each reduced
  precision checked.
- An arch with BatchNorm (the CIFAR ResNets, most torchvision models) normalises each
  micro-batch over itself, so a split batch's gradients are not the whole batch's by design:
  the comparisons of a split batch against the whole one (``bp-accum``'s gradients, the
  micro-batch variants) are left out for it.
- ``layer isolation``: for the same runners, the arch's decomposition keeps gradients apart: a
  loss on unit l's output, walked as the layer-local methods walk it, reaches unit l's
  parameters and no other unit's (any ``LayerStack``, a plugin's included).
- ``first-step losses``: a runner that declares ``same_first_step_losses_as = "ff-naive"`` must
  report the same per-layer local losses (``runner.layer_losses``) on the first step.
- ``learns``: every runner lowers its loss on a small learnable synthetic task within a few dozen
  steps, in fp32 and in every reduced precision.
- ``first-step loss (bf16)``, ``(fp16)``: under autocast the first-step loss differs from fp32's
  (autocast ran) by at most a stated tolerance.
- ``gradients on 2 ranks``: a runner that spans devices (``bp-ddp``, ``bp-fsdp``, ``bp-pp``
  under each schedule, ``ff-pp``) leaves its single-device reference's gradients
  (``membench.verify.across_devices``).
- ``compiled``: on request (slow on a CPU), compiled and eager first steps agree on loss and
  gradients within a stated tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..schema import Cell

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
# Per-parameter AdamW against the whole-model one: the same arithmetic, single-tensor instead of
# foreach kernels, so float-rounding apart (relative to the weights' change).
UPDATE_RTOL = 1e-4


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

    def cell(self, method: str, **settings) -> Cell:
        """The setup as ``method``'s cell, with ``settings`` (a micro-batch, tooling, devices)."""
        return Cell(
            method,
            self.arch,
            self.res,
            self.batch,
            classes=self.classes,
            seed=self.seed,
            **settings,
        )


def verify(
    methods: list[str],
    setup: VerifySetup = VerifySetup(),
    precisions: tuple[str, ...] = PRECISIONS_CHECKED,
    compile_mode: str | None = None,
) -> list[CheckResult]:
    """Run every check that applies to each method, the reduced ``precisions`` against fp32,
    and (``compile_mode``, slow) compiled against eager; a crashing check is a failed check."""
    from ..runners import get_runner
    from .checks import uses_batch_statistics

    results = []
    splits_apply = not uses_batch_statistics(setup)  # builds the arch once, not per method
    for method in methods:
        runner_cls = get_runner(method)
        if runner_cls.contract.spans_devices:  # its checks run on gloo ranks
            from .across_devices import rank_checks

            results += _guarded(lambda m=method: rank_checks(m, setup), method)
            continue
        for run_check in _checks_of(
            method, runner_cls, setup, precisions, compile_mode, splits_apply
        ):
            results += _guarded(lambda check=run_check: [check()], method)
    return results


def _checks_of(
    method: str,
    runner_cls,
    setup: VerifySetup,
    precisions: tuple[str, ...],
    compile_mode: str | None,
    splits_apply: bool,
) -> list:
    """The checks that apply to one single-device method, as calls to run in order;
    ``splits_apply``: whether a micro-batched step can equal the whole batch's (no BatchNorm)."""
    from .checks import (
        UPDATE_TOOLING,
        accepts,
        check_compiled,
        check_first_step_losses,
        check_gradients,
        check_layer_gradients,
        check_layer_isolation,
        check_learns,
        check_precision,
        check_same_updates,
    )

    plan = []
    # A runner that splits the batch by default is compared split against whole.
    splits_by_default = (
        runner_cls.contract.micro_batch and runner_cls.default_micro_batch(setup.batch) is not None
    )
    reference = runner_cls.contract.same_gradients_as
    if reference and (splits_apply or not splits_by_default):
        plan.append(lambda: check_gradients(method, reference, setup))
        if runner_cls.contract.same_gradients_with_dropout:
            plan.append(lambda: check_gradients(method, reference, setup, dropout=True))
        if runner_cls.contract.micro_batch and not splits_by_default and splits_apply:
            plan.append(
                lambda: check_gradients(method, reference, setup, micro_batch=setup.batch // 2)
            )
    for what, tooling in UPDATE_TOOLING.items():
        if accepts(runner_cls, setup, **tooling):
            plan.append(lambda w=what: check_same_updates(method, setup, w))
    layer_reference = runner_cls.contract.same_layer_gradients_as
    if layer_reference:
        plan.append(lambda: check_layer_isolation(method, setup))
        plan.append(lambda: check_layer_gradients(method, layer_reference, setup))
        if runner_cls.contract.micro_batch and splits_apply:
            plan.append(
                lambda: check_layer_gradients(
                    method, layer_reference, setup, micro_batch=setup.batch // 2
                )
            )
    loss_reference = runner_cls.contract.same_first_step_losses_as
    if loss_reference:
        plan.append(lambda: check_first_step_losses(method, loss_reference, setup))
    plan.append(lambda: check_learns(method, setup))
    for precision in precisions:
        if layer_reference:
            plan.append(
                lambda p=precision: check_layer_gradients(
                    method, layer_reference, setup, precision=p
                )
            )
        plan.append(lambda p=precision: check_precision(method, p, setup))
        plan.append(lambda p=precision: check_learns(method, setup, precision=p))
    if compile_mode is not None:
        plan.append(lambda: check_compiled(method, setup, compile_mode))
    return plan


def _guarded(run_checks, method: str) -> list[CheckResult]:
    """``run_checks()``, or one failed check if it crashes."""
    try:
        return run_checks()
    except Exception as err:
        return [CheckResult("crash", method, False, f"{type(err).__name__}: {err}")]
