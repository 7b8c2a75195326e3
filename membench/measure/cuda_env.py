"""A cell's CUDA runtime settings in its process: the caching allocator's configuration
(``PYTORCH_CUDA_ALLOC_CONF``) and cuDNN's autotuner (docs/device-total.md).

PyTorch reads the allocator's configuration from the environment once, when CUDA initialises
(``c10/cuda/CUDAAllocatorConfig``), so a cell's ``alloc_conf`` must be in its process's
environment before anything touches CUDA: a worker process starts with it (``with_alloc_conf``),
``membench run`` and an in-process sweep set it first (``apply_alloc_conf``), and a process whose
allocator already runs under another configuration refuses the cell (``alloc_conf_refusal``).
A cell's setting replaces whatever the environment held: the row records what ran.

This module imports no torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

from ..schema import Cell

# The variables PyTorch reads its allocator configuration from, first one set wins
# (c10/core/AllocatorConfig.cpp, torch 2.14; docs/allocator.md, "Configuration").
ALLOC_CONF_VARIABLES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF", "PYTORCH_ALLOC_CONF")


def _normal(text: str) -> str:
    return "".join(text.split())


def environ_alloc_conf(environ: Mapping[str, str]) -> str:
    """The allocator configuration ``environ`` gives PyTorch, whitespace removed ('' if none)."""
    return _normal(next((environ[k] for k in ALLOC_CONF_VARIABLES if k in environ), ""))


def with_alloc_conf(environ: Mapping[str, str], alloc_conf: str) -> dict[str, str]:
    """A copy of ``environ`` whose allocator configuration is ``alloc_conf`` and nothing else."""
    result = {k: v for k, v in environ.items() if k not in ALLOC_CONF_VARIABLES}
    if alloc_conf:
        result["PYTORCH_CUDA_ALLOC_CONF"] = alloc_conf
    return result


def apply_alloc_conf(alloc_conf: str, environ: MutableMapping[str, str] | None = None) -> None:
    """Make ``alloc_conf`` this process's allocator configuration: effective only before CUDA
    initialises (``alloc_conf_refusal`` says when it is too late)."""
    environ = os.environ if environ is None else environ
    wanted = with_alloc_conf(environ, alloc_conf)
    for key in ALLOC_CONF_VARIABLES:
        if key in environ and key not in wanted:
            del environ[key]
    environ.update({k: v for k, v in wanted.items() if environ.get(k) != v})


def alloc_conf_refusal(alloc_conf: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Why this process cannot measure a cell of ``alloc_conf``: its allocator runs under
    another configuration (None when they agree)."""
    current = environ_alloc_conf(os.environ if environ is None else environ)
    if current == _normal(alloc_conf):
        return None
    return (
        f"this process's CUDA allocator runs under PYTORCH_CUDA_ALLOC_CONF={current!r}, the "
        f"cell asks for {alloc_conf!r}; PyTorch reads it once per process, so measure it in a "
        "worker of its own (--isolation process)"
    )


def cuda_only_refusal(cell: Cell) -> str | None:
    """Why a cell cannot run where there is no CUDA: it sets what only CUDA has."""
    if cell.alloc_conf or cell.cudnn_benchmark != "off":
        return (
            "--alloc-conf and --cudnn-benchmark set CUDA's allocator and cuDNN: a cell that "
            "sets them runs on CUDA (or is estimated for it) only"
        )
    return None


__all__ = [
    "ALLOC_CONF_VARIABLES",
    "alloc_conf_refusal",
    "apply_alloc_conf",
    "cuda_only_refusal",
    "environ_alloc_conf",
    "with_alloc_conf",
]
