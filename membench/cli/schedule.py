"""``membench schedule``: the schedule model's step time of each pipeline on N devices, from one
device's per-layer costs (``membench.multidevice.schedule_model``; docs/multi-device.md, "The
schedule model")."""

from __future__ import annotations

import typer

from ..config import SETTING_BY_KEY
from ..settings import ConfigError
from ..validate import arch_at
from .common import fail, reports_input_errors
from .options import setting_options

SCHEDULE_DEFAULTS = {
    "arch": "vgg-d32-w256",
    "res": 64,
    "batch": 128,
    "micro_batch": 16,
    "classes": 100,
    "devices": "2,4,8",
}


def _value(settings: dict, key: str):
    s = SETTING_BY_KEY[key]
    raw = settings.get(key, SCHEDULE_DEFAULTS.get(key, s.default))
    return s.parse(raw, s.option)


def _model_lines(times: dict, devices: int, unit: str, per_ms: float | None) -> list[str]:
    lines = []
    for name, modelled in times.items():
        step = (
            f"{modelled.step:10.3f} ms"
            if unit == "ms"
            else f"{modelled.step / 1e9:10.1f} GFLOP"
            + (f" = {modelled.step / per_ms:8.3f} ms" if per_ms else "")
        )
        lines.append(f"  N={devices} {name:16s} step {step}   bubble {modelled.bubble:6.1%}")
    ff, one, gpipe = (times[k].step for k in ("ff-forward-only", "1f1b", "gpipe"))
    lines.append(f"  N={devices} ff-pp / bp-pp: {ff / one:.3f} (1f1b), {ff / gpipe:.3f} (gpipe)")
    return lines


@reports_input_errors
@setting_options(
    "schedule",
    only=("arch", "res", "batch", "micro_batch", "classes", "devices", "precision"),
    defaults=SCHEDULE_DEFAULTS,
)
def schedule(
    source: str = typer.Option(
        "flops",
        "--source",
        help="flops (counted on fake tensors; "
        "time with --gpu) or cpu (each piece measured on this CPU).",
    ),
    gpu: str = typer.Option(
        None,
        "--gpu",
        help="A GPU or device profile: FLOPs ÷ its datasheet peak for the cell's precision.",
    ),
    settings: dict = None,
) -> None:
    """Model the step time of GPipe, 1F1B and DTG-FF's forward-only pipeline on N devices from
    one device's per-layer forward and backward costs (a model, not a measurement)."""
    from ..archs import ArchError, conv_stack_spec
    from ..multidevice.schedule_model import pipeline_times
    from ..planning.layer_costs import SOURCES, layer_costs

    arch, res, batch = (_value(settings, key) for key in ("arch", "res", "batch"))
    micro_batch, classes, precision = (
        _value(settings, k) for k in ("micro_batch", "classes", "precision")
    )
    devices = SETTING_BY_KEY["devices"].parse_axis(settings.get("devices", "2,4,8"), "--devices")
    if source not in SOURCES:
        fail(f"unknown --source {source!r}; valid: {', '.join(SOURCES)}")
    arch_at(arch, res)
    try:
        depth = conv_stack_spec(arch).depth
    except ArchError as err:
        raise ConfigError(str(err)) from None
    if micro_batch is None or batch % micro_batch:
        fail(f"--micro-batch {micro_batch} must divide --batch {batch}")
    if max(devices) > depth or min(devices) < 2:
        fail(f"--devices takes 2 to {depth} (one stage of {arch}'s {depth} layers per device)")
    per_ms = None
    if gpu is not None:
        from ..measure.flops import gpu_peaks, resolve_gpu

        name = resolve_gpu(gpu)[0]
        peak = gpu_peaks(name)[precision]
        per_ms = None if peak.tflops is None else peak.tflops * 1e9  # FLOPs per ms
    costs = layer_costs(arch, res, batch, micro_batch, classes, precision, source)
    chunks = batch // micro_batch
    typer.echo(
        f"membench schedule (a model): {arch} at {res}x{res}, batch {batch} in {chunks} "
        f"micro-batches of {micro_batch}, K={classes}, {precision}, per-layer costs: "
        + (
            "measured on this CPU"
            if source == "cpu"
            else "FLOPs" + (f" ÷ {gpu}'s datasheet peak" if per_ms else "")
        )
    )
    for n in devices:
        for line in _model_lines(pipeline_times(costs, n, chunks), n, costs.unit, per_ms):
            typer.echo(line)
    typer.echo(
        "assumptions: stages of contiguous layers balanced by conv cost (the runners' "
        "split); every piece at the same rate; communication overlapped; optimizer "
        "steps left out (docs/multi-device.md, 'The schedule model')"
    )
