"""Shared test setup: GPU tests are skipped without CUDA; tiny cells keep the suite fast on 2
cores."""

from __future__ import annotations

import os

import pytest
import torch

# The CPU's GEMM calibration (once per sweep) is a second by default; tests need only a figure.
os.environ.setdefault("MEMBENCH_CALIBRATION_S", "0.1")
# transformers models are built from their configs: no test may reach the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# A conv stack small enough that a step takes milliseconds on the CPU.
TINY_ARCH = "vgg-d3-w8"
TINY_RES = 8


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    if os.environ.get("MEMBENCH_REQUIRE_GPU") == "1":
        # On a GPU runner a missing CUDA (driver too old for the wheel, no device visible) must
        # fail the gate, not skip every test and pass.
        raise pytest.UsageError("MEMBENCH_REQUIRE_GPU=1 but torch.cuda.is_available() is False")
    skip = pytest.mark.skip(reason="needs CUDA (gpu marker); run `pytest -m gpu` on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _every_written_row_has_a_possible_mfu(request):
    """After each test, every measured CPU row it wrote under tmp_path (in this process or a
    subprocess) has 0 < MFU <= 1 where it has a peak (helpers.mfu_problems)."""
    # asked for now, so tmp_path is torn down after this check, not before
    tmp_path = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if tmp_path is None:
        return
    from helpers import mfu_problems

    from membench.results import read_rows

    for path in tmp_path.rglob("cells.csv"):
        try:
            rows = read_rows(path)[1]
        except ValueError:  # a test's deliberately broken file
            continue
        problems = mfu_problems(rows)
        assert not problems, f"{path}: {problems}"


@pytest.fixture(autouse=True)
def _few_threads():
    """Tests share 2 cores; pin torch to one thread so parallel work does not oversubscribe."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
