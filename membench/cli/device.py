"""``membench device``: the device profiles (``show``) and measuring one on a card
(``calibrate``); the library is ``membench.planning.device_profiles`` and ``card_calibration``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..units import format_size
from .common import fail, reports_input_errors

device_app = typer.Typer(
    help="Device profiles: what a card holds besides a step's tensors.", no_args_is_help=True
)


@device_app.command("show")
@reports_input_errors
def show(
    names: list[str] = typer.Argument(None, help="Device profiles (default: every one)."),
) -> None:
    """Every figure of the device profiles with its source; an assumption is marked."""
    from ..planning.device_profiles import device_profile, device_profiles

    table = Table(title="device profiles (docs/device-total.md)", show_lines=True)
    for column in ("profile", "figure", "value", "source"):
        table.add_column(column, overflow="fold")
    for name in names or device_profiles():
        profile = device_profile(name)
        for key, figure in profile.figures().items():
            ratio = key.startswith("conv_workspace")
            value = f"{figure.value:g} x lowered" if ratio else format_size(figure.value)
            table.add_row(f"{profile.name}\n{profile.gpu}", key, value, figure.label())
    Console(width=max(Console().width, 140)).print(table)


@device_app.command("calibrate")
@reports_input_errors
def calibrate(
    name: str = typer.Argument(..., help="The profile's name, e.g. my-a100 (a-z, 0-9, -)."),
    device: str = typer.Option("cuda:0", "--device", help="The CUDA device to measure."),
    out: Path = typer.Option(
        Path("profiles"), "--out", help="Folder to write NAME.toml and NAME.json into."
    ),
) -> None:
    """Measure this card's memory, usable memory, CUDA context (lazy and eager module loading),
    cuBLAS workspace and cuDNN workspace ratios, and write them as a device profile
    (``--profile NAME`` and ``--gpu NAME`` find it in ./profiles). Needs an idle CUDA GPU."""
    from ..measure.devices import resolve_device
    from ..planning.card_calibration import check_profile_name, measure_card, write_device_profile

    check_profile_name(name)  # before the measurement, which takes a while
    target = resolve_device(device)
    if target.kind != "cuda":
        fail(f"calibrate measures a CUDA device, not {device!r}")
    path = write_device_profile(name, measure_card(target.index), out)
    typer.echo(f"membench: device profile {name} written to {path}")
