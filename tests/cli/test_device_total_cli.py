"""The device total on the command line: fit and plan judge a card by it and name the term that
decides, `membench device show` prints every figure with its source, and bad settings are one
line and exit 2."""

from __future__ import annotations

import pytest
from helpers import usage_error
from typer.testing import CliRunner

from membench.cli import app

TINY = ["--arch", "vgg-d2-w8", "--res", "8", "--classes", "3"]


def run(*args):
    return CliRunner().invoke(app, list(args))


def test_fit_judges_the_device_total_on_a_device_profile_and_names_the_deciding_term():
    result = run("fit", *TINY, "--method", "bp", "--device-mem", "445MiB", "--max-batch", "1024")
    assert result.exit_code == 0, result.output
    assert "judged by the device total on a100-40gb" in result.output
    # 445 MiB less a 426 MiB context and 16 MiB of cuBLAS workspaces leaves the tensors
    # little: a finite largest batch, and the next one's figure with the term that decides
    line = next(line for line in result.output.splitlines() if line.startswith("bp "))
    assert "(decided by the " in line and "--max-batch reached" not in line
    by_tensors = run(
        "fit",
        *TINY,
        "--method",
        "bp",
        "--device-mem",
        "600MiB",
        "--max-batch",
        "256",
        "--fit-by",
        "allocated",
    )
    assert "judged by the tensors' peak" in by_tensors.output
    assert "--max-batch reached" in by_tensors.output  # no context: everything fits


def test_device_show_prints_every_profile_with_its_sources():
    result = run("device", "show")
    assert result.exit_code == 0
    for name in ("laptop-8gb", "rtx-4090", "a100-40gb", "a100-80gb", "h100-80gb", "h200"):
        assert name in result.output
    assert "assumed:" in result.output and "CublasHandlePool.cpp" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sweep", "--alloc-conf", "expandable_segments:Yes"], "True or False"),
        (["sweep", "--cudnn-benchmark", "maybe"], "--cudnn-benchmark takes off, on"),
        (["sweep", "--fit-by", "vibes"], "--fit-by takes total, reserved, allocated"),
        (["device", "show", "quick"], "no [card] table"),
        (["fit", *TINY, "--device-profile", "nope", "--device-mem", "1GiB"], "unknown profile"),
        (
            ["sweep", "--isolation", "none", "--alloc-conf", "default;expandable_segments:True"],
            "needs --isolation process",
        ),
    ],
)
def test_bad_device_total_settings_are_one_line_errors(args, message):
    assert message in usage_error(run(*args))


@pytest.mark.slow  # two sweeps end to end: seconds each
def test_a_sweep_of_estimates_judges_its_budget_by_the_fit_by_it_is_given(tmp_path):
    from membench.results import read_results

    args = [
        "sweep", "--estimate", *TINY, "--batch", "4", "--method", "bp", "--warmup", "1",
        "--steps", "1", "--isolation", "none", "--device-mem", "430MiB",
    ]  # fmt: skip
    assert run(*args, "--out", str(tmp_path / "total")).exit_code == 0
    [total] = read_results(tmp_path / "total")
    # 430 MiB holds the tensors but not the a100-40gb profile's 426 MiB context beside them
    assert total.status == "oom" and "decided by the CUDA context" in total.error
    assert total.device_profile == "a100-40gb"
    args += ["--fit-by", "allocated", "--device-profile", "h100-80gb"]
    assert run(*args, "--out", str(tmp_path / "tensors")).exit_code == 0
    [tensors] = read_results(tmp_path / "tensors")
    assert tensors.status == "estimated" and tensors.device_profile == "h100-80gb"
