"""CUDA estimates of transformers from their configs: the targets of docs/sequence-models.md.

    python benchmarks/sequence_models.py --out results/sequence-models [--seq 512,1024,2048]
        [--batch 8] [--budget 24GiB] [--fit-seq 1024] [--models gpt2-small,...]
    python benchmarks/sequence_models.py --out results/sequence-models --seq 1024 \
        --depth-study 1,2,3,4,6,12,24

For each model (random weights from its config, no download), sequence length and configuration
(bf16: bp, bp-ckpt, bp-offload, and bp with gradients released and AdamW's state in host
memory) it writes one row to ``estimates.csv`` as it goes: the CUDA estimate of the peak at
``--batch`` and the seconds that estimate took on this machine; then, at ``--fit-seq``, one row
per configuration to ``fits.csv``: ``membench fit``'s largest batch under ``--budget`` and the
seconds the search took. Rows already in the files are kept and skipped (a rerun resumes).
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
    "status",
    "peak_bytes",
    "seconds",
    "error",
]
FIT_COLUMNS = [
    "model",
    "seq",
    "configuration",
    "budget_bytes",
    "batch",
    "peak_bytes",
    "next_batch",
    "next_peak_bytes",
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


def estimates(out: Path, models: list[str], seqs: list[int], batch: int) -> None:
    path = out / "estimates.csv"
    done = _done(path, ["model", "seq", "configuration"])
    for model in models:
        arch = MODELS[model][0]
        for seq in seqs:
            for name, (method, settings) in CONFIGURATIONS.items():
                if (model, str(seq), name) in done:
                    continue
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
                result = estimate_cell(cell, "cuda", count_flops=False)
                seconds = time.perf_counter() - start
                _append(
                    path,
                    ESTIMATE_COLUMNS,
                    dict(
                        model=model,
                        seq=seq,
                        batch=batch,
                        configuration=name,
                        status=result.status,
                        peak_bytes=result.peak_allocated_bytes,
                        seconds=f"{seconds:.1f}",
                        error=result.error,
                    ),
                )


def fits(out: Path, models: list[str], seq: int, budget: int) -> None:
    path = out / "fits.csv"
    done = _done(path, ["model", "seq", "configuration"])
    for model in models:
        arch = MODELS[model][0]
        for name, (method, settings) in CONFIGURATIONS.items():
            if (model, str(seq), name) in done:
                continue
            start = time.perf_counter()
            fit = fit_batch(
                method, arch, None, budget, max_batch=1024, seq=seq, precision="bf16", **settings
            )
            _append(
                path,
                FIT_COLUMNS,
                dict(
                    model=model,
                    seq=seq,
                    configuration=name,
                    budget_bytes=budget,
                    batch=fit.batch,
                    peak_bytes=fit.peak_bytes,
                    next_batch=fit.next_batch,
                    next_peak_bytes=fit.next_peak_bytes,
                    estimates=fit.estimates,
                    seconds=f"{time.perf_counter() - start:.1f}",
                ),
            )


DEPTH_METHODS = ("bp", "bp-deepsup", "ff-naive", "ff-pipelined")


def depth_study(out: Path, depths: list[int], seq: int, batch: int) -> None:
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
            result = estimate_cell(cell, "cuda", count_flops=False)
            _append(
                path,
                ["depth", "method", "seq", "batch", "status", "peak_bytes", "seconds"],
                dict(
                    depth=depth,
                    method=method,
                    seq=seq,
                    batch=batch,
                    status=result.status,
                    peak_bytes=result.peak_allocated_bytes,
                    seconds=f"{time.perf_counter() - start:.1f}",
                ),
            )


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as file:
        return list(csv.DictReader(file))


def _gib(value: str) -> str:
    return f"{int(value) / 2**30:.2f}" if value else "-"


def markdown(out: Path) -> str:
    """The three CSVs as the Markdown tables of docs/sequence-models.md."""
    lines = []
    estimates = _rows(out / "estimates.csv")
    if estimates:
        cells = {(r["model"], r["seq"], r["configuration"]): r for r in estimates}
        seqs = sorted({r["seq"] for r in estimates}, key=int)
        lines.append("| model | seq | " + " | ".join(CONFIGURATIONS) + " |")
        lines.append("| --- | ---: |" + " ---: |" * len(CONFIGURATIONS))
        for model in MODELS:
            for seq in seqs:
                found = [cells.get((model, seq, name)) for name in CONFIGURATIONS]
                if not any(found):
                    continue
                shown = [
                    "-" if r is None else f"{_gib(r['peak_bytes'])} ({float(r['seconds']):.0f} s)"
                    for r in found
                ]
                lines.append(f"| {model} | {seq} | " + " | ".join(shown) + " |")
        lines.append("")
    fitted = _rows(out / "fits.csv")
    if fitted:
        lines.append(
            "| model | seq | configuration | largest batch | its peak GiB | next batch: peak GiB "
            "| estimates | seconds |"
        )
        lines.append("| --- | ---: | --- | ---: | ---: | --- | ---: | ---: |")
        for r in fitted:
            following = (
                f"{r['next_batch']}: {_gib(r['next_peak_bytes'])}" if r["next_batch"] else "-"
            )
            lines.append(
                f"| {r['model']} | {r['seq']} | {r['configuration']} | {r['batch'] or 'none'} "
                f"| {_gib(r['peak_bytes'])} | {following} | {r['estimates']} | {r['seconds']} |"
            )
        lines.append("")
    depth = _rows(out / "depth.csv")
    if depth:
        peaks = {(r["depth"], r["method"]): r for r in depth}
        lines.append("| depth | " + " | ".join(DEPTH_METHODS) + " | ff-pipelined ÷ bp |")
        lines.append("| ---: |" + " ---: |" * (len(DEPTH_METHODS) + 1))
        for d in sorted({r["depth"] for r in depth}, key=int):
            row = [peaks.get((d, m)) for m in DEPTH_METHODS]
            shown = [
                "-" if r is None or r["status"] != "estimated" else _gib(r["peak_bytes"])
                for r in row
            ]
            bp, ff = row[0], row[-1]
            ratio = (
                f"{int(ff['peak_bytes']) / int(bp['peak_bytes']):.2f}"
                if bp and ff and bp["peak_bytes"] and ff["peak_bytes"]
                else "-"
            )
            lines.append(f"| {d} | " + " | ".join(shown) + f" | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/sequence-models"))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seq", default="512,1024,2048")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--budget", default="24GiB")
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
    args.out.mkdir(parents=True, exist_ok=True)
    if args.depth_study:
        depths = [int(d) for d in args.depth_study.split(",")]
        depth_study(args.out, depths, int(args.seq.split(",")[0]), args.batch)
        return
    models = [m for m in args.models.split(",") if m]
    estimates(args.out, models, [int(s) for s in args.seq.split(",")], args.batch)
    for seq in [int(s) for s in args.fit_seq.split(",") if s]:
        fits(args.out, models, seq, parse_bytes(args.budget))


if __name__ == "__main__":
    main()
