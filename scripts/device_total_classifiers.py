"""Ten torchvision and timm classifiers at 224x224, batch 16 and 64, fp32 AdamW (membench's bp),
cudnn.benchmark off and on, estimated for a device profile's card (default a100-40gb): the
tensors' peak (allocated), the allocator model's reserve and the device total, with its terms.

    .venv/bin/python scripts/device_total_classifiers.py [--profile a100-40gb] [--csv out.csv]
        [--two-steps]

Prints one table (GiB = 2**30 bytes); docs/device-total.md quotes it. Estimates only: nothing
runs on a GPU, so the figures are as good as the device profile's (its sources say which are
assumed). ``--two-steps`` estimates each cell again with two tracked steps instead of one, and
prints that estimate's reserve beside the first: the replay repeats one recorded step
(``device_total.repeated_steps``), and this checks it against a second step really recorded.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from unittest import mock

from membench.measure import protocol
from membench.planning.estimate import estimate_cell
from membench.schema import Cell

MODELS = (
    "tv:resnet18",
    "tv:resnet50",
    "tv:vgg16",
    "tv:densenet121",
    "tv:mobilenet_v3_large",
    "tv:efficientnet_b0",
    "timm:convnext_tiny",
    "timm:vit_base_patch16_224",
    "timm:regnety_016",
    "timm:deit_small_patch16_224",
)
BATCHES = (16, 64)
COLUMNS = (
    "peak_allocated_bytes",
    "peak_reserved_bytes",
    "device_total_bytes",
    "workspace_bytes",
    "reserve_slack_bytes",
    "context_bytes",
)


def two_steps_reserved(cell: Cell, profile: str) -> int | None:
    """The reserve of ``cell``'s estimate with two tracked steps, as for a runner that carries
    tensors across steps (``protocol.tracked_steps``), not one."""
    with mock.patch.object(protocol, "carries_tensors_across_steps", lambda runner: True):
        result = estimate_cell(cell, "cuda", count_flops=False, profile=profile)
    return result.peak_reserved_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="a100-40gb")
    parser.add_argument("--csv", default=None, help="Also write the rows here.")
    parser.add_argument(
        "--two-steps", action="store_true", help="Check each reserve against two tracked steps."
    )
    args = parser.parse_args()
    gib = 2**30
    print(
        f"{'arch':30s} {'batch':>5s} {'cudnn':>5s} {'allocated':>9s} {'reserved':>9s} "
        f"{'total':>9s}  {'workspace':>9s} {'slack':>9s} {'context':>9s}  (GiB, {args.profile})"
    )
    rows = []
    for arch in MODELS:
        for batch in BATCHES:
            for benchmark in ("off", "on"):
                cell = Cell("bp", arch, 224, batch, classes=1000, cudnn_benchmark=benchmark)
                start = time.perf_counter()
                result = estimate_cell(cell, "cuda", count_flops=False, profile=args.profile)
                if result.status != "estimated":
                    print(f"{arch:30s} {batch:5d} {benchmark:>5s} {result.status}: {result.error}")
                    continue
                values = [getattr(result, column) / gib for column in COLUMNS]
                row = {"arch": arch, "batch": batch, "cudnn_benchmark": benchmark}
                row |= {c: getattr(result, c) for c in COLUMNS}
                check = ""
                if args.two_steps:
                    row["two_steps_reserved_bytes"] = two_steps_reserved(cell, args.profile)
                    same = row["two_steps_reserved_bytes"] == result.peak_reserved_bytes
                    check = f"  two steps {row['two_steps_reserved_bytes'] / gib:9.3f}" + (
                        " same" if same else " DIFFERENT"
                    )
                print(
                    f"{arch:30s} {batch:5d} {benchmark:>5s} "
                    + " ".join(f"{v:9.3f}" for v in values[:3])
                    + "  "
                    + " ".join(f"{v:9.3f}" for v in values[3:])
                    + f"  ({time.perf_counter() - start:.1f} s)"
                    + check,
                    flush=True,
                )
                rows.append(row)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    sys.exit(0 if len(rows) == len(MODELS) * len(BATCHES) * 2 else 1)


if __name__ == "__main__":
    main()
