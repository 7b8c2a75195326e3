"""Replaying ``torch.cuda.memory._snapshot()`` histories through the caching-allocator model:
on the CPU with snapshots written by hand in torch's format (the segments they end with derived
by hand from the allocator's rules), and on a GPU against the real allocator, byte for byte."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import pytest

from membench.planning.allocator.conf import parse_alloc_conf
from membench.planning.allocator.history import (
    SnapshotError,
    replay_snapshot,
    snapshot_layout,
)
from membench.planning.allocator.replay import layout_differences

from .allocator_cases import MUTANTS

M = 1024 * 1024
S1, S2, S3, S4 = 0x7F5A01400000, 0x7F5A00000000, 0x7F5A02000000, 0x7F5A04000000
E, ES = 0x7E0000000000, 0x7D0000000000  # expandable segments' address ranges


def ev(action, addr, size, stream=0):
    """A trace entry as torch/csrc/cuda/Module.cpp writes one."""
    return {
        "action": action,
        "addr": addr,
        "size": size,
        "stream": stream,
        "time_us": 0,
        "frames": [],
        "compile_context": "N/A",
        "user_metadata": "",
    }


def seg(address, stream, kind, blocks, expandable=False):
    """A snapshot segment; blocks are (size, state, requested_size) from its start."""
    out, at = [], address
    for size, state, requested in blocks:
        out.append(
            {"address": at, "size": size, "requested_size": requested, "state": state, "frames": []}
        )
        at += size
    total = at - address
    return {
        "device": 0,
        "address": address,
        "total_size": total,
        "stream": stream,
        "segment_type": kind,
        "segment_pool_id": (0, 0),
        "is_expandable": expandable,
        "allocated_size": 0,
        "active_size": 0,
        "requested_size": 0,
        "frames": [],
        "blocks": out,
    }


# cudaMalloc segments: the default config
TRACE = [
    ev("segment_alloc", S1, 2 * M),
    ev("alloc", S1, 1000),  # 1000 B -> 1024 B, small pool
    ev("alloc", S1 + 1024, 3000),  # 3072 B split off the rest of the small segment
    ev("segment_alloc", S2, 20 * M),
    ev("alloc", S2, 6 * M),  # 1-10 MiB: a 20 MiB segment
    ev("free_requested", S1, 1000),
    ev("free_completed", S1, 1000),  # [0,1024) free, unmerged
    ev("alloc", S2 + 6 * M, 5 * M),  # fits the free 14 MiB tail; 9 MiB left: split
    ev("segment_alloc", S3, 12 * M),
    ev("alloc", S3, 12 * M),  # 12 > the free 9: own segment
    ev("free_requested", S3, 12 * M),
    ev("free_completed", S3, 12 * M),
    ev("segment_free", S3, 12 * M),  # empty_cache: the wholly free 12 MiB segment goes
    ev("segment_alloc", S4, 2 * M, 7),
    ev("alloc", S4, 512, 7),  # another stream: own segment
    ev("free_requested", S1 + 1024, 3000),
    ev("free_completed", S1 + 1024, 3000),  # merges
    # with the free blocks on both sides: S1 is one free 2 MiB block again
    ev("alloc", S1, 2000),  # 2048 B from its start
    ev("free_requested", S2, 6 * M),  # used on another stream: its free is still pending
    {"action": "snapshot", "addr": 0, "size": 0, "stream": 0},
]
SEGMENTS = [  # derived by hand; inactive blocks keep stale requested sizes, as PyTorch's do
    seg(
        S2,
        0,
        "large",
        [
            (6 * M, "active_pending_free", 6 * M),
            (5 * M, "active_allocated", 5 * M),
            (9 * M, "inactive", 0),
        ],
    ),
    seg(S1, 0, "small", [(2048, "active_allocated", 2000), (2 * M - 2048, "inactive", 3000)]),
    seg(S4, 7, "small", [(512, "active_allocated", 512), (2 * M - 512, "inactive", 0)]),
]

# expandable_segments:True
EXPANDABLE_TRACE = [
    ev("segment_map", E, 20 * M),
    ev("alloc", E, 6 * M),  # one 20 MiB page: [0,6) + 14 free
    ev("segment_map", E + 20 * M, 20 * M),
    ev("alloc", E + 6 * M, 30 * M),  # grows: [6,36)
    ev("segment_map", ES, 2 * M),
    ev("alloc", ES, 4096),  # small pool: 2 MiB pages
    ev("free_requested", E + 6 * M, 30 * M),
    ev("free_completed", E + 6 * M, 30 * M),
    ev("segment_unmap", E + 20 * M, 20 * M),  # empty_cache: the free page [20,40) goes
    ev("alloc", ES + 4096, 100),  # 512 B after the first small block
    ev("segment_map", E + 20 * M, 20 * M),
    ev("alloc", E + 6 * M, 25 * M),  # [6,31) again
]
EXPANDABLE_SEGMENTS = [
    seg(
        ES,
        0,
        "small",
        [
            (4096, "active_allocated", 4096),
            (512, "active_allocated", 100),
            (2 * M - 4608, "inactive", 0),
        ],
        expandable=True,
    ),
    seg(
        E,
        0,
        "large",
        [
            (6 * M, "active_allocated", 6 * M),
            (25 * M, "active_allocated", 25 * M),
            (9 * M, "inactive", 0),
        ],
        expandable=True,
    ),
]


def snapshot(trace, segments):
    return {"segments": segments, "device_traces": [trace]}


@pytest.mark.parametrize(
    ("trace", "segments", "conf"),
    [
        (TRACE, SEGMENTS, ""),
        (EXPANDABLE_TRACE, EXPANDABLE_SEGMENTS, "expandable_segments:True"),
    ],
    ids=["cudaMalloc", "expandable"],
)
def test_replayed_segments_equal_the_snapshots_byte_for_byte(trace, segments, conf):
    replayed = replay_snapshot(snapshot(trace, segments), parse_alloc_conf(conf))
    assert replayed.divergences == ()
    assert layout_differences(replayed.segments, snapshot_layout(snapshot(trace, segments))) == []
    assert replayed.segments == snapshot_layout(snapshot(trace, segments))


def test_replay_reports_the_peak_too():
    result = replay_snapshot(snapshot(TRACE, SEGMENTS)).result
    # 2 (S1) + 20 (S2) + 12 (S3) MiB before empty_cache freed S3; then 2 + 20 + 2 (S4)
    assert (result.peak_reserved, result.final_reserved) == (34 * M, 24 * M)


@pytest.mark.parametrize(
    ("trace", "segments", "conf", "mutant"),
    [
        (TRACE, SEGMENTS, "", "never_split_large"),
        (TRACE, SEGMENTS, "", "merge_prev_only"),
        (TRACE, SEGMENTS, "", "merge_next_only"),
        (EXPANDABLE_TRACE, EXPANDABLE_SEGMENTS, "expandable_segments:True", "no_extend_from_free"),
        (EXPANDABLE_TRACE, EXPANDABLE_SEGMENTS, "expandable_segments:True", "large_page_2mib"),
    ],
)
def test_a_wrong_rule_shows_in_the_comparison(trace, segments, conf, mutant, monkeypatch):
    MUTANTS[mutant](monkeypatch)
    replayed = replay_snapshot(snapshot(trace, segments), parse_alloc_conf(conf))
    assert replayed.divergences or layout_differences(
        replayed.segments, snapshot_layout(snapshot(trace, segments))
    )


def test_a_segment_the_model_did_not_make_is_a_divergence():
    trace = [ev("segment_alloc", S1, 4 * M), ev("alloc", S1, 1000)]  # the model takes 2 MiB
    divergences = replay_snapshot(snapshot(trace, [])).divergences
    assert (
        divergences
        and "model segment_alloc of 2097152 B, trace segment_alloc of 4194304 B" in divergences[0]
    )


def test_a_misplaced_allocation_is_a_divergence():
    trace = TRACE[:4] + [ev("alloc", S2 + 2 * M, 6 * M)]  # the model puts it at offset 0
    assert any(
        "real 0x7f5a00200000, model 0x7f5a00000000" in d
        for d in replay_snapshot(snapshot(trace, [])).divergences
    )


@pytest.mark.parametrize(
    ("trace", "needle"),
    [
        ([ev("free_completed", S1, 10)], "never allocated in the trace"),
        ([ev("frobnicate", S1, 10)], "unknown trace action 'frobnicate'"),
        ([dict(ev("alloc", S1, 10), pool_id=(1, 0))], "private memory pool"),
    ],
)
def test_a_history_the_model_cannot_replay_is_a_one_line_error(trace, needle):
    with pytest.raises(SnapshotError, match=needle) as err:
        replay_snapshot(snapshot(trace, []))
    assert "\n" not in str(err.value)


def test_a_snapshot_without_history_or_with_private_pools_is_refused():
    with pytest.raises(SnapshotError, match="no allocator history"):
        replay_snapshot({"segments": [], "device_traces": []})
    private = dict(SEGMENTS[0], segment_pool_id=(1, 0))
    with pytest.raises(SnapshotError, match="private memory pool"):
        snapshot_layout(snapshot([], [private]))


# --- the real allocator ----------------------------------------------------------------------

RECORD = textwrap.dedent("""
    import pickle, sys
    import torch

    # record before the process's first CUDA allocation: the replay starts from an empty cache
    torch.cuda.memory._record_memory_history(enabled="all", context=None)
    dev = torch.device("cuda")
    sizes = [1, 511, 512, 1000, 4096, 200_000, 1 << 20, (1 << 20) + 1, 3 << 20, 7 << 20,
             10 << 20, (13 << 20) + 5, 25 << 20, 70 << 20]
    kept = []
    for rounds in range(3):
        made = [torch.empty(s, dtype=torch.uint8, device=dev) for s in sizes]
        kept += made[rounds::3]
        del made  # drops the rest: holes between the kept blocks
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        on_side = [torch.empty(s, dtype=torch.uint8, device=dev) for s in (5 << 20, 700, 5 << 20)]
        del on_side[1]  # a free on the side stream's own pool
    torch.cuda.synchronize()

    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(),
                                torch.nn.Linear(1024, 10)).to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(64, 512, device=dev)
    y = torch.randint(0, 10, (64,), device=dev)
    for step in range(2):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    del loss  # its graph is gone; the step's temporaries are freed
    del kept[::2]  # frees half of the kept blocks, merging some with their neighbours
    torch.cuda.empty_cache()
    again = [torch.empty(s, dtype=torch.uint8, device=dev) for s in (9 << 20, 30 << 20, 3000)]
    torch.cuda.synchronize()
    state = {"snapshot": torch.cuda.memory._snapshot(),
             "total_memory": torch.cuda.get_device_properties(dev).total_memory}
    with open(sys.argv[1], "wb") as f:
        pickle.dump(state, f)
""")


@pytest.mark.gpu
@pytest.mark.parametrize(
    "conf", ["", "expandable_segments:True", "max_split_size_mb:40,roundup_power2_divisions:4"]
)
def test_model_segments_equal_the_real_allocators_byte_for_byte(conf, tmp_path):
    script, out = tmp_path / "record.py", tmp_path / "snapshot.pickle"
    script.write_text(RECORD)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF", "PYTORCH_ALLOC_CONF")
    }
    env["PYTORCH_CUDA_ALLOC_CONF"] = conf
    # a fresh process: nothing allocated on the device before recording starts
    subprocess.run([sys.executable, str(script), str(out)], env=env, check=True, timeout=300)
    with open(out, "rb") as f:
        state = pickle.load(f)
    real = snapshot_layout(state["snapshot"])
    replayed = replay_snapshot(
        state["snapshot"], parse_alloc_conf(conf), device_memory=state["total_memory"]
    )
    assert replayed.divergences == ()
    assert layout_differences(replayed.segments, real) == []
    assert replayed.segments == real
    assert replayed.result.final_reserved == sum(s.total_size for s in real)
