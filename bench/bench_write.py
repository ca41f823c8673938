#!/usr/bin/env python3
"""Write benchmark of omicsfs against a direct uploader, measured in one run on this machine (issue 9).

Everything is written to Seven Bridges (the project `alice/rna-pilot` of the emulator's sample
account): of the platforms omicsfs writes to, its upload flow is S3 multipart as a client sees it
(init with the size and part size; per part a presigned PUT URL, the PUT with `Content-MD5`, the
ETag reported; complete). It needs the size first, so omicsfs stages the whole file and uploads
it at close. Figures:

1. large: a 1 GiB local file (pseudorandom, made once per run, read from the page cache) written
   through the mount with `dd if=FILE of=MOUNT/... bs=1M` and `--write-back sync`: the time
   includes the upload, which close() waits for. Beside it, on the same emulator on loopback:
   a direct uploader (`direct_upload`, httpx on trio, in a process of its own) with omicsfs's part
   size and parallelism; the emulator alone (8 `curl` PUTs of pre-cut parts at a time, the parts'
   URLs and reports through httpx); and dd to local disk as a floor. MB/s, the ratio to the direct
   uploader, the uploader's CPU and peak RSS (the omicsfs daemon's, or the direct uploader's), the
   emulator's CPU; every upload is checked by its MD5 on the emulator's side.
2. many: `cp -r` of a directory of 1000 files of 100 KB into the mount, with the API (and the part
   URLs, which the emulator builds from the request's host) 20 ms away through the delaying proxy,
   since per-file round trips dominate there; `--write-back sync` (each close waits for its file)
   and `--write-back async` (the time until `cp` returns, and until the daemon has no upload
   pending); against the direct uploader one file at a time and 8 at a time, and `cp -r` to local
   disk. Files per second, API requests per file; every file checked by size and MD5.

Each figure is the median of `--runs` runs. The raw runs go to `bench/results/write-latest.json`.
See bench/README.md ("Write benchmark").

    .venv/bin/python bench/bench_write.py [--runs 1] [--quick] [--rtt-ms 20] [--only large,many]

Needs root for the mount's defaults and dd, curl and nginx on PATH (`make bench` installs them).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import trio
from delayproxy import DEFAULT_RTT_MS, DEFAULT_WINDOW, parse_size
from harness import (
    MB,
    Harness,
    MiB,
    Series,
    cpu_seconds,
    default_data_dir,
    fmt,
    goal_line,
    load_note,
    machine,
    missing_tool,
    note,
    peak_rss,
    ratio,
    read_whole,
    run_bench,
    run_on_mount,
    save_and_print,
    spread,
)

from omicsfs.platforms.sevenbridges import requested_part_size
from omicsfs.service.control import request as control_request
from omicsfs.uploads import PARALLEL_PARTS_TOTAL

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "results" / "write-latest.json"
PLATFORM = "sevenbridges"
PROJECT = "alice/rna-pilot"
IN_MOUNT = f"{PLATFORM}/Projects/{PROJECT}"
#: What omicsfs is mounted with: the memory cache the RSS goal is measured against.
MEMORY_CACHE = 256 * MiB
MOUNT_OPTIONS = ("--memory-cache-size", "256M", "--cache-size", "10G")
GROUPS = ("large", "many")
NAME = 50
#: The log line of a confirmed upload (uploads.py): its bytes and the seconds from close to confirmed.
UPLOADED = re.compile(r"INFO omicsfs\.uploads: (.+): uploaded (\d+) bytes in ([\d.]+) s$")


# -- the platform's API, for setting up and checking (untimed) -------------------------------------


class Api:
    """The few Seven Bridges calls the bench makes around its steps: folders, listings, deletes."""

    def __init__(self, base: str, token: str):
        self.base = f"{base.rstrip('/')}/{PLATFORM}/v2"
        self.client = httpx.Client(headers={"X-SBG-Auth-Token": token}, timeout=120)

    def close(self) -> None:
        self.client.close()

    def folder(self, name: str) -> str:
        response = self.client.post(f"{self.base}/files", json={"name": name, "type": "folder", "project": PROJECT})
        return response.raise_for_status().json()["id"]

    def items(self, **where: str) -> list[dict]:
        """Every item of a folder (`parent=`) or a project's root (`project=`), page by page."""
        found: list[dict] = []
        while True:
            response = self.client.get(f"{self.base}/files", params={**where, "offset": len(found), "limit": 100, "fields": "_all"})
            page = response.raise_for_status().json()["items"]
            found += page
            if not page or len(found) >= int(response.headers.get("X-Total-Matching-Query", len(found))):
                return found

    def named(self, name: str) -> dict | None:
        return next((item for item in self.items(project=PROJECT) if item["name"] == name), None)

    def delete(self, item: dict) -> None:
        """A file, or a folder with what it holds."""
        if item["type"] == "folder":
            for child in self.items(parent=item["id"]):
                self.delete(child)
        self.client.delete(f"{self.base}/files/{item['id']}").raise_for_status()


