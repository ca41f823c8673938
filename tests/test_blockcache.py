"""Unit tests for the block cache: `ObjectRef`, `DiskCache` and `BlockCache`.

The remote side is a fake `Source` over bytes held in memory, which records every range it is
asked for, so that tests can count requests and check that no block is fetched twice.
"""

from __future__ import annotations

import logging
import os
import random
import zlib
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from omicsfs.blockcache import BLOCK_SIZE, BlockCache, DiskCache, ObjectRef
from omicsfs.errors import PlatformError

HEADER = DiskCache.HEADER.size
#: What one full block costs on disk.
ON_DISK = HEADER + BLOCK_SIZE


def make_object(name: str, size: int) -> tuple[ObjectRef, bytes]:
    """An object of `size` bytes with its (random, reproducible) content."""
    obj = ObjectRef.for_file("test", name, "v1", size)
    return obj, random.Random(name).randbytes(size)


def block_of(data: bytes, index: int) -> bytes:
    return data[index * BLOCK_SIZE : (index + 1) * BLOCK_SIZE]


class FakeSource:
    """A `Source` over `data`: streams [start, end) in chunks and records what it was asked for.

    `breaks` is a list of byte counts: the n-th request raises `httpx.ReadError` after sending that
    many bytes (None: the request completes). `error` is raised before any byte when set.
    """

    def __init__(self, data: bytes, *, chunk: int = 64 * 1024, delay: float = 0.0, breaks=(), error=None,
                 short: int | None = None):
        self.data = data
        self.chunk = chunk
        self.delay = delay
        self.breaks = list(breaks)
        self.error = error
        self.short = short  # end the first request's body cleanly after this many bytes
        self.calls: list[tuple[int, int]] = []
        self.sent = 0

    async def __call__(self, start: int, end: int):
        self.calls.append((start, end))
        call = len(self.calls) - 1
        if self.delay:
            await trio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        limit = self.breaks[call] if call < len(self.breaks) else None
        stop_at = end if limit is None else min(end, start + limit)
        if call == 0 and self.short is not None:
            stop_at = min(stop_at, start + self.short)
        position = start
        while position < stop_at:
            stop = min(stop_at, position + self.chunk)
            piece = self.data[position:stop]
            self.sent += len(piece)
            position = stop
            yield piece
            await trio.sleep(0)
        if limit is not None and stop_at < end:
            raise httpx.ReadError("connection reset by peer")

    def fetched_blocks(self) -> list[int]:
        """Every block index covered by a request, once per request that covered it."""
        blocks = []
        for start, end in self.calls:
            blocks += range(start // BLOCK_SIZE, -(-end // BLOCK_SIZE))
        return blocks


def files_on_disk(disk: DiskCache) -> dict[Path, int]:
    return {path: path.stat().st_size for path in disk.directory.rglob("*") if path.is_file()}


# -- ObjectRef ------------------------------------------------------------------------------------


def test_object_ref_identity():
    a = ObjectRef.for_file("basespace", "42", "etag-1", 1000)
    assert a == ObjectRef.for_file("basespace", "42", "etag-1", 1000)
    assert len(a.digest) == 16 and a.hex == a.digest.hex()
    others = [
        ObjectRef.for_file("sevenbridges", "42", "etag-1", 1000),
        ObjectRef.for_file("basespace", "43", "etag-1", 1000),
        ObjectRef.for_file("basespace", "42", "etag-2", 1000),
        ObjectRef.for_file("basespace", "42", "etag-1", 1001),
    ]
    assert len({a.digest, *(o.digest for o in others)}) == 5


@pytest.mark.parametrize(
    "size, count, last",
    [(0, 0, None), (1, 1, 1), (BLOCK_SIZE, 1, BLOCK_SIZE), (BLOCK_SIZE + 1, 2, 1), (5 * BLOCK_SIZE // 2, 3, BLOCK_SIZE // 2)],
)
def test_object_ref_blocks(size, count, last):
    obj = ObjectRef(b"\0" * 16, size)
    assert obj.block_count() == count
    assert sum(obj.block_length(i) for i in range(count)) == size
    if count:
        assert obj.block_length(count - 1) == last
        assert all(obj.block_length(i) == BLOCK_SIZE for i in range(count - 1))


# -- DiskCache ------------------------------------------------------------------------------------


def test_disk_put_get_roundtrip(tmp_path):
    obj, data = make_object("roundtrip", 2 * BLOCK_SIZE + 100)
    disk = DiskCache(tmp_path, 10 * ON_DISK)
    for index in range(3):
        assert disk.get(obj, index) is None
        disk.put(obj, index, block_of(data, index))
    for index in range(3):
        assert (obj, index) in disk
        assert disk.get(obj, index) == block_of(data, index)
    assert disk.used == 3 * HEADER + len(data)
    assert sum(files_on_disk(disk).values()) == disk.used
    # A second put of a block it holds changes nothing.
    disk.put(obj, 0, block_of(data, 0))
    assert disk.used == 3 * HEADER + len(data)


def test_disk_bytes_stay_within_capacity(tmp_path):
    capacity = 3 * ON_DISK + BLOCK_SIZE // 2  # room for 3 full blocks and change
    disk = DiskCache(tmp_path, capacity)
    rng = random.Random(1)
    for n in range(12):
        # Objects of one to three blocks whose last block has a random length.
        size = rng.randrange(1, 3 * BLOCK_SIZE)
        obj, data = make_object(f"many-{n}", size)
        for index in range(obj.block_count()):
            disk.put(obj, index, block_of(data, index))
            on_disk = files_on_disk(disk)
            assert disk.used <= capacity
            assert sum(on_disk.values()) == disk.used
            assert not any(path.suffix == ".tmp" for path in on_disk)
    assert disk.used > 2 * ON_DISK  # it did fill up rather than throw everything away


def test_disk_block_larger_than_capacity_is_not_stored(tmp_path):
    obj, data = make_object("big", BLOCK_SIZE)
    disk = DiskCache(tmp_path, BLOCK_SIZE)  # the header does not fit as well
    disk.put(obj, 0, data)
    assert disk.used == 0
    assert (obj, 0) not in disk
    assert files_on_disk(disk) == {}


def test_disk_evicts_least_recently_used(tmp_path):
    obj, data = make_object("lru", 6 * BLOCK_SIZE)
    disk = DiskCache(tmp_path, 3 * ON_DISK)
    for index in range(3):
        disk.put(obj, index, block_of(data, index))
    assert disk.get(obj, 0) == block_of(data, 0)  # block 0 is now the most recently used
    disk.put(obj, 3, block_of(data, 3))
    assert (obj, 1) not in disk  # the oldest went
    assert disk.get(obj, 1) is None
    assert disk.get(obj, 0) == block_of(data, 0)  # the recently read one survived
    disk.put(obj, 4, block_of(data, 4))
    assert (obj, 2) not in disk
    assert {i for i in range(6) if (obj, i) in disk} == {0, 3, 4}
    assert len(files_on_disk(disk)) == 3


def test_disk_survives_restart_in_mtime_order(tmp_path):
    obj, data = make_object("restart", 6 * BLOCK_SIZE)
    disk = DiskCache(tmp_path, 3 * ON_DISK)
    for index in range(3):
        disk.put(obj, index, block_of(data, index))
    # Give the blocks distinct, old mtimes: 2 oldest, then 0, then 1.
    for index, mtime in ((2, 1_000_000), (0, 2_000_000), (1, 3_000_000)):
        os.utime(disk._path(obj, index), (mtime, mtime))

    again = DiskCache(tmp_path, 3 * ON_DISK)
    assert again.used == disk.used == 3 * ON_DISK
    assert [again.get(obj, i) for i in range(3)] == [block_of(data, i) for i in range(3)]
    # Reading touched them all again (0, 1, 2 in that order), so restore the order and restart once more.
    for index, mtime in ((2, 1_000_000), (0, 2_000_000), (1, 3_000_000)):
        os.utime(again._path(obj, index), (mtime, mtime))
    third = DiskCache(tmp_path, 3 * ON_DISK)
    third.put(obj, 3, block_of(data, 3))
    assert (obj, 2) not in third and not third._path(obj, 2).exists()  # oldest by mtime
    third.put(obj, 4, block_of(data, 4))
    assert (obj, 0) not in third
    assert third.get(obj, 1) == block_of(data, 1)


def test_disk_read_order_persists_across_restart(tmp_path):
    """A `get` renews the block's mtime, so what was read last survives the next mount's evictions."""
    obj, data = make_object("touch", 5 * BLOCK_SIZE)
    disk = DiskCache(tmp_path, 3 * ON_DISK)
    for index, mtime in ((0, 1_000_000), (1, 2_000_000), (2, 3_000_000)):
        disk.put(obj, index, block_of(data, index))
        os.utime(disk._path(obj, index), (mtime, mtime))
    assert disk.get(obj, 0) == block_of(data, 0)
    again = DiskCache(tmp_path, 3 * ON_DISK)
    again.put(obj, 3, block_of(data, 3))
    assert (obj, 1) not in again  # 1 is now the oldest
    assert again.get(obj, 0) == block_of(data, 0)


def test_disk_restart_with_smaller_capacity_evicts_oldest(tmp_path):
    obj, data = make_object("shrink", 4 * BLOCK_SIZE)
    disk = DiskCache(tmp_path, 4 * ON_DISK)
    for index in range(4):
        disk.put(obj, index, block_of(data, index))
        os.utime(disk._path(obj, index), (1_000_000 + index, 1_000_000 + index))
    smaller = DiskCache(tmp_path, 2 * ON_DISK)
    assert smaller.used == 2 * ON_DISK
    assert sum(files_on_disk(smaller).values()) == smaller.used
    assert {i for i in range(4) if (obj, i) in smaller} == {2, 3}


def test_disk_restart_removes_interrupted_writes(tmp_path):
    obj, data = make_object("tmp", BLOCK_SIZE)
    disk = DiskCache(tmp_path, 4 * ON_DISK)
    disk.put(obj, 0, data)
    leftover = disk._path(obj, 0).parent / "deadbeef.tmp"
    leftover.write_bytes(b"half a block")
    again = DiskCache(tmp_path, 4 * ON_DISK)
    assert not leftover.exists()
    assert again.used == ON_DISK
    assert again.get(obj, 0) == data


def _edit_record(disk: DiskCache, obj: ObjectRef, index: int, edit) -> None:
    """Apply `edit(raw, offset)` to the segment file holding the block, whose record starts at offset."""
    path, offset = disk._record(obj, index)
    raw = bytearray(path.read_bytes())
    path.write_bytes(bytes(edit(raw, offset)))


def _truncate(disk: DiskCache, obj: ObjectRef, index: int, data: bytes) -> None:
    _edit_record(disk, obj, index, lambda raw, at: raw[: at + (HEADER + len(data)) // 2])


def _truncate_into_header(disk: DiskCache, obj: ObjectRef, index: int, data: bytes) -> None:
    _edit_record(disk, obj, index, lambda raw, at: raw[: at + HEADER - 3])


def _flip_data_byte(disk: DiskCache, obj: ObjectRef, index: int, data: bytes) -> None:
    def flip(raw: bytearray, at: int) -> bytearray:
        raw[at + HEADER + 1234] ^= 0x40
        return raw

    _edit_record(disk, obj, index, flip)


def _header(header: bytes):
    def replace(raw: bytearray, at: int) -> bytearray:
        raw[at : at + HEADER] = header
        return raw

    return replace


def _foreign_header(disk: DiskCache, obj: ObjectRef, index: int, data: bytes) -> None:
    # A well-formed header, with a valid CRC, of another object.
    other = ObjectRef.for_file("test", "someone else", "v1", obj.size)
    _edit_record(disk, obj, index, _header(DiskCache.HEADER.pack(DiskCache.MAGIC, other.digest, index, len(data), zlib.crc32(data))))


def _wrong_index(disk: DiskCache, obj: ObjectRef, index: int, data: bytes) -> None:
    _edit_record(disk, obj, index, _header(DiskCache.HEADER.pack(DiskCache.MAGIC, obj.digest, index + 7, len(data), zlib.crc32(data))))


def _wrong_magic(disk: DiskCache, obj: ObjectRef, index: int, data: bytes) -> None:
    _edit_record(disk, obj, index, _header(DiskCache.HEADER.pack(b"OTHERFMT", obj.digest, index, len(data), zlib.crc32(data))))


CORRUPTIONS = [_truncate, _truncate_into_header, _flip_data_byte, _foreign_header, _wrong_index, _wrong_magic]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_disk_discards_torn_block(tmp_path, caplog, corrupt):
    obj, data = make_object("torn", 3 * BLOCK_SIZE)
    disk = DiskCache(tmp_path, 10 * ON_DISK)
    for index in range(3):
        disk.put(obj, index, block_of(data, index))
    path = disk._path(obj, 1)
    corrupt(disk, obj, 1, block_of(data, 1))
    with caplog.at_level(logging.WARNING, logger="omicsfs.blockcache"):
        assert disk.get(obj, 1) is None
    assert any(path.name in record.getMessage() for record in caplog.records)
    assert not path.exists()
    assert (obj, 1) not in disk
    assert disk.used == 2 * ON_DISK
    # The other blocks are untouched.
    assert disk.get(obj, 0) == block_of(data, 0)
    assert disk.get(obj, 2) == block_of(data, 2)


def test_disk_block_deleted_behind_its_back(tmp_path):
    obj, data = make_object("gone", 2 * BLOCK_SIZE)
    disk = DiskCache(tmp_path, 10 * ON_DISK)
    disk.put(obj, 0, block_of(data, 0))
    disk._path(obj, 0).unlink()
    assert disk.get(obj, 0) is None
    assert (obj, 0) not in disk
    assert disk.used == 0


# -- BlockCache -----------------------------------------------------------------------------------


def new_cache(tmp_path, nursery, *, memory=64 * BLOCK_SIZE, disk=64 * ON_DISK, disk_cache=None) -> BlockCache:
    return BlockCache(memory, disk_cache or DiskCache(tmp_path, disk), nursery)


async def test_get_returns_each_block(tmp_path, nursery):
    obj, data = make_object("blocks", 3 * BLOCK_SIZE + 777)
    source = FakeSource(data)
    cache = new_cache(tmp_path, nursery)
    for index in range(obj.block_count()):
        assert await cache.get(obj, source, index) == block_of(data, index)
    assert len(await cache.get(obj, source, 3)) == 777
    assert cache.stats.requests == 4
    assert cache.stats.bytes_fetched == len(data)
    # Again: from memory, no request.
    assert await cache.get(obj, source, 2) == block_of(data, 2)
    assert cache.stats.requests == 4 and cache.stats.memory_hits >= 1


async def test_blocks_come_back_from_disk(tmp_path, nursery):
    obj, data = make_object("from-disk", 3 * BLOCK_SIZE)
    source = FakeSource(data)
    first = new_cache(tmp_path, nursery)
    cache_disk = first.disk
    first.prefetch(obj, source, 0, 2)
    for index in range(3):
        await first.get(obj, source, index)
    assert len(source.calls) == 1
    await first.flush()  # disk writes happen behind the reads
    # A new BlockCache (a new mount) on the same directory: empty memory, full disk.
    second = new_cache(tmp_path, nursery, disk_cache=DiskCache(tmp_path, 64 * ON_DISK))
    assert second.cached(obj, 1) == block_of(data, 1)
    assert second.stats.disk_hits == 1
    assert [await second.get(obj, source, i) for i in range(3)] == [block_of(data, i) for i in range(3)]
    assert len(source.calls) == 1 and second.stats.requests == 0
    assert cache_disk.used == 3 * ON_DISK


async def test_memory_stays_within_its_byte_budget(tmp_path, nursery):
    obj, data = make_object("memory", 12 * BLOCK_SIZE)
    source = FakeSource(data)
    budget = 3 * BLOCK_SIZE + BLOCK_SIZE // 2
    cache = new_cache(tmp_path, nursery, memory=budget)
    for index in range(obj.block_count()):
        assert await cache.get(obj, source, index) == block_of(data, index)
        assert cache.memory.currsize <= budget
        assert sum(len(block) for block in cache.memory.values()) <= budget
    assert len(cache.memory) == 3
    # The memory LRU keeps the most recent blocks.
    assert set(cache.memory.keys()) == {(obj.digest, i) for i in (9, 10, 11)}


async def test_memory_lru_keeps_recently_read_block(tmp_path, nursery):
    obj, data = make_object("memory-lru", 5 * BLOCK_SIZE)
    source = FakeSource(data)
    cache = new_cache(tmp_path, nursery, memory=3 * BLOCK_SIZE)
    for index in range(3):
        await cache.get(obj, source, index)
    assert cache.cached(obj, 0) is not None  # block 0 is now the most recent
    await cache.get(obj, source, 3)
    keys = set(cache.memory.keys())
    assert (obj.digest, 0) in keys and (obj.digest, 1) not in keys


async def test_tiny_memory_budget_still_holds_one_block(tmp_path, nursery):
    obj, data = make_object("tiny", 2 * BLOCK_SIZE)
    source = FakeSource(data)
    cache = new_cache(tmp_path, nursery, memory=1000)
    assert await cache.get(obj, source, 0) == block_of(data, 0)
    assert await cache.get(obj, source, 1) == block_of(data, 1)
    assert cache.memory.currsize <= BLOCK_SIZE


async def test_concurrent_readers_share_one_request(tmp_path, nursery):
    obj, data = make_object("concurrent", 4 * BLOCK_SIZE)
    source = FakeSource(data, delay=0.02)
    cache = new_cache(tmp_path, nursery)
    results: list[bytes] = []

    async def reader():
        results.append(await cache.get(obj, source, 2))

    async with trio.open_nursery() as readers:
        for _ in range(10):
            readers.start_soon(reader)
    assert len(source.calls) == 1
    assert source.calls[0] == (2 * BLOCK_SIZE, 3 * BLOCK_SIZE)
    assert cache.stats.requests == 1
    assert results == [block_of(data, 2)] * 10


async def test_overlapping_prefetch_and_get_fetch_each_block_once(tmp_path, nursery):
    obj, data = make_object("overlap", 8 * BLOCK_SIZE)
    source = FakeSource(data, delay=0.01)
    cache = new_cache(tmp_path, nursery)
    results: dict[int, bytes] = {}

    async def get(index):
        results[index] = await cache.get(obj, source, index)

    cache.prefetch(obj, source, 0, 3)
    async with trio.open_nursery() as readers:
        readers.start_soon(get, 2)
        readers.start_soon(get, 5)
        cache.prefetch(obj, source, 1, 6)
        cache.prefetch(obj, source, 0, 7)
        for index in range(8):
            readers.start_soon(get, index)
    assert results == {i: block_of(data, i) for i in range(8)}
    blocks = source.fetched_blocks()
    assert sorted(blocks) == list(range(8))  # each block exactly once
    assert cache.stats.bytes_fetched == len(data)


async def test_prefetch_clamps_to_the_object(tmp_path, nursery):
    obj, data = make_object("clamp", 2 * BLOCK_SIZE + 10)
    source = FakeSource(data)
    cache = new_cache(tmp_path, nursery)
    cache.prefetch(obj, source, 0, 100)
    await trio.testing.wait_all_tasks_blocked()
    assert source.calls == [(0, len(data))]
    assert [cache.cached(obj, i) for i in range(3)] == [block_of(data, i) for i in range(3)]


async def test_long_runs_are_split_into_several_requests(tmp_path, nursery):
    obj, data = make_object("split", 5 * BLOCK_SIZE)
    source = FakeSource(data)
    cache = new_cache(tmp_path, nursery)
    cache.MAX_REQUEST = 2 * BLOCK_SIZE
    cache.prefetch(obj, source, 0, 4)
    assert [await cache.get(obj, source, i) for i in range(5)] == [block_of(data, i) for i in range(5)]
    assert sorted(source.calls) == [(0, 2 * BLOCK_SIZE), (2 * BLOCK_SIZE, 4 * BLOCK_SIZE), (4 * BLOCK_SIZE, 5 * BLOCK_SIZE)]


async def test_prefetch_skips_blocks_already_cached(tmp_path, nursery):
    obj, data = make_object("holes", 6 * BLOCK_SIZE)
    source = FakeSource(data)
    cache = new_cache(tmp_path, nursery)
    await cache.get(obj, source, 1)
    await cache.get(obj, source, 4)
    cache.prefetch(obj, source, 0, 5)
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(source.calls) == [
        (0, BLOCK_SIZE), (BLOCK_SIZE, 2 * BLOCK_SIZE), (2 * BLOCK_SIZE, 4 * BLOCK_SIZE),
        (4 * BLOCK_SIZE, 5 * BLOCK_SIZE), (5 * BLOCK_SIZE, 6 * BLOCK_SIZE),
    ]
    assert sorted(source.fetched_blocks()) == list(range(6))


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
async def test_torn_disk_block_is_fetched_again(tmp_path, nursery, caplog, corrupt):
    obj, data = make_object("torn-refetch", 3 * BLOCK_SIZE)
    source = FakeSource(data)
    first = new_cache(tmp_path, nursery)
    first.prefetch(obj, source, 0, 2)
    await first.get(obj, source, 2)
    assert len(source.calls) == 1
    await first.flush()
    corrupt(first.disk, obj, 1, block_of(data, 1))

    # Remount: memory is empty, the disk holds the torn block.
    second = new_cache(tmp_path, nursery, disk_cache=DiskCache(tmp_path, 64 * ON_DISK))
    assert (obj, 1) in second.disk
    with caplog.at_level(logging.WARNING, logger="omicsfs.blockcache"):
        assert await second.get(obj, source, 1) == block_of(data, 1)
    assert any("torn or corrupt" in r.getMessage() for r in caplog.records)
    assert source.calls[1:] == [(BLOCK_SIZE, 2 * BLOCK_SIZE)]
    # The block on disk is whole again.
    await second.flush()
    assert DiskCache(tmp_path, 64 * ON_DISK).get(obj, 1) == block_of(data, 1)


async def test_prefetch_over_a_torn_block_still_serves_good_bytes(tmp_path, nursery):
    obj, data = make_object("torn-prefetch", 3 * BLOCK_SIZE)
    source = FakeSource(data)
    first = new_cache(tmp_path, nursery)
    first.prefetch(obj, source, 0, 2)
    await first.get(obj, source, 2)
    await first.flush()
    _flip_data_byte(first.disk, obj, 1, block_of(data, 1))
    second = new_cache(tmp_path, nursery, disk_cache=DiskCache(tmp_path, 64 * ON_DISK))
    second.prefetch(obj, source, 0, 2)
    assert [await second.get(obj, source, i) for i in range(3)] == [block_of(data, i) for i in range(3)]


async def test_fetch_error_reaches_every_waiter(tmp_path, nursery):
    obj, data = make_object("error", 4 * BLOCK_SIZE)
    error = PlatformError("file: GET https://store.example/obj?… answered 500")
    source = FakeSource(data, delay=0.01, error=error)
    cache = new_cache(tmp_path, nursery)
    caught: list[BaseException] = []

    async def reader(index):
        try:
            await cache.get(obj, source, index)
        except PlatformError as exc:
            caught.append(exc)

    cache.prefetch(obj, source, 0, 3)
    async with trio.open_nursery() as readers:
        for index in (0, 1, 1, 2, 3, 3, 3):
            readers.start_soon(reader, index)
    assert len(source.calls) == 1
    assert len(caught) == 7
    assert all(exc is error for exc in caught)
    assert cache._pending == {}

    # The failure is not cached: the next read asks again, and succeeds.
    source.error = None
    assert await cache.get(obj, source, 3) == block_of(data, 3)
    assert len(source.calls) == 2


async def test_unexpected_source_error_reaches_waiters_and_is_logged(tmp_path, nursery, caplog):
    obj, data = make_object("bug", 2 * BLOCK_SIZE)
    source = FakeSource(data, error=ValueError("a bug in a platform module"))
    cache = new_cache(tmp_path, nursery)
    with caplog.at_level(logging.ERROR, logger="omicsfs.blockcache"):
        with pytest.raises(ValueError, match="a bug"):
            await cache.get(obj, source, 0)
    assert any(record.exc_info for record in caplog.records)


async def test_stream_broken_mid_body_is_resumed(tmp_path, nursery, caplog):
    obj, data = make_object("resume", 4 * BLOCK_SIZE + 1000)
    # The first request breaks 1.5 blocks in: block 0 is whole, block 1 is not.
    source = FakeSource(data, chunk=50_000, breaks=[BLOCK_SIZE + BLOCK_SIZE // 2])
    cache = new_cache(tmp_path, nursery)
    with caplog.at_level(logging.INFO, logger="omicsfs.blockcache"):
        cache.prefetch(obj, source, 0, 4)
        assert [await cache.get(obj, source, i) for i in range(5)] == [block_of(data, i) for i in range(5)]
    assert source.calls == [(0, len(data)), (BLOCK_SIZE, len(data))]
    assert cache.stats.requests == 2
    assert any("resuming" in r.getMessage() for r in caplog.records)
    # What is on disk is right too.
    await cache.flush()
    fresh = DiskCache(tmp_path, 64 * ON_DISK)
    assert b"".join(fresh.get(obj, i) for i in range(5)) == data


async def test_stream_broken_twice_is_resumed_each_time(tmp_path, nursery):
    obj, data = make_object("resume-twice", 4 * BLOCK_SIZE)
    source = FakeSource(data, chunk=30_000, breaks=[BLOCK_SIZE - 1, 2 * BLOCK_SIZE + 10])
    cache = new_cache(tmp_path, nursery)
    cache.prefetch(obj, source, 0, 3)
    assert b"".join([await cache.get(obj, source, i) for i in range(4)]) == data
    assert source.calls == [(0, len(data)), (0, len(data)), (2 * BLOCK_SIZE, len(data))]


async def test_body_ending_early_is_resumed(tmp_path, nursery):
    obj, data = make_object("short", 3 * BLOCK_SIZE)
    source = FakeSource(data, short=BLOCK_SIZE + 7)  # the first body just stops, without an error
    cache = new_cache(tmp_path, nursery)
    cache.prefetch(obj, source, 0, 2)
    assert b"".join([await cache.get(obj, source, i) for i in range(3)]) == data
    assert source.calls == [(0, len(data)), (BLOCK_SIZE, len(data))]


async def test_stream_that_keeps_breaking_fails_every_waiter(tmp_path, nursery):
    obj, data = make_object("broken", 3 * BLOCK_SIZE)
    source = FakeSource(data, chunk=10_000, breaks=[100] * 10)
    cache = new_cache(tmp_path, nursery)
    caught = []

    async def reader(index):
        with pytest.raises(PlatformError) as info:
            await cache.get(obj, source, index)
        caught.append(info.value)

    cache.prefetch(obj, source, 0, 2)
    async with trio.open_nursery() as readers:
        for index in (0, 1, 2, 2):
            readers.start_soon(reader, index)
    assert len(source.calls) == BlockCache.RESUMES + 1
    assert len(caught) == 4 and len({id(e) for e in caught}) == 1
    assert isinstance(caught[0].__cause__, httpx.ReadError)
    assert cache._pending == {}


async def test_a_run_of_consecutive_blocks_is_one_segment_file(tmp_path):
    obj, data = make_object("segment", 5 * BLOCK_SIZE)
    disk = DiskCache(tmp_path, 64 * ON_DISK)
    await disk.put_async([(obj, index, block_of(data, index)) for index in (4, 0, 2, 1)])
    assert len(files_on_disk(disk)) == 2, "blocks 0-2 in one segment, block 4 in another"
    assert disk.used == sum(files_on_disk(disk).values()) == 4 * ON_DISK
    # A remount finds every block from the segments' names and records.
    again = DiskCache(tmp_path, 64 * ON_DISK)
    assert [again.get(obj, index) for index in (0, 1, 2, 4)] == [block_of(data, index) for index in (0, 1, 2, 4)]
    assert (obj, 3) not in again


# -- what the mutation run found unchecked ------------------------------------------------------


class StalledDisk(DiskCache):
    """A disk that takes no write until released: the queue in front of it fills up."""

    def __init__(self, *args):
        super().__init__(*args)
        self.release = trio.Event()
        self.batches: list[int] = []

    async def put_async(self, blocks):
        self.batches.append(len(blocks))
        await self.release.wait()
        await super().put_async(blocks)


@pytest.mark.parametrize("memory, queued", [(64 * 1024 * 1024, 128), (1024 * 1024 * 1024, 256)])
async def test_blocks_that_find_the_disk_queue_full_are_served_but_not_cached(tmp_path, nursery, memory, queued):
    # SEMANTICS: the disk queue holds at most 16 MiB, or an eighth of the memory cache if less;
    # a long read is served whole while the disk lags, and GETs are at most 16 MiB.
    obj, data = make_object("stalled", 400 * BLOCK_SIZE)
    source = FakeSource(data)
    disk = StalledDisk(tmp_path, 1024 * ON_DISK)
    cache = BlockCache(memory, disk, nursery)
    cache.prefetch(obj, source, 0, 399)
    assert b"".join([await cache.get(obj, source, i) for i in range(400)]) == data
    assert sorted(source.calls) == [(0, 256 * BLOCK_SIZE), (256 * BLOCK_SIZE, 400 * BLOCK_SIZE)]
    (writing,) = disk.batches  # the batch the writer took before the disk stalled
    assert cache.stats.disk_writes_skipped == 400 - writing - queued
    disk.release.set()
    await cache.flush()
    assert disk.batches[1] == 64 and all(size <= 64 for size in disk.batches)  # written 64 blocks at a time
    assert sum(disk.batches) == writing + queued
    assert sum((obj, i) in disk for i in range(400)) == writing + queued


async def test_a_block_outside_the_object_is_refused(tmp_path, nursery):
    obj, data = make_object("outside", 2 * BLOCK_SIZE)
    cache = new_cache(tmp_path, nursery)
    for index in (-1, 2, 3):
        with pytest.raises(ValueError):
            await cache.get(obj, FakeSource(data), index)


def test_disk_block_exactly_as_large_as_the_cache_is_stored(tmp_path):
    obj, data = make_object("exact", BLOCK_SIZE)
    disk = DiskCache(tmp_path, ON_DISK)
    disk.put(obj, 0, data)
    assert disk.get(obj, 0) == data and disk.used == ON_DISK


async def test_a_batch_larger_than_the_cache_keeps_what_fits(tmp_path):
    obj, data = make_object("batch", 10 * BLOCK_SIZE)
    disk = DiskCache(tmp_path, 3 * ON_DISK)
    await disk.put_async([(obj, index, block_of(data, index)) for index in (0, 2, 4, 6, 8)])  # five runs of one
    assert disk.used == 3 * ON_DISK
    assert [index for index in range(10) if (obj, index) in disk] == [0, 2, 4]


def test_litter_in_the_cache_directory_is_removed(tmp_path):
    obj, data = make_object("litter", BLOCK_SIZE)
    disk = DiskCache(tmp_path, 4 * ON_DISK)
    disk.put(obj, 0, data)
    litter = [disk.directory / "ab" / "notes", disk.directory / "cd" / "x.1.2.3.tmp"]
    for path in litter:
        path.write_bytes(b"not a segment")
    again = DiskCache(tmp_path, 4 * ON_DISK)
    assert not any(path.exists() for path in litter)
    assert again.get(obj, 0) == data and again.used == ON_DISK


def test_a_block_gone_from_disk_is_a_quiet_miss(tmp_path, caplog):
    obj, data = make_object("quiet", BLOCK_SIZE)
    disk = DiskCache(tmp_path, 4 * ON_DISK)
    disk.put(obj, 0, data)
    disk._path(obj, 0).unlink()
    with caplog.at_level(logging.WARNING, logger="omicsfs.blockcache"):
        assert disk.get(obj, 0) is None
    assert caplog.records == []  # evicted by another process, say: nothing to warn about


async def test_each_run_of_consecutive_blocks_is_its_own_segment(tmp_path):
    obj, data = make_object("runs", 8 * BLOCK_SIZE)
    disk = DiskCache(tmp_path, 64 * ON_DISK)
    await disk.put_async([(obj, index, block_of(data, index)) for index in (5, 0, 4, 1)])
    assert sorted(files_on_disk(disk).values()) == [2 * ON_DISK, 2 * ON_DISK]  # 0-1 and 4-5


def test_cache_files_are_private(tmp_path):
    obj, data = make_object("private", BLOCK_SIZE)
    disk = DiskCache(tmp_path, 4 * ON_DISK)
    disk.put(obj, 0, data)
    (path,) = files_on_disk(disk)
    assert path.stat().st_mode & 0o777 == 0o600  # cached bytes of private data: the owner's alone


async def test_a_segment_that_cannot_be_written_is_skipped_and_the_rest_written(tmp_path, caplog):
    obj, data = make_object("unwritable", 8 * BLOCK_SIZE)
    disk = DiskCache(tmp_path, 64 * ON_DISK)
    blocked = Path(disk._segment(obj, 0, 2))
    blocked.mkdir()  # a directory where the first segment must go: its rename fails
    with caplog.at_level(logging.WARNING, logger="omicsfs.blockcache"):
        await disk.put_async([(obj, index, block_of(data, index)) for index in (0, 1, 4, 5)])
    assert any("cannot write" in record.getMessage() for record in caplog.records)
    assert [(obj, index) in disk for index in (0, 1, 4, 5)] == [False, False, True, True]
    assert disk.get(obj, 4) == block_of(data, 4) and disk.used == 2 * ON_DISK
    assert not [path for path in disk.directory.rglob("*.tmp")]


async def test_a_source_that_sends_more_than_asked_is_not_read_further(tmp_path, nursery):
    obj, data = make_object("more", 4 * BLOCK_SIZE)
    consumed = []

    async def chatty(start: int, end: int):
        for position in range(start, len(data), 1000):  # ignores `end`
            consumed.append(position)
            yield data[position : position + 1000]

    cache = new_cache(tmp_path, nursery)
    assert await cache.get(obj, chatty, 1) == block_of(data, 1)
    assert len(consumed) == 66  # the chunks that make up the block (66 x 1000 bytes), and no more


async def test_memory_hits_are_counted(tmp_path, nursery):
    obj, data = make_object("hits", 2 * BLOCK_SIZE)
    cache = new_cache(tmp_path, nursery)
    await cache.get(obj, FakeSource(data), 0)
    assert cache.stats.memory_hits == 0
    await cache.get(obj, FakeSource(data), 0)
    assert cache.stats.memory_hits == 1
