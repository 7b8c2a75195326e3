"""The report's tables, as columns over rows: one per panel, and the failed cells of a device.

Each table is a list of ``Column`` over row objects (``markdown.Table``); the optional columns
(micro-batch, budget, estimated peak) appear only when some row of the panel has them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..runners import method_family
from ..schema import ESTIMATED, OK
from ..stability import OTHERS_THRESHOLD, UNSTABLE
from ..units import GIB
from .layout import batch_label
from .markdown import Column, Table, optional
from .style import method_sort_key

ERROR_WIDTH = 140  # characters of an error shown in the failures table


def fmt(value, spec: str, empty: str = "") -> str:
    """``format(value, spec)``, or ``empty`` for a missing value."""
    return empty if value is None or pd.isna(value) else format(value, spec)


def ratio(value, reference, suffix: str = "") -> str:
    """'0.722×' (value / reference), or '' when either is missing or the reference is 0."""
    if value is None or reference is None or pd.isna(value) or pd.isna(reference) or not reference:
        return ""
    return f"{value / reference:.3f}\u00d7{suffix}"


def latest(rows: pd.DataFrame):
    """The latest row of a selection (by started_at, then reading order), or None."""
    if rows.empty:
        return None
    return rows.sort_values("started", na_position="first", kind="stable").iloc[-1]


# -- one panel ------------------------------------------------------------------------------------
@dataclass
class PanelLine:
    """One configuration of a panel: its latest measurement and estimate, and ratios to bp."""

    method: str
    batch: int
    measured: pd.Series | None
    estimate: pd.Series | None
    memory_ratio: str = ""
    throughput_ratio: str = ""
    flops_ratio: str = ""

    @property
    def main(self) -> pd.Series:
        """The row the shared columns come from: the measurement, else the estimate."""
        return self.measured if self.measured is not None else self.estimate

    @property
    def status(self) -> str:
        if self.measured is not None:
            return self.measured["status"]
        status = self.estimate["status"]
        return ESTIMATED if status == ESTIMATED else f"{status} (estimated)"

    @property
    def measured_peak(self) -> str:
        return "" if self.measured is None else fmt(self.measured["peak_gib"], ".3f")

    @property
    def estimated_peak(self) -> str:
        if self.estimate is None:
            return ""
        return fmt(self.estimate["peak_gib"], ".3f") + (
            " (> budget)" if self.estimate["over_budget"] else ""
        )


def _with_ratios(line: PanelLine, bp_measured, bp_estimated) -> PanelLine:
    """Ratios to bp at the same batch: measured against measured, else estimate against
    estimate (marked '(est.)')."""
    measured, estimate = line.measured, line.estimate
    if measured is not None and measured["kind"] == "ok" and bp_measured is not None:
        line.memory_ratio = ratio(
            measured["peak_allocated_bytes"], bp_measured["peak_allocated_bytes"]
        )
        line.throughput_ratio = ratio(measured["imgs_per_s"], bp_measured["imgs_per_s"])
    if not line.memory_ratio and estimate is not None and bp_estimated is not None:
        line.memory_ratio = ratio(
            estimate["peak_allocated_bytes"], bp_estimated["peak_allocated_bytes"], " (est.)"
        )
    # FLOPs per step do not depend on the device: any bp row of the batch will do.
    bp_flops = [
        row["flops_per_step"]
        for row in (bp_measured, bp_estimated)
        if row is not None and not pd.isna(row["flops_per_step"])
    ]
    if bp_flops:
        line.flops_ratio = ratio(line.main["flops_per_step"], bp_flops[0])
    return line


def panel_lines(panel: pd.DataFrame) -> list[PanelLine]:
    """One line per (batch, method, tooling, micro-batch, budget), by batch, method order and
    tooling; ratios are to bp at the same batch and tooling (precision, memory format, compile)."""
    tooling = panel["tooling"] if "tooling" in panel else ""
    keyed = panel.assign(
        _mb=panel["micro_batch"].fillna(-1),
        _bud=panel["device_mem_bytes"].fillna(-1),
        _tool=tooling,
    )
    bp = keyed[keyed["method"] == "bp"]
    pairs = keyed[["batch", "_tool"]].drop_duplicates().itertuples(index=False)
    reference = {
        (b, t): (
            latest(bp[(bp["kind"] == "ok") & (bp["batch"] == b) & (bp["_tool"] == t)]),
            latest(bp[bp["is_estimate"] & (bp["batch"] == b) & (bp["_tool"] == t)]),
        )
        for b, t in pairs
    }
    configs = keyed.groupby(["batch", "method", "_tool", "_mb", "_bud"], sort=False)
    order = sorted(configs.groups, key=lambda k: (k[0], method_sort_key(k[1]), k[2], k[3], k[4]))
    lines = []
    for key in order:
        rows = configs.get_group(key)
        name = f"{key[1]} {key[2]}" if key[2] else key[1]
        line = PanelLine(
            name, key[0], latest(rows[~rows["is_estimate"]]), latest(rows[rows["is_estimate"]])
        )
        lines.append(_with_ratios(line, *reference[(key[0], key[2])]))
    return lines


def panel_columns(
    *,
    micro_batch: bool,
    budget: bool,
    estimate: bool,
    flops: bool = False,
    mfu: bool = False,
    bound: bool = False,
    spread: bool = False,
    timing: bool = False,
) -> list[Column]:
    """The panel table's columns; micro-batch, budget, estimated peak, FLOPs and MFU only when
    present. FLOPs ÷ bp stands beside imgs/s ÷ bp: its inverse is the throughput ratio a step
    bound by compute alone would reach."""
    return [
        Column("method", lambda line: line.method),
        Column("batch", lambda line: line.batch, "r"),
        *optional(
            micro_batch,
            Column("micro-batch", lambda line: fmt(line.main["micro_batch"], ".0f"), "r"),
        ),
        *optional(
            budget,
            Column(
                "budget (GiB)", lambda line: fmt(line.main["device_mem_bytes"] / GIB, ".3f"), "r"
            ),
        ),
        Column("status", lambda line: line.status),
        Column("peak (GiB)", lambda line: line.measured_peak, "r"),
        *optional(estimate, Column("estimated peak (GiB)", lambda line: line.estimated_peak, "r")),
        Column("imgs/s", lambda line: fmt(line.main["imgs_per_s"], ",.1f"), "r"),
        *optional(spread, Column("imgs/s p10–p90", lambda line: _spread(line.main), "r")),
        *optional(
            bound,
            Column(
                "imgs/s bound",
                lambda line: (
                    "" if line.estimate is None else fmt(line.estimate["bound_imgs_per_s"], ",.0f")
                ),
                "r",
            ),
        ),
        Column("step ms (median)", lambda line: fmt(line.main["step_ms_median"], ",.1f"), "r"),
        Column("memory \u00f7 bp", lambda line: line.memory_ratio, "r"),
        *optional(flops, Column("FLOPs \u00f7 bp", lambda line: line.flops_ratio, "r")),
        Column("imgs/s \u00f7 bp", lambda line: line.throughput_ratio, "r"),
        *optional(
            mfu, Column("MFU", lambda line: fmt(line.main["mfu"], ".1%") + _shared(line), "r")
        ),
        *optional(timing, Column("timing", lambda line: _timing(line.main))),
        Column("memory from", lambda line: line.main["memory_source"]),
    ]


def _spread(row: pd.Series) -> str:
    """'90–101': imgs/s at the slow and the fast tenth of the steps."""
    low, high = row.get("imgs_p10"), row.get("imgs_p90")
    return "" if low is None or pd.isna(low) else f"{low:,.1f}–{high:,.1f}"


def _timing(row: pd.Series) -> str:
    """The timing's verdict; an unstable one with its reason."""
    verdict = row.get("stability") or ""
    return f"unstable: {row['stability_reason']}" if verdict == UNSTABLE else verdict


