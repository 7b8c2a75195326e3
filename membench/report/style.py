"""The look shared by every figure of a report: colours, markers, and a figure without pyplot.

One colour per method in every figure, the built-ins in their usual order (red is kept for OOM
markers); one colour per memory category of the breakdown.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..runners import BUILTIN_METHODS
from ..schema import CATEGORIES

# (column, legend label, colour) per memory category, bottom to top.
BREAKDOWN_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
BREAKDOWN = [
    (f"{category}_bytes", category.replace("_", " "), BREAKDOWN_COLORS[i % len(BREAKDOWN_COLORS)])
    for i, category in enumerate(CATEGORIES)
]

METHOD_ORDER = list(BUILTIN_METHODS)
# By name, so a new built-in method never shifts an existing one's colour.
METHOD_COLORS = {
    "bp": "#1f77b4",
    "bp-accum": "#ff7f0e",
    "bp-ckpt": "#2ca02c",
    "bp-sac": "#17becf",
    "bp-offload": "#bcbd22",
    "bp-deepsup": "#9467bd",
    "ff-naive": "#8c564b",
    "ff-pipelined": "#e377c2",
}
EXTRA_METHOD_COLORS = [
    "#7f7f7f",
    "#393b79",
    "#637939",
    "#8c6d31",
    "#7b4173",
    "#3182bd",
    "#31a354",
    "#756bb1",
]
OOM_COLOR = "#d62728"
PARETO_COLOR = "#000000"
BUDGET_COLOR = "#555555"
# A budget further right than this multiple of the largest plotted peak would squash every point
# into the left edge; it is named in a corner note instead of drawn.
BUDGET_RANGE = 3.0
# Markers of the series of one method split by micro-batch (the first is every other series').
VARIANT_MARKERS = ["o", "s", "^", "D", "v", "P"]


def method_sort_key(method: str) -> tuple[int, str]:
    """Built-in methods in their usual order, then others alphabetically."""
    return (
        (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)
    )


def method_colors(methods: Iterable[str]) -> dict[str, str]:
    """A fixed colour for each built-in method and a stable one for every other method."""
    colors = dict(METHOD_COLORS)
    extras = sorted({m for m in methods if m not in colors})
    for i, method in enumerate(extras):
        colors[method] = EXTRA_METHOD_COLORS[i % len(EXTRA_METHOD_COLORS)]
    return colors


# Legend entries per column right of the axes; more entries add columns and widen the figure,
# so a grid with many methods and toolings keeps its legend inside the image.
LEGEND_ROWS = 18
LEGEND_COLUMN_INCHES = 2.6


def side_legend(ax, handles: list) -> None:
    """The legend right of ``ax``, in as many columns as its entries need."""
    columns = max(1, math.ceil(len(handles) / LEGEND_ROWS))
    if columns > 1:
        figure = ax.get_figure()
        width, height = figure.get_size_inches()
        figure.set_size_inches(width + LEGEND_COLUMN_INCHES * (columns - 1), height)
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
        ncols=columns,
    )


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas: no pyplot, no global state, no display needed."""
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure
