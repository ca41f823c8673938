"""BugSeq uploads: the platform module's writing methods against the emulator's upload flow, then
real mounts where real tools write into `bugseq/uploads/`.

The module is first driven directly (as the core drives it) over real HTTP to the session's
emulator, to prove each fault surfaces as what the core retries; then through mounts. What arrived
is read back from the emulator's own record (`/bugseq/_emulator/uploads`) and the bytes it stored:
BugSeq has no download for uploaded files, so a mount cannot read them back (see the module's doc).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

from omicsfs.emulator import bugseq as emulated
from omicsfs.errors import AccessDenied, PlatformError
from omicsfs.http import Http, RetryPolicy, new_client
from omicsfs.platform import Entry, PartBody
from omicsfs.platforms import bugseq
from tests.conftest import md5sums, platform_table, run_omicsfs, wait_for

MiB = 1024 * 1024
#: A quick retry policy: the knobs' faults are retried in milliseconds, not seconds.
QUICK = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def body_of(data: bytes) -> PartBody:
    """A part read from memory in 1 MiB pieces, afresh for each attempt."""

    async def stream():
        for start in range(0, len(data), MiB):
            yield data[start : start + MiB]

    return PartBody(len(data), hashlib.md5(data).digest(), stream)


def body_from_file(path: Path, start: int, size: int) -> PartBody:
    """A part read from a staging-like file as it is sent, as the core sends parts."""
    with open(path, "rb") as file:
        file.seek(start)
        md5 = hashlib.md5(file.read(size)).digest()

    async def stream():
        with open(path, "rb") as file:
            file.seek(start)
            left = size
            while left:
                chunk = file.read(min(left, MiB))
                left -= len(chunk)
                yield chunk

    return PartBody(size, md5, stream)


def uploads_seen(emulator) -> dict[str, dict]:
    """File id → what the emulator knows of it (its control endpoint)."""
    answer = httpx.get(f"{emulator.url}/bugseq/_emulator/uploads", timeout=10).raise_for_status().json()
    return {file["id"]: file for file in answer["files"]}


def stored(emulator, file_id: str) -> bytes:
    return Path(uploads_seen(emulator)[file_id]["path"]).read_bytes()


def api_post(emulator, path: str, body, token: str | None = None) -> httpx.Response:
    return httpx.post(f"{emulator.url}/bugseq/v1/{path}", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {token or emulator.token}"})


UPLOADS = Entry("uploads", True, ("uploads",))


@pytest.fixture
async def platform(fresh_emulator):
    async with new_client() as client:
        yield platform_for(fresh_emulator, client)


def platform_for(emulator, client: httpx.AsyncClient, **settings) -> bugseq.BugSeq:
    table = {"url": f"{emulator.url}/bugseq", "token": emulator.token, **settings}
    return bugseq.PLATFORM("bugseq", table, Http(client, QUICK))


async def multipart(platform, data: bytes, name: str, part_size: int = 5 * MiB) -> Entry:
    handle = await platform.begin_upload(UPLOADS, name, None, None)
    parts = []
    for number, start in enumerate(range(0, len(data), part_size), start=1):
        parts.append((number, await platform.upload_part(handle, number, body_of(data[start : start + part_size]))))
    return await platform.complete_upload(handle, parts, len(data))


# -- the tree ---------------------------------------------------------------------------------------


async def test_only_uploads_takes_writes(platform):
    top = await platform.list_dir(platform.root())
    assert [(e.name, e.allows, e.remembers_uploads) for e in top] == [
        ("jobs", frozenset(), False), ("uploads", frozenset({"create"}), True)]
    assert await platform.list_dir(top[1]) == []  # the API lists no uploads: the core lists its own record
    jobs = await platform.list_dir(top[0])
    listed = [entry for job in jobs[:3] for entry in await platform.list_dir(job)]
    assert jobs and listed and all(not e.allows and not e.remembers_uploads for e in jobs + listed)
    assert platform.part_rules.min_part == 5 * MiB and platform.part_rules.whole_max == 5 * MiB
    assert platform.part_rules.needs_size is False and platform.part_rules.max_parts == 10_000


async def test_writes_elsewhere_and_other_acts_are_refused(platform, fresh_emulator):
    jobs = Entry("jobs", True, ("jobs",))
    with pytest.raises(PlatformError) as refused:
        await platform.begin_upload(jobs, "x.fastq.gz", None, None)
    assert refused.value.errno == errno.EROFS
    with pytest.raises(PlatformError) as refused:
        await platform.upload_whole(jobs, "x.fastq.gz", body_of(b"x"), None)
    assert refused.value.errno == errno.EROFS
    earlier = Entry("x.fastq.gz", False, ("upload", "some-id"), uid="some-id")
    with pytest.raises(PlatformError) as refused:
        await platform.make_directory(UPLOADS, "folder")
    assert refused.value.errno == errno.EROFS
    with pytest.raises(PlatformError) as refused:
        await platform.delete(earlier)
    assert refused.value.errno == errno.EPERM
    with pytest.raises(PlatformError) as refused:
        await platform.rename(earlier, UPLOADS, "y.fastq.gz")
    assert refused.value.errno == errno.EPERM
    assert platform.actions == frozenset()
    stats = fresh_emulator.stats()
    assert (stats["api_requests"], stats["uploads_started"]) == (0, 0)  # refused before asking BugSeq


# -- uploads ------------------------------------------------------------------------------------------


async def test_small_file_is_one_presigned_put(platform, fresh_emulator):
    data = payload(300_000, seed=1)
    entry = await platform.upload_whole(UPLOADS, "barcode01.fastq.gz", body_of(data), None)
    seen = uploads_seen(fresh_emulator)[entry.uid]
    assert (seen["filename"], seen["kind"], seen["status"], seen["size"]) == ("barcode01.fastq.gz", "singlepart", "uploaded", 300_000)
    assert seen["md5"] == hashlib.md5(data).hexdigest() and seen["s3_region"] is None
    assert stored(fresh_emulator, entry.uid) == data
    assert (entry.name, entry.is_dir, entry.size, entry.xattrs) == ("barcode01.fastq.gz", False, 300_000, {"id": entry.uid})
    stats = fresh_emulator.stats()
    assert (stats["uploads_started"], stats["uploads_completed"], stats["parts_received"], stats["upload_bytes"]) == (1, 1, 1, 300_000)


async def test_empty_file(platform, fresh_emulator):
    entry = await platform.upload_whole(UPLOADS, "empty.txt", body_of(b""), None)
    seen = uploads_seen(fresh_emulator)[entry.uid]
    assert (seen["status"], seen["size"], seen["md5"]) == ("uploaded", 0, "d41d8cd98f00b204e9800998ecf8427e")
    assert stored(fresh_emulator, entry.uid) == b"" and entry.size == 0


async def test_multipart_upload_in_any_order(platform, fresh_emulator, tmp_path):
    """Parts read from a file as sent, out of order; the ETags are the parts' MD5s; the file id comes back."""
    data = payload(11 * MiB + 12_345, seed=2)
    staging = tmp_path / "staging"
    staging.write_bytes(data)
    handle = await platform.begin_upload(UPLOADS, "reads.fastq.gz", None, None)
    assert json.loads(json.dumps(handle)) == handle  # the journal stores it as JSON
    spans = {1: (0, 5 * MiB), 2: (5 * MiB, 5 * MiB), 3: (10 * MiB, MiB + 12_345)}
    etags = {}
    for number in (3, 1, 2):
        etags[number] = await platform.upload_part(handle, number, body_from_file(staging, *spans[number]))
        start, size = spans[number]
        assert etags[number] == hashlib.md5(data[start : start + size]).hexdigest()
    assert uploads_seen(fresh_emulator)[handle["file_id"]]["status"] == "pending"
    entry = await platform.complete_upload(handle, sorted(etags.items()), len(data))
    assert entry.uid == handle["file_id"] and entry.xattrs == {"id": handle["file_id"]} and entry.size == len(data)
    seen = uploads_seen(fresh_emulator)[entry.uid]
    assert (seen["kind"], seen["status"], seen["size"], seen["md5"]) == ("multipart", "uploaded", len(data), hashlib.md5(data).hexdigest())
    assert stored(fresh_emulator, entry.uid) == data
    stats = fresh_emulator.stats()
    assert (stats["uploads_started"], stats["uploads_completed"], stats["parts_received"]) == (1, 1, 3)
    assert stats["upload_bytes"] == len(data)


