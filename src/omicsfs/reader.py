"""Reading one open file: sequential reads get a window that grows with what they read, a seek gets a
small first window, and random reads fetch little more than they touch.

As in mountpoint-s3 and dxfuse, a read that continues the previous one is sequential; unlike a
window that doubles with every kernel request (which the kernel's own readahead multiplies), the
window here grows with the *bytes* read sequentially since the last seek: half as far ahead as
the reader has already come, up to a cap, so that a reader who stops has fetched at most half
again what it read. A seek starts a first window of 256 KiB, fetched with the read in one request:
an indexed region query (samtools, tabix) reads a few BGZF blocks after each seek, so one round
trip per region, where fetching only the read's blocks cost two or three. The window is topped up
once three quarters of it have been read, so a long sequential read becomes a few large ranged
GETs rather than one per kernel read.

These figures were chosen with the kernel reads of bench/'s region query (three regions of a
230 MB BAM, the kernel's readahead at 128 KiB): 3.9 MB fetched for the 2.0 MB samtools reads,
in 14 GETs, where a first window of 512 KiB and a window as large as what was read fetched 5.8 MB.
"""

from __future__ import annotations

from omicsfs.blockcache import BLOCK_SIZE, BlockCache, ObjectRef, Source

#: Fetched with the first read after a seek (and at the start of a file); also the smallest window.
SEEK_WINDOW = 256 * 1024
#: How far apart two reads may be and still count as one sequential run (the kernel sends its
#: readahead requests in parallel: they may arrive a little out of order).
SLACK = 1024 * 1024
#: How far ahead a sequential reader is fetched, as a share of what it read since the last seek.
GROWTH = 0.5
#: A new fetch is asked when less than this share of the window is still ahead of the reader.
TOP_UP = 0.25


class ReadAhead:
    """Sequential-access detection for one open file: how far ahead to fetch after each read."""

    def __init__(self, max_window: int):
        self.max_window = max(max_window, SEEK_WINDOW)
        self.next_offset = -1
        #: Bytes read sequentially since the last seek.
        self.sequential = 0
        #: Where the fetches asked so far reach.
        self.fetched_to = 0

    def advance(self, offset: int, size: int) -> int:
        """Note a read of [offset, offset + size); the offset up to which bytes should be on their way."""
        end = offset + size
        # Forward, as far as the window (reads the kernel sent together); backward, a little only:
        # a seek back by more is a seek.
        ahead = max(SLACK, min(self.max_window, self.sequential))
        sequential = self.next_offset >= 0 and self.next_offset - SLACK <= offset <= self.next_offset + ahead
        if not sequential:
            self.sequential = 0
            self.next_offset = end
            self.fetched_to = max(end, offset + SEEK_WINDOW)
            return self.fetched_to
        self.sequential += size
        self.next_offset = max(self.next_offset, end)
        window = min(self.max_window, max(SEEK_WINDOW, int(self.sequential * GROWTH)))
        if self.fetched_to - end > window * TOP_UP:
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
