"""Unit tests for the block cache: `ObjectRef`, `ObjectStore` and `BlockCache`.

The remote side is a fake `Source` over bytes held in memory, which records every range it is
asked for, so that tests can count requests and check that no block is fetched twice.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from omicsfs.blockcache import BLOCK_SIZE, BlockCache, ObjectRef, ObjectStore
from omicsfs.errors import PlatformError

MiB = 1024 * 1024


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


def objects_on_disk(store: ObjectStore) -> set[str]:
    return {path.stem for path in store.directory.glob("*/*.data")}


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


# -- reading through the cache ------------------------------------------------------------------


#: Two boots of the machine: blocks cached in one are checked against their CRC in the other.
BOOT, REBOOT = b"boot-one-16bytes", b"boot-two-16bytes"


def new_cache(tmp_path, nursery, capacity: int = 256 * MiB, boot: bytes = BOOT) -> BlockCache:
    return BlockCache(ObjectStore(tmp_path, capacity, boot=boot), nursery)


def tear(path: str, offset: int, data: bytes) -> None:
    """Change the byte at `offset` of a cache file, as a machine crash can leave a block."""
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(bytes([data[offset] ^ 0xFF]))


async def read_all(cache: BlockCache, obj: ObjectRef, source, step: int = 100_000) -> bytes:
    cached = cache.open(obj)
    try:
        return b"".join([await cache.read(cached, source, offset, step) for offset in range(0, obj.size, step)])
    finally:
        cache.close(cached)


async def test_reads_fetch_each_block_once_and_serve_the_right_bytes(tmp_path, nursery):
    obj, data = make_object("whole", 3 * BLOCK_SIZE + 777)
    source = FakeSource(data, chunk=50_000)  # chunks that straddle blocks
    cache = new_cache(tmp_path, nursery)
    assert await read_all(cache, obj, source) == data
    assert sorted(source.fetched_blocks()) == [0, 1, 2, 3]
    assert cache.stats.bytes_fetched == len(data)
    hits, misses = cache.stats.hits, cache.stats.misses
    assert await read_all(cache, obj, source) == data  # again: from the cache
    assert sorted(source.fetched_blocks()) == [0, 1, 2, 3]
    assert (cache.stats.hits, cache.stats.misses) == (hits + 2, misses)


async def test_a_read_asks_one_request_for_its_blocks_and_those_ahead(tmp_path, nursery):
    obj, data = make_object("ahead", 40 * BLOCK_SIZE)
    source = FakeSource(data)
    cache = new_cache(tmp_path, nursery)
    cached = cache.open(obj)
    assert await cache.read(cached, source, 10, 100, ahead=7) == data[10:110]
    assert source.calls == [(0, 8 * BLOCK_SIZE)]
    assert await cache.read(cached, source, 5 * BLOCK_SIZE, 10) == data[5 * BLOCK_SIZE : 5 * BLOCK_SIZE + 10]
    assert len(source.calls) == 1


async def test_long_runs_are_split_into_several_requests(tmp_path, nursery):
    obj, data = make_object("long", 2 * BlockCache.MAX_REQUEST + BLOCK_SIZE)
    source = FakeSource(data, chunk=1 << 20)
    cache = new_cache(tmp_path, nursery)
    cached = cache.open(obj)
    assert await cache.read(cached, source, 0, 10, ahead=obj.block_count() - 1) == data[:10]
    assert [end - start for start, end in sorted(source.calls)] == [BlockCache.MAX_REQUEST, BlockCache.MAX_REQUEST, BLOCK_SIZE]


async def test_concurrent_readers_of_a_block_cause_one_request(tmp_path, nursery):
    obj, data = make_object("shared", 4 * BLOCK_SIZE)
    source = FakeSource(data, delay=0.05)
    cache = new_cache(tmp_path, nursery)
    cached = cache.open(obj)
    results = []

    async def reader(offset):
        results.append(await cache.read(cached, source, offset, 1000))

    async with trio.open_nursery() as readers:
        for offset in (0, 10, 5000, BLOCK_SIZE - 1000, 0):
            readers.start_soon(reader, offset)
    assert len(source.calls) == 1 and len(results) == 5


async def test_a_remount_reads_from_disk_with_no_request(tmp_path, nursery):
    obj, data = make_object("remount", 5 * BLOCK_SIZE + 3)
    assert await read_all(new_cache(tmp_path, nursery), obj, FakeSource(data)) == data
    source = FakeSource(data)
    assert await read_all(new_cache(tmp_path, nursery), obj, source) == data
    assert source.calls == []


def resident(path: str) -> int:
    """Bytes of a file in the kernel's page cache (util-linux's fincore, which asks mincore)."""
    done = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", path],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


@pytest.fixture
def disk_dir():
    """A directory on the checkout's disk: the page cache of a tmpfs (a CI runner's /tmp may be one)
    is its storage, and cannot be dropped."""
    build = Path(__file__).resolve().parents[1] / "build"
    build.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="test-page-cache-", dir=build))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_a_reader_of_the_disk_cache_has_its_window_read_from_disk_ahead_of_it(disk_dir, nursery):
    """After the page cache was dropped, the blocks ahead of a reader are asked of the disk at
    once (posix_fadvise), so that its next reads find them in memory: a pread that waits for the
    disk holds up the event loop and every other read."""
    obj, data = make_object("reread", 64 * BLOCK_SIZE)
    assert await read_all(new_cache(disk_dir, nursery), obj, FakeSource(data)) == data
    cache = new_cache(disk_dir, nursery)  # a remount
    data_path, _ = cache.store.paths(obj)
    fd = os.open(data_path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the page cache dropped, for this file
    finally:
        os.close(fd)
    assert resident(data_path) <= BLOCK_SIZE, f"{disk_dir}'s file system kept the file's pages: nothing to measure"
    cached = cache.open(obj)
    source = FakeSource(data)
    assert await cache.read(cached, source, 0, 1000, ahead=47) == data[:1000]  # a window of 48 blocks
    with trio.move_on_after(5):
        while resident(data_path) < 48 * BLOCK_SIZE:
            await trio.sleep(0.02)
    # The window, and not the whole file (the kernel's own readahead for one block is far smaller).
    assert 48 * BLOCK_SIZE <= resident(data_path) < 64 * BLOCK_SIZE
    assert source.calls == []
    cache.close(cached)


async def test_a_torn_block_from_disk_is_fetched_again_never_served(tmp_path, nursery):
    obj, data = make_object("torn", 4 * BLOCK_SIZE)
    first = new_cache(tmp_path, nursery)
    assert await read_all(first, obj, FakeSource(data)) == data
    data_path, _ = first.store.paths(obj)
    tear(data_path, 2 * BLOCK_SIZE + 123, data)  # block 2 torn by a crash of the machine
    source = FakeSource(data)
    second = new_cache(tmp_path, nursery, boot=REBOOT)
    assert await read_all(second, obj, source) == data
    assert source.fetched_blocks() == [2]
    assert second.stats.torn_blocks == 1


async def test_blocks_cached_in_this_boot_are_served_unchecked_after_a_remount(tmp_path, nursery):
    # A daemon killed mid-write cannot tear a block (its bytes are written before its record, and
    # the page cache holds both): within one boot a remount trusts the cache and pays no CRC.
    obj, data = make_object("same-boot", 4 * BLOCK_SIZE)
    first = new_cache(tmp_path, nursery)
    assert await read_all(first, obj, FakeSource(data)) == data
    data_path, _ = first.store.paths(obj)
    tear(data_path, 2 * BLOCK_SIZE + 123, data)  # only visible if it were checked
    source = FakeSource(data)
    second = new_cache(tmp_path, nursery)
    served = await read_all(second, obj, source)
    assert source.calls == [] and second.stats.torn_blocks == 0
    assert served[2 * BLOCK_SIZE + 123] != data[2 * BLOCK_SIZE + 123]


async def test_an_index_says_this_boot_only_once_every_earlier_block_was_checked(tmp_path, nursery):
    obj, data = make_object("reboots", 4 * BLOCK_SIZE)
    first = new_cache(tmp_path, nursery)
    assert await read_all(first, obj, FakeSource(data)) == data
    data_path, _ = first.store.paths(obj)
    tear(data_path, 3 * BLOCK_SIZE + 5, data)  # a crash of the machine tore block 3
    # After the reboot, blocks 0-1 are read (and checked); a remount in that boot must still check
    # blocks 2-3, cached in the boot before.
    second = new_cache(tmp_path, nursery, boot=REBOOT)
    cached = second.open(obj)
    assert await second.read(cached, FakeSource(data), 0, 2 * BLOCK_SIZE) == data[: 2 * BLOCK_SIZE]
    second.close(cached)
    source = FakeSource(data)
    third = new_cache(tmp_path, nursery, boot=REBOOT)
    assert await read_all(third, obj, source) == data
    assert source.fetched_blocks() == [3] and third.stats.torn_blocks == 1
    # Now every block was checked (or fetched again) in this boot: the next remount checks none.
    tear(data_path, 0, data)
    fourth = new_cache(tmp_path, nursery, boot=REBOOT)
    assert (await read_all(fourth, obj, FakeSource(data)))[0] != data[0]


@pytest.mark.parametrize("torn, offset, size", [
    (3, 3 * BLOCK_SIZE, BLOCK_SIZE),  # a read of exactly the torn block (the object's last)
    (2, BLOCK_SIZE + 10, BLOCK_SIZE),  # the torn block is the last the read touches
    (1, BLOCK_SIZE - 1, 2),  # a read of two bytes, one in each of two blocks
])
async def test_a_torn_block_is_never_served_wherever_the_read_falls(tmp_path, nursery, torn, offset, size):
    obj, data = make_object("torn-last", 4 * BLOCK_SIZE)
    first = new_cache(tmp_path, nursery)
    assert await read_all(first, obj, FakeSource(data)) == data
    data_path, _ = first.store.paths(obj)
    tear(data_path, (torn + 1) * BLOCK_SIZE - 1, data)  # the block's last byte, by a crash of the machine
    source = FakeSource(data)
    second = new_cache(tmp_path, nursery, boot=REBOOT)
    cached = second.open(obj)
    assert await second.read(cached, source, offset, size) == data[offset : offset + size]
    assert source.fetched_blocks() == [torn] and second.stats.torn_blocks == 1
    second.close(cached)


async def test_an_unreadable_index_is_discarded(tmp_path, nursery):
    obj, data = make_object("index", 3 * BLOCK_SIZE)
    first = new_cache(tmp_path, nursery)
    assert await read_all(first, obj, FakeSource(data)) == data
    _, index_path = first.store.paths(obj)
    Path(index_path).write_bytes(b"garbage")
    source = FakeSource(data)
    assert await read_all(new_cache(tmp_path, nursery), obj, source) == data
    assert sorted(source.fetched_blocks()) == [0, 1, 2]


async def test_an_index_of_the_earlier_format_starts_over_quietly(tmp_path, nursery, caplog):
    # omicsfs before the boot was recorded wrote OMFSIDX1 headers, 16 bytes shorter: such a cache
    # is fetched again (once), with an info line rather than a warning per file.
    obj, data = make_object("old-format", 3 * BLOCK_SIZE)
    first = new_cache(tmp_path, nursery)
    assert await read_all(first, obj, FakeSource(data)) == data
    _, index_path = first.store.paths(obj)
    old = Path(index_path).read_bytes()
    Path(index_path).write_bytes(b"OMFSIDX1" + old[8:32] + old[48:])
    source = FakeSource(data)
    with caplog.at_level(logging.INFO, logger="omicsfs.blockcache"):
        assert await read_all(new_cache(tmp_path, nursery), obj, source) == data
    assert sorted(source.fetched_blocks()) == [0, 1, 2]
    assert "another index format" in caplog.text and "WARNING" not in caplog.text


async def test_the_least_recently_used_objects_go_first_and_the_order_survives_a_remount(tmp_path, nursery):
    cache = new_cache(tmp_path, nursery, capacity=8 * BLOCK_SIZE)
    objects = [make_object(f"lru{n}", 3 * BLOCK_SIZE) for n in range(3)]
    for obj, data in objects[:2]:
        assert await read_all(cache, obj, FakeSource(data)) == data
        await trio.sleep(0.01)  # distinct times
    assert objects_on_disk(cache.store) == {objects[0][0].hex, objects[1][0].hex}
    # A remount, then the third object: the oldest (the first) goes.
    again = new_cache(tmp_path, nursery, capacity=8 * BLOCK_SIZE)
    obj, data = objects[2]
    assert await read_all(again, obj, FakeSource(data)) == data
    assert objects_on_disk(again.store) == {objects[1][0].hex, objects[2][0].hex}
    assert again.store.used <= again.store.capacity


async def test_an_object_in_use_is_not_evicted(tmp_path, nursery):
    cache = new_cache(tmp_path, nursery, capacity=2 * BLOCK_SIZE)
    obj, data = make_object("busy", 4 * BLOCK_SIZE)
    cached = cache.open(obj)
    source = FakeSource(data)
    assert b"".join([await cache.read(cached, source, i * BLOCK_SIZE, BLOCK_SIZE) for i in range(4)]) == data
    assert objects_on_disk(cache.store) == {obj.hex}, "larger than the cache, but open"
    cache.close(cached)
    assert objects_on_disk(cache.store) == set(), "closed: evicted to fit"
    assert cache.store.used == 0


async def test_a_smaller_cache_after_a_remount_evicts_at_once(tmp_path, nursery):
    cache = new_cache(tmp_path, nursery)
    for n in range(4):
        obj, data = make_object(f"shrink{n}", 2 * BLOCK_SIZE)
        await read_all(cache, obj, FakeSource(data))
    smaller = ObjectStore(tmp_path, 4 * BLOCK_SIZE)
    assert len(objects_on_disk(smaller)) <= 2 and smaller.used <= 4 * BLOCK_SIZE


async def test_a_failed_request_fails_its_readers_and_is_not_cached(tmp_path, nursery):
    obj, data = make_object("fail", 4 * BLOCK_SIZE)
    error = PlatformError("store said no")
    source = FakeSource(data, error=error, delay=0.01)
    cache = new_cache(tmp_path, nursery)
    cached = cache.open(obj)
    caught = []

    async def reader(offset):
        with pytest.raises(PlatformError) as info:
            await cache.read(cached, source, offset, 10)
        caught.append(info.value)

    async with trio.open_nursery() as readers:
        for offset in (0, 0, BLOCK_SIZE, 3 * BLOCK_SIZE):
            readers.start_soon(reader, offset)
    assert caught and all(exc is error for exc in caught)
    assert cached.fetches == []
    source.error = None
    assert await cache.read(cached, source, 3 * BLOCK_SIZE, 10) == data[3 * BLOCK_SIZE : 3 * BLOCK_SIZE + 10]


async def test_blocks_received_before_a_break_are_kept(tmp_path, nursery):
    """The source resumes what the network cuts (`Http.read_range`, tested in test_http.py); one
    that fails anyway fails the blocks not yet received, and keeps those that were."""
    obj, data = make_object("break", 4 * BLOCK_SIZE + 1000)
    source = FakeSource(data, chunk=50_000, breaks=[BLOCK_SIZE + BLOCK_SIZE // 2])
    cache = new_cache(tmp_path, nursery)
    cached = cache.open(obj)
    with pytest.raises(httpx.ReadError):
        await cache.read(cached, source, 0, obj.size)
    assert cached.held[0] == 1 and not any(cached.held[1:])
    assert await cache.read(cached, source, 0, obj.size) == data
    assert source.calls == [(0, len(data)), (BLOCK_SIZE, len(data))]


async def test_body_ending_early_fails_the_blocks_it_did_not_send(tmp_path, nursery):
    obj, data = make_object("short", 3 * BLOCK_SIZE)
    source = FakeSource(data, short=BLOCK_SIZE + 7)  # the body just stops, without an error
    cache = new_cache(tmp_path, nursery)
    cached = cache.open(obj)
    with pytest.raises(PlatformError, match="ended at block 1"):
        await cache.read(cached, source, 0, obj.size)
    assert await cache.read(cached, source, 0, obj.size) == data


async def test_a_source_sending_more_than_asked_is_not_read_further(tmp_path, nursery):
    obj, data = make_object("more", 4 * BLOCK_SIZE)

    async def generous(start, end):
        yield data[start:]  # the whole rest, whatever was asked

    cache = new_cache(tmp_path, nursery)
    cached = cache.open(obj)
    assert await cache.read(cached, generous, 0, 100) == data[:100]
    assert list(cached.held) == [1, 0, 0, 0]
    assert cache.stats.bytes_fetched == BLOCK_SIZE


async def test_unexpected_source_error_reaches_readers_and_is_logged(tmp_path, nursery, caplog):
    obj, data = make_object("bug", 2 * BLOCK_SIZE)
    source = FakeSource(data, error=ValueError("a bug in a platform module"))
    cache = new_cache(tmp_path, nursery)
    cached = cache.open(obj)
    with caplog.at_level(logging.ERROR, logger="omicsfs.blockcache"):
        with pytest.raises(ValueError, match="a bug"):
            await cache.read(cached, source, 0, 10)
    assert any(record.exc_info for record in caplog.records)


async def test_cached_files_are_sparse(tmp_path, nursery):
    """A region query caches what it read, not the whole object."""
    obj, data = make_object("sparse", 400 * BLOCK_SIZE)
    cache = new_cache(tmp_path, nursery)
    cached = cache.open(obj)
    assert await cache.read(cached, FakeSource(data), 300 * BLOCK_SIZE, 10) == data[300 * BLOCK_SIZE : 300 * BLOCK_SIZE + 10]
    data_path, _ = cache.store.paths(obj)
    assert os.stat(data_path).st_blocks * 512 <= 4 * BLOCK_SIZE
