"""The command line: listing, provenance, one-cell runs and the one-line errors (exit 2)."""

import json

import pytest
from typer.testing import CliRunner

from conftest import TINY_ARCH, TINY_RES
from helpers import usage_error
from membench.cli import app

cli = CliRunner()


def invoke(*args):
    return cli.invoke(app, list(args))


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("sweep", "run", "list", "env", "verify"):
        assert command in result.output


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
    for key in ("membench_version", "git_sha", "python", "torch_version", "cuda_version", "cpu_model",
                "torch_threads", "hostname"):
        assert key in info


def test_run_prints_a_summary():
    result = invoke("run", "--arch", TINY_ARCH, "--res", str(TINY_RES), "--batch", "2",
                    "--warmup", "1", "--steps", "3", "--device", "cpu")
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
