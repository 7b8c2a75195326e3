"""Standard tooling as grid axes: precision, memory format and compile are settings, cell-id
parts and columns; a compiled CPU cell reports no peak rather than a wrong one; the report keeps
each tooling apart and names each family's best configuration."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import TINY_ARCH, TINY_RES
from helpers import usage_error
from typer.testing import CliRunner

from membench.cli import app
from membench.config import build_config
from membench.execute.sweep import estimate_sweep, run_sweep
from membench.measure.devices import CpuDevice
from membench.measure.protocol import UNTRACKED_COMPILED, count_step_flops
from membench.results import read_cells
from membench.schema import Cell


def test_tooling_axes_expand_into_distinct_cells_and_columns(tmp_path):
    config = build_config(
        arch=TINY_ARCH,
        res=TINY_RES,
        batch=2,
        method="bp,ff-pipelined",
        precision="fp32,bf16",
        memory_format="contiguous,channels_last",
        warmup=1,
        steps=1,
        isolation="none",
    )
    assert len(config.cells) == 8 and len({c.cell_id for c in config.cells}) == 8
    run_sweep(list(config.cells), "cpu", tmp_path, isolation="none")
    frame = read_cells(tmp_path)
    assert set(frame["precision"]) == {"fp32", "bf16"}
    assert set(frame["memory_format"]) == {"contiguous", "channels_last"}
    assert (frame["status"] == "ok").all()
    bf16 = frame[(frame["precision"] == "bf16") & (frame["method"] == "bp")]
    fp32 = frame[(frame["precision"] == "fp32") & (frame["method"] == "bp")]
    assert bf16["activations_bytes"].max() < fp32["activations_bytes"].min()  # autocast ran


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--precision", "fp64"], "--precision takes fp32, bf16, fp16"),
        (["--memory-format", "nhwc"], "--memory-format takes contiguous, channels_last"),
        (["--compile", "default", "--warmup", "0"], "--compile needs --warmup 1 or more"),
        (["--compile", "default", "--estimate"], "an estimate of a compiled cell is refused"),
    ],
)
def test_bad_tooling_is_one_line_and_exit_2(tmp_path, args, needle):
    result = CliRunner().invoke(
        app,
        [
            "sweep",
            "--arch",
            TINY_ARCH,
            "--res",
            str(TINY_RES),
            "--device",
            "cpu",
            *args,
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert needle in usage_error(result)


def test_a_compiled_cpu_cell_has_no_peak_but_its_compile_time_and_flops(monkeypatch):
    # torch.compile itself takes tens of seconds on a CPU; the protocol's handling is the point
    from membench.execute.worker import Target, open_target
    from membench.runners.base import Runner

    monkeypatch.setattr(Runner, "compiled", lambda self, fn: fn)
    cell = Cell("bp", TINY_ARCH, TINY_RES, 2, warmup=1, steps=2, compile="default")
    result = open_target(Target("cpu")).run(cell)
    assert result.status == "ok" and result.peak_allocated_bytes is None
    assert result.memory_source == UNTRACKED_COMPILED and result.breakdown is None
    assert result.compile_s is not None and result.compile_s > 0
    # Counted on one eager step on fake tensors, as every cell's FLOPs are.
    eager = dataclasses.replace(cell, compile="none")
    assert result.flops_per_step == count_step_flops(eager) and result.imgs_per_s


@pytest.mark.slow
def test_the_report_keeps_each_tooling_apart_and_names_each_familys_best(tmp_path):
    from membench.report import build_report, load_cells, make_figures

    cells = [
        Cell(m, "vgg11", 224, 128, mb, classes=100, precision=p, warmup=1, steps=1)
        for m, mb in (("bp", None), ("ff-pipelined", None), ("ff-pipelined", 16), ("bp-accum", 16))
        for p in ("fp32", "bf16")
    ]
    estimate_sweep(cells, "cuda", tmp_path / "r", isolation="none")
    loaded = load_cells([tmp_path / "r"])
    [bars] = [f for f in make_figures(loaded.cells) if f.kind == "estimates"]
    gids = {bar.get_gid() for ax in bars.figure.axes for bar in ax.patches}
    assert {
        "estimate:bp b128",
        "estimate:bp bf16 b128",
        "estimate:ff-pipelined bf16 b128/mb16",
    } <= gids
    text = build_report([tmp_path / "r"], tmp_path / "out").read_text()
    assert "| bp bf16 | 128 |" in text and "| ff-pipelined bf16 | 128 | 16 |" in text
    assert "Best configuration of each method family" in text
    assert "| ff | ff-pipelined bf16 b128/mb16 |" in text  # smallest estimated peak of the ff side
    assert "with standard tooling" in text  # beside the paper's D.7 cell


def test_a_precision_the_device_cannot_autocast_to_is_refused_before_any_cell(
    tmp_path, monkeypatch
):

    monkeypatch.setattr(CpuDevice, "autocast_precisions", lambda self: ("fp32",))
    result = CliRunner().invoke(
        app,
        [
            "sweep",
            "--arch",
            TINY_ARCH,
            "--res",
            str(TINY_RES),
            "--batch",
            "2",
            "--device",
            "cpu",
            "--isolation",
            "none",
            "--precision",
            "fp32,bf16",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert "torch cannot autocast to it" in usage_error(result)
    assert not (tmp_path / "o" / "cells.csv").exists()
