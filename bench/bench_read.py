#!/usr/bin/env python3
"""Read benchmark of omicsfs against its peers, measured in one run on this machine (issue 10).

The store is nginx on loopback serving the emulator's objects (`store.py`); the emulator's
presigned URLs point at it. Every cold step starts with the page cache dropped. Figures:

1. region query: `samtools view -c` of a deep 230 MB BAM on three regions (and of the sample
   account's 5 MB BAM on one), cold, with the API and the store 20 ms away through the delaying
   proxy (`delayproxy.py`): htslib's own HTTP on the presigned URLs, rclone mount (cache modes off
   and full), omicsfs cold, again in the same mount and after a remount; seconds, and GETs and
   bytes as the store saw them, also against what samtools reads (strace of a local copy);
2. sequential: the 1 GiB file read cold with `dd bs=1M` from the store on loopback (no delay):
   curl, the do-nothing FUSE (`nullfs.py`), rclone mount (off, full), omicsfs; the daemon's CPU
   and peak memory;
3. re-read of the same file, page cache dropped: rclone mount again (off; full: from its cache),
   omicsfs in the same mount and after a remount on the same cache dir; bytes fetched again;
4. listing: `ls -l` and `ls -lA` of a directory of 10,000 files, cold, with the API 20 ms away,
   against the API's own paging of the same listing (httpx);
5. per platform: every emulated platform in one mount, cold/warm sequential and a region query.

Each figure is the median of `--runs` runs; the tables print the goals of issue 10, as ratios
against the peers of the same run, and whether they are met; the raw runs go to
`bench/results/latest.json`. See bench/README.md.

    .venv/bin/python bench/bench_read.py [--runs 3] [--quick] [--rtt-ms 20] [--no-rclone] [--no-platforms]

Needs root for real numbers (drop_caches, the FUSE readahead); nginx, curl, dd, samtools, strace
and rclone from Debian (`make bench` installs them).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from delayproxy import DEFAULT_RTT_MS, DEFAULT_WINDOW, parse_size
from harness import (MB, MiB, Harness, Series, default_data_dir, dd, fuse_readahead_kb, machine, missing_tool, note, page_fill,
                     run_bench, run_on_mount, save_and_print)
from omicsfs.emulator import platform_modules, sampledata
from read_report import render

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "results" / "latest.json"
PLATFORM = "basespace"
APPRESULTS = f"{PLATFORM}/Projects/Tumor-Normal WGS/AppResults"
#: Every emulated platform, in the order of the per-platform tables.
KINDS = sorted(module.__name__.rsplit(".", 1)[-1] for module in platform_modules())
#: What omicsfs is mounted with: the memory cache the RSS goal is measured against.
MEMORY_CACHE = 256 * MiB
MOUNT_OPTIONS = ("--memory-cache-size", "256M", "--cache-size", "10G")
GROUPS = ("region", "sequential", "listing", "platforms")
STRACE_READ = re.compile(r"^(?:\d+\s+)?(?:read|pread64)\(\d+<([^>]*)>,.*\)\s+=\s+(\d+)$")


@dataclass(frozen=True)
class SampleFile:
    """A file of the sample BaseSpace account: its app result and path there, and its name in the
    store's `/rclone/` listing."""

    container: str
    path: str

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def in_mount(self) -> str:
        return f"{APPRESULTS}/{self.container}/Files/{self.path}"


@dataclass(frozen=True)
class Query:
    key: str
    bam: SampleFile
    regions: tuple[str, ...]

    @property
    def bai(self) -> SampleFile:
        return SampleFile(self.bam.container, self.bam.path + ".bai")


LARGE = SampleFile("Archive", "Archive/reportarchive.bin")
QUERIES = (
    # The three regions, 1-10 kb, on a BAM of realistic size.
    Query("deep", SampleFile("Deep Alignment D1", "Alignment/D1.bam"),
          ("chr1:500000-510000", "chr2:700000-705000", "chr3:100000-101000")),
    # Today's region on the sample account's small BAM.
    Query("small", SampleFile("BWA Alignment S1", "Alignment/S1.bam"), ("chr2:500000-501000",)),
)
#: The app result whose 10,000 files sit in one directory: `ls -l` of its `Files`.
WIDE = "Per-cell Counts"


