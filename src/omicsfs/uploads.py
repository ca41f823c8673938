"""Uploads: a written file's journey from its staging file to a file the platform confirmed.

The core owns the journey, a platform only its API calls (`Platform.begin_upload`, `upload_part`,
`complete_upload`, `upload_whole`). Here:

- **Parts are planned** within the platform's `PartRules`: when the size is known (at close, or a
  platform that must be told it up front) one part size that fits the part count; while a file is
  still being written, sizes that grow with the part number (8 MiB for the first thousand parts,
  doubling every thousand, capped at the platform's maximum), so that any file up to the
  platform's limit fits 10,000 parts and part boundaries never move.
- **Parts stream** while the file is written, where the platform can begin without the size: a
  part is sent once the writer has moved past its end, several at once, in the background. A
  later write to a part already sent makes it dirty: it is sent again (a platform replaces a part
  sent again under its number). At close, what is left is sent and the upload completed.
- **Nothing accepted is lost**: every byte is in the staging file before `write()` returns; the
  record says how far the upload got. After a crash the next mount of the same configuration
  checks each recorded part against the staging file and sends only what is missing or changed.
  A failed upload is kept and tried again in the background (30 s, doubling to 10 min), never
  dropped; a record is removed only after the platform confirmed the complete file.
- **Memory stays bounded**: parts are streamed from the staging file a MiB at a time and hashed
  in worker threads; a fixed number of parts is in flight whatever the file's size.
"""

from __future__ import annotations

import errno
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from omicsfs.errors import NotFound, PlatformError
from omicsfs.listings import Place
from omicsfs.platform import Entry, PartBody, PartRules, Platform
from omicsfs.staging import Journal, Record, StagedFile, key_from_json, key_to_json

log = logging.getLogger(__name__)

MiB = 1024 * 1024
#: The first parts' size while the size is unknown, and parts per doubling of it.
STREAM_PART = 8 * MiB
PARTS_PER_STEP = 1000
#: Parts in flight at once, of all files together (one file may use them all).
PARALLEL_PARTS_TOTAL = 8
#: A part whose ETag differs from its MD5 is sent this many times before the upload fails.
ETAG_TRIES = 3
#: Background retries of a failed upload: the first wait and the longest.
RETRY_FIRST = 30.0
RETRY_MAX = 600.0


class PartPlan:
    """Part boundaries as a function of the part number: runs of (count, size)."""

    def __init__(self, runs: list[list[int]]):
        self.runs = [(int(count), int(size)) for count, size in runs]

    @classmethod
    def for_rules(cls, rules: PartRules, size: int | None) -> PartPlan:
        def fit(part: int) -> int:
            return max(rules.min_part, min(rules.max_part, part))

        if size is not None:
            part = fit(max(STREAM_PART, math.ceil(size / rules.max_parts / MiB) * MiB))
            if part * rules.max_parts < size:
                raise PlatformError(f"{size} bytes do not fit {rules.max_parts} parts of at most {rules.max_part}",
                                    errno_=errno.EFBIG)
            return cls([[rules.max_parts, part]])
        runs, left, part = [], rules.max_parts, fit(STREAM_PART)
        while left > 0:
            count = min(PARTS_PER_STEP, left) if part < rules.max_part else left
            runs.append([count, part])
            left -= count
            part = fit(part * 2)
        return cls(runs)

    def to_json(self) -> list[list[int]]:
        return [[count, size] for count, size in self.runs]

    @property
    def capacity(self) -> int:
        return sum(count * size for count, size in self.runs)

    def bounds(self, number: int) -> tuple[int, int]:
        """Bytes [start, end) of part `number` (from 1), as if the file were endless."""
        start, index = 0, number - 1
        for count, size in self.runs:
            if index < count:
                return start + index * size, start + (index + 1) * size
            start += count * size
            index -= count
        raise PlatformError(f"part {number} is beyond the platform's part count", errno_=errno.EFBIG)

    def number_at(self, offset: int) -> int:
        """The part holding byte `offset`."""
        first = 1
        for count, size in self.runs:
            if offset < count * size:
                return first + offset // size
            offset -= count * size
            first += count
        raise PlatformError("the file is larger than the platform takes", errno_=errno.EFBIG)

    def count_for(self, size: int) -> int:
        """Parts that hold a file of `size` bytes (at least one)."""
        return 1 if size <= 0 else self.number_at(size - 1)


