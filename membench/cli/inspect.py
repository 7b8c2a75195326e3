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
    arch: list[str] = typer.Option(
        None,
        help="Extra archs to show, e.g. vgg-d10-w256, "
        "tv:resnet18, timm:resnet18, mypkg.models:resnet110.",
    ),
) -> None:
    """membench's archs, the plugins' (the membench.archs entry points) and any --arch: kind,
    parameter count and each local unit's output (C x H x W) at --res."""
    from ..archs import (
        ArchError,
        builtin_arch_names,
        cifar_resnet_spec,
        conv_stack_spec,
        plugin_arch_names,
        probe_arch,
        resolve_arch,
        validate_arch,
    )

    names = list(dict.fromkeys(builtin_arch_names() + plugin_arch_names() + list(arch or [])))
    table = Table(
        title=f"archs at {res}x{res}",
        caption="families: vgg-dD-wW[-pP] (D conv layers "
        "of W channels), resnet{6n+2}[-stage] (CIFAR ResNet, a block or a stage per "
        "unit); tv:NAME (torchvision), timm:NAME, package.module:callable. Layer "
        "stacks run every method, classifiers the BP methods but bp-deepsup",
    )
    for column, justify in (
        ("arch", "left"),
        ("kind", "left"),
        ("params", "right"),
        ("units", "right"),
        ("unit outputs (C x H x W) / logits", "left"),
    ):
        table.add_column(column, justify=justify)
    for name in names:
        try:
            kind = resolve_arch(name).kind
            validate_arch(name, res)
            if kind == "conv-stack":
                spec = conv_stack_spec(name)
                params, shapes = spec.conv_parameter_count(), spec.layer_shapes(res)
            elif kind == "cifar-resnet":
                spec = cifar_resnet_spec(name)
                params, shapes = spec.parameter_count(), spec.layer_shapes(res)
            else:
                probe = probe_arch(name, res)
                params, shapes = probe.parameters, probe.layer_shapes
                output = "x".join(map(str, probe.output))
        except ArchError as err:
            if name in (arch or []):
                fail(str(err))  # asked for by name: bad input
            table.add_row(name, "", "", "", f"[red]{err}[/red]")  # listed: say why not here
            continue
        if shapes is None:
            table.add_row(name, f"{kind} (classifier)", f"{params:,}", "-", f"logits {output}")
            continue
        text = "  ".join(f"{c}x{h}x{w}" for c, h, w in shapes)
        table.add_row(
            name,
            f"{kind} (layer stack)",
            f"{params:,}",
            str(len(shapes)),
            text if len(text) <= 120 else text[:117] + "...",
        )
    Console(width=220).print(table)


@list_app.command("methods")
def list_methods() -> None:
    """Every registered runner (built-in and third-party, from the membench.methods group)."""
    table = Table(title="methods")
    table.add_column("method")
    table.add_column("layer stack only")
    table.add_column("what one step does")
    for name in available_methods():
        runner = get_runner(name)
        table.add_row(name, "yes" if runner.contract.layer_stack else "no", runner.summary)
    Console(width=160).print(table)


@list_app.command("profiles")
def list_profiles() -> None:
    """Every profile `--profile NAME` finds (./profiles, then the membench checkout's)."""
    table = Table(
        title="profiles",
        caption="combine with --profile A --profile B: later ones "
        "override earlier ones key by key; command-line flags override all",
    )
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
                typer.echo(
                    f"gpu[{gpu['index']}]: {gpu['name']}, "
                    f"{gpu['total_memory_bytes'] / 2**30:.1f} GiB, capability {gpu['capability']}"
                )
            if not value:
                typer.echo("gpus: none")
        else:
            typer.echo(f"{key}: {value}")
