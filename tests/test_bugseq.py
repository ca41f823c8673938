"""BugSeq: real mounts of the emulated BugSeq API, read with real tools."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import trio

from omicsfs.emulator import bugseq as emulated
from omicsfs.http import Http, new_client
from omicsfs.mount import is_mounted
from omicsfs.platform import Entry
from omicsfs.platforms import bugseq
from omicsfs.credentials import jwt_expiry
from omicsfs.platforms.bugseq import url_expiry
from tests.conftest import assert_no_secrets, platform_table, run_omicsfs, toml_config


def account(emulator) -> dict:
    return emulated.load(emulator.data_dir / "bugseq")


def object_bytes(emulator, output: dict) -> bytes:
    return emulated.object_path(emulator.data_dir / "bugseq", output["object"]).read_bytes()


def api(emulator, path: str, token: str | None = None, **params) -> httpx.Response:
    return httpx.get(f"{emulator.url}/bugseq{path}", params=params, timeout=10,
                     headers={"Authorization": f"Bearer {token or emulator.token}"})


def mount_bugseq(mount, emulator, *extra: str):
    return mount({"bugseq": platform_table(emulator, "bugseq")}, *extra)


def job_dirs(mounted) -> dict[str, Path]:
    """Job id → its directory in the mount, by the hidden `.id` files."""
    jobs = mounted.path / "bugseq" / "jobs"
    return {(path / ".id").read_text().strip(): path for path in jobs.iterdir()}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def epoch(text: str) -> float:
    """A BugSeq date (ISO 8601, `Z`) as a Unix time, by the standard library rather than omicsfs."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


#: Every job's directory name: a job name shared by two jobs (or none) gives way to the job id,
#: and a slash is made safe.
JOB_NAMES = {
    "3856315c-ad2f-420c-898c-9609c9cb4a8c": "ZymoBIOMICS mock community",
    "bd22dbf0-a7df-4725-a0cf-8348459be822": "bd22dbf0-a7df-4725-a0cf-8348459be822",
    "03b67a9b-bf79-49a7-b1d0-37a92f8d9ec5": "Wastewater 2024-03 (03b67a9b-bf79-49a7-b1d0-37a92f8d9ec5)",
    "77ac8d2d-0bf1-4471-843e-6c527b440f50": "Wastewater 2024-03 (77ac8d2d-0bf1-4471-843e-6c527b440f50)",
    "af6ef3ae-c7c1-4abf-ab0c-2fadedcf8389": "Sputum TB-0017",
    "bf875852-7c6f-42d7-a88e-996e9015e15b": "bf875852-7c6f-42d7-a88e-996e9015e15b",
    "b048362e-bb94-49dc-91f2-d8c525124464": "Blood culture BC-0412",
    "f42ff826-c738-45e7-8910-827c12a79ad9": "CSF meningitis panel",
    "dce9e4e1-0739-46da-963c-17f2a2653bcc": "Negative control (dce9e4e1-0739-46da-963c-17f2a2653bcc)",
    "8119ee01-5539-4301-b905-9a5eed0cdcb4": "Negative control (8119ee01-5539-4301-b905-9a5eed0cdcb4)",
    "33eea185-6ad5-4344-9bdf-df73e22da491": "33eea185-6ad5-4344-9bdf-df73e22da491",
    "c4f7d01a-0237-46c1-9d03-cf033ad8ead7": "Nasal swab NS-22",
    "47c9931e-72ef-4087-b911-a914dae94031": "Urine UTI-108",
    "27ebbe4b-1aa5-4011-ac13-283d78736b71": "Run 2024∕05 barcode07",
    "2d90c915-ba77-41dc-a117-ba737f2baf03": "Hospital sink biofilm",
    "01e6cb34-071e-40ce-a7f5-08a92461a3fa": "01e6cb34-071e-40ce-a7f5-08a92461a3fa",
    "87514de2-3458-407f-ac28-6e6d21d2244e": "Wound swab WS-3",
    "a7c2d4e7-a7bd-49d0-b836-c88ad70b114e": "Wastewater 2024-06",
    "74c57769-5f74-45dd-844a-2eaecc369446": "Stool C. diff screen",
    "8386c8e3-1f2a-4d8d-a08a-abb9d18549f8": "Tick pool 2024-07",
    "324cf78c-c704-4310-9bbc-8f7b362353c7": "Bronchoalveolar lavage BAL-5",
    "b1ef4bd4-ce5e-4df8-8e45-de725eb69b9b": "b1ef4bd4-ce5e-4df8-8e45-de725eb69b9b",
    "3991c366-929b-4aad-ad0f-45d71ca896aa": "Isolate KP-ST258",
    "a532e955-32f8-4321-a479-3d11af4f12b2": "Plasma cfDNA",
    "3302aa26-c6ef-444d-a934-c4691ddb3dc7": "Sputum TB-0018",
}


