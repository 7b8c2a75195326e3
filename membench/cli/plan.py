"""``membench fit``: the largest batch of each method that fits a device budget, by estimate."""

from __future__ import annotations

import typer

from typing import TYPE_CHECKING

from ..config import SETTING_BY_KEY
from ..runners import available_methods, get_runner
from ..schema import ESTIMATE_KINDS
from ..settings import ConfigError
from ..units import format_gib
from .common import fail, reports_input_errors
from .options import setting_options

if TYPE_CHECKING:
    from ..measure.fit import FitResult

# fit plans one arch at one resolution: the paper's ImageNet-sized cell unless told otherwise.
FIT_DEFAULTS = {"arch": "vgg11", "res": 224, "method": "every method that can run the arch"}


def describe_fit(fit: FitResult, peak_tflops: float | None = None) -> str:
    """One table line: method, largest batch (and micro-batch), its peak, with ``peak_tflops``
    its imgs/s bound, and the next batch's peak."""
    if fit.batch is None:
        batch = "none"
    elif fit.micro_batch is not None:
        batch = f"{fit.batch} (micro {fit.micro_batch})"
    else:
        batch = str(fit.batch)
    if fit.capped:
        beyond = "--max-batch reached; the limit may be higher"
    else:
        beyond = f"batch {fit.next_batch}: {format_gib(fit.next_peak_bytes)}"
    bound = ""
    if peak_tflops is not None:
        from ..measure.fit import fit_cell
        from ..measure.flops import throughput_bound
        from ..measure.protocol import count_step_flops

        imgs = None if fit.batch is None else throughput_bound(
            count_step_flops(fit_cell(fit)), fit.batch, peak_tflops)
        bound = f" {'-' if imgs is None else f'{imgs:,.0f}':>13s}"
    return f"{fit.method:14s} {batch:>18s} {format_gib(fit.peak_bytes):>12s}{bound}   {beyond}"


def _one(settings: dict, key: str):
    """A fit setting's value: the given one read by its setting's parser, else fit's default."""
    s = SETTING_BY_KEY[key]
    if key not in settings:
        return FIT_DEFAULTS.get(key, s.default)
    return s.parse(settings[key], s.option)


@reports_input_errors
@setting_options("fit", only=("arch", "res", "method", "micro_batch", "classes", "device_mem",
                              "seed"), defaults=FIT_DEFAULTS)
def fit(
    max_batch: int = typer.Option(4096, "--max-batch", help="Largest batch to consider."),
    device_kind: str = typer.Option(
        "cuda", "--device-kind", help="cuda (allocator rounding, CUDA kernels) or cpu."
    ),
    gpu: str = typer.Option(
        None, "--gpu", help="A GPU or device profile (laptop-8gb): also print each largest "
        "batch's imgs/s bound at that GPU's datasheet peak."),
    settings: dict = None,
) -> None:
    """Print, per method, the largest batch whose estimated peak memory fits --device-mem."""
    if "device_mem" not in settings:
        fail("fit needs --device-mem, the budget to fit, e.g. --device-mem 8GiB")
    arch, res, budget = _one(settings, "arch"), _one(settings, "res"), _one(settings, "device_mem")
    classes, seed, micro_batch = (_one(settings, key) for key in ("classes", "seed", "micro_batch"))
    from ..measure.fit import FitError, check_fit_input, fit_batch
    from ..measure.flops import resolve_gpu

    peak = resolve_gpu(gpu) if gpu is not None else None
    if device_kind not in ESTIMATE_KINDS:
        fail(f"unknown --device-kind {device_kind!r}; valid: {', '.join(ESTIMATE_KINDS)}")
    methods = (list(SETTING_BY_KEY["method"].parse_axis(settings["method"], "--method"))
               if "method" in settings else _methods_for(arch))
    if not methods:
        raise ConfigError("--method needs at least one value")
    if micro_batch is not None and not any(_splits(m) for m in methods):
        fail("--micro-batch applies only to methods that split the batch (bp-accum, ff-pipelined)")
    for name in methods:  # every input error before the first (slow) estimate
        check_fit_input(name, arch, res, budget, classes, device_kind, max_batch,
                        micro_batch if _splits(name) else None)

    typer.echo(
        f"membench fit: {arch} at {res}x{res}, K={classes}, budget {budget / 2**30:.3f} GiB "
        f"({device_kind} estimate, max batch {max_batch})"
    )
    if peak is not None:
        typer.echo(f"imgs/s bound: {peak[0]} at {peak[1].tflops:g} TFLOP/s ({peak[1].precision}), "
                   "peak x batch / FLOPs per step; no real step reaches it")
    typer.echo(f"{'method':14s} {'largest batch':>18s} {'peak':>12s}"
               + (f" {'imgs/s bound':>13s}" if peak is not None else "") + "   next batch")
    for name in methods:
        try:
            result = fit_batch(
                name, arch, res, budget, classes=classes, device_kind=device_kind,
                max_batch=max_batch, micro_batch=micro_batch if _splits(name) else None, seed=seed,
            )
        except FitError as err:
            typer.echo(f"{name:14s} {'error':>18s}   {err}")
            continue
        typer.echo(describe_fit(result, None if peak is None else peak[1].tflops))


def _splits(method: str) -> bool:
    try:
        return get_runner(method).uses_micro_batch
    except Exception:  # unknown names are reported by fit_batch with the valid choices
        return False


def _methods_for(arch: str) -> list[str]:
    """Every registered method that accepts ``arch`` (torchvision models exclude layer-wise ones)."""
    from ..runners import RunnerConfigError

    methods = []
    for name in available_methods():
        try:
            get_runner(name).check_cell(arch, 32, 2, None)
        except RunnerConfigError:
            continue
        methods.append(name)
    return methods
