"""Assertions shared by the test modules."""

from __future__ import annotations


def usage_error(result) -> str:
    """Assert a CLI result is bad input handled the membench way: exit 2, a clean exit (no
    escaped exception, no traceback) and exactly one line on stderr, ``membench: error: ...``.
    Returns that line."""
    assert result.exit_code == 2, result.output
    # CliRunner catches exceptions instead of printing tracebacks: check what it caught.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("membench: error:"), result.stderr
    return lines[0]


def mfu_problems(rows) -> list[str]:
    """What is wrong with the MFU of measured CPU rows (``cells.csv`` rows, as read or as
    ``CellResult.row()``): every ok row with FLOPs and a peak must have 0 < MFU <= 1; a row
    without a peak must say why in ``peak_source`` or have none at all (a test that gives
    none). Checked on every row the tests write (conftest.py)."""
    from membench.schema import is_estimate_row, parse_value

    problems = []
    for row in rows:
        if is_estimate_row(row) or not str(row.get("device", "")).startswith("cpu"):
            continue
        if (
            row.get("status") != "ok"
            or parse_value("flops_per_step", row.get("flops_per_step")) is None
        ):
            continue
        mfu = parse_value("mfu", row.get("mfu"))
        peak = parse_value("peak_tflops", row.get("peak_tflops"))
        name = row.get("cell_id")
        if peak is not None and (mfu is None or not 0 < mfu <= 1):
            problems.append(f"{name}: MFU {mfu!r} against a peak of {peak} TFLOP/s")
        elif peak is None and mfu is not None:
            problems.append(f"{name}: MFU {mfu!r} without a peak")
    return problems


def install_example(tmp_path, monkeypatch, example, distribution: str, entry_points: str) -> None:
    """What `pip install examples/<example>` would leave on sys.path: the package folder plus a
    dist-info folder carrying its entry points (``entry_points``: the entry_points.txt text)."""
    dist = tmp_path / f"{distribution.replace('-', '_')}-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(entry_points)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(example))
