"""Figures of estimates a reviewer can read: an estimate-only panel is one sorted bar per
configuration (memory, with its budget; the FLOP bound beside it where a GPU is named), never
an empty throughput plot, and every bar names its tooling."""

from __future__ import annotations

from report_fixtures import MIB, cell_row, write_results

from membench.report import load_cells, make_figures
from membench.report.render import add_throughput_bound

EST = dict(device="cuda (estimate)", device_name="estimate", arch="vgg11", res=224, classes=100)


def estimate_rows(budget: int | None = None) -> list[dict]:
    rows = []
    for method, precision, batch, mb, peak in (
        ("bp", "fp32", 128, None, 900),
        ("bp", "bf16", 128, None, 500),
        ("bp-accum", "bf16", 128, 16, 80),
        ("ff-pipelined", "fp32", 64, None, 400),
    ):
        row = cell_row(
            method,
            batch,
            status="oom" if budget and peak * MIB > budget else "estimated",
            peak_bytes=peak * MIB,
            micro_batch=mb,
            device_mem_bytes=budget,
            breakdown=(MIB, MIB, 2 * MIB, (peak - 4) * MIB),
            **EST,
        )
        row.update(
            precision=precision,
            flops_per_step=10**12 * batch,
            cell_id=row["cell_id"] + ("" if precision == "fp32" else "_bf16"),
        )
        rows.append(row)
    return rows


def figures_of(tmp_path, rows, gpu_tflops=None):
    write_results(tmp_path / "r", rows)
    loaded = load_cells([tmp_path / "r"])
    if gpu_tflops:
        add_throughput_bound(
            loaded, "Test GPU", {"fp32": (gpu_tflops, "tf32"), "bf16": (2 * gpu_tflops, "bf16")}
        )
    return {f.kind: f for f in make_figures(loaded.cells)}


def test_an_estimate_only_panel_is_sorted_bars_with_the_budget_and_no_empty_plot(tmp_path):
    figures = figures_of(tmp_path, estimate_rows(budget=600 * MIB))
    assert "batch" not in figures and "frontier" not in figures  # nothing timed to plot
    figure = figures["estimates"].figure
    assert figure.bar_labels == [
        "bp-accum bf16 b128/mb16",
        "ff-pipelined b64",
        "bp bf16 b128",
        "bp b128",
    ]  # smallest peak first, tooling in every label
    [ax] = figure.axes[:1]
    assert len(figure.axes) == 1  # no throughput axes without a GPU to bound it
    budget = [line for line in ax.get_lines() if line.get_gid() == f"budget:{600 * MIB}"]
    assert budget and budget[0].get_xdata()[0] == 600 * MIB / 2**30
    bars = {bar.get_gid(): bar for bar in ax.patches}
    assert bars["estimate:bp b128"].get_hatch() == "xx"  # over its budget, still drawn
    assert bars["estimate:bp bf16 b128"].get_hatch() is None
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        "bp",
        "bp-accum",
        "ff-pipelined",
        "over its budget",
    ]  # one per method
    figure.draw_without_rendering()
    assert legend.get_window_extent().x1 <= figure.bbox.x1  # inside the image


def test_a_named_gpu_adds_the_flop_bound_of_every_configuration(tmp_path):
    figure = figures_of(tmp_path, estimate_rows(), gpu_tflops=100.0)["estimates"].figure
    assert len(figure.axes) == 2
    bounds = {bar.get_gid(): bar.get_width() for bar in figure.axes[1].patches}
    assert bounds["bound:bp b128"] == 100e12 * 128 / (10**12 * 128)  # peak x batch / FLOPs
    assert bounds["bound:bp bf16 b128"] == 200.0  # the bf16 peak for a bf16 cell


def test_breakdown_bars_name_their_tooling(tmp_path):
    figure = figures_of(tmp_path, estimate_rows())["breakdown"].figure
    assert "bp bf16 b128 (est.)" in figure.bar_labels and "bp b128 (est.)" in figure.bar_labels
    # The check can fail: labels without the tooling name two different bars alike.
    without = [label.replace(" bf16", "") for label in figure.bar_labels]
    assert len(set(without)) < len(without)


def test_estimates_with_device_terms_are_bars_stacked_by_term_sorted_by_the_total(tmp_path):
    rows = estimate_rows()
    # (workspace, reserve slack, context) in MiB: the ff row's slack makes it the largest total
    for row, (workspace, slack, context) in zip(
        rows, ((16, 100, 426), (16, 50, 426), (16, 0, 426), (16, 1000, 426))
    ):
        row.update(
            workspace_bytes=workspace * MIB,
            reserve_slack_bytes=slack * MIB,
            context_bytes=context * MIB,
            device_total_bytes=row["peak_allocated_bytes"] + (workspace + slack + context) * MIB,
        )
    figure = figures_of(tmp_path, rows)["estimates"].figure
    assert figure.bar_labels == [
        "bp-accum bf16 b128/mb16",
        "bp bf16 b128",
        "bp b128",
        "ff-pipelined b64",  # 400 + 1442 MiB: larger than bp's 900 + 542
    ]
    [ax] = figure.axes[:1]
    bars = {bar.get_gid(): bar for bar in ax.patches}
    context = bars["term:context_bytes:ff-pipelined b64"]
    assert context.get_width() == 426 * MIB / 2**30
    assert context.get_x() == (400 + 16 + 1000) * MIB / 2**30  # stacked on the other terms
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[-3:] == ["workspaces", "allocator reserve slack", "CUDA context"]
    # without the terms (an earlier membench's rows) the bars are the peaks alone
    plain = figures_of(tmp_path / "plain", estimate_rows())["estimates"].figure
    assert not [b for b in plain.axes[0].patches if str(b.get_gid()).startswith("term:")]