def _shared(line: PanelLine) -> str:
    """' (shared CPU)' after the MFU of a CPU cell others' processes shared."""
    row = line.main
    others = row.get("cpu_others")
    shared = (
        str(row["device"]).startswith("cpu")
        and others is not None
        and not pd.isna(others)
        and others >= OTHERS_THRESHOLD
    )
    return " (shared CPU)" if shared and not pd.isna(row["mfu"]) else ""


def panel_table(panel: pd.DataFrame) -> str:
    """One row per configuration: measured and estimated peaks side by side, throughput and
    ratios to bp at the same batch (measured against measured, estimate against estimate)."""
    columns = panel_columns(
        micro_batch=panel["micro_batch"].notna().any(),
        budget=panel["device_mem_bytes"].notna().any(),
        estimate=panel["is_estimate"].any(),
        flops=panel["flops_per_step"].notna().any(),
        mfu=panel["mfu"].notna().any(),
        bound="bound_imgs_per_s" in panel and panel["bound_imgs_per_s"].notna().any(),
        spread=panel["imgs_p10"].notna().any(),
        timing=panel["stability"].fillna("").astype(bool).any(),
    )
    return Table(columns, panel_lines(panel)).markdown()


# -- the best configuration of each method family -------------------------------------------------
def _best(rows: pd.DataFrame) -> tuple[pd.Series, str]:
    """The best row of one family: the fastest measured one, else (estimates only) the one with
    the highest imgs/s bound, else the smallest predicted peak."""
    measured = rows[rows["kind"] == OK]
    if measured["imgs_per_s"].notna().any():
        best = measured.loc[measured["imgs_per_s"].idxmax()]
        return best, "most imgs/s measured" + _doubt(best, measured)
    if "bound_imgs_per_s" in rows and rows["bound_imgs_per_s"].notna().any():
        return rows.loc[rows["bound_imgs_per_s"].idxmax()], "highest imgs/s bound"
    return rows.loc[rows["peak_allocated_bytes"].idxmin()], "smallest estimated peak"


