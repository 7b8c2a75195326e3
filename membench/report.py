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

Figures are drawn on ``matplotlib.figure.Figure`` objects directly (Agg canvas, no pyplot), so
making a report touches no global matplotlib state and needs no display.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from . import __version__
from .compare import device_kind, format_size, is_estimate_device
from .gating import gpu_slug
from .grid import format_bytes
from .memtrack import CATEGORIES
from .results import CELL_COLUMNS, ResultsError, find_cells_files, read_cells
from .runners import BUILTIN_METHODS

GIB = 2**30
REPORT_FILE = "report.md"
FIGURES_DIR = "figures"

# Beyond read_cells' own required columns, a report cannot say anything without these two.
REPORT_REQUIRED_COLUMNS = [
    "cell_id", "method", "arch", "res", "batch", "device", "status",
    "peak_allocated_bytes", "imgs_per_s",
]
NUMERIC_COLUMNS = [
    "res", "batch", "micro_batch", "classes", "seed", "device_mem_bytes", "warmup", "steps",
    "step_ms_median", "step_ms_p10", "step_ms_p90", "step_ms_mean", "imgs_per_s",
    "peak_allocated_bytes", "peak_reserved_bytes", "host_peak_rss_bytes", "nvml_used_bytes",
    *(f"{category}_bytes" for category in CATEGORIES),
]
# (column, legend label, colour) per memory category, in memtrack's order (bottom to top).
BREAKDOWN_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
BREAKDOWN = [
    (f"{category}_bytes", category.replace("_", " "), BREAKDOWN_COLORS[i % len(BREAKDOWN_COLORS)])
    for i, category in enumerate(CATEGORIES)
]

# One colour per method in every figure of a report, the built-ins in the spec's order. Red is
# kept for OOM markers.
METHOD_ORDER = list(BUILTIN_METHODS)
BUILTIN_METHOD_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"]
METHOD_COLORS = dict(zip(METHOD_ORDER, BUILTIN_METHOD_PALETTE))
EXTRA_METHOD_COLORS = ["#17becf", "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#8c6d31",
                       "#7b4173", "#3182bd", "#31a354", "#756bb1"]
OOM_COLOR = "#d62728"
PARETO_COLOR = "#000000"
BUDGET_COLOR = "#555555"
# A budget further right than this multiple of the largest plotted peak would squash every point
# into the left edge; it is named in a corner note instead of drawn.
BUDGET_RANGE = 3.0


@dataclass(frozen=True)
class PaperPoint:
    """One operating point the paper reports: a cell's peak allocated memory and throughput."""

    arch: str
    res: int
    batch: int
    method: str
    micro_batch: int | None
    peak_gb: float | None
    imgs_per_s: float | None
    memory_vs_bp: float
    throughput_vs_bp: float
    note: str = ""


PAPER_SOURCE = (
    "arXiv:2606.06539v1, \"Synthetic Benchmarks Overstate Forward-Forward Scaling\", Sec. 6.2 "
    "and App. D.7 (RTX 4060 Laptop 8 GB, PyTorch 2.9.1, CUDA 13.0; 5 warmup + 20 timed steps, "
    "peak = torch.cuda.max_memory_allocated); reproduced in SPEC.md section 8"
)
# Ratios to bp are what is compared, since the hardware differs; the absolute figures are the
# paper's as printed ("GB", unit as in the paper). ff-naive is given only as ratios there.
PAPER_OPERATING_POINTS: tuple[PaperPoint, ...] = (
    PaperPoint("vgg8", 32, 256, "bp", None, 1.589, 1586, 1.0, 1.0),
    PaperPoint("vgg8", 32, 256, "ff-pipelined", None, 1.535, 1726, 1.535 / 1.589, 1726 / 1586),
    PaperPoint("vgg8", 32, 256, "ff-naive", None, None, None, 1.05, 0.70,
               "paper gives only 'about 5% more memory, about 30% less throughput than bp'"),
    PaperPoint("vgg11", 224, 128, "bp", None, 8.18, 14, 1.0, 1.0,
               "bp spilled to host memory on the 8 GB card, so its throughput collapsed"),
    PaperPoint("vgg11", 224, 128, "bp-accum", 64, 4.18, 157, 4.18 / 8.18, 157 / 14),
    PaperPoint("vgg11", 224, 128, "bp-ckpt", None, 6.35, 92, 6.35 / 8.18, 92 / 14),
    PaperPoint("vgg11", 224, 128, "ff-pipelined", None, 7.90, 138, 7.90 / 8.18, 138 / 14),
)


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass
class LoadedCells:
    """The rows a report shows, one per cell and device, plus what was left out and why."""

    cells: pd.DataFrame
    sources: list[tuple[Path, int]]
    superseded: int = 0
    notes: list[str] = field(default_factory=list)


def _card_memory(cells_file: Path, device: str) -> float:
    """Total memory of the GPU a row ran on, from the env.json beside its cells.csv (else NaN)."""
    match = re.fullmatch(r"cuda(?::(\d+))?", str(device))
    env_file = cells_file.parent / "env.json"
    if not match or not env_file.exists():
        return math.nan
    try:
        gpus = json.loads(env_file.read_text()).get("gpus") or []
    except (OSError, ValueError, AttributeError):
        return math.nan
    index = int(match[1] or 0)
    for gpu in gpus:
        if isinstance(gpu, dict) and gpu.get("index") == index and gpu.get("total_memory_bytes"):
            return float(gpu["total_memory_bytes"])
    return math.nan


