"""Reading one open file: sequential reads get a growing prefetch window, random reads get only their blocks.

As in mountpoint-s3 and dxfuse: a read that continues the previous one grows the window (1 MiB,
doubling up to a cap); a seek resets it. Random reads (BAM/VCF index lookups) fetch only the
blocks they cover, so a region query moves a few hundred KiB rather than megabytes. The window
is topped up in large steps, once half of it has been consumed, so that a long sequential read
becomes a few large ranged GETs rather than one per kernel read.
"""

from __future__ import annotations

from omicsfs.blockcache import BLOCK_SIZE, BlockCache, ObjectRef, Source

FIRST_WINDOW = 1024 * 1024


class ReadAhead:
    """Sequential-access detection for one open file."""

    def __init__(self, max_window: int):
        self.max_window = max(max_window, FIRST_WINDOW)
        self.window = 0
        self.next_offset = -1
        self.fetched_to = 0

    def advance(self, offset: int, size: int) -> tuple[int, int] | None:
        """Note a read; return the byte range to prefetch beyond it, if any."""
        end = offset + size
        # The kernel sends readahead requests in parallel, so they may arrive a little out of order.
        slack = max(self.window, FIRST_WINDOW)
        sequential = self.next_offset >= 0 and self.next_offset - slack <= offset <= self.next_offset + slack
        self.next_offset = max(self.next_offset, end) if sequential else end
        if not sequential:
            self.window = 0
            self.fetched_to = end
            return None
        self.window = min(self.max_window, self.window * 2 if self.window else FIRST_WINDOW)
        start = max(self.fetched_to, end)
        if start - end > self.window // 2:
            return None  # enough is on its way
        self.fetched_to = end + self.window
        return start, self.fetched_to


class FileReader:
    """Serves the reads of one open file from the block cache."""

    def __init__(self, cache: BlockCache, obj: ObjectRef, source: Source, max_window: int):
        self.cache = cache
        self.obj = obj
        self.source = source
        self.readahead = ReadAhead(max_window)

    async def read(self, offset: int, size: int) -> bytes:
        size = min(size, self.obj.size - offset)
        if size <= 0:
            return b""
        first, last = offset // BLOCK_SIZE, (offset + size - 1) // BLOCK_SIZE
        ahead = self.readahead.advance(offset, size)
        # One call, so that the blocks this read needs and the window after them go out as one run.
        wanted = last if ahead is None else max(last, (ahead[1] - 1) // BLOCK_SIZE)
        self.cache.prefetch(self.obj, self.source, first, wanted)
        blocks = [await self.cache.get(self.obj, self.source, index) for index in range(first, last + 1)]
        skip = offset - first * BLOCK_SIZE
        if len(blocks) == 1:
            return blocks[0][skip : skip + size]
        return b"".join(blocks)[skip : skip + size]
