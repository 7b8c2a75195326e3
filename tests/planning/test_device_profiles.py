"""Device profiles: every shipped card loads with a source for every figure, a profile file is
a sweep profile whose budget is the usable memory, and a figure without a source (or a bad
one) is a one-line error."""

from __future__ import annotations

import pytest

from membench import config
from membench.config import build_config
from membench.measure.peaks import gpu_peak
from membench.planning.device_profiles import (
    DEFAULT_DEVICE_PROFILE,
    DeviceProfileError,
    device_profile,
    device_profiles,
    device_table_markdown,
    parse_device_table,
)
from membench.planning.workspace import cublas_workspace_bytes

REQUIRED = ("laptop-8gb", "rtx-4090", "a100-40gb", "a100-80gb", "h100-80gb", "h200")


def test_the_required_cards_are_device_profiles_with_a_source_for_every_figure():
    names = device_profiles()
    assert set(REQUIRED) <= set(names)
    for name in names:
        profile = device_profile(name)
        assert gpu_peak(profile.gpu) is not None, profile.gpu  # one GPU table, by name
        assert 0 < profile.usable.value <= profile.memory.value
        assert profile.context.value < profile.context_eager.value  # lazy loading loads less
        for key, figure in profile.figures().items():
            assert figure.source.strip(), (name, key)
            assert figure.label().startswith("assumed: ") == figure.assumed


def test_a_device_profile_is_a_sweep_profile_whose_budget_is_its_usable_memory():
    profile = device_profile("a100-40gb")
    options = build_config(["quick", "a100-40gb"]).options
    cells = build_config(["quick", "a100-40gb"]).cells
    assert options.device_profile == "a100-40gb" and options.gpu == profile.gpu
    assert {cell.device_mem_bytes for cell in cells} == {int(profile.usable.value)}
    # the marketing size is not the budget
    assert int(profile.usable.value) < 40 * 2**30


def test_cublas_workspace_is_torchs_default_for_the_compute_capability():
    assert device_profile("a100-40gb").cublas_workspace.value == 4096 * 1024 * 2 + 16 * 1024 * 8
    assert device_profile("h100-80gb").cublas_workspace.value == 4096 * 1024 * 8
    assert cublas_workspace_bytes((8, 0), ":4096:8")[0] == 32 * 2**20  # the variable wins


def test_context_follows_cuda_module_loading(monkeypatch):
    profile = device_profile("laptop-8gb")
    monkeypatch.setenv("CUDA_MODULE_LOADING", "EAGER")
    assert profile.context_bytes() == profile.context_eager.value
    monkeypatch.setenv("CUDA_MODULE_LOADING", "LAZY")
    assert profile.context_bytes() == profile.context.value
    assert profile.context_bytes("eager") == profile.context_eager.value


def test_the_default_device_profile_is_named_once():
    assert config.DEFAULT_DEVICE_PROFILE == DEFAULT_DEVICE_PROFILE
    assert DEFAULT_DEVICE_PROFILE in device_profiles()


GOOD = {
    "compute_capability": "8.0",
    "memory": {"value": "40GiB", "source": "a datasheet"},
    "usable": {"value": "39GiB", "source": "measured: x", "assumed": False},
    "context": {"value": "400MiB", "source": "y", "assumed": True},
    "context_eager": {"value": 800 * 2**20, "source": "z", "assumed": True},
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"memory": {"value": "40GiB"}}, "memory must be a table with a value and a source"),
        ({"context": {"value": "1MiB", "source": " "}}, "needs a non-empty source"),
        ({"context": {"value": "1MiB", "source": "s", "assumed": "yes"}}, "assumed = true"),
        ({"usable": {"value": "41GiB", "source": "s"}}, "more than the card's memory"),
        ({"compute_capability": "sm80"}, "compute_capability takes"),
        ({"colour": 1}, "unknown [card] key 'colour'"),
        ({"conv_workspace_on": {"value": -1, "source": "s"}}, "ratio must be a number >= 0"),
        ({"memory": {"value": "lots", "source": "s"}}, "cannot read a memory size"),
    ],
)
def test_a_bad_card_table_is_a_one_line_error(change, message):
    parse_device_table("good", "NVIDIA A100-SXM4-40GB", GOOD)  # the table itself is fine
    with pytest.raises(DeviceProfileError, match="device profile bad") as err:
        parse_device_table("bad", "NVIDIA A100-SXM4-40GB", {**GOOD, **change})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_profile_without_a_card_table_is_no_device_profile():
    with pytest.raises(DeviceProfileError, match="no \\[card\\] table"):
        device_profile("quick")
    with pytest.raises(DeviceProfileError, match="device profiles: "):
        device_profile("no-such-card")


def test_the_docs_show_the_device_table_as_the_profiles_give_it():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "device-total.md").read_text()
    assert device_table_markdown() in text  # every shipped device profile, as it is