async def test_an_upload_goes_on_after_a_restart(fresh_emulator):
    """A new process (a new client, a new platform) finishes an upload from its journaled handle alone."""
    data = payload(6 * MiB, seed=3)
    async with new_client() as client:
        first = platform_for(fresh_emulator, client)
        handle = json.loads(json.dumps(await first.begin_upload(UPLOADS, "resumed.bam", None, None)))
        etag = await first.upload_part(handle, 1, body_of(data[: 5 * MiB]))
    async with new_client() as client:
        second = platform_for(fresh_emulator, client)
        parts = [(1, etag), (2, await second.upload_part(handle, 2, body_of(data[5 * MiB :])))]
        entry = await second.complete_upload(handle, parts, len(data))
    assert stored(fresh_emulator, entry.uid) == data


async def test_a_file_written_further_is_a_new_upload(platform, fresh_emulator):
    """What the core does after more writes to a file it confirmed: a new BugSeq file, the listing
    shows it instead; BugSeq keeps the first (it has no delete)."""
    first = await platform.upload_whole(UPLOADS, "grown.txt", body_of(b"first\n"), None)
    again = await platform.upload_whole(UPLOADS, "grown.txt", body_of(b"first\nsecond\n"), first)
    assert again.uid != first.uid and again.name == "grown.txt" and again.size == 13
    assert stored(fresh_emulator, first.uid) == b"first\n" and stored(fresh_emulator, again.uid) == b"first\nsecond\n"


