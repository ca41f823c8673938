"""The block cache: fixed-size blocks of remote files, in memory over disk, fetched once.

Why 64 KiB blocks: it is the largest a BGZF block (BAM, bgzipped VCF) can be, and an indexed
region query touches the index and a few such blocks: with 64 KiB blocks it moves about 270 KB
(bench/: 0.05x of the sample BAM), where 256 KiB blocks moved 730 KB. Long sequential reads are
not slowed by the small unit: they go out as ranged GETs of up to 16 MiB covering many blocks
(see `reader.py`), and the same bench read a 1 GiB file as fast with either size. The cost is
bookkeeping: 16384 blocks per GiB, each its own file in the disk cache.

The memory LRU is bounded in bytes (`cachetools.LRUCache` with `getsizeof=len`). The disk cache
holds one file per block, each with a header naming the object and block and a CRC32 of the data,
written to a temporary name and renamed: a torn or foreign block is detected, deleted and fetched
again, never served. Its LRU order is the files' mtimes, so it survives remounts.
"""

from __future__ import annotations

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
import httpx
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

    @property
    def hex(self) -> str:
        return self.digest.hex()

    def block_count(self) -> int:
        return -(-self.size // BLOCK_SIZE)

    def block_length(self, index: int) -> int:
        return min(BLOCK_SIZE, self.size - index * BLOCK_SIZE)


class DiskCache:
    """Blocks on disk, bounded in bytes, least recently used evicted first."""

    HEADER = struct.Struct("<8s16sQII")  # magic, object digest, block index, data length, CRC32
    MAGIC = b"OMFSBLK1"

    def __init__(self, directory: Path, capacity: int):
        self.directory = directory / "blocks"
        self.capacity = capacity
        self.used = 0
        self._sizes: OrderedDict[str, int] = OrderedDict()  # path -> bytes on disk, oldest first
        self._temporary_names = itertools.count()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._load()

    def _load(self) -> None:
        found = []
        for path in self.directory.glob("*/*"):
            if path.suffix == ".tmp":  # a write cut short by a crash
                path.unlink(missing_ok=True)
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            found.append((stat.st_mtime_ns, str(path), stat.st_size))
        self._commit([(path, size) for _, path, size in sorted(found)])
        victims, _ = self._plan([])  # a cache made smaller since: the oldest go
        self._write_blocks(victims, [])

    def _path(self, obj: ObjectRef, index: int) -> Path:
        return self.directory / obj.hex[:2] / f"{obj.hex}.{index}"

    def __contains__(self, item: tuple[ObjectRef, int]) -> bool:
        return str(self._path(*item)) in self._sizes

    # The index (`_sizes`, `used`) is only touched on the caller's thread; `_write_blocks` only
    # touches files, so `BlockCache` runs it in a worker thread. Reads stay on the event loop:
    # a block is read and checked in about 0.1 ms, less than a thread hand-off costs.

    def get(self, obj: ObjectRef, index: int) -> bytes | None:
        if (obj, index) not in self:
            return None
        return self._loaded(obj, index, self._load_block(obj, index))

    def put(self, obj: ObjectRef, index: int, data: bytes) -> None:
        self._commit(self._write_blocks(*self._plan([(obj, index, data)])))

    async def put_async(self, blocks: list[tuple[ObjectRef, int, bytes]]) -> None:
        """`put` of many blocks, with the files written (and evicted ones deleted) in a worker thread."""
        self._commit(await trio.to_thread.run_sync(self._write_blocks, *self._plan(blocks)))

    def _loaded(self, obj: ObjectRef, index: int, data: bytes | None) -> bytes | None:
        key = str(self._path(obj, index))
        if data is None:
            self._forget(key)
        elif key in self._sizes:
            self._sizes.move_to_end(key)
        return data

    def _load_block(self, obj: ObjectRef, index: int) -> bytes | None:
        """The block's data if its file is whole and its own; else None (and a bad file is deleted)."""
        path = self._path(obj, index)
        try:
            with open(path, "rb") as file:
                header = file.read(self.HEADER.size)
                data = file.read()
        except OSError as exc:  # gone, or unreadable: a miss either way, fetched again
            if not isinstance(exc, FileNotFoundError):
                log.warning("cache: cannot read block %s: %s", path.name, exc)
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
            log.warning("cache: discarding torn or corrupt block %s", path.name)
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)  # the LRU order a remount finds
        except OSError:
            pass
        return data

    def _plan(self, blocks: list[tuple[ObjectRef, int, bytes]]) -> tuple[list[Path], list[tuple[ObjectRef, int, bytes]]]:
        """The blocks worth writing, and the files to delete first so that they fit."""
        wanted: dict[str, tuple[ObjectRef, int, bytes]] = {}
        for obj, index, data in blocks:
            key = str(self._path(obj, index))
            if key not in self._sizes and self.HEADER.size + len(data) <= self.capacity:
                wanted[key] = (obj, index, data)
        incoming = sum(self.HEADER.size + len(data) for _, _, data in wanted.values())
        victims = []
        while self._sizes and self.used + incoming > self.capacity:
            key, size = self._sizes.popitem(last=False)
            self.used -= size
            victims.append(Path(key))
        while wanted and incoming > self.capacity:  # more in one batch than the whole cache
            _, (_, _, data) = wanted.popitem()
            incoming -= self.HEADER.size + len(data)
        return victims, list(wanted.values())

    def _write_blocks(self, victims: list[Path], blocks: list[tuple[ObjectRef, int, bytes]]) -> list[tuple[str, int]]:
        for victim in victims:
            victim.unlink(missing_ok=True)
        written = []
        for obj, index, data in blocks:
            path = self._path(obj, index)
            # A name of this writer's own: two caches (or processes) on one directory never collide.
            temporary = path.with_name(f"{path.name}.{os.getpid()}-{next(self._temporary_names)}.tmp")
            header = self.HEADER.pack(self.MAGIC, obj.digest, index, len(data), zlib.crc32(data))
            try:
                # Few system calls, each one a place where this thread waits for the GIL.
                path.parent.mkdir(exist_ok=True)
                descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    if os.writev(descriptor, [header, data]) != len(header) + len(data):
                        raise OSError(f"short write of {temporary.name}")
                finally:
                    os.close(descriptor)
                os.replace(temporary, path)
            except OSError as exc:
                log.warning("cache: cannot write block %s: %s", path.name, exc)
                temporary.unlink(missing_ok=True)
                continue
            written.append((str(path), self.HEADER.size + len(data)))
        return written

    def _commit(self, written: list[tuple[str, int]]) -> None:
        for key, size in written:
            if key not in self._sizes:
                self._sizes[key] = size
                self.used += size

    def _forget(self, key: str) -> None:
        self.used -= self._sizes.pop(key, 0)


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
    #: Mid-body failures (a connection cut after the headers) are resumed this many times.
    RESUMES = 3
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
        resumes = 0
        try:
            async with self._requests:
                while index <= last:
                    buffer = bytearray()
                    try:
                        self.stats.requests += 1
                        async for chunk in source(index * BLOCK_SIZE, end):
                            self.stats.bytes_fetched += len(chunk)
                            buffer += chunk
                            while index <= last and len(buffer) >= obj.block_length(index):
                                length = obj.block_length(index)
                                with memoryview(buffer) as view:  # one copy, not two
                                    block = bytes(view[:length])
                                del buffer[:length]
                                self._store(obj, index, block)
                                index += 1
                            if index > last:
                                break  # a source that sends more than asked is not read further
                        if index <= last:
                            raise httpx.RemoteProtocolError("the body ended before the range did")
                    except (httpx.TransportError, httpx.StreamError) as exc:
                        resumes += 1
                        if resumes > self.RESUMES:
                            raise PlatformError(f"reading stopped {resumes} times; last: {type(exc).__name__}") from exc
                        log.info("fetch cut short at block %d (%s); resuming", index, type(exc).__name__)
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
