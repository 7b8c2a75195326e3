"""The paper's reference operating points, and tables that put our ratios to bp beside them.

Ratios to bp are what is compared, since the hardware differs; the absolute figures are the
paper's as printed ("GB", unit as in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .layout import batch_label
from .markdown import Column, Table
from .style import method_sort_key
from .tables import fmt, latest, ratio


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
    'arXiv:2606.06539v1, "Synthetic Benchmarks Overstate Forward-Forward Scaling", Sec. 6.2 '
    "and App. D.7 (RTX 4060 Laptop 8 GB, PyTorch 2.9.1, CUDA 13.0; 5 warmup + 20 timed steps, "
    "peak = torch.cuda.max_memory_allocated); "
    'see docs/measurement.md, "Paper reference figures"'
)
# ff-naive is given only as ratios there.
PAPER_OPERATING_POINTS: tuple[PaperPoint, ...] = (
    PaperPoint("vgg8", 32, 256, "bp", None, 1.589, 1586, 1.0, 1.0),
    PaperPoint("vgg8", 32, 256, "ff-pipelined", None, 1.535, 1726, 1.535 / 1.589, 1726 / 1586),
    PaperPoint(
        "vgg8",
        32,
        256,
        "ff-naive",
        None,
        None,
        None,
        1.05,
        0.70,
        "paper gives only 'about 5% more memory, about 30% less throughput than bp'",
    ),
    PaperPoint(
        "vgg11",
        224,
        128,
        "bp",
        None,
        8.18,
        14,
        1.0,
        1.0,
        "bp spilled to host memory on the 8 GB card, so its throughput collapsed",
    ),
    PaperPoint("vgg11", 224, 128, "bp-accum", 64, 4.18, 157, 4.18 / 8.18, 157 / 14),
    PaperPoint("vgg11", 224, 128, "bp-ckpt", None, 6.35, 92, 6.35 / 8.18, 92 / 14),
    PaperPoint("vgg11", 224, 128, "ff-pipelined", None, 7.90, 138, 7.90 / 8.18, 138 / 14),
)


def ours(here: pd.DataFrame, point: PaperPoint, estimate: bool):
    """Our latest row for a paper point (measured, or estimated), preferring one that has a
    peak (ok, or a predicted peak); None when the results do not reach it."""
    mine = here[
        (here["method"] == point.method)
        & (here["is_estimate"] == estimate)
        & (here["tooling"] == "")
    ]  # the paper's cells ran fp32, eager, contiguous
    if point.micro_batch is not None:
        mine = mine[mine["micro_batch"] == point.micro_batch]
    elif point.method != "bp-accum":  # bp-accum's default split is part of its cell
        mine = mine[mine["micro_batch"].isna()]
    usable = mine[mine["kind"] == ("estimated" if estimate else "ok")]
    return latest(usable) if len(usable) else latest(mine)


@dataclass
class PaperLine:
    """One paper point with ours beside it. Only an ok measurement counts as ours; without one,
    an estimate's peak is shown marked '(est.)' (it has no throughput)."""

    point: PaperPoint
    status: str
    peak: str
    imgs_per_s: float | None
    memory_ratio: str
    throughput_ratio: str

    @property
    def label(self) -> str:
        return self.point.method + (
            f" mb{self.point.micro_batch}" if self.point.micro_batch else ""
        )


def paper_line(here: pd.DataFrame, point: PaperPoint, bp_measured, bp_estimated) -> PaperLine:
    measured, estimate = ours(here, point, False), ours(here, point, True)
    status = (
        measured["status"]
        if measured is not None
        else ("estimated" if estimate is not None else "not in these results")
    )
    ok = measured is not None and measured["kind"] == "ok"
    peak = measured["peak_gib"] if ok else None
    imgs = measured["imgs_per_s"] if ok else None
    peak_text = fmt(peak, ".3f")
    if not ok and estimate is not None:  # no measurement: show the predicted peak, marked
        peak_text = fmt(estimate["peak_gib"], ".3f") + " (est.)"
    bp_ok = bp_measured is not None and bp_measured["kind"] == "ok"
    memory_ratio = ratio(peak, bp_measured["peak_gib"] if bp_ok else None)
    throughput_ratio = ratio(imgs, bp_measured["imgs_per_s"] if bp_ok else None)
    if not memory_ratio and estimate is not None and bp_estimated is not None:
        memory_ratio = ratio(estimate["peak_gib"], bp_estimated["peak_gib"], " (est.)")
    return PaperLine(point, status, peak_text, imgs, memory_ratio, throughput_ratio)


