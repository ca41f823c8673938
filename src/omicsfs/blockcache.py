"""The block cache: fixed-size blocks of remote files, in memory over disk, fetched once.

Why 64 KiB blocks: it is the largest a BGZF block (BAM, bgzipped VCF) can be, and an indexed
region query touches the index and a few such blocks: with 64 KiB blocks it moves about 270 KB
(bench/: 0.05x of the sample BAM), where 256 KiB blocks moved 730 KB. Long sequential reads are
not slowed by the small unit: they go out as ranged GETs of up to 16 MiB covering many blocks
(see `reader.py`), and the same bench read a 1 GiB file as fast with either size. The cost is
bookkeeping: 16384 blocks per GiB.

The memory LRU is bounded in bytes (`cachetools.LRUCache` with `getsizeof=len`). The disk cache
holds segment files of consecutive blocks, each block with a header naming the object and block
and a CRC32 of the data, written to a temporary name and renamed: a torn or foreign block is
detected, dropped and fetched again, never served. Its LRU order is the files' mtimes, so it
survives remounts.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import logging
import os
import struct
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import cachetools
import trio

from omicsfs.errors import PlatformError

log = logging.getLogger(__name__)

BLOCK_SIZE = 64 * 1024

#: Fetches the bytes [start, end) of one object, in order.
Source = Callable[[int, int], AsyncIterator[bytes]]


@dataclass(frozen=True)
class ObjectRef:
    """One file's content at one version: the unit cached blocks belong to."""

    digest: bytes  # 16 bytes, from the platform, the file's id and its version
    size: int

    @classmethod
    def for_file(cls, platform: str, uid: str, version: str, size: int) -> ObjectRef:
        identity = "\0".join((platform, uid, version, str(size))).encode()
        return cls(hashlib.blake2b(identity, digest_size=16).digest(), size)

    @functools.cached_property
    def hex(self) -> str:
        return self.digest.hex()

    def block_count(self) -> int:
        return -(-self.size // BLOCK_SIZE)

    def block_length(self, index: int) -> int:
        return min(BLOCK_SIZE, self.size - index * BLOCK_SIZE)


class DiskCache:
    """Blocks on disk, bounded in bytes, the least recently used segment evicted first.

    A segment file holds a run of consecutive blocks of one object (`<digest>.<first>.<count>`),
    as records: a header naming the object and the block, with the data's length and CRC32, then
    the data. One file per write of a run, not one per block: the writer thread must win the GIL
    back after every system call, and a busy event loop makes each of those waits long. Segments
    are written to a temporary name and renamed; a record whose header or CRC does not match is
    discarded on read (with its segment), never served.
    """

    HEADER = struct.Struct("<8s16sQII")  # magic, object digest, block index, data length, CRC32
    MAGIC = b"OMFSBLK1"
    #: Where block i of a segment starts: every block but an object's last is BLOCK_SIZE long.
    RECORD = HEADER.size + BLOCK_SIZE

    def __init__(self, directory: Path, capacity: int):
        self.directory = directory / "blocks"
        self.capacity = capacity
        self.used = 0
        self._segments: OrderedDict[str, int] = OrderedDict()  # segment path -> bytes, oldest first
        self._blocks: dict[tuple[bytes, int], tuple[str, int]] = {}  # (digest, index) -> (segment, offset)
        self._temporary_names = itertools.count()
        # All 256 subdirectories up front, so that writing a segment never needs a mkdir.
        for prefix in range(256):
            (self.directory / f"{prefix:02x}").mkdir(parents=True, exist_ok=True)
        self._load()

    def _load(self) -> None:
        found = []
        for path in self.directory.glob("*/*"):
            if path.name.endswith(".tmp") or self._parse(path.name) is None:  # a write cut short, or litter
                path.unlink(missing_ok=True)
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            found.append((stat.st_mtime_ns, str(path), stat.st_size))
        self._commit([(path, size) for _, path, size in sorted(found)])
        self._write_segments(self._evict(0), [])  # a cache made smaller since: the oldest go

    @staticmethod
    def _parse(name: str) -> tuple[bytes, int, int] | None:
        try:
            digest, first, count = name.split(".")
            return bytes.fromhex(digest), int(first), int(count)
        except ValueError:
            return None

    def _segment(self, obj: ObjectRef, first: int, count: int) -> str:
        digest = obj.hex
        return f"{self.directory}/{digest[:2]}/{digest}.{first}.{count}"

    def _record(self, obj: ObjectRef, index: int) -> tuple[Path, int] | None:
        """The segment holding a block, and where in it the block's record starts."""
        located = self._blocks.get((obj.digest, index))
        return None if located is None else (Path(located[0]), located[1])

    def _path(self, obj: ObjectRef, index: int) -> Path:
        """The segment holding a block, or where a segment of just that block would be."""
        located = self._blocks.get((obj.digest, index))
        return Path(located[0] if located else self._segment(obj, index, 1))

    def __contains__(self, item: tuple[ObjectRef, int]) -> bool:
        obj, index = item
        return (obj.digest, index) in self._blocks

    # The index (`_segments`, `_blocks`, `used`) is only touched on the caller's thread;
    # `_write_segments` only touches files, so `BlockCache` runs it in a worker thread. Reads stay
    # on the event loop: a block is read and checked in well under a thread hand-off's time.

    def get(self, obj: ObjectRef, index: int) -> bytes | None:
        located = self._blocks.get((obj.digest, index))
        if located is None:
            return None
        path, offset = located
        data = self._read_record(path, offset, obj, index)
        if data is None:
            self._drop(path)
            with contextlib.suppress(OSError):
                os.unlink(path)
        else:
            self._segments.move_to_end(path)
        return data

    def put(self, obj: ObjectRef, index: int, data: bytes) -> None:
        self._commit(self._write_segments(*self._plan([(obj, index, data)])))

    async def put_async(self, blocks: list[tuple[ObjectRef, int, bytes]]) -> None:
        """`put` of many blocks, written (and evicted segments deleted) in a worker thread."""
        self._commit(await trio.to_thread.run_sync(self._write_segments, *self._plan(blocks)))

    def _read_record(self, path: str, offset: int, obj: ObjectRef, index: int) -> bytes | None:
        """The block's data if its record is whole and its own, else None."""
        name = f"{os.path.basename(path)}#{index}"
        try:
            with open(path, "rb") as file:
                file.seek(offset)
                header = file.read(self.HEADER.size)
                data = file.read(obj.block_length(index))
        except OSError as exc:  # gone, or unreadable: a miss either way, fetched again
            if not isinstance(exc, FileNotFoundError):
                log.warning("cache: cannot read block %s: %s", name, exc)
            return None
        try:
            magic, digest, stored_index, length, crc = self.HEADER.unpack(header)
        except struct.error:
            magic = None
        if (
            magic != self.MAGIC
            or digest != obj.digest
            or stored_index != index
            or length != len(data)
            or length != obj.block_length(index)
            or crc != zlib.crc32(data)
        ):
            log.warning("cache: discarding torn or corrupt block %s", name)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # the LRU order a remount finds
        return data

    def _plan(self, blocks: list[tuple[ObjectRef, int, bytes]]) -> tuple[list[str], list[list[tuple[ObjectRef, int, bytes]]]]:
        """The runs of blocks worth writing, and the segments to delete first so that they fit."""
        wanted: dict[tuple[bytes, int], tuple[ObjectRef, int, bytes]] = {}
        for obj, index, data in blocks:
            if (obj.digest, index) not in self._blocks and self.HEADER.size + len(data) <= self.capacity:
                wanted[(obj.digest, index)] = (obj, index, data)
        runs: list[list[tuple[ObjectRef, int, bytes]]] = []
        for key in sorted(wanted):
            block = wanted[key]
            previous = runs[-1][-1] if runs else None
            if previous and previous[0].digest == key[0] and previous[1] == key[1] - 1:
                runs[-1].append(block)
            else:
                runs.append([block])
        incoming = sum(self.HEADER.size + len(data) for run in runs for _, _, data in run)
        while runs and incoming > self.capacity:  # more in one batch than the whole cache
            incoming -= sum(self.HEADER.size + len(data) for _, _, data in runs.pop())
        return self._evict(incoming), runs

    def _evict(self, incoming: int) -> list[str]:
        victims = []
        while self._segments and self.used + incoming > self.capacity:
            path = next(iter(self._segments))
            self._drop(path)
            victims.append(path)
        return victims

    def _write_segments(self, victims: list[str], runs: list[list[tuple[ObjectRef, int, bytes]]]) -> list[tuple[str, int]]:
        # Runs in a worker thread: plain strings rather than pathlib, few system calls per segment.
        for victim in victims:
            with contextlib.suppress(OSError):
                os.unlink(victim)
        written = []
        for run in runs:
            obj, first = run[0][0], run[0][1]
            path = self._segment(obj, first, len(run))
            # A name of this writer's own: two caches (or processes) on one directory never collide.
            temporary = f"{path}.{os.getpid()}-{next(self._temporary_names)}.tmp"
            parts = []
            for _, index, data in run:
                parts += (self.HEADER.pack(self.MAGIC, obj.digest, index, len(data), zlib.crc32(data)), data)
            size = sum(map(len, parts))
            try:
                descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    if os.writev(descriptor, parts) != size:
                        raise OSError(f"short write of {os.path.basename(temporary)}")
                finally:
                    os.close(descriptor)
                os.replace(temporary, path)
            except OSError as exc:
                log.warning("cache: cannot write %s: %s", os.path.basename(path), exc)
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                continue
            written.append((path, size))
        return written

    def _commit(self, written: list[tuple[str, int]]) -> None:
        for path, size in written:
            digest, first, count = self._parse(os.path.basename(path))
            self._drop(path)  # rewritten: the new file replaced it
            self._segments[path] = size
            self.used += size
            for position in range(count):
                self._blocks[(digest, first + position)] = (path, position * self.RECORD)

    def _drop(self, path: str) -> None:
        """Forget a segment and the blocks it holds (the file is the caller's to delete)."""
        size = self._segments.pop(path, None)
        if size is None:
            return
        self.used -= size
        digest, first, count = self._parse(os.path.basename(path))
        for index in range(first, first + count):
            if self._blocks.get((digest, index), ("",))[0] == path:
                del self._blocks[(digest, index)]


class _Pending:
    """A block being fetched: every reader of it waits here instead of asking again."""

    def __init__(self) -> None:
        self._done = trio.Event()
        self._data: bytes | None = None
        self._error: BaseException | None = None

    def set(self, data: bytes) -> None:
        self._data = data
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    async def wait(self) -> bytes:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._data is not None
        return self._data


@dataclass
class CacheStats:
    requests: int = 0
    bytes_fetched: int = 0
    memory_hits: int = 0
    disk_hits: int = 0
    disk_writes_skipped: int = 0


class BlockCache:
    """Blocks in a byte-bounded memory LRU over a `DiskCache`; each missing block fetched once."""

    #: Largest range one GET asks for; longer runs are split so that several requests stream at once.
    MAX_REQUEST = 16 * 1024 * 1024
    #: The most bytes of blocks waiting to be written to disk (an eighth of the memory cache if
    #: less, since a queued block the memory LRU dropped is memory of its own), and the most
    #: blocks written in one go.
    DISK_QUEUE_BYTES = 16 * 1024 * 1024
    DISK_BATCH = 64

    def __init__(self, memory_bytes: int, disk: DiskCache, nursery: trio.Nursery, parallel: int = 8):
        self.memory: cachetools.LRUCache = cachetools.LRUCache(maxsize=max(memory_bytes, BLOCK_SIZE), getsizeof=len)
        self.disk = disk
        self.nursery = nursery
        self.stats = CacheStats()
        self._pending: dict[tuple[bytes, int], _Pending] = {}
        self._requests = trio.CapacityLimiter(parallel)
        # Disk writes go through a bounded queue to a writer task whose files are written in a
        # worker thread: neither readers nor fetches wait for the disk. Blocks that find the
        # queue full are not written (see `_store`).
        queue = max(4, min(self.DISK_QUEUE_BYTES, memory_bytes // 8) // BLOCK_SIZE)
        self._to_disk, to_disk = trio.open_memory_channel(queue)
        self._unwritten = 0
        nursery.start_soon(self._write_to_disk, to_disk)

    def cached(self, obj: ObjectRef, index: int) -> bytes | None:
        key = (obj.digest, index)
        data = self.memory.get(key)
        if data is not None:
            self.stats.memory_hits += 1
            return data
        data = self.disk.get(obj, index)
        if data is not None:
            self.stats.disk_hits += 1
            self.memory[key] = data
        return data

    def _is_missing(self, obj: ObjectRef, index: int) -> bool:
        key = (obj.digest, index)
        return key not in self.memory and key not in self._pending and (obj, index) not in self.disk

    def prefetch(self, obj: ObjectRef, source: Source, first: int, last: int) -> None:
        """Start fetching whichever of blocks first..last are neither cached nor on their way."""
        last = min(last, obj.block_count() - 1)
        per_request = self.MAX_REQUEST // BLOCK_SIZE
        runs: list[list[int]] = []
        for index in range(first, last + 1):
            if not self._is_missing(obj, index):
                continue
            if runs and runs[-1][-1] == index - 1 and len(runs[-1]) < per_request:
                runs[-1].append(index)
            else:
                runs.append([index])
        for run in runs:
            self._start(obj, source, run)

    def _start(self, obj: ObjectRef, source: Source, run: list[int]) -> None:
        for index in run:
            self._pending[(obj.digest, index)] = _Pending()
        self.nursery.start_soon(self._fetch, obj, source, run[0], run[-1])

    async def get(self, obj: ObjectRef, source: Source, index: int) -> bytes:
        if not 0 <= index < obj.block_count():
            raise ValueError(f"block {index} is outside an object of {obj.block_count()} blocks")
        data = self.cached(obj, index)
        if data is not None:
            return data
        pending = self._pending.get((obj.digest, index))
        if pending is None:
            self.prefetch(obj, source, index, index)
            pending = self._pending[(obj.digest, index)]
        return await pending.wait()

    async def _fetch(self, obj: ObjectRef, source: Source, first: int, last: int) -> None:
        index = first
        end = min(obj.size, (last + 1) * BLOCK_SIZE)
        try:
            async with self._requests:
                buffer = bytearray()
                self.stats.requests += 1
                # The source retries and resumes what the network cuts (see `Http.read_range`):
                # what reaches here is the range, or an error for every waiter.
                async for chunk in source(index * BLOCK_SIZE, end):
                    self.stats.bytes_fetched += len(chunk)
                    buffer += chunk
                    # Whole blocks are cut out of the buffer with one copy each, and
                    # what they used is dropped once per chunk, not once per block.
                    used = 0
                    with memoryview(buffer) as view:
                        while index <= last and len(buffer) - used >= obj.block_length(index):
                            length = obj.block_length(index)
                            self._store(obj, index, bytes(view[used : used + length]))
                            used += length
                            index += 1
                    del buffer[:used]
                    if index > last:
                        break  # a source that sends more than asked is not read further
                if index <= last:
                    raise PlatformError(f"the source ended at block {index} of {first}-{last}")
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else PlatformError("fetch cancelled")
            for remaining in range(index, last + 1):
                pending = self._pending.pop((obj.digest, remaining), None)
                if pending is not None:
                    pending.fail(error)
            if not isinstance(exc, (PlatformError, trio.Cancelled)):
                log.exception("fetch failed unexpectedly")
            if isinstance(exc, trio.Cancelled):
                raise

    def _store(self, obj: ObjectRef, index: int, data: bytes) -> None:
        key = (obj.digest, index)
        self.memory[key] = data
        pending = self._pending.pop(key, None)
        if pending is not None:
            pending.set(data)
        try:
            self._to_disk.send_nowait((obj, index, data))
            self._unwritten += 1
        except trio.WouldBlock:
            # The disk is slower than the network: the read is not slowed to the disk's pace,
            # and this block stays in memory only (a later read may fetch it again).
            self.stats.disk_writes_skipped += 1

    async def _write_to_disk(self, blocks: trio.MemoryReceiveChannel) -> None:
        async for first in blocks:
            batch = [first]
            while len(batch) < self.DISK_BATCH:
                try:
                    batch.append(blocks.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                await self.disk.put_async(batch)
            finally:
                self._unwritten -= len(batch)

    async def flush(self) -> None:
        """Wait until every block queued for the disk is written."""
        while self._unwritten:
            await trio.sleep(0.005)
