"""Reading one open file: sequential reads get a window that grows with what they read, a seek gets a
first window as long as the last run after a seek, and random reads fetch little more than they touch.

As in mountpoint-s3 and dxfuse, a read that continues the previous one is sequential; unlike a
window that doubles with every kernel request (which the kernel's own readahead multiplies), the
window here grows with the *bytes* read sequentially since the last seek: half as far ahead as
the reader has already come, up to a cap, so that a reader who stops has fetched at most half
again what it read. The window is topped up once three quarters of it have been read, so a long
sequential read becomes a few large ranged GETs rather than one per kernel read.

A seek fetches a first window with the read, in one request: 256 KiB, or as much as the reader
read after its last seek when that was more (up to 2 MiB). An indexed region query (samtools,
tabix) seeks to each region and reads on through a few BGZF blocks, and the regions of one query
are alike: the first region's run is found in a few round trips, the next ones are fetched in one.

These figures were chosen with bench/'s region query (three regions of a 230 MB BAM, samtools
reading 2.0 MB, the kernel's readahead at 128 KiB, the store 20 ms away): a first window of
256 KiB after every seek fetched 3.9 MB, the regions in 12 GETs; learning from the run before,
4.0 MB, the regions in 7 (5 for the first, about 3 round trips; one for each of the others).
Growing the window as fast as the reader reads (rather than by half) saved no round trip there
and fetched 0.3 MB more.
"""

from __future__ import annotations

from omicsfs.blockcache import BLOCK_SIZE, BlockCache, ObjectRef, Source

#: Fetched with the first read after a seek (and at the start of a file); also the smallest window.
SEEK_WINDOW = 256 * 1024
#: The most a seek fetches on the strength of the run before it: what a seek can waste.
SEEK_WINDOW_MAX = 2 * 1024 * 1024
#: How far apart two reads may be and still count as one sequential run (the kernel sends its
#: readahead requests in parallel: they may arrive a little out of order).
SLACK = 1024 * 1024
#: How far ahead a sequential reader is fetched, as a share of what it read since the last seek.
GROWTH = 0.5
#: A new fetch is asked when less than this share of the window is still ahead of the reader.
TOP_UP = 0.25


class ReadAhead:
    """Sequential-access detection for one open file: how far ahead to fetch after each read."""

    def __init__(self, max_window: int, *, indexed: bool = False):
        self.max_window = max(max_window, SEEK_WINDOW)
        #: A file with an index beside it is read by region: a read of its start is its header
        #: (htslib reads it before and after checking the end-of-file marker), and a seek to a
        #: region follows: such a read fetches only its own blocks.
        self.indexed = indexed
        self.next_offset = -1
        #: Bytes read sequentially since the last seek.
        self.sequential = 0
        #: Where the fetches asked so far reach.
        self.fetched_to = 0
        #: Where the current run began, and how long the run before it was.
        self.run_start = 0
        self.last_run = 0

    def advance(self, offset: int, size: int) -> int:
        """Note a read of [offset, offset + size); the offset up to which bytes should be on their way."""
        end = offset + size
        # Forward, as far as the window (reads the kernel sent together); backward, a little only:
        # a seek back by more is a seek.
        ahead = max(SLACK, min(self.max_window, self.sequential))
        sequential = self.next_offset >= 0 and self.next_offset - SLACK <= offset <= self.next_offset + ahead
        if not sequential:
            if self.next_offset >= 0:
                self.last_run = self.next_offset - self.run_start
            first = min(self.max_window, SEEK_WINDOW_MAX, max(SEEK_WINDOW, self.last_run))
            if self.indexed and offset < BLOCK_SIZE:
                first = 0
            self.sequential = 0
            self.run_start, self.next_offset = offset, end
            self.fetched_to = max(end, offset + first)
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

    def __init__(self, cache: BlockCache, obj: ObjectRef, source: Source, max_window: int, *, indexed: bool = False):
        self.cache = cache
        self.obj = obj
        self.cached = None  # opened at the first read, once a copy being adopted is whole
        self.closed = False
        self.source = source
        self.readahead = ReadAhead(max_window, indexed=indexed)

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