async def test_s3_region_is_sent_when_configured(fresh_emulator):
    async with new_client() as client:
        platform = platform_for(fresh_emulator, client, s3_region="ca-central-1")
        small = await platform.upload_whole(UPLOADS, "a.txt", body_of(b"a\n"), None)
        large = await platform.begin_upload(UPLOADS, "b.txt", None, None)
    seen = uploads_seen(fresh_emulator)
    assert seen[small.uid]["s3_region"] == seen[large["file_id"]]["s3_region"] == "ca-central-1"


async def test_a_listed_upload_cannot_be_read_back(platform):
    entry = await platform.upload_whole(UPLOADS, "notes.txt", body_of(b"notes\n"), None)
    with pytest.raises(PlatformError) as refused:
        async for _ in platform.read(entry, 0, entry.size, what="bugseq/uploads/notes.txt"):
            pass
    assert refused.value.errno == errno.EACCES and "no download" in str(refused.value)


# -- the knobs: each fault surfaces as what the core retries ----------------------------------------


async def test_failed_part_is_retried_by_http(platform, fresh_emulator):
    fresh_emulator.knobs(part_faults=[{"part": 2, "fault": "status", "status": 503, "count": 2}])
    data = payload(7 * MiB, seed=4)
    entry = await multipart(platform, data, "retried.bam")
    assert stored(fresh_emulator, entry.uid) == data
    stats = fresh_emulator.stats()
    assert (stats["injected_failures"], stats["part_requests"], stats["parts_received"]) == (2, 4, 2)


async def test_part_failing_on_every_try_raises(platform, fresh_emulator):
    fresh_emulator.knobs(part_faults=[{"part": 1, "fault": "status", "status": 500, "count": 100}])
    handle = await platform.begin_upload(UPLOADS, "doomed.bam", None, None)
    with pytest.raises(PlatformError) as failed:
        await platform.upload_part(handle, 1, body_of(payload(MiB)))
    assert "gave up after 4 attempts" in str(failed.value)
    assert fresh_emulator.stats()["part_requests"] == QUICK.attempts
    fresh_emulator.knobs(part_faults=[])
    data = payload(MiB, seed=5)  # and the core's next try goes through
    entry = await platform.complete_upload(handle, [(1, await platform.upload_part(handle, 1, body_of(data)))], MiB)
    assert stored(fresh_emulator, entry.uid) == data


async def test_dropped_connection_mid_part_is_sent_again(platform, fresh_emulator):
    fresh_emulator.knobs(part_faults=[{"part": 1, "fault": "drop", "after": 2 * MiB}])
    data = payload(8 * MiB, seed=6)
    entry = await multipart(platform, data, "dropped.bam")
    assert stored(fresh_emulator, entry.uid) == data
    stats = fresh_emulator.stats()
    assert (stats["injected_failures"], stats["part_requests"], stats["parts_received"]) == (1, 3, 2)


async def test_slow_part_past_the_client_timeout_is_sent_again(fresh_emulator, caplog):
    caplog.set_level(logging.WARNING, logger="omicsfs")
    fresh_emulator.knobs(part_faults=[{"part": 1, "fault": "slow", "seconds": 2}])
    data = payload(6 * MiB, seed=7)
    async with new_client(timeout=0.5) as client:
        platform = platform_for(fresh_emulator, client)
        handle = await platform.begin_upload(UPLOADS, "slow.bam", None, None)
        first = await platform.upload_part(handle, 1, body_of(data[: 5 * MiB]))
        assert fresh_emulator.stats()["part_requests"] == 2  # timed out once, sent again
        assert "Timeout on PUT" in caplog.text and "retry 1/3" in caplog.text
        await trio.sleep(2.5)  # the slow request ends (on a closed connection) before the upload does
        parts = [(1, first), (2, await platform.upload_part(handle, 2, body_of(data[5 * MiB :])))]
        entry = await platform.complete_upload(handle, parts, len(data))
    assert stored(fresh_emulator, entry.uid) == data
    assert fresh_emulator.stats()["injected_failures"] == 1


async def test_expired_part_url_is_asked_again_then_reported(platform, fresh_emulator):
    handle = await platform.begin_upload(UPLOADS, "expired.bam", None, None)
    fresh_emulator.reset_stats()
    fresh_emulator.knobs(part_url_lifetime=-10)  # every part URL is born expired
    with pytest.raises(AccessDenied):
        await platform.upload_part(handle, 1, body_of(payload(MiB)))
    stats = fresh_emulator.stats()
    assert stats["api_requests"] == 2 and stats["part_requests"] == 0  # a fresh URL once, refused too
    fresh_emulator.knobs(part_url_lifetime=60)
    data = payload(MiB, seed=8)
    entry = await platform.complete_upload(handle, [(1, await platform.upload_part(handle, 1, body_of(data)))], MiB)
    assert stored(fresh_emulator, entry.uid) == data


