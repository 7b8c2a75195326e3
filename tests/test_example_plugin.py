"""The README's "write your own runner" example registers and passes `membench verify`."""

from pathlib import Path

import pytest
from helpers import install_example

from membench import runners
from membench.verify import verify

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "membench-sgd"


@pytest.fixture
def example_installed(tmp_path, monkeypatch):
    install_example(
        tmp_path,
        monkeypatch,
        EXAMPLE,
        "membench-sgd",
        "[membench.methods]\nbp-sgd = membench_sgd:SGDRunner\n",
    )
    runners._entry_points.cache_clear()
    yield
    runners._entry_points.cache_clear()


def test_example_runner_is_listed_and_verifies(example_installed):
    assert "bp-sgd" in runners.available_methods()
    results = {r.check: r for r in verify(["bp-sgd"])}
    assert results["gradients"].passed, results["gradients"].detail
    assert results["learns"].passed, results["learns"].detail