def _read_one(cells_file: Path) -> pd.DataFrame:
    frame = read_cells(cells_file)
    missing = [c for c in REPORT_REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ResultsError(f"{cells_file} lacks column(s) {', '.join(missing)}; "
                           "is it a membench cells.csv?")
    for column in CELL_COLUMNS:
        if column not in frame.columns:  # older or third-party files: optional columns unknown
            frame[column] = math.nan
    frame["source"] = str(cells_file)
    card_memory = {d: _card_memory(cells_file, d) for d in frame["device"].unique()}
    frame["card_mem_bytes"] = frame["device"].map(card_memory).astype(float)
    return frame


def load_cells(inputs: Sequence[Path]) -> LoadedCells:
    """Every ``cells.csv`` at or under ``inputs``, normalised, with repeated cells resolved.

    A cell measured more than once on the same device (same cell_id, device, device name and
    budget) keeps only its latest row by ``started_at``; estimates and measurements of one cell
    are both kept. Raises ResultsError when there is nothing to report or a file is not a
    membench cells.csv.
    """
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ResultsError("no results given; pass a results folder, e.g. `membench report results/`")
    files = find_cells_files(inputs)
    if not files:
        raise ResultsError(f"no cells.csv under {', '.join(map(str, inputs))}; "
                           "run `membench sweep` first")
    frames, sources = [], []
    for file in files:
        frame = _read_one(file)
        sources.append((file, len(frame)))
        if len(frame):
            frames.append(frame)
    if not frames:
        raise ResultsError(f"{', '.join(map(str, files))}: no result rows (header only)")
    cells = pd.concat(frames, ignore_index=True)

    for column in NUMERIC_COLUMNS:
        cells[column] = pd.to_numeric(cells[column], errors="coerce")
    for column in ("cell_id", "method", "arch", "device", "device_name", "status", "error",
                   "memory_source", "started_at"):
        cells[column] = cells[column].astype("string").fillna("").astype(str).str.strip()
    cells["status"] = cells["status"].str.lower()
    notes = []
    unusable = cells["batch"].isna() | cells["res"].isna() | (cells["method"] == "")
    if unusable.any():
        notes.append(f"{int(unusable.sum())} row(s) without a readable method, batch or "
                     "resolution were left out.")
        cells = cells[~unusable].copy()
    if cells.empty:
        raise ResultsError(f"{', '.join(map(str, files))}: no usable result rows")
    cells["batch"] = cells["batch"].astype(int)
    cells["res"] = cells["res"].astype(int)

    cells["is_estimate"] = (cells["status"] == "estimated") | (cells["memory_source"] == "estimate")
    cells["kind"] = "failed"
    cells.loc[cells["status"] == "ok", "kind"] = "ok"
    cells.loc[cells["status"] == "oom", "kind"] = "oom"
    # An estimate over its budget is an OOM row with the full predicted peak: still a prediction
    # worth plotting, flagged by ``over_budget``.
    predicted = (cells["is_estimate"] & cells["status"].isin(["estimated", "oom"])
                 & cells["peak_allocated_bytes"].notna())
    cells.loc[cells["is_estimate"], "kind"] = "failed"
    cells.loc[predicted, "kind"] = "estimated"
    cells["over_budget"] = predicted & (cells["status"] == "oom")
    cells["peak_gib"] = cells["peak_allocated_bytes"] / GIB
    cells["started"] = pd.to_datetime(cells["started_at"], utc=True, errors="coerce",
                                      format="ISO8601")
    cells["order"] = range(len(cells))

    # Keep the latest run of each repeated cell; rows without a time count as oldest and, among
    # themselves, the one read last wins.
    key = ["device", "device_name", "cell_id", "budget_key", "is_estimate"]
    cells["budget_key"] = cells["device_mem_bytes"].fillna(-1)
    cells = cells.sort_values(["started", "order"], na_position="first", kind="stable")
    before = len(cells)
    cells = cells.drop_duplicates(key, keep="last").sort_values("order")
    cells = cells.drop(columns=["budget_key", "order"]).reset_index(drop=True)
    return LoadedCells(cells, sources, before - len(cells), notes)


# ---------------------------------------------------------------------------------------------
# Grouping and small helpers


def method_sort_key(method: str) -> tuple[int, str]:
    """Built-in methods in their usual order, then others alphabetically."""
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def method_colors(methods: Iterable[str]) -> dict[str, str]:
    """A fixed colour for each built-in method and a stable one for every other method."""
    colors = dict(METHOD_COLORS)
    extras = sorted({m for m in methods if m not in colors})
    for i, method in enumerate(extras):
        colors[method] = EXTRA_METHOD_COLORS[i % len(EXTRA_METHOD_COLORS)]
    return colors


def device_label(device: str, device_name: str) -> str:
    """'cuda:0 (NVIDIA H200)'; the device alone when its name is unknown or says nothing."""
    return f"{device} ({device_name})" if device_name and device_name != "estimate" else device


def panel_title(arch: str, res: int, classes: float, budget_bytes: float = math.nan) -> str:
    """'vgg8, 32x32, K=10', with ', budget 8 GiB' for cells run under --device-mem."""
    k = "" if pd.isna(classes) else f", K={int(classes)}"
    budget = "" if pd.isna(budget_bytes) else f", budget {format_size(int(budget_bytes))}"
    return f"{arch}, {res}\u00d7{res}{k}{budget}"


def batch_label(row) -> str:
    """'b64', or 'b128/mb64' for a cell that splits its batch into micro-batches."""
    label = f"b{int(row['batch'])}"
    if not pd.isna(row.get("micro_batch")) and int(row["micro_batch"]) != int(row["batch"]):
        label += f"/mb{int(row['micro_batch'])}"
    return label


def device_groups(cells: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(label, file-name slug, rows) per device, in order of first appearance; slugs are unique.

    Estimates (device 'cuda (estimate)', 'cpu (estimate)') predict for a kind of device, not a
    particular one, so they join every measured device of that kind, beside its measurements;
    with no such device they form their own group.
    """
    grouped = list(cells.groupby(["device", "device_name"], sort=False))
    measured_kinds = {device_kind(d) for (d, _), _ in grouped if not is_estimate_device(d)}
    estimates = {}
    for (device, _), rows in grouped:
        if is_estimate_device(device) and device_kind(device) in measured_kinds:
            estimates.setdefault(device_kind(device), []).append(rows)
    groups, seen = [], set()
    for (device, name), rows in grouped:
        if is_estimate_device(device) and device_kind(device) in measured_kinds:
            continue
        if not is_estimate_device(device) and device_kind(device) in estimates:
            rows = pd.concat([rows, *estimates[device_kind(device)]])
        slug = gpu_slug(device if not name else f"{device}-{name}")[:40].strip("-")
        base, n = slug, 2
        while slug in seen:
            slug, n = f"{base}-{n}", n + 1
        seen.add(slug)
        groups.append((device_label(device, name), slug, rows))
    return groups


def panels(rows: pd.DataFrame) -> list[tuple[tuple[str, int, float, float], pd.DataFrame]]:
    """The rows of one device split by (arch, res, classes), sorted; the key's last item is the
    device budget when a configuration was measured under several budgets, else NaN.

    Cells measured with and without ``--device-mem`` (two runs of the same grid) get a panel per
    budget, so a line never joins points of different runs; a lone failed cell under a budget
    stays beside the others, drawn at the budget it hit.
    """
    keyed = rows.assign(_classes=rows["classes"].fillna(-1), _budget=rows["device_mem_bytes"].fillna(-1))
    out = []
    for (arch, res, classes), panel in keyed.groupby(["arch", "res", "_classes"], sort=True):
        classes = math.nan if classes == -1 else classes
        fitted = panel["kind"].isin(["ok", "estimated"]) & ~panel["over_budget"].fillna(False).astype(bool)
        measured_budgets = panel.loc[fitted, "_budget"].unique()
        if len(measured_budgets) <= 1:
            out.append(((arch, int(res), classes, math.nan), panel.drop(columns=["_classes", "_budget"])))
            continue
        for budget, part in panel.groupby("_budget", sort=True):
            out.append(((arch, int(res), classes, math.nan if budget == -1 else budget),
                        part.drop(columns=["_classes", "_budget"])))
    return out


@dataclass(frozen=True)
class Budget:
    """A memory limit drawn on a figure: its size and where it came from."""

    bytes: float
    source: str  # "--device-mem" (in the data), "card" (env.json) or "--budget"


def budgets_for(panel: pd.DataFrame, budgets_bytes: Sequence[int] = ()) -> list[Budget]:
    """The budgets that apply to a panel's rows and those asked for, deduplicated, ascending."""
    found: dict[float, str] = {}
    for value in panel["device_mem_bytes"].dropna().unique():
        found.setdefault(float(value), "--device-mem")
    for value in panel["card_mem_bytes"].dropna().unique():
        found.setdefault(float(value), "card")
    for value in budgets_bytes:
        found.setdefault(float(value), "--budget")
    return [Budget(b, s) for b, s in sorted(found.items())]


def oom_position(row, budgets: list[Budget]) -> float | None:
    """Bytes at which to draw an OOM cell: its own budget, else the card's, else the largest
    --budget; None when nothing says where it failed."""
    for column in ("device_mem_bytes", "card_mem_bytes"):
        if not pd.isna(row.get(column)):
            return float(row[column])
    asked = [b.bytes for b in budgets if b.source == "--budget"]
    return max(asked) if asked else None


def pareto_front(points: pd.DataFrame) -> pd.DataFrame:
    """Rows not dominated by another (no other row has less or equal memory and more or equal
    throughput, one of them strictly), sorted by memory."""
    ordered = points.sort_values(["peak_allocated_bytes", "imgs_per_s"], ascending=[True, False])
    keep, best = [], -math.inf
    for position, value in enumerate(ordered["imgs_per_s"]):
        if value > best:
            keep.append(position)
            best = value
    return ordered.iloc[keep]


VARIANT_MARKERS = ["o", "s", "^", "D", "v", "P"]


def _series(rows: pd.DataFrame) -> list[tuple[str, str, str, pd.DataFrame]]:
    """(method, legend label, marker, rows sorted by batch) per series. A method measured at one
    batch with several micro-batches gets one series per micro-batch, so lines never zigzag;
    those series share the method's colour and differ by marker."""
    out = []
    for method in sorted(rows["method"].unique(), key=method_sort_key):
        mine = rows[rows["method"] == method]
        split = mine.groupby("batch")["micro_batch"].nunique().max() > 1
        if split:
            groups = mine.groupby(mine["micro_batch"].fillna(-1), sort=True)
            for i, (mb, part) in enumerate(groups):
                label = method if mb == -1 else f"{method} mb{int(mb)}"
                out.append((method, label, VARIANT_MARKERS[i % len(VARIANT_MARKERS)],
                            part.sort_values("batch")))
        else:
            out.append((method, method, "o", mine.sort_values("batch")))
    return out


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


# ---------------------------------------------------------------------------------------------
# Figures


def _place_labels(figure: Figure, labelled: list[tuple[object, list[tuple[float, float, str, str]]]],
                  fontsize: float = 7.5) -> None:
    """Label points without overlapping each other or the markers: each label takes the first
    free spot of a few around its point (greedy, in display space after layout). The layout is
    then frozen: the labels stay out of it, and a second layout pass would double the cost."""
    if not any(points for _, points in labelled):
        return
    figure.draw_without_rendering()
    for ax, points in labelled:
        _place_axes_labels(figure, ax, points, fontsize)
    figure.set_layout_engine("none")


def _place_axes_labels(figure: Figure, ax, points: list[tuple[float, float, str, str]],
                       fontsize: float) -> None:
    scale = figure.dpi / 72
    frame = ax.get_window_extent()
    to_display = ax.transData.transform
    markers = [to_display((x, y)) for x, y, _, _ in points]
    taken = [(mx - 4 * scale, my - 4 * scale, mx + 4 * scale, my + 4 * scale) for mx, my in markers]
    candidates = [(5, 3, "left", "bottom"), (5, -3, "left", "top"), (-5, 3, "right", "bottom"),
                  (-5, -3, "right", "top"), (0, 7, "center", "bottom"), (0, -7, "center", "top"),
                  (9, 12, "left", "bottom"), (-9, -12, "right", "top")]
    for (x, y, text, color), (mx, my) in zip(points, markers):
        width, height = len(text) * fontsize * 0.6 * scale, fontsize * 1.25 * scale
        best, best_overlap = None, math.inf
        for dx, dy, ha, va in candidates:
            left = mx + dx * scale - {"left": 0, "center": width / 2, "right": width}[ha]
            bottom = my + dy * scale - {"bottom": 0, "top": height}[va]
            box = (left, bottom, left + width, bottom + height)
            overlap = sum(max(0, min(box[2], t[2]) - max(box[0], t[0])) *
                          max(0, min(box[3], t[3]) - max(box[1], t[1])) for t in taken)
            inside = (max(0, min(box[2], frame.x1) - max(box[0], frame.x0)) *
                      max(0, min(box[3], frame.y1) - max(box[1], frame.y0)))
            overlap += width * height - inside  # a label past the axes edge is cut off
            if overlap < best_overlap:
                best, best_overlap = ((dx, dy, ha, va), box), overlap
            if overlap == 0:
                break
        (dx, dy, ha, va), box = best
        taken.append(box)
        note = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha,
                           va=va, fontsize=fontsize, color=color)
        note.set_in_layout(False)


def frontier_figure(panel: pd.DataFrame, *, colors: dict[str, str],
                    budgets_bytes: Sequence[int] = (), title: str = "") -> Figure | None:
    """The memory-throughput frontier of one device's (arch, res, classes) rows.

    Artists carry gids a reader of the figure can find them by: ``measured:<series>`` (x GiB,
    y imgs/s), ``pareto``, ``estimated:<method>`` and ``oom:<method>`` (in the strip below the
    axes, x GiB), ``budget:<bytes>``. None when no row has both a peak and a throughput (an
    estimate-only panel): its memory is drawn by ``batch_figure`` instead of an empty frontier.
    """
    ok = panel[(panel["kind"] == "ok") & panel["peak_gib"].notna() & panel["imgs_per_s"].notna()]
    estimated = panel[(panel["kind"] == "estimated") & panel["peak_gib"].notna()]
    oom = panel[panel["kind"] == "oom"]
    if ok.empty:
        return None
    budgets = budgets_for(panel, budgets_bytes)
    data_max = max(ok["peak_gib"].max() if len(ok) else 0, estimated["peak_gib"].max()
                   if len(estimated) else 0)
    oom_at = {i: oom_position(row, budgets) for i, row in oom.iterrows()}
    failed_at = {v / GIB for v in oom_at.values() if v is not None}
    shown = [b for b in budgets if b.bytes / GIB <= BUDGET_RANGE * data_max
             or b.bytes / GIB in failed_at]
    off_scale = [b for b in budgets if b not in shown]
    x_right = max([data_max] + [b.bytes / GIB for b in shown] + list(failed_at)) * 1.12
    oom_x = {i: (v / GIB if v is not None and v / GIB <= x_right else x_right * 0.97)
             for i, v in oom_at.items()}

    strip_methods = sorted(set(estimated["method"]) | set(oom["method"]), key=method_sort_key)
    height = 4.8 + (0.35 * len(strip_methods) + 0.6 if strip_methods else 0)
    figure = _new_figure(9.5, height)
    if strip_methods:
        grid = figure.add_gridspec(2, 1, height_ratios=[4.8, 0.35 * len(strip_methods) + 0.6])
        ax = figure.add_subplot(grid[0])
        strip = figure.add_subplot(grid[1], sharex=ax)
    else:
        ax, strip = figure.add_subplot(), None
    labels = []

    front = pareto_front(ok) if len(ok) else ok
    if len(front):
        ax.step(front["peak_gib"], front["imgs_per_s"], where="post", color=PARETO_COLOR,
                alpha=0.18, linewidth=7, solid_capstyle="round", zorder=1, gid="pareto",
                label="Pareto front (ok cells)")
    for method, label, marker, rows in _series(ok):
        ax.plot(rows["peak_gib"], rows["imgs_per_s"], marker=marker, markersize=6, linewidth=1.3,
                color=colors[method], label=label, gid=f"measured:{label}", zorder=3)
        labels += [(x, y, batch_label(r), colors[method])
                   for x, y, (_, r) in zip(rows["peak_gib"], rows["imgs_per_s"], rows.iterrows())]
    for budget in shown:
        for axis in (ax, strip) if strip else (ax,):
            axis.axvline(budget.bytes / GIB, color=BUDGET_COLOR, linestyle="--", linewidth=1,
                         zorder=0, gid=f"budget:{int(budget.bytes)}")
        # at the foot of the line: high memory with low throughput is where points are rarest
        ax.annotate(f"{format_size(budget.bytes)} ({budget.source})", (budget.bytes / GIB, 0.0),
                    xycoords=ax.get_xaxis_transform(), xytext=(-3, 4), textcoords="offset points",
                    rotation=90, ha="right", va="bottom", fontsize=7.5, color=BUDGET_COLOR)
    ax.set_ylabel("throughput (imgs/s)")
    ax.set_xlim(0, x_right)
    ax.set_ylim(0, (ok["imgs_per_s"].max() * 1.15) if len(ok) else 1)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=11)

    strip_labels = []
    if strip:
        for row_index, method in enumerate(strip_methods):
            mine = estimated[estimated["method"] == method].sort_values("batch")
            if len(mine):
                strip.plot(mine["peak_gib"], [row_index] * len(mine), linestyle="none",
                           marker="o", markersize=7, markerfacecolor="none",
                           markeredgecolor=colors[method], markeredgewidth=1.5,
                           gid=f"estimated:{method}")
                strip_labels += [(x, row_index, batch_label(r) + " > budget", OOM_COLOR)
                                 if r["over_budget"] else (x, row_index, batch_label(r),
                                                           colors[method])
                                 for x, (_, r) in zip(mine["peak_gib"], mine.iterrows())]
            failed = oom[oom["method"] == method].sort_values("batch")
            if len(failed):
                xs = [oom_x[i] for i in failed.index]
                strip.plot(xs, [row_index] * len(xs), linestyle="none", marker="X",
                           markersize=9, color=OOM_COLOR, gid=f"oom:{method}")
                strip_labels += [(x, row_index, batch_label(r) + " OOM", OOM_COLOR)
                                 for x, (_, r) in zip(xs, failed.iterrows())]
        strip.set_yticks(range(len(strip_methods)), labels=strip_methods, fontsize=8)
        strip.set_ylim(len(strip_methods) - 0.4, -0.6)
        strip.set_ylabel("no timing", fontsize=8)
        strip.grid(True, axis="x", alpha=0.3)
        strip.set_xlabel("peak allocated memory (GiB)")
        ax.tick_params(labelbottom=False)
    else:
        ax.set_xlabel("peak allocated memory (GiB)")

    handles, _ = ax.get_legend_handles_labels()
    if len(estimated):
        handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="none",
                              markeredgecolor="0.3", label="estimated peak (no timing)"))
    if len(oom):
        handles.append(Line2D([], [], linestyle="none", marker="X", color=OOM_COLOR,
                              label="OOM, at the budget it hit"))
    if shown:
        handles.append(Line2D([], [], linestyle="--", color=BUDGET_COLOR, label="memory budget"))
    for budget in off_scale:
        handles.append(Line2D([], [], linestyle="none", label=f"budget {format_size(budget.bytes)} "
                              f"({budget.source}):\nfar right, not drawn"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              frameon=False)
    _place_labels(figure, [(ax, labels)] + ([(strip, strip_labels)] if strip else []))
    return figure


def batch_figure(panel: pd.DataFrame, *, colors: dict[str, str],
                 budgets_bytes: Sequence[int] = (), title: str = "") -> Figure | None:
    """Peak memory (left) and throughput (right) against batch size, one series per method.

    gids: ``memory:<series>``, ``memory-estimated:<series>``, ``throughput:<series>``,
    ``oom-memory:<method>``, ``oom-throughput:<method>``, ``budget:<bytes>``. None when no row
    has a peak to plot.
    """
    ok = panel[(panel["kind"] == "ok") & panel["peak_gib"].notna()]
    estimated = panel[(panel["kind"] == "estimated") & panel["peak_gib"].notna()]
    oom = panel[panel["kind"] == "oom"]
    if ok.empty and estimated.empty:
        return None
    budgets = budgets_for(panel, budgets_bytes)
    data_max = max(ok["peak_gib"].max() if len(ok) else 0,
                   estimated["peak_gib"].max() if len(estimated) else 0)
    figure = _new_figure(11, 4.6)
    ax_mem, ax_thr = figure.subplots(1, 2)
    for method, label, marker, rows in _series(ok):
        ax_mem.plot(rows["batch"], rows["peak_gib"], marker=marker, color=colors[method],
                    label=label, gid=f"memory:{label}")
        timed = rows[rows["imgs_per_s"].notna()]
        ax_thr.plot(timed["batch"], timed["imgs_per_s"], marker=marker, color=colors[method],
                    label=label, gid=f"throughput:{label}")
    legend_handles, _ = ax_mem.get_legend_handles_labels()
    for method, label, marker, rows in _series(estimated):
        ax_mem.plot(rows["batch"], rows["peak_gib"], marker=marker, linestyle=":",
                    markerfacecolor="none", color=colors[method], gid=f"memory-estimated:{label}")
        if method not in {h.get_label() for h in legend_handles}:
            legend_handles.append(Line2D([], [], marker=marker, linestyle=":",
                                         markerfacecolor="none", color=colors[method],
                                         label=f"{label} (estimated only)"))
    if len(estimated):
        legend_handles.append(Line2D([], [], marker="o", linestyle=":", markerfacecolor="none",
                                     color="0.3", label="estimated peak (dotted, hollow)"))
    top = data_max
    for budget in budgets:
        if budget.bytes / GIB <= BUDGET_RANGE * data_max:
            ax_mem.axhline(budget.bytes / GIB, color=BUDGET_COLOR, linestyle="--", linewidth=1,
                           gid=f"budget:{int(budget.bytes)}")
            ax_mem.annotate(f"{format_size(budget.bytes)} ({budget.source})", (0, budget.bytes / GIB),
                            xycoords=ax_mem.get_yaxis_transform(), xytext=(3, -3),
                            textcoords="offset points", va="top", fontsize=7.5,
                            color=BUDGET_COLOR)
            top = max(top, budget.bytes / GIB)
    for method in sorted(oom["method"].unique(), key=method_sort_key):
        failed = oom[oom["method"] == method]
        at = [oom_position(row, budgets) for _, row in failed.iterrows()]
        ys = [min(v / GIB, top * 1.05) if v is not None else top * 1.05 for v in at]
        ax_mem.plot(failed["batch"], ys, linestyle="none", marker="X", markersize=9,
                    color=OOM_COLOR, gid=f"oom-memory:{method}", clip_on=False, zorder=4)
        ax_thr.plot(failed["batch"], [0] * len(failed), linestyle="none", marker="X",
                    markersize=9, color=OOM_COLOR, gid=f"oom-throughput:{method}",
                    clip_on=False, zorder=4)
        for batch, y in zip(failed["batch"], ys):
            ax_mem.annotate(f"{method} OOM", (batch, y), xytext=(-6, 4), textcoords="offset points",
                            ha="right", fontsize=7, color=OOM_COLOR)
            ax_thr.annotate(f"{method} OOM", (batch, 0), xytext=(-6, 4), textcoords="offset points",
                            ha="right", fontsize=7, color=OOM_COLOR)
    batches = sorted(panel["batch"].unique())
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
    if not ok["imgs_per_s"].notna().any():  # say why the axis is empty rather than leave it blank
        ax_thr.text(0.5, 0.5, "no measured throughput:\nestimates and failed cells are not timed",
                    transform=ax_thr.transAxes, ha="center", va="center", color="0.35")
        ax_thr.set_yticks([])
    handles = legend_handles
    if len(oom):
        handles.append(Line2D([], [], linestyle="none", marker="X", color=OOM_COLOR,
                              label="OOM (memory: at its budget;\nthroughput: none)"))
    ax_thr.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                  frameon=False)
    figure.suptitle(title, fontsize=11)
    return figure