async def test_bad_etag_is_returned_for_the_core_to_send_again(platform, fresh_emulator):
    fresh_emulator.knobs(part_faults=[{"part": 1, "fault": "badetag"}])
    data = payload(6 * MiB, seed=9)
    first = data[: 5 * MiB]
    handle = await platform.begin_upload(UPLOADS, "etag.bam", None, None)
    etag = await platform.upload_part(handle, 1, body_of(first))
    assert etag != hashlib.md5(first).hexdigest()  # what the core's check catches: it sends the part again
    etag = await platform.upload_part(handle, 1, body_of(first))
    assert etag == hashlib.md5(first).hexdigest()
    parts = [(1, etag), (2, await platform.upload_part(handle, 2, body_of(data[5 * MiB :])))]
    entry = await platform.complete_upload(handle, parts, len(data))
    assert stored(fresh_emulator, entry.uid) == data


async def test_single_put_with_a_bad_etag_is_sent_again_on_its_url(platform, fresh_emulator):
    fresh_emulator.knobs(part_faults=[{"fault": "badetag"}])
    data = payload(100_000, seed=10)
    entry = await platform.upload_whole(UPLOADS, "small.vcf", body_of(data), None)
    assert stored(fresh_emulator, entry.uid) == data
    stats = fresh_emulator.stats()
    assert (stats["parts_received"], stats["upload_bytes"]) == (2, 200_000)
    assert [f["filename"] for f in uploads_seen(fresh_emulator).values()].count("small.vcf") == 1


async def test_expired_single_put_url_gets_a_new_upload(platform, fresh_emulator):
    fresh_emulator.knobs(part_url_lifetime=-10)
    with pytest.raises(AccessDenied):
        await platform.upload_whole(UPLOADS, "late.txt", body_of(b"late\n"), None)
    late = [f for f in uploads_seen(fresh_emulator).values() if f["filename"] == "late.txt"]
    assert [f["status"] for f in late] == ["pending", "pending"]  # one init, then one more for a fresh URL
    fresh_emulator.knobs(part_url_lifetime=60)
    entry = await platform.upload_whole(UPLOADS, "late.txt", body_of(b"late\n"), None)
    assert stored(fresh_emulator, entry.uid) == b"late\n"


async def test_no_token_or_signature_reaches_the_log(platform, fresh_emulator, caplog):
    caplog.set_level(logging.DEBUG)
    fresh_emulator.knobs(part_faults=[{"part": 1, "fault": "status", "status": 500}, {"part": 2, "fault": "drop", "after": MiB}])
    await multipart(platform, payload(7 * MiB, seed=11), "quiet.bam")
    fresh_emulator.knobs(part_url_lifetime=-10)
    with pytest.raises(AccessDenied):
        await platform.upload_whole(UPLOADS, "quiet.txt", body_of(b"q"), None)
    # omicsfs's own lines (the daemon keeps httpx's, which print whole URLs, at WARNING: cli.py).
    text = "\n".join(record.getMessage() for record in caplog.records if record.name.startswith("omicsfs"))
    assert "retry 1/3" in text and "refused the upload URL" in text
    assert fresh_emulator.token not in text and "X-Signature" not in text


# -- the emulator is as strict as S3 and the seed ---------------------------------------------------


async def test_complete_refuses_what_s3_refuses(platform, fresh_emulator):
    data = payload(11 * MiB, seed=12)
    handle = await platform.begin_upload(UPLOADS, "strict.bam", None, None)
    etags = {n: await platform.upload_part(handle, n, body_of(data[(n - 1) * 5 * MiB : n * 5 * MiB])) for n in (1, 3)}
    etags[4] = await platform.upload_part(handle, 4, body_of(b"tail"))
    ids = {"file_id": handle["file_id"], "upload_id": handle["upload_id"]}

    def complete(parts) -> httpx.Response:
        return api_post(fresh_emulator, "files/multipart/complete", {**ids, "parts": parts})

    def part(number, etag=None):
        return {"PartNumber": number, "ETag": f'"{etag or etags[number]}"'}

    answer = complete([part(1), part(3)])
    assert answer.status_code == 400 and "without gaps" in answer.json()["detail"]
    answer = complete([part(1), part(2, "0" * 32)])  # part 2 was never sent
    assert answer.status_code == 400 and answer.json()["detail"].startswith("InvalidPart")
    small = await platform.upload_part(handle, 2, body_of(data[5 * MiB : 6 * MiB]))  # 1 MiB, not last
    answer = complete([part(1), part(2, small), part(3), part(4)])
    assert answer.status_code == 400 and answer.json()["detail"].startswith("EntityTooSmall")
    answer = complete([part(2, small), part(1)])
    assert answer.status_code == 400 and answer.json()["detail"].startswith("InvalidPartOrder")
    answer = complete([{"PartNumber": 1, "ETag": etags[1], "Size": 5}])
    assert answer.status_code == 400 and answer.json()["detail"].startswith("MalformedXML")
    with pytest.raises(PlatformError) as refused:  # through the module: the same refusal, as an error
        await platform.complete_upload(handle, [(1, etags[1]), (2, small), (3, etags[3])], 11 * MiB)
    assert refused.value.status == 400
    assert uploads_seen(fresh_emulator)[handle["file_id"]]["status"] == "pending"
    full = await platform.upload_part(handle, 2, body_of(data[5 * MiB : 10 * MiB]))  # sent again, whole
    entry = await platform.complete_upload(handle, [(1, etags[1]), (2, full), (3, etags[3])], 11 * MiB)
    assert stored(fresh_emulator, entry.uid) == data
    answer = complete([part(1), part(2, full), part(3)])
    assert answer.status_code == 404  # completed: the upload is gone, as S3's NoSuchUpload


