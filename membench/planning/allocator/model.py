"""A model of PyTorch's CUDA caching allocator: which segments it reserves, and how it places
blocks in them, for a stream of allocations and frees (docs/allocator.md).

The rules are those of c10/cuda/CUDACachingAllocator.cpp (``DeviceCachingAllocator``) in
PyTorch 2.14; each rule is a constant or a method of ``CachingAllocatorModel`` named after the
function it models, so a test can swap one out. Plain Python, no torch: a planner replays a
timeline of a step through it in well under a second.

What it tracks, per device: segments (``cudaMalloc`` ranges, or expandable segments mapped in
pages), the blocks they are split into, free blocks kept per (pool, stream) in the allocator's
best-fit order (size, then segment age, then address), and the figures ``torch.cuda`` reports:
reserved bytes (``memory_reserved``), allocated bytes (block sizes, ``memory_allocated``) and
requested bytes (what callers asked for).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass

from .blocks import Block, Segment, expandable_size, link, remove_unmapped
from .conf import SIZE_MAX, AllocatorConfig, AllocatorConfigError
from .expandable import ExpandableSegments

MIB = 1024 * 1024
# Address space an expandable segment reserves when no device size is given: it only decides
# when a second segment would be needed, which no real device reaches. An assumption.
DEFAULT_EXPANDABLE_RESERVE = 2**48


class ModelledOutOfMemory(Exception):
    """The allocator, under the given capacity, would raise ``torch.OutOfMemoryError``."""

    def __init__(self, size: int, reserved: int):
        super().__init__(f"out of memory allocating {size} bytes with {reserved} reserved")
        self.size = size
        self.reserved = reserved


@dataclass(frozen=True)
class PeakState:
    """The allocator right after the allocation that first took reserved bytes to their peak."""

    reserved: int
    allocated: int  # block sizes, as torch.cuda.memory_allocated counts them
    requested: int  # the sizes callers asked for
    largest_free_block: int  # the largest cached (mapped, free) block
    segments: int  # reserved address ranges as torch.cuda.memory._snapshot() lists them
    event_index: int  # the allocation's index in the replayed stream (-1: not from a replay)

    @property
    def fragmentation(self) -> int:
        """Reserved bytes no allocation holds."""
        return self.reserved - self.allocated


class CachingAllocatorModel(ExpandableSegments):
    """One device's caching allocator. ``malloc``/``free``/``empty_cache`` as PyTorch's.

    ``capacity``: bytes the allocator can get from the device; when given, an allocation that
    would pass it first frees cached blocks as PyTorch does (``release_available_cached_blocks``,
    then ``release_cached_blocks``) and raises ``ModelledOutOfMemory`` if that is not enough.
    ``device_memory``: the device's total bytes, which sizes an expandable segment's address space.
    """

    MIN_BLOCK_SIZE = 512  # kMinBlockSize: every size is rounded to a multiple of 512 bytes
    SMALL_SIZE = MIB  # kSmallSize: requests up to 1 MiB go to the small pool
    SMALL_BUFFER = 2 * MIB  # kSmallBuffer: a small pool segment (and expandable page)
    MIN_LARGE_ALLOC = 10 * MIB  # kMinLargeAlloc: smaller large requests get a large segment
    ROUND_LARGE = 2 * MIB  # kRoundLarge: larger requests are rounded up to 2 MiB

    def __init__(
        self,
        config: AllocatorConfig | None = None,
        capacity: int | None = None,
        device_memory: int | None = None,
    ):
        self.config = config = config or AllocatorConfig()
        if config.backend != "native":
            raise AllocatorConfigError(
                f"backend:{config.backend} is not modelled: only the native caching allocator is"
            )
        if config.per_process_memory_fraction < 1.0:
            raise AllocatorConfigError(
                "per_process_memory_fraction below 1 is not modelled; "
                "give the model a capacity instead"
            )
        self.capacity = capacity
        self.expandable_reserve = (
            device_memory + device_memory // 8 if device_memory else DEFAULT_EXPANDABLE_RESERVE
        )
        self._free: dict[tuple, list] = {}  # pool key -> [(size, order, offset, block)], sorted
        self._expandable: dict[tuple, list[Segment]] = {}  # pool key -> its expandable segments
        self._segments = 0  # registration counter: one per segment ever created
        self._live: dict[int, Segment] = {}  # live segments by registration counter
        self._next_address = 0x7F0000000000
        self.reserved = self.allocated = self.requested = 0
        self.peak_reserved = self.peak_allocated = self.peak_requested = 0
        self.cuda_segments = 0  # live cudaMalloc segments
        self.mapped_runs = 0  # contiguous mapped ranges of expandable segments
        self.at_peak: PeakState | None = None
        self._peak_pending = False
        self.event_index = -1  # set by a replay, recorded in PeakState
        self.log: list | None = None  # replays set a list: (action, segment, offset, size)

    # --- rules ------------------------------------------------------------------------------

    def round_size(self, size: int) -> int:
        """``round_size``: at least 512 bytes; a multiple of 512, or of the power-of-two
        division when roundup_power2_divisions applies and the size exceeds 512 x divisions."""
        if size < self.MIN_BLOCK_SIZE:
            return self.MIN_BLOCK_SIZE
        divisions = self.config.divisions_for(size)
        if divisions > 1 and size > self.MIN_BLOCK_SIZE * divisions:
            return roundup_power2_next_division(size, divisions)
        return -(-size // self.MIN_BLOCK_SIZE) * self.MIN_BLOCK_SIZE

    def is_small(self, size: int) -> bool:
        """``get_pool``: a rounded size up to 1 MiB goes to the small pool."""
        return size <= self.SMALL_SIZE

    def pool_key(self, small: bool, stream) -> tuple:
        """Free blocks serve only their own pool and stream (the comparator orders by stream)."""
        return (small, stream)

    def allocation_size(self, size: int) -> int:
        """``get_allocation_size``: the cudaMalloc size for a request no cached block serves."""
        if size <= self.SMALL_SIZE:
            return self.SMALL_BUFFER
        if size < self.MIN_LARGE_ALLOC:
            return self.config.large_segment_size
        return -(-size // self.ROUND_LARGE) * self.ROUND_LARGE

    def page_size(self, small: bool) -> int:
        """``find_expandable_block``: an expandable segment maps 2 MiB pages in the small pool,
        large_segment_size (20 MiB) pages in the large pool."""
        return self.SMALL_BUFFER if small else self.config.large_segment_size

    def should_split(self, block: Block, size: int) -> bool:
        """``should_split``: whether the block's remainder becomes a free block of its own."""
        remaining = block.size - size
        if block.segment.small or self.config.expandable_segments:
            return remaining >= self.MIN_BLOCK_SIZE
        return size < self.config.max_split_size and remaining > self.SMALL_SIZE

    def refuses_oversize(self, block_size: int, size: int) -> bool:
        """``get_free_block``: an oversize block (>= max_split_size) never serves a smaller
        request, nor one it exceeds by max_non_split_rounding or more."""
        limit = self.config.max_split_size
        if size < limit:
            return block_size >= limit
        return block_size >= size + self.config.max_non_split_rounding

    def best_fit(self, free: list, size: int) -> int | None:
        """``get_free_block``: the index of the first free block of at least ``size`` in the
        (size, age, address) order; among expandable blocks, the one that can grow least."""
        i = bisect_left(free, (size,))
        if i == len(free):
            return None
        if free[i][3].segment.expandable:
            while (
                i + 1 < len(free)
                and free[i][3].segment.expandable
                and expandable_size(free[i + 1][3]) < expandable_size(free[i][3])
            ):
                i += 1
        return i

    def merge_neighbours(self, block: Block) -> None:
        """``free_block``: a freed block absorbs a free previous, then a free next block."""
        self.try_merge(block, block.prev)
        self.try_merge(block, block.next)

    def extend_from(self, unmapped: Block) -> Block:
        """``find_expandable_block``: growth starts at a free block just before the unmapped
        one, so the two merge."""
        prev = unmapped.prev
        return prev if prev is not None and not prev.allocated else unmapped

    # --- malloc / free ----------------------------------------------------------------------

    def malloc(self, nbytes: int, stream=0) -> Block | None:
        """``DeviceCachingAllocator::malloc``: the block serving ``nbytes`` on ``stream`` (None
        for 0 bytes, which PyTorch serves without the allocator)."""
        if nbytes <= 0:
            if nbytes < 0:
                raise ValueError(f"negative allocation size {nbytes}")
            return None
        size = self.round_size(nbytes)
        small = self.is_small(size)
        key = self.pool_key(small, stream)
        block = self._get_free_block(key, size)
        if block is None:
            block = self._alloc_with_retries(small, stream, key, size)
        if self.should_split(block, size):
            block = self._split(block, size)
        block.allocated = True
        block.requested = nbytes
        self.allocated += block.size
        self.requested += nbytes
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.peak_requested = max(self.peak_requested, self.requested)
        if self._peak_pending:
            self._capture_peak()
        return block

    def free(self, block: Block) -> None:
        """``free_locked`` + ``free_block`` (no cross-stream uses: the block is free at once)."""
        if not block.allocated:
            raise ValueError("block is not allocated")
        block.allocated = False
        self.allocated -= block.size
        self.requested -= block.requested
        self.merge_neighbours(block)
        self._insert_free(block)

    def empty_cache(self) -> None:
        """``emptyCache``: ``release_cached_blocks``."""
        self.release_cached_blocks()

    def _get_free_block(self, key, size: int) -> Block | None:
        free = self._free.get(key)
        if not free:
            return None
        i = self.best_fit(free, size)
        if i is None or self.refuses_oversize(free[i][0], size):
            return None
        return free.pop(i)[3]

    def _alloc_with_retries(self, small, stream, key, size) -> Block:
        alloc_size = self.allocation_size(size)
        block = self._alloc_block(small, stream, key, size, alloc_size)
        if block is None and self.release_available_cached_blocks(key, size):
            block = self._alloc_block(small, stream, key, size, alloc_size)
        if block is None:
            self.release_cached_blocks()
            block = self._alloc_block(small, stream, key, size, alloc_size)
        if block is None:
            if self._peak_pending:
                self._capture_peak()
            raise ModelledOutOfMemory(size, self.reserved)
        return block

    def _split(self, rest: Block, size: int) -> Block:
        """``alloc_found_block``: a new block takes the front ``size`` bytes and is returned;
        ``rest`` keeps the remainder (and its old requested size) and goes back to the cache."""
        block = Block(rest.segment, rest.offset, size)
        link(rest.prev, block, rest)
        rest.offset += size
        rest.size -= size
        self._insert_free(rest)
        return block

    def _alloc_block(self, small, stream, key, size, alloc_size) -> Block | None:
        """``alloc_block``: a new segment (or expandable pages) for the request; None where
        the capacity is exceeded."""
        if self.config.expandable_segments:
            return self._allocate_expandable(small, stream, key, size)
        if self.capacity is not None and self.reserved + alloc_size > self.capacity:
            return None
        segment = self._new_segment(key, small, stream, False, alloc_size, 0)
        block = segment.head = Block(segment, 0, alloc_size)
        self.cuda_segments += 1
        self._reserve(alloc_size, ("segment_alloc", segment, 0, alloc_size))
        return block

    def _new_segment(self, key, small, stream, expandable, size, page) -> Segment:
        segment = Segment(
            self._segments, key, small, stream, expandable, size, page, self._next_address
        )
        self._segments += 1
        self._live[segment.order] = segment
        self._next_address += -(-size // self.SMALL_BUFFER) * self.SMALL_BUFFER
        return segment

    def _reserve(self, nbytes: int, entry: tuple) -> None:
        self.reserved += nbytes
        if self.reserved > self.peak_reserved:
            self.peak_reserved = self.reserved
            self._peak_pending = True
        if self.log is not None:
            self.log.append(entry)

    def _capture_peak(self) -> None:
        self._peak_pending = False
        largest = max((free[-1][0] for free in self._free.values() if free), default=0)
        self.at_peak = PeakState(
            self.reserved,
            self.allocated,
            self.requested,
            largest,
            self.cuda_segments + self.mapped_runs,
            self.event_index,
        )

    # --- free lists -------------------------------------------------------------------------

    def _insert_free(self, block: Block) -> None:
        free = self._free.get(block.segment.key)
        if free is None:
            free = self._free[block.segment.key] = []
        insort(free, (block.size, block.segment.order, block.offset, block))

    def _remove_free(self, block: Block) -> None:
        free = self._free[block.segment.key]
        i = bisect_left(free, block.key)
        if i == len(free) or free[i][3] is not block:
            raise AssertionError("free block missing from its free list")
        del free[i]

    def try_merge(self, dst: Block, src: Block | None) -> int:
        """``try_merge_blocks``: ``dst`` absorbs its free neighbour ``src`` (both mapped, or
        both unmapped); returns the bytes absorbed."""
        if src is None or src.allocated or src.mapped != dst.mapped:
            return 0
        if src.mapped:
            self._remove_free(src)
        else:
            remove_unmapped(src)
        if src is dst.prev:
            dst.offset = src.offset
            link(src.prev, dst, dst.next)
        else:
            link(dst.prev, dst, src.next)
        dst.size += src.size
        return src.size

    # --- releasing cached memory --------------------------------------------------------------

    def release_available_cached_blocks(self, key, size: int) -> bool:
        """``release_available_cached_blocks``: with max_split_size set, free the smallest
        oversize cached block that covers the request, else oversize blocks from the largest
        down until as many bytes are freed."""
        limit = self.config.max_split_size
        if limit == SIZE_MAX:
            return False
        free = self._free.get(key, [])
        target = max(size, limit)
        i = bisect_left(free, (target,))
        if i < len(free) and not free[i][3].segment.expandable:
            self.release_block(free[i][3])
            return True
        released = 0
        for entry in reversed(free[:i]):
            if released >= target or entry[0] < limit:
                break
            if not entry[3].segment.expandable:
                released += entry[0]
                self.release_block(entry[3])
        return released >= target

    def release_cached_blocks(self) -> None:
        """``release_cached_blocks``: free every unsplit cached segment and unmap every whole
        free page of expandable segments, large pool first."""
        for small in (False, True):
            self.release_blocks(small)

    def release_blocks(self, small: bool) -> None:
        """``release_blocks`` for one pool, all streams."""
        to_unmap = []
        for key, free in list(self._free.items()):
            if key[0] != small:
                continue
            for entry in list(free):
                block = entry[3]
                if block.segment.expandable:
                    to_unmap.append(block)
                elif block.prev is None and block.next is None:
                    self.release_block(block)
        for block in to_unmap:
            self.unmap_block(block)

    def release_block(self, block: Block) -> None:
        """``release_block``: cudaFree a whole cached segment."""
        self._remove_free(block)
        self.reserved -= block.size
        self.cuda_segments -= 1
        del self._live[block.segment.order]
        if self.log is not None:
            self.log.append(("segment_free", block.segment, 0, block.size))

    # --- inspection ---------------------------------------------------------------------------

    def segment_heads(self) -> list[Block]:
        """The first block of every live segment, oldest segment first."""
        return [segment.head for segment in self._live.values()]


def roundup_power2_next_division(size: int, divisions: int) -> int:
    """``roundup_power2_next_division``: ``size`` rounded up to the next of ``divisions`` equal
    steps between the powers of two around it (a power of two stays as it is)."""
    if size & (size - 1) == 0:
        return size
    floor = 1 << (size.bit_length() - 1)
    step = floor >> (divisions.bit_length() - 1)
    if step == 0:
        return floor << 1
    return -(-size // step) * step