# -- the emulator itself ---------------------------------------------------------------------------


def test_emulator_speaks_the_seed(fresh_emulator):
    jobs = account(fresh_emulator)["jobs"]
    first = api(fresh_emulator, "/v1/jobs/").json()
    assert set(first) == {"job_runs", "has_more"} and len(first["job_runs"]) == 20 and first["has_more"]
    assert set(first["job_runs"][0]) == set(emulated.JOB_FIELDS)
    rest = api(fresh_emulator, "/v1/jobs/", skip=20).json()
    assert len(rest["job_runs"]) == len(jobs) - 20 and not rest["has_more"]
    assert api(fresh_emulator, "/v1/jobs/", ids=jobs[0]["id"]).json()["job_runs"][0]["id"] == jobs[0]["id"]

    bad = api(fresh_emulator, "/v1/jobs/", limit="many", offset=3)
    assert bad.status_code == 422
    assert {(tuple(e["loc"]), e["type"]) for e in bad.json()["detail"]} == {
        (("query", "limit"), "int_parsing"), (("query", "offset"), "extra_forbidden")}
    assert all(set(e) == {"loc", "msg", "type"} for e in bad.json()["detail"])
    assert httpx.get(f"{fresh_emulator.url}/bugseq/v1/users/me").json() == {"detail": "Not authenticated"}
    assert api(fresh_emulator, "/v1/users/me", token="wrong").status_code == 401

    running = next(job for job in jobs if job["job_status"] == "running")
    answer = api(fresh_emulator, f"/v1/jobs/{running['id']}/results").json()
    assert answer["outputs"] is None and answer["end_time"] is None and "results_url" not in answer
    done = next(job for job in jobs if job["user_provided_name"] == "ZymoBIOMICS mock community")
    assert None in [o["size"] for o in api(fresh_emulator, f"/v1/jobs/{done['id']}/results").json()["outputs"]]
    missing = api(fresh_emulator, f"/v1/jobs/{done['id']}/results/download")
    assert missing.status_code == 422 and missing.json()["detail"][0]["type"] == "missing"
    download = api(fresh_emulator, f"/v1/jobs/{done['id']}/results/download", filename="report.html").json()
    assert set(download) == {"url"}
    ranged = httpx.get(download["url"], headers={"Range": "bytes=0-14"})
    assert ranged.status_code == 206 and ranged.content == b"<!DOCTYPE html>"


def test_expiry_read_from_presigned_urls():
    sigv4 = ("https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20240311T101500Z"
             "&X-Amz-Expires=3600&X-Amz-Signature=ab")
    assert url_expiry(sigv4) == 1710152100 + 3600
    assert url_expiry("https://storage.googleapis.com/b/k?X-Goog-Date=20240311T101500Z&X-Goog-Expires=60") == 1710152100 + 60
    assert url_expiry("https://b.s3.amazonaws.com/k?AWSAccessKeyId=A&Expires=1710155700&Signature=x") == 1710155700
    assert url_expiry("http://127.0.0.1/store/o?X-Expires=1710155700&X-Signature=x") == 1710155700
    assert url_expiry("https://example.org/plain") is None
    assert url_expiry("https://b.s3.amazonaws.com/k?X-Amz-Date=garbage&X-Amz-Expires=60") is None

    def jwt(claims: dict) -> str:
        part = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
        return f"eyJhbGciOiJIUzI1NiJ9.{part}.c2ln"

    assert jwt_expiry(jwt({"sub": "u", "exp": 1700000000})) == 1700000000
    assert jwt_expiry("omicsfs-demo-token") is None and jwt_expiry(jwt({"sub": "u"})) is None


# -- the platform module in process: paths a mount does not reach ---------------------------------


