"""``membench sweep`` and ``membench run``: parse and validate, then call the library."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import typer

from ..devices import DeviceError, resolve_device
from ..grid import GridError, expand_grid, parse_bytes, parse_int_list, split_list
from ..protocol import CellResult
from ..sweep import run_sweep
from .app import app, fail

ARCH = typer.Option("vgg8", "--arch", help="Arch(s), comma list: vgg8, vgg11, vgg-dD-wW, tv:NAME.")
RES = typer.Option("32", "--res", help="Input resolution(s), comma list.")
BATCH = typer.Option("32", "--batch", help="Batch size(s), comma list.")
METHOD = typer.Option("bp", "--method", help="Method(s), comma list (see `membench list methods`).")
MICRO = typer.Option(None, "--micro-batch", help="bp-accum micro-batch(es), comma list; default batch/2.")
CLASSES = typer.Option(10, "--classes", help="Number of classes K.")
WARMUP = typer.Option(5, "--warmup", help="Unmeasured warmup steps.")
STEPS = typer.Option(20, "--steps", help="Measured steps.")
SEED = typer.Option(0, "--seed", help="Seed for weights and the synthetic batch.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
DEVICE_MEM = typer.Option(None, "--device-mem", help="Emulate a smaller card, e.g. 8GiB.")


def build_cells(arch, res, batch, method, micro_batch, classes, warmup, steps, seed, device_mem):
    """Validate every option and expand the grid; exits 2 with one line on bad input."""
    try:
        return expand_grid(
            split_list(method), split_list(arch), parse_int_list(res, "--res"),
            parse_int_list(batch, "--batch"),
            micro_batches=parse_int_list(micro_batch, "--micro-batch") if micro_batch else None,
            classes=classes, seed=seed, warmup=warmup, steps=steps,
            device_mem_bytes=parse_bytes(device_mem) if device_mem else None,
        )
    except GridError as err:
        fail(str(err))


def open_device(spec: str):
    try:
        return resolve_device(spec)
    except DeviceError as err:
        fail(str(err))


def describe(result: CellResult) -> str:
    """A readable one-cell summary."""
    cell = result.cell
    head = f"{cell.cell_id} on {result.device} ({result.device_name}): {result.status}"
    if result.status != "ok":
        return f"{head}\n  {result.error}"
    stats = result.summary_stats()
    lines = [
        head,
        f"  step time   median {stats['median']:.1f} ms  (p10 {stats['p10']:.1f}, p90 "
        f"{stats['p90']:.1f}, mean {stats['mean']:.1f}) over {len(result.step_ms)} steps",
        f"  throughput  {result.imgs_per_s:.1f} imgs/s",
        f"  peak memory {result.peak_allocated_bytes / 2**30:.3f} GiB allocated "
        f"(source: {result.memory_source})",
    ]
    if result.breakdown:
        parts = ", ".join(f"{k.removesuffix('_bytes').replace('_', ' ')} {v / 2**20:.1f} MiB"
                          for k, v in result.breakdown.as_columns().items())
        lines.append(f"  breakdown   {parts}")
    if result.host_peak_rss_bytes:
        lines.append(f"  host RSS    {result.host_peak_rss_bytes / 2**30:.2f} GiB peak")
    return "\n".join(lines)


@app.command()
def sweep(
    arch: str = ARCH, res: str = RES, batch: str = BATCH, method: str = METHOD,
    micro_batch: str = MICRO, classes: int = CLASSES, warmup: int = WARMUP, steps: int = STEPS,
    seed: int = SEED, device: str = DEVICE, device_mem: str = DEVICE_MEM,
    out: Path = typer.Option(None, "--out", help="Results folder (default results/sweep-TIMESTAMP)."),
) -> None:
    """Measure every cell of arch x res x batch x method and write cells.csv, steps.csv, env.json."""
    cells = build_cells(arch, res, batch, method, micro_batch, classes, warmup, steps, seed, device_mem)
    dev = open_device(device)
    out = out or Path("results") / f"sweep-{dt.datetime.now():%Y%m%d-%H%M%S}"
    typer.echo(f"membench: {len(cells)} cell(s) on {dev} -> {out}")
    run_sweep(cells, dev, out, on_result=lambda r: typer.echo(describe(r)))
    typer.echo(f"membench: results in {out}")


@app.command()
def run(
    arch: str = ARCH, res: str = RES, batch: str = BATCH, method: str = METHOD,
    micro_batch: str = MICRO, classes: int = CLASSES, warmup: int = WARMUP, steps: int = STEPS,
    seed: int = SEED, device: str = DEVICE, device_mem: str = DEVICE_MEM,
) -> None:
    """Measure one cell in this process and print a readable summary."""
    from ..protocol import run_cell

    cells = build_cells(arch, res, batch, method, micro_batch, classes, warmup, steps, seed, device_mem)
    if len(cells) != 1:
        fail(f"run measures one cell, these options give {len(cells)}; use `membench sweep`")
    result = run_cell(cells[0], open_device(device))
    typer.echo(describe(result))
    if result.status != "ok":
        raise typer.Exit(1)
