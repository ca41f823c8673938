"""The journal of writes: each written file's bytes in a staging file, and a small record per upload.

Every byte a `write()` accepts is in its staging file (`os.pwrite`) before the call returns, so a
killed daemon loses nothing it acknowledged; the record says where the bytes go (platform,
directory, name), how far the upload got (the platform's handle, the parts it confirmed with their
MD5s) and what went wrong last. Records are written to a temporary name and renamed, so a record
is always whole. A record is removed only after the platform confirmed the complete file, except
where the platform cannot list what was uploaded (BugSeq): there it stays, as the mount's own
listing of those files.

Both live under `<cache dir>/uploads/`: `<id>.data` and `<id>.json`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trio

log = logging.getLogger(__name__)

#: Bytes read from a staging file per chunk of a part being sent or hashed.
CHUNK = 1024 * 1024


def key_to_json(key: object) -> object:
    """An entry key (tuples of str/int) as JSON (lists)."""
    if isinstance(key, tuple):
        return [key_to_json(part) for part in key]
    return key


def key_from_json(value: object) -> object:
    """The inverse of `key_to_json`: lists become tuples again, so keys hash as they did."""
    if isinstance(value, list):
        return tuple(key_from_json(part) for part in value)
    return value


@dataclass
class Record:
    """What the journal knows of one upload. Plain data: it is the JSON file."""

    id: str
    #: The config table (and its kind and url): a record is resumed only by a mount of the same.
    platform: str
    kind: str
    url: str
    #: Where the file goes: its directory's key and path in the mount, and its name.
    parent_key: object
    parent_path: str
    name: str
    #: "open" (being written), "pending" (closed, not yet confirmed), "done" (confirmed; kept only
    #: where the platform cannot list uploads: then `entry` describes the file).
    state: str = "open"
    size: int = 0
    mtime: float = field(default_factory=time.time)
    #: The platform file this upload replaces, if any.
    replacing_key: object = None
    #: The directory's platform cannot list uploads: the record stays, "done", as their listing.
    remembers: bool = False
    #: The platform's handle of the begun multipart upload, and the parts it confirmed:
    #: number -> {"start", "end", "md5" (hex), "etag"}.
    handle: dict | None = None
    parts: dict[str, dict] = field(default_factory=dict)
    #: The part sizes planned for this upload: [[count, size], ...] (see `uploads.PartPlan`).
    plan: list[list[int]] | None = None
    #: Failed attempts at finishing, and the last cause.
    failures: int = 0
    error: str = ""
    #: The confirmed file, for "done" records: name, uid, size, mtime, key, xattrs.
    entry: dict | None = None

    @property
    def path(self) -> str:
        return f"{self.parent_path}/{self.name}" if self.parent_path else self.name


class Journal:
    """The records and staging files of one cache directory."""

    def __init__(self, cache_dir: Path):
        self.directory = Path(cache_dir) / "uploads"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._names = itertools.count(1)

    def new_id(self) -> str:
        return f"{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}-{next(self._names)}"

    def data_path(self, record_id: str) -> Path:
        return self.directory / f"{record_id}.data"

    def save(self, record: Record, *, required: bool = False) -> None:
        """Write the record whole (a temporary name, then a rename).

        On a full disk an update is skipped with a warning and the upload goes on from memory: the
        record on disk is older but whole, and a restart resumes from it (sending again what it
        does not know was sent). A `required` save (a new upload's first) raises instead.
        """
        path = self.directory / f"{record.id}.json"
        temporary = path.with_suffix(".json.tmp")
        try:
            temporary.write_text(json.dumps(asdict(record), ensure_ascii=True))
            os.replace(temporary, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            if required or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.warning("uploads: %s: the journal's record of it not updated (%s): the disk of %s is full",
                        record.path, exc.strerror, self.directory)

    def remove(self, record: Record) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.data_path(record.id).unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"{record.id}.json").unlink()

    def drop_data(self, record: Record) -> None:
        """Remove a confirmed upload's bytes, keeping its record (a "done" record)."""
        with contextlib.suppress(FileNotFoundError):
            self.data_path(record.id).unlink()

    def load(self) -> list[Record]:
        """Every whole record; a record cut short by a crash (its temporary) is ignored."""
        records = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                record = Record(**data)
            except (OSError, ValueError, TypeError) as exc:
                log.error("uploads: cannot read the journal record %s (%s); left as it is", path, exc)
                continue
            record.parent_key = key_from_json(record.parent_key)
            record.replacing_key = key_from_json(record.replacing_key)
            records.append(record)
        return records


class StagedFile:
    """The bytes of one file being written, in a staging file: written, read and hashed in place.

    System calls on the file (`pwrite`, `pread`, hashing) run on the caller's thread for small
    writes (a FUSE write is at most 1 MiB) and in worker threads for whole parts.
    """

    def __init__(self, path: Path, size: int = 0):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.size = max(size, os.fstat(self.fd).st_size)
        #: Bumped by every change: a part sent at one generation is stale after a later change to it.
        self.generation = 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def write(self, offset: int, data: bytes) -> int:
        written = os.pwrite(self.fd, data, offset)
        self.size = max(self.size, offset + written)
        self.generation += 1
        return written

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)
        self.size = size
        self.generation += 1

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, max(0, min(size, self.size - offset)), offset)

    def sync(self) -> None:
        os.fsync(self.fd)

    def _md5(self, start: int, end: int) -> bytes:
        digest = hashlib.md5()
        position = start
        while position < end:
            chunk = os.pread(self.fd, min(CHUNK, end - position), position)
            if not chunk:
                raise OSError(f"{self.path.name}: the staging file ends at {position}, before {end}")
            digest.update(chunk)
            position += len(chunk)
        return digest.digest()

    async def md5(self, start: int, end: int) -> bytes:
        return await trio.to_thread.run_sync(self._md5, start, end)

    async def stream(self, start: int, end: int) -> AsyncIterator[bytes]:
        """The bytes [start, end), a chunk at a time: what a part's request body sends."""
        position = start
        while position < end:
            chunk = await trio.to_thread.run_sync(os.pread, self.fd, min(CHUNK, end - position), position)
            if not chunk:
                raise OSError(f"{self.path.name}: the staging file ends at {position}, before {end}")
            position += len(chunk)
            yield chunk
