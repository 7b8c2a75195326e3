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
        # found by scripts/battery.py: each of these was accepted, and every estimate of the
        # grid became an error row (or a traceback), or the option was silently dropped
        (["sweep", "--estimate", "--device-profile", "nope"], "--device-profile: unknown profile"),
        (["sweep", "--estimate", "--device-profile", "quick"], "no [card] table"),
        (
            ["sweep", "--estimate", "--alloc-conf", "backend:cudaMallocAsync"],
            "cannot be estimated: backend:cudaMallocAsync is not modelled",
        ),
        (
            ["sweep", "--estimate", "--alloc-conf", "per_process_memory_fraction:0.5"],
            "cannot be estimated",
        ),
        (["sweep", "--device", "cpu", "--fit-by", "reserved"], "applies to CUDA estimates"),
        (["sweep", "--device-profile", "laptop-8gb"], "a measured sweep has no device total"),
        (
            ["sweep", "--estimate", "--device", "cpu", "--device-profile", "laptop-8gb"],
            "a CPU estimate has no device total",
        ),
        (["fit", *TINY, "--device-profile", "quick"], "no [card] table"),
        (
            ["fit", *TINY, "--device-mem", "1GiB", "--device-kind", "cpu", "--fit-by", "reserved"],
            "apply to CUDA estimates",
        ),
        (
            [
                "fit",
                *TINY,
                "--device-mem",
                "1GiB",
                "--device-kind",
                "cpu",
                "--device-profile",
                "h200",
            ],
            "apply to CUDA estimates",
        ),
        (["device", "calibrate", "My_Card"], "a device profile name takes a-z, 0-9 and '-'"),
    ],
)
def test_bad_device_total_settings_are_one_line_errors(args, message):
    assert message in usage_error(run(*args))


def test_the_default_fit_by_on_a_measured_sweep_is_no_error():
    from membench.config import build_config

    assert build_config(fit_by="total", device="cpu").options.fit_by == "total"
    # a device profile file sets the card of any sweep: the emulated card of a measured one
    assert build_config(["laptop-8gb"], device="cpu").options.device_profile == "laptop-8gb"


def test_a_device_profile_given_by_its_path_is_the_card_of_sweep_fit_and_plan(tmp_path):
    from membench.cli.plan import card_of
    from membench.config import build_config
    from membench.planning.device_profiles import device_profile_of
    from membench.profiles import PACKAGE_PROFILES_DIR

    path = tmp_path / "my-card.toml"  # outside ./profiles: found by its path only
    path.write_text((PACKAGE_PROFILES_DIR / "laptop-8gb.toml").read_text())
    config = build_config([str(path)], estimate=True)
    assert device_profile_of(config.options.device_profile).name == "my-card"
    assert device_profile_of(card_of(str(path), {})).name == "my-card"
    assert card_of("NVIDIA H200", {}) is None  # a GPU's name is no card


def test_a_device_profile_that_does_not_read_is_refused_as_the_gpu(tmp_path):
    from membench.profiles import PACKAGE_PROFILES_DIR

    path = tmp_path / "broken.toml"
    text = (PACKAGE_PROFILES_DIR / "laptop-8gb.toml").read_text()
    path.write_text(text.replace('memory = { value = "7966MiB"', 'memory = { value = "lots"'))
    for command in (["fit", "--method", "bp"], ["plan", "--batch", "4"]):
        # was: planned for the default card (a100-40gb) with no word
        assert "[card] memory" in usage_error(run(*command, *TINY, "--gpu", str(path)))


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["plan", "--gpu", "laptop-8gb", "--batch", "4"], ["--objective", "causal-lm"]),
        (["fit", "--device-mem", "1GiB", "--method", "bp"], ["--objective", "causal-lm"]),
        (["fit", "--device-mem", "1GiB", "--method", "bp"], ["--attn-implementation", "sdpa"]),
    ],
)
def test_a_token_setting_on_an_image_arch_is_refused_by_plan_and_fit(command, option):
    # plan dropped it silently; fit estimated each method into an error row
    assert "applies to token models" in usage_error(run(*command, *TINY, *option))


def test_fit_with_seq_on_an_image_arch_names_the_input_it_takes():
    # was: "unknown transformers model type '-d2-w8'" (the arch name cut as an hf: name)
    line = usage_error(run("fit", *TINY, "--device-mem", "1GiB", "--seq", "64"))
    assert "takes images, not token sequences" in line


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
