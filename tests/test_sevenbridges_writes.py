"""Seven Bridges writes: the platform module against the emulator's upload flow, then real mounts.

First the module is driven directly (as the core drives it) over a real `httpx.AsyncClient` and
`Http`: folders, multipart uploads of parts streamed from bytes or a file, replace, rename, move,
delete; every fault the part store can inject; and the emulator's own strictness. Then real mounts
and real tools (`cp`, `mkdir`, `samtools`, `rsync`, `mv`, `rm`, a kill -9 of the daemon). Results are
read back through the module (or a fresh mount) and compared with the bytes the emulator stored.

These tests run against an emulator of their own, on the session's generated data: what they write
changes the account, and the read tests compare the session emulator's account with what they
generated.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
import trio

from omicsfs.emulator import Knobs
from omicsfs.emulator.server import EmulatorProcess
from omicsfs.errors import AccessDenied, PlatformError
from omicsfs.http import Http, RetryPolicy, new_client
from omicsfs.platform import Entry, PartBody
from omicsfs.platforms import sevenbridges
from omicsfs.mount import is_mounted
from tests.conftest import TEST_LARGE_FILE, md5sums, platform_table, wait_for

MiB = 1024 * 1024
#: Quick retries: the faults are injected, the waits would only slow the tests.
RETRY = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05)
RNA = "alice/rna-pilot"


@pytest.fixture(scope="module")
def sbg_emulator(emulator) -> EmulatorProcess:
    """An emulator for this module alone, on the session's generated data."""
    process = EmulatorProcess(emulator.data_dir, large_file_size=TEST_LARGE_FILE).wait_ready()
    yield process
    process.stop()


@pytest.fixture
def server(sbg_emulator) -> EmulatorProcess:
    sbg_emulator.knobs(**dataclasses.asdict(Knobs()))
    sbg_emulator.reset_stats()
    return sbg_emulator


@pytest.fixture
async def platform(server):
    async with new_client() as client:
        settings = {"kind": "sevenbridges", "url": f"{server.url}/sevenbridges", "token": server.token}
        yield sevenbridges.PLATFORM("sevenbridges", settings, Http(client, RETRY))


# -- helpers -------------------------------------------------------------------------------------


