"""The coverage scripts' shared helper (scripts/coverage_common.py): a model's estimate or the
one-line reason it has none, rows kept in a CSV as they come, work bounded in a child."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import coverage_common as coverage  # a script's module, found on the path above


def test_a_model_too_small_for_its_patches_is_refused_with_the_models_reason():
    row = coverage.estimate_model("tiny_models:tiny_vit", 12, "bp", classes=3)
    assert row.status == coverage.REFUSED and not row.estimates
    assert "does not run at resolution 12" in row.reason and "\n" not in row.reason
    assert coverage.peak_text(row).startswith("refused: ")


def test_a_model_that_runs_has_its_peak_and_flops_per_image():
    row = coverage.estimate_model("tiny_models:tiny_vit", 16, "bp", classes=3)
    assert row.status == "estimated", row.reason
    assert row.peak_bytes > 0 and row.flops_per_image > 0 and row.seconds > 0
    assert coverage.peak_text(row).endswith(" MiB")


def test_rows_are_read_back_as_written_one_at_a_time(tmp_path):
    path = tmp_path / "rows.csv"
    rows = [
        coverage.Coverage(
            "swin", "timm:swin_t", 224, "bp", 2, "estimated", 612436480, 2.7e10, 5.9, 28288354
        ),
        coverage.Coverage(
            "beit",
            "timm:beit_b",
            224,
            "bp-ckpt",
            2,
            "error",
            reason="estimate failed: TypeError: x, y | at f.py:1",
        ),
    ]
    for count, row in enumerate(rows, 1):
        coverage.append_row(path, row)
        assert coverage.read_rows(path) == rows[:count]  # on disk as soon as it is appended


def test_a_reason_in_a_table_is_one_short_line_without_where_it_was_raised():
    text = coverage.short_reason("estimate failed: TypeError:\n bad  | at /x/y.py:3", 40)
    assert text == "estimate failed: TypeError: bad"
    assert coverage.short_reason("x" * 50, 20) == "x" * 17 + "..."


def _send_then(what: str, send) -> None:
    send("first")
    if what == "hang":
        time.sleep(60)
    elif what == "raise":
        raise ValueError("the model's own error")
    elif what == "die":
        os._exit(3)


@pytest.mark.slow  # a child process, and one left to run out of its time
@pytest.mark.parametrize(
    ("what", "reason"),
    [
        ("finish", ""),
        ("hang", "no result within 2 s; killed"),
        ("raise", "ValueError: the model's own error"),
        ("die", "the child process ended (exit code 3)"),
    ],
)
def test_bounded_work_ends_in_a_reason_and_keeps_what_it_sent(what, reason):
    received: list = []
    assert coverage.run_bounded(_send_then, (what,), 2.0, received.append) == reason
    assert received == ["first"]
