"""What bench/ relies on, without mounting: the emulator's store knob and object list, the bench's
delaying proxy forwarding requests and bodies intact, and the write bench's baseline uploader
storing what it was given. No timing is asserted."""

from __future__ import annotations

import hashlib
import importlib
import random
import sys
from pathlib import Path

import httpx
import pytest

from omicsfs.emulator import sampledata
from omicsfs.emulator.server import EmulatorProcess
from tests.conftest import TEST_LARGE_FILE

CONTENT = "basespace/v1pre3/files/{}/content"
BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench_modules():
    """bench/'s modules, imported as its scripts import each other (bench/ first on the path)."""
    sys.path.insert(0, str(BENCH))
    try:
        yield {name: importlib.import_module(name) for name in ("delayproxy", "store", "harness", "read_report", "bench_read", "bench_write")}
    finally:
        sys.path.remove(str(BENCH))


def archive(emulator) -> dict:
    account = sampledata.load(Path(emulator.data_dir) / "basespace")
    return next(f for _, _, f in sampledata.iter_files(account) if f["Path"] == "Archive/reportarchive.bin")


def presigned(emulator, file_id: str) -> str:
    response = httpx.get(f"{emulator.url}/{CONTENT.format(file_id)}", params={"redirect": "meta"},
                         headers={"x-access-token": emulator.token}, timeout=30).raise_for_status()
    return response.json()["Response"]["HrefContent"]


def test_presigned_urls_point_where_the_store_url_knob_says(fresh_emulator):
    item = archive(fresh_emulator)
    assert presigned(fresh_emulator, item["Id"]).startswith(f"{fresh_emulator.url}/store/{item['Id']}?X-Expires=")
    fresh_emulator.knobs(store_url="http://127.0.0.1:9/elsewhere/")
    assert presigned(fresh_emulator, item["Id"]).startswith(f"http://127.0.0.1:9/elsewhere/{item['Id']}?X-Expires=")


def test_the_object_list_names_every_object_with_its_file(fresh_emulator):
    objects = fresh_emulator.objects()
    item = archive(fresh_emulator)
    path = Path(objects[item["Id"]])
    assert hashlib.md5(path.read_bytes()).hexdigest() == item["Md5"]
    account = sampledata.load(Path(fresh_emulator.data_dir) / "basespace")
    assert {f["Id"] for _, _, f in sampledata.iter_files(account)} <= set(objects)


def test_bench_imports_and_its_proxy_forwards_requests_and_bodies_intact(bench_modules, fresh_emulator):
    item = archive(fresh_emulator)
    proxy = bench_modules["delayproxy"].DelayProxy([f"127.0.0.1:{fresh_emulator.port}"], rtt_ms=4, window=256 << 10)
    try:
        with httpx.Client(timeout=30) as client:
            direct = client.get(f"{fresh_emulator.url}/_emulator/knobs").json()
            assert client.get(f"{proxy.url(0)}/_emulator/knobs").json() == direct
            # A body many times the proxy's window, on the same connection as the request before it.
            url = presigned(fresh_emulator, item["Id"]).replace(fresh_emulator.url, proxy.url(0))
            response = client.get(url, headers={"Range": "bytes=1000-3000999"})
        assert response.status_code == 206
        with open(Path(fresh_emulator.objects()[item["Id"]]), "rb") as original:
            original.seek(1000)
            assert response.content == original.read(3_000_000)
        with httpx.Client(timeout=30) as client:  # and on a new connection, the whole object
            whole = client.get(url)
        assert hashlib.md5(whole.content).hexdigest() == item["Md5"]
    finally:
        proxy.stop()
    assert proxy.process.returncode is not None


def test_the_write_benchs_direct_uploader_stores_the_bytes_it_was_given(bench_modules, emulator, tmp_path):
    """The baseline bench_write.py compares omicsfs with must itself be a correct uploader: a small
    file and one of two parts (Seven Bridges' 32 MiB part size), two files at once."""
    sources = [tmp_path / "small.txt", tmp_path / "two-parts.bin"]
    sources[0].write_bytes(b"sample,barcode\nS1,barcode01\n")
    sources[1].write_bytes(random.Random(5).randbytes(40 * 1024 * 1024 + 3))
    # An emulator of its own: what is uploaded joins the account, which the session's emulator
    # must keep as generated for the read tests.
    server = EmulatorProcess(emulator.data_dir, large_file_size=TEST_LARGE_FILE).wait_ready()
    try:
        made = bench_modules["bench_write"].direct_upload(server.url, server.token, [str(p) for p in sources], files_at_once=2)
        written = Path(server.data_dir) / "sevenbridges" / "written" / str(server.process.pid)
        assert sorted((f["name"], f["size"]) for f in made["files"]) == [("small.txt", 28), ("two-parts.bin", 40 * 1024 * 1024 + 3)]
        for item in made["files"]:
            assert (written / item["id"]).read_bytes() == (tmp_path / item["name"]).read_bytes()
        assert server.stats()["parts_received"] == 3
    finally:
        server.stop()
