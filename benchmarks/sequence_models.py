"""CUDA estimates of transformers from their configs: the targets of docs/sequence-models.md.

    python benchmarks/sequence_models.py --out results/sequence-models [--seq 512,1024,2048]
        [--batch 8] [--device-profile rtx-4090] [--fit-by total] [--budget BYTES]
        [--fit-seq 1024] [--models gpt2-small,...]
    python benchmarks/sequence_models.py --out results/sequence-models --markdown
    python benchmarks/sequence_models.py --out results/sequence-models --seq 1024 \
        --depth-study 1,2,3,4,6,12,24

For each model (random weights from its config, no download), sequence length and configuration
(bf16: bp, bp-ckpt, bp-offload, and bp with gradients released and AdamW's state in host
memory) it writes one row to ``estimates.csv`` as it goes: the CUDA estimate at ``--batch`` on
the device profile's card (the tensors' peak, the allocator's reserve, the device total, the
FLOPs of a step: what ``membench sweep --estimate`` computes) and the seconds that estimate took
on this machine; then, at ``--fit-seq``, one row per configuration and ``--fit-by`` figure to
``fits.csv``: ``membench fit``'s largest batch under the budget (by default the profile's usable
memory, judged by the device total as ``membench fit --gpu PROFILE`` does; docs/device-total.md)
and the seconds the search took. Rows already in the files are kept and skipped (a rerun
resumes). The estimates run one at a time in this process, after one unrecorded warm-up
estimate (imports, first builds), so each row's seconds are that estimate's alone.
``--depth-study`` instead sets layer-local training against BP on GPT-2 medium's blocks at each
depth (``depth.csv``).

The configs are the models' published ones (``config.json`` of each model's Hugging Face
repository, named in ``MODELS``), given as ``hf:`` overrides; ``max_position_embeddings`` is
raised to 2048 where the model has fewer positions (GPT-2: 1024, BERT: 512), so every model
runs at every length: a learned position table of 2048 rows, an assumption of this benchmark.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from membench.measure.flops import throughput_bound
from membench.measure.peaks import gpu_peak
from membench.planning.device_profiles import device_profile_of
from membench.planning.estimate import estimate_cell
from membench.planning.fit import fit_batch
from membench.schema import Cell
from membench.units import parse_bytes

POSITIONS = "max_position_embeddings=2048"
# name -> (hf: arch, where its sizes come from)
MODELS = {
    "gpt2-small": (f"hf:gpt2?{POSITIONS}", "openai-community/gpt2 config.json (= GPT2Config())"),
    "gpt2-medium": (
        f"hf:gpt2?n_embd=1024&n_layer=24&n_head=16&{POSITIONS}",
        "openai-community/gpt2-medium config.json",
    ),
    "gpt2-large": (
        f"hf:gpt2?n_embd=1280&n_layer=36&n_head=20&{POSITIONS}",
        "openai-community/gpt2-large config.json",
    ),
    "bert-base": (f"hf:bert?{POSITIONS}", "google-bert/bert-base-uncased config.json"),
    "bert-large": (
        "hf:bert?hidden_size=1024&num_hidden_layers=24&num_attention_heads=16"
        f"&intermediate_size=4096&{POSITIONS}",
        "google-bert/bert-large-uncased config.json",
    ),
    "llama-1b": (
        "hf:llama?hidden_size=2048&intermediate_size=8192&num_hidden_layers=16"
        "&num_attention_heads=32&num_key_value_heads=8&vocab_size=128256"
        "&max_position_embeddings=131072&tie_word_embeddings=true",
        "meta-llama/Llama-3.2-1B config.json (its rope parameters left out: no memory effect)",
    ),
}
# name -> (method, the cell's other settings); every one in bf16 autocast
CONFIGURATIONS = {
    "bp": ("bp", {}),
    "bp-ckpt": ("bp-ckpt", {}),
    "bp-offload": ("bp-offload", {}),
    "bp released+host": ("bp", {"grads": "released", "optimizer_state": "host"}),
}
ESTIMATE_COLUMNS = [
    "model",
    "seq",
    "batch",
    "configuration",
    "device_profile",
    "status",
    "peak_bytes",
    "reserved_bytes",
    "device_total_bytes",
    "flops_per_step",
    "seconds",
    "error",
]
# peak_bytes, next_peak_bytes: the figure fit_by names (docs/device-total.md); next_term: the
# term of the next batch's figure that passes the budget
FIT_COLUMNS = [
    "model",
    "seq",
    "configuration",
    "device_profile",
    "fit_by",
    "budget_bytes",
    "batch",
    "peak_bytes",
    "next_batch",
    "next_peak_bytes",
    "next_term",
    "estimates",
    "seconds",
]


def _done(path: Path, key: list[str]) -> set[tuple[str, ...]]:
    if not path.exists():
        return set()
    with path.open() as file:
        return {tuple(row[k] for k in key) for row in csv.DictReader(file)}


def _append(path: Path, columns: list[str], row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        if new:
            writer.writeheader()
        writer.writerow(row)
    print(", ".join(f"{k}={row[k]}" for k in columns), flush=True)


def _warm_up(profile: str) -> None:
    """One estimate of a tiny GPT, not recorded: the imports and first builds a process pays
    once would otherwise count in the first row's seconds."""
    tiny = "hf:gpt2?n_embd=32&n_layer=1&n_head=2&vocab_size=128"
    cell = Cell("bp", tiny, None, 2, seq=16, precision="bf16", warmup=1, steps=1)
    estimate_cell(cell, "cuda", profile=profile)


