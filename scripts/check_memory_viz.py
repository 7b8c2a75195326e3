"""Open memory snapshots in PyTorch's own viewer (MemoryViz.js) in headless Chromium and check
that its "Active Memory Timeline" draws the peak the results say.

    .venv/bin/python scripts/check_memory_viz.py RESULTS/snapshots/CELL@cpu.pickle [...] \\
        --viewer PATH/MemoryViz.js --d3 PATH/d3.min.js [--expect-peak BYTES]

Not part of the test run. It needs Debian's Chromium (``apt-get install chromium``), Playwright
for Python (``pip install playwright``; no browser is downloaded: Chromium is started from
``--chromium``), and the viewer, which is not in this repository: ``MemoryViz.js`` and the files
beside it that it imports (``process_alloc_data.js``) from PyTorch's ``torch/utils/viz/``, and
the UMD build of the d3 major version it imports (d3 7: ``npm pack d3@7``, then
``package/dist/d3.min.js``).

The page is the one ``membench snapshot-html`` writes (``membench.timeline.viewer.offline_page``):
``torch.cuda._memory_viz.trace_plot``'s own page with the viewer and d3 inlined. The browser
fetches nothing; a request to the network is a failure.

How the drawn peak is read. The viewer draws the timeline as stacked ``<polygon>``s in one SVG
(viewBox ``0 0 1024 576``), one per allocation (and one band of the smallest), each outlining
``[offset, offset + size]`` at every time step, y growing downward; d3 writes the coordinates
at full double precision. The top of the stack at its highest is the smallest y of any point,
its bottom the largest. Pixels become bytes through the viewer's own text: hovering an
allocation's polygon makes the viewer print its size ("Size: 1.5KiB (1536 bytes) allocation"),
and that size over the polygon's drawn height is the scale. The drawn peak is (bottom - top)
times bytes per pixel, rounded to a byte; the three tallest allocations are hovered and must
agree on the scale. The axis labels are not used: they are rounded (to 0.1 KiB or MiB).
Also checked: the page raised no error, every polygon has a colour (an allocation whose
category is missing from the viewer's list gets none), and the legend lists the categories the
snapshot's entries carry.

The expected peak: ``--expect-peak`` (one snapshot only); else, for a snapshot in a results
folder's ``snapshots/``, the ``peak_allocated_bytes`` of its cell's latest row in ``cells.csv``;
else the snapshot's own most live bytes (``membench.timeline.viewer.snapshot_peak``).

One line per snapshot, PASS or FAIL and why; exit 1 if any failed, 2 on bad input.
"""

from __future__ import annotations

import argparse
import pickle
import re
import sys
import tempfile
import time
from pathlib import Path

from membench.errors import InputError
from membench.results import read_cells
from membench.timeline.files import snapshot_path
from membench.timeline.viewer import offline_page, snapshot_peak

# Headless Chromium on a machine without a network (Playwright adds --headless, --no-sandbox
# and a fresh --user-data-dir): no background connections, no component or sync updates.
CHROMIUM_FLAGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PLOT = 'svg[viewBox="0 0 1024 576"]'  # the Active Memory Timeline's plot (MemoryViz.js)
SIZE_TEXT = re.compile(r"Size: [^,(]*\((?P<bytes>\d+) bytes\) allocation")
REFERENCES = 3  # allocations hovered to turn pixels into bytes
LOAD_SECONDS = 60

DRAWING = """plot => {
  const svg = document.querySelector(plot);
  if (svg === null) return null;
  const polygons = [...svg.querySelectorAll('polygon')].map(p => ({
    points: p.getAttribute('points').trim().split(/\\s+/).map(xy => xy.split(',').map(Number)),
    fill: p.getAttribute('fill')}));
  const legend = [...svg.querySelectorAll('text[font-family="helvetica"]')]
    .map(t => t.textContent);
  return {polygons, legend};
}"""
CONTEXT = "() => [...document.querySelectorAll('pre')].map(p => p.textContent).join('\\n')"


class Failed(Exception):
    """The viewer did not draw what it should; the message says what it did."""


def expected_peak(path: Path, snapshot: dict) -> tuple[int, str]:
    """What the drawing should peak at, and where that figure comes from (see the docstring)."""
    cells = path.parent.parent / "cells.csv"
    if path.parent.name == "snapshots" and cells.exists():
        rows = read_cells(cells).drop_duplicates(["cell_id", "device"], keep="last")
        for _, row in rows.iterrows():
            name = snapshot_path(path.parent.parent, row["cell_id"], row["device"]).name
            if name == path.name and row["peak_allocated_bytes"] > 0:  # NaN: no peak measured
                return int(row["peak_allocated_bytes"]), "cells.csv peak_allocated_bytes"
    return snapshot_peak(snapshot), "the snapshot's most live bytes"


def _heights(points: list[list[float]]) -> list[float]:
    """A polygon's drawn height at each time step: its outline is the bottom edge left to
    right, then the top edge right to left."""
    half = len(points) // 2
    return [bottom[1] - top[1] for bottom, top in zip(points[:half], reversed(points[half:]))]


