"""Which torchvision classifiers (and a few timm models) membench estimates and measures: the
table of docs/model-coverage.md.

    python scripts/model_coverage.py [--measure] [--max-measure-params 200e6] [MODEL ...]

For every model of ``torchvision.models.list_models(module=torchvision.models)`` (or the given
``tv:NAME`` / ``timm:NAME``): the smallest sensible resolution (torchvision's ``min_size``, at
least 32, raised until the model runs), a bp and a bp-ckpt CUDA estimate at it (batch 2, K=10),
with ``--measure`` a bp CPU measurement at it (batch 2, one warmup and one timed step; models
over ``--max-measure-params`` parameters are skipped, their AdamW state alone would fill the
host's memory), and bp's FLOPs per image (K=1000) beside three times torchvision's own forward
figure (``weights.meta["_ops"]``, GFLOPS as torchvision counts them: multiply-adds, so
membench's FLOPs, two per multiply-add, come to about twice it), both at the resolution of that
figure (the default weights' crop size: 224 for most, 299 for Inception v3; 224 for timm; where
the model built without weights does not take that size, ViT-H/14 whose SWAG weights are at 518,
at its own resolution and without a ratio). Minutes on 2 cores without
``--measure``.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from coverage_common import estimate_model, peak_text, result_text

from membench.archs import ArchError, probe_arch
from membench.measure.devices import CpuDevice
from membench.measure.protocol import count_step_flops, run_cell
from membench.report.markdown import markdown_table
from membench.schema import Cell

TIMM_MODELS = [
    "timm:resnet18",
    "timm:convnext_atto",
    "timm:vit_tiny_patch16_224",
    "timm:efficientnet_b0",
    "timm:regnety_002",
]
RESOLUTIONS = (32, 64, 128, 224, 299)


def torchvision_meta(arch: str) -> tuple[int, float | None, int]:
    """(min_size, GFLOPS of one forward, the resolution they are counted at: the weights'
    crop size) from the model's default weights; (32, None, 224) without any."""
    if not arch.startswith("tv:"):
        return 32, None, 224
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch[3:]).DEFAULT
    except (ValueError, AttributeError):
        return 32, None, 224
    crop = getattr(weights.transforms(), "crop_size", [224])[0]
    return max(32, weights.meta.get("min_size", (32, 32))[0]), weights.meta.get("_ops"), crop


def smallest_resolution(arch: str, start: int) -> tuple[int | None, str]:
    """The first resolution from ``start`` up where the model runs, and the last refusal."""
    reason = ""
    # From the smallest: a builder without weights may take another size than the weights'
    # (torchvision's ViT-H/14 builds for 224, its SWAG weights' min_size is 518).
    for res in sorted({start, *RESOLUTIONS}):
        try:
            probe_arch(arch, res)
            return res, ""
        except ArchError as err:
            reason = str(err)
    return None, reason


def cover(arch: str, measure: bool, max_params: float) -> list[str]:
    min_size, ops, flops_res = torchvision_meta(arch)
    res, reason = smallest_resolution(arch, min_size)
    if res is None:
        return [arch, "-", f"refused: {reason[:100]}", "", "", "", "", ""]
    bp, ckpt = (
        peak_text(estimate_model(arch, res, m, classes=10, count_flops=False))
        for m in ("bp", "bp-ckpt")
    )
    measured = "-"
    if measure:
        if probe_arch(arch, res).parameters > max_params:
            measured = "skipped (size)"
        else:
            start = time.perf_counter()
            row = run_cell(
                Cell("bp", arch, res, 2, classes=10, warmup=1, steps=1),
                CpuDevice(),
                count_flops=False,
            )
            text = result_text(row.status, row.peak_allocated_bytes, row.error)
            measured = f"{text} ({time.perf_counter() - start:.0f} s)"
    try:
        flops = count_step_flops(Cell("bp", arch, flops_res, 2, classes=1000)) / 2 / 1e9
        flops_text = f"{flops:.2f} ({flops_res})"
    except Exception:  # built without weights for another size: counted there, no ratio
        flops, ops = count_step_flops(Cell("bp", arch, res, 2, classes=1000)) / 2 / 1e9, None
        flops_text = f"{flops:.2f} ({res}; torchvision's figure is at {flops_res})"
    reference = f"{3 * ops:.2f}" if ops else "-"
    ratio = f"{flops / (3 * ops):.2f}" if ops and flops else "-"
    return [arch, str(res), bp, measured, ckpt, flops_text, reference, ratio]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*")
    parser.add_argument("--measure", action="store_true", help="also a bp CPU measurement")
    parser.add_argument("--max-measure-params", type=float, default=200e6)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.models:
        models = args.models
    else:
        import torchvision

        models = ["tv:" + n for n in torchvision.models.list_models(module=torchvision.models)]
        models += TIMM_MODELS
    header = [
        "model",
        "res",
        "bp estimate (peak)",
        "bp CPU measured (peak)",
        "bp-ckpt estimate (peak)",
        "bp GFLOP/img (res)",
        "3x torchvision GFLOPS",
        "ratio",
    ]
    print(markdown_table(header, []))
    for arch in models:
        row = cover(arch, args.measure, args.max_measure_params)
        print(markdown_table(header, [row]).splitlines()[-1], flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
