"""``membench fit`` (the largest batch of each method that fits a device budget) and ``membench
plan`` (the best configuration of each family for one cell on one card), by estimate. The
library (``membench.planning.fit``, ``membench.planning.plan``) estimates and ranks; this module
parses the options and prints, and imports the library (torch) only when a command runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from ..config import SETTING_BY_KEY, TOKEN_SETTINGS
from ..planning.device_total import TERM_LABELS
from ..schema import ESTIMATE_KINDS
from ..settings import ConfigError
from ..units import format_gib
from ..validate import arch_at, axis, option_applies
from .common import fail, reports_input_errors
from .display import EstimatesBar, tooling_parts
from .options import setting_options

if TYPE_CHECKING:
    from ..planning.fit import FitResult
    from ..planning.plan import Plan

# fit plans one arch at one resolution: the paper's ImageNet-sized cell unless told otherwise.
FIT_DEFAULTS = {"arch": "vgg11", "res": 224, "method": "every method that can run the arch"}
# The cell settings fit passes through to every estimate (a token model's, the tooling).
FIT_CELL_SETTINGS = (
    "seq",
    "objective",
    "attn_implementation",
    "precision",
    "grads",
    "optimizer_state",
)


def describe_fit(fit: FitResult, peak_tflops: float | None = None) -> str:
    """One table line: method, largest batch (and micro-batch), its peak (the figure the budget
    judges), with ``peak_tflops`` its imgs/s bound, and the next batch's peak with the term that
    decides it does not fit."""
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
        if fit.next_term:
            beyond += f" (decided by {TERM_LABELS[fit.next_term]})"
    bound = ""
    if peak_tflops is not None:
        imgs = fit.bound(peak_tflops)
        bound = f" {'-' if imgs is None else f'{imgs:,.0f}':>13s}"
    return f"{fit.method:14s} {batch:>18s} {format_gib(fit.peak_bytes):>12s}{bound}   {beyond}"


def _one(settings: dict, key: str):
    """A fit setting's value: the given one read by its setting's parser, else fit's default."""
    s = SETTING_BY_KEY[key]
    if key not in settings:
        return FIT_DEFAULTS.get(key, s.default)
    return s.parse(settings[key], s.option)


def judged_text(fit_by: str, profile: str) -> str:
    """What a budget is held against, as fit and plan print it."""
    if fit_by == "total":
        return f"the device total on {profile} (reserve + CUDA context + workspaces)"
    if fit_by == "reserved":
        return f"the allocator's reserve on {profile} (no CUDA context)"
    return "the tensors' peak (no allocator reserve, CUDA context or workspaces)"


def card_of(gpu: str | None, settings: dict) -> str | None:
    """The device profile estimates plan for: --device-profile, else --gpu when it names one
    (by name or path; a GPU's name, or a profile without a [card] table, names none). A device
    profile that does not read is an error, never the default card in its place."""
    if "device_profile" in settings:
        return _one(settings, "device_profile")
    if gpu is not None:
        from ..planning.device_profiles import device_profile
        from ..profiles import ProfileError, load_profile

        try:
            is_card = load_profile(gpu).card is not None
        except ProfileError:
            return None  # a GPU's name (resolve_gpu reads it)
        if is_card:
            device_profile(gpu)  # DeviceProfileError (one line) for a [card] that does not read
            return gpu
    return None


