"""BaseSpace's writing half against its emulator: the platform module's writing methods driven
directly (as the core drives them) over real HTTP, and the emulator held to BaseSpace's rules.

These tests run on an emulator of their own (sharing the session's generated data): what they
create would otherwise show up in the listings other tests compare with the sample account.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from omicsfs.emulator import sampledata
from omicsfs.emulator.server import EmulatorProcess
from omicsfs.errors import AccessDenied, PlatformError
from omicsfs.http import Http, RetryPolicy, new_client
from omicsfs.platform import Entry, PartBody
from omicsfs.platforms.basespace import BaseSpace
from tests.conftest import TEST_LARGE_FILE, md5sums, platform_table, run_omicsfs, wait_for

MiB = 1024 * 1024
WGS = "Projects/Tumor-Normal WGS"


@pytest.fixture(scope="module")
def writes_emulator(emulator) -> EmulatorProcess:
    process = EmulatorProcess(emulator.data_dir, large_file_size=TEST_LARGE_FILE).wait_ready()
    yield process
    process.stop()


@pytest.fixture
def bs(writes_emulator) -> EmulatorProcess:
    """The writes emulator with default knobs and zeroed stats."""
    writes_emulator.knobs(part_faults=[], failures=[])
    writes_emulator.reset_stats()
    return writes_emulator


@pytest.fixture
async def platform(bs) -> AsyncIterator[BaseSpace]:
    async with new_client() as client:
        http = Http(client, RetryPolicy(attempts=4, base_delay=0.05, max_delay=0.2))
        yield BaseSpace("basespace", {"url": f"{bs.url}/basespace", "token": bs.token}, http)


def data(size: int, seed: str) -> bytes:
    return random.Random(seed).randbytes(size)


def body(content: bytes, *, md5: bytes | None = None) -> PartBody:
    """A part as the core sends it: streamed afresh for each attempt, in chunks."""

    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(content), MiB):
            yield content[start : start + MiB]

    return PartBody(len(content), md5 or hashlib.md5(content).digest(), stream)


async def walk(platform: BaseSpace, path: str) -> Entry:
    entry = platform.root()
    for name in filter(None, path.split("/")):
        children = entry.children if entry.children is not None else await platform.list_dir(entry)
        entry = next((child for child in children if child.name == name), None)
        assert entry is not None, f"{name} is not listed in {path}"
    return entry


async def names(platform: BaseSpace, entry: Entry) -> list[str]:
    children = entry.children if entry.children is not None else await platform.list_dir(entry)
    return sorted(child.name for child in children)


async def read(platform: BaseSpace, entry: Entry) -> bytes:
    return b"".join([chunk async for chunk in platform.read(entry, 0, entry.size, what="test")])


def sampledata_files(emulator: EmulatorProcess, appresult_id: str) -> list[dict]:
    """An app result's files as the emulator's V1 API lists them."""
    answer = httpx.get(f"{emulator.url}/basespace/v1pre3/appresults/{appresult_id}/files", params={"Limit": 1000},
                       headers={"x-access-token": emulator.token}).raise_for_status().json()
    return answer["Response"]["Items"]


def stored(emulator: EmulatorProcess, file_id: str) -> bytes:
    """The bytes the emulator itself keeps for an uploaded file."""
    return (Path(emulator.data_dir) / "written" / f"basespace-{emulator.process.pid}" / file_id).read_bytes()


async def new_appresult(platform: BaseSpace, project: str = "Tumor-Normal WGS") -> tuple[Entry, Entry]:
    """A fresh app result (Running, so it takes files) and its Files directory."""
    appresults = await walk(platform, f"Projects/{project}/AppResults")
    appresult = await platform.make_directory(appresults, f"Calls {uuid.uuid4().hex[:8]}")
    files = await walk(platform, f"Projects/{project}/AppResults/{appresult.name}/Files")
    return appresult, files


async def test_listings_say_where_basespace_takes_writes(platform):
    root = await platform.list_dir(platform.root())
    assert {entry.name: entry.allows for entry in root} == {
        "Projects": {"mkdir"}, "Runs": frozenset(), "BioSamples": frozenset()
    }
    project = await walk(platform, WGS)
    assert project.allows == {"delete"}
    assert {entry.name: entry.allows for entry in await platform.list_dir(project)} == {
        "Samples": frozenset(), "AppResults": {"mkdir"}, "Datasets": frozenset(), "AppSessions": frozenset()
    }
    # The sample account's app results are Complete: BaseSpace takes no more files into them.
    done = await walk(platform, f"{WGS}/AppResults/BWA Alignment S1")
    assert done.info["Status"] == "Complete" and done.allows == {"delete"}
    files = await walk(platform, f"{WGS}/AppResults/BWA Alignment S1/Files")
    assert files.allows == frozenset()
    for entry in await platform.list_dir(files):
        assert entry.allows == frozenset()
    for place in (f"{WGS}/Samples", f"{WGS}/Samples/S1/Files", f"{WGS}/Datasets", f"{WGS}/AppSessions", "Runs", "BioSamples"):
        entry = await walk(platform, place)
        assert entry.allows == frozenset(), place
        assert all(child.allows == frozenset() for child in await platform.list_dir(entry)), place
    # A new app result is Running: its Files take files and folders, its files may be written over.
    _, writable = await new_appresult(platform)
    assert writable.allows == {"create", "mkdir"}


async def test_mkdir_creates_projects_and_app_results_and_refuses_namesakes(platform, bs):
    projects = await walk(platform, "Projects")
    name = f"Writes {uuid.uuid4().hex[:8]}"
    project = await platform.make_directory(projects, name)
    assert project.name == name and project.key == ("project", project.uid) and project.allows == {"delete"}
    assert name in await names(platform, projects)
    with pytest.raises(PlatformError) as refused:
        await platform.make_directory(projects, name)
    assert refused.value.errno == errno.EEXIST, "BaseSpace answers 200 with the existing project: not a new directory"
    with pytest.raises(PlatformError) as refused:
        await platform.make_directory(projects, "Tumor-Normal WGS")
    assert refused.value.errno == errno.EEXIST

    appresults = await walk(platform, f"Projects/{name}/AppResults")
    appresult = await platform.make_directory(appresults, "Variant Calls")
    assert appresult.info["Status"] == "Running" and appresult.info["AppSession"]["Status"] == "Running"
    assert await names(platform, appresults) == ["Variant Calls"]
    with pytest.raises(PlatformError) as refused:
        await platform.make_directory(appresults, "Variant Calls")
    assert refused.value.errno == errno.EEXIST
    assert await names(platform, appresults) == ["Variant Calls"], "no namesake was created"

    # Below Files, a folder exists in the mount only, until a file lands in it: no request.
    files = await walk(platform, f"Projects/{name}/AppResults/Variant Calls/Files")
    before = bs.stats()["api_requests"]
    folder = await platform.make_directory(files, "vcf")
    nested = await platform.make_directory(folder, "chr1")
    assert bs.stats()["api_requests"] == before
    assert (folder.children, folder.allows, folder.key[-1]) == ([], {"create", "mkdir"}, "vcf")
    assert nested.key[-1] == "vcf/chr1"
    assert await names(platform, files) == []

    for read_only in ("Runs", f"{WGS}/Samples", f"{WGS}/Samples/S1/Files", f"{WGS}/Datasets"):
        with pytest.raises(PlatformError) as refused:
            await platform.make_directory(await walk(platform, read_only), "new")
        assert refused.value.errno == errno.EROFS, read_only


async def test_small_and_empty_files_go_in_one_request(platform, bs):
    appresult, files = await new_appresult(platform)
    folder = await platform.make_directory(files, "qc")
    small = data(200_000, "small")
    written = await platform.upload_whole(folder, "report.txt", body(small), None)
    empty = await platform.upload_whole(files, "empty.bam", body(b""), None)
    assert (written.name, written.size, written.allows) == ("report.txt", len(small), {"replace"})
    assert (empty.size, empty.info["ContentType"]) == (0, "application/octet-stream")
    assert written.info["ContentType"] == "text/plain"

    assert await names(platform, files) == ["empty.bam", "qc"]
    listed = await walk(platform, f"{WGS}/AppResults/{appresult.name}/Files/qc/report.txt")
    assert listed.uid == written.uid and listed.size == len(small) and listed.allows == {"replace"}
    assert await read(platform, listed) == small
    assert stored(bs, written.uid) == small and stored(bs, empty.uid) == b""
    stats = bs.stats()
    assert (stats["parts_received"], stats["upload_bytes"], stats["uploads_completed"]) == (2, len(small), 2)


async def test_a_large_file_goes_in_parts_sent_in_any_order(platform, bs):
    appresult, files = await new_appresult(platform)
    content = data(12 * MiB + 12_345, "large")
    cuts = [0, 5 * MiB, 10 * MiB, len(content)]
    handle = await platform.begin_upload(files, "S9.bam", None, None)
    assert await names(platform, files) == [], "a pending upload is not listed"
    etags = {}
    for number in (3, 1, 2):
        part = content[cuts[number - 1] : cuts[number]]
        etags[number] = await platform.upload_part(handle, number, body(part))
        assert etags[number] == hashlib.md5(part).hexdigest(), "BaseSpace's ETag is the part's hex MD5"
    # Sent again (a retry, or a part rewritten), a part replaces itself.
    etags[2] = await platform.upload_part(handle, 2, body(content[cuts[1] : cuts[2]]))
    done = await platform.complete_upload(handle, sorted(etags.items()), len(content))
    assert (done.name, done.size, done.uid) == ("S9.bam", len(content), handle["file"])
    listed = await walk(platform, f"{WGS}/AppResults/{appresult.name}/Files/S9.bam")
    assert hashlib.md5(await read(platform, listed)).hexdigest() == hashlib.md5(content).hexdigest()
    assert stored(bs, done.uid) == content
    stats = bs.stats()
    assert (stats["uploads_started"], stats["uploads_completed"], stats["parts_received"]) == (1, 1, 4)


async def test_the_emulator_refuses_what_basespace_refuses(platform, bs):
    _, files = await new_appresult(platform)
    handle = await platform.begin_upload(files, "strict.bin", None, None)
    too_large = data(25_000_001, "too large")
    with pytest.raises(PlatformError) as refused:
        await platform.upload_part(handle, 1, body(too_large))
    assert refused.value.status == 400 and "larger than 25000000" in str(refused.value)
    with pytest.raises(PlatformError) as refused:
        await platform.upload_part(handle, 10_001, body(b"x"))
    assert refused.value.status == 400 and "between 1 and 10000" in str(refused.value)
    with pytest.raises(PlatformError) as refused:
        await platform.upload_part(handle, 1, body(b"sent", md5=hashlib.md5(b"meant").digest()))
    assert refused.value.status == 400 and "Content-MD5" in str(refused.value)
    # Completing needs parts 1..n, each but the last at least 5 MiB.
    small = data(MiB, "small part")
    parts = [(1, await platform.upload_part(handle, 1, body(small)))]
    parts.append((3, await platform.upload_part(handle, 3, body(b"tail"))))
    with pytest.raises(PlatformError) as refused:
        await platform.complete_upload(handle, parts, MiB + 4)
    assert refused.value.status == 400 and "no part 2" in str(refused.value)
    parts.insert(1, (2, await platform.upload_part(handle, 2, body(b"middle"))))
    with pytest.raises(PlatformError) as refused:
        await platform.complete_upload(handle, parts, MiB + 10)
    assert refused.value.status == 400 and "smaller than 5242880" in str(refused.value)
    assert await names(platform, files) == []
    # Parts of exactly 5 MiB pass, and then the file completes.
    first = data(5 * MiB, "five")
    parts[0] = (1, await platform.upload_part(handle, 1, body(first)))
    parts[1] = (2, await platform.upload_part(handle, 2, body(data(5 * MiB, "five again"))))
    done = await platform.complete_upload(handle, parts, 10 * MiB + 4)
    assert done.size == 10 * MiB + 4
    with pytest.raises(PlatformError) as refused:
        await platform.upload_part(handle, 4, body(b"late"))
    assert refused.value.status == 400, "no part after the upload is complete"
    # Files go only into app results whose session takes them: the listing says so (the core
    # refuses there at once), and BaseSpace refuses anyway.
    closed = await walk(platform, f"{WGS}/AppResults/Archive/Files")
    assert closed.allows == frozenset()
    with pytest.raises(AccessDenied) as refused:
        await platform.upload_whole(closed, "x.txt", body(b"x"), None)
    assert refused.value.status == 403 and "Complete" in str(refused.value)
    with pytest.raises(AccessDenied):
        await platform.begin_upload(closed, "x.bin", None, None)
    assert [f["Name"] for f in sampledata_files(bs, closed.key[2])] == ["reportarchive.bin"]


async def test_writing_over_a_file_replaces_it_once_complete(platform, bs):
    appresult, files = await new_appresult(platform)
    first = await platform.upload_whole(files, "calls.vcf", body(b"version 1\n"), None)
    # A multipart replacement: until it completes, the old file is listed and read as before.
    handle = await platform.begin_upload(files, "calls.vcf", None, first)
    newer = data(5 * MiB + 7, "version 2")
    etag = await platform.upload_part(handle, 1, body(newer))
    (listed,) = await platform.list_dir(files)
    assert (listed.uid, await read(platform, listed)) == (first.uid, b"version 1\n")
    done = await platform.complete_upload(handle, [(1, etag)], len(newer))
    (listed,) = await platform.list_dir(await walk(platform, f"{WGS}/AppResults/{appresult.name}/Files"))
    assert listed.uid == done.uid != first.uid, "one file at the path: the new one"
    assert await read(platform, listed) == newer
    with pytest.raises(PlatformError):
        await read(platform, first)
    # In one request too.
    third = await platform.upload_whole(files, "calls.vcf", body(b"version 3\n"), done)
    (listed,) = await platform.list_dir(files)
    assert listed.uid == third.uid and await read(platform, listed) == b"version 3\n"


async def test_part_faults_surface_as_errors_to_retry(platform, bs):
    _, files = await new_appresult(platform)
    handle = await platform.begin_upload(files, "faulty.bin", None, None)
    part = data(5 * MiB, "faulty")
    md5 = hashlib.md5(part).hexdigest()
    # A failed part (5xx) and a connection dropped in the middle of a part are retried by Http.
    bs.knobs(part_faults=[{"part": 1, "fault": "status", "status": 503, "count": 2}])
    assert await platform.upload_part(handle, 1, body(part)) == md5
    bs.knobs(part_faults=[{"part": 1, "fault": "drop", "after": MiB, "count": 1}])
    assert await platform.upload_part(handle, 1, body(part)) == md5
    stats = bs.stats()
    assert (stats["injected_failures"], stats["part_requests"], stats["parts_received"]) == (3, 5, 2)
    # A slow part arrives, in one request.
    bs.knobs(part_faults=[{"part": 2, "fault": "slow", "seconds": 1, "count": 1}])
    assert await platform.upload_part(handle, 2, body(b"slow tail")) == hashlib.md5(b"slow tail").hexdigest()
    assert bs.stats()["part_requests"] == stats["part_requests"] + 1
    # An ETag that is not the MD5 of what was sent comes back as it is: the core sends the part again.
    bs.knobs(part_faults=[{"part": 1, "fault": "badetag", "count": 1}])
    assert await platform.upload_part(handle, 1, body(part)) != md5
    assert await platform.upload_part(handle, 1, body(part)) == md5
    done = await platform.complete_upload(handle, [(1, md5), (2, hashlib.md5(b"slow tail").hexdigest())], len(part) + 9)
    assert stored(bs, done.uid) == part + b"slow tail"
    # A part that keeps failing fails for good after Http's tries; a refusal (4xx) at once.
    handle = await platform.begin_upload(files, "doomed.bin", None, None)
    bs.knobs(part_faults=[{"part": 1, "fault": "status", "status": 500, "count": 100}])
    with pytest.raises(PlatformError) as failed:
        await platform.upload_part(handle, 1, body(b"doomed"))
    assert "gave up after 4 attempts" in str(failed.value)
    bs.knobs(part_faults=[{"part": 1, "fault": "status", "status": 400, "count": 100}])
    requests = bs.stats()["part_requests"]
    with pytest.raises(PlatformError) as failed:
        await platform.upload_part(handle, 1, body(b"doomed"))
    assert failed.value.status == 400 and bs.stats()["part_requests"] == requests + 1


async def test_a_whole_file_is_retried_and_a_second_completion_confirmed(platform, bs):
    _, files = await new_appresult(platform)
    bs.knobs(part_faults=[{"fault": "drop", "after": 1000, "count": 1}])
    small = data(100_000, "retried")
    written = await platform.upload_whole(files, "retried.txt", body(small), None)
    assert stored(bs, written.uid) == small and bs.stats()["injected_failures"] == 1
    # An answer lost after BaseSpace completed the file: completing again finds it complete.
    handle = await platform.begin_upload(files, "twice.bin", None, None)
    etag = await platform.upload_part(handle, 1, body(b"twice"))
    first = await platform.complete_upload(handle, [(1, etag)], 5)
    again = await platform.complete_upload(handle, [(1, etag)], 5)
    assert again.uid == first.uid and again.size == 5
    # ...but never a file that is not complete, or not the size written.
    handle = await platform.begin_upload(files, "short.bin", None, None)
    etag = await platform.upload_part(handle, 1, body(b"short"))
    with pytest.raises(PlatformError):
        await platform.complete_upload(handle, [(1, etag)], 6)


async def test_abort_drops_the_parts(platform, bs):
    _, files = await new_appresult(platform)
    handle = await platform.begin_upload(files, "dropped.bin", None, None)
    await platform.upload_part(handle, 1, body(b"never"))
    await platform.abort_upload(handle)
    await platform.abort_upload(handle)  # best effort: a second abort is only logged
    with pytest.raises(PlatformError) as refused:
        await platform.upload_part(handle, 2, body(b"after"))
    assert refused.value.status == 400
    assert await names(platform, files) == []


async def test_complete_is_an_explicit_act_that_closes_the_app_result(platform, bs):
    appresult, files = await new_appresult(platform)
    await platform.upload_whole(files, "before.txt", body(b"before"), None)
    said = await platform.perform("complete", appresult)
    assert f"Marked app result {appresult.name!r} complete" in said and "from Running to Complete" in said
    entry = await walk(platform, f"{WGS}/AppResults/{appresult.name}")
    assert entry.info["Status"] == "Complete"
    files = await walk(platform, f"{WGS}/AppResults/{appresult.name}/Files")
    assert files.allows == frozenset() and [e.allows for e in await platform.list_dir(files)] == [frozenset()]
    forged = Entry("Files", True, files.key)
    with pytest.raises(AccessDenied):
        await platform.upload_whole(forged, "after.txt", body(b"after"), None)
    assert "already complete" in await platform.perform("complete", appresult)
    with pytest.raises(PlatformError) as refused:
        await platform.perform("complete", await walk(platform, WGS))
    assert refused.value.errno == errno.EINVAL
    with pytest.raises(PlatformError) as refused:
        await platform.perform("refresh", appresult)
    assert refused.value.errno == errno.EINVAL


async def test_rmdir_trashes_only_what_holds_no_data(platform, bs):
    projects = await walk(platform, "Projects")
    project = await platform.make_directory(projects, f"Trash me {uuid.uuid4().hex[:8]}")
    appresults = await walk(platform, f"Projects/{project.name}/AppResults")
    empty = await platform.make_directory(appresults, "Empty")
    full = await platform.make_directory(appresults, "Full")
    files = await walk(platform, f"Projects/{project.name}/AppResults/Full/Files")
    written = await platform.upload_whole(files, "keep.txt", body(b"keep"), None)

    with pytest.raises(PlatformError) as refused:
        await platform.delete(written)
    assert refused.value.errno == errno.EPERM, "BaseSpace cannot delete files"
    with pytest.raises(PlatformError) as refused:
        await platform.delete(full)
    assert refused.value.errno == errno.ENOTEMPTY
    with pytest.raises(PlatformError) as refused:
        await platform.delete(project)
    assert refused.value.errno == errno.ENOTEMPTY
    with pytest.raises(PlatformError) as refused:
        await platform.delete(await walk(platform, f"{WGS}/Samples/S1"))
    assert refused.value.errno == errno.EPERM
    with pytest.raises(PlatformError) as refused:
        await platform.rename(written, files, "renamed.txt")
    assert refused.value.errno == errno.EPERM
    assert await names(platform, appresults) == ["Empty", "Full"]

    await platform.delete(empty)
    assert await names(platform, appresults) == ["Full"]
    bare = await platform.make_directory(projects, f"Bare {uuid.uuid4().hex[:8]}")
    await platform.delete(bare)
    assert bare.name not in await names(platform, projects) and project.name in await names(platform, projects)
    async with httpx.AsyncClient() as client:  # the V1 API has no such project any more
        gone = await client.get(f"{bs.url}/basespace/v1pre3/projects/{bare.uid}", headers={"x-access-token": bs.token})
    assert gone.status_code == 404


# -- through real mounts: real tools, real uploads ------------------------------------------------


@pytest.fixture
def bs_mount(mount, bs):
    """`bs_mount(*extra_args, cache_dir=None)`: the writes emulator's BaseSpace, mounted for real."""

    def do_mount(*extra: str, cache_dir: Path | None = None):
        mounted = mount({"basespace": platform_table(bs, "basespace")}, *extra, cache_dir=cache_dir)
        return mounted, mounted.path / "basespace"

    return do_mount


