"""A CUDA estimate carries the device total on its device profile's card: the allocator model's
replay of the tracked step, the workspaces and the context; a budget judges the total by default
and names the term that decides; CPU rows have no such terms."""

from __future__ import annotations

import dataclasses

import pytest

from membench.planning.device_profiles import device_profile
from membench.planning.estimate import estimate_cell
from membench.schema import ESTIMATED, OOM, Cell

CELL = Cell("bp", "vgg-d2-w8", 8, 4, classes=3, warmup=1, steps=1)


@pytest.fixture(scope="module")
def laptop_row():
    return estimate_cell(CELL, "cuda", count_flops=False, profile="laptop-8gb")


def test_a_cuda_estimate_carries_the_device_total_and_its_terms(laptop_row):
    row = laptop_row
    profile = device_profile("laptop-8gb")
    assert row.status == ESTIMATED and row.device_profile == "laptop-8gb"
    assert row.context_bytes == profile.context.value
    # the Linear head runs a GEMM forward and backward: two cuBLAS workspaces
    assert row.workspace_bytes == 2 * profile.cublas_workspace.value
    assert row.reserve_slack_bytes >= 0
    terms = row.peak_allocated_bytes + row.workspace_bytes + row.reserve_slack_bytes
    assert row.peak_reserved_bytes == terms
    assert row.device_total_bytes == row.peak_reserved_bytes + row.context_bytes


def test_without_a_profile_the_default_card_is_named_in_the_row():
    row = estimate_cell(CELL, "cuda", count_flops=False)
    assert row.device_profile == "a100-40gb"


def test_cudnn_benchmark_on_adds_the_assumed_convolution_workspace(laptop_row):
    on = estimate_cell(dataclasses.replace(CELL, cudnn_benchmark="on"), "cuda", False, "laptop-8gb")
    assert on.peak_allocated_bytes == laptop_row.peak_allocated_bytes  # tensors unchanged
    assert on.workspace_bytes > laptop_row.workspace_bytes


def test_a_budget_judges_the_device_total_and_names_the_term_that_decides(laptop_row):
    # between the tensors' peak and the total: fits by the allocator's peak, not the card
    budget = laptop_row.peak_allocated_bytes + laptop_row.workspace_bytes
    cell = dataclasses.replace(CELL, device_mem_bytes=budget)
    row = estimate_cell(cell, "cuda", False, "laptop-8gb")
    assert row.status == OOM
    assert "estimated device total" in row.error and "decided by the " in row.error
    assert row.device_total_bytes == laptop_row.device_total_bytes  # the full figure
    by_peak = estimate_cell(cell, "cuda", False, "laptop-8gb", fit_by="allocated")
    assert by_peak.status == ESTIMATED


def test_cpu_rows_have_no_device_terms_and_refuse_cuda_settings():
    row = estimate_cell(CELL, "cpu", count_flops=False)
    assert row.device_total_bytes is None and row.context_bytes is None
    assert row.workspace_bytes is None and row.reserve_slack_bytes is None
    assert row.device_profile == ""
    refused = estimate_cell(dataclasses.replace(CELL, alloc_conf="expandable_segments:True"), "cpu")
    assert refused.status == "error" and "CUDA" in refused.error


def test_the_terms_round_trip_through_cells_csv(laptop_row):
    from membench.schema import CellResult

    again = CellResult.from_row(laptop_row.row())
    for column in ("device_total_bytes", "context_bytes", "workspace_bytes", "device_profile"):
        assert getattr(again, column) == getattr(laptop_row, column)
