"""PyTorch's memory viewer without a network (membench.timeline.viewer, ``membench snapshot-html``):
the offline page inlines d3 and the viewer's modules and leaves no import to fetch, a viewer or
d3 it cannot use is one clear error, and a snapshot's peak is counted as the viewer stacks it.
The viewer itself is not in the repository: here a small stand-in with the same imports;
scripts/check_memory_viz.py opens the real one in Chromium. Each check is shown failing on a
small mutation."""

from __future__ import annotations

import base64
import json
import pickle
import re

import pytest
from helpers import usage_error
from typer.testing import CliRunner

from membench.cli import app
from membench.timeline.viewer import SIBLING, ViewerError, offline_page, snapshot_peak

cli = CliRunner()

VIEWER = """'use strict';
import * as d3 from "https://cdn.jsdelivr.net/npm/d3@7/+esm";
import {zoom, zoomIdentity as identity} from "https://cdn.jsdelivr.net/npm/d3-zoom@3/+esm";
import {formatSize} from "./helper.js";
export function add_local_files(files, view) { d3.select('body').text(formatSize(1)); }
"""
HELPER = "export function formatSize(n) { return `${n}B`; }\n"
D3 = "// https://d3js.org v7.9.2 Copyright\n!function(t){t.d3={}}(globalThis); // </script>\n"


def block(address: int, size: int) -> dict:
    return {
        "address": address,
        "size": size,
        "requested_size": size,
        "state": "active_allocated",
        "frames": [],
    }


def small_snapshot() -> dict:
    """Live through the trace: 1000 B; freed in it, allocated before it: 300 B; the trace
    allocates 200 B (kept) and 500 B (freed): the peak is 1000 + 300 + 200 + 500 B."""
    trace = [
        {"action": "alloc", "addr": 0x2000, "size": 200},
        {"action": "alloc", "addr": 0x3000, "size": 500},
        {"action": "free_completed", "addr": 0x9000, "size": 300},
        {"action": "free_completed", "addr": 0x3000, "size": 500},
    ]
    segments = [
        {"device": 0, "address": address, "total_size": size, "blocks": [block(address, size)]}
        for address, size in ((0x1000, 1000), (0x2000, 200))
    ]
    return {"segments": segments, "device_traces": [trace]}


@pytest.fixture
def files(tmp_path):
    (tmp_path / "MemoryViz.js").write_text(VIEWER)
    (tmp_path / "helper.js").write_text(HELPER)
    (tmp_path / "d3.min.js").write_text(D3)
    return tmp_path


def modules(page: str) -> dict[str, str]:
    """The import map's specifiers and the source of the module each names."""
    found = json.loads(re.search(r'<script type="importmap">(.*?)</script>', page)[1])["imports"]
    return {key: base64.b64decode(url.split(",", 1)[1]).decode() for key, url in found.items()}


def fetched(source: str) -> list[str]:
    """What a module's imports would fetch: URLs and files beside it."""
    return re.findall(r'from\s*"((?:https?:|\./)[^"]*)"', source)


def test_the_offline_page_inlines_d3_and_the_viewer_and_fetches_nothing(files):
    snapshot = small_snapshot()
    page = offline_page(snapshot, files / "MemoryViz.js", files / "d3.min.js")
    found = modules(page)
    viewer_url = re.search(r'import \{add_local_files\} from "([^"]+)"', page)[1]
    assert set(found) == {viewer_url, f"{SIBLING}helper.js"} and viewer_url.startswith("https:")
    assert found[f"{SIBLING}helper.js"] == HELPER
    assert "const d3 = globalThis.d3;" in found[viewer_url]
    assert "const {zoom, zoomIdentity: identity} = globalThis.d3;" in found[viewer_url]
    assert f'import {{formatSize}} from "{SIBLING}helper.js";' in found[viewer_url]
    assert [url for source in found.values() for url in fetched(source)] == []
    # d3 runs first, as a plain script, and cannot end its own <script> early.
    assert page.index("d3js.org v7") < page.index("importmap") < page.index('type="module"')
    assert "<\\/script>" in page and page.count("</script>") == 3
    embedded = json.loads(re.search(r"const local_files = (\[.*\])", page)[1])[0]["base64"]
    assert pickle.loads(base64.b64decode(embedded)) == snapshot  # torch's own page around it
    # Mutation: the viewer as written, its imports not made local, would fetch all three.
    assert len(fetched(VIEWER)) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda f: (f / "d3.min.js").write_text(D3.replace("v7.9.2", "v5.16.0")),
            "imports d3 7 .* but the d3 given is d3 5",
        ),
        (lambda f: (f / "d3.min.js").write_text("var d3 = {};"), "is not d3's UMD build"),
        (lambda f: (f / "helper.js").unlink(), "cannot read the viewer's module .*helper.js"),
        (
            lambda f: (f / "MemoryViz.js").write_text(
                VIEWER + 'import {x} from "https://a.b/x.js";'
            ),
            "imports https://a.b/x.js, neither d3 nor a file beside it",
        ),
    ],
)
def test_a_viewer_or_d3_that_cannot_open_offline_is_one_clear_error(files, change, message):
    offline_page(small_snapshot(), files / "MemoryViz.js", files / "d3.min.js")  # fine as given
    change(files)
    with pytest.raises(ViewerError, match=message):
        offline_page(small_snapshot(), files / "MemoryViz.js", files / "d3.min.js")


def test_a_snapshots_peak_counts_what_was_live_before_its_trace():
    snapshot = small_snapshot()
    assert snapshot_peak(snapshot) == 1000 + 300 + 200 + 500
    assert snapshot_peak(snapshot, device=1) == 0
    # Mutation: a block live through the trace left out of the segments lowers the peak.
    snapshot["segments"].pop(0)
    assert snapshot_peak(snapshot) == 300 + 200 + 500


def test_snapshot_html_writes_the_page_and_refuses_what_is_no_snapshot(files):
    snapshot = files / "cell@cpu.pickle"
    snapshot.write_bytes(pickle.dumps(small_snapshot()))
    options = ["--viewer", str(files / "MemoryViz.js"), "--d3", str(files / "d3.min.js")]
    out = cli.invoke(app, ["snapshot-html", str(snapshot), *options])
    assert out.exit_code == 0, out.output
    assert modules((files / "cell@cpu.html").read_text())
    (files / "notes.pickle").write_bytes(pickle.dumps(["not", "a", "snapshot"]))
    assert "is not a memory snapshot" in usage_error(
        cli.invoke(app, ["snapshot-html", str(files / "notes.pickle"), *options])
    )
    assert "is not a pickle" in usage_error(
        cli.invoke(app, ["snapshot-html", str(files / "MemoryViz.js"), *options])
    )
    assert "cannot read d3" in usage_error(
        cli.invoke(
            app,
            [
                "snapshot-html",
                str(snapshot),
                "--viewer",
                str(files / "MemoryViz.js"),
                "--d3",
                str(files / "none.js"),
            ],
        )
    )
