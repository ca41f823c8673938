"""BugSeq uploads: the platform module's writing methods against the emulator's upload flow.

The module is driven directly (as the core drives it) over real HTTP to the session's emulator;
what arrived is read back from the emulator's own record (`/bugseq/_emulator/uploads`) and from the
bytes it stored.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import random
from pathlib import Path

import httpx
import pytest
import trio

from omicsfs.errors import AccessDenied, PlatformError
from omicsfs.http import Http, RetryPolicy, new_client
from omicsfs.platform import Entry, PartBody
from omicsfs.platforms import bugseq

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


async def test_slow_part_past_the_client_timeout_is_sent_again(fresh_emulator):
    fresh_emulator.knobs(part_faults=[{"part": 1, "fault": "slow", "seconds": 2}])
    data = payload(6 * MiB, seed=7)
    async with new_client(timeout=0.5) as client:
        platform = platform_for(fresh_emulator, client)
        handle = await platform.begin_upload(UPLOADS, "slow.bam", None, None)
        first = await platform.upload_part(handle, 1, body_of(data[: 5 * MiB]))
        assert fresh_emulator.stats()["part_requests"] == 2  # timed out once, sent again
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
