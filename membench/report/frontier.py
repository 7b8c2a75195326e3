"""The memory-throughput frontier of one panel: x peak allocated memory, y imgs/s.

One series per method, the Pareto front as a step line, device budgets as vertical lines, and a
strip below the axes for the cells that have no throughput: OOM cells at the budget they failed,
estimates as hollow markers at their predicted peak.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..units import GIB, format_size
from .labels import LabelledPoint, place_labels
from .layout import Budget, batch_label, budgets_for, oom_position, pareto_front, series
from .style import (
    BUDGET_COLOR,
    BUDGET_RANGE,
    OOM_COLOR,
    PARETO_COLOR,
    method_sort_key,
    new_figure,
    side_legend,
)

XLABEL = "peak allocated memory (GiB)"


@dataclass
class _Frontier:
    """What a frontier shows and the x range it needs."""

    ok: pd.DataFrame  # measured peak and throughput: the main axes
    estimated: pd.DataFrame  # predicted peak, no throughput: the strip
    oom: pd.DataFrame  # the strip, at the budget each hit
    shown: list[Budget]  # budgets drawn as lines
    off_scale: list[Budget]  # budgets only named in the legend
    x_right: float  # GiB
    oom_x: dict  # row index -> x of an OOM marker (GiB)

    @property
    def strip_methods(self) -> list[str]:
        methods = set(self.estimated["method"]) | set(self.oom["method"])
        return sorted(methods, key=method_sort_key)


def _frontier_data(panel: pd.DataFrame, budgets_bytes: Sequence[int]) -> _Frontier | None:
    ok = panel[(panel["kind"] == "ok") & panel["peak_gib"].notna() & panel["imgs_per_s"].notna()]
    estimated = panel[(panel["kind"] == "estimated") & panel["peak_gib"].notna()]
    oom = panel[panel["kind"] == "oom"]
    if ok.empty:
        return None
    budgets = budgets_for(panel, budgets_bytes)
    data_max = max(
        ok["peak_gib"].max() if len(ok) else 0, estimated["peak_gib"].max() if len(estimated) else 0
    )
    oom_at = {i: oom_position(row, budgets) for i, row in oom.iterrows()}
    failed_at = {v / GIB for v in oom_at.values() if v is not None}
    shown = [
        b for b in budgets if b.bytes / GIB <= BUDGET_RANGE * data_max or b.bytes / GIB in failed_at
    ]
    off_scale = [b for b in budgets if b not in shown]
    x_right = max([data_max] + [b.bytes / GIB for b in shown] + list(failed_at)) * 1.12
    oom_x = {
        i: (v / GIB if v is not None and v / GIB <= x_right else x_right * 0.97)
        for i, v in oom_at.items()
    }
    return _Frontier(ok, estimated, oom, shown, off_scale, x_right, oom_x)


def _axes(n_strip: int) -> tuple[Figure, object, object]:
    """The figure, its main axes and (with rows in it) the strip below sharing its x axis."""
    height = 4.8 + (0.35 * n_strip + 0.6 if n_strip else 0)
    figure = new_figure(9.5, height)
    if not n_strip:
        return figure, figure.add_subplot(), None
    grid = figure.add_gridspec(2, 1, height_ratios=[4.8, 0.35 * n_strip + 0.6])
    ax = figure.add_subplot(grid[0])
    return figure, ax, figure.add_subplot(grid[1], sharex=ax)


def _draw_measured(ax, ok: pd.DataFrame, colors: dict[str, str]) -> list[LabelledPoint]:
    """The Pareto front and one line per series; returns the batch labels of the points."""
    front = pareto_front(ok) if len(ok) else ok
    if len(front):
        ax.step(
            front["peak_gib"],
            front["imgs_per_s"],
            where="post",
            color=PARETO_COLOR,
            alpha=0.18,
            linewidth=7,
            solid_capstyle="round",
            zorder=1,
            gid="pareto",
            label="Pareto front (ok cells)",
        )
    labels = []
    for method, label, marker, rows in series(ok):
        ax.plot(
            rows["peak_gib"],
            rows["imgs_per_s"],
            marker=marker,
            markersize=6,
            linewidth=1.3,
            color=colors[method],
            label=label,
            gid=f"measured:{label}",
            zorder=3,
        )
        spread_bars(ax, rows["peak_gib"], rows, colors[method], f"spread:{label}")
        labels += [
            (x, y, batch_label(r), colors[method])
            for x, y, (_, r) in zip(rows["peak_gib"], rows["imgs_per_s"], rows.iterrows())
        ]
    return labels


def spread_bars(ax, x, rows: pd.DataFrame, color: str, gid: str) -> None:
    """Error bars from imgs/s at the slow to the fast tenth of each point's steps (a median
    alone hides how far its steps spread); nothing where no step times were recorded."""
    has = rows["imgs_p10"].notna() & rows["imgs_p90"].notna()
    if not has.any():
        return
    y = rows.loc[has, "imgs_per_s"]
    low, high = rows.loc[has, "imgs_p10"], rows.loc[has, "imgs_p90"]
    ax.errorbar(
        x[has],
        y,
        yerr=[(y - low).clip(lower=0), (high - y).clip(lower=0)],
        fmt="none",
        ecolor=color,
        elinewidth=1,
        capsize=2,
        alpha=0.6,
        zorder=2,
        gid=gid,
        label=f"_{gid}",  # the container's name (a leading '_' keeps it out of the legend)
    )


def _draw_budgets(ax, strip, shown: list[Budget]) -> None:
    for budget in shown:
        for axis in (ax, strip) if strip else (ax,):
            axis.axvline(
                budget.bytes / GIB,
                color=BUDGET_COLOR,
                linestyle="--",
                linewidth=1,
                zorder=0,
                gid=f"budget:{int(budget.bytes)}",
            )
        # at the foot of the line: high memory with low throughput is where points are rarest
        ax.annotate(
            f"{format_size(budget.bytes)} ({budget.source})",
            (budget.bytes / GIB, 0.0),
            xycoords=ax.get_xaxis_transform(),
            xytext=(-3, 4),
            textcoords="offset points",
            rotation=90,
            ha="right",
            va="bottom",
            fontsize=7.5,
            color=BUDGET_COLOR,
        )


def _style_main(ax, data: _Frontier, title: str) -> None:
    ax.set_ylabel("throughput (imgs/s)")
    ax.set_xlim(0, data.x_right)
    ax.set_ylim(0, (data.ok["imgs_per_s"].max() * 1.15) if len(data.ok) else 1)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=11)


def _strip_row(
    strip, row_index: int, method: str, data: _Frontier, colors: dict[str, str]
) -> list[LabelledPoint]:
    """One method's row of the strip: hollow estimates at their peak, red X at the budget hit."""
    labels = []
    mine = data.estimated[data.estimated["method"] == method].sort_values("batch")
    if len(mine):
        strip.plot(
            mine["peak_gib"],
            [row_index] * len(mine),
            linestyle="none",
            marker="o",
            markersize=7,
            markerfacecolor="none",
            markeredgecolor=colors[method],
            markeredgewidth=1.5,
            gid=f"estimated:{method}",
        )
        labels += [
            (x, row_index, batch_label(r) + " > budget", OOM_COLOR)
            if r["over_budget"]
            else (x, row_index, batch_label(r), colors[method])
            for x, (_, r) in zip(mine["peak_gib"], mine.iterrows())
        ]
    failed = data.oom[data.oom["method"] == method].sort_values("batch")
    if len(failed):
        xs = [data.oom_x[i] for i in failed.index]
        strip.plot(
            xs,
            [row_index] * len(xs),
            linestyle="none",
            marker="X",
            markersize=9,
            color=OOM_COLOR,
            gid=f"oom:{method}",
        )
        labels += [
            (x, row_index, batch_label(r) + " OOM", OOM_COLOR)
            for x, (_, r) in zip(xs, failed.iterrows())
        ]
    return labels


