"""Allocation sequences whose figures are derived by hand from the rules of PyTorch 2.14's
c10/cuda/CUDACachingAllocator.cpp (docs/allocator.md), each with the one-rule mutation of the
model that the sequence catches.

M is MiB. "seg" is a cudaMalloc segment; "[a,b)" a block's range in MiB inside its segment.
Default rules unless the case's config says otherwise: sizes round up to 512 B; requests up to
1 MiB use the small pool and 2 MiB segments; larger ones under 10 MiB a 20 MiB segment; 10 MiB
and more a segment of their size rounded up to 2 MiB; a large-pool block splits only if more
than 1 MiB would remain, a small-pool one if at least 512 B would.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from membench.planning.allocator import conf as alloc_conf
from membench.planning.allocator.conf import AllocatorConfig
from membench.planning.allocator.model import CachingAllocatorModel
from membench.planning.allocator.replay import Alloc, EmptyCache, Free

M = 1024 * 1024
K = 1024
Model = CachingAllocatorModel
_ORIGINAL_DIVISIONS_FOR = AllocatorConfig.divisions_for
_ORIGINAL_BEST_FIT = Model.best_fit


@dataclass(frozen=True)
class Case:
    name: str
    events: tuple
    expected: dict  # figure -> value (see test_allocator.figures)
    mutant: str  # a key of MUTANTS whose rule change this sequence must catch
    conf: str = ""
    capacity: int | None = None
    why: str = field(default="", compare=False)


def A(key, size, stream=0):
    return Alloc(key, size, stream)


def F(key):
    return Free(key)


CASES = [
    Case(
        "small-request-gets-a-2MiB-segment",
        (A(1, 1000),),
        {"peak_reserved": 2 * M},
        "small_buffer_1mib",
        why="1000 B rounds to 1024 B <= 1 MiB: small pool; no cached block: a kSmallBuffer "
        "segment, 2 MiB",
    ),
    Case(
        "sizes-round-to-512B",
        (A(1, 1), A(2, 1), A(3, 1), A(4, 1)),
        {"peak_allocated": 2048, "peak_reserved": 2 * M},
        "min_block_1024",
        why="each 1 B request takes a 512 B block (kMinBlockSize), split off the same 2 MiB "
        "segment: allocated 4 x 512 = 2048 B",
    ),
    Case(
        "small-pool-packs-2MiB-segments",
        (A(1, 700 * K), A(2, 700 * K), A(3, 700 * K)),
        {"peak_reserved": 4 * M},
        "small_buffer_3mib",
        why="two 700 KiB blocks fit one 2 MiB segment (648 KiB left), the third needs a second "
        "segment: 4 MiB",
    ),
    Case(
        "1MiB-exactly-is-small",
        (A(1, M),),
        {"peak_reserved": 2 * M, "pools": ("small",)},
        "pool_boundary_exclusive",
        why="1 MiB <= kSmallSize: small pool, a 2 MiB segment (get_allocation_size gives "
        "2 MiB to any size up to 1 MiB, so only the pool tells)",
    ),
    Case(
        "just-over-1MiB-gets-a-20MiB-segment",
        (A(1, M + 1),),
        {"peak_reserved": 20 * M, "peak_allocated": M + 512},
        "no_large_segment_for_mid_sizes",
        why="1 MiB + 1 B rounds to 1 MiB + 512 B: large pool; under kMinLargeAlloc (10 MiB) "
        "the segment is large_segment_size, 20 MiB, split to a 1 MiB + 512 B block",
    ),
    Case(
        "mid-size-requests-share-a-20MiB-segment",
        (A(1, 6 * M), A(2, 6 * M), A(3, 6 * M)),
        {"peak_reserved": 20 * M},
        "never_split_large",
        why="seg 20 M: [0,6) + free 14 M (14 > 1 M: split); then [6,12) + free 8; then [12,18) "
        "+ free 2 (2 > 1: split): one segment",
    ),
    Case(
        "10MiB-is-not-mid-size",
        (A(1, 10 * M),),
        {"peak_reserved": 10 * M},
        "mid_size_bound_inclusive",
        why="10 MiB is not < kMinLargeAlloc: its own segment, rounded to 2 MiB: 10 MiB",
    ),
    Case(
        "large-requests-round-to-2MiB",
        (A(1, 13 * M),),
        {"peak_reserved": 14 * M},
        "round_large_4mib",
        why="13 MiB >= 10 MiB: segment rounded up to kRoundLarge (2 MiB): 14 MiB",
    ),
    Case(
        "large-split-needs-over-1MiB-left",
        (A(1, 19 * M),),
        {"peak_allocated": 20 * M, "at_peak.fragmentation": 0},
        "large_split_at_1mib_inclusive",
        why="19 MiB -> seg 20 MiB; the 1 MiB remainder is not > kSmallSize, so no split: the "
        "block (and memory_allocated) is 20 MiB",
    ),
    Case(
        "small-split-needs-512B-left",
        (A(1, M), A(2, M - 512), A(3, 512)),
        {"peak_reserved": 2 * M},
        "small_split_exclusive",
        why="seg 2 M: 1 MiB, then 1 MiB - 512 leaves exactly 512 B: >= kMinBlockSize splits, "
        "so the 512 B request fits the same segment",
    ),
    Case(
        "freed-block-merges-with-free-previous",
        (A(1, 6 * M), A(2, 6 * M), A(3, 6 * M), F(1), F(2), A(4, 11 * M)),
        {"peak_reserved": 20 * M},
        "merge_next_only",
        why="freeing [6,12) merges it with the free [0,6) before it: [0,12) serves 11 MiB (1 MiB "
        "left, not split); unmerged, 6 + 6 + 2 fit nothing and a 12 MiB segment is added",
    ),
    Case(
        "freed-block-merges-with-free-next",
        (A(1, 6 * M), A(2, 6 * M), F(2), F(1), A(3, 20 * M)),
        {"peak_reserved": 20 * M},
        "merge_prev_only",
        why="free [6,12) merges with the free [12,20) after it, then [0,6) with [6,20): the "
        "whole 20 MiB serves a 20 MiB request; unmerged, a second 20 MiB segment",
    ),
    Case(
        "small-pool-merges-too",
        (A(1, 512 * K), A(2, 512 * K), A(3, M), F(1), F(2), A(4, M)),
        {"peak_reserved": 2 * M},
        "no_merge",
        why="seg 2 M full; the two freed 512 KiB blocks merge into 1 MiB at offset 0, which "
        "serves the 1 MiB request",
    ),
    Case(
        "best-fit-takes-the-smallest-block",
        (A(1, 12 * M), A(2, 14 * M), F(1), F(2), A(3, 11 * M), A(4, 13 * M)),
        {"peak_reserved": 26 * M},
        "worst_fit",
        why="cached 12 and 14 MiB: 11 MiB takes the 12 (1 left: no split), 13 MiB the 14; the "
        "largest-first choice would split 14 for 11 and need a new 14 MiB segment",
    ),
    Case(
        "equal-blocks-older-segment-first",
        (A(1, 12 * M), A(2, 12 * M), F(1), F(2), A(3, 12 * M)),
        {"blocks": ((0, 0, 12 * M),), "peak_reserved": 24 * M},
        "newest_segment_first",
        why="two cached 12 MiB segments: the comparator orders equal sizes by "
        "registration_counter, so the first-made segment (0) serves the request",
    ),
    Case(
        "oversize-block-refuses-small-request",
        (A(1, 40 * M), F(1), A(2, 12 * M)),
        {"peak_reserved": 52 * M},
        "oversize_serves_small",
        conf="max_split_size_mb:32",
        why="the cached 40 MiB block is >= max_split_size (32 MiB) and the request < 32 MiB: "
        "refused, a 12 MiB segment is added: 52 MiB",
    ),
    Case(
        "oversize-block-too-much-larger",
        (A(1, 60 * M), F(1), A(2, 34 * M)),
        {"peak_reserved": 94 * M},
        "rounding_slack_30mib",
        conf="max_split_size_mb:32",
        why="34 MiB >= max_split_size may take an oversize block under 34 + 20 "
        "(max_non_split_rounding) = 54 MiB; 60 is not: new 34 MiB segment, 94 MiB",
    ),
    Case(
        "oversize-rounding-limit-is-exclusive",
        (A(1, 54 * M), F(1), A(2, 34 * M)),
        {"peak_reserved": 88 * M},
        "rounding_slack_inclusive",
        conf="max_split_size_mb:32",
        why="a 54 MiB block is not < 34 + 20 MiB: refused, 54 + 34 = 88 MiB",
    ),
    Case(
        "oversize-block-is-not-split",
        (A(1, 40 * M), F(1), A(2, 36 * M), A(3, 4 * M)),
        {"peak_reserved": 60 * M, "peak_allocated": 44 * M},
        "oversize_split",
        conf="max_split_size_mb:32",
        why="36 MiB takes the whole cached 40 MiB block (< 56) unsplit; 4 MiB then needs a "
        "20 MiB segment: reserved 60, allocated 40 + 4",
    ),
    Case(
        "power2-rounding-skips-sizes-up-to-512x-divisions",
        (A(1, 1200),),
        {"peak_allocated": 1536},
        "no_small_size_guard_in_roundup",
        conf="roundup_power2_divisions:4",
        why="round_size uses the power-of-two divisions only above 512 x 4 = 2048 B: 1200 B "
        "rounds to 1536 B (PyTorch's docs say 1280 B)",
    ),
    Case(
        "power2-rounding-avoids-the-20MiB-segment",
        (A(1, 9 * M + 1),),
        {"peak_reserved": 10 * M},
        "ignore_roundup",
        conf="roundup_power2_divisions:4",
        why="9 MiB + 1 lies in [8, 16) MiB; 4 divisions are 2 MiB steps: 10 MiB, which is not "
        "< 10 MiB, so its own 10 MiB segment (without rounding: a 20 MiB one)",
    ),
    Case(
        "interval-list-boundary-starts-its-interval",
        (A(1, 300 * M + 1),),
        {"peak_reserved": 302 * M},
        "roundup_boundary_as_upper_edge",
        conf="roundup_power2_divisions:[256:1,512:2,1024:4,>:8]",
        why="'256:1' sets the [256, 512) MiB interval (log2 of 256 MiB): 1 division, plain "
        "rounding, segment 302 MiB (the docs' reading, 2 divisions, would give 384)",
    ),
    Case(
        "interval-list-gt-fills-above-the-last",
        (A(1, 1536 * M + 1),),
        {"peak_reserved": 1792 * M},
        "gt_fills_from_last",
        conf="roundup_power2_divisions:[256:1,512:2,1024:4,>:8]",
        why="[1024, 2048) MiB keeps its 4 divisions ('>' starts above it): 256 MiB steps, "
        "1536 MiB + 1 -> 1792 MiB",
    ),
    Case(
        "sizes-under-1MiB-use-the-first-interval",
        (A(1, 9000),),
        {"peak_allocated": 10240},
        "small_not_clamped",
        conf="roundup_power2_divisions:[2:4,>:1]",
        why="'2:4' fills the intervals up to [2, 4) MiB, and sizes under 1 MiB use the first: "
        "9000 B in [8192, 16384) with 4 divisions of 2048 -> 10240 B",
    ),
    Case(
        "expandable-grows-from-the-free-tail",
        (A(1, 6 * M), A(2, 30 * M)),
        {"peak_reserved": 40 * M},
        "no_extend_from_free",
        conf="expandable_segments:True",
        why="one 20 MiB page: [0,6) + free 14; 30 MiB extends the free [6,20) by one more "
        "page: [6,36), 40 MiB mapped (cudaMalloc segments would need 20 + 30)",
    ),
    Case(
        "expandable-small-pool-maps-2MiB-pages",
        (A(1, 512),),
        {"peak_reserved": 2 * M},
        "small_page_large",
        conf="expandable_segments:True",
        why="the small pool's expandable segment maps kSmallBuffer (2 MiB) pages",
    ),
    Case(
        "expandable-large-pool-maps-20MiB-pages",
        (A(1, 25 * M), A(2, 25 * M)),
        {"peak_reserved": 60 * M},
        "large_page_2mib",
        conf="expandable_segments:True",
        why="25 MiB maps 2 pages of 20: [0,25) + free 15; the next 25 extends [25,40) by one "
        "page: 60 MiB (more than cudaMalloc's 26 + 26)",
    ),
    Case(
        "expandable-segment-per-stream",
        (A(1, M + 1, 1), A(2, M + 1, 2)),
        {"peak_reserved": 40 * M},
        "shared_streams",
        conf="expandable_segments:True",
        why="each stream grows its own segment: a 20 MiB page each",
    ),
    Case(
        "freed-block-serves-its-stream-only",
        (A(1, 6 * M, 0), F(1), A(2, 6 * M, 1)),
        {"peak_reserved": 40 * M},
        "shared_streams",
        why="stream 0's cached 20 MiB segment cannot serve stream 1: a second 20 MiB segment",
    ),
    Case(
        "empty-cache-frees-whole-free-segments",
        (A(1, 6 * M), A(2, 16 * M), F(2), EmptyCache()),
        {"peak_reserved": 36 * M, "final_reserved": 20 * M},
        "empty_cache_noop",
        why="16 MiB does not fit the free 14 MiB tail: its own 16 MiB segment; freed and "
        "unsplit, empty_cache releases it; the split 20 MiB segment stays",
    ),
    Case(
        "expandable-empty-cache-unmaps-free-pages",
        (A(1, 6 * M), A(2, 30 * M), F(2), EmptyCache()),
        {"peak_reserved": 40 * M, "final_reserved": 20 * M},
        "no_unmap",
        conf="expandable_segments:True",
        why="freeing [6,36) leaves [6,40) free; the page [20,40) is wholly free and is "
        "unmapped, [6,20) shares a page with [0,6) and stays",
    ),
    Case(
        "oom-retry-frees-cached-segments",
        (A(1, 12 * M), A(2, 20 * M), F(1), A(3, 14 * M)),
        {"peak_reserved": 34 * M, "oom_at": None},
        "no_release_on_oom",
        capacity=40 * M,
        why="32 + 14 > 40: release_cached_blocks frees the cached 12 MiB segment, then "
        "20 + 14 = 34 fits",
    ),
    Case(
        "oom-retry-frees-one-oversize-block-first",
        (A(1, 40 * M), A(2, 50 * M), F(1), F(2), A(3, 20 * M)),
        {"peak_reserved": 90 * M, "final_reserved": 70 * M},
        "no_release_available",
        conf="max_split_size_mb:32",
        capacity=100 * M,
        why="20 MiB may not use the oversize 40/50 blocks; 90 + 20 > 100: "
        "release_available_cached_blocks frees the smallest oversize block >= 32 MiB "
        "(40), and 50 + 20 = 70 fits; releasing everything would leave 20",
    ),
    Case(
        "fragmentation-at-peak",
        (A(1, 6 * M), A(2, 12 * M), A(3, 30 * M)),
        {"at_peak": (50 * M, 48 * M, 2 * M, 2 * M, 2)},
        "large_split_at_2mib",
        why="seg 20: [0,6), 12 MiB into the free 14 leaving 2 (> 1: split); 30 MiB: seg 30. "
        "At the peak: reserved 50, allocated 48, 2 MiB free (the largest block), "
        "2 segments",
    ),
    Case(
        "small-requests-never-use-the-large-pool",
        (A(1, 6 * M), F(1), A(2, 4096)),
        {"peak_reserved": 22 * M},
        "one_pool",
        why="the cached 20 MiB segment is in the large pool; 4 KiB needs a 2 MiB small one",
    ),
    Case(
        "expandable-splits-at-512B",
        (A(1, 6 * M), A(2, 13 * M + 512 * K)),
        {"peak_allocated": 19 * M + 512 * K, "peak_reserved": 20 * M},
        "expandable_split_like_large",
        conf="expandable_segments:True",
        why="with expandable segments a block splits when >= 512 B remain: 13.5 MiB in the "
        "free 14 MiB leaves 512 KiB, split off (the large pool's rule would not split)",
    ),
    Case(
        "expandable-best-fit-avoids-the-growing-tail",
        (A(1, 6 * M), A(2, 10 * M), F(1), A(3, 4 * M)),
        {"blocks": ((0, 0, 4 * M), (0, 6 * M, 10 * M))},
        "plain_best_fit",
        conf="expandable_segments:True",
        why="cached: [0,6) and [16,20) (followed by unmapped space). get_free_block counts the "
        "growable space, so the 6 MiB block is 'smaller' and serves 4 MiB at offset 0",
    ),
]


# --- mutants: one rule each --------------------------------------------------------------------


def _set(name, value):
    return lambda mp: mp.setattr(Model, name, value)


def _never_split_large(self, block, size):
    return block.segment.small and block.size - size >= self.MIN_BLOCK_SIZE


def _should_split_large(threshold, inclusive=False):
    original = Model.should_split  # read now, before a test swaps it

    def rule(self, block, size):
        if block.segment.small or self.config.expandable_segments:
            return original(self, block, size)
        remaining = block.size - size
        return remaining >= threshold if inclusive else remaining > threshold

    return rule


def _small_split_exclusive(self, block, size):
    remaining = block.size - size
    if block.segment.small:
        return remaining > self.MIN_BLOCK_SIZE
    return remaining > self.SMALL_SIZE


def _allocation_size_no_mid(self, size):
    if size <= self.SMALL_SIZE:
        return self.SMALL_BUFFER
    return -(-size // self.ROUND_LARGE) * self.ROUND_LARGE


def _allocation_size_inclusive(self, size):
    if size <= self.SMALL_SIZE:
        return self.SMALL_BUFFER
    if size <= self.MIN_LARGE_ALLOC:
        return self.config.large_segment_size
    return -(-size // self.ROUND_LARGE) * self.ROUND_LARGE


def _worst_fit(self, free, size):
    return len(free) - 1 if free and free[-1][0] >= size else None


def _newest_first(self, free, size):
    i = _ORIGINAL_BEST_FIT(self, free, size)
    while i is not None and i + 1 < len(free) and free[i + 1][0] == free[i][0]:
        i += 1
    return i


def _plain_best_fit(self, free, size):
    from bisect import bisect_left

    i = bisect_left(free, (size,))
    return None if i == len(free) else i


def _refuses_oversize(slack, inclusive=False, small_rule=True):
    def rule(self, block_size, size):
        limit = self.config.max_split_size
        if size < limit:
            return small_rule and block_size >= limit
        return block_size > size + slack if inclusive else block_size >= size + slack

    return rule


def _oversize_split(self, block, size):
    remaining = block.size - size
    if block.segment.small or self.config.expandable_segments:
        return remaining >= self.MIN_BLOCK_SIZE
    return remaining > self.SMALL_SIZE


def _round_without_guard(self, size):
    from membench.planning.allocator.model import roundup_power2_next_division

    if size < self.MIN_BLOCK_SIZE:
        return self.MIN_BLOCK_SIZE
    divisions = self.config.divisions_for(size)
    if divisions > 1:
        return roundup_power2_next_division(size, divisions)
    return -(-size // self.MIN_BLOCK_SIZE) * self.MIN_BLOCK_SIZE


def _divisions_shifted(self, size):
    index = min(max(size.bit_length() - 1 - 20, 0) + 1, 15)
    return self.roundup_power2_divisions[index]


def _divisions_small_unclamped(self, size):
    return 0 if size < M else _ORIGINAL_DIVISIONS_FOR(self, size)


def _fill_from_last(divisions, last_index, value):
    divisions[last_index:] = [value] * (len(divisions) - last_index)


def _expandable_split_like_large(self, block, size):
    remaining = block.size - size
    if block.segment.small:
        return remaining >= self.MIN_BLOCK_SIZE
    return size < self.config.max_split_size and remaining > self.SMALL_SIZE


def _merge_only(which):
    def rule(self, block):
        self.try_merge(block, getattr(block, which))

    return rule


def _no_release(mp):
    mp.setattr(Model, "release_available_cached_blocks", lambda self, key, size: False)
    mp.setattr(Model, "release_cached_blocks", lambda self: None)


MUTANTS = {
    "small_buffer_1mib": _set("SMALL_BUFFER", M),
    "small_buffer_3mib": _set("SMALL_BUFFER", 3 * M),
    "min_block_1024": _set("MIN_BLOCK_SIZE", 1024),
    "round_large_4mib": _set("ROUND_LARGE", 4 * M),
    "pool_boundary_exclusive": _set("is_small", lambda self, size: size < self.SMALL_SIZE),
    "one_pool": _set("is_small", lambda self, size: False),
    "no_large_segment_for_mid_sizes": _set("allocation_size", _allocation_size_no_mid),
    "mid_size_bound_inclusive": _set("allocation_size", _allocation_size_inclusive),
    "never_split_large": _set("should_split", _never_split_large),
    "large_split_at_1mib_inclusive": _set("should_split", _should_split_large(M, True)),
    "large_split_at_2mib": _set("should_split", _should_split_large(2 * M)),
    "small_split_exclusive": _set("should_split", _small_split_exclusive),
    "oversize_split": _set("should_split", _oversize_split),
    "expandable_split_like_large": _set("should_split", _expandable_split_like_large),
    "no_merge": _set("merge_neighbours", lambda self, block: None),
    "merge_prev_only": _set("merge_neighbours", _merge_only("prev")),
    "merge_next_only": _set("merge_neighbours", _merge_only("next")),
    "worst_fit": _set("best_fit", _worst_fit),
    "newest_segment_first": _set("best_fit", _newest_first),
    "plain_best_fit": _set("best_fit", _plain_best_fit),
    "oversize_serves_small": _set("refuses_oversize", _refuses_oversize(20 * M, small_rule=False)),
    "rounding_slack_30mib": _set("refuses_oversize", _refuses_oversize(30 * M)),
    "rounding_slack_inclusive": _set("refuses_oversize", _refuses_oversize(20 * M, True)),
    "no_small_size_guard_in_roundup": _set("round_size", _round_without_guard),
    "ignore_roundup": lambda mp: mp.setattr(AllocatorConfig, "divisions_for", lambda self, s: 0),
    "roundup_boundary_as_upper_edge": lambda mp: mp.setattr(
        AllocatorConfig, "divisions_for", _divisions_shifted
    ),
    "small_not_clamped": lambda mp: mp.setattr(
        AllocatorConfig, "divisions_for", _divisions_small_unclamped
    ),
    "gt_fills_from_last": lambda mp: mp.setattr(alloc_conf, "fill_above", _fill_from_last),
    "large_page_2mib": _set("page_size", lambda self, small: self.SMALL_BUFFER),
    "small_page_large": _set("page_size", lambda self, small: self.config.large_segment_size),
    "no_extend_from_free": _set("extend_from", lambda self, unmapped: unmapped),
    "shared_streams": _set("pool_key", lambda self, small, stream: (small, 0)),
    "empty_cache_noop": _set("empty_cache", lambda self: None),
    "no_unmap": _set("unmap_block", lambda self, block: None),
    "no_release_on_oom": _no_release,
    "no_release_available": _set("release_available_cached_blocks", lambda self, k, s: False),
}