def data(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def body_of(content: bytes) -> PartBody:
    """A part streamed from bytes in 1 MiB chunks, afresh for each call."""

    async def stream():
        for start in range(0, len(content), MiB):
            yield content[start : start + MiB]

    return PartBody(len(content), hashlib.md5(content).digest(), stream)


def body_from_file(path: Path, start: int, length: int) -> PartBody:
    """A part streamed from a file, as the core streams parts from a staging file."""
    with open(path, "rb") as file:
        file.seek(start)
        digest = hashlib.md5(file.read(length)).digest()

    async def stream():
        async with await trio.open_file(path, "rb") as file:
            await file.seek(start)
            left = length
            while left:
                chunk = await file.read(min(left, MiB))
                left -= len(chunk)
                yield chunk

    return PartBody(length, digest, stream)


async def child(platform, parent: Entry, name: str) -> Entry:
    return next(entry for entry in await platform.list_dir(parent) if entry.name == name)


async def at(platform, *names: str) -> Entry:
    entry = platform.root()
    for name in names:
        entry = await child(platform, entry, name)
    return entry


async def project(platform, project_id: str = RNA) -> Entry:
    return await at(platform, "Projects", *project_id.split("/"))


async def scratch(platform) -> Entry:
    """A new folder of the RNA project, for one test's files."""
    return await platform.make_directory(await project(platform), f"writes-{uuid.uuid4().hex[:8]}")


async def read_all(platform, entry: Entry) -> bytes:
    return b"".join([chunk async for chunk in platform.read(entry, 0, entry.size, what="test")])


def stored(server: EmulatorProcess, entry: Entry | str) -> bytes:
    """The bytes the emulator keeps for a file it was sent (an entry, or its id)."""
    file_id = entry.uid if isinstance(entry, Entry) else entry
    return (server.data_dir / "sevenbridges" / "written" / str(server.process.pid) / file_id).read_bytes()


async def upload(platform, parent: Entry, name: str, content: bytes, replacing: Entry | None = None) -> Entry:
    """What the core does at close: begin, the parts of the answered size in parallel, complete."""
    handle = await platform.begin_upload(parent, name, len(content), replacing)
    size = handle["part_size"]
    starts = range(0, len(content), size)
    etags: dict[int, str] = {}

    async def send(number: int, start: int) -> None:
        etags[number] = await platform.upload_part(handle, number, body_of(content[start : start + size]))

    async with trio.open_nursery() as nursery:
        for number, start in enumerate(starts, start=1):
            nursery.start_soon(send, number, start)
    return await platform.complete_upload(handle, sorted(etags.items()), len(content))


# -- uploads -------------------------------------------------------------------------------------


async def test_parts_of_the_size_the_service_answers_read_back(platform, server, monkeypatch, tmp_path):
    # Ask for 1 MiB parts, which S3 cannot take: the service answers its own size, and parts are cut to it.
    monkeypatch.setattr(sevenbridges, "RECOMMENDED_PART", 1 * MiB)
    folder = await scratch(platform)
    content = data(12 * MiB + 12_345)
    source = tmp_path / "reads.fastq.gz"
    source.write_bytes(content)

    handle = await platform.begin_upload(folder, "reads.fastq.gz", len(content), None)
    assert handle["part_size"] == 5 * MiB  # the emulator's own: S3's minimum, enough for 10,000 parts
    assert handle["size"] == len(content) and handle["parent"] == folder.uid
    parts = [(1, 0, 5 * MiB), (2, 5 * MiB, 5 * MiB), (3, 10 * MiB, 2 * MiB + 12_345)]
    etags = {}

    async def send(number: int, start: int, length: int) -> None:
        etags[number] = await platform.upload_part(handle, number, body_from_file(source, start, length))

    async with trio.open_nursery() as nursery:
        for part in reversed(parts):  # any order, in parallel
            nursery.start_soon(send, *part)
    for number, start, length in parts:
        assert etags[number] == hashlib.md5(content[start : start + length]).hexdigest()
    entry = await platform.complete_upload(handle, sorted(etags.items()), len(content))

    assert (entry.name, entry.size, entry.is_dir) == ("reads.fastq.gz", len(content), False)
    assert entry.allows == {"delete", "rename", "replace"}
    listed = await child(platform, folder, "reads.fastq.gz")
    assert listed.uid == entry.uid and listed.size == len(content)
    assert await read_all(platform, listed) == content
    assert stored(server, entry) == content
    stats = server.stats()
    assert (stats["uploads_started"], stats["uploads_completed"]) == (1, 1)
    assert (stats["part_requests"], stats["parts_received"], stats["upload_bytes"]) == (3, 3, len(content))


async def test_empty_file_and_one_request_upload(platform, server):
    folder = await scratch(platform)
    handle = await platform.begin_upload(folder, "empty.txt", 0, None)
    empty = await platform.complete_upload(handle, [], 0)  # no parts planned: one empty part is sent
    assert (empty.size, stored(server, empty)) == (0, b"")

    small = data(100_000, seed=2)
    whole = await platform.upload_whole(folder, "small.vcf", body_of(small), None)
    assert whole.size == len(small) and await read_all(platform, whole) == small
    assert {e.name for e in await platform.list_dir(folder)} == {"empty.txt", "small.vcf"}
    stats = server.stats()
    assert (stats["uploads_started"], stats["uploads_completed"], stats["parts_received"]) == (2, 2, 2)
    assert stats["upload_bytes"] == len(small)


async def test_part_size_asked_fits_the_part_count():
    assert sevenbridges.requested_part_size(0) == 32 * MiB
    assert sevenbridges.requested_part_size(300 * 1024 * MiB) == 32 * MiB  # 9,600 parts
    assert sevenbridges.requested_part_size(1024 * 1024 * MiB) == 105 * MiB  # 1 TiB: 9,987 parts
    assert sevenbridges.requested_part_size(5 * 1024 * 1024 * MiB) == 525 * MiB  # 5 TiB, SBG's largest


async def test_overwrite_replaces_and_a_taken_name_is_refused(platform, server):
    folder = await scratch(platform)
    first = await upload(platform, folder, "calls.vcf", b"version 1\n")
    with pytest.raises(PlatformError) as refused:
        await platform.begin_upload(folder, "calls.vcf", 10, None)
    assert refused.value.errno == errno.EEXIST

    second = await upload(platform, folder, "calls.vcf", b"version 2, longer\n", replacing=first)
    assert second.uid != first.uid  # SBG deletes the old file and makes a new one
    listing = await platform.list_dir(folder)
    assert [(e.name, e.uid) for e in listing] == [("calls.vcf", second.uid)]
    assert await read_all(platform, listing[0]) == b"version 2, longer\n"

    # A name someone else took while the upload ran is not overwritten: complete refuses it.
    handle = await platform.begin_upload(folder, "late.txt", 3, None)
    etag = await platform.upload_part(handle, 1, body_of(b"abc"))
    await upload(platform, folder, "late.txt", b"theirs")
    with pytest.raises(PlatformError) as late:
        await platform.complete_upload(handle, [(1, etag)], 3)
    assert late.value.errno == errno.EEXIST
    assert await read_all(platform, await child(platform, folder, "late.txt")) == b"theirs"


async def test_complete_repeated_after_its_answer_was_lost(platform, server):
    folder = await scratch(platform)
    handle = await platform.begin_upload(folder, "out.bam", 5, None)
    parts = [(1, await platform.upload_part(handle, 1, body_of(b"12345")))]
    entry = await platform.complete_upload(handle, parts, 5)
    # The upload is gone once complete: a retry (or a restart) finds the file it made.
    again = await platform.complete_upload(handle, parts, 5)
    assert again.uid == entry.uid and again.size == 5
    # An empty file too (its one empty part is sent by the first complete).
    handle = await platform.begin_upload(folder, "empty.txt", 0, None)
    empty = await platform.complete_upload(handle, [], 0)
    assert (await platform.complete_upload(handle, [], 0)).uid == empty.uid
    assert server.stats()["uploads_completed"] == 2


async def test_an_upload_resumes_from_its_handle_after_a_restart(platform, server, monkeypatch):
    monkeypatch.setattr(sevenbridges, "RECOMMENDED_PART", 5 * MiB)
    folder = await scratch(platform)
    content = data(11 * MiB, seed=6)
    handle = await platform.begin_upload(folder, "resumed.bam", len(content), None)
    first = await platform.upload_part(handle, 1, body_of(content[: 5 * MiB]))
    saved = json.dumps(handle)  # what the journal keeps; the daemon dies here
    parent_key = json.loads(json.dumps(folder.key))

    async with new_client() as client:
        settings = {"kind": "sevenbridges", "url": f"{server.url}/sevenbridges", "token": server.token}
        restarted = sevenbridges.PLATFORM("sevenbridges", settings, Http(client, RETRY))
        handle = json.loads(saved)
        second = await restarted.upload_part(handle, 2, body_of(content[5 * MiB : 10 * MiB]))
        third = await restarted.upload_part(handle, 3, body_of(content[10 * MiB :]))
        entry = await restarted.complete_upload(handle, [(1, first), (2, second), (3, third)], len(content))
        # The journal's parent, rebuilt from its key alone, lists the file.
        listed = await child(restarted, Entry(folder.name, True, tuple(parent_key)), "resumed.bam")
    assert listed.uid == entry.uid and stored(server, entry) == content
    assert server.stats()["parts_received"] == 3


async def test_abort_drops_the_upload(platform, server):
    folder = await scratch(platform)
    handle = await platform.begin_upload(folder, "dropped.bin", 6 * MiB, None)
    await platform.upload_part(handle, 1, body_of(data(5 * MiB)))
    await platform.abort_upload(handle)
    await platform.abort_upload(handle)  # best effort, and again is harmless
    with pytest.raises(PlatformError) as gone:
        await platform.upload_part(handle, 2, body_of(data(MiB)))
    assert gone.value.errno == errno.ENOENT
    assert await platform.list_dir(folder) == []
    assert server.stats()["uploads_completed"] == 0


# -- faults: each ends in the right bytes, or in an error the core retries ------------------------


async def test_failed_dropped_and_slow_parts_are_sent_again(platform, server, monkeypatch):
    monkeypatch.setattr(sevenbridges, "RECOMMENDED_PART", 5 * MiB)  # three parts, one fault each
    folder = await scratch(platform)
    content = data(11 * MiB, seed=3)
    server.knobs(part_faults=[
        {"part": 1, "fault": "status", "status": 500},
        {"part": 2, "fault": "drop", "after": MiB},
        {"part": 3, "fault": "slow", "seconds": 1},
    ])
    entry = await upload(platform, folder, "faults.bin", content)
    assert await read_all(platform, entry) == content and stored(server, entry) == content
    stats = server.stats()
    assert stats["injected_failures"] == 3
    assert stats["parts_received"] == 3 and stats["part_requests"] == 3 + 2  # the failed and the dropped, again


async def test_bad_etag_is_returned_for_the_core_to_send_again(platform, server):
    folder = await scratch(platform)
    content = b"the store answers an ETag that is not the MD5 of these bytes\n"
    server.knobs(part_faults=[{"part": 1, "fault": "badetag"}])
    handle = await platform.begin_upload(folder, "etag.txt", len(content), None)
    wrong = await platform.upload_part(handle, 1, body_of(content))
    assert wrong != hashlib.md5(content).hexdigest()
    right = await platform.upload_part(handle, 1, body_of(content))  # as the core does on a mismatch
    assert right == hashlib.md5(content).hexdigest()
    entry = await platform.complete_upload(handle, [(1, right)], len(content))
    assert stored(server, entry) == content


async def test_refused_and_expired_part_urls_are_fetched_again(platform, server):
    folder = await scratch(platform)
    content = b"x" * 1000
    handle = await platform.begin_upload(folder, "expiry.txt", len(content), None)
    # The store refuses the first URL (403, as S3 refuses an expired one): a fresh one is fetched.
    server.knobs(failures=[{"prefix": "/store/uploads/", "status": 403, "count": 1}])
    etag = await platform.upload_part(handle, 1, body_of(content))
    assert etag == hashlib.md5(content).hexdigest()
    assert server.stats()["injected_failures"] == 1 and server.stats()["parts_received"] == 1

    # Every URL expired before use (a clock far off): a few fresh ones, then an error the core retries.
    server.knobs(part_url_lifetime=-5)
    with pytest.raises(PlatformError) as refused:
        await platform.upload_part(handle, 1, body_of(content))
    assert not isinstance(refused.value, AccessDenied) and refused.value.status == 403
    assert server.stats()["parts_received"] == 1
    server.knobs(part_url_lifetime=60)
    etag = await platform.upload_part(handle, 1, body_of(content))
    entry = await platform.complete_upload(handle, [(1, etag)], len(content))
    assert stored(server, entry) == content


async def test_corrupted_part_is_refused_by_its_content_md5(platform, server):
    folder = await scratch(platform)
    handle = await platform.begin_upload(folder, "corrupt.bin", 4, None)
    honest = body_of(b"abcd")
    lying = PartBody(4, hashlib.md5(b"abcX").digest(), honest.stream)  # bytes that changed on the way
    with pytest.raises(PlatformError) as refused:
        await platform.upload_part(handle, 1, lying)
    assert refused.value.status == 400  # S3's BadDigest
    assert (server.stats()["part_requests"], server.stats()["parts_received"]) == (1, 0)


async def test_the_service_refuses_what_sbg_refuses(platform, server):
    folder = await scratch(platform)
    content = data(10 * MiB, seed=4)
    handle = await platform.begin_upload(folder, "strict.bin", len(content), None)
    # Parts are numbered 1..ceil(size / part_size): 1 here (32 MiB parts).
    with pytest.raises(PlatformError) as beyond:
        await platform.upload_part(handle, 2, body_of(content[:10]))
    assert beyond.value.status == 400 and "Part number" in str(beyond.value)
    # Complete before every part is there.
    with pytest.raises(PlatformError) as early:
        await platform.complete_upload(handle, [], len(content))
    assert early.value.status == 400 and "not reported" in str(early.value)
    # Parts that do not add up to the size the upload was begun with.
    short = await platform.upload_part(handle, 1, body_of(content[: 9 * MiB]))
    with pytest.raises(PlatformError) as wrong_size:
        await platform.complete_upload(handle, [(1, short)], len(content))
    assert wrong_size.value.status == 400 and "size" in str(wrong_size.value)
    # The upload survives every refusal: the right part completes it.
    etag = await platform.upload_part(handle, 1, body_of(content))
    entry = await platform.complete_upload(handle, [(1, etag)], len(content))
    assert stored(server, entry) == content


async def test_the_store_takes_a_parts_length_up_front(platform, server):
    folder = await scratch(platform)
    handle = await platform.begin_upload(folder, "chunked.bin", 3, None)
    async with new_client() as client:
        answer = await client.get(f"{server.url}/sevenbridges/v2/upload/multipart/{handle['upload_id']}/part/1",
                                  headers={"X-SBG-Auth-Token": server.token})
        url = answer.raise_for_status().json()["url"]

        async def chunks():
            yield b"abc"

        refused = await client.put(url, content=chunks())  # no length: Transfer-Encoding: chunked
    assert refused.status_code == 411 and b"MissingContentLength" in refused.content
    assert server.stats()["parts_received"] == 0


async def test_parts_below_s3s_minimum_are_refused_but_the_last(platform, server, monkeypatch):
    monkeypatch.setattr(sevenbridges, "RECOMMENDED_PART", 5 * MiB)
    folder = await scratch(platform)
    content = data(10 * MiB, seed=5)
    handle = await platform.begin_upload(folder, "small-parts.bin", len(content), None)
    first = await platform.upload_part(handle, 1, body_of(content[:MiB]))
    second = await platform.upload_part(handle, 2, body_of(content[MiB:]))
    with pytest.raises(PlatformError) as refused:
        await platform.complete_upload(handle, [(1, first), (2, second)], len(content))
    assert refused.value.status == 400 and "smaller than" in str(refused.value)


# -- folders, deletes, renames, moves --------------------------------------------------------------


async def test_folders_rename_move_and_delete(platform, server):
    rna = await project(platform)
    assert rna.allows == {"create", "mkdir"}
    folder = await scratch(platform)
    assert folder.allows == {"create", "mkdir", "delete"} and folder.children is None  # SBG holds it: not path-made
    listed = await child(platform, rna, folder.name)
    assert listed.uid == folder.uid and listed.key == folder.key
    with pytest.raises(PlatformError) as taken:
        await platform.make_directory(rna, folder.name)
    assert taken.value.errno == errno.EEXIST
    inner = await platform.make_directory(folder, "inner")
    with pytest.raises(PlatformError) as reserved:
        await platform.make_directory(folder, "__hidden")
    assert reserved.value.errno == errno.EINVAL

    entry = await upload(platform, folder, "a.txt", b"alpha\n")
    # Rename in place: the same file, a new name.
    renamed = await platform.rename(entry, folder, "b.txt")
    assert renamed.uid == entry.uid and renamed.name == "b.txt"
    assert [e.name for e in await platform.list_dir(folder) if not e.is_dir] == ["b.txt"]
    # Move to a folder of the same project, renaming on the way; then to the project's root.
    moved = await platform.rename(renamed, inner, "c.txt")
    assert moved.uid == entry.uid and [e.name for e in await platform.list_dir(inner)] == ["c.txt"]
    at_root = await platform.rename(moved, rna, f"{folder.name}.txt")
    assert (await child(platform, rna, f"{folder.name}.txt")).uid == entry.uid
    assert await read_all(platform, at_root) == b"alpha\n"
    # Onto a taken name: refused, both files kept.
    other = await upload(platform, inner, "d.txt", b"delta\n")
    with pytest.raises(PlatformError) as clash:
        await platform.rename(other, rna, at_root.name)
    assert clash.value.errno == errno.EEXIST
    # Across projects: EXDEV, so that mv copies; asked of nobody.
    wgs = await project(platform, "alice/wgs-cohort")
    before = server.stats()["api_requests"]
    with pytest.raises(PlatformError) as across:
        await platform.rename(other, wgs, "d.txt")
    assert across.value.errno == errno.EXDEV and server.stats()["api_requests"] == before
    # Folders cannot be renamed on SBG.
    with pytest.raises(PlatformError) as folder_rename:
        await platform.rename(inner, rna, "renamed-folder")
    assert folder_rename.value.errno == errno.EPERM

    # rmdir of a folder that holds a file: ENOTEMPTY; then rm, rmdir.
    with pytest.raises(PlatformError) as full:
        await platform.delete(inner)
    assert full.value.errno == errno.ENOTEMPTY
    await platform.delete(other)
    await platform.delete(inner)
    await platform.delete(at_root)
    assert await platform.list_dir(folder) == []
    await platform.delete(folder)
    names = {e.name for e in await platform.list_dir(rna)}
    assert folder.name not in names and at_root.name not in names
    with pytest.raises(PlatformError) as gone:
        await platform.delete(folder)
    assert gone.value.errno == errno.ENOENT


async def test_read_only_places_take_nothing(platform, server):
    public_settings = dict(platform.settings, public_files=True)
    readonly = sevenbridges.PLATFORM("sevenbridges", public_settings, platform.http)
    top = readonly.root()
    projects = await child(readonly, top, "Projects")
    public = await at(readonly, "Projects", "admin", "sbg-public-data")
    wgs = await at(readonly, "Projects", "alice", "wgs-cohort")
    tasks = await child(readonly, wgs, ".tasks")
    task_dirs = await readonly.list_dir(tasks)
    outputs = [entry for task in task_dirs for entry in await readonly.list_dir(task)]
    assert outputs  # the completed task's files
    for entry in [top, projects, await child(readonly, projects, "alice"), public, tasks, *task_dirs, *outputs,
                  *await readonly.list_dir(public)]:
        assert entry.allows == frozenset(), entry.name

    for where in (public, top, projects):
        with pytest.raises(PlatformError) as refused:
            await readonly.begin_upload(where, "x.txt", 1, None)
        assert refused.value.errno in (errno.EACCES, errno.EROFS)
        with pytest.raises(PlatformError):
            await readonly.make_directory(where, "new")
    fasta = await child(readonly, public, "synthetic_reference.fasta")
    with pytest.raises(PlatformError) as delete:
        await readonly.delete(fasta)
    assert delete.value.errno == errno.EACCES
    with pytest.raises(PlatformError) as action:
        await readonly.perform("complete", wgs)
    assert action.value.errno == errno.EINVAL
    assert {e.name for e in await readonly.list_dir(public)} == {"synthetic_reference.fasta", "synthetic_reference.fasta.fai"}
    stats = server.stats()
    assert (stats["uploads_started"], stats["part_requests"]) == (0, 0)


# -- real mounts -----------------------------------------------------------------------------------

NAME = "sevenbridges"


@pytest.fixture
def sbg_mount(mount, server):
    """`sbg_mount(*extra_args, cache_dir=None)`: a real mount of this module's emulator."""

    def do(*extra: str, cache_dir: Path | None = None):
        return mount({NAME: platform_table(server, "sevenbridges")}, *extra, cache_dir=cache_dir)

    return do


def tree(mounted, project_id: str = RNA) -> Path:
    return mounted.path / NAME / "Projects" / project_id


def names(directory: Path) -> list[str]:
    """A directory's entries, without the hidden `.id` and `.json` of the directory itself."""
    return sorted(name for name in os.listdir(directory) if name not in (".id", ".json"))


def file_id(path: Path) -> str:
    return os.getxattr(path, "user.omicsfs.id").decode()


def md5(content: bytes) -> str:
    return hashlib.md5(content).hexdigest()


def write_file(path: Path, size: int, seed: int) -> bytes:
    content = data(size, seed)
    path.write_bytes(content)
    return content


@pytest.mark.mount
def test_cp_and_mkdir_read_back_through_a_fresh_mount(sbg_mount, server, tmp_path):
    sources = {"empty.txt": b"", "samplesheet.csv": data(10_000, seed=10), "reads.bam": data(100 * MiB, seed=11)}
    for name, content in sources.items():
        (tmp_path / name).write_bytes(content)
    first = sbg_mount()
    target = tree(first) / f"cp-{uuid.uuid4().hex[:8]}"
    target.mkdir()  # a folder on Seven Bridges
    subprocess.run(["cp", *(str(tmp_path / name) for name in sources), str(target)], check=True)
    # The empty file is sent when its descriptor is released, just after cp's close (fs.flush).
    wait_for(lambda: server.stats()["uploads_completed"] == 3, "the three uploads", timeout=10)

    expected = {name: md5(content) for name, content in sources.items()}
    assert {path.name: value for path, value in md5sums([target / name for name in sources]).items()} == expected
    ids = {name: file_id(target / name) for name in sources}
    for name, content in sources.items():
        assert stored(server, ids[name]) == content
    stats = server.stats()
    assert (stats["uploads_started"], stats["uploads_completed"]) == (3, 3)
    assert stats["upload_bytes"] == sum(map(len, sources.values()))

    second = sbg_mount()  # knows nothing but what the platform lists
    again = tree(second) / target.name
    assert file_id(again) == file_id(target)
    assert names(again) == sorted(sources)
    assert {path.name: value for path, value in md5sums([again / name for name in sources]).items()} == expected
    assert {name: file_id(again / name) for name in sources} == ids
    assert (again / "reads.bam").stat().st_size == 100 * MiB


@pytest.mark.mount
def test_samtools_sort_into_the_mount_then_index_and_a_region(sbg_mount, server, tmp_path):
    mounted = sbg_mount()
    source = tree(mounted, "alice/wgs-cohort") / "alignments" / "HG002.bam"
    target = tree(mounted) / f"sorted-{uuid.uuid4().hex[:8]}"
    target.mkdir()
    sorted_bam = target / "HG002.sorted.bam"
    subprocess.run(["samtools", "sort", "-o", str(sorted_bam), str(source)], check=True)
    subprocess.run(["samtools", "index", str(sorted_bam)], check=True)  # writes HG002.sorted.bam.bai beside it
    assert names(target) == ["HG002.sorted.bam", "HG002.sorted.bam.bai"]

    local = tmp_path / "HG002.sorted.bam"
    subprocess.run(["samtools", "sort", "-o", str(local), str(source)], check=True)
    subprocess.run(["samtools", "index", str(local)], check=True)
    region = "chr1:200000-400000"
    through_mount = subprocess.run(["samtools", "view", str(sorted_bam), region], capture_output=True, check=True).stdout
    here = subprocess.run(["samtools", "view", str(local), region], capture_output=True, check=True).stdout
    assert through_mount == here and through_mount.count(b"\n") > 10
    fresh = tree(sbg_mount()) / target.name / "HG002.sorted.bam"
    again = subprocess.run(["samtools", "view", str(fresh), region], capture_output=True, check=True).stdout
    assert again == here
    assert server.stats()["uploads_completed"] == 2


@pytest.mark.mount
def test_a_script_that_seeks_back_and_rewrites_a_header(sbg_mount, server):
    mounted = sbg_mount()
    path = tree(mounted) / f"rewritten-{uuid.uuid4().hex[:8]}.bin"
    body = data(6 * MiB + 17, seed=12)
    with open(path, "wb") as out:
        out.write(b"\0" * 64)  # a header to fill in once the body is known
        out.write(body)
        out.seek(0)
        out.write(f"length={len(body)} md5={md5(body)}".encode().ljust(64, b" "))
    expected = f"length={len(body)} md5={md5(body)}".encode().ljust(64, b" ") + body
    assert path.read_bytes() == expected
    assert stored(server, file_id(path)) == expected
    assert (tree(sbg_mount()) / path.name).read_bytes() == expected
    assert server.stats()["uploads_completed"] == 1


@pytest.mark.mount
def test_rsync_inplace_of_a_directory_and_again_after_a_change(sbg_mount, server, tmp_path):
    local = tmp_path / "results"
    (local / "qc").mkdir(parents=True)
    contents = {
        "calls.vcf": write_file(local / "calls.vcf", 300_000, seed=13),
        "qc/report.html": write_file(local / "qc" / "report.html", 20_000, seed=14),
        "qc/depth.bin": write_file(local / "qc" / "depth.bin", 7 * MiB, seed=15),
    }
    mounted = sbg_mount()
    target = tree(mounted) / f"rsync-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rsync", "-r", "--inplace", f"{local}/", f"{target}/"], check=True)
    for name, content in contents.items():
        assert (target / name).read_bytes() == content
    before = file_id(target / "qc" / "depth.bin")

    # Change the middle of one file; rsync --inplace writes only the block that changed over the
    # file, whose other bytes the mount fetches first, and the platform's file is replaced. (-I: the
    # mount shows the platform's upload time, within the second of the change here.)
    changed = bytearray(contents["qc/depth.bin"])
    changed[3 * MiB : 3 * MiB + 5] = b"XXXXX"
    (local / "qc" / "depth.bin").write_bytes(changed)
    subprocess.run(["rsync", "-r", "--inplace", "--no-whole-file", "-I", f"{local}/", f"{target}/"], check=True)
    fresh = tree(sbg_mount()) / target.name
    assert (fresh / "qc" / "depth.bin").read_bytes() == bytes(changed)
    assert file_id(fresh / "qc" / "depth.bin") != before  # SBG replaced it with a new file
    assert stored(server, file_id(fresh / "qc" / "depth.bin")) == bytes(changed)
    assert (fresh / "calls.vcf").read_bytes() == contents["calls.vcf"]
    assert names(fresh) == ["calls.vcf", "qc"] and names(fresh / "qc") == ["depth.bin", "report.html"]