class ReadBench(Harness):
    def __init__(self, args: argparse.Namespace):
        super().__init__(args.workdir, args.keep_workdir)
        self.args = args
        self.runs = args.runs

    # -- setup -----------------------------------------------------------------------------------

    def setup(self) -> None:
        data = Path(self.args.data).expanduser()
        note(f"starting the emulator (data {data}; the first run generates it, about 2 minutes)")
        emulator = self.start_emulator(data, large_file_size=self.args.large_file_size,
                                       deep_bam_size=self.args.deep_bam_size, wide_directory_files=self.args.wide_directory)
        # BaseSpace's own cap for file lists (the emulator's default of 250 is a test quirk).
        emulator.knobs(page_cap=1000)
        self.data_dir = data
        account_dir = data / PLATFORM
        account = sampledata.load(account_dir)
        self.items = {(container["Name"], item["Path"]): item for _, container, item in sampledata.iter_files(account)}
        self.wide_id = next(a["Id"] for p in account["projects"] for a in p["appresults"] if a["Name"] == WIDE)
        self.wide_count = sum(1 for container, _ in self.items if container == WIDE)
        shown = [LARGE, *(q.bam for q in QUERIES), *(q.bai for q in QUERIES)]
        self.store = self.start_store({f.name: self.object(f) for f in shown})
        self.proxy = self.start_proxy(self.args.rtt_ms, self.args.window)
        note(f"nginx at {self.store.url}; the API and the store {self.args.rtt_ms:g} ms away at "
             f"{self.proxy.url(0)} and {self.proxy.url(1)}")
        self.direct_config = self.write_config("direct", {PLATFORM: f"{emulator.url}/{PLATFORM}"})
        self.delayed_config = self.write_config("delayed", {PLATFORM: f"{self.proxy.url(0)}/{PLATFORM}"})
        self.all_config = self.write_config("all", {kind: f"{emulator.url}/{kind}" for kind in KINDS})
        self.rclone = None if self.args.no_rclone else shutil.which("rclone")
        self.strace = shutil.which("strace")

    def item(self, file: SampleFile) -> dict:
        return self.items[(file.container, file.path)]

    def object(self, file: SampleFile) -> Path:
        return sampledata.object_path(self.data_dir / PLATFORM, self.item(file)["Id"])

    def presigned_url(self, file: SampleFile, api: str) -> str:
        assert self.emulator is not None
        response = httpx.get(
            f"{api}/{PLATFORM}/v1pre3/files/{self.item(file)['Id']}/content", params={"redirect": "meta"},
            headers={"x-access-token": self.emulator.token}, timeout=30,
        ).raise_for_status()
        return response.json()["Response"]["HrefContent"]

    def cache_dir(self, name: str) -> Path:
        path = self.workdir / "caches" / name
        shutil.rmtree(path, ignore_errors=True)
        return path

    # -- region query ----------------------------------------------------------------------------

    def samtools_reads(self, query: Query) -> dict:
        """What `samtools view -c` reads of the BAM and its index for the query (the sum of its
        read() results, strace), on a local copy: the least any client can fetch for it."""
        if not self.strace:
            return {"error": "strace is not on PATH"}
        local = self.workdir / "local" / query.key
        local.mkdir(parents=True, exist_ok=True)
        objects = {}
        for file in (query.bam, query.bai):
            (local / file.name).unlink(missing_ok=True)
            (local / file.name).symlink_to(self.object(file))
            objects[str(self.object(file).resolve())] = file.name
        trace = local / "strace.txt"
        subprocess.run([self.strace, "-f", "-qq", "-y", "-o", str(trace), "-e", "trace=read,pread64",
                        "samtools", "view", "-c", str(local / query.bam.name), *query.regions],
                       check=True, capture_output=True, timeout=300)
        read: dict[str, int] = {name: 0 for name in objects.values()}
        calls = 0
        for line in trace.read_text(errors="replace").splitlines():
            # `[PID ]read(FD</path>, "...", SIZE) = RESULT`; strace prefixes the PID only when it follows several.
            match = STRACE_READ.match(line)
            if match and match.group(1) in objects:
                read[objects[match.group(1)]] += int(match.group(2))
                calls += 1
        if not calls:
            return {"error": f"no read of {query.bam.name} or its index in the trace ({trace})"}
        return {"bytes": sum(read.values()), "by_file": read, "read_calls": calls,
                "bam_size": self.item(query.bam)["Size"], "bai_size": self.item(query.bai)["Size"]}

    @staticmethod
    def samtools_count(args: list[str], daemon: int | None, cwd: Path | None = None) -> int:
        """`samtools view -c ARGS`: through a mount served by `daemon`, or (None) over HTTP in `cwd`."""
        command = ["samtools", "view", "-c", *args]
        if daemon is None:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd)
        else:
            done = run_on_mount(command, daemon, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"samtools view -c failed: {done.stderr.strip()[-300:]}")
        return int(done.stdout.strip())

    def bench_region_query(self, query: Query) -> dict:
        rows = {key: Series(name) for key, name in (
            ("htslib", "htslib's own HTTP (samtools on the URLs)"),
            ("rclone_off", "rclone mount, --vfs-cache-mode off"),
            ("rclone_full", "rclone mount, --vfs-cache-mode full"),
            ("omicsfs_cold", "omicsfs cold (fresh mount, empty cache)"),
            ("omicsfs_again", "omicsfs again (same mount, caches dropped)"),
            ("omicsfs_remount", "omicsfs after a remount (same cache dir)"),
        )}
        objects = [self.object(query.bam), self.object(query.bai)]
        bam_in_mount = query.bam.in_mount
        self.store_through(delayed=True)
        for run in range(self.runs):
            # htslib: the URLs are resolved beforehand, untimed, as for curl; a fresh working directory,
            # since htslib keeps a downloaded index there and would find it next time.
            self.cold_start(*objects)
            urls = [self.presigned_url(f, self.proxy.url(0)) for f in (query.bam, query.bai)]
            with tempfile.TemporaryDirectory(dir=self.workdir) as cwd, self.measure() as entry:
                entry["reads"] = self.samtools_count(["-X", *urls, *query.regions], None, Path(cwd))
            rows["htslib"].runs.append(entry)
            if self.rclone:
                for mode in ("off", "full"):
                    self.cold_start(*objects)
                    with self.rclone_mount(f"{self.proxy.url(1)}/rclone/", mode, self.cache_dir(f"rclone-{mode}")) as mounted:
                        with self.measure(mounted.pid) as entry:
                            entry["reads"] = self.samtools_count([str(mounted.path / query.bam.name), *query.regions], mounted.pid)
                    rows[f"rclone_{mode}"].runs.append(entry)
            else:
                for mode in ("off", "full"):
                    rows[f"rclone_{mode}"].error = "rclone is not on PATH" if not self.args.no_rclone else "skipped (--no-rclone)"
            cache = self.cache_dir(f"omicsfs-query-{query.key}")
            self.cold_start(*objects)
            with self.omicsfs_mount(self.delayed_config, cache, *MOUNT_OPTIONS) as mounted:
                for key in ("omicsfs_cold", "omicsfs_again"):
                    if key == "omicsfs_again":
                        self.cold_start(*objects)
                    with self.measure(mounted.pid) as entry:
                        entry["reads"] = self.samtools_count([str(mounted.path / bam_in_mount), *query.regions], mounted.pid)
                    rows[key].runs.append(entry)
            self.cold_start(*objects)
            with self.omicsfs_mount(self.delayed_config, cache, *MOUNT_OPTIONS) as mounted:
                with self.measure(mounted.pid) as entry:
                    entry["reads"] = self.samtools_count([str(mounted.path / bam_in_mount), *query.regions], mounted.pid)
                rows["omicsfs_remount"].runs.append(entry)
            note(f"region query {query.bam.name} run {run + 1}: " + ", ".join(
                f"{key} {series.runs[-1]['seconds']:.2f} s {series.runs[-1]['store_bytes'] / MB:.1f} MB"
                for key, series in rows.items() if series.runs and len(series.runs) == run + 1))
        return {key: series.summary() for key, series in rows.items()}

    # -- sequential and re-read ------------------------------------------------------------------

    def bench_sequential(self) -> dict:
        rows = {key: Series(name) for key, name in (
            ("curl", "curl of the presigned URL"),
            ("nullfs", "nullfs (do-nothing FUSE)"),
            ("rclone_off", "rclone mount, --vfs-cache-mode off"),
            ("rclone_full", "rclone mount, --vfs-cache-mode full"),
            ("omicsfs", "omicsfs cold (fresh mount, empty cache)"),
            ("rclone_off_again", "rclone mount, cache off: again (same mount)"),
            ("rclone_full_again", "rclone mount, cache full: again (same mount)"),
            ("omicsfs_again", "omicsfs again (same mount)"),
            ("omicsfs_remount", "omicsfs after a remount (same cache dir)"),
        )}
        size = self.item(LARGE)["Size"]
        server_copy = self.object(LARGE)
        self.store_through(delayed=False)
        for run in range(self.runs):
            self.cold_start(server_copy)
            url = self.presigned_url(LARGE, self.emulator.url)
            with self.measure() as entry:
                result = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{time_total} %{size_download} %{http_code}", url],
                                        capture_output=True, text=True, timeout=1800, check=False)
                seconds, fetched, status = result.stdout.split()
                if result.returncode != 0 or status != "200" or int(float(fetched)) != size:
                    raise RuntimeError(f"curl failed: exit {result.returncode}, HTTP {status}, {fetched} bytes")
                entry["seconds"] = float(seconds)
            rows["curl"].runs.append(entry)

            self.cold_start()
            with self.nullfs_mount(size) as mounted:
                with self.measure(mounted.pid) as entry:
                    entry["seconds"] = dd(mounted.path / "zeros", size, mounted.pid)
                entry["read_ahead_kb"] = fuse_readahead_kb(mounted.path)
            rows["nullfs"].runs.append(entry)

            for mode in ("off", "full") if self.rclone else ():
                self.cold_start(server_copy)
                with self.rclone_mount(f"{self.store.url}/rclone/", mode, self.cache_dir(f"rclone-{mode}")) as mounted:
                    path = mounted.path / LARGE.name
                    os.stat(path)  # the lookups, outside the timed read (as for omicsfs)
                    for key in (f"rclone_{mode}", f"rclone_{mode}_again"):
                        if key.endswith("again"):
                            self.cold_start(server_copy)
                            os.stat(path)
                        with self.measure(mounted.pid) as entry:
                            entry["seconds"] = dd(path, size, mounted.pid)
                        entry["read_ahead_kb"] = fuse_readahead_kb(mounted.path)
                        rows[key].runs.append(entry)
            if not self.rclone:
                for key in ("rclone_off", "rclone_full", "rclone_off_again", "rclone_full_again"):
                    rows[key].error = "rclone is not on PATH" if not self.args.no_rclone else "skipped (--no-rclone)"

            cache = self.cache_dir("omicsfs-sequential")
            self.cold_start(server_copy)
            with self.omicsfs_mount(self.direct_config, cache, *MOUNT_OPTIONS) as mounted:
                path = mounted.path / LARGE.in_mount
                for key in ("omicsfs", "omicsfs_again"):
                    if key == "omicsfs_again":
                        self.cold_start(server_copy)
                    os.stat(path)  # the lookups, outside the timed read
                    with self.measure(mounted.pid) as entry:
                        entry["seconds"] = dd(path, size, mounted.pid)
                    entry["read_ahead_kb"] = fuse_readahead_kb(mounted.path)
                    rows[key].runs.append(entry)
            self.cold_start(server_copy)
            with self.omicsfs_mount(self.direct_config, cache, *MOUNT_OPTIONS) as mounted:
                path = mounted.path / LARGE.in_mount
                os.stat(path)
                with self.measure(mounted.pid) as entry:
                    entry["seconds"] = dd(path, size, mounted.pid)
                rows["omicsfs_remount"].runs.append(entry)
            shutil.rmtree(cache, ignore_errors=True)
            note(f"1 GiB run {run + 1}: " + ", ".join(
                f"{key} {size / series.runs[-1]['seconds'] / MB:.0f} MB/s" for key, series in rows.items()
                if len(series.runs) == run + 1))
        return {key: series.summary() for key, series in rows.items()}

    # -- listing ---------------------------------------------------------------------------------

    def api_paging(self) -> dict:
        """The listing as the API gives it: every page of the app result's files, one after the
        other on one open connection (opened beforehand, untimed), with httpx."""
        assert self.emulator is not None
        headers = {"x-access-token": self.emulator.token}
        base = f"{self.proxy.url(0)}/{PLATFORM}/v1pre3"
        with httpx.Client(headers=headers, timeout=60) as client:
            client.get(f"{base}/users/current").raise_for_status()
            with self.measure() as entry:
                items, pages = 0, 0
                while True:
                    response = client.get(f"{base}/appresults/{self.wide_id}/files",
                                          params={"Offset": items, "Limit": 1000, "SortBy": "Id", "SortDir": "Asc"})
                    body = response.raise_for_status().json()["Response"]
                    pages += 1
                    items += len(body["Items"])
                    if not body["Items"] or items >= body["TotalCount"]:
                        break
        return entry | {"items": items, "pages": pages}

    def ls(self, flags: str, directory: Path, daemon: int) -> dict:
        with self.measure(daemon) as entry:
            result = run_on_mount(["ls", flags, str(directory)], daemon, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"ls {flags} failed: {result.stderr.strip()[-300:]}")
        lines = result.stdout.count("\n")
        entry["entries"] = lines - 1 if "l" in flags else lines  # `ls -l` starts with a `total` line
        if entry["entries"] != self.wide_count:
            raise RuntimeError(f"ls {flags} showed {entry['entries']} entries, not {self.wide_count}")
        return entry

    def bench_listing(self) -> dict:
        rows = {key: Series(name) for key, name in (
            ("api", "API paging (httpx, pages one after the other)"),
            ("ls_l_cold", "omicsfs ls -l, cold (fresh mount)"),
            ("ls_lA_cold", "omicsfs ls -lA, cold (fresh mount)"),
            ("ls_l_warm", "omicsfs ls -l, warm (same mount, again)"),
            ("ls_lA_warm", "omicsfs ls -lA, warm"),
            ("ls_A_warm", "omicsfs ls -A, warm"),
        )}
        directory = f"{APPRESULTS}/{WIDE}/Files"
        self.store_through(delayed=True)
        for run in range(self.runs):
            rows["api"].runs.append(self.api_paging())
            for cold, warm in (("ls_l_cold", ("ls_l_warm", "ls_lA_warm", "ls_A_warm")), ("ls_lA_cold", ())):
                self.cold_start()
                with self.omicsfs_mount(self.delayed_config, self.cache_dir("omicsfs-listing"), *MOUNT_OPTIONS) as mounted:
                    path = mounted.path / directory
                    os.stat(path)  # the lookups down to the directory, untimed: the listing itself is timed
                    rows[cold].runs.append(self.ls("-lA" if "lA" in cold else "-l", path, mounted.pid))
                    for key in warm:
                        rows[key].runs.append(self.ls("-" + key.split("_")[1], path, mounted.pid))
            note(f"listing run {run + 1}: " + ", ".join(
                f"{key} {series.runs[-1]['seconds']:.3f} s" for key, series in rows.items() if len(series.runs) == run + 1))
        return {key: series.summary() for key, series in rows.items()}

    # -- every platform --------------------------------------------------------------------------

    def server_copies(self, kind: str, sizes: set[int]) -> list[Path]:
        """The emulator's own files for `kind` whose sizes are among `sizes`: what `cold_start`
        reads beforehand so the store serves from memory (a file of the same size read in passing
        costs nothing)."""
        found = []
        for directory, _, names in os.walk(self.data_dir / kind):
            for name in names:
                path = Path(directory, name)
                if path.is_file() and path.stat().st_size in sizes:
                    found.append(path)
        return sorted(found)

    def discover(self) -> dict[str, dict]:
        """Walk one mount of every platform (untimed, uncounted) and pick, per platform, its
        largest file and its first coordinate-sorted BAM with a `.bai` beside it."""
        found: dict[str, dict] = {}
        with self.omicsfs_mount(self.all_config, self.cache_dir("discover"), *MOUNT_OPTIONS) as mounted:
            for kind in KINDS:
                entry: dict = {"errors": []}
                found[kind] = entry
                files: list[tuple[int, str]] = []
                try:
                    for directory, subdirectories, names in os.walk(mounted.path / kind):
                        # Hidden directories (Seven Bridges' `.tasks` shows the project files again)
                        # and entity metadata (`.json`, `.id`) are left out.
                        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
                        for name in names:
                            if not name.startswith("."):
                                path = Path(directory, name)
                                files.append((os.stat(path).st_size, str(path.relative_to(mounted.path))))
                except OSError as exc:
                    entry["errors"].append(f"walking {kind} failed: {exc}")
                    continue
                if not files:
                    entry["errors"].append(f"no files under {kind}")
                    continue
                size, largest = min(files, key=lambda item: (-item[0], item[1]))
                entry["largest"] = {"path": largest, "size": size}
                sizes = {path: length for length, path in files}
                for path in sorted(p for p in sizes if p.endswith(".bam") and f"{p}.bai" in sizes):
                    header = run_on_mount(["samtools", "view", "-H", str(mounted.path / path)], mounted.pid, timeout=120)
                    hd = next((line for line in header.stdout.splitlines() if line.startswith("@HD")), "")
                    if header.returncode == 0 and "SO:coordinate" in hd.split("\t"):
                        entry["bam"] = {"path": path, "size": sizes[path], "bai_size": sizes[f"{path}.bai"]}
                        break
                else:
                    entry["errors"].append(f"no coordinate-sorted BAM with a .bai beside it under {kind}")
                note(f"{kind}: {len(files)} files; largest {largest} ({size:,} bytes); BAM {entry.get('bam', {}).get('path')}")
        return found

    def bench_platform_read(self, kind: str, target: dict) -> tuple[Series, Series]:
        """Cold (fresh mount, empty cache dir) and warm (remount, same cache dir) reads of one
        platform's largest file; the path lookups are made untimed before each read, and counted
        apart (`lookup_*`)."""
        cold, warm = Series(f"{kind} cold"), Series(f"{kind} warm (remount, disk block cache)")
        size = target["size"]
        objects = self.server_copies(kind, {size})
        for run in range(self.runs):
            cache = self.cache_dir(f"platform-{kind}")
            for series in (cold, warm):
                self.cold_start(*objects)
                with self.omicsfs_mount(self.all_config, cache, *MOUNT_OPTIONS) as mounted:
                    path = mounted.path / target["path"]
                    with self.measure() as lookup:
                        os.stat(path)
                    with self.measure(mounted.pid) as entry:
                        entry["seconds"] = dd(path, size, mounted.pid)
                series.runs.append(entry | {"lookup_api_requests": lookup["api_requests"],
                                            "lookup_content_requests": content_requests(lookup)})
                note(f"{series.name} run {run + 1}: {size / entry['seconds'] / MB:.0f} MB/s, {entry['api_requests']} API + "
                     f"{content_requests(entry)} content requests, {content_bytes(entry) / size:.3f}x the size")
        return cold, warm

    def bench_platform_query(self, kind: str, bam: dict) -> Series:
        """One `samtools view -c BAM REGION` through a fresh mount with an empty cache dir; counts
        from after the mount, path lookups included."""
        series = Series(f"{kind} samtools view -c")
        region = QUERIES[1].regions[0]  # every emulator's BAMs are on chr1..chr3
        objects = self.server_copies(kind, {bam["size"], bam["bai_size"]})
        for run in range(self.runs):
            self.cold_start(*objects)
            with self.omicsfs_mount(self.all_config, self.cache_dir(f"query-{kind}"), *MOUNT_OPTIONS) as mounted:
                with self.measure(mounted.pid) as entry:
                    entry["reads"] = self.samtools_count([str(mounted.path / bam["path"]), region], mounted.pid)
            series.runs.append(entry)
            note(f"{series.name} run {run + 1}: {entry['api_requests']} API + {content_requests(entry)} content requests, "
                 f"{content_bytes(entry):,} bytes")
        return series

    def bench_platforms(self) -> dict[str, dict]:
        self.store_through(delayed=False)
        answer: dict[str, dict] = {}
        for kind, found in self.discover().items():
            row: dict = {"errors": list(found["errors"])}
            answer[kind] = row
            if "largest" in found:
                row["largest"] = target = found["largest"]
                try:
                    cold, warm = self.bench_platform_read(kind, target)
                    row["cold"], row["warm"] = cold.summary(), warm.summary()
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    row["errors"].append(f"reading {target['path']} failed: {exc}")
                    note(row["errors"][-1])
            if "bam" in found:
                row["bam"] = bam = found["bam"]
                try:
                    row["region_query"] = self.bench_platform_query(kind, bam).summary()
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    row["errors"].append(f"the region query on {bam['path']} failed: {exc}")
                    note(row["errors"][-1])
        return answer

    # -- all of it -------------------------------------------------------------------------------

    def run(self) -> dict:
        started = time.monotonic()
        load_before = os.getloadavg()
        self.setup()
        results: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        fill = page_fill(self.workdir)
        groups = self.args.only
        # The load average as each group starts and ends: on a shared machine, whether others ran meanwhile.
        results["load"] = {}

        def group(name: str, measure) -> None:
            before = os.getloadavg()[0]
            results[name] = measure()
            results["load"][name] = [before, os.getloadavg()[0]]

        if "region" in groups:
            group("region_query", lambda: {query.key: {
                "bam": query.bam.name, "regions": list(query.regions),
                "samtools_reads": self.samtools_reads(query), "rows": self.bench_region_query(query),
            } for query in QUERIES})
        if "sequential" in groups:
            group("sequential", self.bench_sequential)
        if "listing" in groups:
            group("listing", self.bench_listing)
        if "platforms" in groups:
            group("platforms", self.bench_platforms)
        results["machine"] = machine(load_before, self.drop_caches_allowed) | {"page_fill": fill}
        results["settings"] = {
            "runs": self.runs,
            "rtt_ms": self.args.rtt_ms,
            "proxy_window": self.args.window,
            "file": LARGE.path,
            "file_size": self.item(LARGE)["Size"],
            "read_command": "dd if=FILE of=/dev/null bs=1M",
            "mb": MB,
            "memory_cache": MEMORY_CACHE,
            "groups": list(groups),
            "mount_options": list(MOUNT_OPTIONS),
            "listing_directory": f"{WIDE}/Files",
            "listing_files": self.wide_count,
            "page_cap": 1000,
            "platforms": list(KINDS),
        }
        results["elapsed_s"] = time.monotonic() - started
        return results


