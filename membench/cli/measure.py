"""``membench sweep`` and ``membench run``: parse the options into a SweepConfig and measure."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..config import build_config
from ..devices import resolve_device
from ..results import grid_rows
from ..schema import CellResult
from ..sweep import SweepError, sweep as run_config
from ..worker import Target, open_target
from .common import comma_list, fail, reports_input_errors
from .display import default_out_dir, describe, progress_display, summary_table

# Options default to None so an explicit flag can be told apart from a profile's value; the
# real defaults are membench.config.SETTINGS.
ARCH = typer.Option(None, "--arch", help="Arch(s), comma list: vgg8, vgg11, vgg-dD-wW, tv:NAME. Default: vgg8.")
RES = typer.Option(None, "--res", help="Input resolution(s), comma list. Default: 32.")
BATCH = typer.Option(None, "--batch", help="Batch size(s), comma list. Default: 32.")
METHOD = typer.Option(None, "--method", help="Method(s), comma list (see `membench list methods`). Default: bp.")
MICRO = typer.Option(None, "--micro-batch", help="bp-accum micro-batch(es), comma list; default batch/2.")
CLASSES = typer.Option(None, "--classes", help="Number of classes K. Default: 10.")
WARMUP = typer.Option(None, "--warmup", help="Unmeasured warmup steps. Default: 5.")
STEPS = typer.Option(None, "--steps", help="Measured steps. Default: 20.")
SEED = typer.Option(None, "--seed", help="Seed for weights and the synthetic batch. Default: 0.")
DEVICE = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N. Default: auto.")
DEVICE_MEM = typer.Option(None, "--device-mem", help="Emulate a smaller card, e.g. 8GiB.")
PRECISION = typer.Option(None, "--precision", help="fp32, bf16, fp16 (autocast; fp16 with a "
                         "GradScaler), comma list. Default: fp32.")
MEMORY_FORMAT = typer.Option(None, "--memory-format", help="contiguous, channels_last, comma list. "
                             "Default: contiguous.")
COMPILE = typer.Option(None, "--compile", help="none, default, max-autotune (torch.compile mode), "
                       "comma list. Default: none.")


@reports_input_errors
def sweep(
    profile: list[str] = typer.Option(
        None, "--profile", "-p",
        help="Profile name or .toml path (repeat to combine; later ones win, flags win over all)."),
    arch: str = ARCH, res: str = RES, batch: str = BATCH, method: str = METHOD,
    micro_batch: str = MICRO, classes: int = CLASSES, warmup: int = WARMUP, steps: int = STEPS,
    seed: int = SEED, device: str = DEVICE, device_mem: str = DEVICE_MEM,
    precision: str = PRECISION, memory_format: str = MEMORY_FORMAT, compile: str = COMPILE,
    out: Path = typer.Option(
        None, "--out", help="Results folder. Default: results/PROFILE or results/sweep."),
    timeout: float = typer.Option(None, "--timeout", help="Seconds one cell may take before it is "
                                  "killed and recorded as timeout. Default: none."),
    isolation: str = typer.Option(None, "--isolation", help="process (each cell in a worker "
                                  "process) or none (in this process, for debugging). Default: process."),
    executor: str = typer.Option(None, "--executor", help="local (this machine, one cell at a "
                                 "time) or ray (one Ray task per cell, one GPU each, several at "
                                 "once; docs/scale-out.md). Default: local."),
    ray_address: str = typer.Option(None, "--ray-address", help="Join the Ray cluster at "
                                    "ADDRESS (host:port, or auto). Default: start one here."),
    cpus_per_cell: int = typer.Option(None, "--cpus-per-cell", help="CPUs a Ray task asks for. "
                                      "Default: all of a node's cores on the CPU, 1 on CUDA."),
    redo: bool = typer.Option(False, "--redo", help="Run every cell again, replacing finished rows."),
    estimate: bool = typer.Option(False, "--estimate", help="Predict each cell (membench.estimate) "
                                  "instead of running it; plans for CUDA unless --device cpu."),
    peak_tflops: float = typer.Option(None, "--peak-tflops", help="The device's peak TFLOP/s for "
                                      "MFU, replacing the datasheet's (GPU) or the calibrated GEMM "
                                      "rate (CPU)."),
) -> None:
    """Measure every cell of arch x res x batch x method; resumes an interrupted sweep in --out."""
    profiles = comma_list(profile)
    config = build_config(
        profiles, arch=arch, res=res, batch=batch, method=method, micro_batch=micro_batch,
        precision=precision, memory_format=memory_format, compile=compile,
        classes=classes, warmup=warmup, steps=steps, seed=seed, device=device,
        device_mem=device_mem, timeout=timeout, isolation=isolation, estimate=estimate or None,
        peak_tflops=peak_tflops, executor=executor, ray_address=ray_address,
        cpus_per_cell=cpus_per_cell)
    out = out or default_out_dir(profiles)
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file, not a folder")
    if not config.estimate and config.executor == "local":
        resolve_device(config.device)  # a device this machine lacks is bad input, before any cell

    console = Console(width=max(Console().width, 100))
    progress = progress_display(console)
    try:
        run_config(config, out, redo=redo, progress=progress)
    except SweepError as err:
        fail(str(err), code=1)
    except KeyboardInterrupt:
        progress.stop()
        typer.echo(f"membench: interrupted; finished cells are saved in {out}; rerun the same "
                   "command to resume", err=True)
        raise typer.Exit(130) from None
    rows = [CellResult.from_row(row) for name in progress.device_names
            for row in grid_rows(out, list(config.cells), progress.device, name)]
    where = (f"estimates for {config.estimate_kind}" if config.estimate
             else f"on {progress.device} ({progress.device_name})")
    console.print(summary_table(rows, f"{len(rows)} cell(s) {where}"))
    typer.echo(f"membench: results in {out}")


@reports_input_errors
def run(
    arch: str = ARCH, res: str = RES, batch: str = BATCH, method: str = METHOD,
    micro_batch: str = MICRO, classes: int = CLASSES, warmup: int = WARMUP, steps: int = STEPS,
    seed: int = SEED, device: str = DEVICE, device_mem: str = DEVICE_MEM,
    precision: str = PRECISION, memory_format: str = MEMORY_FORMAT, compile: str = COMPILE,
    peak_tflops: float = typer.Option(None, "--peak-tflops", help="Peak TFLOP/s for MFU."),
) -> None:
    """Measure one cell in this process and print a readable summary."""
    config = build_config(
        precision=precision, memory_format=memory_format, compile=compile,
        arch=arch, res=res, batch=batch, method=method, micro_batch=micro_batch, classes=classes,
        warmup=warmup, steps=steps, seed=seed, device=device, device_mem=device_mem,
        peak_tflops=peak_tflops)
    if len(config.cells) != 1:
        fail(f"run measures one cell, these options give {len(config.cells)}; use `membench sweep`")
    opened = open_target(Target(config.device, peak_tflops=config.peak_tflops))
    if opened.peak is not None and opened.peak.note:
        typer.echo(f"membench: note: {opened.peak.note}", err=True)
    result = opened.run(config.cells[0])
    typer.echo(describe(result))
    if result.status != "ok":
        raise typer.Exit(1)
