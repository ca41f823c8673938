"""Unit tests for `reader.py`: how far ahead to fetch (`ReadAhead`), and `FileReader` over a `BlockCache`."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from omicsfs.blockcache import BLOCK_SIZE, BlockCache, ObjectRef, ObjectStore
from omicsfs.reader import GROWTH, SEEK_WINDOW, SEEK_WINDOW_MAX, FileReader, ReadAhead

KiB, MiB = 1024, 1024 * 1024
READ = 128 * KiB  # what the kernel typically asks for per read


class CountingSource:
    """A `Source` over bytes in memory that records every range asked for."""

    def __init__(self, data: bytes):
        self.data = data
        self.calls: list[tuple[int, int]] = []

    async def __call__(self, start: int, end: int):
        self.calls.append((start, end))
        for position in range(start, end, 64 * KiB):
            await trio.sleep(0)
            yield self.data[position : min(end, position + 64 * KiB)]

    @property
    def bytes(self) -> int:
        return sum(end - start for start, end in self.calls)

    @property
    def high_water(self) -> int:
        return max((end for _, end in self.calls), default=0)


def make_reader(tmp_path, nursery, size: int, max_window: int = 4 * MiB) -> tuple[FileReader, CountingSource, bytes]:
    data = random.Random(size).randbytes(size)
    obj = ObjectRef.for_file("test", "reader", "v1", size)
    cache = BlockCache(ObjectStore(tmp_path, 1024 * MiB), nursery)
    source = CountingSource(data)
    return FileReader(cache, obj, source, max_window), source, data


# -- ReadAhead ------------------------------------------------------------------------------------


def test_the_first_read_fetches_a_seek_window():
    readahead = ReadAhead(8 * MiB)
    assert readahead.advance(0, 4 * KiB) == SEEK_WINDOW
    assert readahead.sequential == 0


def test_a_read_larger_than_the_seek_window_gets_what_it_reads():
    readahead = ReadAhead(8 * MiB)
    assert readahead.advance(10 * MiB, 2 * MiB) == 12 * MiB


def test_the_window_grows_with_the_bytes_read_sequentially_up_to_the_cap():
    readahead = ReadAhead(8 * MiB)
    readahead.advance(0, READ)
    reach = []
    for n in range(1, 300):
        end = (n + 1) * READ
        reach.append(readahead.advance(n * READ, READ) - end)
    assert all(0 <= ahead <= 8 * MiB for ahead in reach)
    assert max(reach[:2]) <= SEEK_WINDOW, "a short sequential run fetches a first window, not more"
    assert max(reach) == 8 * MiB and reach[-1] >= 6 * MiB, "a long one has the whole capped window on its way"
    # How far ahead is never more than half what was read since the seek, or the first window:
    # a reader who stops has fetched at most half again what it read.
    for n, ahead in enumerate(reach, start=1):
        assert ahead <= max(SEEK_WINDOW, GROWTH * n * READ + READ)


def test_the_window_never_below_the_first():
    readahead = ReadAhead(100 * KiB)
    assert readahead.max_window == SEEK_WINDOW


def test_fetches_come_in_steps_of_half_a_window_or_more():
    """Over a long sequential scan the reach moves in large steps, not with every read."""
    readahead = ReadAhead(4 * MiB)
    reaches = {readahead.advance(offset, READ) for offset in range(0, 64 * MiB, READ)}
    assert len(reaches) <= 64 * MiB // (3 * MiB) + 16


def test_a_seek_starts_over():
    readahead = ReadAhead(8 * MiB)
    readahead.advance(0, READ)
    readahead.advance(200 * MiB, READ)  # a run of one read: the next seek's window is the smallest
    assert readahead.sequential == 0
    assert readahead.advance(500 * MiB, READ) == 500 * MiB + SEEK_WINDOW
    assert readahead.sequential == 0
    # Reading on to the end of what the seek fetched: the next first window.
    assert readahead.advance(500 * MiB + READ, READ) == 500 * MiB + 2 * READ + SEEK_WINDOW


def test_a_seek_fetches_as_much_as_the_run_before_it_read():
    """The regions of one query are alike: after a run of 700 KiB, a seek fetches 700 KiB."""
    readahead = ReadAhead(8 * MiB)
    run = 700 * KiB
    for offset in range(10 * MiB, 10 * MiB + run, 100 * KiB):
        readahead.advance(offset, 100 * KiB)
    assert readahead.advance(90 * MiB, 4 * KiB) == 90 * MiB + run
    assert readahead.last_run == run
    # A run of one small read: the seek after it is back to the smallest window.
    assert readahead.advance(30 * MiB, 4 * KiB) == 30 * MiB + SEEK_WINDOW


def test_what_a_seek_fetches_on_the_strength_of_the_run_before_is_capped():
    readahead = ReadAhead(64 * MiB)
    for n in range(160):  # 20 MiB read in order
        readahead.advance(n * READ, READ)
    assert readahead.advance(500 * MiB, READ) == 500 * MiB + 2 * MiB  # docs/SEMANTICS.md: up to 2 MiB
    small = ReadAhead(SEEK_WINDOW + READ)  # and never more than the window's own cap
    for n in range(16):
        small.advance(n * READ, READ)
    assert small.advance(500 * MiB, READ) == 500 * MiB + SEEK_WINDOW + READ


def test_an_indexed_file_read_at_its_start_fetches_only_the_read():
    """The header of a file with an index beside it: a seek follows, so nothing is fetched ahead,
    the first time and when the header is read again after the end-of-file check."""
    readahead = ReadAhead(8 * MiB, indexed=True)
    assert readahead.advance(0, 64 * KiB) == 64 * KiB
    assert readahead.advance(200 * MiB, 4 * KiB) == 200 * MiB + SEEK_WINDOW  # the end-of-file marker
    assert readahead.advance(0, 16 * KiB) == 16 * KiB
    assert readahead.advance(50 * MiB, 4 * KiB) == 50 * MiB + SEEK_WINDOW  # a region: a seek as any other
    # The header is the first block: a seek to the second is a seek as any other.
    assert readahead.advance(BLOCK_SIZE, 4 * KiB) == BLOCK_SIZE + SEEK_WINDOW
    assert ReadAhead(8 * MiB).advance(0, 64 * KiB) == SEEK_WINDOW  # without an index: a first window


def test_a_backward_seek_starts_over():
    readahead = ReadAhead(8 * MiB)
    for n in range(8):
        readahead.advance(100 * MiB + n * READ, READ)
    assert readahead.advance(0, READ) == 8 * READ and readahead.sequential == 0  # as far as the run went


def test_slightly_out_of_order_reads_stay_sequential():
    """The kernel sends readahead in parallel: reads may arrive a little out of order."""
    readahead = ReadAhead(8 * MiB)
    for offset in (0, READ, 3 * READ, 2 * READ, 4 * READ):
        readahead.advance(offset, READ)
    assert readahead.sequential == 4 * READ
    assert readahead.next_offset == 5 * READ


# -- FileReader -----------------------------------------------------------------------------------


async def test_a_random_read_fetches_at_most_a_seek_window(tmp_path, nursery):
    reader, source, data = make_reader(tmp_path, nursery, 64 * MiB)
    offset = 10 * MiB - 1000
    assert await reader.read(offset, 4096) == data[offset : offset + 4096]
    await trio.testing.wait_all_tasks_blocked()
    first = (offset // BLOCK_SIZE) * BLOCK_SIZE
    assert source.calls == [(first, first + SEEK_WINDOW + BLOCK_SIZE)]
    # Another small read far away: one request of its own, as small.
    offset = 50 * MiB + 12345
    assert await reader.read(offset, 1000) == data[offset : offset + 1000]
    await trio.testing.wait_all_tasks_blocked()
    assert len(source.calls) == 2 and source.bytes <= 2 * (SEEK_WINDOW + BLOCK_SIZE)


async def test_a_region_like_the_one_before_is_fetched_in_one_request(tmp_path, nursery):
    """samtools on three regions: the first is found in a few requests, the next ones (no longer)
    each come whole with the request their first read makes."""
    reader, source, data = make_reader(tmp_path, nursery, 64 * MiB)
    for region, (start, length) in enumerate(((5 * MiB + 1000, 900 * KiB), (20 * MiB + 3000, 800 * KiB), (40 * MiB, 300 * KiB))):
        before = len(source.calls)
        for offset in range(start, start + length, READ):
            assert await reader.read(offset, READ) == data[offset : offset + READ]
            await trio.testing.wait_all_tasks_blocked()
        first_start, first_end = source.calls[before]
        if region == 0:
            assert len(source.calls) - before > 1
        else:
            assert first_start <= start and first_end >= start + length, f"region {region} took more than one request"
    assert source.bytes <= 2 * (900 + 800 + 300) * KiB + 3 * BLOCK_SIZE


async def test_an_indexed_file_s_header_read_fetches_one_request_of_its_own_blocks(tmp_path, nursery):
    data = random.Random(7).randbytes(8 * MiB)
    source = CountingSource(data)
    reader = FileReader(BlockCache(ObjectStore(tmp_path, 1024 * MiB), nursery), ObjectRef.for_file("test", "bam", "v1", len(data)),
                        source, 4 * MiB, indexed=True)
    assert await reader.read(0, 4096) == data[:4096]
    await trio.testing.wait_all_tasks_blocked()
    assert source.calls == [(0, BLOCK_SIZE)]


async def test_reads_within_what_was_fetched_fetch_it_not_again(tmp_path, nursery):
    reader, source, data = make_reader(tmp_path, nursery, 8 * MiB)
    assert await reader.read(3 * MiB + 10, 100) == data[3 * MiB + 10 : 3 * MiB + 110]
    (first,) = source.calls
    assert await reader.read(3 * MiB + 300 * KiB, 100) == data[3 * MiB + 300 * KiB : 3 * MiB + 300 * KiB + 100]
    await trio.testing.wait_all_tasks_blocked()
    # Read on within the first window: what follows may be fetched, what was fetched is not again.
    assert all(start >= first[1] for start, _ in source.calls[1:])


async def test_a_sequential_scan_fetches_each_byte_once_in_few_requests(tmp_path, nursery):
    size = 16 * MiB
    reader, source, data = make_reader(tmp_path, nursery, size, max_window=4 * MiB)
    for offset in range(0, size, READ):
        assert await reader.read(offset, READ) == data[offset : offset + READ]
        await trio.testing.wait_all_tasks_blocked()
        assert source.high_water >= offset + READ
        assert source.high_water <= min(size, offset + READ + 4 * MiB + BLOCK_SIZE), "never more than the cap ahead"
    assert source.bytes == size
    assert len(source.calls) <= 14 and len(source.calls) < size // READ // 4


async def test_read_at_and_past_the_end(tmp_path, nursery):
    size = 3 * BLOCK_SIZE + 100
    reader, source, data = make_reader(tmp_path, nursery, size)
    assert await reader.read(size, 10) == b""
    assert await reader.read(size + 5000, 10) == b""
    assert source.calls == []
    assert await reader.read(size - 50, 4096) == data[-50:]
    assert source.high_water == size


@pytest.mark.parametrize("offset, length", [(0, 3 * BLOCK_SIZE), (BLOCK_SIZE - 1, BLOCK_SIZE + 2), (123, 5 * BLOCK_SIZE)])
async def test_large_reads_span_blocks(tmp_path, nursery, offset, length):
    reader, source, data = make_reader(tmp_path, nursery, 6 * BLOCK_SIZE + 17)
    assert await reader.read(offset, length) == data[offset : offset + length]


# -- what the mutation run found unchecked ------------------------------------------------------


async def test_the_second_sequential_read_reaches_one_seek_window_past_itself(tmp_path, nursery):
    reader, source, data = make_reader(tmp_path, nursery, 16 * MiB)
    await reader.read(0, READ)
    await trio.testing.wait_all_tasks_blocked()
    assert source.high_water == SEEK_WINDOW  # a first read: its blocks and a seek window
    await reader.read(READ, READ)
    await trio.testing.wait_all_tasks_blocked()
    assert source.high_water == 2 * READ + SEEK_WINDOW


def test_reading_on_after_a_far_seek_back_is_sequential_again():
    readahead = ReadAhead(8 * MiB)
    for n in range(160):  # 20 MiB read in order
        readahead.advance(n * READ, READ)
    assert readahead.advance(0, READ) == SEEK_WINDOW_MAX  # back to the start: a seek
    assert readahead.sequential == 0
    assert readahead.advance(READ, READ) == SEEK_WINDOW_MAX  # and on from there: sequential, within it
    assert readahead.sequential == READ


@pytest.mark.parametrize("offset", [0, 12345, 3 * BLOCK_SIZE + 99])
async def test_a_one_byte_read(tmp_path, nursery, offset):
    reader, source, data = make_reader(tmp_path, nursery, 3 * BLOCK_SIZE + 100)
    assert await reader.read(offset, 1) == data[offset : offset + 1]


def test_a_seek_back_by_more_than_a_little_is_a_seek():
    """The slack that keeps the kernel's out-of-order readahead sequential reaches backward by
    SLACK only: a reader going back to re-read a header is seen seeking, and fetched for there."""
    readahead = ReadAhead(8 * MiB)
    for n in range(64):  # 8 MiB read in order
        readahead.advance(n * READ, READ)
    assert readahead.advance(6 * MiB, READ) == 6 * MiB + SEEK_WINDOW_MAX  # 2 MiB back: a seek
    assert readahead.sequential == 0


async def test_a_closed_reader_leaves_its_object_free_to_close_and_evict(tmp_path, nursery):
    """A file's cache object stays open (and is never evicted) while a reader holds it: closing
    the reader must let it go, or closed files would pin the disk cache."""
    reader, source, data = make_reader(tmp_path, nursery, 4 * BLOCK_SIZE)
    assert await reader.read(0, 100) == data[:100]
    await trio.testing.wait_all_tasks_blocked()
    cached = reader.cached
    assert cached.readers == 1
    reader.close()
    assert cached.readers == 0 and not cached.busy and reader.cached is None


async def test_a_read_that_arrives_after_close_opens_nothing(tmp_path, nursery):
    """FUSE may deliver a read after the release it raced with: nothing would ever close what it
    opened."""
    reader, source, data = make_reader(tmp_path, nursery, 4 * BLOCK_SIZE)
    reader.close()
    assert await reader.read(0, 100) == b""
    assert reader.cached is None and source.calls == []
