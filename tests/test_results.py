import pandas as pd
import pytest
from conftest import TINY_ARCH, TINY_RES
from helpers import usage_error
from typer.testing import CliRunner

from membench.cli import app
from membench.config import expand_grid
from membench.execute.sweep import run_sweep
from membench.measure.devices import CpuDevice
from membench.results import (
    ResultsError,
    append_result,
    read_cells,
    read_results,
    read_rows,
    read_steps,
    rewrite_csv,
)
from membench.schema import CELL_COLUMNS, STEP_COLUMNS, Cell, CellResult


def test_sweep_writes_the_schema_and_one_step_row_per_measured_step(tmp_path):
    cells = expand_grid(
        method=["bp", "ff-pipelined"], arch=TINY_ARCH, res=TINY_RES, batch=[2, 4], warmup=1, steps=3
    )
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
    cells = expand_grid(method="bp", arch=TINY_ARCH, res=TINY_RES, batch=2, warmup=0, steps=1)
    run_sweep(cells, CpuDevice(), tmp_path)
    with open(tmp_path / "cells.csv", "a") as f:
        f.write("bp_cut_short,bp,vgg")  # a crash mid-write
    assert len(read_cells(tmp_path)) == 1


# -- the reader and the writer refuse what is not membench's ------------------------------------
FOREIGN_CSV = b"cell_id,method\nabc,sgd\n"


def test_a_sweep_refuses_to_append_to_another_programs_csv_and_leaves_it_untouched(tmp_path):
    (tmp_path / "cells.csv").write_bytes(FOREIGN_CSV)
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
            "--steps",
            "1",
            "--warmup",
            "0",
            "--device",
            "cpu",
            "--isolation",
            "none",
            "--out",
            str(tmp_path),
        ],
    )
    assert "not a membench cells.csv" in usage_error(result)
    assert (tmp_path / "cells.csv").read_bytes() == FOREIGN_CSV
    assert not (tmp_path / "steps.csv").exists()
    with pytest.raises(ResultsError, match="not appending"):
        append_result(tmp_path, one_result())
    assert (tmp_path / "cells.csv").read_bytes() == FOREIGN_CSV


@pytest.mark.parametrize("garbage", [bytes(range(256)) * 4, b"\xff\xfe\xfa not utf-8\n"])
def test_a_binary_cells_csv_is_one_line_for_every_reader_and_the_sweep(tmp_path, garbage):
    (tmp_path / "cells.csv").write_bytes(garbage)
    with pytest.raises(ResultsError) as err:
        read_cells(tmp_path)
    assert "\n" not in str(err.value)
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
            "--out",
            str(tmp_path),
        ],
    )
    assert "is not a" in usage_error(result)
    assert (tmp_path / "cells.csv").read_bytes() == garbage


def test_an_earlier_membench_folder_is_read_and_its_header_upgraded_in_place(tmp_path):
    append_result(tmp_path, one_result())
    # an earlier membench wrote fewer columns: drop two of today's from the file
    old_columns = [c for c in CELL_COLUMNS if c not in ("torch_threads", "activations_bytes")]
    header, rows = read_rows(tmp_path / "cells.csv")
    rewrite_csv(tmp_path / "cells.csv", old_columns, rows)
    before = read_cells(tmp_path)
    assert before["torch_threads"].isna().all() and before["activations_bytes"].isna().all()
    assert before["peak_allocated_bytes"].iloc[0] == 1234
    append_result(tmp_path, one_result(seed=1))
    header, upgraded = read_rows(tmp_path / "cells.csv")
    assert header == CELL_COLUMNS
    assert len(upgraded) == 2
    assert upgraded[0]["torch_threads"] == "" and upgraded[1]["torch_threads"] != ""
    assert {k: v for k, v in upgraded[0].items() if k in old_columns} == {
        k: v for k, v in rows[0].items() if k in old_columns
    }


def test_from_row_is_the_inverse_of_row(tmp_path):
    cells = expand_grid(
        method=["bp", "bp-accum"], arch=TINY_ARCH, res=TINY_RES, batch=4, warmup=0, steps=2
    )
    results = run_sweep(cells, CpuDevice(), tmp_path, isolation="none")
    for original, read_back in zip(results, read_results(tmp_path)):
        assert CellResult.from_row(original.row()).row() == original.row()
        assert read_back.cell == original.cell and read_back.breakdown == original.breakdown
        assert read_back.row()["peak_allocated_bytes"] == original.row()["peak_allocated_bytes"]
        assert read_back.summary_stats()["median"] == pytest.approx(
            original.summary_stats()["median"]
        )
    # a value that does not fit its column is an error, not a silent NaN
    with pytest.raises(ValueError):
        CellResult.from_row({**results[0].row(), "batch": "four"})


def one_result(seed: int = 0) -> CellResult:
    return CellResult(
        Cell("bp", TINY_ARCH, TINY_RES, 2, seed=seed),
        "cpu",
        "Test CPU",
        step_ms=[1.0, 2.0],
        peak_allocated_bytes=1234,
        memory_source="tracker",
        torch_threads=1,
        torch_version="x",
        membench_version="y",
    )


def test_a_cells_csv_saved_with_a_byte_order_mark_reads_and_takes_rows(tmp_path):
    append_result(tmp_path, CellResult(Cell("bp", TINY_ARCH, TINY_RES, 2), "cpu", "x"))
    path = tmp_path / "cells.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as a spreadsheet saves UTF-8
    assert list(read_cells(tmp_path, required=["cell_id", "batch"])["batch"]) == [2]
    append_result(tmp_path, CellResult(Cell("bp", TINY_ARCH, TINY_RES, 4), "cpu", "x"))
    assert list(read_cells(tmp_path)["batch"]) == [2, 4]
    # The check can fail: read as plain UTF-8 the first column is '\ufeffcell_id'.
    assert read_rows(path)[0][0] == "cell_id" and path.read_text().split(",")[0] != "cell_id"


def test_a_missing_column_is_named_once(tmp_path):
    (tmp_path / "cells.csv").write_text(
        "method,arch,res,batch,device,status\nbp,vgg8,32,2,cpu,ok\n"
    )
    with pytest.raises(ResultsError) as raised:
        read_cells(tmp_path, required=["cell_id", "imgs_per_s"])
    assert "lacks column(s) cell_id, imgs_per_s" in str(raised.value)