def estimates(out: Path, models: list[str], seqs: list[int], batch: int, profile: str) -> None:
    """One row per (model, seq, configuration) not yet in estimates.csv."""
    path = out / "estimates.csv"
    done = _done(path, ["model", "seq", "configuration"])
    warm = False
    for model in models:
        arch = MODELS[model][0]
        for seq in seqs:
            for name, (method, settings) in CONFIGURATIONS.items():
                if (model, str(seq), name) in done:
                    continue
                if not warm:
                    _warm_up(profile)
                    warm = True
                cell = Cell(
                    method,
                    arch,
                    None,
                    batch,
                    seq=seq,
                    precision="bf16",
                    warmup=1,
                    steps=1,
                    **settings,
                )
                start = time.perf_counter()
                result = estimate_cell(cell, "cuda", profile=profile)
                seconds = time.perf_counter() - start
                _append(
                    path,
                    ESTIMATE_COLUMNS,
                    dict(
                        model=model,
                        seq=seq,
                        batch=batch,
                        configuration=name,
                        device_profile=profile,
                        status=result.status,
                        peak_bytes=result.peak_allocated_bytes,
                        reserved_bytes=result.peak_reserved_bytes,
                        device_total_bytes=result.device_total_bytes,
                        flops_per_step=result.flops_per_step,
                        seconds=f"{seconds:.1f}",
                        error=result.error,
                    ),
                )


def fits(out: Path, models: list[str], seq: int, budget: int, profile: str, fit_by: str) -> None:
    """``membench fit``'s search (``fit_batch``) per model and configuration at ``seq``: the
    largest batch whose ``fit_by`` figure on ``profile``'s card fits ``budget``."""
    path = out / "fits.csv"
    done = _done(path, ["model", "seq", "configuration", "fit_by"])
    for model in models:
        arch = MODELS[model][0]
        for name, (method, settings) in CONFIGURATIONS.items():
            if (model, str(seq), name, fit_by) in done:
                continue
            start = time.perf_counter()
            fit = fit_batch(
                method,
                arch,
                None,
                budget,
                max_batch=1024,
                profile=profile,
                fit_by=fit_by,
                seq=seq,
                precision="bf16",
                **settings,
            )
            _append(
                path,
                FIT_COLUMNS,
                dict(
                    model=model,
                    seq=seq,
                    configuration=name,
                    device_profile=profile,
                    fit_by=fit.fit_by,
                    budget_bytes=budget,
                    batch=fit.batch,
                    peak_bytes=fit.peak_bytes,
                    next_batch=fit.next_batch,
                    next_peak_bytes=fit.next_peak_bytes,
                    next_term=fit.next_term,
                    estimates=fit.estimates,
                    seconds=f"{time.perf_counter() - start:.1f}",
                ),
            )


FIT_BY_ORDER = ["total", "reserved", "allocated"]  # the fits table's columns, the default first
DEPTH_METHODS = ("bp", "bp-deepsup", "ff-naive", "ff-pipelined")


