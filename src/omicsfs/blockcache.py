"""The block cache: remote files kept on local disk, one sparse file per object, fetched once.

Why 64 KiB blocks: it is the largest a BGZF block (BAM, bgzipped VCF) can be, and an indexed
region query touches the index and a few such blocks, so a random read fetches little more than
it needs; a long sequential read is not slowed by the small unit, since it goes out as ranged
GETs of up to 16 MiB covering many blocks (see `reader.py`).

Why sparse files read with `os.pread` and written with `os.pwrite`, and no blocks in Python's
memory: a read of 1 MiB is one system call, which releases the GIL, where Python objects per
block cost the single event-loop thread its time; the kernel's page cache keeps what was read
recently, outside the daemon, and drops it under memory pressure. The daemon holds only what is
in flight, so its memory stays bounded whatever the files' sizes.

Each object (`<digest>.data`) has an index (`<digest>.index`): per block its CRC32 and whether
it is held. A block's bytes are written before its index record, so a daemon that is killed
leaves no torn block: the page cache holds every write that returned, whoever made it. Only a
crash of the machine can tear one (the disk got the record and not the bytes), and that starts a
new boot: an index records the boot in which all its blocks were last known whole, and a block
of another boot is checked against its CRC before it is first served; a torn block is dropped
and fetched again, never served. Blocks of this boot are served unchecked: a re-read after a
remount costs no CRC. The least recently used objects go first when the cache is over its size;
their order (the index files' times) survives remounts.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import struct
import time
import uuid
import zlib
from array import array
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from omicsfs.errors import PlatformError

log = logging.getLogger(__name__)

BLOCK_SIZE = 64 * 1024


def current_boot() -> bytes:
    """The id of the machine's current boot (16 bytes); random where unknown, so that every block
    of an earlier mount is then checked."""
    try:
        return uuid.UUID(Path("/proc/sys/kernel/random/boot_id").read_text().strip()).bytes
    except (OSError, ValueError):
        return os.urandom(16)


@dataclass(frozen=True)
class IntoSource:
    """A source that writes into the cache from a worker thread (`Http.read_range_into`):
    `fetch(start, end, write, landed, working)`."""

    fetch: Callable[..., Awaitable[None]]


#: Fetches the bytes [start, end) of one object, in order: as chunks, or (`IntoSource`) written
#: straight into the cache by a worker thread.
Source = Callable[[int, int], AsyncIterator[bytes]] | IntoSource


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


class _Fetch:
    """Blocks [next, last] of one object on their way from one request."""

    def __init__(self, first: int, last: int):
        self.next = first
        self.last = last
        self.error: BaseException | None = None

    def covers(self, index: int) -> bool:
        return self.next <= index <= self.last


class CachedObject:
    """One object's file and index, open; which blocks it holds, and what is on its way."""

    #: Magic, digest, object size, and the boot in which every held block was last known whole.
    INDEX_HEADER = struct.Struct("<8s16sQ16s")
    BOOT_OFFSET = INDEX_HEADER.size - 16
    RECORD = struct.Struct("<IB3x")  # CRC32 of the block, held (1) or not (0)
    MAGIC = b"OMFSIDX2"

    def __init__(self, store: ObjectStore, obj: ObjectRef):
        self.store = store
        self.obj = obj
        count = obj.block_count()
        self.held = bytearray(count)
        self.crcs = array("I", bytes(4 * count))
        #: Blocks of an earlier boot not yet checked against their CRC.
        self.unchecked = bytearray(count)
        #: Whether the index says this boot (none unchecked): else it is said once all are checked.
        self.trusted = True
        self.fetches: list[_Fetch] = []
        #: Set (and replaced) whenever blocks arrive or a fetch fails: what readers wait on.
        self.changed = trio.Event()
        self.readers = 0
        #: Worker threads that may still write to the files (a cancelled fetch's, until it stops).
        self.workers = 0
        #: Blocks the kernel was asked to read from the data file ahead of a reader (first, last).
        self.advised = (0, -1)
        data_path, index_path = store.paths(obj)
        self.data_fd = os.open(data_path, os.O_RDWR | os.O_CREAT, 0o600)
        self.index_fd = os.open(index_path, os.O_RDWR | os.O_CREAT, 0o600)
        self._load()

    def _load(self) -> None:
        header = os.pread(self.index_fd, self.INDEX_HEADER.size, 0)
        expected = self.INDEX_HEADER.pack(self.MAGIC, self.obj.digest, self.obj.size, self.store.boot)
        if header[: self.BOOT_OFFSET] != expected[: self.BOOT_OFFSET] or len(header) != len(expected):
            if header[:8] != self.MAGIC and header.startswith(self.MAGIC[:-1]):
                log.info("cache: starting over %s, cached by an omicsfs with another index format", self.obj.hex)
            elif header:
                log.warning("cache: discarding the unreadable index of %s", self.obj.hex)
            os.ftruncate(self.index_fd, 0)
            os.ftruncate(self.data_fd, 0)
            os.pwrite(self.index_fd, expected, 0)
            return
        self.trusted = header == expected
        unchecked = 0 if self.trusted else 1
        records = os.pread(self.index_fd, self.RECORD.size * len(self.held), self.INDEX_HEADER.size)
        for index, (crc, held) in enumerate(self.RECORD.iter_unpack(records[: len(records) // self.RECORD.size * self.RECORD.size])):
            if held:
                self.held[index] = 1
                self.unchecked[index] = unchecked
                self.crcs[index] = crc
        self._trust()

    def _trust(self) -> None:
        """Once no block of another boot is left unchecked, say so in the index: a remount in this
        boot then serves every block without checking it."""
        if not self.trusted and self.unchecked.find(1) < 0:
            os.pwrite(self.index_fd, self.store.boot, self.BOOT_OFFSET)
            self.trusted = True

    def close(self) -> None:
        for fd in (self.data_fd, self.index_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.data_fd = self.index_fd = -1

    @property
    def busy(self) -> bool:
        return bool(self.fetches or self.readers or self.workers)

    def working(self, change: int) -> None:
        self.workers += change
        if not self.workers:
            self.store.tidy()

    def held_bytes(self) -> int:
        return sum(self.held) * BLOCK_SIZE

    # -- blocks arriving -----------------------------------------------------------------------

    def record(self, index: int, crc: int) -> None:
        """Write a block's index record, once its bytes are written (any thread)."""
        os.pwrite(self.index_fd, self.RECORD.pack(crc, 1), self.INDEX_HEADER.size + index * self.RECORD.size)

    def hold(self, index: int, crc: int) -> None:
        """Count a recorded block as held (on the event loop): readers may have it."""
        if self.held[index]:
            return
        self.held[index] = 1
        self.unchecked[index] = 0
        self.crcs[index] = crc
        self.store.used += BLOCK_SIZE

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def drop(self, index: int) -> None:
        """Forget a block that failed its check: it will be fetched again."""
        if self.held[index]:
            self.held[index] = self.unchecked[index] = 0
            os.pwrite(self.index_fd, self.RECORD.pack(0, 0), self.INDEX_HEADER.size + index * self.RECORD.size)
            self.store.used -= BLOCK_SIZE

    # -- reading -------------------------------------------------------------------------------

    def check(self, first: int, last: int, data: bytes, offset: int) -> bool:
        """Check blocks of an earlier boot before they are first served; False if one was torn.
        `data`, the bytes read from `offset`, is checked where it holds a whole block: a read
        after a remount then reads each block once, not once to check it and again to serve it."""
        whole = True
        if self.unchecked.find(1, first, last + 1) < 0:
            return True
        view = memoryview(data)
        for index in range(first, last + 1):
            if self.unchecked[index]:
                start, length = index * BLOCK_SIZE - offset, self.obj.block_length(index)
                if 0 <= start and start + length <= len(view):
                    block = view[start : start + length]
                else:
                    block = os.pread(self.data_fd, length, index * BLOCK_SIZE)
                if len(block) == length and zlib.crc32(block) == self.crcs[index]:
                    self.unchecked[index] = 0
                else:
                    log.warning("cache: discarding torn or corrupt block %s#%d", self.obj.hex, index)
                    self.drop(index)
                    whole = False
        self._trust()
        return whole


class ObjectStore:
    """Cached objects on disk, bounded in bytes, the least recently used object evicted first."""

    #: Objects kept open (their files and indexes) at once.
    OPEN = 64

    def __init__(self, directory: Path, capacity: int, boot: bytes | None = None):
        self.directory = Path(directory) / "objects"
        self.capacity = capacity
        #: This boot's id (`current_boot`): blocks whose index says it are served unchecked.
        self.boot = current_boot() if boot is None else boot
        self.used = 0
        #: Every object on disk, least recently used first: digest hex -> bytes held (estimated from
        #: the blocks allocated to its file, until it is opened).
        self._lru: OrderedDict[str, int] = OrderedDict()
        self._open: OrderedDict[str, CachedObject] = OrderedDict()
        #: Objects being adopted (their index computed): a reader waits for them (`settled`).
        self._adopting: dict[str, trio.Event] = {}
        for prefix in range(256):
            (self.directory / f"{prefix:02x}").mkdir(parents=True, exist_ok=True)
        self._load()

    def paths(self, obj: ObjectRef) -> tuple[str, str]:
        base = self.directory / obj.hex[:2] / obj.hex
        return f"{base}.data", f"{base}.index"

    def _load(self) -> None:
        for leftover in self.directory.glob("*/*.adopting"):  # an adoption a crash cut short
            leftover.unlink(missing_ok=True)
        found = []
        for index_path in self.directory.glob("*/*.index"):
            data_path = index_path.with_suffix(".data")
            try:
                stat = index_path.stat()
                held = data_path.stat().st_blocks * 512
            except FileNotFoundError:
                index_path.unlink(missing_ok=True)
                continue
            found.append((stat.st_mtime_ns, index_path.stem, held))
        for _, digest, held in sorted(found):
            self._lru[digest] = held
            self.used += held
        self._evict()

    def open(self, obj: ObjectRef) -> CachedObject:
        """The object, opened (and made the most recently used)."""
        cached = self._open.get(obj.hex)
        if cached is None:
            cached = CachedObject(self, obj)
            self.used += cached.held_bytes() - self._lru.pop(obj.hex, 0)
            self._open[obj.hex] = cached
            with contextlib.suppress(OSError):
                os.utime(self.paths(obj)[1])  # the LRU order a remount finds
            self._close_some()
        self._open.move_to_end(obj.hex)
        self._lru.pop(obj.hex, None)
        self._lru[obj.hex] = -1  # open: its bytes are counted through the object
        self._evict()
        return cached

    def adopt(self, obj: ObjectRef, path: Path, nursery: trio.Nursery) -> bool:
        """Take a file holding the whole object (a confirmed upload's staging file) as its cache:
        moved, not copied, so that reading back what was just written fetches nothing. False
        (the file left where it is) if the object is already in use."""
        if obj.hex in self._open or obj.hex in self._adopting or os.path.getsize(path) != obj.size:
            return False
        adopting = self.directory / obj.hex[:2] / f"{obj.hex}.adopting"
        os.replace(path, adopting)
        self._adopting[obj.hex] = trio.Event()
        nursery.start_soon(self._index_adopted, obj, adopting)
        return True

    async def settled(self, obj: ObjectRef) -> None:
        """Return once `obj` is not being adopted (its reader then finds it whole)."""
        adopting = self._adopting.get(obj.hex)
        if adopting is not None:
            await adopting.wait()

    async def _index_adopted(self, obj: ObjectRef, adopting: Path) -> None:
        def records() -> bytes:
            with open(adopting, "rb") as file:
                return b"".join(CachedObject.RECORD.pack(zlib.crc32(file.read(obj.block_length(index))), 1)
                                for index in range(obj.block_count()))

        try:
            index = await trio.to_thread.run_sync(records)
            if obj.hex in self._open:  # opened meanwhile by something else: that copy stays
                adopting.unlink(missing_ok=True)
                return
            data_path, index_path = self.paths(obj)
            with open(index_path, "wb") as file:
                file.write(CachedObject.INDEX_HEADER.pack(CachedObject.MAGIC, obj.digest, obj.size, self.boot) + index)
            os.replace(adopting, data_path)
            self.used += obj.block_count() * BLOCK_SIZE - max(0, self._lru.pop(obj.hex, 0))
            self._lru[obj.hex] = obj.block_count() * BLOCK_SIZE
            self._evict()
        except OSError as exc:
            log.warning("cache: could not keep %s as a cached copy: %s", obj.hex, exc)
            adopting.unlink(missing_ok=True)
        finally:
            self._adopting.pop(obj.hex).set()

    def tidy(self) -> None:
        """Close objects beyond the open bound and evict beyond the size, where nothing uses them."""
        self._close_some()
        self._evict()

    def _close_some(self) -> None:
        for digest in list(self._open):
            if len(self._open) <= self.OPEN:
                return
            cached = self._open[digest]
            if not cached.busy:
                del self._open[digest]
                self._lru[digest] = cached.held_bytes()
                cached.close()

    #: Disk space left free for others, whatever the cache's own bound: 5% of the disk, at most this.
    RESERVE = 1024**3

    def _limit(self) -> int:
        """The cache's bound, lowered where the disk has less room left than that (as
        mountpoint-s3 keeps 5% of its disk free), so that a full disk is met by eviction first."""
        try:
            disk = os.statvfs(self.directory)
        except OSError:
            return self.capacity
        free = disk.f_bavail * disk.f_frsize
        reserve = min(self.RESERVE, disk.f_blocks * disk.f_frsize // 20)
        return max(0, min(self.capacity, self.used + free - reserve))

    def _evict(self) -> None:
        """Delete the least recently used objects until the cache fits (objects in use stay)."""
        limit = self._limit()
        for digest in list(self._lru):
            if self.used <= limit:
                return
            cached = self._open.get(digest)
            if cached is not None and cached.busy:
                continue
            held = self._lru.pop(digest)
            if cached is not None:
                del self._open[digest]
                held = cached.held_bytes()
                cached.close()
            self.used -= held
            base = self.directory / digest[:2] / digest
            for suffix in (".index", ".data"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{base}{suffix}")


@dataclass
class CacheStats:
    requests: int = 0
    bytes_fetched: int = 0
    #: Reads served without waiting for the network, and bytes served in all.
    hits: int = 0
    misses: int = 0
    bytes_served: int = 0
    torn_blocks: int = 0
    started: float = field(default_factory=time.time)


class BlockCache:
    """Reads of remote objects through their cached blocks; each missing block fetched once."""

    #: Largest range one GET asks for; longer runs are split so that several requests stream at once.
    MAX_REQUEST = 16 * 1024 * 1024

    def __init__(self, store: ObjectStore, nursery: trio.Nursery, parallel: int = 8):
        self.store = store
        self.nursery = nursery
        self.stats = CacheStats()
        self._requests = trio.CapacityLimiter(parallel)

    def open(self, obj: ObjectRef) -> CachedObject:
        cached = self.store.open(obj)
        cached.readers += 1
        return cached

    def close(self, cached: CachedObject) -> None:
        cached.readers -= 1
        self.store.tidy()

    def prefetch(self, cached: CachedObject, source: Source, first: int, last: int) -> None:
        """Start fetching whichever of blocks first..last are neither held nor on their way."""
        # Runs of blocks found with bytearray.find, in C: a window of 1,000 blocks is scanned on
        # every kernel read of a sequential reader.
        last = min(last, cached.obj.block_count() - 1)
        per_request = self.MAX_REQUEST // BLOCK_SIZE
        held, index = cached.held, first
        while index <= last:
            index = held.find(0, index, last + 1)
            if index < 0:
                return
            covering = next((f for f in cached.fetches if f.covers(index)), None)
            if covering is not None:
                index = covering.last + 1
                continue
            run_last = held.find(1, index, min(last, index + per_request - 1) + 1)
            run_last = min(last, index + per_request - 1) if run_last < 0 else run_last - 1
            for fetch in cached.fetches:  # a run stops where a fetch already on its way begins
                if index < fetch.next <= run_last:
                    run_last = fetch.next - 1
            self._start(cached, source, index, run_last)
            index = run_last + 1

    @staticmethod
    def _read_ahead_from_disk(cached: CachedObject, first: int, last: int) -> None:
        """Have the kernel read the held blocks of a reader's window from the cache file ahead of
        it. A read served from the disk cache (a re-read after the page cache was dropped, or after
        a remount) then finds its blocks in memory; else each `pread` waits for the disk on the
        event loop, holding up every other read, and a re-read ran at half the disk's speed."""
        low, high = cached.advised
        if not low <= first <= high + 1:  # a seek: advice starts over from here
            low, high = first, first - 1
        start = max(first, high + 1)
        last = min(last, cached.obj.block_count() - 1)
        if last < start:
            return
        stop = cached.held.find(0, start, last + 1)  # up to the first block not held: nothing to read
        stop = last + 1 if stop < 0 else stop
        if stop > start:
            with contextlib.suppress(OSError):
                os.posix_fadvise(cached.data_fd, start * BLOCK_SIZE, (stop - start) * BLOCK_SIZE, os.POSIX_FADV_WILLNEED)
            high = stop - 1
        cached.advised = (low, high)

    def _start(self, cached: CachedObject, source: Source, first: int, last: int) -> None:
        fetch = _Fetch(first, last)
        cached.fetches.append(fetch)
        self.nursery.start_soon(self._fetch, cached, source, fetch)

    async def read(self, cached: CachedObject, source: Source, offset: int, size: int, ahead: int = -1) -> bytes:
        """The bytes [offset, offset + size) of the object, fetching what is missing (and blocks up
        to `ahead`, in the same request where they follow on)."""
        obj = cached.obj
        size = min(size, obj.size - offset)
        if size <= 0:
            return b""
        first, last = offset // BLOCK_SIZE, (offset + size - 1) // BLOCK_SIZE
        self.prefetch(cached, source, first, max(last, ahead))
        self._read_ahead_from_disk(cached, first, ahead)
        waited = False
        while True:
            missing = cached.held.find(0, first, last + 1)
            if missing < 0:
                data = os.pread(cached.data_fd, size, offset)
                if cached.check(first, last, data, offset):
                    break
                self.stats.torn_blocks += 1
                self.prefetch(cached, source, first, last)  # torn blocks: fetched again
                continue
            fetch = next((f for f in cached.fetches if f.covers(missing)), None)
            if fetch is None:
                self.prefetch(cached, source, missing, last)
                continue
            waited = True
            await cached.changed.wait()
            if fetch.error is not None:  # the request for this block failed: so does this read
                raise fetch.error
        if waited:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        self.stats.bytes_served += size
        return data

    async def _fetch(self, cached: CachedObject, source: Source, fetch: _Fetch) -> None:
        obj = cached.obj
        start = fetch.next * BLOCK_SIZE
        end = min(obj.size, (fetch.last + 1) * BLOCK_SIZE)
        writer = _BlockWriter(cached, start, end)

        def landed(_: int) -> None:  # on the event loop: what the writer completed, readers may have
            while writer.done:
                index, crc = writer.done.popleft()
                cached.hold(index, crc)
                fetch.next = index + 1
                self.stats.bytes_fetched += obj.block_length(index)
            cached.notify()

        try:
            async with self._requests:
                self.stats.requests += 1
                # The source retries and resumes what the network cuts (see `Http.read_range`):
                # what reaches here is the range, or an error for every waiter.
                if isinstance(source, IntoSource):
                    await source.fetch(start, end, writer.write, landed, cached.working)
                else:
                    async with contextlib.aclosing(source(start, end)) as chunks:
                        async for chunk in chunks:
                            writer.write(writer.position, memoryview(chunk)[: end - writer.position])
                            landed(writer.position)
                            if writer.position >= end:
                                break  # a source that sends more than asked is not read further
                landed(writer.position)
                if writer.position < end:
                    raise PlatformError(f"the source ended at block {fetch.next} of {fetch.next}-{fetch.last}")
        except BaseException as exc:
            fetch.error = exc if isinstance(exc, Exception) else PlatformError("fetch cancelled")
            if not isinstance(exc, (PlatformError, trio.Cancelled)):
                log.exception("fetch failed unexpectedly")
            if isinstance(exc, trio.Cancelled):
                raise
        finally:
            cached.fetches.remove(fetch)
            cached.notify()
            self.store.tidy()


class _BlockWriter:
    """Writes one fetch's bytes into the object's file as they come, in order, and records each
    block it completes, its CRC carried over the pieces' boundaries. Runs in the worker thread of
    a threaded fetch (or on the event loop); the blocks it completed wait in `done` for the event
    loop to count them held."""

    def __init__(self, cached: CachedObject, start: int, end: int):
        self.cached = cached
        self.position = start
        self.end = end
        self.crc = 0
        self.done: deque[tuple[int, int]] = deque()

    def write(self, position: int, data: memoryview) -> None:
        cached = self.cached
        if position != self.position:
            raise PlatformError(f"bytes from {position} where {self.position} was expected")
        written = 0
        try:
            while written < len(data):  # a short write (a disk filling up) is not a whole block
                written += os.pwrite(cached.data_fd, data[written:], position + written)
        except OSError as exc:
            # The local disk, not the network: not retried as a transport failure would be.
            raise PlatformError(f"cannot write to the cache in {cached.store.directory}: {exc.strerror}") from None
        while data:
            index = self.position // BLOCK_SIZE
            block_end = min(self.end, (index + 1) * BLOCK_SIZE)
            take = min(len(data), block_end - self.position)
            self.crc = zlib.crc32(data[:take], self.crc)
            self.position += take
            data = data[take:]
            if self.position == block_end:
                cached.record(index, self.crc)
                self.done.append((index, self.crc))
                self.crc = 0
