"""Standard tooling on the CPU, side by side in one run: bf16 / fp32 peak and imgs/s for bp and
ff-pipelined, bp-sac / bp-ckpt imgs/s, and compiled / eager imgs/s with the compile seconds.

    python benchmarks/tooling_side_by_side.py [--arch vgg-d4-w64 --res 32 --batch 32]

Every cell runs in this process with protocol.run_cell (tracker peak, perf_counter timing);
the cells of a comparison run back to back, repeated, so drift on a shared machine hits both.
"""

from __future__ import annotations

import argparse

import torch

from membench.execute.worker import Target, open_target
from membench.schema import Cell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg-d4-w64")
    parser.add_argument("--res", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    run = open_target(Target("cpu")).run  # the sweep's own path: run_cell plus FLOPs and peak

    def cell(method: str, **tooling) -> Cell:
        return Cell(method, args.arch, args.res, args.batch, warmup=2, steps=args.steps, **tooling)

    def best(c: Cell):
        results = [run(c) for _ in range(args.repeats)]
        return max(results, key=lambda r: r.imgs_per_s or 0)

    print(
        f"{args.arch}, {args.res}x{args.res}, batch {args.batch}, {args.steps} steps, "
        f"{torch.get_num_threads()} thread(s), best of {args.repeats}"
    )
    for method in ("bp", "ff-pipelined"):
        fp32, bf16 = best(cell(method)), best(cell(method, precision="bf16"))
        print(
            f"{method:13s} bf16/fp32: peak "
            f"{bf16.peak_allocated_bytes / fp32.peak_allocated_bytes:.3f}"
            f" ({bf16.peak_allocated_bytes:,} / {fp32.peak_allocated_bytes:,} B), imgs/s "
            f"{bf16.imgs_per_s / fp32.imgs_per_s:.3f} ({bf16.imgs_per_s:.0f} / "
            f"{fp32.imgs_per_s:.0f})"
        )
    sac, ckpt, bp = best(cell("bp-sac")), best(cell("bp-ckpt")), best(cell("bp"))
    print(
        f"bp-sac/bp-ckpt imgs/s {sac.imgs_per_s / ckpt.imgs_per_s:.3f}, peak "
        f"{sac.peak_allocated_bytes / ckpt.peak_allocated_bytes:.3f}; bp-sac/bp imgs/s "
        f"{sac.imgs_per_s / bp.imgs_per_s:.3f}, peak "
        f"{sac.peak_allocated_bytes / bp.peak_allocated_bytes:.3f}"
    )
    for method in ("bp", "ff-pipelined"):
        eager = best(cell(method))
        compiled = run(cell(method, compile="default"))  # the first run compiles...
        again = best(cell(method, compile="default"))  # ...later runs hit the cache
        print(
            f"{method:13s} compiled/eager imgs/s {again.imgs_per_s / eager.imgs_per_s:.3f} "
            f"({again.imgs_per_s:.0f} / {eager.imgs_per_s:.0f}); compile_s first run "
            f"{compiled.compile_s:.1f} s, cached {again.compile_s:.1f} s; status {again.status}"
        )


if __name__ == "__main__":
    main()
