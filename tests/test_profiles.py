"""Profiles and the one sweep configuration: shipped profiles load and expand, they combine left
to right, flags win, and every bad value is a one-line error (exit 2 from the CLI)."""

from __future__ import annotations

import pytest
from helpers import usage_error
from typer.testing import CliRunner

from membench.cli import app
from membench.config import build_config
from membench.errors import InputError
from membench.profiles import ProfileError, available_profiles, find_profile, load_profile

SHIPPED = ("quick", "paper-vgg8-32", "paper-d7", "laptop-8gb")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_load_and_expand_to_valid_grids(name):
    assert name in available_profiles()
    assert build_config([name]).cells


def test_paper_d7_is_the_papers_grid_with_bp_accum_as_two_micro_batches_of_64():
    cells = build_config(["paper-d7"]).cells
    assert {(c.arch, c.res, c.classes) for c in cells} == {("vgg11", 224, 100)}
    assert sorted({c.batch for c in cells if c.method == "bp"}) == [32, 64, 96, 128]
    assert [(c.batch, c.micro_batch) for c in cells if c.method == "bp-accum"] == [(128, 64)]


def test_device_profile_combines_and_explicit_flags_win():
    config = build_config(["paper-vgg8-32", "laptop-8gb"], batch="64")
    cells = config.cells
    # a device profile's budget is its usable memory, not the marketing 8 GiB
    assert {c.device_mem_bytes for c in cells} == {7966 * 2**20}  # 7.78 GiB, to the MiB
    assert config.options.device_profile == "laptop-8gb"
    assert {c.batch for c in cells} == {64}
    assert build_config(["laptop-8gb"], device_mem="1GiB").grids[0].device_mem_bytes == (2**30,)
    # later profiles win key by key, and a [[grid]] table wins over its profile's top level
    assert build_config(["paper-d7", "laptop-8gb"]).options.timeout_s == 1800
    assert build_config(["paper-d7", "paper-vgg8-32"]).options.timeout_s == 900


def test_profiles_are_found_from_another_directory_and_cwd_profiles_come_first(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert "quick" in available_profiles()
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "quick.toml").write_text("batch = [3]\n")
    assert find_profile("quick") == tmp_path / "profiles" / "quick.toml"
    assert load_profile("quick").settings == {"batch": [3]}


BAD_PROFILES = [
    ('colour = "red"\n', "unknown key 'colour'; valid:"),
    ('batch = ["abc"]\n', "batch takes a whole number"),
    ("batch = [0]\n", "at least 1"),
    ('classes = "ten"\n', "whole number"),
    ("warmup = -1\n", "at least 0"),
    ("timeout = 0\n", "timeout"),
    ("timeout = inf\n", "timeout takes seconds (a finite number > 0), got inf"),
    ("timeout = nan\n", "timeout takes seconds (a finite number > 0), got nan"),
    ('device_mem = "lots"\n', "device_mem"),
    ('isolation = "thread"\n', "isolation takes process, none"),
    ("batch = [\n", "not valid TOML"),
    ("[[grid]]\nwidth = 3\n", "unknown key 'width' in [[grid]]"),
]


@pytest.mark.parametrize(("text", "needle"), BAD_PROFILES, ids=[n for _, n in BAD_PROFILES])
def test_bad_profiles_give_one_line_errors(tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        build_config([str(path)])
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert needle in usage_error(
        CliRunner().invoke(app, ["sweep", "--profile", str(path), "--out", str(tmp_path / "o")])
    )


def test_unknown_profile_names_the_valid_ones():
    with pytest.raises(ProfileError, match=r"unknown profile 'nope'; valid: .*quick"):
        load_profile("nope")


def test_list_profiles_shows_the_shipped_ones():
    result = CliRunner().invoke(app, ["list", "profiles"])
    assert result.exit_code == 0
    for name in SHIPPED:
        assert name in result.output


def test_a_profile_that_is_not_utf8_is_a_one_line_error_and_list_profiles_survives_it(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "profiles").mkdir()
    path = tmp_path / "profiles" / "latin1.toml"
    path.write_bytes('description = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ProfileError, match="not UTF-8") as err:
        load_profile("latin1")
    assert "\n" not in str(err.value)
    result = CliRunner().invoke(app, ["sweep", "--profile", "latin1", "--out", str(tmp_path / "o")])
    assert "not UTF-8" in usage_error(result)
    listed = CliRunner().invoke(app, ["list", "profiles"])
    assert listed.exit_code == 0, listed.output
    assert "latin1" in listed.output and "unreadable" in listed.output
