#!/usr/bin/env python3
"""Record a regression-gate baseline from the grids in membench.gating.

    python scripts/record_baseline.py --cpu   # membench/baselines/cpu: the CPU tracker memory gate
    python scripts/record_baseline.py --gpu   # membench/baselines/gpu/<gpu-model>: the GPU perf
    gate

The folder is replaced as a whole, only once the new measurement has finished, every cell ran ok
and it passes against itself; otherwise the old one is left as it was (exit 1). Commit it.
``--gpu`` writes under ``MEMBENCH_GPU_BASELINES`` when that is set, where the GPU perf tests look.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from membench.execute.sweep import SweepError
from membench.gating import (
    CPU_BASELINE_DIR,
    BaselineError,
    gpu_baselines_root,
    record_cpu_baseline,
    record_gpu_baseline,
)
from membench.measure.devices import CudaDevice, DeviceError, resolve_device
from membench.results import read_cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--cpu", action="store_true", help="record membench/baselines/cpu (tracker memory)"
    )
    which.add_argument(
        "--gpu", action="store_true", help="record membench/baselines/gpu/<gpu model>"
    )
    parser.add_argument("--device", default="cuda", help="CUDA device for --gpu (default cuda)")
    parser.add_argument("--out", type=Path, help="write here instead of the committed location")
    args = parser.parse_args(argv)

    try:
        if args.cpu:
            folder = record_cpu_baseline(args.out or CPU_BASELINE_DIR)
        else:
            try:
                device = resolve_device(args.device)
            except DeviceError as err:
                print(f"record_baseline: error: {err}", file=sys.stderr)
                return 2
            if not isinstance(device, CudaDevice):
                print("record_baseline: error: --gpu needs a CUDA device", file=sys.stderr)
                return 2
            # The folder is named after the GPU the sweep's worker measured on (see gating).
            folder = record_gpu_baseline(device, args.out, root=gpu_baselines_root())
    except SweepError as err:  # no worker, or the folder is locked: nothing was replaced
        print(f"record_baseline: error: {err}", file=sys.stderr)
        return 1
    except BaselineError as err:
        # Checked before the swap: the committed baseline is untouched.
        print(
            f"record_baseline: error: {err}; the existing baseline was left unchanged",
            file=sys.stderr,
        )
        return 1
    print(
        f"record_baseline: wrote {len(read_cells(folder))} cell(s) to {folder}; commit it "
        f"(git add {folder})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
