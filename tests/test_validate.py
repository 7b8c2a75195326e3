"""One validation path (membench.validate): every command refuses the same bad arch, GPU name,
comma list or inapplicable option the same way, one line and exit 2, before anything runs."""

import pytest
from helpers import usage_error
from typer.testing import CliRunner

from membench import validate
from membench.cli import app
from membench.measure.flops import resolve_gpu
from membench.settings import ConfigError

cli = CliRunner()
PLAN = ["plan", "--gpu", "laptop-8gb", "--res", "8", "--batch", "2"]
FIT = ["fit", "--device-mem", "1GiB", "--res", "8", "--device-kind", "cpu"]


def invoke(*args):
    return cli.invoke(app, list(args))


@pytest.mark.parametrize("arch", ["resnet57", "tv:nonexistent"])
@pytest.mark.parametrize("command", [PLAN, FIT, ["sweep", "--res", "8"]])
def test_every_command_refuses_an_arch_that_does_not_exist(command, arch):
    line = usage_error(invoke(*command, "--arch", arch))
    assert "resnet57" in line or "unknown torchvision model 'nonexistent'" in line
    # plan used to print its header and "no configuration fits" and exit 0
    assert "no configuration fits" not in line


def test_an_ambiguous_gpu_names_its_candidates():
    line = usage_error(invoke("plan", "--gpu", "H100", "--device-mem", "8GiB"))
    assert "ambiguous" in line
    for board in ("NVIDIA H100 80GB HBM3", "NVIDIA H100 NVL", "NVIDIA H100 PCIe"):
        assert board in line
    assert resolve_gpu("4090")[0] == "NVIDIA GeForce RTX 4090"  # one candidate: that one
    assert resolve_gpu("H100 NVL")[0] == "NVIDIA H100 NVL"
    assert "unknown GPU" in usage_error(invoke("plan", "--gpu", "Z999", "--device-mem", "8GiB"))


@pytest.mark.parametrize(
    "command",
    [
        ["sweep", "--arch", "vgg-d2-w8", "--res", "8", "--batch", "1,2,,4"],
        [*PLAN, "--arch", "vgg-d2-w8", "--precision", "fp32,,bf16"],
        [*FIT, "--arch", "vgg-d2-w8", "--method", "bp,"],
        ["schedule", "--devices", "2,,4"],
        ["report", "results", "--budget", "1GiB,,2GiB"],
        ["sweep", "--profile", "quick,,quick"],
    ],
)
def test_an_empty_item_in_a_comma_list_is_refused(command):
    assert "empty item" in usage_error(invoke(*command))


def test_an_empty_item_is_refused_from_python_too():
    with pytest.raises(ConfigError, match="empty item"):
        validate.axis("batch", "1,2,,4")
    with pytest.raises(ConfigError, match="empty value"):
        validate.axis("batch", [1, ""])
    assert validate.axis("batch", " 1, 2 ,4") == (1, 2, 4)


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["--method", "bp", "--schedule", "gpipe"], "--schedule applies to pipelines"),
        (["--method", "bp,bp-ckpt", "--devices", "2"], "--devices applies to methods that span"),
        (["--method", "bp", "--micro-batch", "4"], "--micro-batch applies to methods that split"),
    ],
)
def test_an_option_no_method_of_the_grid_takes_is_refused(options, needle):
    line = usage_error(invoke("sweep", "--arch", "vgg-d2-w8", "--res", "8", *options))
    assert needle in line


def test_an_option_some_method_of_the_grid_takes_is_fine():
    config = validate.axis("method", "bp,bp-pp")
    assert config == ("bp", "bp-pp")
    from membench.config import build_config

    cells = build_config(
        arch="vgg-d4-w8",
        res=8,
        batch=8,
        micro_batch=2,
        method="bp,bp-pp",
        devices=2,
        schedule="gpipe",
    ).cells
    assert {(c.method, c.devices, c.schedule) for c in cells} == {
        ("bp", 1, None),
        ("bp-pp", 2, "gpipe"),
    }


def test_fit_micro_batch_names_every_method_that_takes_one():
    line = usage_error(invoke(*FIT, "--arch", "vgg-d2-w8", "--method", "bp", "--micro-batch", "2"))
    assert "bp-ckpt" in line and "ff-pipelined" in line  # not a list written by hand


def test_fit_below_the_smallest_runnable_batch_says_none_without_a_torch_error():
    # ff's classifier BatchNorm1d cannot train on one sample: the search starts at 2, and when
    # 2 does not fit it must not try 1 (it used to, printing torch's ValueError and its path)
    result = invoke(*FIT[:2], "1", *FIT[3:], "--arch", "vgg-d2-w8", "--method", "ff-naive")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("ff-naive"))
    assert "none" in line and "batch 2" in line
    assert "ValueError" not in result.output and "site-packages" not in result.output
