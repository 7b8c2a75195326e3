"""The row schema: torch-free, one rule for estimates, device strings and byte spellings."""

from __future__ import annotations

import pytest

from membench.schema import (
    CELL_COLUMNS,
    Cell,
    CellResult,
    DeviceSpecError,
    cuda_index,
    device_kind,
    estimate_device,
    is_estimate_row,
    parse_device,
)
from membench.units import format_bytes, format_size, parse_bytes


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"device": "cuda (estimate)", "memory_source": "estimate", "status": "estimated"}, True),
        (
            {"device": "cpu (estimate)", "memory_source": "", "status": "error"},
            True,
        ),  # failed estimate
        ({"device": "cuda:0", "memory_source": "cuda_allocator", "status": "ok"}, False),
        ({"device": "cpu", "memory_source": "tracker", "status": "oom"}, False),
        ({"device": "cpu", "memory_source": "", "status": "error"}, False),
    ],
)
def test_what_makes_a_row_an_estimate(row, expected):
    assert is_estimate_row(row) is expected


def test_an_estimated_result_knows_it_is_one():
    cell = Cell("bp", "vgg8", 32, 4)
    assert CellResult(cell, estimate_device("cuda"), "estimate").is_estimate
    assert not CellResult(cell, "cuda:0", "NVIDIA H200").is_estimate
    assert list(CellResult(cell, "cpu", "x").row()) == CELL_COLUMNS


def test_device_strings():
    assert parse_device("cuda:1") == ("cuda", 1) and parse_device(" CUDA ") == ("cuda", None)
    assert parse_device("auto") == ("auto", None) and parse_device("cpu") == ("cpu", None)
    for bad in ("tpu", "cpu:1", "cuda:x", "auto:0"):
        with pytest.raises(DeviceSpecError, match="valid: auto, cpu, cuda, cuda:N"):
            parse_device(bad)
    assert [device_kind(d) for d in ("cpu", "cuda:3", "cuda (estimate)")] == ["cpu", "cuda", "cuda"]
    assert [cuda_index(d) for d in ("cuda", "cuda:2", "cpu", "cuda (estimate)")] == [
        0,
        2,
        None,
        None,
    ]


def test_byte_spellings():
    assert format_bytes(8 * 2**30) == "8GiB" and format_bytes(1536) == "1.5KiB"
    assert format_bytes(1000) == "1000B"
    assert parse_bytes(format_bytes(12 * 2**30)) == 12 * 2**30 and parse_bytes("8GB") == 8 * 10**9
    assert format_size(8 * 2**30) == "8 GiB" and format_size(512) == "512 B"
    for bad in ("lots", "0", "-1GiB"):
        with pytest.raises(ValueError):
            parse_bytes(bad)


def test_the_readme_lists_every_cells_csv_column_in_order():
    from pathlib import Path

    text = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert "`" + ", ".join(CELL_COLUMNS) + "`" in text
