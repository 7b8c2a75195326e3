"""Every figure of a report, per device and panel, named for the files they are saved to.

Figures are drawn on ``matplotlib.figure.Figure`` objects directly (Agg canvas, no pyplot), so
making a report touches no global matplotlib state and needs no display.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure

from .. import units
from ..units import format_bytes
from .batchplot import batch_figure
from .breakdown import breakdown_figure
from .crossover import CROSSOVER, crossover_sections
from .estimates import estimates_figure
from .frontier import frontier_figure
from .layout import PanelKey, device_groups, panel_title, panels
from .style import method_colors


@dataclass
class ReportFigure:
    """One figure of a report: what it shows, for which device, and where it is saved."""

    kind: str  # frontier | batch | estimates | breakdown
    device: str  # the device label
    panel: str  # 'vgg8, 32x32, K=10'
    filename: str
    figure: Figure


def figure_stem(slug: str, key: PanelKey) -> str:
    """'cpu-test-cpu_vgg8_r32_k10', with '_mem64MiB' for a panel of one budget."""
    arch, res, classes, budget = key
    stem = f"{slug}_{units.slug(arch)}_r{res}" + ("" if pd.isna(classes) else f"_k{int(classes)}")
    return stem + ("" if pd.isna(budget) else f"_mem{format_bytes(int(budget))}")


def _estimates_only(panel: pd.DataFrame) -> bool:
    """Whether a panel's plotted rows are all estimates (no measured cell, no measured OOM)."""
    return bool(
        (panel["kind"] == "estimated").any() and not panel["kind"].isin(["ok", "oom"]).any()
    )


def panel_figures(
    panel: pd.DataFrame,
    key: PanelKey,
    label: str,
    slug: str,
    colors: dict[str, str],
    budgets_bytes: Sequence[int],
) -> list[ReportFigure]:
    """The frontier, batch and breakdown figures of one panel, leaving out those with nothing
    to plot."""
    title = f"{panel_title(*key)} \u2014 {label}"
    # Estimates only: nothing was timed, so the memory of every configuration as bars instead
    # of a batch figure with an empty throughput plot.
    by_batch = (
        ("estimates", estimates_figure) if _estimates_only(panel) else ("batch", batch_figure)
    )
    drawn = (
        (
            "frontier",
            frontier_figure(panel, colors=colors, budgets_bytes=budgets_bytes, title=title),
        ),
        (by_batch[0], by_batch[1](panel, colors=colors, budgets_bytes=budgets_bytes, title=title)),
        ("breakdown", breakdown_figure(panel, title=f"memory at the peak \u2014 {title}")),
    )
    stem = figure_stem(slug, key)
    return [
        ReportFigure(kind, label, panel_title(*key), f"{kind}_{stem}.png", figure)
        for kind, figure in drawn
        if figure is not None
    ]


def make_figures(cells: pd.DataFrame, budgets_bytes: Sequence[int] = ()) -> list[ReportFigure]:
    """Every figure of a report, per device and (arch, res, classes); nothing for panels with
    no plottable row, so no figure is ever empty."""
    colors = method_colors(cells["method"].unique())
    out = []
    for label, slug, rows in device_groups(cells):
        for key, panel in panels(rows):
            out += panel_figures(panel, key, label, slug, colors, budgets_bytes)
    for title, _, _, figure in crossover_sections(cells):
        out.append(
            ReportFigure(
                "crossover", CROSSOVER, title, f"crossover_{units.slug(title)}.png", figure
            )
        )
    return out
