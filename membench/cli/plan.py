"""``membench fit`` (the largest batch of each method that fits a device budget) and ``membench
plan`` (the best configuration of each family for one cell on one card), by estimate."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from ..config import SETTING_BY_KEY
from ..runners import available_methods, get_runner
from ..schema import ESTIMATE_KINDS
from ..settings import ConfigError
from ..units import format_gib
from ..validate import arch_at, axis, option_applies
from .common import fail, reports_input_errors
from .display import tooling_parts
from .options import setting_options

if TYPE_CHECKING:
    from ..planning.fit import FitResult

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
        from ..measure.flops import throughput_bound
        from ..measure.protocol import count_step_flops
        from ..planning.fit import fit_cell

        imgs = (
            None
            if fit.batch is None
            else throughput_bound(count_step_flops(fit_cell(fit)), fit.batch, peak_tflops)
        )
        bound = f" {'-' if imgs is None else f'{imgs:,.0f}':>13s}"
    return f"{fit.method:14s} {batch:>18s} {format_gib(fit.peak_bytes):>12s}{bound}   {beyond}"


def _one(settings: dict, key: str):
    """A fit setting's value: the given one read by its setting's parser, else fit's default."""
    s = SETTING_BY_KEY[key]
    if key not in settings:
        return FIT_DEFAULTS.get(key, s.default)
    return s.parse(settings[key], s.option)


@reports_input_errors
@setting_options(
    "fit",
    only=("arch", "res", "method", "micro_batch", "classes", "device_mem", "seed"),
    defaults=FIT_DEFAULTS,
)
def fit(
    max_batch: int = typer.Option(4096, "--max-batch", help="Largest batch to consider."),
    device_kind: str = typer.Option(
        "cuda", "--device-kind", help="cuda (allocator rounding, CUDA kernels) or cpu."
    ),
    gpu: str = typer.Option(
        None,
        "--gpu",
        help="A GPU or device profile (laptop-8gb): also print each largest "
        "batch's imgs/s bound at that GPU's datasheet peak.",
    ),
    settings: dict = None,
) -> None:
    """Print, per method, the largest batch whose estimated peak memory fits --device-mem."""
    if "device_mem" not in settings:
        fail("fit needs --device-mem, the budget to fit, e.g. --device-mem 8GiB")
    arch, res, budget = _one(settings, "arch"), _one(settings, "res"), _one(settings, "device_mem")
    classes, seed, micro_batch = (_one(settings, key) for key in ("classes", "seed", "micro_batch"))
    from ..measure.flops import resolve_gpu
    from ..planning.fit import FitError, check_fit_input, fit_batch

    peak = resolve_gpu(gpu) if gpu is not None else None
    if device_kind not in ESTIMATE_KINDS:
        fail(f"unknown --device-kind {device_kind!r}; valid: {', '.join(ESTIMATE_KINDS)}")
    methods = (
        list(SETTING_BY_KEY["method"].parse_axis(settings["method"], "--method"))
        if "method" in settings
        else _methods_for(arch)
    )
    if not methods:
        raise ConfigError("--method needs at least one value")
    if micro_batch is not None:  # refused as a sweep refuses it where no method takes it
        option_applies({"micro_batch": (micro_batch,)}, {m: _runner(m) for m in methods})
    for name in methods:  # every input error before the first (slow) estimate
        check_fit_input(
            name,
            arch,
            res,
            budget,
            classes,
            device_kind,
            max_batch,
            micro_batch if _splits(name) else None,
        )

    typer.echo(
        f"membench fit: {arch} at {res}x{res}, K={classes}, budget {format_gib(budget)} "
        f"({device_kind} estimate, max batch {max_batch})"
    )
    if peak is not None:
        typer.echo(
            f"imgs/s bound: {peak[0]} at {peak[1].tflops:g} TFLOP/s ({peak[1].precision}), "
            "peak x batch / FLOPs per step; no real step reaches it"
        )
    typer.echo(
        f"{'method':14s} {'largest batch':>18s} {'peak':>12s}"
        + (f" {'imgs/s bound':>13s}" if peak is not None else "")
        + "   next batch"
    )
    for name in methods:
        try:
            result = fit_batch(
                name,
                arch,
                res,
                budget,
                classes=classes,
                device_kind=device_kind,
                max_batch=max_batch,
                micro_batch=micro_batch if _splits(name) else None,
                seed=seed,
            )
        except FitError as err:
            typer.echo(f"{name:14s} {'error':>18s}   {err}")
            continue
        typer.echo(describe_fit(result, None if peak is None else peak[1].tflops))


def _runner(method: str):
    """The method's runner class; ConfigError naming the valid methods for an unknown one."""
    from ..runners import UnknownMethodError

    try:
        return get_runner(method)
    except UnknownMethodError as err:
        raise ConfigError(str(err)) from None


def _splits(method: str) -> bool:
    return _runner(method).contract.micro_batch


