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
