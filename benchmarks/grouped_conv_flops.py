"""bp's FLOPs per image per training step of torchvision models with grouped and depthwise
convolutions, counted with torch's stock ``convolution_backward`` formula and with membench's
corrected one (docs/measurement.md, "FLOPs and MFU"), beside three times the forward.

    python benchmarks/grouped_conv_flops.py [--res 224] [--batch 2] [tv:NAME ...]

A training step is about a forward and a backward of twice its cost (input and weight
gradients), so bp's step should come to about 3x the forward; torch's stock formula counts a
grouped conv's weight gradient once per group too many. On fake tensors: seconds, no GPU.
"""

from __future__ import annotations

import argparse

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from membench.archs import build_arch
from membench.measure import flops
from membench.measure.protocol import count_step_flops
from membench.schema import Cell

MODELS = [
    "tv:mobilenet_v3_large",
    "tv:efficientnet_b0",
    "tv:resnext50_32x4d",
    "tv:regnet_y_400mf",
    "tv:convnext_tiny",
    "tv:resnet50",
]


def forward_flops(arch: str, res: int, batch: int) -> int:
    """FLOPs of one training-mode forward of the model (no backward)."""
    with torch.random.fork_rng(devices=[]), FakeTensorMode():
        model = build_arch(arch, 1000).train()
        images = torch.randn(batch, 3, res, res)
        return flops.step_flops(lambda: model(images))


def step_flops(arch: str, res: int, batch: int, corrected: bool) -> int:
    """bp's FLOPs per step, with membench's formulas or torch's stock registry alone."""
    saved = dict(flops.FLOP_FORMULAS)
    if not corrected:
        flops.FLOP_FORMULAS.clear()
    try:
        return count_step_flops(Cell("bp", arch, res, batch, classes=1000))
    finally:
        flops.FLOP_FORMULAS.update(saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=MODELS)
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    print(f"bp, batch {args.batch}, {args.res}x{args.res}, K=1000; GFLOP per image")
    print(
        f"{'model':26s}{'forward':>9s}{'3x fwd':>9s}{'stock step':>12s}{'ratio':>7s}"
        f"{'corrected':>11s}{'ratio':>7s}"
    )
    for arch in args.models:
        forward = forward_flops(arch, args.res, args.batch) / args.batch / 1e9
        stock = step_flops(arch, args.res, args.batch, corrected=False) / args.batch / 1e9
        fixed = step_flops(arch, args.res, args.batch, corrected=True) / args.batch / 1e9
        print(
            f"{arch:26s}{forward:9.3f}{3 * forward:9.3f}{stock:12.3f}{stock / forward:7.2f}"
            f"{fixed:11.3f}{fixed / forward:7.2f}"
        )


if __name__ == "__main__":
    main()
