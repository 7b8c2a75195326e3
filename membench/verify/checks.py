"""The checks of ``membench verify`` (see ``membench.verify``), one function per check."""

from __future__ import annotations

import math

import torch

from ..runners import Runner, get_runner
from . import (
    COMPILED_RTOL,
    GRADIENT_RTOL,
    LEARN_REQUIRED_DROP,
    LEARN_SCHEDULE_STEPS,
    LEARN_STEPS,
    LOSS_RTOL,
    PRECISION_LOSS_RTOL,
    UPDATE_RTOL,
    CheckResult,
    VerifySetup,
)


def _build(
    method: str,
    setup: VerifySetup,
    *,
    dropout: bool,
    total_steps: int,
    micro_batch: int | None = None,
    **tooling,
) -> Runner:
    """The method's runner for the setup; ``micro_batch``: its own default split unless given;
    ``tooling``: the cell's tooling settings (precision, compile, grads, optimizer_state)."""
    runner_cls = get_runner(method)
    if micro_batch is None and runner_cls.contract.micro_batch:
        micro_batch = runner_cls.default_micro_batch(setup.batch)
    cell = setup.cell(method, micro_batch=micro_batch, **tooling)
    return runner_cls(cell, "cpu", total_steps=total_steps, dropout=dropout)


def uses_batch_statistics(setup: VerifySetup) -> bool:
    """Whether the setup's arch normalises over the batch (BatchNorm): its gradients then depend
    on how the batch is split, so a micro-batched step is not the whole batch's step, by
    design, and the checks that compare the two do not apply."""
    from ..archs import build_arch

    model = build_arch(setup.arch, setup.classes, objective=setup.objective)
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def random_batch(setup: VerifySetup) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and labels, or a token model's random ids and its objective's labels."""
    generator = torch.Generator().manual_seed(setup.seed + 1)
    if setup.seq is not None:
        from ..archs import token_batch

        return token_batch(
            setup.arch, setup.objective, setup.batch, setup.seq, setup.classes, generator
        )
    images = torch.randn(setup.batch, 3, setup.res, setup.res, generator=generator)
    labels = torch.randint(0, setup.classes, (setup.batch,), generator=generator)
    return images, labels


def learnable_batch(setup: VerifySetup) -> tuple[torch.Tensor, torch.Tensor]:
    """Images = a fixed random template per class plus noise: a task any method can learn. For
    a token model, a fixed random sequence per class with a tenth of its tokens replaced at
    random, labelled for its objective (a language model learns the repeated sequences)."""
    generator = torch.Generator().manual_seed(setup.seed + 2)
    if setup.seq is not None:
        from ..archs.hf import token_labels, vocabulary_size

        vocabulary = vocabulary_size(setup.arch)
        templates = torch.randint(0, vocabulary, (setup.classes, setup.seq), generator=generator)
        labels = torch.arange(setup.batch) % setup.classes
        noise = torch.randint(0, vocabulary, (setup.batch, setup.seq), generator=generator)
        replaced = torch.rand(setup.batch, setup.seq, generator=generator) < 0.1
        inputs = torch.where(replaced, noise, templates[labels])
        return inputs, token_labels(setup.arch, setup.objective, inputs, labels, generator)
    templates = torch.randn(setup.classes, 3, setup.res, setup.res, generator=generator)
    labels = torch.arange(setup.batch) % setup.classes
    noise = torch.randn(setup.batch, 3, setup.res, setup.res, generator=generator)
    return 2.0 * templates[labels] + 0.5 * noise, labels


def _gradients(runner: Runner) -> list[torch.Tensor]:
    return [
        p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
        for p in runner.parameters()
    ]


def after_first_step(
    name: str,
    setup: VerifySetup,
    dropout: bool = False,
    micro_batch: int | None = None,
    unclipped: bool = False,
    **tooling,
) -> Runner:
    """A runner built from the setup's seed (dropout off unless asked), after one step on the
    random batch; ``micro_batch`` replaces its default split; ``unclipped`` lifts a layer-local
    runner's gradient clipping, which would hide a wrong scale (both sides clipped to norm 1)."""
    runner = _build(name, setup, dropout=dropout, total_steps=1, micro_batch=micro_batch, **tooling)
    if unclipped:
        runner.clip_norm = math.inf
    runner.step(*random_batch(setup))
    return runner


def _worst(differences) -> float:
    """The largest difference, NaN if any is: Python's ``max`` keeps whichever of a NaN and a
    number comes first, so a NaN after the first parameter used to pass as 0."""
    values = list(differences)
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def compare_gradients(
    check: str, method: str, reference: str, ref: list[torch.Tensor], got: list[torch.Tensor]
) -> CheckResult:
    """``check`` of ``method``: its gradients ``got`` against the ``reference`` method's
    ``ref``, tensor by tensor (shapes, then GRADIENT_RTOL)."""
    if len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got)):
        return CheckResult(
            check, method, False, "parameter shapes differ from the reference", reference
        )
    worst = _worst(
        ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item() for a, b in zip(ref, got)
    )
    return CheckResult(
        check,
        method,
        worst <= GRADIENT_RTOL,
        f"max relative difference {worst:.1e} (tolerance {GRADIENT_RTOL:.0e})",
        reference,
    )