def breakdown_figure(panel: pd.DataFrame, *, title: str = "") -> Figure | None:
    """Stacked bars of the memory at the peak by category, one bar per cell that has all four
    breakdown columns (measured ok or estimated, hatched). gids: ``breakdown:<category>``; the
    bars' order is the figure's ``bar_labels``. None when no row has a breakdown."""
    columns = [c for c, _, _ in BREAKDOWN]
    rows = panel[panel["kind"].isin(["ok", "estimated"]) & panel[columns].notna().all(axis=1)]
    if rows.empty:
        return None
    rows = rows.assign(_m=rows["method"].map(method_sort_key), _e=rows["is_estimate"])
    rows = rows.sort_values(["batch", "_m", "micro_batch", "_e"])
    crowded = len(rows) > 12
    separator = " " if crowded else "\n"
    names = [f"{r['method']}{separator}{batch_label(r)}" + (f"{separator}(est.)" if r["is_estimate"]
                                                          else "") for _, r in rows.iterrows()]
    figure = _new_figure(min(14.0, max(6.5, (0.38 if crowded else 0.55) * len(rows) + 3)), 4.8)
    ax = figure.add_subplot()
    bottom = [0.0] * len(rows)
    # a gap between batch sizes groups the bars of one batch together
    new_batch = (rows["batch"] != rows["batch"].shift()).cumsum() - 1
    positions = [i + 0.6 * g for i, g in enumerate(new_batch)]
    hatches = ["//" if e else "" for e in rows["is_estimate"]]
    handles = []
    for column, name, color in BREAKDOWN:
        handles.append(Patch(facecolor=color, label=name))
        values = (rows[column] / GIB).tolist()
        bars = ax.bar(positions, values, bottom=bottom, color=color, label=name,
                      edgecolor="white", linewidth=0.5, gid=f"breakdown:{name}")
        for bar, hatch in zip(bars, hatches):
            bar.set_hatch(hatch)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(positions, labels=names, fontsize=7.5, rotation=55 if crowded else 0,
                  ha="right" if crowded else "center", rotation_mode="anchor" if crowded else "default")
    ax.set_xlim(-0.6, positions[-1] + 0.6)
    ax.set_ylabel("memory at the peak (GiB)")
    ax.set_title(title, fontsize=11)
    ax.grid(True, axis="y", alpha=0.3)
    if rows["is_estimate"].any():
        handles.append(Patch(facecolor="white", edgecolor="0.3", hatch="//", label="estimated"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              frameon=False)
    figure.bar_labels = [" ".join(n.split()) for n in names]
    return figure


@dataclass
class ReportFigure:
    """One figure of a report: what it shows, for which device, and where it is saved."""

    kind: str  # frontier | batch | breakdown
    device: str  # the device label
    panel: str  # 'vgg8, 32x32, K=10'
    filename: str
    figure: Figure


def make_figures(cells: pd.DataFrame, budgets_bytes: Sequence[int] = ()) -> list[ReportFigure]:
    """Every figure of a report, per device and (arch, res, classes); nothing for panels with
    no plottable row, so no figure is ever empty."""
    colors = method_colors(cells["method"].unique())
    out = []
    for label, slug, rows in device_groups(cells):
        for (arch, res, classes, budget), panel in panels(rows):
            title = f"{panel_title(arch, res, classes, budget)} \u2014 {label}"
            stem = f"{slug}_{gpu_slug(arch)}_r{res}" + ("" if pd.isna(classes) else f"_k{int(classes)}")
            stem += "" if pd.isna(budget) else f"_mem{format_bytes(int(budget))}"
            for kind, figure in (
                ("frontier", frontier_figure(panel, colors=colors, budgets_bytes=budgets_bytes,
                                             title=title)),
                ("batch", batch_figure(panel, colors=colors, budgets_bytes=budgets_bytes,
                                       title=title)),
                ("breakdown", breakdown_figure(panel, title=f"memory at the peak \u2014 {title}")),
            ):
                if figure is not None:
                    out.append(ReportFigure(kind, label, panel_title(arch, res, classes, budget),
                                            f"{kind}_{stem}.png", figure))
    return out


# ---------------------------------------------------------------------------------------------
# Tables


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]],
                   align: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table; ``align`` holds 'l' or 'r' per column. Pipes in cells are
    escaped and line breaks flattened so a cell never breaks the table."""
    def cell(value) -> str:
        return " ".join(str(value).split()).replace("|", "\\|")

    align = align or ["l"] * len(headers)
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value, spec: str, empty: str = "") -> str:
    return empty if value is None or pd.isna(value) else format(value, spec)


def _ratio(value, reference, suffix: str = "") -> str:
    if value is None or reference is None or pd.isna(value) or pd.isna(reference) or not reference:
        return ""
    return f"{value / reference:.3f}\u00d7{suffix}"


def _latest(rows: pd.DataFrame):
    """The latest row of a selection (by started_at, then reading order), or None."""
    if rows.empty:
        return None
    return rows.sort_values("started", na_position="first", kind="stable").iloc[-1]


def panel_table(panel: pd.DataFrame) -> str:
    """One row per configuration: measured and estimated peaks side by side, throughput and
    ratios to bp at the same batch (measured against measured, estimate against estimate)."""
    has_mb = panel["micro_batch"].notna().any()
    has_budget = panel["device_mem_bytes"].notna().any()
    has_estimate = panel["is_estimate"].any()
    keyed = panel.assign(_mb=panel["micro_batch"].fillna(-1), _bud=panel["device_mem_bytes"].fillna(-1))
    bp_measured = {b: _latest(keyed[(keyed["method"] == "bp") & (keyed["kind"] == "ok")
                                   & (keyed["batch"] == b)]) for b in keyed["batch"].unique()}
    bp_estimated = {b: _latest(keyed[(keyed["method"] == "bp") & keyed["is_estimate"]
                                    & (keyed["batch"] == b)]) for b in keyed["batch"].unique()}
    headers = ["method", "batch"] + (["micro-batch"] if has_mb else []) + \
        (["budget (GiB)"] if has_budget else []) + ["status", "peak (GiB)"] + \
        (["estimated peak (GiB)"] if has_estimate else []) + \
        ["imgs/s", "step ms (median)", "memory \u00f7 bp", "imgs/s \u00f7 bp", "memory from"]
    align = ["l", "r"] + (["r"] if has_mb else []) + (["r"] if has_budget else []) + \
        ["l", "r"] + (["r"] if has_estimate else []) + ["r", "r", "r", "r", "l"]
    body = []
    configs = keyed.groupby(["batch", "method", "_mb", "_bud"], sort=False)
    order = sorted(configs.groups, key=lambda k: (k[0], method_sort_key(k[1]), k[2], k[3]))
    for key in order:
        rows = configs.get_group(key)
        measured = _latest(rows[~rows["is_estimate"]])
        estimate = _latest(rows[rows["is_estimate"]])
        batch, method = key[0], key[1]
        main = measured if measured is not None else estimate
        bp_m, bp_e = bp_measured.get(batch), bp_estimated.get(batch)
        memory_ratio = throughput_ratio = ""
        if measured is not None and measured["kind"] == "ok" and bp_m is not None:
            memory_ratio = _ratio(measured["peak_allocated_bytes"], bp_m["peak_allocated_bytes"])
            throughput_ratio = _ratio(measured["imgs_per_s"], bp_m["imgs_per_s"])
        if not memory_ratio and estimate is not None and bp_e is not None:
            memory_ratio = _ratio(estimate["peak_allocated_bytes"], bp_e["peak_allocated_bytes"],
                                  " (est.)")
        line = [method, batch]
        if has_mb:
            line.append(_fmt(main["micro_batch"], ".0f"))
        if has_budget:
            line.append(_fmt(main["device_mem_bytes"] / GIB, ".3f"))
        line += [measured["status"] if measured is not None else "estimated"
                 if estimate["status"] == "estimated" else f"{estimate['status']} (estimated)",
                 _fmt(measured["peak_gib"], ".3f") if measured is not None else ""]
        if has_estimate:
            line.append("" if estimate is None else _fmt(estimate["peak_gib"], ".3f")
                        + (" (> budget)" if estimate["over_budget"] else ""))
        line += [_fmt(main["imgs_per_s"], ",.1f"), _fmt(main["step_ms_median"], ",.1f"),
                 memory_ratio, throughput_ratio, main["memory_source"]]
        body.append(line)
    return markdown_table(headers, body, align)


def failures_table(rows: pd.DataFrame) -> str:
    """The cells that did not produce a measurement, with their one-line error."""
    failed = rows[~rows["status"].isin(["ok", "estimated"])]
    failed = failed.assign(_m=failed["method"].map(method_sort_key)).sort_values(
        ["arch", "res", "batch", "_m"])
    body = [[r["arch"], r["res"], r["method"], batch_label(r), r["status"] or "(empty)",
             _fmt(r["device_mem_bytes"] / GIB, ".3f"), (r["error"][:140] + "\u2026")
             if len(r["error"]) > 140 else r["error"]] for _, r in failed.iterrows()]
    return markdown_table(["arch", "res", "method", "batch", "status", "budget (GiB)", "error"],
                          body, ["l", "r", "l", "l", "l", "r", "l"])


def paper_tables(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """(heading, table) for each paper operating point this device's rows reach: our ratios to
    bp beside the paper's. Only ok measurements count as ours (an estimate has no throughput;
    its memory ratio is shown marked)."""
    out = []
    configs = sorted({(p.arch, p.res, p.batch) for p in PAPER_OPERATING_POINTS})
    for arch, res, batch in configs:
        here = rows[(rows["arch"] == arch) & (rows["res"] == res) & (rows["batch"] == batch)]
        points = [p for p in PAPER_OPERATING_POINTS
                  if (p.arch, p.res, p.batch) == (arch, res, batch)]

        def ours(point: PaperPoint, estimate: bool):
            mine = here[(here["method"] == point.method) & (here["is_estimate"] == estimate)]
            if point.micro_batch is not None:
                mine = mine[mine["micro_batch"] == point.micro_batch]
            ok = mine[mine["kind"] == ("estimated" if estimate else "ok")]
            return _latest(ok) if len(ok) else _latest(mine)

        if not any(ours(p, False) is not None or ours(p, True) is not None for p in points):
            continue
        bp_point = next(p for p in points if p.method == "bp")
        bp_m, bp_e = ours(bp_point, False), ours(bp_point, True)
        bp_ok = bp_m is not None and bp_m["kind"] == "ok"
        body = []
        for point in points:
            measured, estimate = ours(point, False), ours(point, True)
            status = measured["status"] if measured is not None else (
                "estimated" if estimate is not None else "not in these results")
            ok = measured is not None and measured["kind"] == "ok"
            peak = measured["peak_gib"] if ok else None
            imgs = measured["imgs_per_s"] if ok else None
            peak_text = _fmt(peak, ".3f")
            if not ok and estimate is not None:  # no measurement: show the predicted peak, marked
                peak_text = _fmt(estimate["peak_gib"], ".3f") + " (est.)"
            memory_ratio = _ratio(peak, bp_m["peak_gib"] if bp_ok else None)
            throughput_ratio = _ratio(imgs, bp_m["imgs_per_s"] if bp_ok else None)
            if not memory_ratio and estimate is not None and bp_e is not None:
                memory_ratio = _ratio(estimate["peak_gib"], bp_e["peak_gib"], " (est.)")
            label = point.method + (f" mb{point.micro_batch}" if point.micro_batch else "")
            body.append([label, status, peak_text, _fmt(imgs, ",.1f"), memory_ratio,
                         throughput_ratio, _fmt(point.peak_gb, ".3f", "\u2014"),
                         _fmt(point.imgs_per_s, ",.0f", "\u2014"),
                         f"{point.memory_vs_bp:.3f}\u00d7", f"{point.throughput_vs_bp:.3f}\u00d7",
                         point.note])
        table = markdown_table(
            ["method", "our status", "our peak (GiB)", "our imgs/s", "our memory \u00f7 bp",
             "our imgs/s \u00f7 bp", "paper peak (GB)", "paper imgs/s", "paper memory \u00f7 bp",
             "paper imgs/s \u00f7 bp", "note"],
            body, ["l", "l", "r", "r", "r", "r", "r", "r", "r", "r", "l"])
        out.append((f"{arch}, {res}\u00d7{res}, batch {batch}", table))
    return out


# ---------------------------------------------------------------------------------------------
# The report


def default_report_dir(inputs: Sequence[Path], now: dt.datetime | None = None) -> Path:
    """``reports/<name>``: the input folders' names joined by '+', or a timestamp when the
    inputs have no useful name (e.g. '.')."""
    names = []
    for path in map(Path, inputs):
        if path.name == "cells.csv":
            path = path.parent
        raw = path.resolve().name if path.name not in ("", ".", "..") else ""
        name = gpu_slug(raw) if re.search(r"[a-z0-9]", raw.lower()) else ""
        if name and name not in names:
            names.append(name)
    name = "+".join(names)
    if len(name) > 60:
        name = f"{names[0]}+{len(names) - 1}-more"
    if not name:
        name = f"report-{(now or dt.datetime.now()):%Y%m%d-%H%M%S}"
    return Path("reports") / name


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _summary_counts(rows: pd.DataFrame) -> str:
    counts = rows["kind"].value_counts()
    parts = [f"{counts.get(k, 0)} {name}" for k, name in
             (("ok", "ok"), ("estimated", "estimated"), ("oom", "OOM"), ("failed", "error/timeout"))
             if counts.get(k, 0)]
    return ", ".join(parts)


def render_report(loaded: LoadedCells, figures: list[ReportFigure],
                  budgets_bytes: Sequence[int] = ()) -> str:
    """report.md's text for loaded cells and their figures (saved under figures/)."""
    cells = loaded.cells
    lines = ["# membench report", ""]
    lines.append(f"Generated {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} by membench "
                 f"{__version__} from {len(loaded.sources)} results file(s):")
    lines += [f"- `{_display_path(path)}` ({n} row(s))" for path, n in loaded.sources]
    lines.append("")
    lines.append(f"{len(cells)} cell(s) shown: {_summary_counts(cells)}.")
    if loaded.superseded:
        lines.append(f"Where a cell was run more than once on the same device, only its latest run "
                     f"(by `started_at`) is shown: {loaded.superseded} earlier row(s) left out.")
    else:
        lines.append("No cell was run more than once on the same device; had one been, only its "
                     "latest run (by `started_at`) would be shown.")
    lines += loaded.notes
    if budgets_bytes:
        lines.append("Budgets asked for with `--budget`: "
                     + ", ".join(format_size(b) for b in budgets_bytes) + ".")
    if not (cells["kind"].isin(["ok", "estimated"])).any():
        lines += ["", "**No cell succeeded**: every row is an OOM, an error or a timeout, so there "
                  "is nothing to plot. The failures are listed below."]
    lines += ["", "Each device has its own section; rows from different devices are never "
              "combined. Memory is the peak allocated by training tensors (`memory from`: "
              "`tracker` on the CPU, `cuda_allocator` on CUDA, `estimate` for predictions); "
              "1 GiB = 2^30 bytes. Ratios are to `bp` at the same arch, resolution, batch and "
              "device. How to read the figures: `docs/report.md`.", ""]

    by_device = {}
    for figure in figures:
        by_device.setdefault((figure.device, figure.panel), []).append(figure)
    for label, _, rows in device_groups(cells):
        lines += [f"## {label}", "", f"{len(rows)} cell(s): {_summary_counts(rows)}.", ""]
        for (arch, res, classes, budget), panel in panels(rows):
            title = panel_title(arch, res, classes, budget)
            lines += [f"### {title}", ""]
            panel_figures = by_device.get((label, title), [])
            if not panel_figures:
                lines += ["No cell of this configuration has a peak to plot.", ""]
            for figure in panel_figures:
                alt = {"frontier": "memory-throughput frontier", "batch": "memory and "
                       "throughput against batch", "breakdown": "memory breakdown"}[figure.kind]
                lines += [f"![{alt}, {title}, {label}]({FIGURES_DIR}/{figure.filename})", ""]
            lines += [panel_table(panel), ""]
        if (~rows["status"].isin(["ok", "estimated"])).any():
            lines += [f"### Cells without a measurement on {label}", "", failures_table(rows), ""]
        tables = paper_tables(rows)
        if tables:
            lines += [f"### Beside the paper on {label}", "",
                      f"Source: {PAPER_SOURCE}. The hardware differs, so compare the ratios to "
                      "bp, not the absolute figures.", ""]
            for heading, table in tables:
                lines += [f"**{heading}**", "", table, ""]
    return "\n".join(lines).rstrip() + "\n"