def _bytes_per_pixel(page, polygons: list[dict]) -> float:
    """The scale, from the sizes the viewer prints for its tallest allocations."""
    constant = []
    for index, polygon in enumerate(polygons):
        heights = _heights(polygon["points"])
        if heights and min(heights) > 0 and max(heights) - min(heights) <= 1e-9 * max(heights):
            constant.append((heights[0], index))
    scales = []
    for height, index in sorted(constant, reverse=True):
        page.locator(f"{PLOT} polygon").nth(index).dispatch_event("mouseover")
        found = SIZE_TEXT.search(page.evaluate(CONTEXT))
        if found is not None:  # not the band of small allocations
            scales.append(int(found["bytes"]) / height)
        if len(scales) == REFERENCES:
            break
    if not scales:
        raise Failed("no drawn allocation printed its size on hover")
    if max(scales) - min(scales) > 1e-9 * max(scales):
        raise Failed(f"the drawn allocations disagree on bytes per pixel: {scales}")
    return scales[0]


def drawn_peak(page, html: Path, errors: list[str], requests: list[str]) -> tuple[int, str]:
    """Load the page, wait for the plot, and read its peak (see the docstring); a summary."""
    page.goto(html.as_uri())
    deadline = time.monotonic() + LOAD_SECONDS
    while page.locator(f"{PLOT} polygon").count() == 0 and not errors:
        if time.monotonic() > deadline:
            raise Failed(f"nothing drawn in {LOAD_SECONDS} s")
        page.wait_for_timeout(100)
    if errors:
        raise Failed(f"the viewer threw: {errors[0]}")
    if requests:
        raise Failed(f"the page asked the network for {requests[0]}")
    drawing = page.evaluate(DRAWING, PLOT)
    polygons = drawing["polygons"]
    uncoloured = sum(1 for polygon in polygons if not polygon["fill"])
    if uncoloured:
        raise Failed(f"{uncoloured} of {len(polygons)} polygons have no colour")
    ys = [y for polygon in polygons for _, y in polygon["points"]]
    raw = (max(ys) - min(ys)) * _bytes_per_pixel(page, polygons)
    return round(raw), (
        f"{len(polygons)} polygons, legend: {', '.join(drawing['legend'])}"
        if drawing["legend"]
        else f"{len(polygons)} polygons, no legend"
    )


def check(
    page,
    path: Path,
    viewer: Path,
    d3: Path,
    expect: int | None,
    scratch: Path,
    errors: list[str],
    requests: list[str],
) -> bool:
    """One snapshot: print its PASS or FAIL line; True when it passed."""
    try:
        snapshot = pickle.loads(path.read_bytes())
    except Exception:  # unpickling a file that is no pickle can raise almost anything
        raise InputError(f"{path} is not a pickle") from None
    expected, source = (
        (expect, "--expect-peak") if expect is not None else expected_peak(path, snapshot)
    )
    html = scratch / f"{path.stem}.html"
    html.write_text(offline_page(snapshot, viewer, d3), encoding="utf-8")
    errors.clear()
    requests.clear()
    try:
        peak, summary = drawn_peak(page, html, errors, requests)
        carried = {e["category"] for t in snapshot["device_traces"] for e in t if "category" in e}
        legend = set(summary.partition("legend: ")[2].split(", ")) - {""}
        if carried and legend != carried | {"unknown"}:
            raise Failed(
                f"legend {sorted(legend)} is not the snapshot's categories "
                f"{sorted(carried)} and unknown"
            )
        if peak != expected:
            raise Failed(f"drawn peak {peak:,} B, expected {expected:,} B ({source}); {summary}")
    except Failed as err:
        print(f"FAIL {path.name}: {err}")
        return False
    print(
        f"PASS {path.name}: drawn peak {peak:,} B = expected {expected:,} B ({source}); {summary}"
    )
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("snapshots", nargs="+", type=Path, metavar="SNAPSHOT.pickle")
    parser.add_argument("--viewer", type=Path, required=True, help="PyTorch's MemoryViz.js")
    parser.add_argument("--d3", type=Path, required=True, help="d3's dist/d3.min.js")
    parser.add_argument("--expect-peak", type=int, metavar="BYTES")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
    if args.expect_peak is not None and len(args.snapshots) > 1:
        parser.error("--expect-peak takes one snapshot")
    missing = [str(p) for p in args.snapshots if not p.is_file()]
    if missing or not Path(args.chromium).exists():
        parser.error(f"not found: {', '.join(missing or [args.chromium])}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        parser.error("needs Playwright for Python: pip install playwright")
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as scratch:
        browser = playwright.chromium.launch(
            executable_path=args.chromium, headless=True, args=CHROMIUM_FLAGS
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda err: errors.append(str(err).splitlines()[0]))
        page.on(
            "request",
            lambda request: (
                request.url.startswith(("file:", "data:")) or requests.append(request.url)
            ),
        )
        page.route(re.compile(r"^https?://"), lambda route: route.abort())
        try:
            passed = [
                check(
                    page,
                    path,
                    args.viewer,
                    args.d3,
                    args.expect_peak,
                    Path(scratch),
                    errors,
                    requests,
                )
                for path in args.snapshots
            ]
        except InputError as err:
            print(f"check_memory_viz: error: {err}", file=sys.stderr)
            return 2
        finally:
            browser.close()
    return 0 if all(passed) else 1


if __name__ == "__main__":
    sys.exit(main())
