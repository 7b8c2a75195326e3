"""``expandable_segments:True`` in the caching-allocator model (docs/allocator.md, "Expandable
segments"): one segment per pool and stream reserves a large address range and maps physical
pages at its end as allocations need them (``try_allocate_expandable_block``, ``map_block``);
``empty_cache`` unmaps the whole free pages (``unmap_block``). Pages are 2 MiB in the small pool
and ``large_segment_size`` (20 MiB) in the large pool, as c10/cuda/CUDACachingAllocator.cpp's
``find_expandable_block`` sizes them.

A mixin of ``allocator.CachingAllocatorModel``: it uses the model's free lists and rules."""

from __future__ import annotations

from .blocks import Block, add_unmapped, has_room, is_mapped, link, remove_unmapped


class ExpandableSegments:
    """The expandable-segment half of ``CachingAllocatorModel``."""

    def _allocate_expandable(self, small, stream, key, size) -> Block | None:
        """``try_allocate_expandable_block``: map pages until a free block of ``size`` exists
        at the lowest address that can hold it; None where the capacity is exceeded."""
        candidate = self._find_expandable_block(small, stream, key, size)
        if not candidate.mapped and not self._map_block(candidate, min(candidate.size, size)):
            return None
        while candidate.size < size:
            following = candidate.next
            if not self._map_block(following, min(size - candidate.size, following.size)):
                return None
            candidate = following
        self._remove_free(candidate)
        return candidate

    def _find_expandable_block(self, small, stream, key, size) -> Block:
        """``find_expandable_block``: the lowest unmapped range (with the free block before it)
        that holds ``size``, else a new segment's whole unmapped range."""
        for segment in self._expandable.get(key, ()):
            for _, unmapped in segment.unmapped:
                candidate = self.extend_from(unmapped)
                if has_room(candidate, size):
                    return candidate
        page = self.page_size(small)
        reserve = -(-self.expandable_reserve // page) * page
        segment = self._new_segment(key, small, stream, True, reserve, page)
        self._expandable.setdefault(key, []).append(segment)
        segment.head = block = Block(segment, 0, reserve, mapped=False)
        segment.unmapped.append((0, block))
        return block

    def _map_block(self, block: Block, size: int) -> bool:
        """``map_block``: back the start of an unmapped block with whole pages; False where the
        capacity is exceeded."""
        segment = block.segment
        page = segment.page
        mapped = (-(-(block.offset + size) // page) - block.offset // page) * page
        if self.capacity is not None and self.reserved + mapped > self.capacity:
            return False
        remove_unmapped(block)
        block.mapped = True
        if mapped < block.size:
            add_unmapped(
                link(
                    block,
                    Block(segment, block.offset + mapped, block.size - mapped, mapped=False),
                    block.next,
                )
            )
            block.size = mapped
        self.mapped_runs += 1 - is_mapped(block.prev) - is_mapped(block.next)
        offset = block.offset
        self.merge_neighbours(block)
        self._insert_free(block)
        self._reserve(mapped, ("segment_map", segment, offset, mapped))
        return True

    def unmap_block(self, block: Block) -> tuple[int, int] | None:
        """``unmap_block``: unmap the whole pages inside a free block; the partial pages at its
        ends stay mapped as free blocks. Returns (offset, size) unmapped, or None. A segment
        left with nothing mapped is released (``release_expandable_segment``)."""
        segment = block.segment
        page = segment.page
        begin, end = -(-block.offset // page) * page, (block.offset + block.size) // page * page
        if begin >= end:
            return None
        self._remove_free(block)
        before, after = begin - block.offset, block.offset + block.size - end
        left = before > 0 or is_mapped(block.prev)
        right = after > 0 or is_mapped(block.next)
        if before:
            self._insert_free(link(block.prev, Block(segment, block.offset, before), block))
        if after:
            self._insert_free(link(block, Block(segment, end, after), block.next))
        block.offset, block.size, block.mapped = begin, end - begin, False
        self.mapped_runs += left + right - 1
        self.try_merge(block, block.prev)
        self.try_merge(block, block.next)
        add_unmapped(block)
        self.reserved -= end - begin
        if self.log is not None:
            self.log.append(("segment_unmap", segment, begin, end - begin))
        if block.prev is None and block.next is None:
            self._expandable[segment.key].remove(segment)
            del self._live[segment.order]
        return begin, end - begin