@dataclass(eq=False)
class Upload:
    """One file being written or uploaded, in memory: its record, its staging file, its progress."""

    record: Record
    platform: Platform
    staged: StagedFile | None
    #: Open handles writing to it, and reading it (the staging file is kept while any is open).
    writers: int = 0
    readers: int = 0
    #: Per part: the staging file's generation when it was last changed, and when it was last sent.
    changed: dict[int, int] = field(default_factory=dict)
    sent: dict[int, int] = field(default_factory=dict)
    #: Parts changed since last sent and not on their way: candidates for streaming.
    dirty: set[int] = field(default_factory=set)
    in_flight: set[int] = field(default_factory=set)
    idle: trio.Event = field(default_factory=trio.Event)
    #: One finisher at a time; one beginning of the platform's upload.
    lock: trio.Lock = field(default_factory=trio.Lock)
    begin_lock: trio.Lock = field(default_factory=trio.Lock)
    #: The staging generation the platform confirmed, and the file it confirmed.
    confirmed: int = -1
    entry: Entry | None = None
    background: bool = False

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def rules(self) -> PartRules:
        assert self.platform.part_rules is not None
        return self.platform.part_rules

    @property
    def place(self) -> Place:
        return self.record.platform, self.record.parent_key

    @property
    def unconfirmed(self) -> bool:
        return self.staged is not None and self.confirmed != self.staged.generation

    def staged_entry(self) -> Entry:
        """How the file shows while it is written and uploaded: its name, its size so far."""
        record = self.record
        return Entry(record.name, False, ("staged", record.id), uid=record.id, size=self.staged.size if self.staged else record.size,
                     mtime=record.mtime, version=record.id, allows=frozenset({"delete"}),
                     xattrs={"upload": record.state, **({"error": record.error} if record.error else {})})


