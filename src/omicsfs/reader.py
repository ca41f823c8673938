"""Reading one open file: sequential reads get a window that grows with what they read, a seek gets a
small first window, and random reads fetch little more than they touch.

As in mountpoint-s3 and dxfuse, a read that continues the previous one is sequential; unlike a
window that doubles with every kernel request (which the kernel's own readahead multiplies), the
window here grows with the *bytes* read sequentially since the last seek: as far ahead as the
reader has already come, from 1 MiB up to a cap. A seek starts a first window of 512 KiB, fetched
with the read in one request: an indexed region query (samtools, tabix) reads a few BGZF blocks
after each seek, so one round trip per region, where fetching only the read's blocks cost two or
three. The window is topped up once half of it has been read, so a long sequential read becomes a
few large ranged GETs rather than one per kernel read.
"""

from __future__ import annotations

from omicsfs.blockcache import BLOCK_SIZE, BlockCache, ObjectRef, Source

#: Fetched with the first read after a seek (and at the start of a file).
SEEK_WINDOW = 512 * 1024
#: The smallest window of a sequential reader.
FIRST_WINDOW = 1024 * 1024


class ReadAhead:
    """Sequential-access detection for one open file: how far ahead to fetch after each read."""

    def __init__(self, max_window: int):
        self.max_window = max(max_window, FIRST_WINDOW)
        self.next_offset = -1
        #: Bytes read sequentially since the last seek.
        self.sequential = 0
        #: Where the fetches asked so far reach.
        self.fetched_to = 0

    def advance(self, offset: int, size: int) -> int:
        """Note a read of [offset, offset + size); the offset up to which bytes should be on their way."""
        end = offset + size
        # The kernel sends readahead requests in parallel, so they may arrive a little out of order.
        slack = max(FIRST_WINDOW, min(self.max_window, self.sequential))
        sequential = self.next_offset >= 0 and self.next_offset - slack <= offset <= self.next_offset + slack
        if not sequential:
            self.sequential = 0
            self.next_offset = end
            self.fetched_to = max(end, offset + SEEK_WINDOW)
            return self.fetched_to
        self.sequential += size
        self.next_offset = max(self.next_offset, end)
        window = min(self.max_window, max(FIRST_WINDOW, self.sequential))
        if self.fetched_to - end > window // 2:
            return self.fetched_to  # enough is on its way
        self.fetched_to = end + window
        return self.fetched_to


class FileReader:
    """Serves the reads of one open file from the block cache."""

    def __init__(self, cache: BlockCache, obj: ObjectRef, source: Source, max_window: int):
        self.cache = cache
        self.obj = obj
        self.cached = None  # opened at the first read, once a copy being adopted is whole
        self.closed = False
        self.source = source
        self.readahead = ReadAhead(max_window)

    async def read(self, offset: int, size: int) -> bytes:
        if self.cached is None:
            await self.cache.store.settled(self.obj)
            if self.closed:
                return b""
            self.cached = self.cache.open(self.obj)
        ahead = self.readahead.advance(offset, size)
        return await self.cache.read(self.cached, self.source, offset, size, ahead=(ahead - 1) // BLOCK_SIZE)

    def close(self) -> None:
        self.closed = True
        if self.cached is not None:
            self.cache.close(self.cached)
            self.cached = None