async def test_refused_download_url_is_resolved_again(fresh_emulator, monkeypatch):
    """A URL that states no expiry is reused until the store refuses it, for sizes and for reads."""
    monkeypatch.setattr(bugseq, "url_expiry", lambda url: None)
    fresh_emulator.knobs(url_lifetime=2)
    job = next(j for j in account(fresh_emulator)["jobs"] if any(o["size"] is None and o["filename"].endswith(".bam")
                                                                   for o in j["outputs"] or []))
    output = next(o for o in job["outputs"] if o["filename"].endswith(".bam"))
    unknown_sizes = sum(o["size"] is None for o in job["outputs"])
    content = object_bytes(fresh_emulator, output)
    async with new_client() as client:
        platform = bugseq.PLATFORM("bugseq", {"url": f"{fresh_emulator.url}/bugseq", "token": fresh_emulator.token}, Http(client))

        async def bam() -> Entry:
            listing = await platform.list_dir(Entry("outputs", True, ("outputs", job["id"], "alignment")))
            return next(e for e in listing if e.name == output["filename"].rsplit("/", 1)[1])

        async def read(entry: Entry, start: int, end: int) -> bytes:
            return b"".join([chunk async for chunk in platform.read(entry, start, end, what="test")])

        entry = await bam()
        assert entry.size == len(content) and await read(entry, 0, 1000) == content[:1000]
        await trio.sleep(3)  # every URL handed out so far has expired
        before = fresh_emulator.stats()["api_requests"]
        entry = await bam()  # the size probe meets a 403 and resolves a fresh URL
        assert entry.size == len(content)
        assert fresh_emulator.stats()["api_requests"] - before == 1 + 1  # results, one fresh URL (the BAM's)
        assert await read(entry, 1000, 300_000) == content[1000:300_000]
        # The fresh URL the size probe resolved serves the read: no further resolution.
        assert fresh_emulator.stats()["api_requests"] - before == 1 + 1
        await trio.sleep(3)  # and once it has expired too, a read meets the 403 and resolves again
        assert await read(entry, 300_000, 400_000) == content[300_000:400_000]
        assert fresh_emulator.stats()["api_requests"] - before == 1 + 1 + 1
    assert unknown_sizes >= 2


async def test_refused_page_limit_falls_back_to_the_default(fresh_emulator):
    async with new_client() as client:
        platform = bugseq.PLATFORM("bugseq", {"url": f"{fresh_emulator.url}/bugseq", "token": fresh_emulator.token}, Http(client))
        platform.page_limit = 500  # above the emulator's maximum of 100: 422
        jobs = await platform.list_dir(Entry("jobs", True, ("jobs",)))
    assert len({job.uid for job in jobs}) == len(account(fresh_emulator)["jobs"])
    assert platform.page_limit == bugseq.DEFAULT_LIMIT


# -- mounts ----------------------------------------------------------------------------------------


@pytest.mark.mount
def test_job_names_unique_stable_and_job_json(mount, fresh_emulator):
    jobs = account(fresh_emulator)["jobs"]
    first, second = mount_bugseq(mount, fresh_emulator), mount_bugseq(mount, fresh_emulator)
    names = sorted(os.listdir(first.path / "bugseq" / "jobs"))
    assert names == sorted(os.listdir(second.path / "bugseq" / "jobs"))
    assert len(names) == len(set(names)) == len(jobs) == 25
    dirs = job_dirs(first)
    assert job_dirs(second).keys() == dirs.keys() == {job["id"] for job in jobs}
    assert {job_id: path.name for job_id, path in dirs.items()} == JOB_NAMES
    assert {job_id: path.name for job_id, path in job_dirs(second).items()} == JOB_NAMES

    listed = {item["id"]: item for item in api(fresh_emulator, "/v1/jobs/", limit=100).json()["job_runs"]}
    for job_id, path in dirs.items():
        assert json.loads((path / "job.json").read_text()) == api(fresh_emulator, f"/v1/jobs/{job_id}/results").json()
        assert json.loads((path / ".json").read_text()) == listed[job_id]
        assert sorted(os.listdir(path)) == [".id", ".json", "job.json", "outputs"]
        assert os.stat(path).st_mtime == pytest.approx(epoch(listed[job_id]["created"]), abs=1e-3)
    running = next(job for job in jobs if job["job_status"] == "running")
    assert os.listdir(dirs[running["id"]] / "outputs") == []
    assert os.getxattr(dirs[running["id"]], "user.omicsfs.job_status") == b"running"


@pytest.mark.mount
def test_every_output_has_its_true_size_and_bytes(mount, fresh_emulator):
    jobs = account(fresh_emulator)["jobs"]
    dirs = job_dirs(mount_bugseq(mount, fresh_emulator))
    null_sizes = 0
    for job in jobs:
        outputs = dirs[job["id"]] / "outputs"
        shown = sorted(str(p.relative_to(outputs)) for p in outputs.rglob("*") if p.is_file())
        assert shown == sorted(o["filename"] for o in job["outputs"] or []), job["user_provided_name"]
        for output in job["outputs"] or []:
            path = outputs / output["filename"]
            null_sizes += output["size"] is None
            assert path.stat().st_size == output["bytes"], output["filename"]
            assert path.stat().st_mtime == pytest.approx(epoch(job["end_time"]), abs=1e-3)
            assert md5(path.read_bytes()) == md5(object_bytes(fresh_emulator, output)) == output["md5"], output["filename"]
    assert null_sizes >= 5  # the BAM, the empty warnings.txt, ... all resolved to their real size


