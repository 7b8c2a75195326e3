"""membench report: figures plot the CSV's values, devices stay apart, tables, and bad input.

The golden-file test renders the committed results in tests/golden/report/results and compares
report.md and the figure names with the committed tests/golden/report/report.md and figures.txt.
After an intended change to the report, regenerate them with

    MEMBENCH_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/report/test_report.py -k golden

and review the diff.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from helpers import usage_error
from report_fixtures import MIB, cell_row, sample_rows, write_results
from typer.testing import CliRunner

from membench.report import (
    GIB,
    PAPER_SOURCE,
    Column,
    Table,
    budgets_for,
    build_report,
    default_report_dir,
    load_cells,
    make_figures,
    markdown_table,
    oom_position,
    panel_table,
    pareto_front,
    render_report,
)

cli = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GOLDEN = Path(__file__).parents[1] / "golden" / "report"
GOLDEN_NOW = dt.datetime(2025, 1, 2, 3, 4, tzinfo=dt.UTC)


def invoke(args: list[str]):
    """``membench ARGS`` in-process. The CLI is imported here, not at the top, so the library's
    tests still run while the CLI does not import."""
    from membench.cli import app

    return cli.invoke(app, args)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    write_results(tmp_path / "results" / "sweep-a", sample_rows())
    return tmp_path / "results"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """One report of the sample results, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("report")
    write_results(folder / "results" / "sweep-a", sample_rows())
    return build_report([folder / "results"], folder / "out")


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    """The sample results' figures, made once (with an 8 GiB --budget) for the tests that read
    them."""
    folder = tmp_path_factory.mktemp("figures")
    write_results(folder, sample_rows())
    return make_figures(load_cells([folder]).cells, budgets_bytes=[8 * GIB])


def lines_by_gid(figure) -> dict[str, object]:
    return {line.get_gid(): line for ax in figure.axes for line in ax.get_lines() if line.get_gid()}


def figure_of(figures, kind: str, device_prefix: str):
    [found] = [f for f in figures if f.kind == kind and f.device.startswith(device_prefix)]
    return found


def test_report_writes_markdown_and_every_linked_figure(built):
    report = built
    text = report.read_text()
    assert report.name == "report.md"
    linked = [
        line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")
    ]
    assert len(linked) == 6  # frontier, batch and breakdown, for each of two devices
    for relative in linked:
        assert (report.parent / relative).read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in (report.parent / "figures").iterdir()) == sorted(
        Path(r).name for r in linked
    )


def test_frontier_plots_the_csv_values(figures):
    frontier = figure_of(figures, "frontier", "cpu").figure
    lines = lines_by_gid(frontier)
    bp = lines["measured:bp"]
    assert list(bp.get_xdata()) == pytest.approx([18 * MIB / GIB, 26 * MIB / GIB])
    assert list(bp.get_ydata()) == pytest.approx([96.0, 192.0])
    assert list(lines["measured:ff-pipelined"].get_ydata()) == pytest.approx([112.0, 224.0])
    # no throughput: the estimate sits at its predicted peak, the OOM at the budget it hit
    assert list(lines["estimated:ff-pipelined"].get_xdata()) == pytest.approx([25 * MIB / GIB])
    assert list(lines["oom:bp"].get_xdata()) == pytest.approx([64 * MIB / GIB])
    assert f"budget:{64 * MIB}" in lines
    assert f"budget:{8 * GIB}" not in lines  # 8 GiB against ~26 MiB points: named, not drawn
    # ff-pipelined dominates bp at both batches here, so the front is ff-pipelined alone
    assert list(lines["pareto"].get_xdata()) == pytest.approx([13 * MIB / GIB, 17 * MIB / GIB])
    legend = [t.get_text() for t in frontier.axes[0].get_legend().get_texts()]
    assert any("8 GiB" in t for t in legend)