def _doubt(best: pd.Series, measured: pd.Series) -> str:
    """What makes a pick by median imgs/s doubtful: an unstable timing, or a rival whose
    p10–p90 imgs/s reaches the best's median."""
    doubts = []
    if best.get("unstable"):
        doubts.append(f"its timing is unstable ({best['stability_reason']})")
    rivals = measured[(measured.index != best.name) & (measured["imgs_p90"] >= best["imgs_per_s"])]
    if len(rivals):
        rival = rivals.loc[rivals["imgs_per_s"].idxmax()]
        name = " ".join(
            p for p in (rival["method"], rival.get("tooling", ""), batch_label(rival)) if p
        )
        doubts.append(f"{name} is within its p10–p90 spread")
    return f"; not a clear pick: {'; '.join(doubts)}" if doubts else ""


BEST_COLUMNS = [
    Column("family", lambda item: item[0]),
    Column(
        "best configuration",
        lambda item: " ".join(
            part
            for part in (item[1]["method"], item[1].get("tooling", ""), batch_label(item[1]))
            if part
        ),
    ),
    Column(
        "peak (GiB)",
        lambda item: (
            fmt(item[1]["peak_gib"], ".3f") + (" (est.)" if item[1]["is_estimate"] else "")
        ),
        "r",
    ),
    Column("imgs/s", lambda item: fmt(item[1]["imgs_per_s"], ",.1f"), "r"),
    Column("chosen by", lambda item: item[2]),
]


def best_table(panel: pd.DataFrame) -> str | None:
    """Per method family, its best configuration among the cells of the panel that fit (ok, or
    estimated within the budget); None when no family has more than one to choose from."""
    fits = panel[
        panel["kind"].isin([OK, ESTIMATED])
        & ~panel["over_budget"].fillna(False).astype(bool)
        & panel["peak_allocated_bytes"].notna()
    ]
    families = fits.assign(_family=fits["method"].map(method_family)).groupby("_family", sort=True)
    if not any(len(rows) > 1 for _, rows in families):
        return None
    items = [(family, *_best(rows)) for family, rows in families]
    return Table(BEST_COLUMNS, items).markdown()


# -- failed cells ---------------------------------------------------------------------------------
def _shorten(text: str, width: int = ERROR_WIDTH) -> str:
    return text[:width] + "\u2026" if len(text) > width else text


FAILURE_COLUMNS = [
    Column("arch", lambda row: row["arch"]),
    Column("res", lambda row: row["res"], "r"),
    Column("method", lambda row: row["method"]),
    Column("batch", batch_label),
    Column("status", lambda row: row["status"] or "(empty)"),
    Column("budget (GiB)", lambda row: fmt(row["device_mem_bytes"] / GIB, ".3f"), "r"),
    Column("error", lambda row: _shorten(row["error"])),
]


def failed_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows without a measurement (neither ok nor estimated), by arch, res, batch, method."""
    failed = rows[~rows["status"].isin([OK, ESTIMATED])]
    return failed.assign(_m=failed["method"].map(method_sort_key)).sort_values(
        ["arch", "res", "batch", "_m"]
    )


def failures_table(rows: pd.DataFrame) -> str:
    """The cells that did not produce a measurement, with their one-line error."""
    return Table(FAILURE_COLUMNS, [row for _, row in failed_rows(rows).iterrows()]).markdown()