def _methods_for(arch: str) -> list[str]:
    """Every registered one-device method that accepts ``arch`` (torchvision models exclude
    layer-wise ones)."""
    from ..runners import RunnerConfigError

    methods = []
    for name in available_methods():
        try:
            runner = get_runner(name)
            runner.check_cell(arch, 32, 2, None)
        except RunnerConfigError:
            continue
        if not runner.contract.spans_devices:  # fit plans one device
            methods.append(name)
    return methods


def configuration(cell) -> str:
    """'bp-ckpt bf16 optim-host mb16': a candidate's method, tooling and micro-batch."""
    return " ".join([cell.method, *tooling_parts(cell)])


def plan_lines(result, top: int) -> list[str]:
    """The ranked table of a Plan, and what did not fit."""
    from ..runners import method_family

    lines = [
        f"{'rank':>4}  {'configuration':44s} {'peak':>10s} {'TFLOP/step':>10s} "
        f"{'compute ms':>10s} {'link ms':>9s} {'imgs/s bound':>12s}  bounded by"
    ]
    ranked = result.ranked
    for rank, row in enumerate(ranked[:top], start=1):
        bound = row.bound
        lines.append(
            f"{rank:>4}  {configuration(row.cell):44s} "
            f"{format_gib(row.result.peak_allocated_bytes):>10s} "
            f"{row.result.flops_per_step / 1e12:10.2f} {bound.compute_s * 1e3:10.1f} "
            f"{bound.transfer_s * 1e3:9.1f} {bound.imgs_per_s:12,.0f}  {bound.bounded_by}"
        )
    best = {}
    for row in ranked:
        best.setdefault(method_family(row.cell.method), row)
    lines.append(
        "best of each family: "
        + "; ".join(
            f"{family}: {configuration(row.cell)} ({format_gib(row.result.peak_allocated_bytes)}, "
            f"{row.bound.imgs_per_s:,.0f} imgs/s bound)"
            for family, row in best.items()
        )
        if best
        else "no configuration fits"
    )
    over = [
        row
        for row in result.rows
        if not row.fits(result.budget_bytes) and row.result.peak_allocated_bytes
    ]
    if over:
        smallest = min(over, key=lambda row: row.result.peak_allocated_bytes)
        lines.append(
            f"{len(over)} of {len(result.rows)} configuration(s) do not fit "
            f"{format_gib(result.budget_bytes)} (the smallest of them: "
            f"{configuration(smallest.cell)}, {format_gib(smallest.result.peak_allocated_bytes)})"
        )
    for row in result.failed:
        lines.append(f"could not estimate {configuration(row.cell)}: {row.result.error}")
    return lines


@reports_input_errors
@setting_options(
    "plan",
    only=("arch", "res", "batch", "classes", "precision", "device_mem"),
    defaults={**FIT_DEFAULTS, "precision": "fp32,bf16"},
)
def plan_command(
    gpu: str = typer.Option(
        ...,
        "--gpu",
        help="The GPU to rank by (a name of the peak table, e.g. 'RTX 4090'), or a "
        "device profile (laptop-8gb), which also gives the budget.",
    ),
    link_gbps: float = typer.Option(
        None,
        "--link-gbps",
        help="Host<->device bandwidth in GB/s for offloaded bytes. Default: "
        "31.5 (PCIe 4.0 x16, one direction).",
    ),
    top: int = typer.Option(20, "--top", help="Print the best N configurations that fit."),
    settings: dict = None,
) -> None:
    """Rank every family's tooling for one cell on one card: the configurations that fit
    --device-mem, fastest first by a throughput bound (CUDA estimates)."""
    from ..measure.flops import resolve_gpu
    from ..planning.plan import DEFAULT_LINK_GBPS, plan
    from ..profiles import ProfileError, load_profile

    name, peak = resolve_gpu(gpu)
    if "device_mem" not in settings:
        try:
            settings["device_mem"] = load_profile(gpu).settings["device_mem"]
        except (ProfileError, KeyError):
            fail("plan needs the budget to fit: --device-mem 8GiB, or a device profile as --gpu")
    arch, res, budget = _one(settings, "arch"), _one(settings, "res"), _one(settings, "device_mem")
    batch, classes = _one(settings, "batch"), _one(settings, "classes")
    link = DEFAULT_LINK_GBPS if link_gbps is None else link_gbps
    if not link > 0 or top < 1:
        fail("--link-gbps must be positive and --top at least 1")
    precisions = axis("precision", settings.get("precision", "fp32,bf16"))
    arch_at(arch, res)  # every input refused before the header, as sweep refuses it
    typer.echo(
        f"membench plan: {arch} at {res}x{res}, batch {batch}, K={classes}, budget "
        f"{format_gib(budget)} on {name} (CUDA estimates; link {link:g} GB/s)"
    )
    typer.echo(
        "bound: step time >= FLOPs / the GPU's datasheet peak at the cell's precision + "
        "host<->device bytes / the link; no real step reaches it"
    )
    result = plan(
        arch, res, batch, budget, name, classes=classes, link_gbps=link, precisions=precisions
    )
    for line in plan_lines(result, top):
        typer.echo(line)
