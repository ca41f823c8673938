"""The core of the write path without FUSE: part plans, streaming, close, retries, resuming after a
crash. The platform here is a small in-memory one that keeps S3's part rules; the real platforms'
uploads are tested through real mounts against their emulators (tests/test_*_writes.py)."""

from __future__ import annotations

import hashlib
import os

import pytest
import trio

from omicsfs.errors import PlatformError
from omicsfs.platform import Entry, PartBody, PartRules, Platform
from omicsfs.staging import Journal
from omicsfs.uploads import PARTS_PER_STEP, PartPlan, Uploads

MiB = 1024 * 1024
S3 = PartRules(min_part=5 * MiB, max_part=5 * 1024 * MiB, max_parts=10_000, whole_max=5 * MiB - 1)
BASESPACE = PartRules(min_part=5 * MiB, max_part=25_000_000, max_parts=10_000, whole_max=5 * MiB - 1)


class MemoryPlatform(Platform):
    """Uploads kept in memory, with S3's rules: parts replace parts of the same number, complete
    checks every part and its ETag, all but the last part at least `min_part`."""

    kind = "memory"
    title = "Memory"
    needs_token = False

    def __init__(self, rules: PartRules = S3, *, remembers: bool = False):
        super().__init__("mem", {"url": "memory:"}, http=None)
        self.part_rules = rules
        self.remembers = remembers
        self.uploads: dict[str, dict[int, bytes]] = {}
        self.files: dict[str, bytes] = {}
        self.log: list[tuple] = []
        self.fail_parts: dict[int, int] = {}  # number -> failures to give
        self.wrong_etags: dict[int, int] = {}
        self.fail_completes = 0
        self.part_gate: trio.Event | None = None

    async def check(self):
        pass

    async def list_dir(self, entry):
        return []

    def read(self, entry, start, end, *, what):
        raise NotImplementedError

    async def begin_upload(self, parent, name, size, replacing):
        upload_id = f"u{len(self.uploads) + 1}"
        self.uploads[upload_id] = {}
        self.log.append(("begin", name, size))
        return {"id": upload_id, "name": name}

    async def upload_part(self, handle, number, body: PartBody):
        if self.part_gate is not None:
            await self.part_gate.wait()
        data = b"".join([chunk async for chunk in body.stream()])
        assert hashlib.md5(data).digest() == body.md5 and len(data) == body.size
        self.log.append(("part", number, len(data)))
        if self.fail_parts.get(number):
            self.fail_parts[number] -= 1
            raise PlatformError(f"part {number} refused (injected)")
        self.uploads[handle["id"]][number] = data
        if self.wrong_etags.get(number):
            self.wrong_etags[number] -= 1
            return '"00000000000000000000000000000000"'
        return f'"{hashlib.md5(data).hexdigest()}"'

    async def complete_upload(self, handle, parts, size):
        if self.fail_completes:
            self.fail_completes -= 1
            raise PlatformError("complete refused (injected)")
        held = self.uploads[handle["id"]]
        numbers = [number for number, _ in parts]
        assert numbers == list(range(1, len(parts) + 1))
        for position, (number, etag) in enumerate(parts):
            assert etag.strip('"') == hashlib.md5(held[number]).hexdigest()
            if position < len(parts) - 1:
                assert len(held[number]) >= self.part_rules.min_part, f"part {number} too small"
        data = b"".join(held[number] for number in numbers)
        assert len(data) == size
        return self._stored(handle["name"], data)

    async def abort_upload(self, handle):
        self.log.append(("abort", handle["id"]))
        self.uploads.pop(handle["id"], None)

    async def upload_whole(self, parent, name, body, replacing):
        data = b"".join([chunk async for chunk in body.stream()])
        self.log.append(("whole", name, len(data)))
        return self._stored(name, data)

    def _stored(self, name: str, data: bytes) -> Entry:
        self.files[name] = data
        self.log.append(("complete", name, len(data)))
        return Entry(name, False, ("file", name), uid=f"id-{name}", size=len(data), version=hashlib.md5(data).hexdigest())

    def sent_parts(self) -> list[int]:
        return [number for kind, number, *_ in self.log if kind == "part"]


PARENT = Entry("dir", True, ("dir", "d1"), allows=frozenset({"create"}))


def pattern(size: int, seed: int = 1) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture
async def world(tmp_path, nursery):
    def make(platform: MemoryPlatform, write_back: str = "sync") -> Uploads:
        return Uploads(Journal(tmp_path), {platform.name: platform}, nursery, write_back=write_back)

    return make


async def write_all(uploads: Uploads, upload, data: bytes, chunk: int = 128 * 1024, start: int = 0) -> None:
    for offset in range(0, len(data), chunk):
        piece = data[offset : offset + chunk]
        upload.staged.write(start + offset, piece)
        uploads.written(upload, start + offset, start + offset + len(piece))
        await trio.sleep(0)


# -- part plans -----------------------------------------------------------------------------------


