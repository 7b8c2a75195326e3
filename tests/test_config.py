"""The one sweep configuration: flags, profiles and Python build the same validated object."""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import pytest
from helpers import usage_error
from typer.testing import CliRunner

from membench.cli import app
from membench.config import MAX_PARAMETER_BYTES, ConfigError, build_config, expand_grid

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's Python entry point is real: its code block runs as printed."""
    text = README.read_text()
    [code] = re.findall(r"<!-- python-example -->\s*```python\n(.*?)```", text, re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    results = namespace["results"]
    assert results and {r.status for r in results} == {"ok"}
    assert (tmp_path / "results" / "python-example" / "cells.csv").exists()


def test_flags_win_over_profiles_and_apply_to_every_grid():
    config = build_config(["paper-d7"], batch="128", method="bp,ff-pipelined", steps=3)
    assert {(c.method, c.batch) for c in config.cells} == {("bp", 128), ("ff-pipelined", 128)}
    assert {c.steps for c in config.cells} == {3}
    assert config.options.timeout_s == 1800 and {c.classes for c in config.cells} == {100}


def test_the_configuration_is_frozen_and_typed():
    config = build_config(arch="vgg-d2-w8", res="8, 16", batch=[2, 4], device_mem="1MiB")
    assert config.grids[0].res == (8, 16) and config.grids[0].batch == (2, 4)
    assert config.grids[0].device_mem_bytes == (2**20,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.steps = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"batch": "0"}, "--batch must be at least 1, got 0"),
        ({"timeout": float("inf")}, "--timeout takes seconds"),
        ({"isolation": "none", "timeout": 5}, "--timeout needs --isolation process"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"colour": "red"}, "unknown setting 'colour'"),
        ({"method": "bp-accum", "batch": "10", "micro_batch": "3"}, "does not divide"),
    ],
)
def test_every_bad_value_is_one_line_naming_the_setting(values, needle):
    with pytest.raises(ConfigError) as err:
        build_config(**values)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_bad_value_in_a_grid_table_names_its_profile(tmp_path):
    path = tmp_path / "tables.toml"
    path.write_text('arch = ["vgg8"]\n[[grid]]\nbatch = [0]\n')
    with pytest.raises(ConfigError, match="profile tables: batch must be at least 1"):
        build_config([str(path)])


def test_a_cell_whose_weights_alone_pass_one_tib_is_refused_before_anything_is_built(tmp_path):
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="more than 1 TiB"):
        expand_grid(method=["bp"], arch=["vgg-d99999-w99999"], res=[224], batch=[1])
    assert time.perf_counter() - start < 5  # nothing was built; generous bound, not a benchmark
    # just under the limit is allowed: a 1-layer stack of 3 -> W channels has 27W + W params
    width = MAX_PARAMETER_BYTES // 4 // 28
    expand_grid(method=["bp"], arch=[f"vgg-d1-w{width}"], res=[2], batch=[1])
    result = CliRunner().invoke(
        app,
        [
            "sweep",
            "--estimate",
            "--arch",
            "vgg-d99999-w99999",
            "--res",
            "224",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert "refused before building it" in usage_error(result)
    assert not (tmp_path / "out").exists()