class Uploads:
    """Every upload of one mount: started by writes, resumed from the journal, retried until confirmed."""

    def __init__(self, journal: Journal, platforms: dict[str, Platform], nursery: trio.Nursery, *, write_back: str = "sync",
                 on_confirmed: Callable[[Upload], None] = lambda upload: None):
        self.journal = journal
        self.platforms = platforms
        self.nursery = nursery
        self.write_back = write_back
        self.on_confirmed = on_confirmed
        #: Offered a confirmed upload's staging file before it is deleted; True if it took it
        #: (the block cache keeps it as the file's cached copy).
        self.adopt: Callable[[Upload, str], bool] = lambda upload, path: False
        self._parts = trio.CapacityLimiter(PARALLEL_PARTS_TOTAL)
        self._active: dict[str, Upload] = {}
        #: Confirmed uploads into directories whose platform cannot list them: place -> name -> entry.
        self._remembered: dict[Place, dict[str, Entry]] = {}
        self._finishing = 0
        self._quiet = trio.Event()
        self._quiet.set()

    # -- what the listings show ------------------------------------------------------------------

    def staged_in(self, place: Place) -> dict[str, Upload]:
        """Uploads not yet confirmed (or still open) in a directory, by name."""
        return {u.record.name: u for u in self._active.values() if u.place == place and u.staged is not None}

    def remembered_in(self, place: Place) -> dict[str, Entry]:
        return self._remembered.get(place, {})

    def pending(self) -> list[Upload]:
        return [u for u in self._active.values() if u.record.state != "done"]

    def remembered_count(self) -> int:
        """Confirmed uploads kept as the listing of directories their platform cannot list."""
        return sum(len(names) for names in self._remembered.values())

    # -- starting, writing -------------------------------------------------------------------

    def create(self, platform: Platform, parent: Entry, parent_path: str, name: str, replacing: Entry | None = None) -> Upload:
        """A new file `name` in `parent`, empty, staged and recorded before anything else happens."""
        record = Record(self.journal.new_id(), platform.name, platform.kind, platform.settings.get("url", ""),
                        parent.key, parent_path, name, replacing_key=replacing.key if replacing else None,
                        remembers=parent.remembers_uploads)
        self.journal.save(self._json_ready(record), required=True)
        upload = Upload(record, platform, StagedFile(self.journal.data_path(record.id)))
        self._active[record.id] = upload
        return upload

    def written(self, upload: Upload, start: int, end: int) -> None:
        """Note a write of [start, end): the parts it changed, and the parts now ready to stream."""
        staged, rules = upload.staged, upload.rules
        plan = self._plan(upload)
        if plan is None:
            return
        generation = staged.generation
        for number in range(plan.number_at(start), plan.number_at(max(start, end - 1)) + 1):
            upload.changed[number] = generation
            upload.dirty.add(number)
        upload.record.size = staged.size
        if rules.needs_size or staged.size <= rules.whole_max:
            return
        # Stream the parts the writer has moved past (not the one it is writing).
        current = plan.number_at(max(0, end - 1))
        for number in sorted(n for n in upload.dirty if n < current and n not in upload.in_flight):
            if not self._start_part(upload, number):
                break

    def truncated(self, upload: Upload, size: int) -> None:
        plan = self._plan(upload)
        if plan is not None:
            upload.changed[plan.number_at(max(0, size - 1))] = upload.staged.generation
        upload.record.size = size

    # -- finishing -----------------------------------------------------------------------------

    async def close(self, upload: Upload, *, wait: bool | None = None) -> None:
        """The last writer closed (or fsync): confirm the file now (`write_back` "sync", or `wait`),
        or in the background ("async"). Raises a `PlatformError` if it failed for good: the
        journal keeps it and tries again later."""
        if upload.record.state == "open":
            upload.record.state = "pending"
        upload.record.size = upload.staged.size
        self.journal.save(self._json_ready(upload.record))
        if not upload.unconfirmed:
            return
        if wait if wait is not None else self.write_back == "sync":
            await self.finish(upload)
        else:
            self.schedule(upload)

    def schedule(self, upload: Upload) -> None:
        """Finish in the background, retrying until the platform confirms."""
        if not upload.background:
            upload.background = True
            self.nursery.start_soon(self._keep_trying, upload)

    async def _keep_trying(self, upload: Upload) -> None:
        try:
            delay = RETRY_FIRST
            while upload.unconfirmed and upload.writers == 0:
                try:
                    await self.finish(upload)
                    return
                except PlatformError as exc:
                    log.warning("%s: upload failed (%s); trying again in %.0f s", upload.record.path, exc, delay)
                await trio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)
        finally:
            upload.background = False

    async def finish(self, upload: Upload) -> Entry:
        """Upload what the staging file holds now and complete it; the confirmed file."""
        async with upload.lock:
            if not upload.unconfirmed and upload.entry is not None:
                return upload.entry
            if not self._finishing:
                self._quiet = trio.Event()
            self._finishing += 1
            try:
                entry = await self._finish(upload)
            except PlatformError as exc:
                upload.record.failures += 1
                upload.record.error = str(exc)
                self.journal.save(self._json_ready(upload.record))
                raise
            finally:
                self._finishing -= 1
                if not self._finishing:
                    self._quiet.set()
            return entry

    async def _finish(self, upload: Upload) -> Entry:
        record, platform, staged, rules = upload.record, upload.platform, upload.staged, upload.rules
        generation, size = staged.generation, staged.size
        parent = Entry(record.parent_path.rsplit("/", 1)[-1], True, record.parent_key)
        replacing = Entry(record.name, False, record.replacing_key) if record.replacing_key is not None else None
        started = time.monotonic()
        if size <= rules.whole_max and record.handle is None:
            body = PartBody(size, await staged.md5(0, size), lambda: staged.stream(0, size))
            entry = await platform.upload_whole(parent, record.name, body, replacing)
        else:
            plan = self._plan(upload, size_if_needed=size)
            count = plan.count_for(size)
            if record.handle is not None and any(int(number) > count for number in record.parts):
                # Parts beyond the end were sent before the file shrank: a platform may assemble
                # every part it holds, so the upload starts over.
                log.info("%s: the file shrank below parts already sent; starting the upload over", record.path)
                await self._abandon(upload)
                plan = self._plan(upload, size_if_needed=size)
            if record.handle is None:
                await self._begin(upload, size if rules.needs_size else None)
                plan = self._plan(upload, size_if_needed=size)
                count = plan.count_for(size)
            await upload.idle.wait()  # parts streaming already: let them land
            missing = [n for n in range(1, count + 1) if not self._clean(upload, plan, n, size)]
            async with trio.open_nursery() as nursery:
                for number in missing:
                    nursery.start_soon(self._send_part, upload, plan, number, size)
            missing = [n for n in range(1, count + 1) if not self._clean(upload, plan, n, size)]
            if missing:
                raise PlatformError(f"{record.path}: parts {missing[:5]} were not accepted")
            parts = [(n, record.parts[str(n)]["etag"]) for n in range(1, count + 1)]
            try:
                entry = await platform.complete_upload(record.handle, parts, size)
            except NotFound:
                # The platform no longer knows this upload (an answer to a complete that was
                # lost, a handle too old): never taken as done; the upload starts over.
                log.warning("%s: the platform no longer knows this upload; starting it over", record.path)
                await self._abandon(upload)
                raise

        log.info("%s: uploaded %d bytes in %.1f s", record.path, size, time.monotonic() - started)
        upload.confirmed, upload.entry = generation, entry
        self._confirmed(upload, entry)
        return entry

    async def _abandon(self, upload: Upload) -> None:
        record = upload.record
        if record.handle is not None:
            try:
                await upload.platform.abort_upload(record.handle)
            except PlatformError as exc:
                log.info("%s: could not abort the unfinished upload (%s)", record.path, exc)
        record.handle, record.parts, record.plan = None, {}, None
        upload.sent.clear()
        self.journal.save(self._json_ready(record))

    def _confirmed(self, upload: Upload, entry: Entry) -> None:
        record = upload.record
        record.error, record.failures = "", 0
        # More writes to this file (an fsync, then more) upload it again, replacing this one.
        record.handle, record.parts, record.plan, record.replacing_key = None, {}, None, entry.key
        upload.sent.clear()
        if record.remembers:
            record.state = "done"
            record.entry = {"name": entry.name, "uid": entry.uid, "size": entry.size, "mtime": entry.mtime,
                            "key": key_to_json(entry.key), "version": entry.version, "xattrs": entry.xattrs}
            self._remember(record)
            self.journal.save(self._json_ready(record))
        else:
            record.state = "confirmed"
        self.on_confirmed(upload)
        if not upload.unconfirmed and upload.writers == 0:
            self.release(upload)

    def release(self, upload: Upload) -> None:
        """No handle is open and the platform holds the file: drop the staging file and the record
        (a "done" record stays, as the listing of a directory the platform cannot list)."""
        if upload.writers or upload.readers or upload.unconfirmed:
            return
        if upload.staged is not None:
            upload.staged.close()
            upload.staged = None
        self._active.pop(upload.record.id, None)
        data = self.journal.data_path(upload.record.id)
        if upload.entry is not None and data.exists():
            try:
                if self.adopt(upload, str(data)):
                    log.debug("%s: its bytes are the cached copy now", upload.record.path)
            except OSError as exc:
                log.warning("%s: its bytes could not be kept in the cache (%s)", upload.record.path, exc)
        if upload.record.state == "done":
            self.journal.drop_data(upload.record)
        else:
            self.journal.remove(upload.record)

    def move(self, upload: Upload, parent: Entry, parent_path: str, name: str) -> None:
        """A file not yet handed to the platform is renamed or moved: only its record changes."""
        record = upload.record
        record.parent_key, record.parent_path, record.name = parent.key, parent_path, name
        record.remembers = parent.remembers_uploads
        self.journal.save(self._json_ready(record))

    async def cancel(self, upload: Upload) -> None:
        """`rm` of a file not yet confirmed: the upload is abandoned and its bytes dropped."""
        async with upload.lock:
            await self._abandon(upload)
            if upload.staged is not None:
                upload.staged.close()
                upload.staged = None
            self._active.pop(upload.record.id, None)
            self.journal.remove(upload.record)

    # -- parts ---------------------------------------------------------------------------------

    def _plan(self, upload: Upload, size_if_needed: int | None = None) -> PartPlan | None:
        """The upload's part plan, made once: None while a platform that needs the size waits for it."""
        record, rules = upload.record, upload.rules
        if record.plan is None:
            if rules.needs_size and size_if_needed is None:
                return None
            record.plan = PartPlan.for_rules(rules, size_if_needed if rules.needs_size else None).to_json()
        return PartPlan(record.plan)

    def _clean(self, upload: Upload, plan: PartPlan, number: int, size: int | None) -> bool:
        """Whether the platform holds part `number` as the staging file has it now."""
        sent = upload.record.parts.get(str(number))
        if sent is None or number not in upload.sent:
            return False
        start, end = plan.bounds(number)
        if size is not None and (sent["start"], sent["end"]) != (start, min(end, size)):
            return False
        return upload.changed.get(number, -1) <= upload.sent[number]

    async def _begin(self, upload: Upload, size: int | None) -> None:
        """Begin the platform's upload, once, whoever asks first (a streamed part or the close)."""
        async with upload.begin_lock:
            record = upload.record
            if record.handle is not None:
                return
            parent = Entry(record.parent_path.rsplit("/", 1)[-1], True, record.parent_key)
            replacing = Entry(record.name, False, record.replacing_key) if record.replacing_key is not None else None
            record.handle = await upload.platform.begin_upload(parent, record.name, size, replacing)
            if record.handle.get("part_size"):  # a platform that chooses the part size itself
                record.plan = PartPlan([[upload.rules.max_parts, int(record.handle["part_size"])]]).to_json()
            self.journal.save(self._json_ready(record))

    def _start_part(self, upload: Upload, number: int) -> bool:
        """Stream part `number` in the background; False while the upload's first part begins it."""
        if upload.record.handle is None and upload.in_flight:
            return False
        upload.dirty.discard(number)
        upload.in_flight.add(number)
        if upload.idle.is_set():
            upload.idle = trio.Event()
        self.nursery.start_soon(self._stream_part, upload, number)
        return True

    async def _stream_part(self, upload: Upload, number: int) -> None:
        """A part sent while the file is still written; a failure leaves it for the close."""
        try:
            await self._begin(upload, None)
            await self._send_part(upload, self._plan(upload), number, None)
        except PlatformError as exc:
            upload.dirty.add(number)
            log.info("%s: part %d will be sent again at close (%s)", upload.record.path, number, exc)
        finally:
            upload.in_flight.discard(number)
            if not upload.in_flight:
                upload.idle.set()

    async def _send_part(self, upload: Upload, plan: PartPlan, number: int, size: int | None) -> None:
        record, staged = upload.record, upload.staged
        start, end = plan.bounds(number)
        async with self._parts:
            generation = staged.generation
            end = min(end, staged.size if size is None else size)
            md5 = await staged.md5(start, end)
            body = PartBody(end - start, md5, lambda: staged.stream(start, end))
            for attempt in range(1, ETAG_TRIES + 1):
                etag = await upload.platform.upload_part(record.handle, number, body)
                if not upload.rules.etag_is_md5 or etag.strip().strip('"').lower() == md5.hex():
                    break
                log.warning("%s: part %d: the platform's ETag %s is not the MD5 of what was sent (%s); %s",
                            record.path, number, etag, md5.hex(), "sending it again" if attempt < ETAG_TRIES else "giving up")
            else:
                raise PlatformError(f"{record.path}: part {number} arrived different {ETAG_TRIES} times")
        record.parts[str(number)] = {"start": start, "end": end, "md5": md5.hex(), "etag": etag}
        upload.sent[number] = generation
        if upload.changed.get(number, -1) <= generation:
            upload.dirty.discard(number)
        self.journal.save(self._json_ready(record))

    # -- the journal ------------------------------------------------------------------------

    @staticmethod
    def _json_ready(record: Record) -> Record:
        """The record with its keys as JSON (lists), for `Journal.save`."""
        copy = Record(**{**record.__dict__})
        copy.parent_key = key_to_json(record.parent_key)
        copy.replacing_key = key_to_json(record.replacing_key)
        return copy

    def _remember(self, record: Record) -> None:
        entry = record.entry or {}
        shown = Entry(entry.get("name", record.name), False, key_from_json(entry.get("key")), uid=str(entry.get("uid", "")),
                      size=int(entry.get("size", record.size)), mtime=float(entry.get("mtime", record.mtime)),
                      version=str(entry.get("version", "")), xattrs=dict(entry.get("xattrs") or {}))
        self._remembered.setdefault((record.platform, record.parent_key), {})[record.name] = shown

    async def resume(self) -> None:
        """Take up the journal this mount's configuration left: what was written is uploaded."""
        for record in self.journal.load():
            platform = self.platforms.get(record.platform)
            if platform is None or platform.kind != record.kind or platform.settings.get("url", "") != record.url:
                log.info("uploads: %s belongs to another configuration ([platforms.%s]); left in the journal", record.path,
                         record.platform)
                continue
            if record.state == "done":
                self._remember(record)
                continue
            data = self.journal.data_path(record.id)
            if not data.exists():
                log.error("uploads: %s: its staged bytes (%s) are gone; the record is kept for you to look at", record.path, data)
                continue
            was = record.state
            record.state = "pending"
            upload = Upload(record, platform, StagedFile(data, record.size))
            self._active[record.id] = upload
            plan = PartPlan(record.plan) if record.plan else None
            kept = 0
            for number, part in list(record.parts.items()):
                if plan is not None and part["end"] <= upload.staged.size and (
                    (await upload.staged.md5(part["start"], part["end"])).hex() == part["md5"]
                ):
                    upload.sent[int(number)] = 0
                    kept += 1
                else:
                    del record.parts[number]
            self.journal.save(self._json_ready(record))
            log.warning("%s: resuming an upload left %s by the last mount: %d bytes, %d part(s) already on the platform",
                        record.path, "open" if was == "open" else "unfinished", upload.staged.size, kept)
            self.schedule(upload)

    async def drain(self) -> None:
        """Wait until no upload is being finished (at unmount: uploads in flight land)."""
        await self._quiet.wait()
