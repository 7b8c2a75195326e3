"""Memory over time (``--timeline``): the recorded step agrees with the measured peak, names its
phases from PyTorch's hooks (on fake tensors and inside checkpoint recomputation too), turns
into a snapshot PyTorch's own viewer reads, and reaches the results folder, the command and
the report. Each check is shown failing on a small mutation."""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import pickle
import re

import pytest
import torch
from conftest import TINY_ARCH, TINY_RES
from helpers import usage_error
from typer.testing import CliRunner

from membench.cli import app
from membench.config import ConfigError, SweepOptions
from membench.execute.sweep import run_sweep
from membench.measure.devices import CpuDevice
from membench.measure.memtrack import TensorMemoryTracker
from membench.measure.protocol import prepare_cell, run_cell
from membench.planning.estimate import EstimateDevice
from membench.runners import SINGLE_DEVICE_METHODS
from membench.schema import CATEGORIES, Cell
from membench.timeline.events import FREE, Phase, find_peak, layer_of, timeline_rows
from membench.timeline.files import TIMELINE_FILE, read_timelines, snapshot_path, write_timeline
from membench.timeline.snapshot import VIEWER_CATEGORY, synthesize_snapshot, timeline_from_cuda
from membench.timeline.viewer import snapshot_peak

cli = CliRunner()


def tiny(method: str, **overrides) -> Cell:
    return Cell(
        **{
            **dict(method=method, arch=TINY_ARCH, res=TINY_RES, batch=4, warmup=1, steps=1),
            **overrides,
        }
    )


def recorded(method: str, device=None, timeline_snapshot: bool = True):
    """A tiny cell's result with its recorded step, and the step's rows (each cell is run once
    per test session: the tests only read them)."""
    return _recorded(
        method, "estimate" if isinstance(device, EstimateDevice) else "cpu", timeline_snapshot
    )


@functools.cache
def _recorded(method: str, kind: str, timeline_snapshot: bool):
    device = EstimateDevice("cuda") if kind == "estimate" else CpuDevice()
    result = run_cell(
        tiny(method), device, count_flops=False, timeline=True, timeline_snapshot=timeline_snapshot
    )
    assert result.status in ("ok", "estimated"), result.error
    return result, timeline_rows(result.timeline)


def agrees(result, rows) -> bool:
    """The recorded step peaks where the tracker pass did, with the same breakdown."""
    peak = find_peak(rows)
    return peak.total_bytes == result.peak_allocated_bytes and peak.live == {
        c: getattr(result.breakdown, c) for c in CATEGORIES
    }


@pytest.mark.parametrize("method", SINGLE_DEVICE_METHODS)
def test_the_recorded_step_peaks_exactly_where_the_tracker_pass_does(method):
    result, rows = recorded(method)
    assert agrees(result, rows)
    assert rows[0]["action"] == "start" and rows[-1]["event"] == len(rows) - 1
    # Mutation: one free left out of the events (here: the first) and the agreement breaks.
    events = result.timeline.events
    first_free = next(i for i, e in enumerate(events) if e[0] == FREE)
    mutated = dataclasses.replace(
        result.timeline, events=events[:first_free] + events[first_free + 1 :]
    )
    assert not agrees(result, timeline_rows(mutated))


@pytest.mark.parametrize("method", ["bp-ckpt", "ff-pipelined"])
def test_an_estimate_records_its_fake_step_and_peaks_where_it_predicts(method):
    result, rows = recorded(method, EstimateDevice("cuda"))
    assert result.timeline.source == "estimate" and agrees(result, rows)
    assert all(row["bytes"] % 512 == 0 for row in rows)  # the allocator's rounding, modelled


def phases_of(rows) -> list[tuple[str, int | None]]:
    """The (phase, layer) runs of a step, in order."""
    runs = []
    for row in rows[1:]:
        key = (row["phase"], row["layer"])
        if not runs or runs[-1] != key:
            runs.append(key)
    return runs


