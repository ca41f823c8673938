"""Unit tests for `reader.py`: sequential detection (`ReadAhead`) and `FileReader` over a `BlockCache`."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from omicsfs.blockcache import BLOCK_SIZE, BlockCache, DiskCache, ObjectRef
from omicsfs.reader import FIRST_WINDOW, FileReader, ReadAhead

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
    cache = BlockCache(64 * MiB, DiskCache(tmp_path, 128 * MiB), nursery)
    source = CountingSource(data)
    return FileReader(cache, obj, source, max_window), source, data


# -- ReadAhead ------------------------------------------------------------------------------------


def test_first_read_prefetches_nothing():
    readahead = ReadAhead(8 * MiB)
    assert readahead.advance(0, READ) is None
    assert readahead.window == 0


def test_sequential_reads_double_the_window_up_to_the_cap():
    readahead = ReadAhead(8 * MiB)
    windows = []
    for n in range(8):
        readahead.advance(n * READ, READ)
        windows.append(readahead.window)
    assert windows == [0, 1 * MiB, 2 * MiB, 4 * MiB, 8 * MiB, 8 * MiB, 8 * MiB, 8 * MiB]


def test_window_never_below_first_window():
    readahead = ReadAhead(100 * KiB)
    assert readahead.max_window == FIRST_WINDOW
    readahead.advance(0, READ)
    readahead.advance(READ, READ)
    readahead.advance(2 * READ, READ)
    assert readahead.window == FIRST_WINDOW


def test_prefetch_ranges_are_ahead_contiguous_and_few():
    """Over a long sequential scan the ranges start where the last ended, and come in large steps."""
    readahead = ReadAhead(4 * MiB)
    size = 64 * MiB
    ranges = []
    for offset in range(0, size, READ):
        ahead = readahead.advance(offset, READ)
        if ahead is not None:
            start, end = ahead
            assert start >= offset + READ  # beyond the read itself
            assert end - (offset + READ) <= readahead.window  # never more than one window ahead
            ranges.append(ahead)
    for (_, end), (start, _) in zip(ranges, ranges[1:]):
        assert start == end  # no gap, no overlap
    assert ranges[0][0] == 2 * READ
    assert ranges[-1][1] >= size
    assert len(ranges) <= size // (2 * MiB) + 3  # topped up once per half window, not per read


def test_seek_resets_the_window():
    readahead = ReadAhead(8 * MiB)
    for n in range(6):
        readahead.advance(n * READ, READ)
    assert readahead.window == 8 * MiB
    assert readahead.advance(500 * MiB, READ) is None  # far away: random
    assert readahead.window == 0
    ahead = readahead.advance(500 * MiB + READ, READ)
    assert readahead.window == FIRST_WINDOW
    assert ahead == (500 * MiB + 2 * READ, 500 * MiB + 2 * READ + FIRST_WINDOW)


def test_backward_seek_resets_the_window():
    readahead = ReadAhead(8 * MiB)
    base = 100 * MiB
    for n in range(4):
        readahead.advance(base + n * READ, READ)
    assert readahead.window == 4 * MiB
    assert readahead.advance(0, READ) is None
    assert readahead.window == 0


def test_slightly_out_of_order_reads_stay_sequential():
    """The kernel sends readahead in parallel: reads may arrive a little out of order."""
    readahead = ReadAhead(8 * MiB)
    for offset in (0, READ, 3 * READ, 2 * READ, 4 * READ):
        readahead.advance(offset, READ)
    assert readahead.window == 8 * MiB  # four sequential reads after the first: 1, 2, 4, 8 MiB
    assert readahead.next_offset == 5 * READ


def test_random_reads_never_prefetch():
    readahead = ReadAhead(8 * MiB)
    rng = random.Random(7)
    offsets = [rng.randrange(0, 10_000) * 4 * MiB for _ in range(50)]
    previous = None
    for offset in offsets:
        ahead = readahead.advance(offset, 4096)
        if previous is not None and abs(offset - previous) > 2 * MiB:
            assert ahead is None and readahead.window == 0
        previous = offset


# -- FileReader -----------------------------------------------------------------------------------


async def test_random_read_fetches_only_its_blocks(tmp_path, nursery):
    reader, source, data = make_reader(tmp_path, nursery, 64 * BLOCK_SIZE)
    offset = 10 * BLOCK_SIZE - 1000  # straddles blocks 9 and 10
    assert await reader.read(offset, 4096) == data[offset : offset + 4096]
    await trio.testing.wait_all_tasks_blocked()
    assert source.bytes <= 2 * BLOCK_SIZE
    assert sorted(source.calls) == [(9 * BLOCK_SIZE, 11 * BLOCK_SIZE)]

    # Another small read far away: its one block only.
    offset = 50 * BLOCK_SIZE + 12345
    assert await reader.read(offset, 1000) == data[offset : offset + 1000]
    await trio.testing.wait_all_tasks_blocked()
    assert source.calls[1:] == [(50 * BLOCK_SIZE, 51 * BLOCK_SIZE)]
    assert source.bytes <= 3 * BLOCK_SIZE


async def test_random_reads_within_a_cached_block_fetch_nothing(tmp_path, nursery):
    reader, source, data = make_reader(tmp_path, nursery, 8 * BLOCK_SIZE)
    assert await reader.read(3 * BLOCK_SIZE + 10, 100) == data[3 * BLOCK_SIZE + 10 : 3 * BLOCK_SIZE + 110]
    calls = len(source.calls)
    assert await reader.read(3 * BLOCK_SIZE + 5000, 100) == data[3 * BLOCK_SIZE + 5000 : 3 * BLOCK_SIZE + 5100]
    assert len(source.calls) == calls


async def test_sequential_reads_grow_the_window(tmp_path, nursery):
    size = 64 * BLOCK_SIZE  # 16 MiB
    reader, source, data = make_reader(tmp_path, nursery, size, max_window=4 * MiB)
    windows = []
    for offset in range(0, size, READ):
        assert await reader.read(offset, READ) == data[offset : offset + READ]
        await trio.testing.wait_all_tasks_blocked()
        windows.append(reader.readahead.window)
        end = offset + READ
        # Fetched ahead, but never more than the window (plus the block rounding) beyond the read.
        assert source.high_water >= end
        assert source.high_water <= min(size, end + reader.readahead.window + BLOCK_SIZE)
    assert windows[:5] == [0, 1 * MiB, 2 * MiB, 4 * MiB, 4 * MiB]
    assert max(windows) == 4 * MiB
    # Every block fetched once, in a few large requests rather than one per read.
    assert source.bytes == size
    assert len(source.calls) <= 12
    assert len(source.calls) < size // READ // 4


async def test_seek_resets_the_prefetch(tmp_path, nursery):
    size = 16 * MiB
    reader, source, data = make_reader(tmp_path, nursery, size, max_window=4 * MiB)
    for offset in range(0, 6 * READ, READ):
        await reader.read(offset, READ)
    await trio.testing.wait_all_tasks_blocked()
    assert reader.readahead.window == 4 * MiB
    before = source.bytes

    far_block = 12 * MiB // BLOCK_SIZE  # well past the window and what was prefetched
    far = far_block * BLOCK_SIZE + 100
    assert await reader.read(far, READ) == data[far : far + READ]
    await trio.testing.wait_all_tasks_blocked()
    assert reader.readahead.window == 0
    assert source.bytes - before <= READ + 2 * BLOCK_SIZE
    last_block = (far + READ - 1) // BLOCK_SIZE
    assert all(start >= far_block * BLOCK_SIZE and end <= (last_block + 1) * BLOCK_SIZE for start, end in source.calls[-1:])

    # Reading on from there starts again with the first window.
    before = source.bytes
    assert await reader.read(far + READ, READ) == data[far + READ : far + 2 * READ]
    await trio.testing.wait_all_tasks_blocked()
    assert reader.readahead.window == FIRST_WINDOW
    assert 0 < source.bytes - before <= FIRST_WINDOW + 2 * BLOCK_SIZE


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


async def test_the_second_sequential_read_prefetches_exactly_one_window(tmp_path, nursery):
    reader, source, data = make_reader(tmp_path, nursery, 16 * MiB)
    await reader.read(0, READ)
    await trio.testing.wait_all_tasks_blocked()
    assert source.high_water == READ  # a first read is taken as random: its own blocks only
    await reader.read(READ, READ)
    await trio.testing.wait_all_tasks_blocked()
    assert source.high_water == 2 * READ + 1 * MiB  # this read's blocks and the first 1 MiB window after them


def test_reading_on_after_a_far_seek_back_is_sequential_again():
    readahead = ReadAhead(8 * MiB)
    for n in range(160):  # 20 MiB read in order
        readahead.advance(n * READ, READ)
    assert readahead.advance(0, READ) is None  # back to the start: a seek
    assert readahead.advance(READ, READ) == (2 * READ, 2 * READ + FIRST_WINDOW)  # and on from there: sequential


@pytest.mark.parametrize("offset", [0, 12345, 3 * BLOCK_SIZE + 99])
async def test_a_one_byte_read(tmp_path, nursery, offset):
    reader, source, data = make_reader(tmp_path, nursery, 3 * BLOCK_SIZE + 100)
    assert await reader.read(offset, 1) == data[offset : offset + 1]