def _draw_strip(ax, strip, data: _Frontier, colors: dict[str, str]) -> list[LabelledPoint]:
    """The "no timing" strip below the axes, one row per method; returns its point labels."""
    methods = data.strip_methods
    labels = []
    for row_index, method in enumerate(methods):
        labels += _strip_row(strip, row_index, method, data, colors)
    strip.set_yticks(range(len(methods)), labels=methods, fontsize=8)
    strip.set_ylim(len(methods) - 0.4, -0.6)
    strip.set_ylabel("no timing", fontsize=8)
    strip.grid(True, axis="x", alpha=0.3)
    strip.set_xlabel(XLABEL)
    ax.tick_params(labelbottom=False)
    return labels


def _legend(ax, data: _Frontier) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if len(data.estimated):
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="o",
                markerfacecolor="none",
                markeredgecolor="0.3",
                label="estimated peak (no timing)",
            )
        )
    if len(data.oom):
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="X",
                color=OOM_COLOR,
                label="OOM, at the budget it hit",
            )
        )
    if data.shown:
        handles.append(Line2D([], [], linestyle="--", color=BUDGET_COLOR, label="memory budget"))
    for budget in data.off_scale:
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                label=f"budget {format_size(budget.bytes)} "
                f"({budget.source}):\nfar right, not drawn",
            )
        )
    side_legend(ax, handles)


def frontier_figure(
    panel: pd.DataFrame,
    *,
    colors: dict[str, str],
    budgets_bytes: Sequence[int] = (),
    title: str = "",
) -> Figure | None:
    """The memory-throughput frontier of one device's (arch, res, classes) rows.

    Artists carry gids a reader of the figure can find them by: ``measured:<series>`` (x GiB,
    y imgs/s), ``pareto``, ``estimated:<method>`` and ``oom:<method>`` (in the strip below the
    axes, x GiB), ``budget:<bytes>``. None when no row has both a peak and a throughput (an
    estimate-only panel): its memory is drawn by ``batch_figure`` instead of an empty frontier.
    """
    data = _frontier_data(panel, budgets_bytes)
    if data is None:
        return None
    figure, ax, strip = _axes(len(data.strip_methods))
    labels = _draw_measured(ax, data.ok, colors)
    _draw_budgets(ax, strip, data.shown)
    _style_main(ax, data, title)
    strip_labels = []
    if strip:
        strip_labels = _draw_strip(ax, strip, data, colors)
    else:
        ax.set_xlabel(XLABEL)
    _legend(ax, data)
    place_labels(figure, [(ax, labels)] + ([(strip, strip_labels)] if strip else []))
    return figure
