"""Peak memory (left) and throughput (right) against batch size, one series per method.

Estimates are dotted with hollow markers; OOM cells are red X marks at their budget on the left
and at zero on the right.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..units import GIB, format_size
from .frontier import spread_bars
from .layout import Budget, budgets_for, oom_position, series
from .style import (
    BUDGET_COLOR,
    BUDGET_RANGE,
    OOM_COLOR,
    method_sort_key,
    new_figure,
    side_legend,
)


def _draw_measured(ax_mem, ax_thr, ok: pd.DataFrame, colors: dict[str, str]) -> None:
    for method, label, marker, rows in series(ok):
        ax_mem.plot(
            rows["batch"],
            rows["peak_gib"],
            marker=marker,
            color=colors[method],
            label=label,
            gid=f"memory:{label}",
        )
        timed = rows[rows["imgs_per_s"].notna()]
        ax_thr.plot(
            timed["batch"],
            timed["imgs_per_s"],
            marker=marker,
            color=colors[method],
            label=label,
            gid=f"throughput:{label}",
        )
        spread_bars(ax_thr, timed["batch"], timed, colors[method], f"spread:{label}")


def _draw_estimated(ax_mem, estimated: pd.DataFrame, colors: dict[str, str], handles: list) -> None:
    """Dotted, hollow memory lines; a legend entry for a method that has only estimates."""
    for method, label, marker, rows in series(estimated):
        ax_mem.plot(
            rows["batch"],
            rows["peak_gib"],
            marker=marker,
            linestyle=":",
            markerfacecolor="none",
            color=colors[method],
            gid=f"memory-estimated:{label}",
        )
        if method not in {h.get_label() for h in handles}:
            handles.append(
                Line2D(
                    [],
                    [],
                    marker=marker,
                    linestyle=":",
                    markerfacecolor="none",
                    color=colors[method],
                    label=f"{label} (estimated only)",
                )
            )
    if len(estimated):
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                linestyle=":",
                markerfacecolor="none",
                color="0.3",
                label="estimated peak (dotted, hollow)",
            )
        )


def _draw_budgets(ax_mem, budgets: list[Budget], data_max: float) -> float:
    """Horizontal budget lines within range; returns the top of the memory data and lines."""
    top = data_max
    for budget in budgets:
        if budget.bytes / GIB <= BUDGET_RANGE * data_max:
            ax_mem.axhline(
                budget.bytes / GIB,
                color=BUDGET_COLOR,
                linestyle="--",
                linewidth=1,
                gid=f"budget:{int(budget.bytes)}",
            )
            ax_mem.annotate(
                f"{format_size(budget.bytes)} ({budget.source})",
                (0, budget.bytes / GIB),
                xycoords=ax_mem.get_yaxis_transform(),
                xytext=(3, -3),
                textcoords="offset points",
                va="top",
                fontsize=7.5,
                color=BUDGET_COLOR,
            )
            top = max(top, budget.bytes / GIB)
    return top


def _draw_ooms(ax_mem, ax_thr, oom: pd.DataFrame, budgets: list[Budget], top: float) -> None:
    """Red X per OOM cell: at its budget (capped just above the plot) and at zero throughput."""
    for method in sorted(oom["method"].unique(), key=method_sort_key):
        failed = oom[oom["method"] == method]
        at = [oom_position(row, budgets) for _, row in failed.iterrows()]
        ys = [min(v / GIB, top * 1.05) if v is not None else top * 1.05 for v in at]
        ax_mem.plot(
            failed["batch"],
            ys,
            linestyle="none",
            marker="X",
            markersize=9,
            color=OOM_COLOR,
            gid=f"oom-memory:{method}",
            clip_on=False,
            zorder=4,
        )
        ax_thr.plot(
            failed["batch"],
            [0] * len(failed),
            linestyle="none",
            marker="X",
            markersize=9,
            color=OOM_COLOR,
            gid=f"oom-throughput:{method}",
            clip_on=False,
            zorder=4,
        )
        for batch, y in zip(failed["batch"], ys):
            ax_mem.annotate(
                f"{method} OOM",
                (batch, y),
                xytext=(-6, 4),
                textcoords="offset points",
                ha="right",
                fontsize=7,
                color=OOM_COLOR,
            )
            ax_thr.annotate(
                f"{method} OOM",
                (batch, 0),
                xytext=(-6, 4),
                textcoords="offset points",
                ha="right",
                fontsize=7,
                color=OOM_COLOR,
            )


def _draw_bounds(ax_thr, estimated: pd.DataFrame, colors: dict[str, str], handles: list) -> bool:
    """Hollow, dashed imgs/s upper bounds of estimates on a named GPU (``bound_imgs_per_s``);
    whether any was drawn."""
    if "bound_imgs_per_s" not in estimated or not estimated["bound_imgs_per_s"].notna().any():
        return False
    for method, label, marker, rows in series(estimated[estimated["bound_imgs_per_s"].notna()]):
        ax_thr.plot(
            rows["batch"],
            rows["bound_imgs_per_s"],
            marker=marker,
            linestyle="--",
            markerfacecolor="none",
            color=colors[method],
            gid=f"bound:{label}",
        )
    handles.append(
        Line2D(
            [],
            [],
            marker="o",
            linestyle="--",
            markerfacecolor="none",
            color="0.3",
            label="upper bound on imgs/s\n(peak \u00d7 batch \u00f7 FLOPs)",
        )
    )
    return True


def _style_axes(ax_mem, ax_thr, batches: list[int], top: float, timed: bool) -> None:
    for axis in (ax_mem, ax_thr):
        axis.set_xscale("log", base=2)
        axis.set_xticks(batches, labels=[str(b) for b in batches])
        axis.minorticks_off()
        axis.set_xlabel("batch size (images per optimizer step)")
        axis.grid(True, alpha=0.3)
        axis.set_xlim(batches[0] / 1.35, batches[-1] * 1.35)
        axis.set_ylim(bottom=0)
    ax_mem.set_ylim(top=top * 1.15)
    ax_mem.set_ylabel("peak allocated memory (GiB)")
    ax_thr.set_ylabel("throughput (imgs/s)")
    ax_mem.set_title("peak memory", fontsize=10)
    ax_thr.set_title("throughput", fontsize=10)
    if not timed:  # say why the axis is empty rather than leave it blank
        ax_thr.text(
            0.5,
            0.5,
            "no measured throughput:\nestimates and failed cells are not timed",
            transform=ax_thr.transAxes,
            ha="center",
            va="center",
            color="0.35",
        )
        ax_thr.set_yticks([])


def batch_figure(
    panel: pd.DataFrame,
    *,
    colors: dict[str, str],
    budgets_bytes: Sequence[int] = (),
    title: str = "",
) -> Figure | None:
    """Peak memory (left) and throughput (right) against batch size, one series per method.

    gids: ``memory:<series>``, ``memory-estimated:<series>``, ``throughput:<series>``,
    ``bound:<series>`` (imgs/s bounds of estimates, when the report names a GPU and nothing was
    timed), ``oom-memory:<method>``, ``oom-throughput:<method>``, ``budget:<bytes>``. None when
    no row has a peak to plot.
    """
    ok = panel[(panel["kind"] == "ok") & panel["peak_gib"].notna()]
    estimated = panel[(panel["kind"] == "estimated") & panel["peak_gib"].notna()]
    oom = panel[panel["kind"] == "oom"]
    if ok.empty and estimated.empty:
        return None
    budgets = budgets_for(panel, budgets_bytes)
    data_max = max(
        ok["peak_gib"].max() if len(ok) else 0, estimated["peak_gib"].max() if len(estimated) else 0
    )
    figure = new_figure(11, 4.6)
    ax_mem, ax_thr = figure.subplots(1, 2)
    _draw_measured(ax_mem, ax_thr, ok, colors)
    handles, _ = ax_mem.get_legend_handles_labels()
    _draw_estimated(ax_mem, estimated, colors, handles)
    top = _draw_budgets(ax_mem, budgets, data_max)
    _draw_ooms(ax_mem, ax_thr, oom, budgets, top)
    timed = bool(ok["imgs_per_s"].notna().any())
    bounded = not timed and _draw_bounds(ax_thr, estimated, colors, handles)
    _style_axes(ax_mem, ax_thr, sorted(panel["batch"].unique()), top, timed=timed or bounded)
    if bounded:
        ax_thr.set_title("throughput bound (no measurement)", fontsize=10)
    if len(oom):
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="X",
                color=OOM_COLOR,
                label="OOM (memory: at its budget;\nthroughput: none)",
            )
        )
    side_legend(ax_thr, handles)
    figure.suptitle(title, fontsize=11)
    return figure
