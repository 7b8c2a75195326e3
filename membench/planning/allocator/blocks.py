"""The caching-allocator model's bookkeeping (docs/allocator.md): segments, the blocks they are
split into (a doubly linked list per segment, as ``Block::prev``/``next`` in
c10/cuda/CUDACachingAllocator.cpp), and the list operations the allocator's rules share."""

from __future__ import annotations

from bisect import bisect_left, insort


class Segment:
    """One ``cudaMalloc`` range, or one expandable segment (``ExpandableSegment``)."""

    __slots__ = (
        "order",
        "key",
        "small",
        "stream",
        "expandable",
        "size",
        "page",
        "head",
        "unmapped",
        "address",
    )

    def __init__(self, order, key, small, stream, expandable, size, page, address):
        self.order = order  # the block comparator's registration_counter: older sorts first
        self.key = key  # the free list its blocks go to: (small pool?, stream)
        self.small, self.stream, self.expandable = small, stream, expandable
        self.size = size  # cudaMalloc'd bytes; an expandable segment's reserved address space
        self.page = page  # an expandable segment's mapping granularity
        self.head = None  # the block at offset 0
        self.unmapped = []  # expandable: (offset, block) of its unmapped blocks, by offset
        self.address = address  # a made-up device address; replays put the real one here


class Block:
    """A piece of a segment: allocated, free (cached), or (expandable) not mapped."""

    __slots__ = ("segment", "offset", "size", "requested", "allocated", "mapped", "prev", "next")

    def __init__(self, segment: Segment, offset: int, size: int, mapped: bool = True):
        self.segment, self.offset, self.size, self.mapped = segment, offset, size, mapped
        self.requested = 0  # the size last asked for in it (Block::requested_size)
        self.allocated = False
        self.prev = self.next = None

    @property
    def key(self) -> tuple[int, int, int]:
        """Where this block sorts in its free list: size, segment age, address."""
        return (self.size, self.segment.order, self.offset)


def expandable_size(block: Block) -> int:
    """``get_free_block``'s ``expandable_size``: a block's size plus the unmapped space right
    after it, into which it could grow."""
    following = block.next
    return block.size + (following.size if following is not None and not following.mapped else 0)


def has_room(block: Block | None, size: int) -> bool:
    """``has_available_address_space``: free or unmapped blocks from ``block`` on hold ``size``."""
    room = 0
    while room < size and block is not None and not block.allocated:
        room += block.size
        block = block.next
    return room >= size


def is_mapped(block: Block | None) -> bool:
    return block is not None and block.mapped


def link(prev: Block | None, block: Block, following: Block | None) -> Block:
    """Put ``block`` between ``prev`` and ``following`` in its segment's list; returns it."""
    block.prev, block.next = prev, following
    if prev is None:
        block.segment.head = block
    else:
        prev.next = block
    if following is not None:
        following.prev = block
    return block


def add_unmapped(block: Block) -> None:
    insort(block.segment.unmapped, (block.offset, block))


def remove_unmapped(block: Block) -> None:
    unmapped = block.segment.unmapped
    del unmapped[bisect_left(unmapped, (block.offset,))]
