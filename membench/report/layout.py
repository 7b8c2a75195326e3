"""What goes where: rows split by device and configuration, series, labels and budgets.

A report is kept per device: rows measured on different devices (a CPU run and a GPU run, or two
GPUs that both call themselves ``cuda:0``) never share a figure or a table. Within a device, each
(arch, resolution, classes) is a panel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from ..schema import ESTIMATE_DEVICE_NAME, device_kind, is_estimate_row
from ..units import format_size, slug
from .style import VARIANT_MARKERS, method_sort_key


def device_label(device: str, device_name: str) -> str:
    """'cuda:0 (NVIDIA H200)'; the device alone when its name is unknown or says nothing."""
    return (
        f"{device} ({device_name})"
        if device_name and device_name != ESTIMATE_DEVICE_NAME
        else device
    )


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


def tooled_method(row) -> str:
    """'bp bf16': the method and its tooling not at the defaults ('bp' without any)."""
    tooling = row.get("tooling") or ""
    return f"{row['method']} {tooling}" if tooling else str(row["method"])


def configuration_label(row) -> str:
    """'bp bf16 b128', 'bp-accum b128/mb64': what one bar or point of a figure is."""
    return f"{tooled_method(row)} {batch_label(row)}"


def _is_estimate_device(device: str) -> bool:
    return is_estimate_row({"device": device})


def _unique_slug(device: str, name: str, seen: set[str]) -> str:
    unique = slug(device if not name else f"{device}-{name}", "unknown-gpu")[:40].strip("-")
    base, n = unique, 2
    while unique in seen:
        unique, n = f"{base}-{n}", n + 1
    seen.add(unique)
    return unique


def device_groups(cells: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(label, file-name slug, rows) per device, in order of first appearance; slugs are unique.

    Estimates (device 'cuda (estimate)', 'cpu (estimate)') predict for a kind of device, not a
    particular one, so they join every measured device of that kind, beside its measurements;
    with no such device they form their own group.
    """
    grouped = list(cells.groupby(["device", "device_name"], sort=False))
    measured_kinds = {device_kind(d) for (d, _), _ in grouped if not _is_estimate_device(d)}
    estimates: dict[str, list[pd.DataFrame]] = {}
    for (device, _), rows in grouped:
        if _is_estimate_device(device) and device_kind(device) in measured_kinds:
            estimates.setdefault(device_kind(device), []).append(rows)
    groups, seen = [], set()
    for (device, name), rows in grouped:
        if _is_estimate_device(device) and device_kind(device) in measured_kinds:
            continue
        if not _is_estimate_device(device) and device_kind(device) in estimates:
            rows = pd.concat([rows, *estimates[device_kind(device)]])
        groups.append((device_label(device, name), _unique_slug(device, name, seen), rows))
    return groups


PanelKey = tuple[str, int, float, float]  # arch, res, classes (NaN: unknown), budget (NaN: none)


def panels(rows: pd.DataFrame) -> list[tuple[PanelKey, pd.DataFrame]]:
    """The rows of one device split by (arch, res, classes), sorted; the key's last item is the
    device budget when a configuration was measured under several budgets, else NaN.

    Cells measured with and without ``--device-mem`` (two runs of the same grid) get a panel per
    budget, so a line never joins points of different runs; a lone failed cell under a budget
    stays beside the others, drawn at the budget it hit.
    """
    keyed = rows.assign(
        _classes=rows["classes"].fillna(-1), _budget=rows["device_mem_bytes"].fillna(-1)
    )
    out = []
    for (arch, res, classes), panel in keyed.groupby(["arch", "res", "_classes"], sort=True):
        classes = math.nan if classes == -1 else classes
        fitted = panel["kind"].isin(["ok", "estimated"]) & ~panel["over_budget"].fillna(
            False
        ).astype(bool)
        measured_budgets = panel.loc[fitted, "_budget"].unique()
        if len(measured_budgets) <= 1:
            out.append(
                ((arch, int(res), classes, math.nan), panel.drop(columns=["_classes", "_budget"]))
            )
            continue
        for budget, part in panel.groupby("_budget", sort=True):
            out.append(
                (
                    (arch, int(res), classes, math.nan if budget == -1 else budget),
                    part.drop(columns=["_classes", "_budget"]),
                )
            )
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


def series(rows: pd.DataFrame) -> list[tuple[str, str, str, pd.DataFrame]]:
    """(method, legend label, marker, rows sorted by batch) per series: one per method and
    tooling (precision, memory format, compile), and, where a method ran one batch with several
    micro-batches, one per micro-batch, so lines never zigzag. A method's series share its
    colour and differ by marker."""
    out = []
    tooling = rows["tooling"] if "tooling" in rows else pd.Series("", index=rows.index)
    for method in sorted(rows["method"].unique(), key=method_sort_key):
        variant = 0
        for tool in sorted(tooling[rows["method"] == method].unique()):
            mine = rows[(rows["method"] == method) & (tooling == tool)]
            name = f"{method} {tool}" if tool else method
            # NaN (no split) counts as a micro-batch of its own beside the splits
            split = (
                mine.assign(_mb=mine["micro_batch"].fillna(-1))
                .groupby("batch")["_mb"]
                .nunique()
                .max()
                > 1
            )
            groups = (
                mine.groupby(mine["micro_batch"].fillna(-1), sort=True) if split else [(-1, mine)]
            )
            for mb, part in groups:
                label = name if mb == -1 else f"{name} mb{int(mb)}"
                marker = VARIANT_MARKERS[variant % len(VARIANT_MARKERS)]
                out.append((method, label, marker, part.sort_values("batch")))
                variant += 1
    return out