PAPER_COLUMNS = [
    Column("method", lambda line: line.label),
    Column("our status", lambda line: line.status),
    Column("our peak (GiB)", lambda line: line.peak, "r"),
    Column("our imgs/s", lambda line: fmt(line.imgs_per_s, ",.1f"), "r"),
    Column("our memory \u00f7 bp", lambda line: line.memory_ratio, "r"),
    Column("our imgs/s \u00f7 bp", lambda line: line.throughput_ratio, "r"),
    Column("paper peak (GB)", lambda line: fmt(line.point.peak_gb, ".3f", "\u2014"), "r"),
    Column("paper imgs/s", lambda line: fmt(line.point.imgs_per_s, ",.0f", "\u2014"), "r"),
    Column("paper memory \u00f7 bp", lambda line: f"{line.point.memory_vs_bp:.3f}\u00d7", "r"),
    Column("paper imgs/s \u00f7 bp", lambda line: f"{line.point.throughput_vs_bp:.3f}\u00d7", "r"),
    Column("note", lambda line: line.point.note),
]


def paper_tables(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """(heading, table) for each paper operating point this device's rows reach: our ratios to
    bp beside the paper's. Only ok measurements count as ours (an estimate has no throughput;
    its memory ratio is shown marked)."""
    out = []
    for arch, res, batch in sorted({(p.arch, p.res, p.batch) for p in PAPER_OPERATING_POINTS}):
        here = rows[(rows["arch"] == arch) & (rows["res"] == res) & (rows["batch"] == batch)]
        points = [
            p for p in PAPER_OPERATING_POINTS if (p.arch, p.res, p.batch) == (arch, res, batch)
        ]
        if not any(
            ours(here, p, False) is not None or ours(here, p, True) is not None for p in points
        ):
            continue
        bp_point = next(p for p in points if p.method == "bp")
        bp_measured, bp_estimated = ours(here, bp_point, False), ours(here, bp_point, True)
        lines = [paper_line(here, point, bp_measured, bp_estimated) for point in points]
        out.append(
            (f"{arch}, {res}\u00d7{res}, batch {batch}", Table(PAPER_COLUMNS, lines).markdown())
        )
    return out


def tooling_tables(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """(heading, table) for each paper operating point where these rows also ran the paper's
    methods with standard tooling (another precision, memory format, compile mode or
    micro-batch): every configuration's peak beside the paper's figure for that method, and
    its ratio to the paper-setting bp of these rows."""
    out = []
    for arch, res, batch in sorted({(p.arch, p.res, p.batch) for p in PAPER_OPERATING_POINTS}):
        here = rows[
            (rows["arch"] == arch)
            & (rows["res"] == res)
            & (rows["batch"] == batch)
            & rows["kind"].isin(["ok", "estimated"])
        ]
        points = {
            p.method: p
            for p in PAPER_OPERATING_POINTS
            if (p.arch, p.res, p.batch) == (arch, res, batch)
        }
        extra = here[
            (here["tooling"] != "")
            | (here["method"].isin(["ff-pipelined"]) & here["micro_batch"].notna())
        ]
        if extra.empty or "bp" not in points:
            continue
        bp = ours(
            rows[(rows["arch"] == arch) & (rows["res"] == res) & (rows["batch"] == batch)],
            points["bp"],
            False,
        )
        if bp is None:
            bp = ours(
                rows[(rows["arch"] == arch) & (rows["res"] == res) & (rows["batch"] == batch)],
                points["bp"],
                True,
            )
        lines = sorted(
            here.itertuples(index=False),
            key=lambda r: (method_sort_key(r.method), r.tooling, r.micro_batch or 0),
        )
        table = Table(_tooling_columns(points, bp), lines).markdown()
        out.append((f"{arch}, {res}\u00d7{res}, batch {batch}, with standard tooling", table))
    return out


def _tooling_columns(points: dict[str, PaperPoint], bp) -> list[Column]:
    def paper_peak(row) -> str:
        point = points.get(row.method)
        return "\u2014" if point is None else fmt(point.peak_gb, ".3f", "\u2014")

    return [
        Column("method", lambda r: r.method),
        Column(
            "configuration",
            lambda r: " ".join(
                part for part in (r.tooling or "fp32", batch_label(r._asdict())) if part
            ),
        ),
        Column(
            "peak (GiB)",
            lambda r: fmt(r.peak_gib, ".3f") + (" (est.)" if r.is_estimate else ""),
            "r",
        ),
        Column(
            "memory \u00f7 fp32 bp",
            lambda r: "" if bp is None else ratio(r.peak_gib, bp["peak_gib"]),
            "r",
        ),
        Column("imgs/s", lambda r: fmt(r.imgs_per_s, ",.1f"), "r"),
        Column("paper peak, fp32 (GB)", paper_peak, "r"),
    ]
