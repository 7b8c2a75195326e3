"""membench plan: every family's tooling for one cell, estimated, ranked by a throughput bound."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import usage_error
from typer.testing import CliRunner

from membench.cli import app
from membench.planning.plan import (
    ThroughputBound,
    candidate_cells,
    plan,
    throughput_bound,
    transfer_bytes,
)
from membench.schema import Cell, CellResult

ARCH, RES, BATCH = "vgg-d2-w8", 8, 8
FP32 = ("fp32",)  # half the candidates: the ranking's logic is the same


def test_the_candidates_cover_each_familys_tooling_and_nothing_a_runner_refuses():
    cells = candidate_cells(ARCH, RES, BATCH)
    ids = {cell.cell_id for cell in cells}
    assert "bp-ckpt_vgg-d2-w8_r8_b8_mb4_k10_bf16_optim-host" in ids  # accumulation + ckpt
    assert "bp_vgg-d2-w8_r8_b8_k10_bf16_grads-released_optim-host" in ids
    assert "ff-pipelined_vgg-d2-w8_r8_b8_mb4_k10_bf16_grads-released_optim-host" in ids
    assert not any(
        c.grads == "released" and c.micro_batch and c.method.startswith("bp") for c in cells
    )  # accumulation keeps its gradients
    assert len(ids) == len(cells)


def result(method="bp-offload", micro_batch=4, offloaded=10**9, optimizer=10**9, flops=10**12):
    return CellResult(
        Cell(method, ARCH, RES, BATCH, micro_batch),
        "cuda (estimate)",
        "estimate",
        offloaded_bytes=offloaded,
        offloaded_optimizer_bytes=optimizer,
        flops_per_step=flops,
    )


def test_the_bound_adds_compute_and_link_time_and_names_the_larger():
    # Two micro-batches each offload 1 GB out and back, and 1 GB of moments goes in and out.
    assert transfer_bytes(result()) == 2 * 10**9 * 2 + 2 * 10**9
    bound = throughput_bound(result(), peak_tflops=100.0, link_gbps=10.0)
    assert bound.compute_s == pytest.approx(0.01) and bound.transfer_s == pytest.approx(0.6)
    assert bound.bounded_by == "link" and bound.imgs_per_s == pytest.approx(8 / 0.61)
    fast_link = throughput_bound(result(), peak_tflops=100.0, link_gbps=1e6)
    assert fast_link.bounded_by == "compute"
    assert ThroughputBound(1.0, 0.0, 8).imgs_per_s == 8.0


def test_a_plan_ranks_what_fits_fastest_first():
    everything = plan(ARCH, RES, 4, 2**40, "H200", precisions=FP32)  # 4: no micro-batches
    assert (
        len(everything.ranked)
        == len(everything.rows)
        == len(candidate_cells(ARCH, RES, 4, precisions=FP32))
    )
    speeds = [row.bound.imgs_per_s for row in everything.ranked]
    assert speeds == sorted(speeds, reverse=True)
    # FF skips the input gradients: it bounds faster than every BP at the same precision.
    assert everything.ranked[0].cell.method == "ff-pipelined"
    # judged by the device total (docs/device-total.md): the smallest total alone fits it
    smallest = min(row.peak for row in everything.rows)
    assert smallest == min(row.result.device_total_bytes for row in everything.rows)
    tight = dataclasses.replace(everything, budget_bytes=smallest)
    assert tight.ranked and {row.peak for row in tight.ranked} == {smallest}


@pytest.mark.slow
def test_the_plan_command_prints_the_ranking_and_each_familys_best():
    run = CliRunner().invoke(
        app,
        [
            "plan",
            "--arch",
            ARCH,
            "--res",
            str(RES),
            "--batch",
            "4",
            "--precision",
            "fp32",
            "--device-mem",
            "1GiB",
            "--gpu",
            "H200",
            "--top",
            "3",
        ],
    )
    assert run.exit_code == 0, run.output
    assert "best of each family: ff: ff-pipelined" in run.output and "; bp: bp" in run.output
    assert "   1  ff-pipelined" in run.output and "   4  " not in run.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--device-mem", "1GiB", "--gpu", "no-such-gpu"], "unknown GPU"),
        (["--gpu", "H200"], "plan needs the budget"),
        (
            ["--device-mem", "1GiB", "--gpu", "H200", "--link-gbps", "0"],
            "--link-gbps must be positive",
        ),
    ],
)
def test_bad_plan_input_is_one_line(args, needle):
    run = CliRunner().invoke(app, ["plan", "--arch", ARCH, "--res", str(RES), *args])
    assert needle in usage_error(run)


def test_the_estimates_bar_shows_done_of_total_on_a_terminal_and_nothing_elsewhere():
    import io

    from rich.console import Console

    from membench.cli.display import EstimatesBar

    screen = io.StringIO()
    with EstimatesBar("configurations estimated", Console(file=screen, force_terminal=True)) as bar:
        for done in (1, 2, 3):
            bar.update(done, 3, None)
    assert "configurations estimated" in screen.getvalue() and "3/3" in screen.getvalue()
    log = io.StringIO()
    with EstimatesBar("configurations estimated", Console(file=log)) as bar:
        bar.update(1, 3, None)
    assert log.getvalue() == ""  # a pipe or a file gets the command's table alone