# -- the direct uploader (the baseline) ------------------------------------------------------------


async def _upload_file(client: httpx.AsyncClient, api: str, target: dict, name: str, path: str, part_size: int,
                       parts: trio.CapacityLimiter) -> dict:
    """One file by Seven Bridges' multipart upload: init, then per part (at most `parts` at once
    across files) its URL, the PUT with `Content-MD5` (the part read into memory and hashed in a
    worker thread), the ETag checked and reported; then complete. The new file's resource."""
    size = os.path.getsize(path)
    init = await client.post(f"{api}/upload/multipart", json={**target, "name": name, "size": size, "part_size": part_size})
    upload = init.raise_for_status().json()
    upload_id, part_size = upload["upload_id"], int(upload["part_size"])
    etags: dict[int, str] = {}

    async def send(number: int) -> None:
        start = (number - 1) * part_size
        length = min(part_size, size - start)
        async with parts:
            data = await trio.to_thread.run_sync(_read_range, path, start, length)
            md5 = await trio.to_thread.run_sync(lambda: hashlib.md5(data).digest())
            info = (await client.get(f"{api}/upload/multipart/{upload_id}/part/{number}")).raise_for_status().json()
            headers = {**(info.get("headers") or {}), "Content-MD5": _b64(md5)}
            response = await client.request(info.get("method") or "PUT", info["url"], content=data, headers=headers)
            if response.status_code not in (info.get("success_codes") or [200]):
                raise RuntimeError(f"part {number} of {name}: HTTP {response.status_code} {response.text[:200]}")
            etag = response.headers["ETag"].strip().strip('"')
            if etag != md5.hex():
                raise RuntimeError(f"part {number} of {name}: ETag {etag} is not the MD5 {md5.hex()}")
            report = {"part_number": number, "response": {"headers": {"ETag": etag}}}
            (await client.post(f"{api}/upload/multipart/{upload_id}/part", json=report)).raise_for_status()
            etags[number] = etag

    async with trio.open_nursery() as nursery:
        for number in range(1, max(1, math.ceil(size / part_size)) + 1):
            nursery.start_soon(send, number)
    reports = [{"part_number": n, "response": {"headers": {"ETag": etags[n]}}} for n in sorted(etags)]
    done = await client.post(f"{api}/upload/multipart/{upload_id}/complete", json={"parts": reports})
    return done.raise_for_status().json()


def _read_range(path: str, start: int, length: int) -> bytes:
    with open(path, "rb", buffering=0) as file:
        return os.pread(file.fileno(), length, start)


def _b64(digest: bytes) -> str:
    import base64

    return base64.b64encode(digest).decode()


def direct_upload(api_base: str, token: str, sources: list[str], folder: str | None = None, new_folder: str | None = None,
                  files_at_once: int = 1, parallel_parts: int = PARALLEL_PARTS_TOTAL) -> dict:
    """Upload `sources` (local files) to the project's root, into the folder `folder` (an id), or
    into a folder `new_folder` it creates first (as `cp -r` makes its directory), with httpx on
    trio: `files_at_once` files at a time, at most `parallel_parts` parts in flight, each file in
    the part size omicsfs asks for. Returns the seconds, this process's CPU and peak RSS, and the
    files made ({name, id, size})."""
    api = f"{api_base.rstrip('/')}/{PLATFORM}/v2"
    made: list[dict] = []

    async def main() -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        async with httpx.AsyncClient(headers={"X-SBG-Auth-Token": token}, timeout=300, limits=limits) as client:
            parent = folder
            if new_folder is not None:
                response = await client.post(f"{api}/files", json={"name": new_folder, "type": "folder", "project": PROJECT})
                parent = response.raise_for_status().json()["id"]
            target = {"parent": parent} if parent else {"project": PROJECT}
            parts, files = trio.CapacityLimiter(parallel_parts), trio.CapacityLimiter(files_at_once)

            async def one(path: str) -> None:
                async with files:
                    size = os.path.getsize(path)
                    item = await _upload_file(client, api, target, os.path.basename(path), path, requested_part_size(size), parts)
                    made.append({"name": item["name"], "id": item["id"], "size": item["size"]})

            async with trio.open_nursery() as nursery:
                for path in sources:
                    nursery.start_soon(one, path)

    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    trio.run(main)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": seconds, "cpu_s": after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime,
            "peak_rss": peak_rss(os.getpid()), "files": made}