def content_requests(entry: dict) -> int:
    """Content requests of a step, whoever served them: nginx (presigned URLs) or the emulator
    itself (Isabl's stream endpoint)."""
    return entry["store_gets"] + entry["emulator_store_requests"]


def content_bytes(entry: dict) -> int:
    return entry["store_bytes"] + entry["emulator_store_bytes"]


def main() -> int:
    parser = argparse.ArgumentParser(description="omicsfs read benchmark (see bench/README.md)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure; the median is reported (default 3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: one run per figure, no per-platform tables")
    parser.add_argument("--rtt-ms", type=float, default=DEFAULT_RTT_MS,
                        help=f"round-trip time the proxy adds for the region query and the listing (default {DEFAULT_RTT_MS:g})")
    parser.add_argument("--window", type=parse_size, default=DEFAULT_WINDOW,
                        help="bytes the proxy holds per connection and direction at most (default 8M)")
    parser.add_argument("--data", default=str(default_data_dir()),
                        help="emulator data directory (default ~/.cache/omicsfs/bench-data)")
    parser.add_argument("--large-file-size", default="1G", help="size of the large file (default 1G)")
    parser.add_argument("--deep-bam-size", default="230000000", help="about the size of the deep BAM (default 230000000)")
    parser.add_argument("--wide-directory", type=int, default=10_000, help="files in the listed directory (default 10000)")
    parser.add_argument("--workdir", help="where mount points and cache dirs go (default: a new dir in $TMPDIR)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the workdir (logs, nginx's access log) at the end")
    parser.add_argument("--no-rclone", action="store_true", help="skip the rclone rows")
    parser.add_argument("--no-platforms", action="store_true", help="skip the per-platform tables")
    parser.add_argument("--only", type=lambda text: [g for g in text.split(",") if g], default=list(GROUPS),
                        help=f"only these groups of figures, comma-separated: {','.join(GROUPS)} (default: all)")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="JSON results (default bench/results/latest.json)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.no_platforms = 1, True
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if unknown := set(args.only) - set(GROUPS):
        parser.error(f"--only: unknown groups {sorted(unknown)} (known: {','.join(GROUPS)})")
    if args.no_platforms and "platforms" in args.only:
        args.only.remove("platforms")
    if missing_tool("dd", "curl", "samtools", "nginx"):
        return 2
    bench = ReadBench(args)

    def run() -> int:
        results = bench.run()
        return save_and_print(results, render(results), args.output)  # render judges the goals into results["goals"]

    return run_bench(bench, run)


if __name__ == "__main__":
    sys.exit(main())