def new_place(root: Path) -> Path:
    """A new project and app result made with mkdir, as a user makes them; its Files directory."""
    project = root / "Projects" / f"Mount writes {uuid.uuid4().hex[:8]}"
    project.mkdir()
    (project / "AppResults" / "Calls").mkdir()
    return project / "AppResults" / "Calls" / "Files"


def local_file(directory: Path, name: str, size: int) -> Path:
    path = directory / name
    generator = random.Random(name)
    with open(path, "wb") as out:
        out.writelines(generator.randbytes(min(8 * MiB, size - start)) for start in range(0, size, 8 * MiB))
    return path


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=check, timeout=600)


def md5(path: Path) -> str:
    return md5sums([path])[path]


def file_id(path: Path) -> str:
    return os.getxattr(path, "user.omicsfs.id").decode()


def stored_md5(emulator: EmulatorProcess, path: Path) -> str:
    """The MD5 (md5sum's) of the bytes the emulator keeps for the file at `path` in a mount."""
    return md5(Path(emulator.data_dir) / "written" / f"basespace-{emulator.process.pid}" / file_id(path))


def test_cp_of_empty_small_and_100_mib_files_reads_back_through_a_fresh_mount(bs_mount, bs, tmp_path):
    _, root = bs_mount()
    files = new_place(root)
    project = files.parents[2]
    with pytest.raises(FileExistsError):
        project.mkdir()  # BaseSpace answered 200 with the project just made: not a second one
    with pytest.raises(FileExistsError):
        (project / "AppResults" / "Calls").mkdir()
    sources = [local_file(tmp_path, "empty.bin", 0), local_file(tmp_path, "small.vcf", 300_000),
               local_file(tmp_path, "large.bam", 100 * MiB)]
    (files / "deep" / "er").mkdir(parents=True)
    run("cp", str(sources[0]), str(sources[1]), str(files))
    run("cp", str(sources[2]), str(files / "deep" / "er"))
    # An empty file is sent when its descriptor is released, just after cp's close (fs.flush).
    wait_for(lambda: bs.stats()["uploads_completed"] == 3, "the three uploads", timeout=10)
    written = [files / "empty.bin", files / "small.vcf", files / "deep/er/large.bam"]
    expected = [md5(source) for source in sources]
    assert [md5(path) for path in written] == expected
    assert [path.stat().st_size for path in written] == [0, 300_000, 100 * MiB]
    assert [stored_md5(bs, path) for path in written] == expected, "the emulator holds the same bytes"
    stats = bs.stats()
    # Two files in one request each; the large one in 8 MiB parts streamed while written, none twice.
    assert (stats["uploads_completed"], stats["parts_received"], stats["upload_bytes"]) == (3, 2 + 13, 300_000 + 100 * MiB)

    _, fresh = bs_mount()
    again = [fresh / path.relative_to(root) for path in written]
    assert [md5(path) for path in again] == expected
    assert sorted(os.listdir(again[0].parent)) == ["deep", "empty.bin", "small.vcf"]
    assert [file_id(path) for path in again] == [file_id(path) for path in written]


