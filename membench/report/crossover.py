"""The depth crossover: when a grid varies the depth of one parametric family
(``vgg-dD-wW[-pP]`` at one width, pools, resolution, batch and K), each family's best
configuration's peak memory against depth, at each micro-batch, with the crossover depth D*
(the first depth at which DTG-FF's best is below BP's), the analytic model's prediction beside
it (``depth_model``), the deepest model each family can train on an 8 GiB card, and the FLOPs
per step of each family's best configuration there (docs/depth-crossover.md).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from ..runners import method_family
from ..units import GIB
from .markdown import Column, Table
from .style import new_figure, side_legend
from .tables import fmt

PARAMETRIC = re.compile(r"^vgg-d(?P<depth>\d+)-w(?P<width>\d+)(?P<pools>-p\d+)?$")
FAMILY_KEY = ["width", "pools", "res", "batch", "classes", "device", "device_name"]
CARD_BYTES = 8 * GIB  # "the deepest model each family can train on an 8 GiB card"
MIN_DEPTHS = 3
ANY = "best"  # the curve of each family's best configuration at any micro-batch
# Activations held in host memory, not on the device: a device peak that hides what crosses the
# link every step (membench plan bounds it), and a tool FF is not given here, so the families'
# curves leave it out and the table shows it beside them.
OFF_DEVICE_METHODS = ("bp-offload",)
CROSSOVER = "depth crossover"  # the report section (and figure "device") of these families


def depth_families(cells: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """Groups of rows of one parametric family at three or more depths (with a peak)."""
    parsed = cells["arch"].str.extract(PARAMETRIC)
    rows = cells.assign(
        depth=pd.to_numeric(parsed["depth"]),
        width=parsed["width"],
        pools=parsed["pools"].fillna(""),
    )
    rows = rows[rows["depth"].notna() & rows["kind"].isin(["ok", "estimated"])]
    rows = rows[rows["method"].map(method_family).isin(["bp", "ff"])]
    rows = rows.assign(off_device=rows["method"].isin(OFF_DEVICE_METHODS))
    groups = []
    for key, group in rows.groupby(FAMILY_KEY, sort=True, dropna=False):
        if group["depth"].nunique() >= MIN_DEPTHS:
            groups.append((key, group.assign(family=group["method"].map(method_family))))
    return groups


def best_by_depth(group: pd.DataFrame) -> pd.DataFrame:
    """Per family, micro-batch (and ``best`` over all of them) and depth: the configuration
    with the smallest peak (its cell id, peak and FLOPs), activations kept on the device."""
    if "off_device" in group:
        group = group[~group["off_device"]]
    group = group.assign(split=group["micro_batch"].fillna(group["batch"]).astype(int))
    group = group.sort_values("peak_allocated_bytes", kind="stable")
    per_split = group.drop_duplicates(["family", "split", "depth"])
    overall = group.drop_duplicates(["family", "depth"]).assign(split=ANY)
    columns = ["family", "split", "depth", "cell_id", "peak_allocated_bytes", "flops_per_step"]
    both = pd.concat(
        [per_split[columns].assign(split=per_split["split"].astype(str)), overall[columns]]
    )
    both = both.sort_values(["family", "split", "depth"]).reset_index(drop=True)
    both.attrs["batch"] = int(group["batch"].iloc[0])
    return both


def crossover_depth(best: pd.DataFrame, split: str) -> float | None:
    """The depth at which FF's curve crosses below BP's, log-interpolated between the two
    depths that bracket it; None when FF is never below, 0 when it is below from the start."""
    curves = {
        family: best[(best["family"] == family) & (best["split"] == split)]
        .set_index("depth")["peak_allocated_bytes"]
        .astype(float)
        for family in ("bp", "ff")
    }
    depths = sorted(set(curves["bp"].index) & set(curves["ff"].index))
    gap = [math.log(curves["ff"][d]) - math.log(curves["bp"][d]) for d in depths]
    for i, (depth, value) in enumerate(zip(depths, gap)):
        if value < 0:
            if i == 0:
                return 0.0
            low, high = depths[i - 1], depth
            t = gap[i - 1] / (gap[i - 1] - value)
            return float(math.exp(math.log(low) + t * (math.log(high) - math.log(low))))
    return None


def _splits(best: pd.DataFrame) -> list[str]:
    numeric = sorted({s for s in best["split"] if s != ANY}, key=int)
    both = [s for s in numeric if {"bp", "ff"} <= set(best.loc[best["split"] == s, "family"])]
    return [*both, ANY]


def _split_label(split: str, best: pd.DataFrame) -> str:
    batch = best.attrs.get("batch")
    return "whole batch" if batch is not None and split == str(batch) else f"micro-batch {split}"


def crossover_figure(best: pd.DataFrame, title: str, predicted: dict[str, list]) -> Figure:
    """Peak against depth, log-log: BP solid, FF dashed, one colour per micro-batch (and the
    families' best in black), the model's prediction dotted, D* marked."""
    figure = new_figure(8.5, 5.0)
    ax = figure.add_subplot(1, 1, 1)
    splits = _splits(best)
    colors = dict(zip(splits, [f"C{i}" for i in range(len(splits) - 1)] + ["black"]))
    handles = []
    for split in splits:
        for family, style in (("bp", "-"), ("ff", "--")):
            curve = best[(best["family"] == family) & (best["split"] == split)]
            label = f"{family} best" if split == ANY else f"{family}, {_split_label(split, best)}"
            (line,) = ax.plot(
                curve["depth"],
                curve["peak_allocated_bytes"] / GIB,
                style,
                marker="o",
                color=colors[split],
                label=label,
                linewidth=2.4 if split == ANY else 1.3,
                gid=f"{family}:{split}",
            )
            handles.append(line)
        depth = crossover_depth(best, split)
        if depth:
            ax.axvline(depth, color=colors[split], alpha=0.35, linewidth=1)
        for family in ("bp", "ff"):
            points = predicted.get(f"{family}:{split}")
            if points:
                xs, ys = zip(*points)
                ax.plot(
                    xs,
                    np.array(ys) / GIB,
                    ":",
                    color=colors[split],
                    alpha=0.7,
                    gid=f"model-{family}:{split}",
                )
    ax.set(
        xscale="log", yscale="log", xlabel="depth D (conv layers)", ylabel="peak (GiB)", title=title
    )
    # The grid's own depths and plain numbers: "2×10⁰" says less than "2".
    depths = sorted(int(d) for d in best["depth"].unique())
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(_minor_label))
    ax.grid(True, which="both", alpha=0.3)
    model = ax.plot([], [], ":", color="grey", label="analytic model (dotted)")[0]
    side_legend(ax, [*handles, model])
    return figure


def _minor_label(value: float, _position) -> str:
    """Label the 2s, 3s and 5s between the decades of a log axis, nothing else."""
    mantissa = value / 10 ** math.floor(math.log10(value)) if value > 0 else 0
    return f"{value:g}" if round(mantissa) in (2, 3, 5) else ""


# The configurations the analytic model describes (depth_model), by their settings.
MODELLED = {
    "bp": dict(method="bp-ckpt", precision="fp32", optimizer_state="host", grads="kept"),
    "ff": dict(method="ff-pipelined", precision="bf16", optimizer_state="host", grads="released"),
}


def modelled_rows(group: pd.DataFrame) -> pd.DataFrame:
    """The rows of the two configurations the model describes, as a best-by-depth frame."""
    picked = []
    for settings in MODELLED.values():
        mask = pd.Series(True, index=group.index)
        for column, value in settings.items():
            mask &= group[column] == value
        picked.append(group[mask & group["micro_batch"].notna()])
    rows = pd.concat(picked)
    if rows.empty:
        return pd.DataFrame(columns=["family", "split", "depth", "peak_allocated_bytes"])
    return best_by_depth(rows)[lambda frame: frame["split"] != ANY]


def predictions(group: pd.DataFrame, splits: list[str]) -> dict[str, list]:
    """The model's peak at each depth of the group, per family and micro-batch."""
    from .depth_model import predicted_peaks

    first = group.iloc[0]
    points: dict[str, list] = {}
    for split in (s for s in splits if s != ANY):
        for depth in sorted(group["depth"].unique()):
            arch = f"vgg-d{int(depth)}-w{first['width']}{first['pools']}"
            peaks = predicted_peaks(
                arch, int(first["res"]), int(first["batch"]), int(split), int(first["classes"])
            )
            for family, peak in peaks.items():
                points.setdefault(f"{family}:{split}", []).append((depth, peak))
    return points


def _deepest(best: pd.DataFrame, family: str, split: str, model: list | None) -> str:
    curve = best[(best["family"] == family) & (best["split"] == split)]
    fits = curve[curve["peak_allocated_bytes"] <= CARD_BYTES]
    if fits.empty:
        return "none of the grid"
    deepest = int(fits["depth"].max())
    if deepest < int(curve["depth"].max()) or not model:
        return str(deepest)
    # Every depth of the grid fits: extrapolate the model's straight line beyond it.
    (d0, p0), (d1, p1) = model[-2], model[-1]
    slope = (p1 - p0) / (d1 - d0)
    beyond = int(d1 + (CARD_BYTES - p1) / slope) if slope > 0 else None
    return f">= {deepest} (model: {beyond:,})" if beyond else f">= {deepest}"


def _off_device_peak(group: pd.DataFrame, split: str, depth: int) -> float:
    """The smallest device peak of the configurations that hold activations on the host."""
    rows = group[group["off_device"] & (group["depth"] == depth)]
    if split != ANY:
        rows = rows[rows["micro_batch"].fillna(rows["batch"]).astype(int).astype(str) == split]
    return float(rows["peak_allocated_bytes"].min()) if len(rows) else math.nan


def crossover_table(group: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The best-by-depth frame and the markdown table of one depth family."""
    from .depth_model import predicted_crossover

    best = best_by_depth(group)
    modelled = modelled_rows(group)
    first = group.iloc[0]
    family_arch = f"vgg-d1-w{first['width']}{first['pools']}"
    predicted = predictions(group, _splits(best))
    # The deepest depth both families reached: a family's row alone compares with nothing.
    both = set(best.loc[best["family"] == "bp", "depth"]) & set(
        best.loc[best["family"] == "ff", "depth"]
    )
    top = int(max(both)) if both else int(group["depth"].max())
    lines = []
    for split in _splits(best):
        model_d = (
            predicted_crossover(
                family_arch,
                int(first["res"]),
                int(first["batch"]),
                int(split),
                int(first["classes"]),
            )
            if split != ANY
            else None
        )
        at_top = {
            f: best[(best["family"] == f) & (best["split"] == split) & (best["depth"] == top)]
            for f in ("bp", "ff")
        }
        lines.append(
            dict(
                split=split,
                measured=crossover_depth(best, split),
                modelled=crossover_depth(modelled, split) if split != ANY else None,
                model=model_d,
                has_modelled=set(modelled.loc[modelled["split"] == split, "family"])
                == {"bp", "ff"},
                deepest_bp=_deepest(best, "bp", split, predicted.get(f"bp:{split}")),
                deepest_ff=_deepest(best, "ff", split, predicted.get(f"ff:{split}")),
                **{
                    f"{f}_at_top": (at_top[f]["cell_id"].iloc[0] if len(at_top[f]) else "")
                    for f in at_top
                },
                **{
                    f"{f}_peak": (
                        at_top[f]["peak_allocated_bytes"].iloc[0] if len(at_top[f]) else math.nan
                    )
                    for f in at_top
                },
                **{
                    f"{f}_flops": (
                        at_top[f]["flops_per_step"].iloc[0] if len(at_top[f]) else math.nan
                    )
                    for f in at_top
                },
                offload_peak=_off_device_peak(group, split, top),
            )
        )
    frame = pd.DataFrame(lines)

    def depth(v):
        if v is None or pd.isna(v):
            return "never in the grid"
        return "below from the start" if v == 0 else f"{v:.0f}"

    table = Table(
        [
            Column(
                "micro-batch",
                lambda r: (
                    "any (each family's best)" if r.split == ANY else _split_label(r.split, best)
                ),
            ),
            Column("D*, best configurations", lambda r: depth(r.measured), "r"),
            Column(
                "D*, modelled configurations",
                lambda r: (
                    ""
                    if r.split == ANY
                    else (depth(r.modelled) if r.has_modelled else "not in the results")
                ),
                "r",
            ),
            Column(
                "D*, model",
                lambda r: (
                    ""
                    if r.split == ANY
                    else ("none to 4096" if r.model is None else depth(r.model))
                ),
                "r",
            ),
            Column("deepest on 8 GiB: bp / ff", lambda r: f"{r.deepest_bp} / {r.deepest_ff}"),
            Column(f"D={top}: bp best (GiB)", lambda r: fmt(r.bp_peak / GIB, ".4g"), "r"),
            Column(f"D={top}: ff best (GiB)", lambda r: fmt(r.ff_peak / GIB, ".4g"), "r"),
            Column(
                f"D={top}: TFLOP/step bp / ff",
                lambda r: f"{fmt(r.bp_flops / 1e12, '.3g')} / {fmt(r.ff_flops / 1e12, '.3g')}",
            ),
            Column(f"D={top}: bp-offload (GiB)", lambda r: fmt(r.offload_peak / GIB, ".4g"), "r"),
        ],
        list(frame.itertuples(index=False)),
    ).markdown()
    return best, table


def crossover_sections(cells: pd.DataFrame) -> list[tuple[str, pd.DataFrame, str, Figure]]:
    """(title, best-by-depth, table, figure) of every depth family in ``cells``."""
    sections = []
    for key, group in depth_families(cells):
        width, pools, res, batch, classes, device, _ = key
        title = (
            f"vgg-dD-w{width}{pools} at {res}\u00d7{res}, batch {batch}, K={int(classes)}"
            f" \u2014 {device}"
        )
        best, table = crossover_table(group)
        figure = crossover_figure(best, title, predictions(group, _splits(best)))
        sections.append((title, best, table, figure))
    return sections


def crossover_markdown(cells: pd.DataFrame, figures: dict) -> list[str]:
    """The report's depth-crossover section (nothing when no grid varies depth)."""
    sections = crossover_sections(cells)
    if not sections:
        return []
    lines = [
        f"## {CROSSOVER.capitalize()}",
        "",
        "Each family's best configuration (smallest peak) at each depth, per micro-batch "
        "(BP: accumulation over micro-batches of that size, with or without checkpointing "
        "or offload; FF: each layer in chunks of it) and over all of them. D* is the "
        "depth at which FF's best falls below BP's, interpolated in log depth between the "
        "grid's depths. The model (docs/depth-crossover.md) describes "
        "`bp-ckpt --micro-batch m` in fp32 (optimizer state on the host) and "
        "`ff-pipelined --micro-batch m` in bf16 (gradients released, optimizer state on "
        "the host); its D* (searched up to D = 4096) is beside the D* of the same "
        "configurations in the data. Deepest on 8 GiB: the "
        "deepest of the grid whose best fits, or past the grid the model's line. BP with "
        "its activations offloaded to host memory (`bp-offload`) is left out of the curves "
        "and shown in the last column: its device peak hides what crosses the link every "
        "step (`membench plan` bounds that), and FF is not given the same tool.",
        "",
    ]
    for title, _, table, _ in sections:
        lines += [f"### {title}", ""]
        for figure in figures.get((CROSSOVER, title), []):
            lines += [f"![peak memory against depth, {title}](figures/{figure.filename})", ""]
        lines += [table, ""]
    return lines
