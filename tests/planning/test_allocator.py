"""The caching-allocator model against figures derived by hand from PyTorch's rules
(allocator_cases.py), each shown failing under the one-rule mutation it is there to catch; and
the model's bookkeeping held to its invariants over random streams."""

from __future__ import annotations

import random

import pytest

from membench.planning.allocator.conf import parse_alloc_conf
from membench.planning.allocator.model import CachingAllocatorModel, ModelledOutOfMemory
from membench.planning.allocator.replay import (
    Alloc,
    EmptyCache,
    Free,
    ReplayError,
    model_layout,
    replay,
)

from .allocator_cases import CASES, MUTANTS, A, F, M


def run(case):
    model = CachingAllocatorModel(parse_alloc_conf(case.conf), capacity=case.capacity)
    return model, replay(case.events, model=model)


def figures(model, result) -> dict:
    peak = result.at_peak
    return {
        "peak_reserved": result.peak_reserved,
        "peak_allocated": result.peak_allocated,
        "final_reserved": result.final_reserved,
        "oom_at": result.out_of_memory_at,
        "at_peak": (
            peak.reserved,
            peak.allocated,
            peak.fragmentation,
            peak.largest_free_block,
            peak.segments,
        ),
        "at_peak.fragmentation": peak.fragmentation,
        "pools": tuple("small" if h.segment.small else "large" for h in model.segment_heads()),
        "blocks": tuple(
            sorted((b.segment.order, b.offset, b.size) for b in _blocks(model) if b.allocated)
        ),
    }


def _blocks(model):
    for head in model.segment_heads():
        block = head
        while block is not None:
            yield block
            block = block.next


def test_there_are_enough_sequences_and_every_mutant_is_caught_by_one():
    assert len(CASES) >= 25
    assert len({case.name for case in CASES}) == len(CASES)
    assert {case.mutant for case in CASES} == set(MUTANTS)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_sequence_matches_its_hand_derived_figures(case):
    model, result = run(case)
    got = figures(model, result)
    assert {k: got[k] for k in case.expected} == case.expected, case.why
    assert invariant_problems(model) == []


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.name}-vs-{c.mutant}")
def test_sequence_fails_under_its_mutant(case, monkeypatch):
    MUTANTS[case.mutant](monkeypatch)
    got = figures(*run(case))
    assert {k: got[k] for k in case.expected} != case.expected


# --- invariants --------------------------------------------------------------------------------


def _block_problems(segment, block, prev, offset: int) -> list[str]:
    """What is inconsistent about one block of a segment's chain."""
    found = []
    if block.offset != offset or block.prev is not prev or block.size <= 0:
        found.append(f"segment {segment.order}: broken chain at offset {offset}")
    if (
        prev is not None
        and not prev.allocated
        and not block.allocated
        and prev.mapped == block.mapped
    ):
        found.append(f"segment {segment.order}: unmerged free neighbours at {offset}")
    if not block.mapped and (block.offset % segment.page or block.size % segment.page):
        found.append(f"segment {segment.order}: unmapped block off the page grid")
    return found


def invariant_problems(model: CachingAllocatorModel) -> list[str]:
    """What is inconsistent in the model's bookkeeping (empty: nothing)."""
    found = []
    reserved = allocated = runs = 0
    free_mapped = set()
    for head in model.segment_heads():
        segment, block, offset, prev = head.segment, head, 0, None
        while block is not None:
            found += _block_problems(segment, block, prev, offset)
            if block.mapped and (prev is None or not prev.mapped) and segment.expandable:
                runs += 1
            if block.mapped and segment.expandable:
                reserved += block.size
            allocated += block.size if block.allocated else 0
            if block.mapped and not block.allocated:
                free_mapped.add(id(block))
            offset, prev, block = offset + block.size, block, block.next
        if offset != segment.size:
            found.append(f"segment {segment.order}: blocks cover {offset} of {segment.size} B")
        reserved += 0 if segment.expandable else segment.size
    listed = [entry[3] for free in model._free.values() for entry in free]
    if sorted(map(id, listed)) != sorted(free_mapped):
        found.append("free lists differ from the free mapped blocks")
    if any(free != sorted(free) for free in model._free.values()):
        found.append("a free list is out of order")
    if (reserved, allocated, runs) != (model.reserved, model.allocated, model.mapped_runs):
        found.append(
            f"counted reserved/allocated/runs {(reserved, allocated, runs)} != model's "
            f"{(model.reserved, model.allocated, model.mapped_runs)}"
        )
    if len(model_layout(model)) != model.cuda_segments + model.mapped_runs:
        found.append("snapshot segments != cudaMalloc segments + mapped runs")
    return found


SIZES = [1, 700, 4096, 200_000, M, M + 1, 3 * M, 7 * M, 10 * M, 13 * M + 5, 25 * M, 70 * M]