@pytest.mark.parametrize("rules, largest", [(S3, 5 * 1024**4), (BASESPACE, 200 * 10**9)])
def test_a_streaming_plan_grows_so_the_largest_files_fit(rules, largest):
    plan = PartPlan.for_rules(rules, None)
    assert plan.capacity >= largest
    assert sum(count for count, _ in plan.runs) == rules.max_parts
    assert plan.bounds(1) == (0, 8 * MiB) and plan.bounds(PARTS_PER_STEP) == ((PARTS_PER_STEP - 1) * 8 * MiB, PARTS_PER_STEP * 8 * MiB)
    assert plan.bounds(PARTS_PER_STEP + 1)[1] - plan.bounds(PARTS_PER_STEP + 1)[0] == 16 * MiB
    for number in (1, 999, 1000, 1001, 5000, 10_000):
        start, end = plan.bounds(number)
        assert rules.min_part <= end - start <= rules.max_part
        assert plan.number_at(start) == number and plan.number_at(end - 1) == number
        if number > 1:
            assert plan.bounds(number - 1)[1] == start, "parts are contiguous"


def test_a_known_size_gets_one_part_size_that_fits():
    plan = PartPlan.for_rules(S3, 100 * MiB)
    assert plan.bounds(1) == (0, 8 * MiB) and plan.count_for(100 * MiB) == 13
    huge = PartPlan.for_rules(S3, 1024**4)  # 1 TiB in at most 10,000 parts
    assert plan.count_for(0) == 1
    assert huge.count_for(1024**4) <= 10_000 and huge.bounds(1)[1] % MiB == 0
    with pytest.raises(PlatformError) as info:
        PartPlan.for_rules(BASESPACE, 300 * 10**9)
    assert info.value.errno == 27  # EFBIG


# -- uploads --------------------------------------------------------------------------------------


async def test_parts_stream_while_the_file_is_written_and_close_completes(world):
    platform = MemoryPlatform()
    uploads = world(platform)
    upload = uploads.create(platform, PARENT, "mem/dir", "big.bin")
    data = pattern(20 * MiB + 12345)
    await write_all(uploads, upload, data)
    await trio.sleep(1)  # let streamed parts land
    assert sorted(platform.sent_parts()) == [1, 2], "the parts the writer moved past were sent before the close"
    await uploads.close(upload)
    assert platform.files["big.bin"] == data
    assert sorted(platform.sent_parts()) == [1, 2, 3]
    assert [entry[0] for entry in platform.log].count("begin") == 1
    assert not upload.unconfirmed and upload.entry.key == ("file", "big.bin")


async def test_a_part_rewritten_after_it_was_sent_is_sent_again(world):
    platform = MemoryPlatform()
    uploads = world(platform)
    upload = uploads.create(platform, PARENT, "mem/dir", "header.bin")
    data = bytearray(pattern(18 * MiB))
    await write_all(uploads, upload, bytes(data))
    await trio.sleep(1)
    assert sorted(platform.sent_parts()) == [1, 2]
    upload.staged.write(100, b"REWRITTEN HEADER")  # a script seeks back and rewrites its header
    uploads.written(upload, 100, 116)
    data[100:116] = b"REWRITTEN HEADER"
    await uploads.close(upload)
    assert platform.files["header.bin"] == bytes(data)
    assert sorted(platform.sent_parts()) == [1, 1, 2, 3]


async def test_a_platform_that_needs_the_size_begins_at_close(world):
    platform = MemoryPlatform(PartRules(min_part=5 * MiB, max_part=5 * 1024 * MiB, whole_max=0, needs_size=True))
    uploads = world(platform)
    upload = uploads.create(platform, PARENT, "mem/dir", "sized.bin")
    data = pattern(17 * MiB)
    await write_all(uploads, upload, data)
    await trio.sleep(1)
    assert platform.log == []
    await uploads.close(upload)
    assert platform.log[0] == ("begin", "sized.bin", 17 * MiB)
    assert platform.files["sized.bin"] == data


@pytest.mark.parametrize("size", [0, 1, 5 * MiB - 1])
async def test_small_files_go_whole(world, size):
    platform = MemoryPlatform()
    uploads = world(platform)
    upload = uploads.create(platform, PARENT, "mem/dir", "small.txt")
    await write_all(uploads, upload, pattern(size))
    await uploads.close(upload)
    assert platform.log == [("whole", "small.txt", size), ("complete", "small.txt", size)]


async def test_a_part_whose_etag_differs_is_sent_again(world, caplog):
    platform = MemoryPlatform()
    platform.wrong_etags = {2: 1}
    uploads = world(platform)
    upload = uploads.create(platform, PARENT, "mem/dir", "etag.bin")
    data = pattern(12 * MiB)
    await write_all(uploads, upload, data)
    await uploads.close(upload)
    assert platform.files["etag.bin"] == data
    assert platform.sent_parts().count(2) == 2
    assert "is not the MD5 of what was sent" in caplog.text