def test_phases_show_bp_forward_then_backward_and_ff_pipelined_layer_by_layer():
    _, bp = recorded("bp")
    runs = [phase for phase, _ in phases_of(bp)]
    assert runs.index("backward") > runs.index("forward") and runs[-1] in ("optimizer", "other")
    backward_layers = [layer for phase, layer in phases_of(bp) if phase == "backward"]
    assert backward_layers[0] == 2 and backward_layers[-1] == 0  # backward runs last layer first
    assert find_peak(bp).phase in ("backward", "other")  # the mountain tops where backward starts

    _, ff = recorded("ff-pipelined")
    layered = [(p, l) for p, l in phases_of(ff) if p in ("backward", "optimizer")]
    assert layered == [
        ("backward", 0),
        ("optimizer", 0),
        ("backward", 1),
        ("optimizer", 1),
        ("backward", 2),
        ("optimizer", 2),
        ("backward", 2),
        ("optimizer", None),
    ]
    modules = {row["module"] for row in ff if row["phase"] == "backward"}
    assert {"backbone.blocks.0.0", "readouts.1"} <= modules  # names from the runner's modules

    # A head's logits are also its model's output: their backward is the head's, not the model's.
    _, deepsup = recorded("bp-deepsup")
    modules = {row["module"] for row in deepsup if row["phase"] == "backward"}
    assert {"heads.0", "heads.2"} <= modules and "DeepSupModel" not in modules


def test_the_phase_check_fails_when_a_hook_is_missing(monkeypatch):
    """Mutation: without the optimizer step hooks ff-pipelined's steps read as 'other'."""
    from membench.timeline.phases import PhaseTracker

    monkeypatch.setattr(PhaseTracker, "_step_started", lambda self, *args: None)
    result = run_cell(tiny("ff-pipelined"), CpuDevice(), count_flops=False, timeline=True)
    assert "optimizer" not in {p for p, _ in phases_of(timeline_rows(result.timeline))}


def test_checkpoint_recomputation_is_its_own_phase_on_real_and_fake_tensors():
    for device in (CpuDevice(), EstimateDevice("cuda")):
        _, rows = recorded("bp-ckpt", device)
        runs = phases_of(rows)
        recomputed = [layer for phase, layer in runs if phase == "recompute"]
        assert recomputed[:1] == [2] and 0 in recomputed, runs
        # after each recomputation the backward of the same layer follows
        assert all(
            runs[i + 1] == ("backward", layer)
            for i, (phase, layer) in enumerate(runs)
            if phase == "recompute" and runs[i + 1][0] != "recompute"
        )


def test_torch_module_tracker_would_change_the_peak_it_observes():
    """Why membench has its own module hooks (membench/timeline/phases.py): ModuleTracker's
    multi-grad hooks keep a checkpointed graph alive past its use."""
    from torch.utils.module_tracker import ModuleTracker

    device = CpuDevice()
    peaks = []
    for observer in (None, ModuleTracker()):
        prepared = prepare_cell(tiny("bp-ckpt"), device)
        tracker = prepared.tracked(TensorMemoryTracker(), 1, during=observer)
        peaks.append(tracker.peak_bytes)
    result, _ = recorded("bp-ckpt")
    assert peaks[0] == result.peak_allocated_bytes < peaks[1]


def test_the_tracker_records_only_when_given_a_recorder():
    events = []
    tracker = TensorMemoryTracker(recorder=lambda *event: events.append(event))
    with tracker:
        x = torch.ones(256)
        y = x * 2
        del x
    assert [(action, nbytes) for action, _, nbytes, _ in events] == [
        ("alloc", 1024),
        ("alloc", 1024),
        ("free", 1024),
    ]
    del y
    quiet = TensorMemoryTracker()
    assert quiet.recorder is None


def test_layers_come_from_module_names():
    assert layer_of("backbone.blocks.3.0") == 3 and layer_of("readouts.12") == 12
    assert layer_of("head") is None and layer_of("classifier.2") is None
    assert layer_of("xblocks.3") is None  # a whole name, not a suffix


def test_a_synthesized_snapshot_is_read_by_pytorchs_own_viewer():
    from torch.cuda import _memory_viz

    result, rows = recorded("ff-pipelined")
    snapshot = pickle.loads(pickle.dumps(synthesize_snapshot(result.timeline)))
    trace = snapshot["device_traces"][0]
    allocs = [e for e in trace if e["action"] == "alloc"]
    assert len(allocs) == sum(1 for r in rows if r["action"] == "alloc" and r["bytes"])
    assert any("ff.py" in f["filename"] for e in allocs for f in e["frames"])  # Python frames
    stats = _memory_viz.segsum(snapshot)  # it asserts that every segment's bytes add up
    assert f"segments: {len(snapshot['segments'])}" in stats
    assert f"{len(trace)} entries" in _memory_viz.trace(snapshot)
    flame = _memory_viz.memory(snapshot, format_flamegraph=lambda lines: lines)
    assert "ff.py" in flame and "active_allocated" in flame
    assert _memory_viz.segments(snapshot, format_flamegraph=lambda lines: lines)
    for html in (_memory_viz.trace_plot(snapshot), _memory_viz.segment_plot(snapshot)):
        embedded = json.loads(re.search(r"const local_files = (\[.*\])", html)[1])[0]["base64"]
        assert pickle.loads(base64.b64decode(embedded)) == snapshot
    # Mutation: a segment whose size does not add up is refused by the same reader.
    snapshot["segments"][0]["total_size"] += 512
    with pytest.raises(AssertionError):
        _memory_viz.segsum(snapshot)