def test_samtools_sort_into_the_mount_then_index_and_a_region_query(bs_mount, bs, emulator, tmp_path):
    _, root = bs_mount()
    files = new_place(root)
    account = sampledata.load(Path(emulator.data_dir) / "basespace")
    original = next(sampledata.object_path(Path(emulator.data_dir) / "basespace", item["Id"])
                    for _, _, item in sampledata.iter_files(account) if item["Path"] == "Alignment/S1.bam")
    by_name = tmp_path / "by-name.bam"
    run("samtools", "sort", "-n", "-o", str(by_name), str(original))
    sorted_bam = files / "Alignment" / "S1.sorted.bam"
    sorted_bam.parent.mkdir()
    run("samtools", "sort", "-o", str(sorted_bam), str(by_name))
    run("samtools", "index", str(sorted_bam))
    assert sorted(os.listdir(sorted_bam.parent)) == ["S1.sorted.bam", "S1.sorted.bam.bai"]
    region = "chr2:500000-520000"
    local = tmp_path / "S1.bam"  # the emulator's own BAM, indexed here, says what the query finds
    shutil.copyfile(original, local)
    run("samtools", "index", str(local))
    expected = run("samtools", "view", "-c", str(local), region).stdout
    assert int(expected) > 0
    assert run("samtools", "view", "-c", str(sorted_bam), region).stdout == expected
    _, fresh = bs_mount()
    assert run("samtools", "view", "-c", str(fresh / sorted_bam.relative_to(root)), region).stdout == expected
    assert run("samtools", "quickcheck", str(fresh / sorted_bam.relative_to(root))).returncode == 0