def build_report(inputs: Sequence[Path], out_dir: Path, budgets_bytes: Sequence[int] = (),
                 on_warning: Callable[[str], None] | None = None) -> Path:
    """Write ``report.md`` and ``figures/*.png`` for every cells.csv at or under ``inputs``.

    ``budgets_bytes`` adds memory-budget lines to the figures. Figures of an earlier report in
    the same folder are replaced. Returns report.md's path. Raises ResultsError when there is
    nothing to report; a report whose every row failed is written and says so (and
    ``on_warning`` is told).
    """
    loaded = load_cells(inputs)
    budgets = sorted({int(b) for b in budgets_bytes})
    figures = make_figures(loaded.cells, budgets)
    out_dir = Path(out_dir)
    figures_dir = out_dir / FIGURES_DIR
    figures_dir.mkdir(parents=True, exist_ok=True)
    for stale in figures_dir.glob("*.png"):
        stale.unlink()
    for figure in figures:
        figure.figure.savefig(figures_dir / figure.filename)
    report = out_dir / REPORT_FILE
    report.write_text(render_report(loaded, figures, budgets), encoding="utf-8")
    if on_warning and not loaded.cells["kind"].isin(["ok", "estimated"]).any():
        on_warning("no cell succeeded (all OOM, error or timeout); the report lists the failures")
    return report