@pytest.mark.mount
def test_kill_9_in_the_middle_of_an_upload_then_the_next_mount_completes_it(sbg_mount, server, tmp_path):
    source = tmp_path / "big.bam"
    content = write_file(source, 100 * MiB, seed=16)
    cache = tmp_path / "cache"
    first = sbg_mount(cache_dir=cache)
    target = tree(first) / f"killed-{uuid.uuid4().hex[:8]}"
    target.mkdir()
    server.knobs(part_faults=[{"part": 3, "fault": "slow", "seconds": 20}])  # holds the upload open
    copy = subprocess.Popen(["cp", str(source), str(target)], stderr=subprocess.PIPE)
    wait_for(lambda: server.stats()["parts_received"] >= 3, "three of the four parts arrive")
    os.kill(first.daemon_pid(), signal.SIGKILL)
    assert copy.wait(timeout=60) != 0  # its close never returned a success
    subprocess.run(["fusermount3", "-u", "-z", str(first.path)], check=True)
    assert not is_mounted(first.path)
    assert server.stats()["uploads_completed"] == 0

    server.knobs(part_faults=[])
    second = sbg_mount(cache_dir=cache)  # the same configuration and cache: the journal is taken up
    wait_for(lambda: server.stats()["uploads_completed"] == 1, "the resumed upload completes")
    path = tree(second) / target.name / "big.bam"
    wait_for(lambda: os.getxattr(path, "user.omicsfs.id").decode() != "" and path.stat().st_size == len(content),
             "the file shows as the platform's")
    assert stored(server, file_id(path)) == content
    assert md5sums([path])[path] == md5(content)
    assert server.stats()["parts_received"] <= 4 + 1  # the parts that had arrived were not all sent again
    assert "resuming an upload" in second.log.read_text()


