"""Hand-made results folders for tests of commands that read results (report, compare).

``write_results(folder, rows)`` writes a cells.csv with every schema column (plus a steps.csv);
``cell_row(...)`` fills a row's derived columns consistently, so a test states only what it
varies. ``sample_rows()`` is a small two-device set: two methods, two batches, one OOM row and
one estimated row. ``write_golden_results(root)`` made the committed fixture of the golden-file
test (tests/golden/report/results): more cases, three folders.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from membench.schema import CATEGORIES, CELL_COLUMNS, STEP_COLUMNS

MIB = 2**20


def cell_row(
    method: str,
    batch: int,
    *,
    arch: str = "vgg8",
    res: int = 32,
    device: str = "cpu",
    device_name: str = "Test CPU",
    status: str = "ok",
    peak_bytes: int | None = None,
    imgs_per_s: float | None = None,
    micro_batch: int | None = None,
    classes: int = 10,
    device_mem_bytes: int | None = None,
    breakdown: tuple[int, int, int, int] | None = None,
    error: str = "",
    started_at: str = "2025-01-01T00:00:00+00:00",
    steps: int = 3,
    memory_source: str | None = None,
) -> dict:
    """One cells.csv row. ``breakdown`` is (parameters, gradients, optimizer state,
    activations) bytes; an ok row without ``imgs_per_s`` gets a throughput from its batch."""
    estimated = status == "estimated"
    timed = status == "ok"
    if timed and imgs_per_s is None:
        imgs_per_s = 10.0 * batch
    step_ms = 1000.0 * batch / imgs_per_s if timed else None
    parts = [f"{method}", arch, f"r{res}", f"b{batch}"] + (
        [f"mb{micro_batch}"] if micro_batch else []
    )
    row = dict.fromkeys(CELL_COLUMNS, "")
    row.update(
        {
            "cell_id": "_".join(parts + [f"k{classes}"]),
            "method": method,
            "arch": arch,
            "res": res,
            "batch": batch,
            "micro_batch": micro_batch if micro_batch is not None else "",
            "classes": classes,
            "seed": 0,
            "device": device,
            "device_name": device_name,
            "device_mem_bytes": device_mem_bytes if device_mem_bytes is not None else "",
            "status": status,
            "error": error,
            "warmup": 1,
            "steps": steps,
            "step_ms_median": step_ms or "",
            "step_ms_p10": step_ms or "",
            "step_ms_p90": step_ms or "",
            "step_ms_mean": step_ms or "",
            "imgs_per_s": imgs_per_s if timed else "",
            "peak_allocated_bytes": peak_bytes if peak_bytes is not None else "",
            "memory_source": "estimate"
            if estimated
            else ("" if not timed else "tracker" if device == "cpu" else "cuda_allocator"),
            "torch_version": "2.5.0",
            "membench_version": "0.1.0",
            "torch_threads": 1,
            "started_at": started_at,
        }
    )
    if memory_source is not None:
        row["memory_source"] = memory_source
    if breakdown is not None:
        for column, value in zip((f"{c}_bytes" for c in CATEGORIES), breakdown, strict=True):
            row[column] = value
    return row


def sample_rows() -> list[dict]:
    """bp and ff-pipelined at batch 32 and 64 on the CPU and on cuda:0; on the CPU bp at batch
    128 runs out of a 64 MiB budget, and ff-pipelined at batch 128 has a CPU estimate."""
    rows = []
    for device, name, scale in (("cpu", "Test CPU", 1), ("cuda:0", "Test GPU", 20)):
        for batch in (32, 64):
            rows.append(
                cell_row(
                    "bp",
                    batch,
                    device=device,
                    device_name=name,
                    peak_bytes=(10 + batch // 4) * MIB,
                    imgs_per_s=scale * 3.0 * batch,
                    breakdown=(4 * MIB, 4 * MIB, 2 * MIB, batch // 4 * MIB),
                )
            )
            rows.append(
                cell_row(
                    "ff-pipelined",
                    batch,
                    device=device,
                    device_name=name,
                    peak_bytes=(9 + batch // 8) * MIB,
                    imgs_per_s=scale * 3.5 * batch,
                    breakdown=(4 * MIB, 1 * MIB, 2 * MIB, (2 + batch // 8) * MIB),
                )
            )
    rows.append(
        cell_row(
            "bp",
            128,
            status="oom",
            device_mem_bytes=64 * MIB,
            error="OutOfMemoryError: tracked peak would pass the 64 MiB budget",
        )
    )
    # as membench.planning.estimate writes them: a device kind, not a device
    rows.append(
        cell_row(
            "ff-pipelined",
            128,
            status="estimated",
            peak_bytes=25 * MIB,
            device="cpu (estimate)",
            device_name="estimate",
            breakdown=(4 * MIB, 1 * MIB, 2 * MIB, 18 * MIB),
        )
    )
    return rows


def write_results(folder: Path, rows: list[dict], *, columns: list[str] | None = None) -> Path:
    """Write ``rows`` to ``folder/cells.csv`` (with ``columns``, default the full schema) and
    a steps.csv for the timed rows; returns the cells.csv path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    columns = columns or CELL_COLUMNS
    cells_file = folder / "cells.csv"
    with open(cells_file, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with open(folder / "steps.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=STEP_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            if row.get("status") == "ok" and row.get("step_ms_median") not in ("", None):
                for step in range(int(row["steps"])):
                    writer.writerow(
                        {
                            "cell_id": row["cell_id"],
                            "device": row["device"],
                            "step": step,
                            "step_ms": row["step_ms_median"],
                        }
                    )
    return cells_file


def golden_rows() -> dict[str, list[dict]]:
    """The golden report's results, per folder: ``sample_rows()`` plus a rerun cell (superseded),
    a budget split of one configuration, micro-batches, a third-party method, the paper's VGG8
    operating point (with a failed ff-naive whose error holds a pipe), a long timeout error, an
    unusable row, a CUDA OOM placed at the card's memory, and CUDA estimates of the paper's VGG11
    point (one over its budget)."""
    cpu = [
        cell_row("bp", 32, peak_bytes=20 * MIB, started_at="2024-12-31T00:00:00+00:00"),  # rerun
        cell_row("bp", 32, peak_bytes=18 * MIB, imgs_per_s=90.0, device_mem_bytes=64 * MIB),
        cell_row("bp", 64, peak_bytes=27 * MIB, imgs_per_s=180.0, device_mem_bytes=64 * MIB),
        cell_row("bp-accum", 128, micro_batch=64, peak_bytes=30 * MIB, imgs_per_s=300.0),
        cell_row("bp-accum", 128, micro_batch=32, peak_bytes=24 * MIB, imgs_per_s=260.0),
        cell_row("my-method", 64, peak_bytes=15 * MIB, imgs_per_s=150.0),
        cell_row(
            "bp",
            256,
            peak_bytes=100 * MIB,
            imgs_per_s=1000.0,
            breakdown=(4 * MIB, 4 * MIB, 2 * MIB, 90 * MIB),
        ),
        cell_row(
            "ff-pipelined",
            256,
            peak_bytes=90 * MIB,
            imgs_per_s=1200.0,
            breakdown=(4 * MIB, 1 * MIB, 2 * MIB, 83 * MIB),
        ),
        cell_row("ff-naive", 256, status="error", error="RuntimeError: boom | at layer 3"),
        cell_row("bp-ckpt", 64, status="timeout", error="cell took longer than 600 s; " * 8),
        {**cell_row("bp", 512), "batch": "", "cell_id": "bp_vgg8_r32_b?_k10"},  # unusable
    ]
    gpu = [
        cell_row(
            "bp",
            128,
            device="cuda:0",
            device_name="Test GPU",
            status="oom",
            error="torch.OutOfMemoryError: CUDA out of memory",
        ),
    ]
    estimate = dict(
        device="cuda (estimate)",
        device_name="estimate",
        memory_source="estimate",
        arch="vgg11",
        res=224,
        classes=100,
    )
    estimates = [
        cell_row(
            "bp",
            128,
            status="oom",
            peak_bytes=9 * 2**30,
            device_mem_bytes=8 * 2**30,
            error="estimated 9.000 GiB > budget 8.000 GiB",
            **estimate,
        ),
        cell_row(
            "bp-ckpt",
            128,
            status="estimated",
            peak_bytes=7 * 2**30,
            device_mem_bytes=8 * 2**30,
            breakdown=(MIB, MIB, 2 * MIB, 7 * 2**30 - 4 * MIB),
            **estimate,
        ),
    ]
    return {"sweep-a": sample_rows() + gpu, "sweep-b": cpu, "estimate-vgg11": estimates}


def write_golden_results(root: Path) -> None:
    """Write ``golden_rows()`` under ``root`` (one folder each) and an env.json with the GPU's
    memory beside sweep-a. Run once; the golden test reads the committed files, not this."""
    for name, rows in golden_rows().items():
        write_results(Path(root) / name, rows)
    (Path(root) / "sweep-a" / "env.json").write_text(
        json.dumps(
            {"gpus": [{"index": 0, "name": "Test GPU", "total_memory_bytes": 80 * MIB}]}, indent=2
        )
        + "\n"
    )
