"""Provenance: what machine and software a result came from (``env.json``, ``membench env``).

One machine's environment is ``collect_env``; a sweep on a Ray cluster records every node's
(``cluster_env``), each collected on that node by the worker that would run its cells.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import subprocess
from pathlib import Path

from . import __version__


def git_sha() -> str | None:
    """The commit of the membench source tree, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _driver_version() -> str | None:
    from .measure.devices import nvml

    try:
        with nvml() as pynvml:
            version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:  # no NVML: no driver figure
        return None


def collect_env() -> dict:
    """Everything that goes into env.json. Cheap: no device work beyond property queries."""
    import torch  # here, not at import: a sweep process that runs no cell never loads torch

    from .measure.devices import cpu_model_name, nvml_used_bytes, visible_cpu_count

    info = {
        "membench_version": __version__,
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version()
        if torch.backends.cudnn.is_available()
        else None,
        "cuda_available": torch.cuda.is_available(),
        "gpus": [],
        "driver_version": None,
        "cpu_model": cpu_model_name(),
        "cpu_count": visible_cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        # Which of the machine's GPUs this process sees (Ray gives each cell one of them).
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if torch.cuda.is_available():
        info["driver_version"] = _driver_version()
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            info["gpus"].append(
                {
                    "index": index,
                    "name": props.name,
                    "total_memory_bytes": props.total_memory,
                    "capability": f"{props.major}.{props.minor}",
                    "nvml_used_bytes": nvml_used_bytes(index),
                }
            )
    return info


def cluster_env(nodes: list[dict], **cluster) -> dict:
    """env.json of a sweep whose cells ran on several machines: the first node's environment at
    the top level (where a reader of one machine's env.json looks, e.g. for ``gpus``), the
    cluster's own keys (``executor``, ``ray_version``, ...), and every node's environment, its
    GPU, driver and torch included, under ``nodes``."""
    env = dict(nodes[0]) if nodes else {}
    env.update(cluster)
    env["nodes"] = nodes
    return env