def random_events(seed: int, count: int, streams=(0, 7)):
    rng = random.Random(seed)
    live, events = [], []
    for i in range(count):
        roll = rng.random()
        if roll < 0.01:
            events.append(EmptyCache())
        elif live and roll < 0.45:
            events.append(Free(live.pop(rng.randrange(len(live)))))
        else:
            size = rng.choice(SIZES) + rng.randrange(0, 4096)
            events.append(Alloc(i, size, rng.choice(streams)))
            live.append(i)
    return events


@pytest.mark.parametrize(
    ("conf", "capacity"),
    [
        ("", None),
        ("expandable_segments:True", None),
        ("max_split_size_mb:64,roundup_power2_divisions:[1:2,64:4,>:1]", None),
        ("max_split_size_mb:40", 300 * M),
        ("expandable_segments:True", 300 * M),
    ],
)
def test_bookkeeping_holds_over_random_streams(conf, capacity):
    model = CachingAllocatorModel(parse_alloc_conf(conf), capacity=capacity)
    live, out_of_memory = {}, 0
    for i, event in enumerate(random_events(len(conf), 1500)):
        if isinstance(event, Alloc):
            try:
                live[event.key] = model.malloc(event.size, event.stream)
            except ModelledOutOfMemory:
                out_of_memory += 1
        elif isinstance(event, Free):
            if live.get(event.key) is not None:  # not one an out-of-memory refused
                model.free(live.pop(event.key))
        else:
            model.empty_cache()
        if i % 50 == 0:
            assert invariant_problems(model) == [], (conf, i)
    assert invariant_problems(model) == []
    assert model.peak_reserved >= model.at_peak.reserved >= model.at_peak.allocated
    # under a capacity the stream runs into it, so the release-and-retry paths run too
    assert (out_of_memory > 0) == (capacity is not None)
    assert capacity is None or model.peak_reserved <= capacity


def test_the_invariant_check_catches_unmerged_blocks(monkeypatch):
    monkeypatch.setattr(
        CachingAllocatorModel,
        "merge_neighbours",
        lambda self, block: self.try_merge(block, block.prev),
    )
    model = CachingAllocatorModel()
    replay([A(1, 6 * M), A(2, 6 * M), F(2)], model=model)
    assert any("unmerged" in problem for problem in invariant_problems(model))


def test_the_invariant_check_catches_a_lost_free_block(monkeypatch):
    monkeypatch.setattr(CachingAllocatorModel, "_insert_free", lambda self, block: None)
    model = CachingAllocatorModel()
    replay([A(1, 6 * M)], model=model)
    assert "free lists differ from the free mapped blocks" in invariant_problems(model)


# --- the replay API ----------------------------------------------------------------------------


def test_out_of_memory_stops_the_replay_at_the_failing_allocation():
    result = replay([A(1, 30 * M), A(2, 30 * M), A(3, M)], capacity=50 * M)
    assert (result.out_of_memory_at, result.events, result.peak_reserved) == (1, 2, 30 * M)
    # the same without a capacity: nothing limits it
    assert replay([A(1, 30 * M), A(2, 30 * M)]).out_of_memory_at is None


def test_malloc_raises_modelled_out_of_memory_under_capacity():
    model = CachingAllocatorModel(capacity=10 * M)
    with pytest.raises(ModelledOutOfMemory):
        model.malloc(11 * M)


def test_zero_bytes_take_no_block_and_free_cleanly():
    result = replay([A(1, 0), F(1)])
    assert (result.peak_reserved, result.at_peak) == (0, None)


@pytest.mark.parametrize(
    ("events", "needle"),
    [
        ([F(1)], "not allocated"),
        ([A(1, 10), A(1, 10)], "allocated twice"),
        ([("alloc", 1, 10)], "not an Alloc"),
    ],
)
def test_a_bad_event_stream_is_one_line_replay_error(events, needle):
    with pytest.raises(ReplayError, match=needle) as err:
        replay(events)
    assert "\n" not in str(err.value)


def test_at_peak_is_the_moment_reserved_first_peaks():
    # reserved peaks at event 1 (6 + 30 MiB segments); freeing and re-allocating 30 MiB later
    # reaches the same figure again without taking a new segment: the first moment is kept
    result = replay([A(1, 6 * M), A(2, 30 * M), F(2), A(3, 30 * M)])
    assert result.at_peak.event_index == 1
    assert (result.peak_reserved, result.at_peak.reserved) == (50 * M, 50 * M)


def test_garbage_collection_threshold_alone_changes_nothing():
    # garbage_collect_cached_blocks runs only under a per-process memory fraction below 1
    # (allowed_memory_maximum), which the model refuses; alone the threshold has no effect
    events = random_events(3, 400)
    assert replay(events, parse_alloc_conf("garbage_collection_threshold:0.5")) == replay(
        events, parse_alloc_conf("")
    )
