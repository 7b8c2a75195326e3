"""``membench snapshot-html SNAPSHOT --viewer MemoryViz.js --d3 d3.min.js``: a memory snapshot's
timeline as one HTML page that opens without a network (``membench.timeline.viewer``)."""

from __future__ import annotations

import pickle
from pathlib import Path

import typer

from .common import fail, reports_input_errors


def _load(path: Path) -> dict:
    try:
        data = pickle.loads(path.read_bytes())
    except OSError as err:
        fail(f"cannot read {path}: {err.strerror or err}")
    except Exception:  # unpickling a file that is no pickle can raise almost anything
        fail(f"{path} is not a pickle")
    if not isinstance(data, dict) or "segments" not in data or "device_traces" not in data:
        fail(f"{path} is not a memory snapshot (no segments and device_traces)")
    return data


@reports_input_errors
def snapshot_html(
    snapshot: Path = typer.Argument(
        ...,
        show_default=False,
        metavar="SNAPSHOT",
        help="A memory snapshot: snapshots/<cell>@<device>.pickle of `sweep --timeline-snapshot`, "
        "or one torch.cuda.memory._dump_snapshot wrote.",
    ),
    viewer: Path = typer.Option(
        ...,
        "--viewer",
        show_default=False,
        help="A local copy of PyTorch's torch/utils/viz/MemoryViz.js, with the files beside it "
        "that it imports (process_alloc_data.js).",
    ),
    d3: Path = typer.Option(
        ...,
        "--d3",
        show_default=False,
        help="d3's UMD build of the major version the viewer imports (d3 7: dist/d3.min.js of "
        "`npm pack d3@7`).",
    ),
    out: Path = typer.Option(None, "--out", help="The page to write (default: SNAPSHOT.html)."),
) -> None:
    """Write a snapshot's Active Memory Timeline (PyTorch's viewer) as one page that opens
    offline, with the viewer and d3 inlined."""
    from ..timeline.viewer import offline_page

    target = snapshot.with_suffix(".html") if out is None else out
    page = offline_page(_load(snapshot), viewer, d3)
    try:
        target.write_text(page, encoding="utf-8")
    except OSError as err:
        fail(f"cannot write {target}: {err.strerror or err}")
    typer.echo(f"membench: {target} (opens offline in a browser)")
