import pandas as pd

from conftest import TINY_ARCH, TINY_RES
from membench.devices import CpuDevice
from membench.grid import expand_grid
from membench.results import CELL_COLUMNS, STEP_COLUMNS, read_cells, read_steps
from membench.sweep import run_sweep


def test_sweep_writes_the_schema_and_one_step_row_per_measured_step(tmp_path):
    cells = expand_grid(["bp", "ff-pipelined"], [TINY_ARCH], [TINY_RES], [2, 4], warmup=1, steps=3)
    run_sweep(cells, CpuDevice(), tmp_path)
    frame = read_cells(tmp_path)
    assert list(frame.columns)[: len(CELL_COLUMNS)] == CELL_COLUMNS
    assert len(frame) == len(cells) == 4
    assert set(frame["status"]) == {"ok"}
    steps = read_steps(tmp_path)
    assert list(steps.columns) == STEP_COLUMNS
    assert len(steps) == len(cells) * 3
    assert (frame["peak_allocated_bytes"] > 0).all()
    assert pd.api.types.is_integer_dtype(frame["peak_allocated_bytes"])
    assert (tmp_path / "env.json").exists()


def test_readers_ignore_a_half_written_last_line(tmp_path):
    cells = expand_grid(["bp"], [TINY_ARCH], [TINY_RES], [2], warmup=0, steps=1)
    run_sweep(cells, CpuDevice(), tmp_path)
    with open(tmp_path / "cells.csv", "a") as f:
        f.write("bp_cut_short,bp,vgg")  # a crash mid-write
    assert len(read_cells(tmp_path)) == 1