def test_a_script_that_seeks_back_and_rewrites_its_header(bs_mount, bs, tmp_path):
    _, root = bs_mount()
    files = new_place(root)
    target = files / "table.bin"
    script = textwrap.dedent("""
        import random, sys
        body = random.Random("body").randbytes(12 * 1024 * 1024 + 5)
        with open(sys.argv[1], "wb") as out:
            out.write(b"COUNT=????????\\n")
            out.write(body)
            out.seek(6)
            out.write(b"%08d" % len(body))
            out.seek(0, 2)
            out.write(b"END\\n")
        with open(sys.argv[2], "wb") as out:
            out.write(b"COUNT=%08d\\n" % len(body) + body + b"END\\n")
    """)
    run(sys.executable, "-c", script, str(target), str(tmp_path / "expected.bin"))
    expected = md5(tmp_path / "expected.bin")
    assert md5(target) == expected and stored_md5(bs, target) == expected
    _, fresh = bs_mount()
    assert md5(fresh / target.relative_to(root)) == expected


def test_rsync_inplace_of_a_directory_and_again_after_a_change(bs_mount, bs, tmp_path):
    _, root = bs_mount()
    files = new_place(root)
    tree = tmp_path / "run42"
    for name, size in (("SampleSheet.csv", 2_000), ("qc/summary.txt", 40_000), ("qc/plots/depth.png", 90_000),
                       ("reads/R1.fastq.gz", 6 * MiB + 11)):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        local_file((tree / name).parent, (tree / name).name, size)
    run("rsync", "-r", "--inplace", f"{tree}/", str(files / "run42"))
    (tree / "qc" / "summary.txt").write_bytes(b"rewritten\n" * 100)
    run("rsync", "-r", "--inplace", f"{tree}/", str(files / "run42"))
    _, fresh = bs_mount()
    mirrored = fresh / (files / "run42").relative_to(root)
    local = {path.relative_to(tree): sum for path, sum in md5sums(sorted(p for p in tree.rglob("*") if p.is_file())).items()}
    remote = {path.relative_to(mirrored): sum
              for path, sum in md5sums(sorted(p for p in mirrored.rglob("*") if p.is_file())).items()}
    assert remote == local, "every file once, the changed one replaced"
    assert (mirrored / "qc" / "summary.txt").read_bytes() == b"rewritten\n" * 100