async def test_parts_refused_by_the_store(platform, fresh_emulator):
    handle = await platform.begin_upload(UPLOADS, "parts.bam", None, None)
    data = payload(MiB, seed=13)
    wrong = PartBody(len(data), hashlib.md5(b"other bytes").digest(), body_of(data).stream)
    with pytest.raises(PlatformError) as refused:
        await platform.upload_part(handle, 1, wrong)
    assert refused.value.status == 400  # BadDigest: not retried by Http, the core sends the part again
    for number in (0, 10_001):  # presigned all the same, as boto3 presigns without asking S3
        with pytest.raises(PlatformError) as refused:
            await platform.upload_part(handle, number, body_of(data))
        assert refused.value.status == 400  # InvalidArgument
    chunk = api_post(fresh_emulator, "files/multipart/chunk", {"file_id": handle["file_id"], "upload_id": handle["upload_id"],
                                                                 "part_number": 1}).json()
    url = chunk["presigned_s3_data"]["url"]

    async def chunked():
        yield data

    async with httpx.AsyncClient() as client:  # a PUT without Content-Length, as S3 refuses it
        answer = await client.put(url, content=chunked())
    assert answer.status_code == 411 and b"MissingContentLength" in answer.content
    assert fresh_emulator.stats()["parts_received"] == 0


async def test_single_put_needs_its_signed_content_type(fresh_emulator):
    init = api_post(fresh_emulator, "files/singlepart/init", {"filename": "plain.txt"}).json()
    presigned = init["presigned_s3_data"]
    assert presigned["method"] == "PUT" and presigned["headers"] == {"Content-Type": "application/octet-stream"}
    answer = httpx.put(presigned["url"], content=b"plain\n", headers={"Content-Type": "text/plain"})
    assert answer.status_code == 403 and b"SignatureDoesNotMatch" in answer.content
    answer = httpx.put(presigned["url"] + "0", content=b"plain\n", headers=presigned["headers"])
    assert answer.status_code == 403
    answer = httpx.put(presigned["url"], content=b"plain\n", headers=presigned["headers"])
    assert answer.status_code == 200 and answer.headers["etag"] == '"' + hashlib.md5(b"plain\n").hexdigest() + '"'
    assert stored(fresh_emulator, init["id"]) == b"plain\n"
    answer = httpx.put(presigned["url"], content=b"again\n", headers=presigned["headers"])  # S3 replaces the object
    assert answer.status_code == 200 and stored(fresh_emulator, init["id"]) == b"again\n"


def test_bodies_are_checked_as_the_seed_says(fresh_emulator):
    answer = api_post(fresh_emulator, "files/multipart/init", {"filename": "a", "size": 10})
    assert answer.status_code == 422
    assert answer.json()["detail"] == [{"type": "extra_forbidden", "loc": ["body", "size"], "msg": "Extra inputs are not permitted"}]
    answer = api_post(fresh_emulator, "files/singlepart/init", {"s3_region": 5})
    assert answer.status_code == 422
    assert {(e["type"], e["loc"][1]) for e in answer.json()["detail"]} == {("missing", "filename"), ("string_type", "s3_region")}
    answer = api_post(fresh_emulator, "files/multipart/chunk", {"file_id": "f", "upload_id": "u", "part_number": "one"})
    assert answer.status_code == 422 and answer.json()["detail"][0]["type"] == "int_type"
    answer = api_post(fresh_emulator, "files/multipart/chunk", {"file_id": "nope", "upload_id": "u", "part_number": 1})
    assert answer.status_code == 404
    init = api_post(fresh_emulator, "files/multipart/init", {"filename": "a", "s3_region": None}).json()
    assert set(init) == {"id", "presigned_s3_data"} and set(init["presigned_s3_data"]) == {"upload_id", "bucket", "key"}
    answer = api_post(fresh_emulator, "files/multipart/chunk", {"file_id": init["id"], "upload_id": "other", "part_number": 1})
    assert answer.status_code == 400
    answer = api_post(fresh_emulator, "files/multipart/init", {"filename": "a"}, token="wrong")
    assert answer.status_code == 401 and answer.json() == {"detail": "Could not validate credentials"}
    answer = httpx.post(f"{fresh_emulator.url}/bugseq/v1/files/multipart/init", content=b"{not json",
                        headers={"Authorization": f"Bearer {fresh_emulator.token}", "Content-Type": "application/json"})
    assert answer.status_code == 422 and answer.json()["detail"][0]["type"] == "json_invalid"


# -- the shapes the seed leaves open: the spellings accepted -----------------------------------------


