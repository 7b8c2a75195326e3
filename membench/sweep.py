"""The sweep engine: run a list of cells on one device and append each result as it finishes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .devices import Device
from .envinfo import collect_env
from .grid import Cell
from .protocol import CellResult, run_cell
from .results import append_result, write_env


def run_sweep(
    cells: list[Cell],
    device: Device,
    out_dir: Path,
    *,
    on_result: Callable[[CellResult], None] | None = None,
) -> list[CellResult]:
    """Measure every cell in order, writing ``env.json`` first and each row as it completes."""
    out_dir = Path(out_dir)
    write_env(out_dir, collect_env())
    results = []
    for cell in cells:
        result = run_cell(cell, device)
        append_result(out_dir, result)
        results.append(result)
        if on_result:
            on_result(result)
    return results