def check_gradients(
    method: str,
    reference: str,
    setup: VerifySetup,
    dropout: bool = False,
    micro_batch: int | None = None,
) -> CheckResult:
    """Same batch, same initial weights: the gradients must match the reference's. Dropout off,
    or (``dropout=True``, for runners that must reproduce the reference's dropout masks, such as
    checkpointing with the RNG state preserved) on; with ``micro_batch``, when this runner
    accumulates them over micro-batches of that size."""
    ref = _gradients(after_first_step(reference, setup, dropout))
    got = _gradients(after_first_step(method, setup, dropout, micro_batch=micro_batch))
    check = (
        "gradients"
        + (" (dropout on)" if dropout else "")
        + (f" (micro-batch {micro_batch})" if micro_batch else "")
    )
    return compare_gradients(check, method, reference, ref, got)


UPDATE_TOOLING = {
    "grads released": {"grads": "released"},
    "optimizer state on host": {"optimizer_state": "host"},
    "both": {"grads": "released", "optimizer_state": "host"},
}


def accepts(runner_cls: type[Runner], setup: VerifySetup, **tooling) -> bool:
    """Whether the runner takes this tooling on the setup's cell (``check_tooling``), as a sweep
    would ask before running it."""
    from ..runners import RunnerConfigError
    from ..schema import Cell

    micro_batch = (
        runner_cls.default_micro_batch(setup.batch) if runner_cls.contract.micro_batch else None
    )
    cell = Cell(
        runner_cls.name,
        setup.arch,
        setup.res,
        setup.batch,
        micro_batch,
        setup.classes,
        seq=setup.seq,
        objective=setup.objective,
        **tooling,
    )
    try:
        runner_cls.check_tooling(cell)
    except RunnerConfigError:
        return False
    return True


def _weights_after(method: str, setup: VerifySetup, steps: int, **tooling) -> list[torch.Tensor]:
    runner = _build(method, setup, dropout=False, total_steps=steps, **tooling)
    for _ in range(steps):
        runner.step(*random_batch(setup))
    return [p.detach().clone() for p in runner.parameters()]


def check_same_updates(method: str, setup: VerifySetup, what: str, steps: int = 2) -> CheckResult:
    """A tool of the update (``UPDATE_TOOLING[what]``: gradients released at their update,
    optimizer state in host memory) changes what memory holds, never the update: the weights'
    change over ``steps`` steps (two, so the second update reads moments the first one kept)
    must match the same method's without it, dropout off."""
    start = [
        p.detach().clone()
        for p in _build(method, setup, dropout=False, total_steps=steps).parameters()
    ]
    ref = _weights_after(method, setup, steps)
    got = _weights_after(method, setup, steps, **UPDATE_TOOLING[what])
    worst = _worst(
        ((r - g).abs().max() / (r - s).abs().max().clamp_min(1e-12)).item()
        for s, r, g in zip(start, ref, got)
    )
    return CheckResult(
        f"updates ({what})",
        method,
        worst <= UPDATE_RTOL,
        f"weight change over {steps} steps: max relative difference {worst:.1e} "
        f"(tolerance {UPDATE_RTOL:.0e})",
        f"{method}, kept on the device",
    )


def _layer_gradients(runner: Runner) -> list[torch.Tensor]:
    return [
        p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
        for params in runner.local_parameters()
        for p in params
    ]


def check_layer_gradients(
    method: str,
    reference: str,
    setup: VerifySetup,
    micro_batch: int | None = None,
    precision: str = "fp32",
) -> CheckResult:
    """Layer-local training (DTG-FF): each layer's own parameters (conv weight and bias, the
    readout's temperature) must get the reference's first-step gradients, dropout off; with
    ``micro_batch``, when this runner splits each layer's batch into chunks of that size; with
    a reduced ``precision``, both under autocast (what a layer hands the next must be what the
    next layer's conv would compute on). Compared before clipping. The classifier head is left
    out: its features may come from before or after the layers' steps."""
    ref = _layer_gradients(after_first_step(reference, setup, unclipped=True, precision=precision))
    got = _layer_gradients(
        after_first_step(
            method, setup, micro_batch=micro_batch, unclipped=True, precision=precision
        )
    )
    check = (
        "layer gradients"
        + (f" (micro-batch {micro_batch})" if micro_batch else "")
        + (f" ({precision})" if precision != "fp32" else "")
    )
    return compare_gradients(check, method, reference, ref, got)