@pytest.mark.mount
def test_failed_dropped_and_refused_parts_through_a_mount(sbg_mount, server, tmp_path):
    source = tmp_path / "faults.bin"
    content = write_file(source, 70 * MiB, seed=17)  # parts of 32, 32 and 6 MiB
    mounted = sbg_mount()
    server.knobs(
        part_faults=[{"part": 1, "fault": "status", "status": 503},
                     {"part": 2, "fault": "drop", "after": 4 * MiB},
                     {"part": 3, "fault": "badetag"}],
        failures=[{"prefix": "/store/uploads/", "status": 403, "count": 1}],  # a part URL refused, as expired
    )
    path = tree(mounted) / f"faults-{uuid.uuid4().hex[:8]}.bin"
    subprocess.run(["cp", str(source), str(path)], check=True)
    assert server.stats()["injected_failures"] == 4
    assert stored(server, file_id(path)) == content
    fresh = tree(sbg_mount()) / path.name
    assert md5sums([fresh])[fresh] == md5(content)


@pytest.mark.mount
def test_read_only_places_refuse_and_a_move_across_projects_copies(sbg_mount, server, tmp_path):
    mounted = sbg_mount()
    rna, wgs = tree(mounted), tree(mounted, "alice/wgs-cohort")
    task_dirs = list((wgs / ".tasks").iterdir())
    output = next(path for task in task_dirs for path in task.iterdir() if path.name == "HG002.bam")

    def refused(operation, *args) -> int:
        with pytest.raises(OSError) as failure:
            operation(*args)
        return failure.value.errno

    assert refused(open, mounted.path / NAME / "new.txt", "w") == errno.EROFS
    assert refused(os.mkdir, mounted.path / NAME / "Projects" / "alice" / "new-project") == errno.EROFS
    assert refused(open, wgs / ".tasks" / "new.txt", "w") == errno.EROFS
    assert refused(open, output, "r+") == errno.EROFS  # a task's output, reached through .tasks
    assert refused(os.unlink, output) == errno.EROFS
    assert refused(os.rename, rna / "raw", rna / "raw-renamed") == errno.EPERM  # SBG renames no folders
    assert refused(os.symlink, "design.tsv", rna / "link") == errno.EPERM
    assert names(rna / "raw") == ["K562_R1.fastq.gz", "K562_R2.fastq.gz"]
    stats = server.stats()
    assert (stats["uploads_started"], stats["part_requests"]) == (0, 0)

    # mv across projects: EXDEV, so mv copies the file and deletes it (in a mount whose deletes the
    # refused unlink above has not paused).
    second = sbg_mount()
    rna, wgs = tree(second), tree(second, "alice/wgs-cohort")
    moving = rna / f"moving-{uuid.uuid4().hex[:8]}.txt"
    moving.write_bytes(b"from rna-pilot to wgs-cohort\n")
    assert refused(os.rename, moving, wgs / moving.name) == errno.EXDEV
    subprocess.run(["mv", str(moving), str(wgs)], capture_output=True, check=True)
    assert not moving.exists() and (wgs / moving.name).read_bytes() == b"from rna-pilot to wgs-cohort\n"
    fresh = sbg_mount()
    assert not (tree(fresh) / moving.name).exists()
    assert (tree(fresh, "alice/wgs-cohort") / moving.name).read_bytes() == b"from rna-pilot to wgs-cohort\n"


