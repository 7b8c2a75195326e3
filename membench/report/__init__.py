"""Reports: read every ``cells.csv`` under some folders and write a Markdown report with figures.

The report is kept per device: rows measured on different devices (a CPU run and a GPU run, or
two different GPUs that both call themselves ``cuda:0``) never share a figure or a table, and are
never averaged. Within a device, each (arch, resolution, classes) gets

- the memory-throughput frontier (x peak allocated memory, y imgs/s, one series per method, the
  Pareto front as a step line, device budgets as vertical lines, and a strip below the axes for
  the cells that have no throughput: OOM cells at the budget they failed, estimates as hollow
  markers at their predicted peak);
- peak memory and throughput against batch size;
- the memory breakdown at the peak as stacked bars, where the data has it;
- a table with ratios to ``bp`` at the same batch, estimates beside measurements;

and, where cells match the paper's operating points, a table with the paper's ratios beside ours.

Modules, in the order a report is made (docs/report.md):

- ``load``: reading and classifying the rows (``load_cells``);
- ``layout``: devices, panels, series, budgets, the Pareto front; ``style``: colours, markers;
- ``frontier``, ``batchplot``, ``breakdown``, ``estimates`` (a panel of estimates only): one
  figure each; ``labels``: point labels; ``figures``: every figure of a report
  (``make_figures``; memory over a step is ``membench.timeline.figure``'s);
- ``markdown``: tables as columns (``Column``, ``Table``) and their Markdown; ``tables``: the
  panel and failure tables; ``paper``: the paper's operating points and their tables;
- ``crossover`` and ``depth_model``: peak memory against depth and its model
  (docs/depth-crossover.md); ``multi_device``: cells on several devices, with the schedule
  model beside the pipelines (docs/multi-device.md);
- ``render``: report.md's text and the report folder (``render_report``, ``build_report``).
"""

from __future__ import annotations

from ..units import GIB
from .batchplot import batch_figure
from .breakdown import breakdown_figure
from .figures import ReportFigure, make_figures
from .frontier import frontier_figure
from .layout import (
    Budget,
    batch_label,
    budgets_for,
    device_groups,
    device_label,
    oom_position,
    panel_title,
    panels,
    pareto_front,
)
from .load import REPORT_REQUIRED_COLUMNS, LoadedCells, load_cells
from .markdown import Column, Table, markdown_table
from .paper import PAPER_OPERATING_POINTS, PAPER_SOURCE, PaperPoint, paper_tables
from .render import FIGURES_DIR, REPORT_FILE, build_report, default_report_dir, render_report
from .style import METHOD_COLORS, method_colors, method_sort_key
from .tables import failures_table, panel_table

__all__ = [
    "FIGURES_DIR",
    "GIB",
    "METHOD_COLORS",
    "PAPER_OPERATING_POINTS",
    "PAPER_SOURCE",
    "REPORT_FILE",
    "REPORT_REQUIRED_COLUMNS",
    "Budget",
    "Column",
    "LoadedCells",
    "PaperPoint",
    "ReportFigure",
    "Table",
    "batch_figure",
    "batch_label",
    "breakdown_figure",
    "budgets_for",
    "build_report",
    "default_report_dir",
    "device_groups",
    "device_label",
    "failures_table",
    "frontier_figure",
    "load_cells",
    "make_figures",
    "markdown_table",
    "method_colors",
    "method_sort_key",
    "oom_position",
    "panel_table",
    "panel_title",
    "panels",
    "paper_tables",
    "pareto_front",
    "render_report",
]
