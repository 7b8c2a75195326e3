"""The report's "Cells on several devices" section: each multi-device row with its ranks
(``ranks.csv``), and beside the pipelines the schedule model's step (docs/multi-device.md, "The
schedule model"), marked as a model.

The model's per-layer costs are FLOPs counted on fake tensors
(``membench.planning.layer_costs``, torch imported only here and only for a grid with
pipelines); a FLOP step becomes milliseconds at one device's peak where the row knows it (its
``peak_tflops`` ÷ devices; for an estimate, the GPU of ``membench report --gpu``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..multidevice.rows import read_ranks
from ..units import GIB
from .markdown import Column, Table
from .tables import fmt

PIPELINES = {"bp-pp": None, "ff-pp": "ff-forward-only"}  # bp-pp: its schedule's model
MODEL_KEY = ["arch", "res", "batch", "micro_batch", "classes", "precision", "devices"]


def _ranks(rows: pd.DataFrame) -> pd.DataFrame:
    frames = [read_ranks(Path(source).parent) for source in rows["source"].unique()]
    frames = [frame for frame in frames if not frame.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _per_rank(row, ranks: pd.DataFrame) -> str:
    if ranks.empty:
        return ""
    mine = ranks[
        (ranks["cell_id"] == row["cell_id"])
        & (ranks["device"] == row["device"])
        & (ranks["started_at"] == row["started_at"])
    ].sort_values("rank")
    return " / ".join(fmt(v / GIB, ".3f", "-") for v in mine["peak_allocated_bytes"])


def rows_table(rows: pd.DataFrame) -> str:
    """One line per multi-device row: its peak and rank, every rank's peak, bytes and idle."""
    ranks = _ranks(rows)
    columns = [
        Column("cell", lambda r: r["cell_id"]),
        Column("device", lambda r: r["device"]),
        Column("status", lambda r: r["status"]),
        Column(
            "peak GiB (rank)",
            lambda r: (
                fmt(r["peak_gib"], ".3f")
                + (f" (r{int(r['peak_rank'])})" if pd.notna(r["peak_rank"]) else "")
            ),
            "r",
        ),
        Column("per-rank peak GiB", lambda r: _per_rank(r, ranks), "r"),
        Column("sent MiB/step (most)", lambda r: fmt(r["sent_bytes_per_step"] / 2**20, ".2f"), "r"),
        Column("idle (mean)", lambda r: fmt(r["idle_fraction"], ".1%"), "r"),
        Column("step ms (slowest rank)", lambda r: fmt(r["step_ms_median"], ".2f"), "r"),
        Column("imgs/s (cell)", lambda r: fmt(r["imgs_per_s"], ",.1f"), "r"),
    ]
    return Table(columns, [r for _, r in rows.iterrows()]).markdown()


def _device_peak_tflops(row) -> float | None:
    """One device's peak: a measured row's is its ``peak_tflops`` ÷ devices; an estimate's, the
    one its throughput bound was drawn with."""
    if pd.notna(row.get("peak_tflops")):
        return row["peak_tflops"] / row["devices"]
    bound = row.get("bound_imgs_per_s")
    if bound is not None and pd.notna(bound) and row["flops_per_step"]:
        return bound * row["flops_per_step"] / row["batch"] / 1e12
    return None


def model_lines(rows: pd.DataFrame) -> list[str]:
    """The schedule model beside each pipeline row (GPipe or 1F1B for bp-pp as its schedule,
    the forward-only pipeline for ff-pp), with the measured step where there is one."""
    from ..multidevice.schedule_model import pipeline_times
    from ..planning.layer_costs import layer_costs

    pipelines = rows[rows["method"].isin(list(PIPELINES))]
    out = []
    for key, group in pipelines.groupby(MODEL_KEY, sort=True):
        arch, res, batch, micro, classes, precision, devices = key
        costs = layer_costs(arch, int(res), int(batch), int(micro), int(classes), precision)
        times = pipeline_times(costs, int(devices), int(batch) // int(micro))
        for _, row in group.iterrows():
            modelled = times[PIPELINES[row["method"]] or row["schedule"]]
            peak = _device_peak_tflops(row)
            ms = "" if peak is None else f"{modelled.step / (peak * 1e9):.3f}"
            out.append(
                [
                    row["cell_id"],
                    row["device"],
                    modelled.schedule,
                    f"{modelled.step / 1e9:.1f}",
                    ms,
                    f"{modelled.bubble:.1%}",
                    fmt(row["step_ms_median"], ".2f"),
                ]
            )
    if not out:
        return []
    table = Table(
        [
            Column("cell", lambda r: r[0]),
            Column("device", lambda r: r[1]),
            Column("modelled schedule", lambda r: r[2]),
            Column("model GFLOP/step", lambda r: r[3], "r"),
            Column("model ms at peak", lambda r: r[4], "r"),
            Column("model bubble", lambda r: r[5], "r"),
            Column("measured ms", lambda r: r[6], "r"),
        ],
        out,
    )
    return [
        "**Schedule model (a model, not a measurement).** Each pipeline's step from one "
        "device's per-layer FLOPs (forward, backward; FF's local steps), stages of "
        "contiguous layers balanced by conv cost, every piece at one device's peak, "
        "communication overlapped: GPipe ΣF+(m−1)·maxF+ΣB+(m−1)·maxB, 1F1B "
        "Σ(F+B)+(m−1)·max(F+B), FF ΣG+(m−1)·maxG + the classifier.",
        "",
        table.markdown(),
        "",
    ]


def multi_device_markdown(cells: pd.DataFrame) -> list[str]:
    """The section, or nothing where no row spans devices."""
    rows = cells[cells["devices"].fillna(1) > 1]
    if rows.empty:
        return []
    lines = [
        "## Cells on several devices",
        "",
        "Each row is one cell on N ranks: its peak is the largest rank's (the rank in "
        "brackets; every rank's in `ranks.csv`), its step the slowest rank's, imgs/s the "
        "whole cell's; bytes sent per step are the most any rank sent, idle the ranks' mean "
        "(pipelines only).",
        "",
        rows_table(rows),
        "",
    ]
    return lines + model_lines(rows)


__all__ = ["model_lines", "multi_device_markdown", "rows_table"]