def test_kill_9_in_the_middle_of_a_100_mib_upload_then_the_next_mount_finishes_it(bs_mount, bs, tmp_path):
    cache = tmp_path / "cache"
    mounted, root = bs_mount(cache_dir=cache)
    files = new_place(root)
    source = local_file(tmp_path, "interrupted.bam", 100 * MiB)
    bs.knobs(part_faults=[{"fault": "slow", "seconds": 1.5, "count": 1000}])
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import shutil, sys
        with open(sys.argv[1], "rb") as source, open(sys.argv[2], "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
            print("written", flush=True)
    """), str(source), str(files / "interrupted.bam")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "written\n", writer.stderr.read()
    wait_for(lambda: bs.stats()["parts_received"] >= 2, "two parts on the platform")
    assert bs.stats()["uploads_completed"] == 0, "killed in the middle of the upload"
    daemon = mounted.daemon_pid()
    os.kill(daemon, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{daemon}").exists() or Path(f"/proc/{daemon}/stat").read_text().split()[2] == "Z",
             "the daemon's death")
    writer.wait(timeout=60)
    bs.knobs(part_faults=[])

    remounted, fresh = bs_mount(cache_dir=cache)
    wait_for(lambda: bs.stats()["uploads_completed"] == 1, "the upload finished by the next mount")
    finished = fresh / (files / "interrupted.bam").relative_to(root)
    assert md5(finished) == md5(source) == stored_md5(bs, finished)
    assert "resuming an upload left unfinished by the last mount" in remounted.log.read_text()
    # Only what the platform did not have was sent again: 13 parts, and at most the 4 in flight twice.
    assert 13 <= bs.stats()["parts_received"] <= 13 + 4
    run("fusermount3", "-u", "-z", str(mounted.path), check=False)


def test_injected_part_failures_and_dropped_connections_give_the_right_bytes(bs_mount, bs, tmp_path):
    # (BaseSpace's parts go to its API, not to presigned URLs: there are no part URLs to expire.)
    _, root = bs_mount()
    files = new_place(root)
    source = local_file(tmp_path, "faulty.bam", 60 * MiB)
    bs.knobs(part_faults=[{"part": 2, "fault": "status", "status": 500, "count": 2},
                          {"part": 5, "fault": "drop", "after": MiB, "count": 1},
                          {"part": 7, "fault": "badetag", "count": 1}])
    run("cp", str(source), str(files))
    assert md5(files / "faulty.bam") == md5(source) == stored_md5(bs, files / "faulty.bam")
    stats = bs.stats()
    assert stats["injected_failures"] == 4 and stats["parts_received"] == 8 + 1, "part 7 sent again, once"
    _, fresh = bs_mount()
    assert md5(fresh / (files / "faulty.bam").relative_to(root)) == md5(source)


def test_read_only_places_refuse_writes_and_the_platform_sees_no_upload(bs_mount, bs, tmp_path):
    mounted, root = bs_mount()
    source = local_file(tmp_path, "stray.txt", 1000)
    wgs = root / WGS
    (run_name,) = os.listdir(root / "Runs")
    refusals = {
        ("cp", str(source), str(wgs / "Samples/S1/Files")): "Read-only file system",
        ("cp", str(source), str(root / "Runs" / run_name / "Files")): "Read-only file system",
        ("cp", str(source), str(wgs / "AppResults/Archive/Files")): "Read-only file system",  # Complete
        ("cp", str(source), str(wgs / "Datasets")): "Read-only file system",
        ("cp", str(source), str(wgs)): "Read-only file system",
        ("cp", str(source), str(root / "Projects")): "Operation not permitted",  # it takes mkdir only
        ("cp", str(source), str(root)): "Read-only file system",
        ("mkdir", str(wgs / "Samples/S9")): "Read-only file system",
        ("mkdir", str(root / "Runs/new run")): "Read-only file system",
        ("cp", str(source), str(wgs / "AppResults/Archive/Files/Archive/reportarchive.bin")): "Read-only file system",
        ("mv", str(wgs / "AppResults/Archive"), str(wgs / "AppResults/Archived")): "Operation not permitted",
        ("touch", str(wgs / "Samples/S1/Files/S1_L001_R1_001.fastq.gz")): "Read-only file system",
        ("rm", str(wgs / "AppResults/Archive/Files/Archive/reportarchive.bin")): "Read-only file system",
    }
    for command, message in refusals.items():
        result = run(*command, check=False)
        assert result.returncode != 0 and message in result.stderr, (command, result.stderr)
    stats = bs.stats()
    assert (stats["uploads_started"], stats["part_requests"], stats["upload_bytes"]) == (0, 0, 0)
    log = mounted.log.read_text()
    assert "Samples/S1/Files/stray.txt: creating a file refused: this place is read-only" in log
    assert "AppResults/Archive: rename refused" in log


def test_omicsfs_complete_closes_an_app_result_and_says_so(bs_mount, bs):
    _, root = bs_mount()
    files = new_place(root)
    (files / "calls.vcf").write_bytes(b"##fileformat=VCFv4.2\n")
    appresult = files.parent
    said = run_omicsfs("complete", str(appresult)).stdout
    assert said.startswith("Marked app result 'Calls' complete") and "from Running to Complete" in said
    appresult_id = (appresult / ".id").read_text().strip()
    answer = httpx.get(f"{bs.url}/basespace/v1pre3/appresults/{appresult_id}", headers={"x-access-token": bs.token}).json()
    assert answer["Response"]["Status"] == "Complete" and answer["Response"]["AppSession"]["Status"] == "Complete"
    assert "already complete" in run_omicsfs("complete", str(appresult)).stdout
    refused = run_omicsfs("complete", str(appresult.parents[1]), check=False)
    assert refused.returncode != 0 and "complete applies to an app result" in refused.stderr
    _, fresh = bs_mount()
    closed = fresh / files.relative_to(root)
    result = run("cp", "/etc/hostname", str(closed), check=False)
    assert result.returncode != 0 and "Read-only file system" in result.stderr
    assert (closed / "calls.vcf").read_bytes() == b"##fileformat=VCFv4.2\n"


def test_rm_rf_of_an_app_result_stops_at_the_first_refusal(bs_mount, bs):
    _, root = bs_mount()
    files = new_place(root)
    for name in ("a.txt", "b.txt", "sub/c.txt", "sub/d.txt"):
        (files / name).parent.mkdir(exist_ok=True)
        (files / name).write_bytes(name.encode())
    result = run("rm", "-rf", str(files.parent), check=False)
    assert result.returncode != 0 and "Operation not permitted" in result.stderr
    _, fresh = bs_mount()
    kept = fresh / files.relative_to(root)
    assert sorted(str(p.relative_to(kept)) for p in kept.rglob("*.txt")) == ["a.txt", "b.txt", "sub/c.txt", "sub/d.txt"]
    result = run("rmdir", str(kept.parent), check=False)
    assert result.returncode != 0 and "Directory not empty" in result.stderr


def test_a_file_read_back_after_its_upload_comes_from_the_cache(bs_mount, bs, tmp_path):
    """`samtools index` right after `samtools sort -o`: what was just uploaded is not downloaded again."""
    mounted, root = bs_mount()
    files = new_place(root)
    source = local_file(tmp_path, "readback.bam", 20 * MiB)
    run("cp", str(source), str(files))
    bs.reset_stats()
    assert md5(files / "readback.bam") == md5(source)
    assert bs.stats()["store_requests"] == 0
    # And after a remount on the same cache directory.
    cache_dir = next(mounted.path.parent.glob("cache*"))
    _, again = bs_mount(cache_dir=cache_dir)
    assert md5(again / (files / "readback.bam").relative_to(root)) == md5(source)
    assert bs.stats()["store_requests"] == 0