@reports_input_errors
@setting_options(
    "fit",
    only=(
        "arch",
        "res",
        "method",
        "micro_batch",
        "classes",
        "device_mem",
        "seed",
        "jobs",
        "device_profile",
        "fit_by",
        *FIT_CELL_SETTINGS,
        "batch",
    ),
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
    """Print, per method, the largest batch whose estimate fits --device-mem: by default its
    device total (reserve + CUDA context + workspaces) on the device profile's card."""
    card = _fit_card(gpu, settings, device_kind)
    fit_by = _one(settings, "fit_by")
    arch, res, budget = _one(settings, "arch"), _one(settings, "res"), _one(settings, "device_mem")
    classes, seed, micro_batch = (_one(settings, key) for key in ("classes", "seed", "micro_batch"))
    cell_settings = {key: _one(settings, key) for key in FIT_CELL_SETTINGS if key in settings}
    judged_by = fit_by if device_kind == "cuda" else "allocated"
    if _searches_sequence(settings, arch):
        _fit_sequence(settings, arch, budget, classes, seed, device_kind, cell_settings, card)
        return
    if "seq" in cell_settings:
        res = None  # a token model's cell has no resolution
    token = {key: cell_settings[key] for key in TOKEN_SETTINGS if key in cell_settings}
    arch_at(arch, res, **token)  # the arch and its input before the methods that take them
    from ..measure.flops import resolve_gpu
    from ..planning.fit import FitError, check_fit_input, fit_methods, methods_for, splits_batch

    peak = resolve_gpu(gpu) if gpu is not None else None
    if device_kind not in ESTIMATE_KINDS:
        fail(f"unknown --device-kind {device_kind!r}; valid: {', '.join(ESTIMATE_KINDS)}")
    methods = (
        list(SETTING_BY_KEY["method"].parse_axis(settings["method"], "--method"))
        if "method" in settings
        else methods_for(arch, cell_settings)
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
            micro_batch if splits_batch(name) else None,
            **cell_settings,
        )

    shape = f"{res}x{res}" if res is not None else f"seq {cell_settings['seq']}"
    typer.echo(
        f"membench fit: {arch} at {shape}, K={classes}, budget {format_gib(budget)} "
        f"({device_kind} estimate, max batch {max_batch}), judged by "
        f"{judged_text(judged_by, card.name)}"
    )
    if peak is not None:
        typer.echo(
            f"imgs/s bound: {peak[0]} at {peak[1].tflops:g} TFLOP/s ({peak[1].precision}), "
            "peak x batch / FLOPs per step; no real step reaches it"
        )
    typer.echo(
        f"{'method':14s} {'largest batch':>18s} {judged_by:>12s}"
        + (f" {'imgs/s bound':>13s}" if peak is not None else "")
        + "   next batch"
    )
    with EstimatesBar("methods searched") as bar:
        found = fit_methods(
            methods,
            arch,
            res,
            budget,
            jobs=_one(settings, "jobs"),
            progress=bar.update,
            classes=classes,
            device_kind=device_kind,
            max_batch=max_batch,
            micro_batch=micro_batch,
            seed=seed,
            profile=card,
            fit_by=fit_by,
            **cell_settings,
        )
    for name, result in zip(methods, found):
        if isinstance(result, FitError):
            typer.echo(f"{name:14s} {'error':>18s}   {result}")
        else:
            typer.echo(describe_fit(result, None if peak is None else peak[1].tflops))


def _fit_card(gpu: str | None, settings: dict, device_kind: str):
    """The device profile fit plans for (``settings`` given its budget where the profile sets
    it); fails, before any estimate, for a budget missing and for CUDA-only options on a CPU
    estimate."""
    from ..planning.device_profiles import device_profile_of

    profile = card_of(gpu, settings)
    card = device_profile_of(profile)  # a --device-profile that is none: one line, before all
    if "device_mem" not in settings and profile is not None:
        from ..profiles import load_profile

        settings["device_mem"] = load_profile(profile).settings["device_mem"]
    if "device_mem" not in settings:
        fail(
            "fit needs --device-mem, the budget to fit, e.g. --device-mem 8GiB, or a device "
            "profile as --gpu (its usable memory)"
        )
    if device_kind == "cpu" and (
        "device_profile" in settings or _one(settings, "fit_by") != "total"
    ):
        # judged by the tensors' peak: no CUDA context, reserve or workspace to choose
        fail(
            "--device-profile and --fit-by apply to CUDA estimates; a --device-kind cpu "
            "estimate is judged by the tensors' peak"
        )
    return card


def _searches_sequence(settings: dict, arch: str) -> bool:
    """Whether ``fit`` searches a token model's sequence length (``--batch`` without ``--seq``)
    rather than the batch; fails for a combination that names neither or does not apply."""
    from ..archs import takes_tokens

    if not takes_tokens(arch):
        if "batch" in settings:
            fail("--batch applies to token models (fit searches their sequence length)")
        return False
    if "seq" in settings:
        return False
    if "batch" not in settings:
        fail(
            f"{arch} takes token sequences: give --seq N (fit searches the batch) "
            "or --batch B (fit searches the sequence length)"
        )
    return True


def _fit_sequence(settings, arch, budget, classes, seed, device_kind, cell_settings, card) -> None:
    """``fit --batch B`` of a token model: per method, the longest sequence that fits."""
    from ..planning.fit import FitError, fit_seq, methods_for

    batch = _one(settings, "batch")
    methods = (
        list(SETTING_BY_KEY["method"].parse_axis(settings["method"], "--method"))
        if "method" in settings
        else methods_for(arch, {**cell_settings, "seq": 1})
    )
    fit_by = _one(settings, "fit_by") if device_kind == "cuda" else "allocated"
    typer.echo(
        f"membench fit: {arch} at batch {batch}, budget {format_gib(budget)} "
        f"({device_kind} estimate): the longest sequence, judged by "
        f"{judged_text(fit_by, card.name)}"
    )
    typer.echo(f"{'method':14s} {'longest seq':>12s} {fit_by:>12s}   next sequence length")
    for name in methods:
        try:
            result = fit_seq(
                name,
                arch,
                batch,
                budget,
                classes,
                device_kind,
                seed=seed,
                profile=card,
                fit_by=fit_by,
                **cell_settings,
            )
        except FitError as err:
            typer.echo(f"{name:14s} {'error':>12s}   {err}")
            continue
        beyond = (
            "the model's longest sequence fits"
            if result.capped
            else f"seq {result.next_seq}: {format_gib(result.next_peak_bytes)}"
        )
        if result.next_term:
            beyond += f" (decided by {TERM_LABELS[result.next_term]})"
        longest = "none" if result.seq is None else str(result.seq)
        typer.echo(f"{name:14s} {longest:>12s} {format_gib(result.peak_bytes):>12s}   {beyond}")


def _runner(method: str):
    """The method's runner class; ConfigError naming the valid methods for an unknown one."""
    from ..runners import UnknownMethodError, get_runner

    try:
        return get_runner(method)
    except UnknownMethodError as err:
        raise ConfigError(str(err)) from None


def configuration(cell) -> str:
    """'bp-ckpt bf16 optim-host mb16': a candidate's method, tooling and micro-batch."""
    return " ".join([cell.method, *tooling_parts(cell)])


def plan_lines(result: Plan, top: int) -> list[str]:
    """The ranked table of a Plan, and what did not fit."""
    lines = [
        f"{'rank':>4}  {'configuration':44s} {result.fit_by:>10s} {'TFLOP/step':>10s} "
        f"{'compute ms':>10s} {'link ms':>9s} {'imgs/s bound':>12s}  bounded by"
    ]
    for rank, row in enumerate(result.ranked[:top], start=1):
        bound = row.bound
        lines.append(
            f"{rank:>4}  {configuration(row.cell):44s} "
            f"{format_gib(row.peak):>10s} "
            f"{row.result.flops_per_step / 1e12:10.2f} {bound.compute_s * 1e3:10.1f} "
            f"{bound.transfer_s * 1e3:9.1f} {bound.imgs_per_s:12,.0f}  {bound.bounded_by}"
        )
    best = result.best_of_each_family()
    lines.append(
        "best of each family: "
        + "; ".join(
            f"{family}: {configuration(row.cell)} ({format_gib(row.peak)}, "
            f"{row.bound.imgs_per_s:,.0f} imgs/s bound)"
            for family, row in best.items()
        )
        if best
        else "no configuration fits"
    )
    over = result.over_budget
    if over:
        smallest = over[0]
        term = smallest.deciding_term(result.budget_bytes)
        decides = f"; decided by {TERM_LABELS[term]}" if term else ""
        lines.append(
            f"{len(over)} of {len(result.rows)} configuration(s) do not fit "
            f"{format_gib(result.budget_bytes)} (the smallest of them: "
            f"{configuration(smallest.cell)}, {format_gib(smallest.peak)}{decides})"
        )
    by_allocated = result.fit_only_by_allocated
    if by_allocated and result.fit_by != "allocated":
        lines.append(
            f"{len(by_allocated)} of them fit by the tensors' peak alone: "
            + ", ".join(
                f"{configuration(row.cell)} "
                f"(decided by {TERM_LABELS.get(row.deciding_term(result.budget_bytes), '-')})"
                for row in by_allocated
            )
        )
    for row in result.failed:
        lines.append(f"could not estimate {configuration(row.cell)}: {row.result.error}")
    return lines


@reports_input_errors
@setting_options(
    "plan",
    only=(
        "arch",
        "res",
        "seq",
        "objective",
        "batch",
        "classes",
        "precision",
        "device_mem",
        "jobs",
        "device_profile",
        "fit_by",
    ),
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
    from ..planning.plan import DEFAULT_LINK_GBPS, plan, plan_budget

    name, peak = resolve_gpu(gpu)
    if "device_mem" not in settings:
        settings["device_mem"] = plan_budget(gpu)
        if settings["device_mem"] is None:
            fail("plan needs the budget to fit: --device-mem 8GiB, or a device profile as --gpu")
    arch, res, budget = _one(settings, "arch"), _one(settings, "res"), _one(settings, "device_mem")
    batch, classes = _one(settings, "batch"), _one(settings, "classes")
    seq, objective = _one(settings, "seq"), _one(settings, "objective")
    link = DEFAULT_LINK_GBPS if link_gbps is None else link_gbps
    if not link > 0 or top < 1:
        fail("--link-gbps must be positive and --top at least 1")
    from ..planning.device_profiles import device_profile_of

    precisions = axis("precision", settings.get("precision", "fp32,bf16"))
    token = {
        key: value for key, value in (("seq", seq), ("objective", objective)) if value is not None
    }
    arch_at(arch, res, **token)  # every input refused before the header, as sweep refuses it
    card, fit_by = device_profile_of(card_of(gpu, settings)), _one(settings, "fit_by")
    shape = f"{res}x{res}" if seq is None else f"seq {seq}"
    typer.echo(
        f"membench plan: {arch} at {shape}, batch {batch}, K={classes}, budget "
        f"{format_gib(budget)} on {name} (CUDA estimates; link {link:g} GB/s), judged by "
        f"{judged_text(fit_by, card.name)}"
    )
    typer.echo(
        "bound: step time >= FLOPs / the GPU's datasheet peak at the cell's precision + "
        "host<->device bytes / the link; no real step reaches it"
    )
    with EstimatesBar("configurations estimated") as bar:
        result = plan(
            arch,
            res,
            batch,
            budget,
            name,
            classes=classes,
            link_gbps=link,
            precisions=precisions,
            progress=bar.update,
            jobs=_one(settings, "jobs"),
            profile=card,
            fit_by=fit_by,
            **token,
        )
    for line in plan_lines(result, top):
        typer.echo(line)
