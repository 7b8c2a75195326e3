"""The command line: listing, provenance, one-cell runs and the one-line errors (exit 2)."""

import json

import pytest
from conftest import TINY_ARCH, TINY_RES
from helpers import usage_error
from typer.testing import CliRunner

from membench.cli import app

cli = CliRunner()


def invoke(*args):
    return cli.invoke(app, list(args))


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("sweep", "run", "list", "env", "verify"):
        assert command in result.output


HEAVY_MODULES = ("torch", "pandas", "scipy", "matplotlib")


def heavy_modules_after(code: str) -> list[str]:
    """Which of HEAVY_MODULES a fresh interpreter holds after running ``code``."""
    import subprocess
    import sys

    probe = (
        f"{code}\nimport sys\n"
        f"print(' '.join(m for m in {HEAVY_MODULES!r} if m in sys.modules), file=sys.stderr)"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return run.stderr.split()


def command(*args: str) -> str:
    """``membench ARGS`` as the program runs it, its exit left to the probe that follows."""
    return (
        f"import sys\nsys.argv = ['membench', *{list(args)!r}]\n"
        "from membench.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass"
    )


@pytest.mark.parametrize("args", [("--help",), ("list",), ("plan", "--help")])
def test_help_and_list_import_no_torch_pandas_scipy_or_matplotlib(args):
    """Every command imports what it uses when it runs, so `membench --help` and `membench
    list` start in a fraction of a second (benchmarks/estimate_speed.py times it)."""
    assert heavy_modules_after(command(*args)) == []


def test_the_import_check_sees_a_heavy_import():
    # The check above can fail: a command module that read results at import would show.
    assert heavy_modules_after("import membench.results") == ["pandas"]
    assert "torch" in heavy_modules_after(command("list", "methods"))


def test_compares_shown_defaults_are_the_gates_own():
    from membench import compare
    from membench.cli import compare as compare_command

    assert compare_command.DEFAULT_TPUT_DROP_PCT == compare.DEFAULT_TPUT_DROP_PCT
    assert compare_command.DEFAULT_ALPHA == compare.DEFAULT_ALPHA


def test_list_archs_shows_parameter_counts_and_shapes():
    result = invoke("list", "archs", "--res", "32")
    assert result.exit_code == 0
    assert "9,148,416" in result.output and "9,220,480" in result.output
    assert "512x2x2" in result.output


def test_list_methods_shows_every_builtin_runner():
    result = invoke("list", "methods")
    for name in ("bp", "bp-accum", "bp-ckpt", "bp-deepsup", "ff-naive", "ff-pipelined"):
        assert name in result.output


def test_env_json_has_provenance():
    info = json.loads(invoke("env", "--json").output)
    for key in (
        "membench_version",
        "git_sha",
        "python",
        "torch_version",
        "cuda_version",
        "cpu_model",
        "torch_threads",
        "hostname",
    ):
        assert key in info


def test_run_prints_a_summary():
    result = invoke(
        "run",
        "--arch",
        TINY_ARCH,
        "--res",
        str(TINY_RES),
        "--batch",
        "2",
        "--warmup",
        "1",
        "--steps",
        "3",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert "imgs/s" in result.output and "GiB" in result.output and "tracker" in result.output


BAD_INPUT = [
    (["--arch", "vgg9"], "unknown arch"),
    (["--method", "sgd"], "unknown method"),
    (["--device", "tpu"], "unknown device"),
    (["--batch", "0"], "--batch must be at least 1"),
    (["--batch", "-4"], "--batch must be at least 1"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--batch", "two"], "--batch takes a whole number"),
    (["--arch", "vgg11", "--res", "16"], "too small"),
    (["--method", "bp-accum", "--batch", "10", "--micro-batch", "3"], "does not divide"),
    (["--method", "ff-pipelined", "--arch", "tv:resnet18", "--res", "64"], "needs a layer stack"),
    (["--device-mem", "lots"], "memory size"),
    (["--method", "ff-naive", "--batch", "1"], "at least 2"),
]


@pytest.mark.parametrize("command", ["sweep", "run"])
@pytest.mark.parametrize("args,message", BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(tmp_path, command, args, message):
    extra = ["--out", str(tmp_path / "out")] if command == "sweep" else []
    assert message in usage_error(invoke(command, *args, *extra))
    assert not (tmp_path / "out" / "cells.csv").exists()


# Every way a command line can be wrong, click's own included, is one line and exit 2.
PARSER_ERRORS = [
    (["sweep", "--classes", "abc"], "--classes takes a whole number"),
    (["sweep", "--warmup", "1.5"], "--warmup takes a whole number"),
    (["sweep", "--no-such-option"], "No such option: --no-such-option"),
    (["sweep", "--batch"], "Option '--batch' requires an argument"),
    (["no-such-command"], "No such command 'no-such-command'"),
    (["fit"], "fit needs --device-mem"),
    (["compare"], "Missing argument"),
    (["report"], "Missing argument 'DIR'"),
    (["list", "archs", "--bogus"], "No such option: --bogus"),
    (["sweep", "--redo", "yes"], "unexpected extra argument"),
    (
        ["sweep", "--method", "bp", "--micro-batch", "16"],
        "--micro-batch applies to methods that split",
    ),
    (["sweep", "--out", ""], "--out takes a folder name, got ''"),
    (["report", ".", "--out", ""], "--out takes a folder name, got ''"),
]


@pytest.mark.parametrize("args,message", PARSER_ERRORS, ids=[" ".join(a) for a, _ in PARSER_ERRORS])
def test_every_command_line_error_is_one_line_and_exit_2(args, message):
    assert message in usage_error(invoke(*args))


def test_the_check_of_one_line_fails_on_clicks_own_usage_box(monkeypatch):
    """The check above can fail: typer's standalone error box is several lines."""
    from membench.cli.app import MembenchGroup

    monkeypatch.setattr(
        MembenchGroup,
        "main",
        lambda self, *a, standalone_mode=True, **k: super(MembenchGroup, self).main(
            *a, standalone_mode=standalone_mode, **k
        ),
    )
    result = invoke("sweep", "--no-such-option")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) > 1


def test_micro_batch_for_one_method_that_takes_it_is_kept(tmp_path):
    from membench.config import build_config

    cells = build_config(
        method="bp,bp-accum", batch=32, micro_batch=16, arch=TINY_ARCH, res=TINY_RES
    ).cells
    assert [(c.method, c.micro_batch) for c in cells] == [("bp", None), ("bp-accum", 16)]


def test_a_profile_with_an_empty_grid_is_refused(tmp_path):
    profile = tmp_path / "empty.toml"
    profile.write_text('arch = "vgg-d2-w8"\ngrid = []\n')
    line = usage_error(invoke("sweep", "--profile", str(profile), "--out", str(tmp_path / "o")))
    assert "profile empty: grid is empty" in line
    assert not (tmp_path / "o").exists()


def test_an_unreachable_ray_address_is_one_line_without_waiting(tmp_path):
    line = usage_error(
        invoke(
            "sweep",
            "--arch",
            TINY_ARCH,
            "--res",
            str(TINY_RES),
            "--device",
            "cpu",
            "--executor",
            "ray",
            "--ray-address",
            "127.0.0.1:1",
            "--out",
            str(tmp_path / "o"),
        )
    )
    assert "cannot reach a Ray cluster at 127.0.0.1:1" in line
    assert not (tmp_path / "o").exists()  # no folder, no lock left behind


def test_an_estimate_sweep_names_its_device_once(tmp_path):
    result = invoke(
        "sweep",
        "--arch",
        TINY_ARCH,
        "--res",
        str(TINY_RES),
        "--batch",
        "2",
        "--estimate",
        "--isolation",
        "none",
        "--out",
        str(tmp_path / "o"),
    )
    assert result.exit_code == 0, result.output
    assert "1 cell(s) on cuda (estimate), 0 already finished" in result.output
    assert "(estimate) (estimate)" not in result.output


def test_the_summary_table_tells_cells_of_one_method_apart_by_their_tooling():
    from rich.console import Console

    from membench.cli.display import summary_table
    from membench.schema import Cell, CellResult

    cells = [
        Cell(method="bp-ckpt", arch="vgg8", res=32, batch=64),
        Cell(method="bp-ckpt", arch="vgg8", res=32, batch=64, micro_batch=16, precision="bf16"),
    ]
    console = Console(record=True, width=200)
    console.print(summary_table([CellResult(c, "cpu", "x", status="ok") for c in cells], "t"))
    lines = [line for line in console.export_text().splitlines() if "bp-ckpt" in line]
    assert len(lines) == 2 and lines[0] != lines[1]
    assert "bf16 mb16" in lines[1] and "mb16" not in lines[0]


def test_output_that_cannot_be_written_is_one_line(monkeypatch):
    """`membench timeline DIR > /dev/full` (or any command's output on a full disk) ends in one
    line and exit 1, not a traceback."""
    import errno
    import os

    import rich.console

    def full(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rich.console.Console, "_write_buffer", full)
    result = invoke("list", "methods")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip() == (
        "membench: error: cannot write the output: No space left on device"
    )


def test_the_summary_never_cuts_names_nor_shows_a_small_peak_as_zero():
    """plain-net and plain-stack looked alike ('plain-…'), and a 37 KiB peak read 0.000 GiB."""
    from rich.console import Console

    from membench.cli.display import print_whole, summary_table
    from membench.schema import Cell, CellResult

    results = [
        CellResult(
            Cell(method="ff-pipelined", arch=arch, res=32, batch=64),
            "cpu",
            "x",
            peak_allocated_bytes=38_320,
            flops_per_step=4_000_000,
        )
        for arch in ("membench_models:plain_net", "membench_models:plain_stack")
    ]
    console = Console(record=True, width=80)  # a pipe's width: narrower than the table
    print_whole(console, summary_table(results, "t"))
    text = console.export_text()
    assert "membench_models:plain_net " in text and "membench_models:plain_stack " in text
    assert "37.42 KiB" in text and "0.000" not in text and "0.004" in text  # GFLOP/step


def test_small_sizes_take_the_unit_that_fits_them():
    from membench.units import format_gib

    assert format_gib(3 * 2**30 / 2) == "1.500 GiB" and format_gib(2**30 / 64) == "0.016 GiB"
    assert format_gib(38_320) == "37.42 KiB" and format_gib(0) == "0 B"
    assert format_gib(5 * 2**20, digits=1) == "5 MiB"