def test_pareto_front_keeps_only_non_dominated_points(results):
    cells = load_cells([results]).cells
    ok = cells[(cells["kind"] == "ok") & (cells["device"] == "cpu")]
    assert list(pareto_front(ok)["imgs_per_s"]) == [112.0, 224.0]
    faster = ok.iloc[[0]].assign(peak_allocated_bytes=40 * MIB, imgs_per_s=500.0)
    slower = ok.iloc[[0]].assign(peak_allocated_bytes=40 * MIB, imgs_per_s=100.0)
    front = pareto_front(pd.concat([ok, faster, slower]))
    assert list(front["imgs_per_s"]) == [112.0, 224.0, 500.0]


def test_cpu_and_gpu_rows_are_in_separate_figures(figures):
    cpu = lines_by_gid(figure_of(figures, "frontier", "cpu").figure)
    gpu = lines_by_gid(figure_of(figures, "frontier", "cuda:0").figure)
    assert list(gpu["measured:bp"].get_ydata()) == pytest.approx([1920.0, 3840.0])
    assert list(cpu["measured:bp"].get_ydata()) == pytest.approx([96.0, 192.0])
    assert not any(g.startswith(("oom", "estimated")) for g in gpu)
    assert len({f.filename for f in figures}) == len(figures) == 6
    batch = lines_by_gid(figure_of(figures, "batch", "cuda:0").figure)
    assert list(batch["throughput:ff-pipelined"].get_ydata()) == pytest.approx([2240.0, 4480.0])
    breakdown = figure_of(figures, "breakdown", "cpu").figure
    assert breakdown.bar_labels == [
        "bp b32",
        "ff-pipelined b32",
        "bp b64",
        "ff-pipelined b64",
        "ff-pipelined b128 (est.)",
    ]


def test_tables_show_ratios_to_bp_and_estimates_beside_measurements(built):
    text = built.read_text()
    cpu, gpu = text.split("## cuda:0 (Test GPU)")
    assert "## cpu (Test CPU)" in cpu
    # ff-pipelined b32: 13 MiB / 18 MiB of bp, 112 / 96 imgs/s
    assert (
        "| ff-pipelined | 32 |  | ok | 0.013 |  | 112.0 | 112.0–112.0 | 285.7 | 0.722× | 1.167× "
        "| tracker |" in cpu
    )
    assert "| ff-pipelined | 128 |  | estimated |  | 0.024 |" in cpu
    assert "| bp | 128 | 0.062 | oom |" in cpu
    assert "| ff-pipelined | 32 | ok | 0.013 | 2,240.0 |" in gpu
    assert "oom" not in gpu


def test_repeated_cell_shows_the_latest_run(tmp_path):
    rows = [
        cell_row("bp", 32, peak_bytes=10 * MIB, started_at="2025-01-02T00:00:00+00:00"),
        cell_row("bp", 32, peak_bytes=30 * MIB, started_at="2025-01-01T00:00:00+00:00"),
    ]
    write_results(tmp_path / "a", rows[:1])
    write_results(tmp_path / "b", rows[1:])
    loaded = load_cells([tmp_path])
    assert loaded.superseded == 1
    assert list(loaded.cells["peak_allocated_bytes"]) == [10 * MIB]
    text = render_report(loaded, figures=[])
    assert "only its latest run (by `started_at`) is shown: 1 earlier row(s) left out" in text


def test_paper_operating_point_gets_the_papers_ratios_beside_ours(tmp_path):
    rows = [
        cell_row("bp", 256, peak_bytes=100 * MIB, imgs_per_s=1000.0),
        cell_row("ff-pipelined", 256, peak_bytes=90 * MIB, imgs_per_s=1200.0),
    ]
    write_results(tmp_path / "r", rows)
    text = render_report(load_cells([tmp_path / "r"]), figures=[])
    assert "Beside the paper" in text and "arXiv:2606.06539" in text
    line = next(l for l in text.splitlines() if l.startswith("| ff-pipelined | ok |"))
    assert "0.900×" in line and "1.200×" in line  # ours
    assert "1.535" in line and f"{1.535 / 1.589:.3f}×" in line and f"{1726 / 1586:.3f}×" in line
    assert "| ff-naive | not in these results |" in text