@pytest.mark.mount
def test_region_queries_match_local_copies(mount, fresh_emulator, tmp_path):
    job = next(j for j in account(fresh_emulator)["jobs"] if any(o["filename"].endswith(".bam") and o["size"] is None
                                                                   for o in j["outputs"] or []))
    outputs = job_dirs(mount_bugseq(mount, fresh_emulator))[job["id"]] / "outputs"
    for output in job["outputs"]:
        local = tmp_path / "local" / output["filename"]
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(object_bytes(fresh_emulator, output))
    bam = next(o["filename"] for o in job["outputs"] if o["filename"].endswith(".bam"))
    vcf = next(o["filename"] for o in job["outputs"] if o["filename"].endswith(".vcf.gz"))
    for command, name, region in ((["samtools", "view"], bam, "chr1:100000-200000"), (["tabix"], vcf, "chr2:1-50000")):
        mounted = subprocess.run([*command, str(outputs / name), region], capture_output=True, check=True).stdout
        local = subprocess.run([*command, str(tmp_path / "local" / name), region], capture_output=True, check=True).stdout
        assert mounted == local and mounted.count(b"\n") > 10, command


@pytest.mark.mount
def test_jobs_page_past_the_cap(mount, fresh_emulator):
    fresh_emulator.knobs(page_cap=7)
    jobs = account(fresh_emulator)["jobs"]
    mounted = mount_bugseq(mount, fresh_emulator)
    assert len(os.listdir(mounted.path / "bugseq" / "jobs")) == len(jobs)
    # users/me, then ceil(25 / 7) = 4 pages of jobs
    assert fresh_emulator.stats()["api_requests"] == 1 + 4
    assert job_dirs(mounted).keys() == {job["id"] for job in jobs}


@pytest.mark.mount
def test_refused_token_fails_the_mount_clearly(fresh_emulator, tmp_path):
    def jwt(claims: dict) -> str:
        part = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
        return f"eyJhbGciOiJIUzI1NiJ9.{part}.c2ln"

    expired = jwt({"sub": "someone", "exp": 1700000000})
    tables = {
        "bugseq": platform_table(fresh_emulator, "bugseq", token="not-the-right-token"),
        "lab": platform_table(fresh_emulator, "bugseq", token=expired),
    }
    config = tmp_path / "config.toml"
    config.write_text(toml_config(tables))
    config.chmod(0o600)
    mountpoint, log = tmp_path / "mnt", tmp_path / "omicsfs.log"
    mountpoint.mkdir()
    result = run_omicsfs("mount", str(mountpoint), "--config", str(config), "--cache-dir", str(tmp_path / "cache"),
                         "--log-file", str(log), check=False)
    assert result.returncode != 0
    assert "BugSeq" in result.stderr and "rejected the token" in result.stderr
    assert "[platforms.bugseq]" in result.stderr and "[platforms.lab]" in result.stderr
    assert "expired at 2023-11-14 22:13:20 UTC" in result.stderr
    assert "not-the-right-token" not in result.stderr and expired not in result.stderr
    assert not is_mounted(mountpoint)
    assert_no_secrets(log, ["not-the-right-token", expired])


@pytest.mark.mount
def test_rate_limited_requests_are_retried(mount, fresh_emulator):
    fresh_emulator.knobs(failures=[emulated.rate_limit_failure(retry_after=1, count=3)])
    job = next(j for j in account(fresh_emulator)["jobs"] if j["user_provided_name"] == "Urine UTI-108")
    mounted = mount_bugseq(mount, fresh_emulator)  # the credential check meets the 429s first
    path = job_dirs(mounted)[job["id"]] / "outputs" / "classification.tsv"
    assert path.read_bytes() == object_bytes(fresh_emulator, job["outputs"][1])
    stats = fresh_emulator.stats()
    assert stats["injected_failures"] == 3
    times = stats["injected_at"]  # Retry-After: 1, honoured
    assert all(later - earlier >= 0.99 for earlier, later in zip(times, times[1:])), times


@pytest.mark.mount
def test_download_url_expiring_mid_read(mount, fresh_emulator):
    fresh_emulator.knobs(url_lifetime=2, url_expiry_skew=600)
    job = next(j for j in account(fresh_emulator)["jobs"] if j["user_provided_name"] == "Wastewater 2024-03"
               and any(o["size"] is not None and o["filename"].endswith(".bam") for o in j["outputs"]))
    output = next(o for o in job["outputs"] if o["filename"].endswith(".bam"))
    mounted = mount_bugseq(mount, fresh_emulator, "--memory-cache-size", "8M")
    path = job_dirs(mounted)[job["id"]] / "outputs" / output["filename"]
    with open(path, "rb", buffering=0) as file:
        head = file.read(64 * 1024)
        time.sleep(3)  # the URL the first read used has expired
        before = fresh_emulator.stats()
        rest = file.read()
    after = fresh_emulator.stats()
    assert len(head) + len(rest) == output["bytes"]
    assert md5(head + rest) == output["md5"]
    assert after["store_requests"] > before["store_requests"]
    assert after["api_requests"] > before["api_requests"]  # a fresh download URL