def test_presigned_shapes_accepted():
    assert bugseq._upload_id({"UploadId": "u1"}, "t") == "u1" == bugseq._upload_id({"upload_id": "u1", "bucket": "b"}, "t")
    plain = bugseq._presigned_put({"presigned_s3_data": "https://s3.example/k?X-Amz-Signature=s"}, "t")
    assert (plain.method, plain.url, plain.headers) == ("PUT", "https://s3.example/k?X-Amz-Signature=s", {})
    spelt = bugseq._presigned_put({"presigned_s3_data": {"URL": "https://s3.example/k", "method": "put",
                                                         "headers": {"Content-Type": "application/gzip"}}}, "t")
    assert (spelt.method, spelt.url, spelt.headers) == ("PUT", "https://s3.example/k", {"Content-Type": "application/gzip"})
    for unusable in ({"presigned_s3_data": None}, {"presigned_s3_data": {"fields": {}}}, {}):
        with pytest.raises(PlatformError):
            bugseq._presigned_put(unusable, "t")
    with pytest.raises(PlatformError):
        bugseq._upload_id({"bucket": "b", "key": "k"}, "t")
    assert bugseq._completed_parts([(2, "bb"), (1, '"aa"')]) == [{"PartNumber": 1, "ETag": '"aa"'}, {"PartNumber": 2, "ETag": '"bb"'}]
    assert bugseq._signs_content_md5("https://b.s3.amazonaws.com/k?AWSAccessKeyId=A&Expires=1&Signature=s")
    assert not bugseq._signs_content_md5("https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=s")


# -- real mounts: what a user does in uploads/ -------------------------------------------------------

BIG = 100 * MiB


def write_payload(path: Path, size: int, seed: int) -> Path:
    """A file of `size` pseudo-random bytes, written a few MiB at a time."""
    rng = random.Random(seed)
    with open(path, "wb") as out:
        for start in range(0, size, 4 * MiB):
            out.write(rng.randbytes(min(4 * MiB, size - start)))
    return path


def bugseq_mount(mount, emulator, cache: Path, *extra: str):
    return mount({"bugseq": platform_table(emulator, "bugseq")}, *extra, cache_dir=cache)


def file_id(path: Path) -> str:
    return os.getxattr(path, "user.omicsfs.id").decode()


def told_since(emulator, before: dict, name: str) -> list[dict]:
    """Files named `name` the API was told of since `before` (an earlier `uploads_seen`)."""
    return [file for key, file in uploads_seen(emulator).items() if key not in before and file["filename"] == name]


def run(*command, check: bool = True, **options) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=600, **options)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}: {result.stderr}")
    return result