def viewer_categories(trace: list[dict]) -> list[str]:
    """The categories PyTorch's viewer collects from a trace (MemoryViz.js, annotate_snapshot):
    each entry's in order of first appearance, less a ``free_completed`` right after the
    ``free_requested`` of its address (the viewer merges the two into one ``free``)."""
    found, kept = [], []
    for entry in trace:
        previous = kept[-1] if kept else {}
        if (
            entry["action"] == "free_completed"
            and previous.get("action") == "free_requested"
            and previous["addr"] == entry["addr"]
        ):
            kept[-1] = {**previous, "action": "free"}
            continue
        if "category" in entry and entry["category"] not in found:
            found.append(entry["category"])
        kept.append(entry)
    return found


@pytest.mark.parametrize("method", ["bp", "ff-pipelined"])
def test_a_synthesized_snapshot_carries_the_category_pytorchs_viewer_requires(method):
    result, rows = recorded(method)
    snapshot = synthesize_snapshot(result.timeline)
    assert snapshot_peak(snapshot) == find_peak(rows).total_bytes  # as the viewer stacks it
    trace = snapshot["device_traces"][0]
    found = viewer_categories(trace)
    assert VIEWER_CATEGORY == "unknown" and VIEWER_CATEGORY in found  # else the viewer throws
    assert {"activations", "gradients"} <= set(found) <= {*CATEGORIES, VIEWER_CATEGORY}
    assert trace[-1]["action"] == "snapshot" and trace[-1]["size"] == sum(
        segment["allocated_size"] for segment in snapshot["segments"]
    )
    # Mutation: without the closing snapshot entry the trace has categories but no 'unknown'.
    assert viewer_categories(trace[:-1]) and VIEWER_CATEGORY not in viewer_categories(trace[:-1])


def cuda_snapshot() -> dict:
    """A small ``torch.cuda.memory._snapshot()``: a gradient of the last step freed, an
    activation allocated and freed, a gradient allocated and kept, a parameter throughout."""
    trace = [
        {"action": "free_requested", "addr": 0x1000, "size": 512, "time_us": 105},
        {"action": "free_completed", "addr": 0x1000, "size": 512, "time_us": 105},
        {"action": "alloc", "addr": 0x3000, "size": 2048, "time_us": 110},
        {"action": "segment_alloc", "addr": 0x9000, "size": 2**20, "time_us": 111},
        {"action": "alloc", "addr": 0x1000, "size": 512, "time_us": 210},
        {"action": "free_completed", "addr": 0x3000, "size": 2048, "time_us": 220},
    ]

    def block(address, size):
        return {
            "address": address,
            "size": size,
            "requested_size": size,
            "state": "active_allocated",
            "frames": [],
        }

    segments = [
        {
            "device": 0,
            "address": 0x1000,
            "total_size": 1536,
            "stream": 0,
            "blocks": [block(0x1000, 512), block(0x1200, 1024)],
        }
    ]
    return {"segments": segments, "device_traces": [trace]}


def test_a_cuda_history_becomes_a_timeline_by_clock_and_data_pointer():
    phases = [Phase("forward", 0, "backbone.blocks.0.0"), Phase("backward", 0, "")]
    before = {0x1000: "gradients", 0x1200: "parameters"}
    after = {0x1000: "gradients", 0x1200: "parameters"}
    timeline = timeline_from_cuda(cuda_snapshot(), 0, (before, after), [(100, 0), (200, 1)], phases)
    rows = timeline_rows(timeline)
    assert sorted(timeline.baseline) == [(0x1000, 512, "gradients"), (0x1200, 1024, "parameters")]
    assert [(r["action"], r["category"], r["phase"]) for r in rows[1:]] == [
        ("free", "gradients", "forward"),
        ("alloc", "activations", "forward"),
        ("alloc", "gradients", "backward"),
        ("free", "activations", "backward"),
    ]
    assert find_peak(rows).total_bytes == 512 + 1024 + 2048
    assert rows[-1]["gradients_bytes"] == 512 and rows[-1]["total_bytes"] == 1536
    # Mutation: without the marks' clock every entry falls before the first phase.
    late = timeline_from_cuda(cuda_snapshot(), 0, (before, after), [(10**9, 0)], phases)
    assert {r["phase"] for r in timeline_rows(late)[1:]} == {"other"}


