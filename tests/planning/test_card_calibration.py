"""``membench device calibrate``: a measurement written as a device profile that reads back
figure for figure (checked on the CPU from a made-up measurement) and, on a GPU, a real card
measured in a fresh process."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from membench.cli import app
from membench.config import build_config
from membench.planning.card_calibration import (
    CardMeasurement,
    ConvWorkspace,
    profile_text,
    write_device_profile,
)
from membench.planning.device_profiles import DeviceProfileError, device_profile

MIB = 2**20
MEMBENCH = "import sys; sys.argv[0] = 'membench'; from membench.cli import main; main()"


def measurement(gpu: str = "NVIDIA A100-SXM4-40GB") -> CardMeasurement:
    return CardMeasurement(
        gpu=gpu,
        compute_capability=(8, 0),
        memory=40 * 1024 * MIB,
        usable=39 * 1024 * MIB,
        context=500 * MIB,
        context_eager=900 * MIB,
        cublas_workspace=8 * MIB + 128 * 1024,
        cublas_workspaces=2,
        convs=[
            ConvWorkspace((16, 3, 64, 224, 3, 1), "forward", False, 0, 1000),
            ConvWorkspace((16, 3, 64, 224, 3, 1), "forward", True, 500, 1000),
            ConvWorkspace((16, 64, 64, 112, 3, 1), "backward_weight", True, 2500, 1000),
        ],
        torch_version="2.14.1",
        driver="580.1",
        when="2026-01-01",
    )


def test_a_written_profile_reads_back_figure_for_figure(tmp_path, monkeypatch):
    path = write_device_profile("my-a100", measurement(), tmp_path / "profiles")
    assert (tmp_path / "profiles" / "my-a100.json").exists()
    profile = device_profile(path)
    assert profile.memory.value == 40 * 1024 * MIB and profile.usable.value == 39 * 1024 * MIB
    assert profile.context.value == 500 * MIB and profile.context_eager.value == 900 * MIB
    assert profile.cublas_workspace.value == 8 * MIB + 128 * 1024
    assert profile.conv_workspace_off.value == 0.0
    assert profile.conv_workspace_on.value == 2.5  # the largest ratio over the passes
    assert not any(figure.assumed for figure in profile.figures().values())
    assert "membench device calibrate on NVIDIA A100-SXM4-40GB" in profile.context.source
    # found by name from ./profiles, and a sweep profile whose budget is the usable memory
    monkeypatch.chdir(tmp_path)
    assert device_profile("my-a100").path.endswith("my-a100.toml")
    cells = build_config(["quick", "my-a100"]).cells
    assert {cell.device_mem_bytes for cell in cells} == {39 * 1024 * MIB}


def test_a_profile_that_would_not_read_back_is_not_written(tmp_path):
    with pytest.raises(DeviceProfileError):
        write_device_profile("Bad Name", measurement(), tmp_path)
    broken = measurement()
    broken.usable = broken.memory + 1  # a measurement the profile would refuse
    with pytest.raises(DeviceProfileError, match="more than the card's memory"):
        write_device_profile("broken", broken, tmp_path)
    assert not list(tmp_path.iterdir())
    assert "assumed = true" in profile_text(
        "x", CardMeasurement(**{**measurement().__dict__, "context_eager": None})
    )


def test_calibrate_refuses_a_device_that_is_not_cuda():
    result = CliRunner().invoke(app, ["device", "calibrate", "x", "--device", "cpu"])
    assert result.exit_code == 2 and "CUDA device" in result.output


@pytest.mark.gpu
def test_a_real_card_calibrates_in_a_fresh_process(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", MEMBENCH, "device", "calibrate", "gpu-test", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    profile = device_profile(tmp_path / "gpu-test.toml")
    assert 0 < profile.usable.value <= profile.memory.value
    assert 50 * MIB < profile.context.value < 4096 * MIB
    import torch

    assert profile.cublas_workspace.value > 0
    assert profile.compute_capability == torch.cuda.get_device_capability(0)