def depth_study(out: Path, depths: list[int], seq: int, batch: int, profile: str) -> None:
    """Layer-local against BP on GPT-2 medium's blocks (width 1024, 16 heads) at ``depths``:
    each method's CUDA estimate in bf16, classification (the objective the layer-local methods
    train, so every method trains the same task), one row per (depth, method) to depth.csv."""
    path = out / "depth.csv"
    done = _done(path, ["depth", "method"])
    for depth in depths:
        arch = f"hf:gpt2?n_embd=1024&n_head=16&n_layer={depth}"
        for method in DEPTH_METHODS:
            if (str(depth), method) in done:
                continue
            cell = Cell(
                method,
                arch,
                None,
                batch,
                seq=seq,
                objective="classification",
                precision="bf16",
                warmup=1,
                steps=1,
            )
            start = time.perf_counter()
            result = estimate_cell(cell, "cuda", count_flops=False, profile=profile)
            _append(
                path,
                DEPTH_COLUMNS,
                dict(
                    depth=depth,
                    method=method,
                    seq=seq,
                    batch=batch,
                    device_profile=profile,
                    status=result.status,
                    peak_bytes=result.peak_allocated_bytes,
                    device_total_bytes=result.device_total_bytes,
                    seconds=f"{time.perf_counter() - start:.1f}",
                ),
            )


DEPTH_COLUMNS = [
    "depth",
    "method",
    "seq",
    "batch",
    "device_profile",
    "status",
    "peak_bytes",
    "device_total_bytes",
    "seconds",
]


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as file:
        return list(csv.DictReader(file))


def _gib(value: str | None) -> str:
    return f"{int(value) / 2**30:.2f}" if value else "-"


def _ratio(top: dict | None, bottom: dict | None, column: str) -> str:
    if not (top and bottom and top.get(column) and bottom.get(column)):
        return "-"
    return f"{int(top[column]) / int(bottom[column]):.2f}"


def estimates_markdown(rows: list[dict]) -> list[str]:
    """Per model and length, each configuration's allocated / device total GiB (seconds)."""
    cells = {(r["model"], r["seq"], r["configuration"]): r for r in rows}
    seqs = sorted({r["seq"] for r in rows}, key=int)
    lines = ["| model | seq | " + " | ".join(CONFIGURATIONS) + " |"]
    lines.append("| --- | ---: |" + " ---: |" * len(CONFIGURATIONS))
    for model in MODELS:
        for seq in seqs:
            found = [cells.get((model, seq, name)) for name in CONFIGURATIONS]
            if not any(found):
                continue
            shown = []
            for r in found:
                if r is None:
                    shown.append("-")
                elif r["status"] != "estimated":
                    shown.append(f"{r['status']} ({float(r['seconds']):.0f} s)")
                else:
                    shown.append(
                        f"{_gib(r['peak_bytes'])} / {_gib(r['device_total_bytes'])} "
                        f"({float(r['seconds']):.0f} s)"
                    )
            lines.append(f"| {model} | {seq} | " + " | ".join(shown) + " |")
    return lines


def tokens_bound(estimate: dict | None, profile: str) -> str:
    """Tokens/s a step of this configuration could reach at the profile's GPU's bf16 datasheet
    peak (``flops.throughput_bound`` x seq; FLOPs per sample do not change with the batch), from
    its estimate's FLOPs; an upper bound, never a prediction."""
    if not estimate or not estimate.get("flops_per_step"):
        return "-"
    peak = gpu_peak(device_profile_of(profile).gpu)
    if peak is None:
        return "-"
    bound = throughput_bound(int(estimate["flops_per_step"]), int(estimate["batch"]), peak.bf16)
    return f"{bound * int(estimate['seq']):,.0f}"