def test_default_report_dir_is_named_after_the_inputs(tmp_path):
    assert default_report_dir([Path("results/sweep-a/")]) == Path("reports/sweep-a")
    assert default_report_dir([Path("x/cells.csv"), Path("y")]) == Path("reports/x+y")
    assert default_report_dir([Path(".")]).name.startswith("report-")


def test_markdown_table_escapes_pipes():
    table = markdown_table(["a", "b"], [["x|y", 1]], ["l", "r"])
    assert table.splitlines() == ["| a | b |", "| --- | ---: |", "| x\\|y | 1 |"]


def test_cli_writes_the_report(tmp_path):
    write_results(tmp_path / "r", [cell_row("bp", 32, peak_bytes=10 * MIB)])
    out = tmp_path / "cli-out"
    result = invoke(["report", str(tmp_path / "r"), "--out", str(out), "--budget", "8GiB"])
    assert result.exit_code == 0, result.output
    assert f"report in {out / 'report.md'}" in result.output
    assert "Budgets asked for with `--budget`: 8 GiB." in (out / "report.md").read_text()
    # no breakdown columns in this row, so no (empty) breakdown figure
    assert sorted(p.name.split("_")[0] for p in (out / "figures").glob("*.png")) == [
        "batch",
        "frontier",
    ]


def one_line_error(args) -> str:
    return usage_error(invoke(["report", *args]))