def test_timeline_files_keep_the_latest_block_and_match_it_to_its_run(tmp_path):
    result, _ = recorded("bp")
    assert pickle.loads(pickle.dumps(result)).timeline.events == result.timeline.events
    write_timeline(tmp_path, result)
    again = dataclasses.replace(result, started_at="2099-01-01T00:00:00+00:00")
    path = write_timeline(tmp_path, again)
    assert path == snapshot_path(tmp_path, result.cell_id, "cpu") and path.exists()
    assert pickle.loads(path.read_bytes())["device_traces"][0]
    frame = read_timelines(tmp_path)
    assert set(frame["started_at"]) == {again.started_at}
    assert (tmp_path / TIMELINE_FILE).read_text().count(result.started_at) == len(frame)
    assert len(frame) == len(timeline_rows(result.timeline))
    # A block cut short by a crash (a partial last line) is dropped, the complete one kept.
    with open(tmp_path / TIMELINE_FILE, "a") as f:
        f.write(f"{result.cell_id},cpu,x,0,start,0,,1,2")
    assert len(read_timelines(tmp_path)) == len(frame)


def test_a_sweep_writes_timelines_only_when_asked_and_cells_csv_keeps_its_columns(tmp_path):
    plain, timed = tmp_path / "plain", tmp_path / "timed"
    cells = [tiny("bp"), tiny("ff-pipelined")]
    run_sweep(cells[:1], "cpu", plain, isolation="none")
    run_sweep(cells, "cpu", timed, isolation="none", timeline=True)
    assert not (plain / TIMELINE_FILE).exists() and (timed / TIMELINE_FILE).exists()
    assert (plain / "cells.csv").read_text().splitlines()[0] == (
        timed / "cells.csv"
    ).read_text().splitlines()[0]
    assert not (timed / "snapshots").exists()
    assert set(read_timelines(timed)["cell_id"]) == {c.cell_id for c in cells}
    with pytest.raises(ConfigError, match="--timeline-snapshot needs --timeline"):
        SweepOptions(timeline_snapshot=True)

    listing = cli.invoke(app, ["timeline", str(timed)])
    assert listing.exit_code == 0, listing.output
    assert all(c.cell_id in listing.output for c in cells) and "backward of layer" in listing.output
    one = cli.invoke(app, ["timeline", str(timed), "--cell", cells[1].cell_id])
    assert one.exit_code == 0 and "phase by phase" in one.output and "optimizer" in one.output
    assert "no timeline for it" in usage_error(
        cli.invoke(app, ["timeline", str(timed), "--cell", "nope"])
    )
    assert "no timeline.csv" in usage_error(cli.invoke(app, ["timeline", str(plain)]))
    assert "does not exist" in usage_error(cli.invoke(app, ["timeline", str(tmp_path / "none")]))
    assert "needs --timeline" in usage_error(
        cli.invoke(app, ["sweep", "--timeline-snapshot", "--out", str(tmp_path / "x")])
    )

    from membench.report import build_report

    report = build_report([timed], tmp_path / "report")
    figure = "timeline_cpu-amd-epyc" if "EPYC" in report.read_text() else "timeline_"
    assert re.search(
        rf"!\[memory over one step[^]]*\]\(figures/{figure}[^)]*_b4\.png\)", report.read_text()
    )


def test_the_report_figure_shares_its_y_axis_and_marks_each_peak():
    import pandas as pd

    from membench.timeline.figure import timeline_figure

    entries = [(method, pd.DataFrame(recorded(method)[1])) for method in ("bp", "ff-pipelined")]
    figure = timeline_figure(entries, title="t")
    axes = [ax for ax in figure.axes if ax.get_visible()]
    assert len(axes) == 2 and axes[0].get_ylim() == axes[1].get_ylim()
    for ax, (_, rows) in zip(axes, entries):
        (marker,) = [line for line in ax.lines if line.get_gid() == "timeline:peak"]
        peak = find_peak(rows.to_dict("records"))
        assert marker.get_xdata()[0] == peak.progress
        assert marker.get_ydata()[0] == pytest.approx(peak.total_bytes / 2**10)  # KiB here
        shaded = {patch.get_gid() for patch in ax.patches}
        assert {"phase:forward", "phase:backward", "phase:optimizer"} <= shaded


