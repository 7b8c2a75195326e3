"""Bring your own model: an import path or a ``membench.archs`` entry point names a factory
taking ``num_classes``; it runs through the CLI, profiles and the Python API, and every way it
can be wrong is one line, exit 2, before any cell runs."""

from __future__ import annotations

import csv
import textwrap

import pytest
from helpers import usage_error
from typer.testing import CliRunner

from membench import archs
from membench.archs import ArchError, LayerStack, build_arch, is_layer_stack, validate_arch
from membench.cli import app
from membench.config import ConfigError, build_config, expand_grid
from membench.measure.devices import CpuDevice
from membench.measure.protocol import run_cell
from membench.schema import Cell

cli = CliRunner()
MODULE = "membench_test_models"
SOURCE = textwrap.dedent("""
    from torch import nn
    from membench.archs import LayerStack

    def tiny(num_classes):
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(4, num_classes))

    def tiny_stack(num_classes):
        return LayerStack([nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()),
                           nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU())],
                          [4, 6])

    def wrong_channels(num_classes):
        return LayerStack([nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())], [5])

    def not_a_module(num_classes):
        return 42

    def no_classes():
        return nn.Linear(2, 2)

    def big_kernel(num_classes):  # a 7x7 conv, then a head sized for 16x16 inputs
        return nn.Sequential(nn.Conv2d(3, 2, 7), nn.Flatten(), nn.Linear(2 * 10 * 10, num_classes))

    NOT_CALLABLE = 3

    import sys, threading
    RELEASE = threading.Event()  # set by the test that made never() wait, when it ends

    def never(num_classes):
        RELEASE.wait()

    def exits(num_classes):
        sys.exit(3)
""")


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A module of model factories on sys.path (and on the workers' PYTHONPATH), registered as
    an installed package would be: ``tiny-net`` in the ``membench.archs`` group."""
    (tmp_path / f"{MODULE}.py").write_text(SOURCE)
    (tmp_path / "broken_models.py").write_text("raise RuntimeError('cannot load weights')\n")
    (tmp_path / "exiting_models.py").write_text("import sys\nsys.exit(4)\n")
    dist = tmp_path / "membench_test_models-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: membench-test-models\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(
        f"[membench.archs]\ntiny-net = {MODULE}:tiny\ntiny-stack = {MODULE}:tiny_stack\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    archs.refresh_registry()
    yield MODULE
    archs.refresh_registry()


def test_an_import_path_builds_a_classifier_and_a_layer_stack(plugin):
    model = build_arch(f"{plugin}:tiny", 3)
    assert model[-1].out_features == 3  # num_classes reached the factory
    assert isinstance(build_arch(f"{plugin}:tiny_stack", 3), LayerStack)
    assert not is_layer_stack(f"{plugin}:tiny", 16) and is_layer_stack(f"{plugin}:tiny_stack", 16)
    assert archs.probe_arch(f"{plugin}:tiny_stack", 16).layer_shapes == ((4, 16, 16), (6, 8, 8))


def test_entry_points_are_listed_and_measured_like_builtins(plugin):
    result = cli.invoke(app, ["list", "archs", "--res", "16"])
    assert result.exit_code == 0, result.output
    assert "tiny-net" in result.output and "tiny-stack" in result.output
    assert "resnet110" in result.output and "vgg8" in result.output
    row = run_cell(Cell("bp", "tiny-net", 16, 2, classes=3, warmup=0, steps=1), CpuDevice())
    assert row.status == "ok", row.error
    assert row.flops_per_step > 0 and row.peak_allocated_bytes > 0


def test_a_layer_stack_plugin_trains_layer_locally_and_a_classifier_is_refused(plugin):
    cells = expand_grid(
        method=["ff-pipelined", "bp-deepsup"],
        arch=f"{plugin}:tiny_stack",
        res=16,
        batch=2,
        classes=3,
        warmup=0,
        steps=1,
    )
    rows = [run_cell(cell, CpuDevice()) for cell in cells]
    assert [row.status for row in rows] == ["ok", "ok"], [row.error for row in rows]
    with pytest.raises(ConfigError, match="needs a layer stack"):
        expand_grid(method="ff-pipelined", arch=f"{plugin}:tiny", res=16, batch=2)


def test_a_profile_names_a_plugin_arch(plugin, tmp_path):
    profile = tmp_path / "mine.toml"
    profile.write_text(
        f'description = "my model"\narch = "{plugin}:tiny"\nres = 16\n'
        'batch = [2, 4]\nmethod = ["bp", "bp-ckpt"]\n'
    )
    cells = build_config([str(profile)]).cells
    assert {(c.arch, c.batch) for c in cells} == {(f"{plugin}:tiny", 2), (f"{plugin}:tiny", 4)}


@pytest.mark.slow  # a forkserver worker: seconds
def test_a_sweep_of_a_plugin_runs_in_workers(plugin, tmp_path):
    result = cli.invoke(
        app,
        [
            "sweep",
            "--arch",
            f"{plugin}:tiny",
            "--method",
            "bp",
            "--res",
            "16",
            "--batch",
            "2",
            "--classes",
            "3",
            "--warmup",
            "0",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    with open(tmp_path / "out" / "cells.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["arch"], row["status"]) for row in rows] == [(f"{plugin}:tiny", "ok")]


@pytest.mark.parametrize(
    ("arch", "needle"),
    [
        (
            "no_such_module_xyz:f",
            "module 'no_such_module_xyz' does not import: ModuleNotFoundError",
        ),
        ("broken_models:f", "does not import: RuntimeError: cannot load weights"),
        (f"{MODULE}:missing", f"module '{MODULE}' has no 'missing'"),
        (f"{MODULE}:NOT_CALLABLE", "is an object of type int, not a callable"),
        (f"{MODULE}:no_classes", "cannot be called as"),
        (f"{MODULE}:not_a_module", "returned an object of type int, not a torch.nn.Module"),
        (f"{MODULE}:big_kernel", "does not run at resolution 4: RuntimeError"),
        (
            f"{MODULE}:wrong_channels",
            "unit 0 returned (2, 4, 4, 4), where the layer-stack contract needs B x 5 x H x W",
        ),
        ("tv:vit_b_16", "does not run at resolution 4: AssertionError: Wrong image height!"),
        ("resnet50", "tv:resnet50"),  # torchvision's depths stay torchvision's
    ],
)
def test_every_bad_arch_is_one_line_and_exit_2(plugin, arch, needle):
    with pytest.raises(ArchError, match="."):
        validate_arch(arch, 4)
    line = usage_error(
        cli.invoke(app, ["sweep", "--arch", arch, "--res", "4", "--batch", "2", "--out", "unused"])
    )
    assert needle in line, line


def test_a_factory_that_never_returns_is_refused_within_the_probe_bound(plugin, monkeypatch):
    import importlib

    monkeypatch.setenv("MEMBENCH_PROBE_TIMEOUT_S", "0.5")
    try:
        line = usage_error(
            cli.invoke(app, ["sweep", "--arch", f"{plugin}:never", "--res", "8", "--out", "x"])
        )
    finally:
        importlib.import_module(plugin).RELEASE.set()  # the probe's thread returns and ends
    assert f"probing --arch {plugin}:never at resolution 8 did not return within 0.5 s" in line
    assert "MEMBENCH_PROBE_TIMEOUT_S" in line


@pytest.mark.parametrize(
    ("arch", "needle"),
    [
        (f"{MODULE}:exits", "called sys.exit(3)"),  # in the factory
        ("exiting_models:net", "importing --arch exiting_models:net called sys.exit(4)"),
    ],
)
def test_user_code_calling_sys_exit_is_one_line(plugin, arch, needle):
    # it used to end the sweep with exit code 3 and no output at all
    line = usage_error(cli.invoke(app, ["sweep", "--arch", arch, "--res", "8", "--out", "x"]))
    assert needle in line


def test_a_bad_probe_bound_is_one_line(plugin, monkeypatch):
    monkeypatch.setenv("MEMBENCH_PROBE_TIMEOUT_S", "soon")
    with pytest.raises(ArchError, match="MEMBENCH_PROBE_TIMEOUT_S must be a number"):
        validate_arch(f"{plugin}:tiny", 8)