async def test_a_failed_upload_is_kept_reported_and_retried_in_the_background(world, autojump_clock):
    platform = MemoryPlatform()
    platform.fail_completes = 2
    uploads = world(platform)
    upload = uploads.create(platform, PARENT, "mem/dir", "retry.bin")
    data = pattern(9 * MiB)
    await write_all(uploads, upload, data)
    with pytest.raises(PlatformError, match="complete refused"):
        await uploads.close(upload)
    (record,) = [r for r in uploads.journal.load()]
    assert record.state == "pending" and "complete refused" in record.error and record.failures == 1
    assert os.path.getsize(uploads.journal.data_path(record.id)) == len(data), "the bytes are kept"
    uploads.schedule(upload)
    await trio.sleep(120)  # one background retry fails, the next succeeds
    assert platform.files["retry.bin"] == data
    assert uploads.journal.load() == [] and not uploads.journal.data_path(record.id).exists()


async def test_a_crashed_mount_resumes_sending_only_what_is_missing(tmp_path, world, nursery):
    platform = MemoryPlatform()
    uploads = world(platform)
    upload = uploads.create(platform, PARENT, "mem/dir", "resume.bin")
    data = pattern(30 * MiB)
    await write_all(uploads, upload, data)
    await trio.sleep(1)
    assert sorted(platform.sent_parts()) == [1, 2, 3]
    # The daemon dies here (kill -9): a new mount of the same configuration takes the journal up.
    upload.staged.close()
    again = Uploads(Journal(tmp_path), {platform.name: platform}, nursery)
    await again.resume()
    await trio.sleep(2)
    assert platform.files["resume.bin"] == data
    assert sorted(platform.sent_parts()) == [1, 2, 3, 4], "parts 1-3 were already on the platform: only 4 was sent"
    assert again.journal.load() == []


async def test_a_resumed_part_that_changed_since_it_was_sent_is_sent_again(tmp_path, world, nursery):
    platform = MemoryPlatform()
    uploads = world(platform)
    upload = uploads.create(platform, PARENT, "mem/dir", "changed.bin")
    data = bytearray(pattern(20 * MiB))
    await write_all(uploads, upload, bytes(data))
    await trio.sleep(1)
    upload.staged.write(0, b"X" * 10)  # written after part 1 was sent, then the crash
    data[0:10] = b"X" * 10
    upload.staged.close()
    again = Uploads(Journal(tmp_path), {platform.name: platform}, nursery)
    await again.resume()
    await trio.sleep(2)
    assert platform.files["changed.bin"] == bytes(data)
    assert sorted(platform.sent_parts()) == [1, 1, 2, 3]


async def test_a_file_that_shrank_below_parts_sent_starts_over(world):
    platform = MemoryPlatform()
    uploads = world(platform)
    upload = uploads.create(platform, PARENT, "mem/dir", "shrunk.bin")
    await write_all(uploads, upload, pattern(26 * MiB))
    await trio.sleep(1)
    assert sorted(platform.sent_parts()) == [1, 2, 3]
    upload.staged.truncate(6 * MiB)
    uploads.truncated(upload, 6 * MiB)
    await uploads.close(upload)
    assert platform.files["shrunk.bin"] == pattern(6 * MiB)
    assert ("abort", "u1") in platform.log


async def test_uploads_a_platform_cannot_list_are_remembered(tmp_path, world, nursery):
    platform = MemoryPlatform()
    uploads = world(platform)
    parent = Entry("uploads", True, ("uploads",), allows=frozenset({"create"}), remembers_uploads=True)
    upload = uploads.create(platform, parent, "mem/uploads", "reads.fastq.gz")
    await write_all(uploads, upload, pattern(1000))
    await uploads.close(upload)
    uploads.release(upload)
    shown = uploads.remembered_in(("mem", ("uploads",)))
    assert shown["reads.fastq.gz"].uid == "id-reads.fastq.gz" and shown["reads.fastq.gz"].size == 1000
    # After a remount, from the journal alone.
    again = Uploads(Journal(tmp_path), {platform.name: platform}, nursery)
    await again.resume()
    assert again.remembered_in(("mem", ("uploads",)))["reads.fastq.gz"].uid == "id-reads.fastq.gz"
    assert not again.journal.data_path(upload.record.id).exists(), "the bytes went; the record stays"


async def test_async_write_back_returns_at_once_and_drain_waits(world):
    platform = MemoryPlatform()
    platform.part_gate = trio.Event()
    uploads = world(platform, write_back="async")
    upload = uploads.create(platform, PARENT, "mem/dir", "async.bin")
    data = pattern(11 * MiB)
    await write_all(uploads, upload, data)
    await uploads.close(upload)
    assert "async.bin" not in platform.files
    platform.part_gate.set()
    await trio.sleep(0.5)
    await uploads.drain()
    assert platform.files["async.bin"] == data
