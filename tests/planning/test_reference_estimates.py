"""A sample of the committed reference estimates, estimated again: every byte column the same.

The whole check is ``scripts/check_reference_estimates.py`` (every cell of every
``results/reference-estimate-*`` folder, through the sweep); this is a few small cells of it,
each a different path of the estimator (BP with its update tooling in bf16, offloaded
activations in micro-batches, pipelined FF in chunks)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

from membench.planning.estimate import estimate_cell
from membench.schema import Cell

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "check_reference_estimates", REPO / "scripts" / "check_reference_estimates.py"
)
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)

POOLED = "reference-estimate-depth-crossover-pooled"
SAMPLE = [
    (POOLED, "bp_vgg-d4-w256_r64_b128_k100_bf16_grads-released_optim-host"),
    (POOLED, "bp-offload_vgg-d4-w256_r64_b128_mb32_k100_bf16_optim-host"),
    (POOLED, "ff-pipelined_vgg-d4-w256_r64_b128_mb32_k100_bf16_grads-released_optim-host"),
]


def reference_row(folder: str, cell_id: str) -> tuple[list[str], dict]:
    with (REPO / "results" / folder / "cells.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        rows = [row for row in reader if row["cell_id"] == cell_id]
        return list(reader.fieldnames), rows[0]


@pytest.mark.parametrize(("folder", "cell_id"), SAMPLE, ids=[c for _, c in SAMPLE])
def test_a_reference_estimate_is_estimated_again_to_the_byte(folder, cell_id):
    header, reference = reference_row(folder, cell_id)
    row = estimate_cell(Cell.from_row(reference), "cuda").row()
    new = {k: "" if v is None else str(v) for k, v in row.items()}
    compared = check.byte_columns(header)
    assert {"peak_allocated_bytes", "flops_per_step", "activations_bytes"} <= set(compared)
    assert [c for c in compared if check.differs(reference, new, c)] == []
    # The comparison can fail: one CUDA block (512 bytes) more in the reference is a difference,
    # and so is a figure the reference has that the new row lacks.
    changed = {**reference, "activations_bytes": str(int(reference["activations_bytes"]) + 512)}
    assert [c for c in compared if check.differs(changed, new, c)] == ["activations_bytes"]
    assert check.differs(reference, {**new, "peak_allocated_bytes": ""}, "peak_allocated_bytes")
