"""PyTorch's memory viewer without a network (docs/timeline.md, "Files").

``python -m torch.cuda._memory_viz trace_plot`` writes an HTML page that embeds the snapshot and
imports the viewer, ``MemoryViz.js``, from a CDN; the viewer imports d3 from another, so offline
the page stays blank. ``offline_page`` writes the same page (``torch.cuda._memory_viz``'s own)
with local copies inlined: d3's UMD build (``d3.min.js``, which sets ``globalThis.d3``) as a
plain script, and the viewer's modules (``MemoryViz.js`` and the files beside it that it
imports, such as ``process_alloc_data.js``) as ``data:`` URLs that an import map puts where the
page imports them from. The viewer's code is changed in its import lines only: d3 comes from
``globalThis.d3``, and a module beside it is named by a bare specifier (a module loaded from a
``data:`` URL has no folder to resolve ``./x.js`` against). Nothing is fetched.

``snapshot_peak``: the most bytes live at once in a snapshot's trace, as the viewer stacks them
in its "Active Memory Timeline" (what ``scripts/check_memory_viz.py`` holds the drawing to).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from pathlib import Path

from ..errors import InputError

SIBLING = "membench-memory-viz/"  # the bare specifier prefix of the viewer's own modules
_PAGE_IMPORT = re.compile(r'from\s+"(?P<url>[^"]*MemoryViz\.js)"')
_IMPORT = re.compile(r'import\s*(?P<what>\*\s*as\s+\w+|\{[^}]*\})\s*from\s*"(?P<url>[^"]+)"\s*;?')
_D3_URL = re.compile(r"/d3(?P<module>-[a-z]+)?@(?P<major>\d+)")  # d3, or one of its modules
_D3_BUILD = re.compile(r"d3js\.org v(?P<version>(?P<major>\d+)[.\d]*)")


class ViewerError(InputError):
    """The viewer or d3 given cannot make an offline page (the message says which and why)."""


def _read(path: Path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ViewerError(f"cannot read {what} {path}: {err.strerror or err}") from None


def _local_imports(name: str, source: str, d3_major: str) -> tuple[str, list[str]]:
    """``source`` with its d3 imports reading ``globalThis.d3`` and its imports of a module beside
    it by bare specifier; the names of those modules."""
    siblings: list[str] = []

    def local(match: re.Match) -> str:
        what, url = match["what"], match["url"]
        d3 = _D3_URL.search(url)
        if d3 is not None:
            if d3["module"] is None and d3["major"] != d3_major:
                raise ViewerError(
                    f"{name} imports d3 {d3['major']} ({url}) but the d3 given "
                    f"is d3 {d3_major}: give d3@{d3['major']}'s dist/d3.min.js"
                )
            if what.startswith("*"):
                return f"const {what.split()[-1]} = globalThis.d3;"
            return f"const {what.replace(' as ', ': ')} = globalThis.d3;"
        if url.startswith("./") and "/" not in url[2:]:
            siblings.append(url[2:])
            return f'import {what} from "{SIBLING}{url[2:]}";'
        raise ViewerError(
            f"{name} imports {url}, neither d3 nor a file beside it: this viewer "
            "cannot open offline"
        )

    return _IMPORT.sub(local, source), siblings


def _data_url(source: str) -> str:
    return "data:text/javascript;base64," + base64.b64encode(source.encode()).decode()


def offline_page(snapshot: Mapping, viewer: Path, d3: Path) -> str:
    """The "Active Memory Timeline" page of ``snapshot`` that ``torch.cuda._memory_viz.trace_plot``
    writes, made to open without a network from a local ``viewer`` (PyTorch's
    torch/utils/viz/MemoryViz.js, with the files beside it that it imports) and ``d3`` (the UMD
    build of the d3 major version the viewer imports, e.g. d3@7's dist/d3.min.js)."""
    from torch.cuda import _memory_viz  # torch's own page: the one users open online

    viewer, d3_source = Path(viewer), _read(d3, "d3")
    build = _D3_BUILD.search(d3_source[:500])
    if build is None:
        raise ViewerError(
            f"{d3} is not d3's UMD build (no 'd3js.org vN' header): give a "
            "dist/d3.min.js from the d3 package"
        )
    page = _memory_viz.trace_plot(dict(snapshot))
    found = _PAGE_IMPORT.search(page)
    if found is None or "<head>" not in page:
        raise ViewerError(
            "torch.cuda._memory_viz.trace_plot's page does not import "
            "MemoryViz.js as this membench expects"
        )
    imports, pending = {}, [viewer.name]
    while pending:
        name = pending.pop()
        source, siblings = _local_imports(
            name, _read(viewer.parent / name, "the viewer's module"), build["major"]
        )
        key = found["url"] if name == viewer.name else SIBLING + name
        imports[key] = _data_url(source)
        pending += [s for s in siblings if SIBLING + s not in imports and s not in pending]
    d3_script = d3_source.replace("</script", "<\\/script")  # a string in d3 must not end it
    inlined = (
        f"<script>{d3_script}</script>\n"
        f'<script type="importmap">{json.dumps({"imports": imports})}</script>'
    )
    return page.replace("<head>", f"<head>\n{inlined}", 1)


def _blocks_live(snapshot: Mapping, device: int) -> dict[int, int]:
    """Address -> requested bytes of each block in use when the snapshot was taken."""
    found = {}
    for segment in snapshot.get("segments", []):
        if segment.get("device", device) != device:
            continue
        address = segment["address"]
        for block in segment["blocks"]:
            address = block.get("address", address)
            if block["state"] == "active_allocated":
                found[address] = block.get("requested_size", block["size"])
            address += block["size"]
    return found


def snapshot_peak(snapshot: Mapping, device: int = 0) -> int:
    """The most bytes live at once on ``device``, counted as the viewer's "Active Memory
    Timeline" counts them: live before the trace began are the blocks freed in it without
    being allocated in it and the blocks in use at its end that it did not allocate; then each
    ``alloc`` adds its bytes and each ``free_completed`` takes those of what it frees."""
    traces = snapshot.get("device_traces", [])
    trace = traces[device] if device < len(traces) else []
    allocated: dict[int, int] = {}  # address -> bytes of an allocation the trace made, not freed
    steps = []
    for entry in trace:
        if entry["action"] == "alloc":
            allocated[entry["addr"]] = entry["size"]
            steps.append(entry["size"])
        elif entry["action"] == "free_completed":
            steps.append(-allocated.pop(entry["addr"], entry["size"]))
    before = -sum(steps) + sum(allocated.values())  # freed in the trace, allocated before it
    live = before + sum(
        size for address, size in _blocks_live(snapshot, device).items() if address not in allocated
    )
    peak = live
    for step in steps:
        live += step
        peak = max(peak, live)
    return peak


__all__ = ["SIBLING", "ViewerError", "offline_page", "snapshot_peak"]