def fits_markdown(rows: list[dict], estimated: list[dict]) -> list[str]:
    """Per model, length and configuration, the largest batch by each figure fits were judged
    by; the first figure's peak, next batch and what decided it; the tokens/s bound at the
    card's bf16 peak."""
    by_key: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_key.setdefault((r["model"], r["seq"], r["configuration"]), {})[r["fit_by"]] = r
    estimates_of = {(r["model"], r["seq"], r["configuration"]): r for r in estimated}
    figures = sorted({r["fit_by"] for r in rows}, key=FIT_BY_ORDER.index)
    first = figures[0]
    lines = [
        f"| model | seq | configuration | largest batch by {first} | its {first} GiB "
        f"| next batch: {first} GiB, decided by | "
        + "".join(f"largest batch by {f} | " for f in figures[1:])
        + "tokens/s bound | estimates | seconds |"
    ]
    lines.append("| --- | ---: | --- | ---: | ---: | --- |" + " ---: |" * (len(figures) + 2))
    for key, fitted in by_key.items():
        r = fitted.get(first)
        if r is None:
            continue
        following = "-"
        if r["next_batch"]:
            term = f", {r['next_term']}" if r["next_term"] else ""
            following = f"{r['next_batch']}: {_gib(r['next_peak_bytes'])}{term}"
        others = "".join(
            f"{fitted[f]['batch'] or 'none'} | " if f in fitted else "- | " for f in figures[1:]
        )
        bound = tokens_bound(estimates_of.get(key), r["device_profile"])
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {r['batch'] or 'none'} "
            f"| {_gib(r['peak_bytes'])} | {following} | {others}{bound} | {r['estimates']} "
            f"| {r['seconds']} |"
        )
    return lines


def depth_markdown(rows: list[dict]) -> list[str]:
    """Per depth, each method's allocated GiB, and ff-pipelined against bp by both figures."""
    peaks = {(r["depth"], r["method"]): r for r in rows}
    lines = [
        "| depth | " + " | ".join(DEPTH_METHODS) + " | ff-pipelined ÷ bp | ÷ by device total |"
    ]
    lines.append("| ---: |" + " ---: |" * (len(DEPTH_METHODS) + 2))
    for d in sorted({r["depth"] for r in rows}, key=int):
        row = [peaks.get((d, m)) for m in DEPTH_METHODS]
        row = [r if r is not None and r["status"] == "estimated" else None for r in row]
        shown = ["-" if r is None else _gib(r["peak_bytes"]) for r in row]
        bp, ff = row[0], row[-1]
        ratios = f"{_ratio(ff, bp, 'peak_bytes')} | {_ratio(ff, bp, 'device_total_bytes')}"
        lines.append(f"| {d} | " + " | ".join(shown) + f" | {ratios} |")
    return lines


def markdown(out: Path) -> str:
    """The three CSVs as the Markdown tables of docs/sequence-models.md."""
    lines: list[str] = []
    estimated, fitted, depth = (_rows(out / n) for n in ("estimates.csv", "fits.csv", "depth.csv"))
    if estimated:
        lines += [*estimates_markdown(estimated), ""]
    if fitted:
        lines += [*fits_markdown(fitted, estimated), ""]
    if depth:
        lines += [*depth_markdown(depth), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/sequence-models"))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seq", default="512,1024,2048")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--device-profile", default="rtx-4090", help="the card of the device totals and fits"
    )
    parser.add_argument(
        "--budget", default="", help="the fits' budget; default: the device profile's usable"
    )
    parser.add_argument(
        "--fit-by",
        default="total",
        help="comma list of what a fit judges the budget by: total, reserved, allocated",
    )
    parser.add_argument("--fit-seq", default="1024", help="comma list; '' for no fits")
    parser.add_argument(
        "--depth-study",
        default="",
        help="comma list of depths: only the layer-local vs BP study at --seq's first length",
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print the tables of what --out holds, and stop"
    )
    args = parser.parse_args()
    if args.markdown:
        print(markdown(args.out))
        return
    card = device_profile_of(args.device_profile)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.depth_study:
        depths = [int(d) for d in args.depth_study.split(",")]
        depth_study(args.out, depths, int(args.seq.split(",")[0]), args.batch, card.name)
        return
    models = [m for m in args.models.split(",") if m]
    estimates(args.out, models, [int(s) for s in args.seq.split(",")], args.batch, card.name)
    budget = parse_bytes(args.budget) if args.budget else int(card.usable.value)
    for fit_by in [f for f in args.fit_by.split(",") if f]:
        print(
            f"fits: budget {budget / 2**30:.2f} GiB judged by {fit_by} on {card.name}", flush=True
        )
        for seq in [int(s) for s in args.fit_seq.split(",") if s]:
            fits(args.out, models, seq, budget, card.name, fit_by)


if __name__ == "__main__":
    main()