@pytest.mark.mount
def test_cp_of_every_size_lands_and_a_fresh_mount_lists_it(mount, fresh_emulator, tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    files = [local / "empty.txt", write_payload(local / "barcode01.fastq", 200_000, 21), write_payload(local / "run.fastq.gz", BIG, 22)]
    files[0].write_bytes(b"")
    expected = {path.name: md5 for path, md5 in md5sums(files).items()}
    cache = tmp_path / "cache"
    first = bugseq_mount(mount, fresh_emulator, cache)
    uploads = first.path / "bugseq" / "uploads"
    run("cp", *files, uploads)
    # An empty file is sent when its descriptor is released, just after cp's close (fs.flush).
    wait_for(lambda: fresh_emulator.stats()["uploads_completed"] == 3, "the three uploads", timeout=10)

    assert sorted(os.listdir(uploads)) == ["barcode01.fastq", "empty.txt", "run.fastq.gz"]
    ids = {}
    for path in files:
        shown = uploads / path.name
        assert shown.stat().st_size == path.stat().st_size
        ids[path.name] = file_id(shown)
        record = uploads_seen(fresh_emulator)[ids[path.name]]
        assert (record["filename"], record["status"], record["size"]) == (path.name, "uploaded", path.stat().st_size)
        assert record["md5"] == expected[path.name]
        assert md5sums([Path(record["path"])])[Path(record["path"])] == expected[path.name]  # the bytes BugSeq holds
    assert [uploads_seen(fresh_emulator)[ids[name]]["kind"] for name in ("empty.txt", "barcode01.fastq", "run.fastq.gz")] == [
        "singlepart", "singlepart", "multipart"]
    stats = fresh_emulator.stats()
    assert (stats["uploads_started"], stats["uploads_completed"], stats["upload_bytes"]) == (3, 3, BIG + 200_000)
    # BugSeq has no download for uploaded inputs: what was written reads back from the cache,
    # which kept the staged bytes as the file's copy.
    assert md5sums([uploads / path.name for path in files]) == {uploads / name: md5 for name, md5 in expected.items()}

    run_omicsfs("unmount", str(first.path))
    second = bugseq_mount(mount, fresh_emulator, cache)  # the API lists no uploads: the mount's record does
    uploads = second.path / "bugseq" / "uploads"
    assert sorted(os.listdir(uploads)) == ["barcode01.fastq", "empty.txt", "run.fastq.gz"]
    for path in files:
        assert (uploads / path.name).stat().st_size == path.stat().st_size and file_id(uploads / path.name) == ids[path.name]
    assert md5sums([uploads / "run.fastq.gz"])[uploads / "run.fastq.gz"] == expected["run.fastq.gz"]
    assert fresh_emulator.stats()["uploads_started"] == 3  # nothing uploaded again

    # The record of uploads is the cache directory's journal: a mount on another shows none.
    third = bugseq_mount(mount, fresh_emulator, tmp_path / "other-cache")
    elsewhere = third.path / "bugseq" / "uploads"
    assert os.listdir(elsewhere) == [], "the record of uploads belongs to the first cache directory"


@pytest.mark.mount
def test_samtools_sort_into_uploads(mount, fresh_emulator, tmp_path):
    job = next(j for j in emulated.load(fresh_emulator.data_dir / "bugseq")["jobs"]
               if any(o["filename"].endswith(".bam") for o in j["outputs"] or []))
    source = emulated.object_path(fresh_emulator.data_dir / "bugseq",
                                  next(o for o in job["outputs"] if o["filename"].endswith(".bam"))["object"])
    by_name = tmp_path / "by-name.bam"
    run("samtools", "sort", "-n", "--no-PG", "-o", by_name, source)
    mounted = bugseq_mount(mount, fresh_emulator, tmp_path / "cache")
    target = mounted.path / "bugseq" / "uploads" / "sorted.bam"
    run("samtools", "sort", "--no-PG", "-o", target, by_name)
    expected = tmp_path / "expected.bam"
    run("samtools", "sort", "--no-PG", "-o", expected, by_name)

    record = uploads_seen(fresh_emulator)[file_id(target)]
    held = tmp_path / "held-by-bugseq.bam"
    shutil.copyfile(record["path"], held)
    assert md5sums([held, expected])[held] == md5sums([expected])[expected] == record["md5"]
    run("samtools", "index", held)
    run("samtools", "index", expected)
    contig = run("samtools", "view", "-H", held).stdout.split("SN:", 1)[1].split("\t", 1)[0]
    region = f"{contig}:1-200000"
    count = run("samtools", "view", "-c", held, region).stdout.strip()
    assert int(count) > 0 and count == run("samtools", "view", "-c", expected, region).stdout.strip()


SEEK_AND_REWRITE = """
import sys
source, target = sys.argv[1], sys.argv[2]
with open(source, "rb") as data, open(target, "wb") as out:
    while chunk := data.read(1 << 20):
        out.write(chunk)           # parts stream while this goes on
    out.seek(0)
    out.write(b"#rewritten header\\n")  # into a part already sent, most likely
    out.seek(9 * 1024 * 1024)
    out.write(b"middle")
    out.seek(0, 2)
    out.write(b"tail\\n")
"""


@pytest.mark.mount
def test_script_that_seeks_back_and_rewrites(mount, fresh_emulator, tmp_path):
    source = write_payload(tmp_path / "body", 20 * MiB, 23)
    mounted = bugseq_mount(mount, fresh_emulator, tmp_path / "cache")
    target = mounted.path / "bugseq" / "uploads" / "rewritten.vcf"
    run(sys.executable, "-c", SEEK_AND_REWRITE, source, target)
    data = bytearray(source.read_bytes())
    data[0:18] = b"#rewritten header\n"
    data[9 * MiB : 9 * MiB + 6] = b"middle"
    data += b"tail\n"
    assert stored(fresh_emulator, file_id(target)) == bytes(data)
    assert target.stat().st_size == len(data)


@pytest.mark.mount
def test_rsync_inplace_of_a_directory(mount, fresh_emulator, tmp_path):
    local = tmp_path / "run"
    local.mkdir()
    (local / "sample.csv").write_text("sample,barcode\nS1,barcode01\n")
    (local / "empty.log").write_bytes(b"")
    write_payload(local / "reads.fastq", 12 * MiB, 24)
    mounted = bugseq_mount(mount, fresh_emulator, tmp_path / "cache")
    uploads = mounted.path / "bugseq" / "uploads"
    run("rsync", "-r", "--inplace", f"{local}/", f"{uploads}/")
    wait_for(lambda: fresh_emulator.stats()["uploads_completed"] == 3, "the three uploads", timeout=10)  # the empty one at release
    assert sorted(os.listdir(uploads)) == ["empty.log", "reads.fastq", "sample.csv"]
    for path in local.iterdir():
        assert stored(fresh_emulator, file_id(uploads / path.name)) == path.read_bytes()


@pytest.mark.mount
def test_kill_9_mid_upload_then_remount_finishes_it(mount, fresh_emulator, tmp_path):
    big = write_payload(tmp_path / "interrupted.fastq.gz", BIG, 25)
    expected = md5sums([big])[big]
    before = uploads_seen(fresh_emulator)
    fresh_emulator.knobs(part_faults=[{"part": 4, "fault": "slow", "seconds": 12}])  # the upload is held mid-way
    cache = tmp_path / "cache"
    first = bugseq_mount(mount, fresh_emulator, cache)
    target = first.path / "bugseq" / "uploads" / big.name
    copying = subprocess.Popen(["cp", str(big), str(target)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    # All the bytes staged (cp is closing the file) and part 4 on its slow way: the daemon dies.
    while not (target.exists() and target.stat().st_size == BIG and fresh_emulator.stats()["part_requests"] >= 4):
        assert time.monotonic() < deadline and copying.poll() is None, "the copy did not reach the upload's middle"
        time.sleep(0.05)
    os.kill(first.daemon_pid(), signal.SIGKILL)
    assert copying.wait(timeout=60) != 0  # the close never got its confirmation
    run("fusermount3", "-u", first.path)
    [started] = told_since(fresh_emulator, before, big.name)
    assert started["status"] == "pending"

    second = bugseq_mount(mount, fresh_emulator, cache)
    while told_since(fresh_emulator, before, big.name)[0]["status"] != "uploaded":
        assert time.monotonic() < deadline + 120, "the resumed upload did not finish"
        time.sleep(0.2)
    [record] = told_since(fresh_emulator, before, big.name)  # the same BugSeq file: its upload went on, not over
    assert record["id"] == started["id"]
    assert record["md5"] == expected and md5sums([Path(record["path"])])[Path(record["path"])] == expected
    shown = second.path / "bugseq" / "uploads" / big.name
    assert shown.stat().st_size == BIG and file_id(shown) == record["id"]
    assert "resuming an upload" in second.log.read_text()


@pytest.mark.mount
def test_part_failures_drops_bad_etags_and_expired_urls_through_a_mount(mount, fresh_emulator, tmp_path):
    """Each fault the knobs have, in one copy; an expired URL comes from a throttled PUT retried after
    its URL (2 s) lapsed (Retry-After 3 s), so the module must ask BugSeq for a fresh one."""
    big = write_payload(tmp_path / "reads.fastq", 30 * MiB, 26)
    small = write_payload(tmp_path / "sheet.csv", 50_000, 27)
    throttled = {"status": 503, "count": 1, "headers": {"Retry-After": "3"}, "body": {"message": "SlowDown"}}
    fresh_emulator.knobs(
        part_faults=[{"part": 1, "fault": "status", "status": 500, "count": 2}, {"part": 2, "fault": "drop", "after": MiB},
                     {"part": 3, "fault": "badetag"}],
        failures=[{"prefix": "/store/uploads/", **throttled}, {"prefix": "/bugseq/bucket/", **throttled}],
        part_url_lifetime=2,
    )
    mounted = bugseq_mount(mount, fresh_emulator, tmp_path / "cache")
    uploads = mounted.path / "bugseq" / "uploads"
    run("cp", big, small, uploads)
    for path in (big, small):
        assert stored(fresh_emulator, file_id(uploads / path.name)) == path.read_bytes()
    assert fresh_emulator.stats()["injected_failures"] == 2 + 1 + 1 + 2
    log = mounted.log.read_text()
    assert log.count("refused the upload URL") == 2 and "is not the MD5 of what was sent" in log


@pytest.mark.mount
def test_read_only_places_refuse_writes_and_bugseq_sees_no_upload(mount, fresh_emulator, tmp_path):
    local = tmp_path / "notes.txt"
    local.write_text("notes\n")
    mounted = bugseq_mount(mount, fresh_emulator, tmp_path / "cache")
    top = mounted.path / "bugseq"
    uploads = top / "uploads"
    run("cp", local, uploads / "kept.txt")
    job = sorted((top / "jobs").iterdir())[0]
    fresh_emulator.reset_stats()
    before = uploads_seen(fresh_emulator)
    refusals = [
        (["cp", local, top / "notes.txt"], "Read-only file system"),
        (["cp", local, mounted.path / "notes.txt"], "Read-only file system"),
        (["mkdir", top / "jobs" / "new job"], "Read-only file system"),
        (["cp", local, job / "outputs" / "notes.txt"], "Read-only file system"),
        (["touch", job / "job.json"], "Read-only file system"),
        (["rm", job / "job.json"], "Read-only file system"),
        (["cp", local, uploads / "kept.txt"], "Operation not permitted"),  # BugSeq cannot replace an upload
        (["truncate", "-s", "0", uploads / "kept.txt"], "Operation not permitted"),
        (["mv", uploads / "kept.txt", uploads / "moved.txt"], "Operation not permitted"),
        (["mkdir", uploads / "folder"], "Operation not permitted"),  # uploads have no folders
        (["rm", uploads / "kept.txt"], "Operation not permitted"),  # nor delete one (deletes pause after)
        (["rm", "-rf", uploads], "Operation not permitted"),
    ]
    for command, message in refusals:
        result = run(*command, check=False)
        assert result.returncode != 0 and message in result.stderr, (command, result.stderr)
    assert sorted(os.listdir(uploads)) == ["kept.txt"]
    stats = fresh_emulator.stats()
    assert (stats["uploads_started"], stats["part_requests"]) == (0, 0)
    assert uploads_seen(fresh_emulator) == before
    log = mounted.log.read_text()
    assert "bugseq/uploads/kept.txt: writing over a file refused" in log and "bugseq/jobs" in log