def test_cli_missing_and_empty_folders_are_one_line_errors(tmp_path):
    assert "does not exist" in one_line_error([str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    assert "no cells.csv" in one_line_error([str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_cli_csv_missing_columns_is_a_one_line_error(tmp_path):
    write_results(
        tmp_path / "r",
        sample_rows(),
        columns=["cell_id", "method", "arch", "res", "batch", "device", "status"],
    )
    assert "peak_allocated_bytes" in one_line_error([str(tmp_path / "r")])
    write_results(tmp_path / "h", [])
    assert "no result rows" in one_line_error([str(tmp_path / "h")])


def test_cli_bad_budget_is_a_one_line_error(results):
    assert "--budget" in one_line_error([str(results), "--budget", "lots"])


def test_all_failed_rows_give_a_report_that_says_so(tmp_path):
    rows = [
        cell_row("bp", 32, status="oom", device_mem_bytes=MIB, error="OutOfMemoryError: x"),
        cell_row("ff-pipelined", 32, status="error", error="RuntimeError: boom | at f.py:1"),
    ]
    write_results(tmp_path / "r", rows)
    result = invoke(["report", str(tmp_path / "r"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "no cell succeeded" in result.output
    text = (tmp_path / "out" / "report.md").read_text()
    assert "**No cell succeeded**" in text
    assert "RuntimeError: boom \\| at f.py:1" in text
    assert "![" not in text and not list((tmp_path / "out" / "figures").glob("*.png"))


def test_cuda_oom_without_a_budget_is_placed_at_the_cards_memory(tmp_path):
    rows = [
        cell_row("bp", 32, device="cuda:1", device_name="Test GPU", peak_bytes=10 * MIB),
        cell_row("bp", 64, device="cuda:1", device_name="Test GPU", status="oom"),
    ]
    write_results(tmp_path / "r", rows)
    (tmp_path / "r" / "env.json").write_text(
        json.dumps(
            {
                "gpus": [
                    {"index": 0, "total_memory_bytes": 8 * GIB},
                    {"index": 1, "total_memory_bytes": 40 * MIB},
                ]
            }
        )
    )
    cells = load_cells([tmp_path / "r"]).cells
    oom = cells[cells["status"] == "oom"].iloc[0]
    assert oom_position(oom, budgets_for(cells)) == 40 * MIB
    assert [b.source for b in budgets_for(cells, [GIB])] == ["card", "--budget"]


def test_estimates_join_the_measured_device_of_their_kind(tmp_path):
    estimate = dict(device="cuda (estimate)", device_name="estimate", memory_source="estimate")
    rows = [
        cell_row("bp", 32, device="cuda:0", device_name="GPU A", peak_bytes=10 * MIB),
        cell_row("bp", 32, status="estimated", peak_bytes=9 * MIB, **estimate),
        cell_row(
            "bp",
            64,
            status="oom",
            peak_bytes=90 * MIB,
            device_mem_bytes=64 * MIB,
            error="estimated 0.088 GiB > budget 0.062 GiB",
            **estimate,
        ),
    ]
    write_results(tmp_path / "r", rows)
    loaded = load_cells([tmp_path / "r"])
    assert list(loaded.cells["kind"]) == ["ok", "estimated", "estimated"]
    assert list(loaded.cells["over_budget"]) == [False, False, True]
    text = render_report(loaded, figures=[])
    assert "## cuda:0 (GPU A)" in text and "## cuda (estimate)" not in text
    assert "| bp | 32 |  | ok | 0.010 | 0.009 |" in text
    assert "| bp | 64 | 0.062 | oom (estimated) |  | 0.088 (> budget) |" in text


# -- tables as columns ----------------------------------------------------------------------------
def test_table_of_columns_renders_markdown_with_escaped_cells():
    columns = [Column("name", lambda r: r["name"]), Column("size", lambda r: r["size"], "r")]
    table = Table(columns, [{"name": "a|b", "size": 3}, {"name": "two\nlines", "size": 1.5}])
    assert table.markdown().splitlines() == [
        "| name | size |",
        "| --- | ---: |",
        "| a\\|b | 3 |",
        "| two lines | 1.5 |",
    ]
    assert table.markdown() == markdown_table(["name", "size"], table.cells(), ["l", "r"])


def test_column_refuses_an_unknown_alignment():
    with pytest.raises(ValueError, match="align"):
        Column("x", str, "c")


def test_panel_table_has_optional_columns_only_when_present(tmp_path):
    write_results(
        tmp_path / "plain",
        [cell_row("bp", 32, peak_bytes=10 * MIB), cell_row("ff-pipelined", 32, peak_bytes=8 * MIB)],
    )
    plain = panel_table(load_cells([tmp_path / "plain"]).cells).splitlines()[0]
    assert plain == (
        "| method | batch | status | peak (GiB) | imgs/s | imgs/s p10–p90 | step ms (median) | "
        "memory ÷ bp | imgs/s ÷ bp | memory from |"
    )
    write_results(
        tmp_path / "rich",
        [
            cell_row(
                "bp-accum", 64, micro_batch=32, peak_bytes=10 * MIB, device_mem_bytes=64 * MIB
            ),
            cell_row(
                "bp",
                64,
                status="estimated",
                peak_bytes=9 * MIB,
                device="cpu (estimate)",
                device_name="estimate",
            ),
        ],
    )
    rich = panel_table(load_cells([tmp_path / "rich"]).cells).splitlines()
    assert rich[0] == (
        "| method | batch | micro-batch | budget (GiB) | status | peak (GiB) | "
        "estimated peak (GiB) | imgs/s | imgs/s p10–p90 | step ms (median) | memory ÷ bp | "
        "imgs/s ÷ bp | memory from |"
    )
    assert rich[1] == "| --- | ---: | ---: | ---: | --- | " + "---: | " * 7 + "--- |"
    assert rich[2].startswith("| bp | 64 |  |  | estimated |  | 0.009 |")
    assert rich[3].startswith("| bp-accum | 64 | 32 | 0.062 | ok | 0.010 |  |")


def test_estimate_is_the_readers_decision(tmp_path):
    """A row is an estimate by its device or memory source (membench.schema.is_estimate_row),
    whatever its status says."""
    rows = [
        cell_row("bp", 32, peak_bytes=10 * MIB),
        cell_row(
            "bp",
            32,
            status="oom",
            peak_bytes=90 * MIB,
            memory_source="estimate",
            device_mem_bytes=64 * MIB,
        ),
    ]
    write_results(tmp_path / "r", rows)
    cells = load_cells([tmp_path / "r"]).cells
    assert list(cells["is_estimate"]) == [False, True]
    assert list(cells["kind"]) == ["ok", "estimated"]


def test_paper_source_points_into_the_repository():
    assert "SPEC" not in PAPER_SOURCE  # no spec outside the repository
    assert 'docs/measurement.md, "Paper reference figures"' in PAPER_SOURCE


def test_generation_time_is_injectable(tmp_path):
    write_results(tmp_path / "r", [cell_row("bp", 32, peak_bytes=10 * MIB)])
    text = render_report(load_cells([tmp_path / "r"]), figures=[], now=GOLDEN_NOW)
    assert "Generated 2025-01-02 03:04 UTC by membench " in text


# -- the golden report ----------------------------------------------------------------------------
def test_report_matches_the_golden_file(tmp_path, monkeypatch):
    """The committed results render exactly the committed report.md (and these figure files).
    Regenerate after an intended change: MEMBENCH_UPDATE_GOLDEN=1 (see the module docstring)."""
    monkeypatch.chdir(GOLDEN)  # source paths are shown relative to the current directory
    report = build_report([Path("results")], tmp_path / "out", [8 * GIB], now=GOLDEN_NOW)
    text = report.read_text(encoding="utf-8")
    names = "".join(f"{p.name}\n" for p in sorted((report.parent / "figures").iterdir()))
    if os.environ.get("MEMBENCH_UPDATE_GOLDEN") == "1":
        (GOLDEN / "report.md").write_text(text, encoding="utf-8")
        (GOLDEN / "figures.txt").write_text(names, encoding="utf-8")
    assert text == (GOLDEN / "report.md").read_text(encoding="utf-8")
    assert names == (GOLDEN / "figures.txt").read_text(encoding="utf-8")


def test_the_golden_comparison_sees_a_changed_peak(tmp_path, monkeypatch):
    import shutil

    shutil.copytree(GOLDEN / "results", tmp_path / "results")
    cells = tmp_path / "results" / "sweep-a" / "cells.csv"
    header, *lines = cells.read_text(encoding="utf-8").splitlines(keepends=True)
    column = header.rstrip("\n").split(",").index("peak_allocated_bytes")
    fields = lines[0].rstrip("\n").split(",")
    fields[column] = str(int(fields[column]) + 16 * MIB)  # the table shows GiB to 3 decimals
    cells.write_text(header + ",".join(fields) + "\n" + "".join(lines[1:]), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    report = build_report([Path("results")], tmp_path / "out", [8 * GIB], now=GOLDEN_NOW)
    assert report.read_text(encoding="utf-8") != (GOLDEN / "report.md").read_text(encoding="utf-8")


# -- bad input through the CLI --------------------------------------------------------------------
def test_cli_binary_cells_csv_is_a_one_line_error(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "cells.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe" * 20)
    line = usage_error(invoke(["report", str(folder), "--out", str(tmp_path / "out")]))
    assert "cells.csv" in line
    assert not (tmp_path / "out").exists()


def _report_files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("interrupt_at", [1, 4])  # while saving the figures, at two moments
def test_an_interrupted_report_leaves_the_earlier_one_whole(tmp_path, monkeypatch, interrupt_at):
    import matplotlib.figure

    write_results(tmp_path / "results", sample_rows())
    out = tmp_path / "report"
    build_report([tmp_path / "results"], out, now=GOLDEN_NOW)
    (out / "notes.txt").write_text("the user's own file")
    before = _report_files(out)
    saved = []
    real = matplotlib.figure.Figure.savefig

    def interrupted(figure, *args, **kwargs):
        if len(saved) == interrupt_at:
            raise KeyboardInterrupt  # Ctrl-C while the new report is written
        saved.append(args[0])
        return real(figure, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_report([tmp_path / "results"], out, budgets_bytes=[8 * GIB])
    assert _report_files(out) == before  # every figure report.md links is still there
    assert sorted(p.name for p in out.iterdir()) == ["figures", "notes.txt", "report.md"]


def test_a_new_report_replaces_the_earlier_one_and_keeps_other_files(tmp_path):
    write_results(tmp_path / "results", sample_rows())
    out = tmp_path / "report"
    build_report([tmp_path / "results"], out)
    (out / "figures" / "stale.png").write_bytes(PNG_MAGIC)  # of no report now
    (out / "figures" / "README").write_text("kept")
    build_report([tmp_path / "results"], out)
    names = {p.name for p in (out / "figures").iterdir()}
    assert "stale.png" not in names and "README" in names
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_an_interrupted_first_report_leaves_no_folder(tmp_path, monkeypatch):
    import membench.report.render as render

    write_results(tmp_path / "results", sample_rows())

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(render, "save_figures", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_report([tmp_path / "results"], tmp_path / "new" / "report")
    assert not (tmp_path / "new").exists()


def test_rows_left_out_for_another_folders_later_runs_say_why(tmp_path):
    """`membench report results/` over a committed reference run and the user's own run of
    the same cells shows the user's, and says whose rows were left out and for what."""
    rows = sample_rows()
    write_results(tmp_path / "results" / "reference", rows)
    later = [{**row, "started_at": "2099-01-01T00:00:00+00:00"} for row in rows]
    write_results(tmp_path / "results" / "quick", later)
    warnings = []
    report = build_report([tmp_path / "results"], tmp_path / "out", on_warning=warnings.append)
    reference = tmp_path / "results" / "reference" / "cells.csv"
    quick = tmp_path / "results" / "quick" / "cells.csv"
    text = report.read_text()
    assert f"{len(rows)} earlier row(s) left out: {len(rows)} of `{reference}`" in text
    assert f"run again later in `{quick}`" in text
    assert len(warnings) == 1 and f"{len(rows)} row(s) left out" in warnings[0]
    assert str(reference) in warnings[0] and "report the folders apart" in warnings[0]


def test_throughput_carries_its_spread_and_a_doubtful_best_pick_says_why(tmp_path):
    """Error bars (imgs/s at the slow and fast tenth of the steps), the timing's verdict, and a
    'best configuration' that was picked from an unstable median, or ties within the spread of
    another, says so instead of naming a winner the noise could have named."""
    rows = [
        cell_row(method, 32, imgs_per_s=imgs, peak_bytes=peak * MIB)
        for method, imgs, peak in (
            ("bp", 100.0, 20),
            ("bp-ckpt", 90.0, 12),
            ("ff-pipelined", 120.0, 8),
            ("ff-naive", 80.0, 16),
        )
    ]
    rows[0].update(step_ms_p10=320 / 1.3, step_ms_p90=320 / 0.7)  # bp: 70 to 130 imgs/s
    rows[1].update(step_ms_p10=32_000 / 120.0)  # bp-ckpt's fast tenth reaches 120 imgs/s
    rows[2].update(stability="unstable", stability_reason="relative IQR 34% >= 10%")
    write_results(tmp_path / "results", rows)
    cells = load_cells([tmp_path / "results"]).cells
    text = build_report([tmp_path / "results"], tmp_path / "out").read_text()
    assert "| 100.0 | 70.0–130.0 |" in text and "unstable: relative IQR 34% >= 10%" in text
    assert (
        "most imgs/s measured; not a clear pick: bp-ckpt b32 is within its p10–p90 spread" in text
    )
    assert "most imgs/s measured; not a clear pick: its timing is unstable" in text
    frontier = next(
        f.figure for f in make_figures(cells) if f.kind == "frontier" and f.device.startswith("cpu")
    )
    bars = [c for ax in frontier.axes for c in ax.containers if c.get_label() == "_spread:bp"]
    assert len(bars) == 1
    segments = bars[0].lines[2][0].get_segments()  # the vertical bar of bp's one point
    assert [round(y, 6) for y in segments[0][:, 1]] == [70.0, 130.0]
