"""The README's "write your own runner" example registers and passes `membench verify`."""

from pathlib import Path

import pytest

from membench import runners
from membench.verify import verify

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "membench-sgd"


@pytest.fixture
def example_installed(tmp_path, monkeypatch):
    # What `pip install examples/membench-sgd` would leave on sys.path: the package plus a
    # dist-info folder carrying its entry points.
    dist = tmp_path / "membench_sgd-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: membench-sgd\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[membench.methods]\nbp-sgd = membench_sgd:SGDRunner\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    runners._entry_points.cache_clear()
    yield
    runners._entry_points.cache_clear()


def test_example_runner_is_listed_and_verifies(example_installed):
    assert "bp-sgd" in runners.available_methods()
    results = {r.check: r for r in verify(["bp-sgd"])}
    assert results["gradients"].passed, results["gradients"].detail
    assert results["learns"].passed, results["learns"].detail