def check_first_step_losses(method: str, reference: str, setup: VerifySetup) -> CheckResult:
    """Same batch and weights: each layer's local loss on the first step must match."""
    losses = {}
    for name in (reference, method):
        layer_losses = after_first_step(name, setup).layer_losses
        if not layer_losses:
            return CheckResult(
                "first-step losses",
                method,
                False,
                f"{name} does not expose layer_losses",
                reference,
            )
        losses[name] = torch.stack([loss.detach() for loss in layer_losses])
    ref, got = losses[reference], losses[method]
    if ref.shape != got.shape:
        return CheckResult(
            "first-step losses",
            method,
            False,
            f"{len(got)} layer losses, reference has {len(ref)}",
            reference,
        )
    worst = ((ref - got).abs() / ref.abs().clamp_min(1e-12)).max().item()
    return CheckResult(
        "first-step losses",
        method,
        worst <= LOSS_RTOL,
        f"{len(ref)} layers, max relative difference {worst:.1e}",
        reference,
    )


def check_learns(
    method: str, setup: VerifySetup, steps: int = LEARN_STEPS, precision: str = "fp32"
) -> CheckResult:
    """Train on one learnable batch; the loss must drop by LEARN_REQUIRED_DROP or more."""
    images, labels = learnable_batch(setup)
    runner = _build(
        method, setup, dropout=True, total_steps=LEARN_SCHEDULE_STEPS, precision=precision
    )
    losses = [float(runner.step(images, labels)) for _ in range(steps)]
    first, last = losses[0], sum(losses[-5:]) / 5
    passed = last <= (1 - LEARN_REQUIRED_DROP) * first and all(map(finite, losses))
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
    return CheckResult(
        f"first-step loss ({precision})",
        method,
        0 < difference <= tolerance,
        f"{got:.5f} against fp32's {reference:.5f}: relative difference "
        f"{difference:.1e} (must be in (0, {tolerance:g}])",
        "fp32",
    )


def check_compiled(method: str, setup: VerifySetup, mode: str = "default") -> CheckResult:
    """Same batch and weights: compiled and eager first steps give the same loss and gradients
    within COMPILED_RTOL. Slow on a CPU (inductor compiles C++), so verify runs it on request."""
    eager_loss, eager = _first_step_loss(method, setup)
    compiled_loss, compiled = _first_step_loss(method, setup, compile=mode)
    worst = _worst(
        [
            abs(compiled_loss - eager_loss) / max(abs(eager_loss), 1e-12),
            *(
                ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item()
                for a, b in zip(_gradients(eager), _gradients(compiled))
            ),
        ]
    )
    return CheckResult(
        f"compiled ({mode})",
        method,
        worst <= COMPILED_RTOL,
        f"loss and gradients: max relative difference {worst:.1e} (tolerance {COMPILED_RTOL:.0e})",
        "eager",
    )


def finite(value: float) -> bool:
    """Whether ``value`` is a number, neither NaN nor infinite."""
    return value == value and abs(value) != float("inf")


def check_layer_isolation(method: str, setup: VerifySetup) -> CheckResult:
    """The arch's layer decomposition keeps gradients apart (docs/archs.md, "The layer-stack
    contract"): walked as the layer-local methods walk it (each next input from the detached
    output), a loss on unit l's output must reach unit l's parameters and no other unit's. A
    block that read a tensor of an earlier unit (a shortcut across a unit boundary, a cached
    map) fails it: that gradient would cross the boundary, in ff-naive's one backward, or be lost in
    ff-pipelined's. Any decomposition: membench's stacks and a plugin's ``LayerStack`` alike."""
    from ..archs import HFTask, LayerStack, build_arch

    torch.manual_seed(setup.seed)
    stack = build_arch(setup.arch, setup.classes, dropout=False, objective=setup.objective)
    if isinstance(stack, HFTask):
        stack = stack.as_layer_stack()
    if not isinstance(stack, LayerStack):
        return CheckResult("layer isolation", method, False, f"{setup.arch} is not a layer stack")
    images, _ = random_batch(setup)  # token ids, for a token model
    units = [list(layer.parameters()) for layer in stack.layers()]
    x, leaks, silent = images, [], []
    for layer in stack.layers():
        z = layer.block(x)
        everything = [p for params in units for p in params]
        grads = torch.autograd.grad(
            z.square().mean(), everything, allow_unused=True, retain_graph=True
        )
        start = 0
        for index, params in enumerate(units):
            reached = any(
                g is not None and bool(g.abs().sum() > 0)
                for g in grads[start : start + len(params)]
            )
            start += len(params)
            if index != layer.index and reached:
                leaks.append(f"{layer.index}->{index}")
            if index == layer.index and params and not reached:
                silent.append(str(index))
        x = layer.next_input(z.detach())
    detail = (
        f"{len(units)} units; the loss of one reaches another's parameters: {', '.join(leaks)}"
        if leaks
        else f"{len(units)} units, each loss reaches its own parameters only"
    )
    if silent:
        detail += f"; no gradient reaches unit(s) {', '.join(silent)}"
    return CheckResult("layer isolation", method, not leaks and not silent, detail)
