"""The figure of a panel that holds estimates only: every configuration's predicted peak as one
sorted horizontal bar (stacked by the device total's terms where the estimates carry them:
tensors, workspaces, reserve slack, CUDA context; docs/device-total.md), the budgets as lines,
and, where the report names a GPU, the imgs/s bound beside it. An estimate has no time, so a
throughput-against-batch plot would be empty; a bar per configuration also keeps every tooling
apart without a legend entry per series."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..units import GIB, format_size
from .layout import budgets_for, configuration_label
from .style import BUDGET_COLOR, BUDGET_RANGE, method_sort_key, new_figure, side_legend

OVER_HATCH = "xx"
BAR_INCHES = 0.24  # height per configuration


# The device total's terms (docs/device-total.md), stacked bottom to top on an estimate's bar
# after its tensors' peak: column, legend label, how the method's colour is drawn.
TERM_SEGMENTS = (
    ("workspace_bytes", "workspaces", dict(alpha=0.6)),
    ("reserve_slack_bytes", "allocator reserve slack", dict(alpha=0.3)),
    ("context_bytes", "CUDA context", dict(color="0.55")),
)
TERM_COLUMNS = ["device_total_bytes", *(column for column, _, _ in TERM_SEGMENTS)]


def _stacked(rows: pd.DataFrame) -> bool:
    """Whether the panel's estimates carry the device total's terms (every one of them)."""
    return all(c in rows for c in TERM_COLUMNS) and rows[TERM_COLUMNS].notna().all().all()


def _rows(panel: pd.DataFrame) -> pd.DataFrame:
    rows = panel[(panel["kind"] == "estimated") & panel["peak_gib"].notna()]
    rows = rows.assign(
        _label=[configuration_label(r) for _, r in rows.iterrows()],
        _m=rows["method"].map(method_sort_key),
    )
    if _stacked(rows):  # sorted by what the card must hold
        rows = rows.assign(_total=rows["device_total_bytes"] / GIB)
        return rows.sort_values(["_total", "_m", "_label"])
    return rows.sort_values(["peak_gib", "_m", "_label"])


def _term_segments(ax, rows: pd.DataFrame, colors: dict[str, str]) -> None:
    """Each estimate's device total: its bar (the tensors' peak) continued by its terms, the
    total written at its end. gids ``term:<column>:<label>``."""
    for y, (_, row) in enumerate(rows.iterrows()):
        left = row["peak_gib"]
        for column, _, style in TERM_SEGMENTS:
            width = row[column] / GIB
            color = style.get("color", colors[row["method"]])
            ax.barh(
                y,
                width,
                left=left,
                color=color,
                alpha=style.get("alpha", 1.0),
                edgecolor="none",
                gid=f"term:{column}:{row['_label']}",
            )
            left += width
        ax.annotate(
            f"{row['_total']:.2f}",
            (left, y),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
        )


def _budget_lines(ax, budgets, data_max: float) -> None:
    for budget in budgets:
        at = budget.bytes / GIB
        if at > BUDGET_RANGE * data_max:
            continue
        ax.axvline(
            at, color=BUDGET_COLOR, linestyle="--", linewidth=1, gid=f"budget:{int(budget.bytes)}"
        )
        ax.annotate(
            f"{format_size(budget.bytes)} ({budget.source})",
            (at, 1.0),
            xycoords=ax.get_xaxis_transform(),
            xytext=(3, -3),
            textcoords="offset points",
            va="top",
            fontsize=7.5,
            color=BUDGET_COLOR,
        )


def _bars(
    ax,
    rows: pd.DataFrame,
    values: pd.Series,
    colors: dict[str, str],
    gid: str,
    fmt: str,
    hollow: bool = False,
) -> None:
    """One horizontal bar per row, its value written at its end (``fmt`` empty: nothing)."""
    for y, (value, (_, row)) in enumerate(zip(values, rows.iterrows())):
        if pd.isna(value):
            continue
        color = colors[row["method"]]
        over = bool(row["over_budget"]) and not hollow  # white crosses show on a full bar
        bar = ax.barh(
            y,
            value,
            color="white" if hollow else color,
            edgecolor="white" if over else color,
            hatch=OVER_HATCH if over else ("//" if hollow else None),
            gid=f"{gid}:{row['_label']}",
        )[0]
        if not fmt:
            continue
        ax.annotate(
            fmt.format(value),
            (bar.get_width(), y),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
        )


def estimates_figure(
    panel: pd.DataFrame,
    *,
    colors: dict[str, str],
    budgets_bytes: Sequence[int] = (),
    title: str = "",
) -> Figure | None:
    """Every estimated configuration's peak as a sorted horizontal bar (smallest at the top),
    hatched where it is over its budget, with the budgets drawn; beside it the imgs/s bound
    (``bound_imgs_per_s``) where the report names a GPU. gids ``estimate:<label>``,
    ``bound:<label>``, ``budget:<bytes>``; the bars' labels, top to bottom, are the figure's
    ``bar_labels``. None without an estimate with a peak."""
    rows = _rows(panel)
    if rows.empty:
        return None
    bounded = "bound_imgs_per_s" in rows and rows["bound_imgs_per_s"].notna().any()
    figure = new_figure(11 if bounded else 8, max(3.0, BAR_INCHES * len(rows) + 1.4))
    axes = (
        figure.subplots(1, 2, sharey=True, width_ratios=[3, 2])
        if bounded
        else [figure.add_subplot()]
    )
    ax_mem = axes[0]
    stacked = _stacked(rows)
    _bars(ax_mem, rows, rows["peak_gib"], colors, "estimate", "" if stacked else "{:.2f}")
    data_max = float(rows["_total" if stacked else "peak_gib"].max())
    if stacked:
        _term_segments(ax_mem, rows, colors)
    _budget_lines(ax_mem, budgets_for(panel, budgets_bytes), data_max)
    ax_mem.set_yticks(range(len(rows)), labels=list(rows["_label"]), fontsize=7.5)
    ax_mem.set_ylim(len(rows) - 0.5, -0.5)  # the smallest peak on top
    ax_mem.set_xlim(0, data_max * 1.18)
    if stacked:
        ax_mem.set_xlabel(
            "estimated device total (GiB): tensors + workspaces + reserve slack + context"
        )
        ax_mem.set_title("estimated memory the card must hold, by term", fontsize=10)
    else:
        ax_mem.set_xlabel("estimated peak allocated memory (GiB)")
        ax_mem.set_title("estimated peak memory", fontsize=10)
    if bounded:
        ax_thr = axes[1]
        _bars(ax_thr, rows, rows["bound_imgs_per_s"], colors, "bound", "{:,.0f}", hollow=True)
        ax_thr.set_xlim(0, float(rows["bound_imgs_per_s"].max()) * 1.25)
        ax_thr.set_xlabel("imgs/s upper bound (peak \u00d7 batch \u00f7 FLOPs)")
        ax_thr.set_title("throughput bound (no measurement)", fontsize=10)
    for ax in axes:
        ax.grid(True, axis="x", alpha=0.3)
    methods = sorted(rows["method"].unique(), key=method_sort_key)
    handles = [Patch(facecolor=colors[m], edgecolor=colors[m], label=m) for m in methods]
    if stacked:
        handles += [
            Patch(facecolor=style.get("color", "0.2"), alpha=style.get("alpha", 1.0), label=label)
            for _, label, style in TERM_SEGMENTS
        ]
    if rows["over_budget"].any():
        handles.append(
            Patch(facecolor="0.45", edgecolor="white", hatch=OVER_HATCH, label="over its budget")
        )
    side_legend(axes[-1], handles)
    figure.suptitle(title, fontsize=11)
    figure.bar_labels = list(rows["_label"])
    return figure
