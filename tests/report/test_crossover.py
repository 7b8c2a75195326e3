"""The report's depth crossover (membench/report/crossover.py) and the analytic model beside it
(membench/report/depth_model.py)."""

from __future__ import annotations

import math

import pytest
from report_fixtures import MIB, cell_row, write_results

from membench.report import build_report, load_cells
from membench.report.crossover import crossover_depth, crossover_sections
from membench.report.depth_model import predicted_peaks, stack_shape

# BP's best grows with depth, FF's stays flat: FF falls below BP between D = 8 and D = 16.
BP_PEAKS = {4: 10, 8: 20, 16: 40}
FF_PEAKS = {4: 25, 8: 25, 16: 25}


def depth_rows(ff_peaks=FF_PEAKS) -> list[dict]:
    rows = []
    for depth in BP_PEAKS:
        arch = f"vgg-d{depth}-w8"
        common = dict(
            arch=arch, res=16, device="cuda (estimate)", device_name="estimate", status="estimated"
        )
        rows.append(
            cell_row("bp-ckpt", 8, micro_batch=2, peak_bytes=BP_PEAKS[depth] * MIB, **common)
        )
        rows.append(cell_row("bp", 8, peak_bytes=3 * BP_PEAKS[depth] * MIB, **common))
        rows.append(
            cell_row("ff-pipelined", 8, micro_batch=2, peak_bytes=ff_peaks[depth] * MIB, **common)
        )
    return rows


def test_the_crossover_is_where_ffs_best_falls_below_bps_interpolated_in_log_depth(tmp_path):
    write_results(tmp_path / "r", depth_rows())
    [(title, best, table, figure)] = crossover_sections(load_cells([tmp_path / "r"]).cells)
    # log(25/20) at D=8, log(25/40) at D=16: they cross a third of the way (in log D) up.
    gap8, gap16 = math.log(25 / 20), math.log(25 / 40)
    expected = 8 * 2 ** (gap8 / (gap8 - gap16))
    assert crossover_depth(best, "2") == pytest.approx(expected) == pytest.approx(10.0, abs=0.05)
    assert crossover_depth(best, "best") == pytest.approx(expected)  # bp's whole batch is worse
    assert "vgg-dD-w8 at 16×16, batch 8" in title and "| micro-batch 2 | 10 |" in table
    # The rows are fp32 FF with its gradients kept, not the configurations the model describes.
    assert "| micro-batch 2 | 10 | not in the results |" in table
    assert {line.get_gid() for line in figure.axes[0].get_lines()} >= {"bp:2", "ff:2", "bp:best"}


def test_ff_never_below_and_below_from_the_start_are_said_so(tmp_path):
    write_results(tmp_path / "never", depth_rows({4: 50, 8: 50, 16: 50}))
    [(_, best, table, _)] = crossover_sections(load_cells([tmp_path / "never"]).cells)
    assert crossover_depth(best, "2") is None and "never in the grid" in table
    write_results(tmp_path / "start", depth_rows({4: 1, 8: 1, 16: 1}))
    [(_, best, _, _)] = crossover_sections(load_cells([tmp_path / "start"]).cells)
    assert crossover_depth(best, "2") == 0.0


def test_the_report_has_a_crossover_section_only_where_a_grid_varies_depth(tmp_path):
    write_results(tmp_path / "r", depth_rows())
    text = build_report([tmp_path / "r"], tmp_path / "out").read_text()
    assert "## Depth crossover" in text
    [figure] = (tmp_path / "out" / "figures").glob("crossover_*.png")
    assert figure.stat().st_size > 10_000
    write_results(tmp_path / "two", depth_rows()[:6])  # two depths only
    assert "## Depth crossover" not in build_report([tmp_path / "two"], tmp_path / "o2").read_text()


def test_the_models_stack_shape_is_the_real_stacks():
    from membench.archs import build_conv_stack

    shape = stack_shape("vgg-d4-w16", 32, classes=10)
    stack = build_conv_stack("vgg-d4-w16")
    assert shape.parameters == sum(p.numel() for p in stack.parameters()) + 16 * 10 + 10
    # pools after layers 1 and 3: 32, 32, 16, 16 (next inputs pooled after 1 only, the last none)
    assert shape.outputs == (16 * 32 * 32,) * 2 + (16 * 16 * 16,) * 2
    assert shape.next_inputs == (16 * 32 * 32, 16 * 16 * 16, 16 * 16 * 16, 0)
    deeper = predicted_peaks("vgg-d8-w16", 32, 64, 8, 10)
    shallow = predicted_peaks("vgg-d4-w16", 32, 64, 8, 10)
    assert deeper["bp"] > shallow["bp"]


def test_the_model_agrees_with_the_estimate_of_the_configurations_it_describes(monkeypatch):
    from membench.planning.estimate import estimate_cell
    from membench.report import depth_model
    from membench.schema import Cell

    arch, res, batch, micro = "vgg-d8-w32-p0", 16, 16, 4
    common = dict(micro_batch=micro, classes=10, warmup=1, steps=1, optimizer_state="host")
    bp = estimate_cell(Cell("bp-ckpt", arch, res, batch, **common), "cuda", count_flops=False)
    ff = estimate_cell(
        Cell("ff-pipelined", arch, res, batch, precision="bf16", grads="released", **common),
        "cuda",
        count_flops=False,
    )
    predicted = depth_model.predicted_peaks(arch, res, batch, micro, 10)
    assert predicted["bp"] == pytest.approx(bp.peak_allocated_bytes, rel=0.05)
    assert predicted["ff"] == pytest.approx(ff.peak_allocated_bytes, rel=0.10)
    # The check bites: a model that counts an fp32 tensor at 2 bytes a value is off by more.
    monkeypatch.setattr(depth_model, "FP32", 2)
    assert depth_model.predicted_peaks(arch, res, batch, micro, 10)["bp"] != pytest.approx(
        bp.peak_allocated_bytes, rel=0.05
    )