def test_run_prints_where_its_recorded_step_peaks():
    out = cli.invoke(
        app,
        [
            "run",
            "--method",
            "bp",
            "--arch",
            TINY_ARCH,
            "--res",
            str(TINY_RES),
            "--batch",
            "2",
            "--warmup",
            "1",
            "--steps",
            "1",
            "--device",
            "cpu",
            "--timeline",
        ],
    )
    assert out.exit_code == 0, out.output
    assert re.search(r"timeline +peak .* of the step, (backward|other|forward)", out.output)


@pytest.mark.gpu
def test_cuda_records_the_allocators_own_history_and_stops_recording():
    from membench.measure.devices import resolve_device

    device = resolve_device("cuda")
    result = run_cell(
        tiny("bp", batch=8), device, count_flops=False, timeline=True, timeline_snapshot=True
    )
    assert result.status == "ok", result.error
    timeline = result.timeline
    assert timeline.source == "cuda_allocator" and timeline.snapshot["device_traces"]
    rows = timeline_rows(timeline)
    phases = {row["phase"] for row in rows[1:]}
    assert {"forward", "backward", "optimizer"} <= phases
    peak = find_peak(rows)
    assert 0 < peak.total_bytes <= result.peak_allocated_bytes * 1.5
    assert peak.live["parameters"] > 0 and peak.live["optimizer_state"] > 0
    before = len(torch.cuda.memory._snapshot()["device_traces"][device.index])
    torch.ones(1024, device="cuda")
    assert len(torch.cuda.memory._snapshot()["device_traces"][device.index]) == before


def test_a_timeline_of_a_cell_on_several_devices_is_refused_in_one_line():
    from membench.config import build_config
    from membench.settings import ConfigError

    build_config(method="ff-pp", arch="vgg-d4-w16", res=16, batch=8, devices="2")  # fine alone
    with pytest.raises(ConfigError, match="--timeline records one device's step"):
        build_config(method="ff-pp", arch="vgg-d4-w16", res=16, batch=8, devices="2", timeline=True)


def test_a_timeline_csv_cut_short_is_never_shown_as_a_whole_step(tmp_path):
    cells = [tiny("bp"), tiny("ff-pipelined")]
    run_sweep(cells, "cpu", tmp_path, isolation="none", timeline=True)
    path = tmp_path / TIMELINE_FILE
    lines = path.read_text().splitlines(keepends=True)
    first = sum(1 for line in lines if line.startswith(cells[0].cell_id))
    # cut the file in the middle of bp's block: ff-pipelined's block goes with it
    path.write_text("".join(lines[: 1 + first // 2]))
    result = cli.invoke(app, ["timeline", str(tmp_path)])
    assert result.exit_code == 2
    warning, error = result.stderr.strip().splitlines()
    assert "is incomplete" in warning
    assert f"{cells[0].cell_id} on cpu: {first // 2} of {first} events" in warning
    assert f"{cells[1].cell_id} on cpu: none of" in warning
    assert "no whole recorded step" in error
    # Mutation: without the count in cells.csv the cut block reads as a whole (shorter) step.
    import pandas as pd

    from membench.timeline.files import timelines_of

    frame = pd.read_csv(tmp_path / "cells.csv")
    assert not timelines_of(frame, read_timelines(tmp_path))
    assert len(timelines_of(frame.drop(columns="timeline_events"), read_timelines(tmp_path))) == 1
    from membench.report import build_report

    warnings = []
    text = build_report([tmp_path], tmp_path / "report", on_warning=warnings.append).read_text()
    assert "is incomplete" in warnings[0] and "is incomplete" in text
    assert "memory over one step" not in text


def test_timeline_on_finished_cells_says_what_records_them(tmp_path):
    args = ["sweep", "--arch", TINY_ARCH, "--res", str(TINY_RES), "--batch", "4", "--warmup"]
    args += ["1", "--steps", "1", "--device", "cpu", "--isolation", "none", "--out", str(tmp_path)]
    assert cli.invoke(app, args).exit_code == 0
    again = cli.invoke(app, [*args, "--timeline"])
    assert again.exit_code == 0
    assert "1 of 1 cell(s) have no recorded step" in again.stderr and "--redo" in again.stderr
    line = usage_error(cli.invoke(app, ["timeline", str(tmp_path)]))
    assert "--timeline --redo" in line
    redone = cli.invoke(app, [*args, "--timeline", "--redo"])
    assert redone.exit_code == 0 and "no recorded step" not in redone.stderr
    assert cli.invoke(app, ["timeline", str(tmp_path)]).exit_code == 0