# -- the bench -------------------------------------------------------------------------------------


class WriteBench(Harness):
    def __init__(self, args: argparse.Namespace):
        super().__init__(args.workdir, args.keep_workdir)
        self.args = args
        self.runs = args.runs
        self.api: Api | None = None

    # -- setup -----------------------------------------------------------------------------------

    def setup(self) -> None:
        data = Path(self.args.data).expanduser()
        note(f"starting the emulator (data {data}; the first run generates it, about 2 minutes)")
        emulator = self.start_emulator(data, large_file_size=self.args.large_file_size)
        # nginx is not written to: the harness's measuring and its proxy expect it (reads of the store).
        self.start_store({})
        self.proxy = self.start_proxy(self.args.rtt_ms, self.args.window)
        self.direct_config = self.write_config("direct", {PLATFORM: f"{emulator.url}/{PLATFORM}"})
        self.delayed_config = self.write_config("delayed", {PLATFORM: f"{self.proxy.url(0)}/{PLATFORM}"})
        self.api = Api(emulator.url, emulator.token)
        self.stack.callback(self.api.close)
        self.emulator_pid = emulator.process.pid
        note(f"the API {self.args.rtt_ms:g} ms away at {self.proxy.url(0)} (the 1000-file group)")
        self.source_dir = self.workdir / "source"
        self.source_dir.mkdir()

    def make_large(self) -> tuple[Path, str]:
        """The 1 GiB local file: pseudorandom bytes, and their MD5."""
        path = self.source_dir / "large.bin"
        digest = hashlib.md5()
        with open(path, "wb") as out:
            left = self.args.size
            while left:
                chunk = os.urandom(min(8 * MiB, left))
                digest.update(chunk)
                out.write(chunk)
                left -= len(chunk)
        return path, digest.hexdigest()

    def make_many(self) -> tuple[Path, dict[str, str]]:
        """The directory of small files (pseudorandom), and each file's MD5 by name."""
        directory = self.source_dir / "many"
        directory.mkdir()
        md5s = {}
        for number in range(1, self.args.files + 1):
            content = os.urandom(self.args.file_size)
            name = f"file-{number:04d}.dat"
            (directory / name).write_bytes(content)
            md5s[name] = hashlib.md5(content).hexdigest()
        return directory, md5s

    def settle(self, *sources: Path) -> None:
        """Before each step: the previous steps' writes flushed to disk (their writeback would
        otherwise run during this step), and the sources in the page cache."""
        os.sync()
        for path in sources:
            if path.is_dir():
                for child in path.iterdir():
                    read_whole(child)
            else:
                read_whole(path)

    # -- measuring -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def step(self, daemon: int | None = None):
        """`Harness.measure` of one step, plus the emulator's CPU and its upload counts."""
        before = cpu_seconds(self.emulator_pid)
        with self.measure(daemon) as entry:
            yield entry
            after = cpu_seconds(self.emulator_pid)
            stats = self.emulator.stats()
        entry["emulator_cpu_s"] = after - before if None not in (after, before) else None
        for key in ("uploads_started", "uploads_completed", "part_requests", "parts_received", "upload_bytes", "write_requests"):
            entry[key] = stats.get(key)

    def verify(self, folder_name: str | None, expected: dict[str, tuple[int, str]]) -> dict:
        """Check on the emulator's side that the files `expected` (name -> (size, MD5)) are there,
        in the project's root or in the folder `folder_name`, with those sizes and MD5s (of the
        bytes the emulator stored); then delete them. Raises if one is missing or different."""
        assert self.api is not None
        if folder_name is None:
            items = [item for item in self.api.items(project=PROJECT) if item["name"] in expected]
        else:
            folder = self.api.named(folder_name)
            if folder is None:
                raise RuntimeError(f"{folder_name} is not in {PROJECT}")
            items = self.api.items(parent=folder["id"])
        objects = self.emulator.objects()
        found = {item["name"]: item for item in items if item["type"] == "file"}
        wrong = []
        for name, (size, md5) in expected.items():
            item = found.get(name)
            if item is None:
                wrong.append(f"{name}: missing")
                continue
            stored = Path(objects[item["id"]])
            if item["size"] != size or stored.stat().st_size != size:
                wrong.append(f"{name}: {item['size']} bytes, not {size}")
            elif _md5_of(stored) != md5:
                wrong.append(f"{name}: MD5 differs")
        extra = sorted(set(found) - set(expected))
        if extra and folder_name is not None:
            wrong.append(f"unexpected files {extra[:5]}")
        # Clean up: the emulator keeps what is written on disk until it stops.
        for item in ([self.api.named(folder_name)] if folder_name is not None else list(found.values())):
            if item is not None:
                self.api.delete(item)
        if wrong:
            raise RuntimeError(f"{len(wrong)} of {len(expected)} uploaded files are wrong: {wrong[:5]}")
        return {"verified_files": len(expected), "md5_ok": True}

    def run_direct(self, api_base: str, sources: list[Path], *, new_folder: str | None = None, files_at_once: int = 1) -> dict:
        """`direct_upload` in a process of its own (this file with `--direct`), so that its CPU and
        peak RSS are its own; its answer, as JSON on stdout."""
        spec = {"api_base": api_base, "token": self.emulator.token, "sources": [str(p) for p in sources],
                "new_folder": new_folder, "files_at_once": files_at_once}
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--direct", json.dumps(spec)],
                              capture_output=True, text=True, timeout=3600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the direct uploader failed: {done.stderr.strip()[-800:]}")
        return json.loads(done.stdout)

    # -- 1: the large file -----------------------------------------------------------------------

    def bench_large(self) -> dict:
        rows = {key: Series(name) for key, name in (
            ("local", "dd to local disk (floor; page cache, no fsync)"),
            ("curl", "emulator alone: curl PUTs of pre-cut parts"),
            ("direct", "direct uploader (httpx, same parts)"),
            ("omicsfs", "omicsfs dd, write_back sync (close waits)"),
        )}
        source, md5 = self.make_large()
        size = self.args.size
        part_size = requested_part_size(size)
        parts = math.ceil(size / part_size)
        note(f"large: {size:,} bytes, {parts} parts of {part_size / MiB:g} MiB, {PARALLEL_PARTS_TOTAL} at a time")
        cut = self.cut_parts(source, part_size)
        expected = lambda name: {name: (size, md5)}
        for run in range(1, self.runs + 1):
            # Floor: the same dd into a local file.
            local = self.workdir / "local-large.bin"
            self.settle(source)
            with self.step() as entry:
                entry["seconds"] = self.dd_copy(source, local, size, None)
            local.unlink()
            rows["local"].runs.append(entry)

            # The emulator alone: the parts cut beforehand, hashed beforehand, sent by curl.
            name = f"bench-large-curl-{run}.bin"
            self.settle(*[path for path, _ in cut])
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            with self.step() as entry:
                start = time.perf_counter()
                self.curl_upload(self.emulator.url, name, size, part_size, cut)
                entry["seconds"] = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            entry["uploader_cpu_s"] = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
            entry.update(self.verify(None, expected(name)))
            rows["curl"].runs.append(entry)

            # The direct uploader.
            name = f"bench-large-direct-{run}.bin"
            target = self.source_dir / name
            os.link(source, target)  # the same bytes under the name it uploads them as
            self.settle(source)
            with self.step() as entry:
                answer = self.run_direct(self.emulator.url, [target])
                entry["seconds"] = answer["seconds"]
            target.unlink()
            entry["uploader_cpu_s"], entry["uploader_peak_rss"] = answer["cpu_s"], answer["peak_rss"]
            entry.update(self.verify(None, expected(name)))
            rows["direct"].runs.append(entry)

            # omicsfs: a fresh mount, its cache dir empty; the project looked up first, untimed.
            name = f"bench-large-omicsfs-{run}.bin"
            cache = self.cache_dir("omicsfs-large")
            self.settle(source)
            with self.omicsfs_mount(self.direct_config, cache, *MOUNT_OPTIONS, "--write-back", "sync") as mounted:
                project = mounted.path / IN_MOUNT
                os.listdir(project)
                log = self.workdir / f"omicsfs-{self.mount_count}.log"
                with self.step(mounted.pid) as entry:
                    entry["seconds"] = self.dd_copy(source, project / name, size, mounted.pid)
                entry["uploader_cpu_s"], entry["uploader_peak_rss"] = entry["daemon_cpu_s"], entry["daemon_peak_rss"]
                uploads = [(int(m.group(2)), float(m.group(3))) for m in map(UPLOADED.search, log.read_text().splitlines())
                           if m and m.group(1).endswith(f"/{name}")]
                entry["uploads_of_the_file"] = len(uploads)
                if uploads and uploads[-1][0] == size:
                    entry["upload_at_close_s"] = uploads[-1][1]
                    entry["write_s"] = entry["seconds"] - uploads[-1][1]
            shutil.rmtree(cache, ignore_errors=True)
            entry.update(self.verify(None, expected(name)))
            rows["omicsfs"].runs.append(entry)
            note(f"large run {run}: " + ", ".join(
                f"{key} {size / series.runs[-1]['seconds'] / MB:.0f} MB/s" for key, series in rows.items()
                if len(series.runs) == run))
        for path, _ in cut:
            path.unlink()
        return {"size": size, "md5": md5, "part_size": part_size, "parts": parts,
                "rows": {key: series.summary() for key, series in rows.items()}}

    def dd_copy(self, source: Path, target: Path, size: int, daemon: int | None) -> float:
        start = time.perf_counter()
        result = run_on_mount(["dd", f"if={source}", f"of={target}", "bs=1M"], daemon, timeout=3600)
        seconds = time.perf_counter() - start
        copied = re.search(r"^(\d+) bytes", result.stderr, re.MULTILINE)
        if result.returncode != 0 or not copied or int(copied.group(1)) != size:
            raise RuntimeError(f"dd of={target} failed (exit {result.returncode}): {result.stderr.strip()[-300:]}")
        return seconds

    def cut_parts(self, source: Path, part_size: int) -> list[tuple[Path, str]]:
        """The source cut into part files (for curl), each with its Content-MD5."""
        directory = self.workdir / "parts"
        directory.mkdir(exist_ok=True)
        cut = []
        with open(source, "rb") as file:
            number = 0
            while data := file.read(part_size):
                number += 1
                path = directory / f"part-{number:05d}"
                path.write_bytes(data)
                cut.append((path, _b64(hashlib.md5(data).digest())))
        return cut

    def curl_upload(self, api_base: str, name: str, size: int, part_size: int, cut: list[tuple[Path, str]]) -> None:
        """The upload with the bytes sent by curl (C, one process per part), `PARALLEL_PARTS_TOTAL`
        at a time; the API calls (init, part URLs, reports, complete) through httpx."""
        api = f"{api_base}/{PLATFORM}/v2"
        headers = {"X-SBG-Auth-Token": self.emulator.token}
        local = threading.local()
        clients: list[httpx.Client] = []

        def client() -> httpx.Client:
            if not hasattr(local, "client"):
                local.client = httpx.Client(headers=headers, timeout=300)
                clients.append(local.client)
            return local.client

        init = client().post(f"{api}/upload/multipart", json={"project": PROJECT, "name": name, "size": size, "part_size": part_size})
        upload_id = init.raise_for_status().json()["upload_id"]

        def send(number: int, path: Path, md5: str) -> tuple[int, str]:
            info = client().get(f"{api}/upload/multipart/{upload_id}/part/{number}").raise_for_status().json()
            done = subprocess.run(["curl", "-sS", "-T", str(path), "-X", info.get("method") or "PUT", "-H", f"Content-MD5: {md5}",
                                   "-o", "/dev/null", "-D", "-", "-w", "%{http_code}", info["url"]],
                                  capture_output=True, text=True, timeout=600, check=False)
            status = done.stdout.strip().rsplit("\n", 1)[-1]
            etag = re.search(r'^etag:\s*"?([0-9a-f]+)"?', done.stdout, re.MULTILINE | re.IGNORECASE)
            if done.returncode != 0 or status != "200" or not etag:
                raise RuntimeError(f"curl of part {number}: exit {done.returncode}, {done.stdout[-200:]} {done.stderr[-200:]}")
            report = {"part_number": number, "response": {"headers": {"ETag": etag.group(1)}}}
            client().post(f"{api}/upload/multipart/{upload_id}/part", json=report).raise_for_status()
            return number, etag.group(1)

        try:
            with concurrent.futures.ThreadPoolExecutor(PARALLEL_PARTS_TOTAL) as pool:
                etags = dict(pool.map(lambda args: send(*args), [(n, p, m) for n, (p, m) in enumerate(cut, 1)]))
            reports = [{"part_number": n, "response": {"headers": {"ETag": etags[n]}}} for n in sorted(etags)]
            client().post(f"{api}/upload/multipart/{upload_id}/complete", json={"parts": reports}).raise_for_status()
        finally:
            for c in clients:
                c.close()

    # -- 2: many small files ---------------------------------------------------------------------

    def bench_many(self) -> dict:
        rows = {key: Series(name) for key, name in (
            ("local", "cp -r to local disk (floor)"),
            ("direct_1", "direct uploader, 1 file at a time"),
            ("direct_n", f"direct uploader, {PARALLEL_PARTS_TOTAL} files at a time"),
            ("omicsfs_sync", "omicsfs cp -r, write_back sync"),
            ("omicsfs_async", "omicsfs cp -r, write_back async: cp returns"),
            ("omicsfs_async_done", "omicsfs async: until all are uploaded"),
        )}
        source, md5s = self.make_many()
        expected = {name: (self.args.file_size, md5) for name, md5 in md5s.items()}
        count = len(expected)
        sources = sorted(source.iterdir())
        for run in range(1, self.runs + 1):
            self.settle(source)
            local = self.workdir / "local-many"
            with self.step() as entry:
                start = time.perf_counter()
                subprocess.run(["cp", "-r", str(source), str(local)], check=True, timeout=600)
                entry["seconds"] = time.perf_counter() - start
            shutil.rmtree(local)
            rows["local"].runs.append(entry)

            for key, at_once in (("direct_1", 1), ("direct_n", PARALLEL_PARTS_TOTAL)):
                folder = f"bench-many-{key}-{run}"
                self.settle(source)
                with self.step() as entry:
                    answer = self.run_direct(self.proxy.url(0), sources, new_folder=folder, files_at_once=at_once)
                    entry["seconds"] = answer["seconds"]
                entry["uploader_cpu_s"], entry["uploader_peak_rss"] = answer["cpu_s"], answer["peak_rss"]
                entry.update(self.verify(folder, expected))
                rows[key].runs.append(entry)
                note(f"many run {run}: {key} {entry['seconds']:.1f} s")

            for mode in ("sync", "async"):
                folder = f"bench-many-omicsfs-{mode}-{run}"
                cache = self.cache_dir(f"omicsfs-many-{mode}")
                self.settle(source)
                with self.omicsfs_mount(self.delayed_config, cache, *MOUNT_OPTIONS, "--write-back", mode) as mounted:
                    project = mounted.path / IN_MOUNT
                    os.listdir(project)  # the lookups down to the project, untimed
                    with self.step(mounted.pid) as entry:
                        start = time.perf_counter()
                        done = run_on_mount(["cp", "-r", str(source), str(project / folder)], mounted.pid, timeout=3600)
                        returned = time.perf_counter() - start
                        if done.returncode != 0:
                            raise RuntimeError(f"cp -r into the mount failed: {done.stderr.strip()[-300:]}")
                        entry["seconds"] = returned
                        if mode == "async":
                            entry["until_uploaded_s"] = self.wait_uploaded(mounted.path) - start
                    entry["uploader_cpu_s"], entry["uploader_peak_rss"] = entry["daemon_cpu_s"], entry["daemon_peak_rss"]
                    pending = control_request(mounted.path, "status", timeout=30)["uploads"]["pending"]
                    if pending:
                        raise RuntimeError(f"{len(pending)} uploads still pending after cp -r ({mode})")
                shutil.rmtree(cache, ignore_errors=True)
                entry.update(self.verify(folder, expected))
                if mode == "sync":
                    rows["omicsfs_sync"].runs.append(entry)
                else:
                    rows["omicsfs_async"].runs.append(entry)
                    rows["omicsfs_async_done"].runs.append({**entry, "seconds": entry["until_uploaded_s"]})
                note(f"many run {run}: omicsfs {mode} {entry['seconds']:.1f} s"
                     + (f", all uploaded at {entry['until_uploaded_s']:.1f} s" if mode == "async" else ""))
        return {"files": count, "file_size": self.args.file_size, "rows": {key: series.summary() for key, series in rows.items()}}

    def wait_uploaded(self, mountpoint: Path, timeout: float = 3600) -> float:
        """When the daemon first has no upload pending (`omicsfs status`'s figures, asked on its
        control socket every 0.1 s): the time.perf_counter() of that answer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = control_request(mountpoint, "status", timeout=30)
            now = time.perf_counter()
            if not answer["uploads"]["pending"]:
                return now
            time.sleep(0.1)
        raise RuntimeError(f"uploads still pending after {timeout:.0f} s")

    def cache_dir(self, name: str) -> Path:
        path = self.workdir / "caches" / name
        shutil.rmtree(path, ignore_errors=True)
        return path

    # -- all of it -------------------------------------------------------------------------------

    def run(self) -> dict:
        started = time.monotonic()
        load_before = os.getloadavg()
        self.setup()
        results: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load": {}}
        for name, measure in (("large", self.bench_large), ("many", self.bench_many)):
            if name in self.args.only:
                before = os.getloadavg()[0]
                results[name] = measure()
                results["load"][name] = [before, os.getloadavg()[0]]
        results["machine"] = machine(load_before, None)
        results["settings"] = {
            "runs": self.runs,
            "platform": PLATFORM,
            "project": PROJECT,
            "rtt_ms": self.args.rtt_ms,
            "proxy_window": self.args.window,
            "size": self.args.size,
            "files": self.args.files,
            "file_size": self.args.file_size,
            "mb": MB,
            "memory_cache": MEMORY_CACHE,
            "mount_options": list(MOUNT_OPTIONS),
            "parallel_parts": PARALLEL_PARTS_TOTAL,
            "groups": list(self.args.only),
            "omicsfs_commit": _git("rev-parse", "HEAD"),
            "omicsfs_src_changes": _git("status", "--porcelain", "--", "src"),
        }
        results["elapsed_s"] = time.monotonic() - started
        return results


def _md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        while chunk := file.read(8 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def _git(*args: str) -> str | None:
    done = subprocess.run(["git", "-C", str(HERE.parent), *args], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


# -- the tables ------------------------------------------------------------------------------------


def _mib(value) -> str:
    return "-" if value is None else f"{value / MiB:.0f} MiB"


def render(results: dict) -> str:
    settings, goals = results["settings"], []
    results["goals"] = goals
    lines = [
        (f"omicsfs write benchmark, {results['when']}; {results['machine']['cpus']} CPUs, load average "
         f"{results['machine']['load_average_before'][0]:.1f} before, {results['machine']['load_average_after'][0]:.1f} after"),
        (f"Seven Bridges emulator ({settings['project']}); omicsfs mounted with {' '.join(settings['mount_options'])}; "
         f"at most {settings['parallel_parts']} parts in flight (omicsfs's PARALLEL_PARTS_TOTAL, also the direct uploader's)"),
    ]
    if "large" in results:
        large, rows = results["large"], results["large"]["rows"]
        size = large["size"]
        direct = rows["direct"].get("seconds")
        lines += [
            "",
            (f"1 file of {size / MiB:g} MiB ({size:,} bytes), dd bs=1M; emulator on loopback, no delay; "
             f"{large['parts']} parts of {large['part_size'] / MiB:g} MiB; median of {settings['runs']} runs{load_note(results, 'large')}"),
            (f"{'':{NAME}} {'MB/s':>5} {'(min-max)':>11} {'x direct':>8} {'seconds':>7} {'uploader CPU s':>14} "
             f"{'peak RSS':>9} {'emulator CPU s':>14} {'API':>4} {'PUTs':>4} {'MD5':>3}"),
        ]
        for key, row in rows.items():
            if row.get("seconds") is None:
                lines.append(f"{row['name']:{NAME}} {row.get('error') or 'no figure'}")
                continue
            speed = size / row["seconds"] / MB
            lines.append(
                f"{row['name']:{NAME}} {speed:5.0f} {spread(row, 'seconds', '.0f', lambda s: size / s / MB):>11} "
                f"{fmt(ratio(direct, row['seconds']) if key != 'direct' else 1.0, '8.2f'):>8} {row['seconds']:7.2f} "
                f"{fmt(row.get('uploader_cpu_s'), '14.1f'):>14} {_mib(row.get('uploader_peak_rss')):>9} "
                f"{fmt(row.get('emulator_cpu_s'), '14.1f'):>14} {row['api_requests']:4.0f} {row['part_requests']:4.0f} "
                f"{'ok' if row.get('md5_ok') else ('-' if key == 'local' else '?'):>3}"
            )
        omicsfs = rows["omicsfs"]
        if omicsfs.get("upload_at_close_s") is not None:
            lines.append(f"{'':{NAME}} (omicsfs: {omicsfs['write_s']:.2f} s writing to the staging file, then "
                         f"{omicsfs['upload_at_close_s']:.1f} s uploading at close, from its log; Seven Bridges "
                         f"must be told the size first)")
        lines.append(f"{'':{NAME}} (uploader CPU s and peak RSS: the omicsfs daemon's, the direct uploader process's, "
                     "or curl's; API: requests the emulator's API answered; PUTs: part requests)")
        speed = ratio(direct, omicsfs.get("seconds"))
        lines.append(goal_line(goals, "large", "omicsfs at least 0.9x the direct uploader's MB/s", speed,
                           f"{fmt(speed, '.2f')}x", None if speed is None else speed >= 0.9))
        bound = settings["memory_cache"] + 100 * MiB
        peak = omicsfs.get("daemon_peak_rss_max")
        lines.append(goal_line(goals, "large", f"daemon peak RSS at most the memory cache + 100 MiB ({bound / MiB:.0f} MiB)", peak,
                           f"{_mib(peak)} (highest of every run)", None if peak is None else peak <= bound))
        per_gib = ratio(omicsfs.get("daemon_cpu_s"), size / (1 << 30))
        lines.append(goal_line(goals, "large", "daemon CPU seconds per GiB written", per_gib, f"{fmt(per_gib, '.1f')} s", None))
    if "many" in results:
        many, rows = results["many"], results["many"]["rows"]
        count = many["files"]
        lines += [
            "",
            (f"cp -r of {count} files of {many['file_size'] / 1000:g} KB; API and part URLs {settings['rtt_ms']:g} ms away "
             f"(round trip) through the delaying proxy, since per-file round trips dominate here; median of "
             f"{settings['runs']} runs{load_note(results, 'many')}"),
            (f"{'':{NAME}} {'seconds':>7} {'(min-max)':>13} {'files/s':>7} {'x direct':>8} {'API/file':>8} "
             f"{'uploader CPU s':>14} {'peak RSS':>9} {'MD5':>3}"),
        ]
        peers = {"direct_1": rows["direct_1"].get("seconds"), "omicsfs_sync": rows["direct_1"].get("seconds"),
                 "direct_n": rows["direct_n"].get("seconds"), "omicsfs_async": rows["direct_n"].get("seconds"),
                 "omicsfs_async_done": rows["direct_n"].get("seconds")}
        for key, row in rows.items():
            if row.get("seconds") is None:
                lines.append(f"{row['name']:{NAME}} {row.get('error') or 'no figure'}")
                continue
            api = ratio(row.get("api_requests"), count) if key != "local" else None
            lines.append(
                f"{row['name']:{NAME}} {row['seconds']:7.2f} {spread(row, 'seconds', '.2f'):>13} {count / row['seconds']:7.1f} "
                f"{fmt(ratio(peers.get(key), row['seconds']), '8.2f'):>8} {fmt(api, '8.1f'):>8} "
                f"{fmt(row.get('uploader_cpu_s'), '14.1f'):>14} {_mib(row.get('uploader_peak_rss')):>9} "
                f"{'ok' if row.get('md5_ok') else ('-' if key == 'local' else '?'):>3}"
            )
        lines.append(f"{'':{NAME}} (x direct: the direct uploader's seconds over the row's: sync against 1 file at a time, "
                     f"async against {settings['parallel_parts']} at a time; API/file: the emulator's API requests per file, "
                     "part PUTs not counted)")
        for key, peer in (("omicsfs_sync", "direct_1"), ("omicsfs_async_done", "direct_n")):
            value = ratio(rows[peer].get("seconds"), rows[key].get("seconds"))
            lines.append(goal_line(goals, "many", f"{rows[key]['name']} against the {rows[peer]['name']}", value,
                               f"{fmt(value, '.2f')}x its files/s", None))
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--direct":  # the direct uploader's own process (run_direct)
        print(json.dumps(direct_upload(**json.loads(sys.argv[2]))))
        return 0
    parser = argparse.ArgumentParser(description="omicsfs write benchmark (see bench/README.md)")
    parser.add_argument("--runs", type=int, default=1, help="runs per figure; the median is reported (default 1)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: one run, a 64 MiB file and 100 small files")
    parser.add_argument("--rtt-ms", type=float, default=DEFAULT_RTT_MS,
                        help=f"round-trip time the proxy adds for the many-files group (default {DEFAULT_RTT_MS:g})")
    parser.add_argument("--window", type=parse_size, default=DEFAULT_WINDOW,
                        help="bytes the proxy holds per connection and direction at most (default 8M)")
    parser.add_argument("--size", type=parse_size, default=1 << 30, help="size of the large file (default 1G)")
    parser.add_argument("--files", type=int, default=1000, help="files in the directory cp -r copies (default 1000)")
    parser.add_argument("--file-size", type=parse_size, default=100_000, help="size of each of them (default 100000)")
    parser.add_argument("--data", default=str(default_data_dir()),
                        help="emulator data directory (default ~/.cache/omicsfs/bench-data, shared with bench_read.py)")
    parser.add_argument("--large-file-size", default="1G", help="the emulator's own large file, as bench_read.py (default 1G)")
    parser.add_argument("--workdir", help="where mount points, sources and cache dirs go (default: a new dir in $TMPDIR)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the workdir (the daemons' logs) at the end")
    parser.add_argument("--only", type=lambda text: [g for g in text.split(",") if g], default=list(GROUPS),
                        help=f"only these groups of figures, comma-separated: {','.join(GROUPS)} (default: all)")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="JSON results (default bench/results/write-latest.json)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.size, args.files = 1, 64 * MiB, 100
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if unknown := set(args.only) - set(GROUPS):
        parser.error(f"--only: unknown groups {sorted(unknown)} (known: {','.join(GROUPS)})")
    if missing_tool("dd", "cp", "curl", "nginx"):
        return 2
    bench = WriteBench(args)

    def run() -> int:
        results = bench.run()
        return save_and_print(results, render(results), args.output)

    return run_bench(bench, run)


if __name__ == "__main__":
    sys.exit(main())
