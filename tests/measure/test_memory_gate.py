"""The CPU memory gate: the tracker's bytes for every built-in method must not grow.

Tracker figures are deterministic for the same code and torch version (the same on 1 or 2
threads), so the committed baseline is compared exactly. After a deliberate change, re-record
with ``python scripts/record_baseline.py --cpu`` and commit membench/baselines/cpu.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from membench.compare import compare_results
from membench.gating import (
    CPU_BASELINE_DIR,
    RECORD_CPU_COMMAND,
    BaselineError,
    cpu_gate_cells,
    measure_cpu_gate,
    measured_device_name,
    replace_folder,
)
from membench.results import append_result, read_cells
from membench.runners import get_runner
from membench.schema import CellResult


def _explain(comparison) -> str:
    lines = [f"{r.cell_id}: {reason}" for r in comparison.regressions for reason in r.reasons]
    lines += [f"missing in this run: {c['cell_id']}" for c in comparison.only_in_baseline]
    lines += [f"not in the baseline: {c['cell_id']}" for c in comparison.only_in_new]
    lines += comparison.notes
    lines.append(
        f"if the change is intended, re-record with `{RECORD_CPU_COMMAND}` and commit "
        "membench/baselines/cpu"
    )
    return "\n".join(lines)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return measure_cpu_gate(tmp_path_factory.mktemp("cpu_gate"))
    finally:
        torch.set_num_threads(previous)


def test_cpu_memory_matches_baseline(measured):
    assert (CPU_BASELINE_DIR / "cells.csv").exists(), (
        f"no CPU memory baseline; record it with `{RECORD_CPU_COMMAND}` and commit "
        "membench/baselines/cpu"
    )
    cells = read_cells(measured)
    assert list(cells["status"]) == ["ok"] * len(cpu_gate_cells()), cells["error"].tolist()
    assert set(cells["memory_source"]) == {"tracker"}
    comparison = compare_results(
        CPU_BASELINE_DIR, measured, max_mem_increase_pct=0.0, max_tput_drop_pct=None
    )
    assert comparison.passed, _explain(comparison)
    # Every cell gated, none silently skipped: the baseline and the grid have not drifted apart.
    assert not comparison.only_in_new, _explain(comparison)
    assert len(comparison.rows) == len(cpu_gate_cells())
    assert all(r.mem_change_pct is not None for r in comparison.rows)


def test_gate_catches_a_hungrier_runner(measured, tmp_path, monkeypatch):
    """A runner that keeps 4 KiB more alive during its step must fail the exact gate."""
    bp_runner = get_runner("bp")
    original_step = bp_runner.step

    def hungrier_step(self, images, labels):
        extra = torch.empty(1024)  # alive for the whole step, so it adds to the peak
        out = original_step(self, images, labels)
        del extra
        return out

    monkeypatch.setattr(bp_runner, "step", hungrier_step)
    bp_cells = [c for c in cpu_gate_cells() if c.method == "bp"]
    hungrier = measure_cpu_gate(tmp_path / "hungrier", bp_cells)
    comparison = compare_results(
        measured, hungrier, max_mem_increase_pct=0.0, max_tput_drop_pct=None, allow_missing=True
    )
    assert [r.cell_id for r in comparison.regressions] == [
        c.cell_id for c in bp_cells
    ]  # fp32, bf16
    assert all(r.peak_new - r.peak_baseline == 4096 for r in comparison.regressions)


def test_a_failed_recording_never_replaces_the_baseline(tmp_path):
    """The checks run on the new folder before the swap: a bad recording leaves the old one."""
    target = tmp_path / "baseline"
    target.mkdir()
    (target / "cells.csv").write_text("the committed baseline\n")
    cell = cpu_gate_cells()[0]

    def failed_recording(folder):
        measure_cpu_gate(folder, [cell])
        append_result(
            folder,
            CellResult(
                dataclasses.replace(cell, batch=8),
                "cpu",
                "Test CPU",
                status="oom",
                error="OutOfMemoryError: x",
            ),
        )

    with pytest.raises(BaselineError, match="1 cell\\(s\\) did not run ok"):
        replace_folder(target, failed_recording)
    assert (target / "cells.csv").read_text() == "the committed baseline\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baseline"]  # no temporary folder left

    # A good recording replaces it; a function target names the folder after the rows' device.
    def named(folder):
        return tmp_path / measured_device_name(folder).replace(" ", "-")

    folder = replace_folder(named, lambda folder: measure_cpu_gate(folder, [cell]), parent=tmp_path)
    assert folder.parent == tmp_path and list(read_cells(folder)["status"]) == ["ok"]
    folder = replace_folder(target, lambda folder: measure_cpu_gate(folder, [cell]))
    assert list(read_cells(target)["cell_id"]) == [cell.cell_id]