@pytest.mark.mount
def test_public_project_refuses_writes(server, mount):
    mounted = mount({NAME: platform_table(server, "sevenbridges", public_files=True)})
    public = tree(mounted, "admin/sbg-public-data")
    fasta = public / "synthetic_reference.fasta"

    def refused(operation, *args) -> int:
        with pytest.raises(OSError) as failure:
            operation(*args)
        return failure.value.errno

    assert refused(open, public / "new.txt", "w") == errno.EROFS
    assert refused(os.mkdir, public / "new-folder") == errno.EROFS
    assert refused(open, fasta, "r+") == errno.EROFS
    assert refused(os.truncate, fasta, 0) == errno.EROFS
    assert refused(os.rename, fasta, public / "renamed.fasta") == errno.EROFS
    assert refused(os.unlink, fasta) == errno.EROFS
    assert names(public) == ["synthetic_reference.fasta", "synthetic_reference.fasta.fai"]
    stats = server.stats()
    assert (stats["uploads_started"], stats["part_requests"]) == (0, 0)


@pytest.mark.mount
def test_rm_and_rmdir_delete_and_a_refusal_stops_the_deletes_after_it(sbg_mount, server):
    mounted = sbg_mount()
    rna = tree(mounted)
    doomed, guarded = rna / f"doomed-{uuid.uuid4().hex[:8]}", rna / f"guarded-{uuid.uuid4().hex[:8]}"
    files = ("a.txt", "b.txt", "sub/c.txt")
    for directory in (doomed, guarded):
        (directory / "sub").mkdir(parents=True)
        for name in files:
            (directory / name).write_bytes(name.encode())
    subprocess.run(["rm", *(str(doomed / name) for name in files)], check=True)
    subprocess.run(["rmdir", str(doomed / "sub"), str(doomed)], check=True)
    assert not doomed.exists()

    # The platform refuses the first delete: the ones after it are refused without asking it.
    names(guarded), names(guarded / "sub")  # listed: from here on only deletes reach files/<id>
    server.knobs(failures=[{"prefix": "/sevenbridges/v2/files/", "status": 403, "count": 1}])
    before = server.stats()["api_requests"]
    removing = subprocess.run(["rm", *(str(guarded / name) for name in files)], capture_output=True, text=True)
    assert removing.returncode != 0 and removing.stderr.count("cannot remove") == 3
    # The refused delete (answered before the API counts it), and no request after it.
    assert (server.stats()["injected_failures"], server.stats()["api_requests"] - before) == (1, 0)
    fresh = tree(sbg_mount())
    assert not (fresh / doomed.name).exists()
    remaining = sorted(str(path.relative_to(fresh / guarded.name)) for path in (fresh / guarded.name).rglob("*")
                       if path.name not in (".id", ".json"))
    assert remaining == ["a.txt", "b.txt", "sub", "sub/c.txt"]
    # SBG deletes no folder that holds something.
    with pytest.raises(OSError) as full:
        os.rmdir(fresh / guarded.name / "sub")
    assert full.value.errno == errno.ENOTEMPTY and names(fresh / guarded.name / "sub") == ["c.txt"]


@pytest.mark.mount
def test_a_shells_redirection_then_an_in_place_write_keep_every_byte(sbg_mount, server):
    """`printf ... > F` closes a duplicate of its descriptor before it writes: the empty file is
    not uploaded then, only what was written, once, when the last descriptor closes; the file
    shows it, and a later in-place write keeps it."""
    mounted = sbg_mount()
    path = tree(mounted) / f"redirected-{uuid.uuid4().hex[:8]}.txt"
    subprocess.run(["bash", "-c", f"printf 'hello world\\n' > '{path}'"], check=True)
    stats = server.stats()
    assert (stats["uploads_started"], stats["uploads_completed"], stats["upload_bytes"]) == (1, 1, 12)
    assert path.read_bytes() == b"hello world\n"
    assert subprocess.run(["cat", str(path)], capture_output=True, check=True).stdout == b"hello world\n"
    subprocess.run(["bash", "-c", f"printf J | dd of='{path}' bs=1 conv=notrunc status=none"], check=True)
    assert path.read_bytes() == b"Jello world\n"
    assert stored(server, file_id(path)) == b"Jello world\n"
    assert (tree(sbg_mount()) / path.name).read_bytes() == b"Jello world\n"
