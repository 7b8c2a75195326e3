"""``membench list ...`` and ``membench env``: what is available and where we are running."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from ..profiles import ProfileError, available_profiles, load_profile
from ..runners import available_methods, get_runner
from .common import fail

list_app = typer.Typer(help="List archs, methods or profiles.", no_args_is_help=True)


@list_app.command("archs")
def list_archs(
    res: int = typer.Option(32, help="Input resolution for the per-layer output shapes."),
    arch: list[str] = typer.Option(None, help="Extra archs to show, e.g. vgg-d10-w256."),
) -> None:
    """Every conv-stack arch: conv parameter count and per-layer output shapes at --res."""
    from ..archs import (
        PARAMETRIC_RULE, ArchError, builtin_arch_names, conv_stack_spec, validate_arch,
    )

    names = builtin_arch_names() + list(arch or [])
    table = Table(title=f"archs at {res}x{res}", caption=f"parametric family: {PARAMETRIC_RULE}; "
                  "torchvision models as tv:NAME (BP runners only)")
    table.add_column("arch")
    table.add_column("conv params", justify="right")
    table.add_column("layers (C x H x W)")
    for name in names:
        try:
            spec = conv_stack_spec(name)
            validate_arch(name, res)
        except ArchError as err:
            fail(str(err))
        shapes = "  ".join(f"{c}x{h}x{w}" for c, h, w in spec.layer_shapes(res))
        table.add_row(name, f"{spec.conv_parameter_count():,}", shapes)
    Console(width=200).print(table)


@list_app.command("methods")
def list_methods() -> None:
    """Every registered runner (built-in and third-party, from the membench.methods group)."""
    table = Table(title="methods")
    table.add_column("method")
    table.add_column("conv stack only")
    table.add_column("what one step does")
    for name in available_methods():
        runner = get_runner(name)
        table.add_row(name, "yes" if runner.needs_conv_stack else "no", runner.summary)
    Console(width=160).print(table)


@list_app.command("profiles")
def list_profiles() -> None:
    """Every profile `--profile NAME` finds (./profiles, then the membench checkout's)."""
    table = Table(title="profiles", caption="combine with --profile A --profile B: later ones "
                  "override earlier ones key by key; command-line flags override all")
    for column in ("profile", "description", "settings", "file"):
        table.add_column(column)
    for name, path in available_profiles().items():
        try:
            profile = load_profile(str(path))
        except ProfileError as err:
            table.add_row(name, f"[red]unreadable: {err}[/red]", "", str(path))
            continue
        settings = [f"{key}={value}" for key, value in profile.settings.items()]
        settings += [f"grid={table}" for table in profile.grids or []]
        table.add_row(name, profile.description, "; ".join(settings), str(path))
    Console(width=200).print(table)


def env(as_json: bool = typer.Option(False, "--json", help="Print env.json exactly.")) -> None:
    """The provenance recorded in every results folder's env.json."""
    from ..envinfo import collect_env

    info = collect_env()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        if key == "gpus":
            for gpu in value:
                typer.echo(f"gpu[{gpu['index']}]: {gpu['name']}, "
                           f"{gpu['total_memory_bytes'] / 2**30:.1f} GiB, capability {gpu['capability']}")
            if not value:
                typer.echo("gpus: none")
        else:
            typer.echo(f"{key}: {value}")
