#!/usr/bin/env python3
"""Read benchmark of omicsfs against curl, a do-nothing FUSE file system and rclone mount.

Everything runs on this machine in one go, against the emulator (`omicsfs emulator`) over loopback:

1. curl of the presigned URL of the sample account's large file (`Archive/reportarchive.bin`);
2. omicsfs, cold: that file read through a fresh mount with an empty cache dir;
3. omicsfs, warm: (a) read again in the same mount (the kernel's page cache), (b) read after
   unmounting and mounting again with the same cache dir (omicsfs's disk block cache);
4. `bench/nullfs.py`, a pyfuse3 file system whose reads return zeros: the FUSE ceiling;
5. `rclone mount` of `rclone serve http` over the emulator's objects directory, if rclone is installed;
6. what the object store saw for one `samtools view -c` region query on the sample BAM, and for one
   whole-file read of it, each through a fresh cold mount;
7. per platform (every emulated platform -- BaseSpace, BugSeq, Isabl, Seven Bridges -- mounted
   together in one omicsfs mount): cold and warm (remount, disk block cache) reads of the
   platform's largest file, and one `samtools view -c` region query on a coordinate-sorted BAM of
   the platform, with the API and content requests the emulator saw for each.

Every file read is `dd if=FILE of=/dev/null bs=1M`, timed from outside. Throughputs are in MB/s
(10^6 bytes per second); each figure is the median of `--runs` runs. The table is printed and
the raw runs go to `bench/results/latest.json`. See bench/README.md.

    .venv/bin/python bench/bench_read.py [--runs 3] [--data DIR] [--no-rclone]

Needs root for real numbers (the FUSE readahead tuning and `drop_caches`); without it the
figures are still measured, with the kernel defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from omicsfs.emulator import platform_modules, sampledata
from omicsfs.emulator.server import EmulatorProcess, free_port
from omicsfs.mount import daemon_pid, is_mounted, mount_points

HERE = Path(__file__).resolve().parent
NULLFS = HERE / "nullfs.py"
DEFAULT_OUTPUT = HERE / "results" / "latest.json"
OMICSFS = [sys.executable, "-m", "omicsfs"]
PLATFORM = "basespace"

LARGE_CONTAINER, LARGE_PATH = "Archive", "Archive/reportarchive.bin"
LARGE_IN_MOUNT = f"{PLATFORM}/Projects/Tumor-Normal WGS/AppResults/Archive/Files/Archive/reportarchive.bin"
BAM_CONTAINER, BAM_PATH, BAI_PATH = "BWA Alignment S1", "Alignment/S1.bam", "Alignment/S1.bam.bai"
BAM_IN_MOUNT = f"{PLATFORM}/Projects/Tumor-Normal WGS/AppResults/BWA Alignment S1/Files/Alignment/S1.bam"
REGION = "chr2:500000-501000"
#: Every emulated platform, in the order of the per-platform tables.
KINDS = sorted(module.__name__.rsplit(".", 1)[-1] for module in platform_modules())

MB = 1_000_000


def default_data_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "omicsfs" / "bench-data"


def note(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- mounts and processes ------------------------------------------------------------------------


def fuse_unmount(path: Path) -> None:
    """fusermount3 -u, then lazily if the mount is busy; quiet if it is gone already."""
    command = shutil.which("fusermount3") or shutil.which("fusermount")
    for extra in ([], ["-z"]):
        if not is_mounted(path):
            return
        args = [command, "-u", *extra] if command else ["umount", *(["-l"] if extra else [])]
        subprocess.run([*args, str(path)], capture_output=True, timeout=60, check=False)
    if is_mounted(path):
        note(f"warning: could not unmount {path}")


def stop_process(process: subprocess.Popen, grace: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=grace)


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie nobody reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds `pid` has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def fuse_readahead_kb(mountpoint: Path) -> int | None:
    device = os.stat(mountpoint).st_dev
    try:
        return int(Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb").read_text())
    except (OSError, ValueError):
        return None


# -- measuring -----------------------------------------------------------------------------------


def drop_caches() -> bool:
    """sync; echo 3 > /proc/sys/vm/drop_caches: True if it was allowed."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def read_whole(path: Path) -> None:
    with open(path, "rb", buffering=0) as file:
        while file.read(8 << 20):
            pass


def stop_pid(pid: int, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if `pid` still runs after `grace` seconds."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        deadline = time.monotonic() + grace
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pid_alive(pid):
            return


def run_on_mount(args: list[str], daemon: int | None, timeout: float, keep_stdout: bool = True) -> subprocess.CompletedProcess:
    """Run a command that reads from a FUSE mount.

    If it is interrupted (Ctrl-C, timeout) while blocked on the mount, a killed reader can stay in
    uninterruptible sleep until the FUSE daemon answers, which may take the daemon's whole retry
    schedule; so the daemon serving the mount is stopped, which fails the pending request.
    """
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if keep_stdout else subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:
        process.kill()
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            if daemon:
                note(f"{args[0]} is stuck in the mount; stopping the FUSE daemon {daemon}")
                stop_pid(daemon)
            process.wait(timeout=60)
        raise
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def timed_read(path: Path, expected: int, daemon: int | None = None) -> float:
    """Seconds `dd if=path of=/dev/null bs=1M` takes; fails unless it read `expected` bytes."""
    start = time.perf_counter()
    result = run_on_mount(["dd", f"if={path}", "of=/dev/null", "bs=1M"], daemon, timeout=1800)
    seconds = time.perf_counter() - start
    copied = re.search(r"^(\d+) bytes", result.stderr, re.MULTILINE)
    if result.returncode != 0 or not copied or int(copied.group(1)) != expected:
        raise RuntimeError(f"dd {path} failed (exit {result.returncode}): {result.stderr.strip()[-300:]}")
    return seconds


def measured_read(path: Path, expected: int, daemon: int | None, server: int | None) -> dict:
    """`timed_read`, with the CPU seconds the FUSE daemon and the HTTP server used meanwhile."""
    before = {name: cpu_seconds(pid) if pid else None for name, pid in (("daemon", daemon), ("server", server))}
    seconds = timed_read(path, expected, daemon)
    answer = {"seconds": seconds}
    for name, pid in (("daemon", daemon), ("server", server)):
        after = cpu_seconds(pid) if pid else None
        answer[f"{name}_cpu_s"] = after - before[name] if after is not None and before[name] is not None else None
    return answer


def object_bytes_by_id(ranges: list[str]) -> dict[str, int]:
    """Bytes asked for per object, from the emulator's `store_ranges` ("id:start-end")."""
    totals: dict[str, int] = {}
    for item in ranges:
        object_id, _, span = item.rpartition(":")
        start, _, end = span.partition("-")
        totals[object_id] = totals.get(object_id, 0) + int(end) - int(start) + 1
    return totals


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


@dataclass
class Series:
    """Runs of one measurement."""

    name: str
    runs: list[dict] = field(default_factory=list)
    error: str | None = None

    def values(self, key: str) -> list:
        return [run[key] for run in self.runs if run.get(key) is not None]

    def med(self, key: str):
        return median(self.values(key))

    def summary(self, size: int, extra: tuple[str, ...] = ()) -> dict:
        seconds = self.values("seconds")
        answer: dict = {"name": self.name, "runs": self.runs, "error": self.error}
        if seconds:
            answer.update(
                seconds=median(seconds),
                mb_s=size / median(seconds) / MB,
                mb_s_min=size / max(seconds) / MB,
                mb_s_max=size / min(seconds) / MB,
            )
        for key in ("store_requests", "store_bytes", "api_requests", "daemon_cpu_s", "server_cpu_s", *extra):
            if self.values(key):
                answer[key] = self.med(key)
        return answer


# -- the bench -----------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.runs = args.runs
        self.stack = contextlib.ExitStack()
        self.workdir = Path(tempfile.mkdtemp(prefix="omicsfs-bench-", dir=args.workdir))
        self.stack.callback(self._remove_workdir)
        self.emulator: EmulatorProcess | None = None
        self.drop_caches_allowed: bool | None = None
        self.mount_count = 0

    def _stop_emulator(self) -> None:
        assert self.emulator is not None
        try:
            self.emulator.stop()
        except subprocess.TimeoutExpired:
            self.emulator.process.kill()
            self.emulator.process.wait()

    def _remove_workdir(self) -> None:
        live = [m for m in mount_points() if m.startswith(str(self.workdir) + "/")]
        if live:
            note(f"warning: leaving {self.workdir}: still mounted: {', '.join(live)}")
            return
        shutil.rmtree(self.workdir, ignore_errors=True)

    def close(self) -> None:
        self.stack.close()

    # -- setup ---------------------------------------------------------------------------------

    def start_emulator(self) -> None:
        data = Path(self.args.data).expanduser()
        note(f"starting the emulator (data {data}; the first run generates the sample data, ~15 s)")
        # With SIGINT blocked, which the child inherits: a Ctrl-C in the terminal (sent to the whole
        # process group) must not stop the server under a mount mid-read; cleanup stops it, last.
        # Its stdout goes to our stderr, with the progress lines, so that stdout holds only the table.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        sys.stdout.flush()
        saved_stdout = os.dup(1)
        os.dup2(2, 1)
        try:
            self.emulator = EmulatorProcess(data, large_file_size=self.args.large_file_size)
            self.stack.callback(self._stop_emulator)
        finally:
            os.dup2(saved_stdout, 1)
            os.close(saved_stdout)
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.emulator.wait_ready()
        self.server_pid = self.emulator.process.pid
        account_dir = data / PLATFORM
        account = sampledata.load(account_dir)
        files = {(container["Name"], item["Path"]): item for _, container, item in sampledata.iter_files(account)}
        self.large = files[(LARGE_CONTAINER, LARGE_PATH)]
        self.bam = files[(BAM_CONTAINER, BAM_PATH)]
        self.bai = files[(BAM_CONTAINER, BAI_PATH)]
        self.objects_dir = account_dir / "objects"
        self.large_object = sampledata.object_path(account_dir, self.large["Id"])
        self.size = self.large["Size"]
        self.config = self.workdir / "config.toml"
        self.config.write_text(
            f'[platforms."{PLATFORM}"]\nkind = "{PLATFORM}"\nurl = "{self.emulator.url}/{PLATFORM}"\n'
            f'token = "{self.emulator.token}"\n'
        )
        self.config.chmod(0o600)
        # Every platform in one mount, as tests/conftest.py's `platform_table` configures them.
        self.data_dir = data
        self.all_config = self.workdir / "config-all.toml"
        self.all_config.write_text("".join(
            f'[platforms."{kind}"]\nkind = "{kind}"\nurl = "{self.emulator.url}/{kind}"\n'
            f'token = "{self.emulator.token}"\n\n' for kind in KINDS
        ))
        self.all_config.chmod(0o600)

    def cold_start(self, *objects: Path) -> None:
        """Before a cold run: drop the kernel's caches (where allowed), then read the emulator's own
        copy of the objects once, so that every run, curl's included, is served from memory."""
        start = time.monotonic()
        self.drop_caches_allowed = drop_caches()
        for path in objects:
            read_whole(path)
        if time.monotonic() - start > 5:
            note(f"(sync, drop_caches and re-reading the server's copy took {time.monotonic() - start:.0f} s)")

    def presigned_url(self, file_id: str) -> str:
        assert self.emulator is not None
        response = httpx.get(
            f"{self.emulator.url}/{PLATFORM}/v1pre3/files/{file_id}/content",
            params={"redirect": "meta"},
            headers={"x-access-token": self.emulator.token},
            timeout=30,
        ).raise_for_status()
        return response.json()["Response"]["HrefContent"]

    def new_mountpoint(self, kind: str) -> Path:
        self.mount_count += 1
        path = self.workdir / f"mnt-{kind}-{self.mount_count}"
        path.mkdir()
        return path

    # -- mounts --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def omicsfs_mount(self, cache_dir: Path, config: Path | None = None):
        """`omicsfs mount` (background mode, as a user would); yields (mountpoint, daemon pid).
        `config` defaults to the BaseSpace-only one."""
        mountpoint = self.new_mountpoint("omicsfs")
        log = self.workdir / f"omicsfs-{self.mount_count}.log"
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(self._unmount_omicsfs, mountpoint)
            result = subprocess.run(
                [*OMICSFS, "mount", str(mountpoint), "--config", str(config or self.config), "--cache-dir", str(cache_dir),
                 "--log-file", str(log)], capture_output=True, text=True, timeout=300, check=False,
            )
            if result.returncode != 0 or not is_mounted(mountpoint):
                raise RuntimeError(f"omicsfs mount failed: {result.stderr.strip()}\n{tail(log)}")
            yield mountpoint, daemon_pid(mountpoint)


    def _unmount_omicsfs(self, mountpoint: Path) -> None:
        pid = daemon_pid(mountpoint)
        if is_mounted(mountpoint):
            subprocess.run([*OMICSFS, "unmount", str(mountpoint)], capture_output=True, timeout=60, check=False)
            fuse_unmount(mountpoint)  # lazily, if `omicsfs unmount` could not
        elif pid is not None:  # interrupted while mounting: the daemon may not have mounted yet
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if pid is None:
            return
        # Wait for the daemon to finish (its cache writes included) before the cache dir is reused.
        deadline = time.monotonic() + 30
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            note(f"warning: the omicsfs daemon {pid} outlived its mount; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    @contextlib.contextmanager
    def nullfs_mount(self):
        mountpoint = self.new_mountpoint("nullfs")
        log = self.workdir / f"nullfs-{self.mount_count}.log"
        with open(log, "wb") as log_output:
            process = subprocess.Popen(
                [sys.executable, str(NULLFS), str(mountpoint), "--size", str(self.size)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_output, start_new_session=True,
            )
        try:
            ready, _, _ = select.select([process.stdout], [], [], 60)
            line = process.stdout.readline() if ready else b""
            if line.strip() != b"ready":
                raise RuntimeError(f"nullfs did not mount: {tail(log)}")
            yield mountpoint, process.pid
        finally:
            fuse_unmount(mountpoint)
            stop_process(process)
            process.stdout.close()

    @contextlib.contextmanager
    def rclone_serve(self):
        port = free_port()
        log = self.workdir / "rclone-serve.log"
        with open(log, "wb") as log_output:
            process = subprocess.Popen(
                ["rclone", "serve", "http", str(self.objects_dir), "--addr", f"127.0.0.1:{port}"],
                stdin=subprocess.DEVNULL, stdout=log_output, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            url = f"http://127.0.0.1:{port}/"
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"rclone serve http exited with status {process.returncode}: {tail(log)}")
                try:
                    httpx.head(url, timeout=2)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"rclone serve http did not answer at {url} within 60 s") from None
                    time.sleep(0.1)
            yield url, process.pid
        finally:
            stop_process(process)

    @contextlib.contextmanager
    def rclone_mount(self, url: str, name: str):
        mountpoint = self.new_mountpoint("rclone")
        log = self.workdir / f"rclone-mount-{self.mount_count}.log"
        with open(log, "wb") as log_output:
            process = subprocess.Popen(
                ["rclone", "mount", ":http:", str(mountpoint), "--http-url", url, "--read-only", "--vfs-cache-mode", "off"],
                stdin=subprocess.DEVNULL, stdout=log_output, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"rclone mount exited with status {process.returncode}: {tail(log)}")
                if is_mounted(mountpoint):
                    try:
                        if os.stat(mountpoint / name).st_size == self.size:
                            break
                    except OSError:
                        pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"rclone mount did not show {name} within 60 s: {tail(log)}")
                time.sleep(0.1)
            yield mountpoint, process.pid
        finally:
            fuse_unmount(mountpoint)
            stop_process(process)

    # -- the measurements -------------------------------------------------------------------------

    def bench_curl(self) -> Series:
        series = Series("curl (presigned URL)")
        for run in range(self.runs):
            self.cold_start(self.large_object)
            url = self.presigned_url(self.large["Id"])
            server_cpu = cpu_seconds(self.server_pid)
            result = subprocess.run(
                ["curl", "-s", "-o", "/dev/null", "-w", "%{time_total} %{size_download} %{http_code}", url],
                capture_output=True, text=True, timeout=1800, check=False,
            )
            seconds, size, status = result.stdout.split()
            if result.returncode != 0 or status != "200" or int(float(size)) != self.size:
                raise RuntimeError(f"curl failed: exit {result.returncode}, HTTP {status}, {size} bytes")
            series.runs.append({"seconds": float(seconds), "server_cpu_s": cpu_seconds(self.server_pid) - server_cpu})
            note(f"curl run {run + 1}: {self.size / float(seconds) / MB:.0f} MB/s")
        return series

    def bench_omicsfs(self) -> tuple[Series, Series, Series]:
        cold = Series("omicsfs cold (fresh mount, empty cache dir)")
        page = Series("omicsfs warm (a): same mount, page cache")
        disk = Series("omicsfs warm (b): remount, disk block cache")
        assert self.emulator is not None
        for run in range(self.runs):
            cache_dir = self.workdir / f"cache-{run}"
            self.cold_start(self.large_object)
            with self.omicsfs_mount(cache_dir) as (mountpoint, pid):
                path = mountpoint / LARGE_IN_MOUNT
                os.stat(path)  # the path lookups, outside the timed read
                readahead = fuse_readahead_kb(mountpoint)
                self.emulator.reset_stats()
                entry = measured_read(path, self.size, pid, self.server_pid)
                seconds = entry["seconds"]
                stats = self.emulator.stats()
                cold.runs.append(entry | {
                    "store_requests": stats["store_requests"], "store_bytes": stats["store_bytes"],
                    "api_requests": stats["api_requests"], "read_ahead_kb": readahead,
                })
                note(f"omicsfs cold run {run + 1}: {self.size / seconds / MB:.0f} MB/s, "
                     f"{stats['store_requests']} GETs, {stats['store_bytes'] / self.size:.3f}x the size")
                self.emulator.reset_stats()
                entry = measured_read(path, self.size, pid, None)
                seconds = entry["seconds"]
                stats = self.emulator.stats()
                page.runs.append(entry | {"store_requests": stats["store_requests"], "store_bytes": stats["store_bytes"]})
                note(f"omicsfs warm (a) run {run + 1}: {self.size / seconds / MB:.0f} MB/s")
            with self.omicsfs_mount(cache_dir) as (mountpoint, pid):
                path = mountpoint / LARGE_IN_MOUNT
                os.stat(path)
                self.emulator.reset_stats()
                entry = measured_read(path, self.size, pid, None)
                seconds = entry["seconds"]
                stats = self.emulator.stats()
                disk.runs.append(entry | {"store_requests": stats["store_requests"], "store_bytes": stats["store_bytes"]})
                note(f"omicsfs warm (b) run {run + 1}: {self.size / seconds / MB:.0f} MB/s, {stats['store_requests']} GETs")
            shutil.rmtree(cache_dir, ignore_errors=True)
        return cold, page, disk

    def bench_nullfs(self) -> Series:
        series = Series("nullfs (do-nothing pyfuse3: FUSE ceiling)")
        for run in range(self.runs):
            self.cold_start()
            with self.nullfs_mount() as (mountpoint, pid):
                readahead = fuse_readahead_kb(mountpoint)
                entry = measured_read(mountpoint / "zeros", self.size, pid, None)
            seconds = entry["seconds"]
            series.runs.append(entry | {"read_ahead_kb": readahead})
            note(f"nullfs run {run + 1}: {self.size / seconds / MB:.0f} MB/s")
        return series

    def bench_rclone(self) -> Series:
        series = Series("rclone mount (http, --vfs-cache-mode off)")
        if self.args.no_rclone:
            series.error = "skipped (--no-rclone)"
            return series
        if not shutil.which("rclone"):
            series.error = "rclone is not on PATH"
            return series
        try:
            with self.rclone_serve() as (url, server_pid):
                name = self.large["Id"]
                for run in range(self.runs):
                    self.cold_start(self.large_object)
                    with self.rclone_mount(url, name) as (mountpoint, pid):
                        readahead = fuse_readahead_kb(mountpoint)
                        entry = measured_read(mountpoint / name, self.size, pid, server_pid)
                    seconds = entry["seconds"]
                    series.runs.append(entry | {"read_ahead_kb": readahead})
                    note(f"rclone run {run + 1}: {self.size / seconds / MB:.0f} MB/s")
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            series.error = f"rclone failed: {exc}"
            note(series.error)
        return series

    def bench_bam(self) -> tuple[Series, Series]:
        query = Series(f"samtools view -c S1.bam {REGION}")
        whole = Series("cat S1.bam (whole file)")
        assert self.emulator is not None
        account_dir = Path(self.args.data).expanduser() / PLATFORM
        objects = [sampledata.object_path(account_dir, item["Id"]) for item in (self.bam, self.bai)]
        for run in range(self.runs):
            for series, kind in ((query, "query"), (whole, "cat")):
                cache_dir = self.workdir / f"bam-cache-{kind}-{run}"
                self.cold_start(*objects)
                with self.omicsfs_mount(cache_dir) as (mountpoint, pid):
                    path = mountpoint / BAM_IN_MOUNT
                    self.emulator.reset_stats()  # after the mount's credential check; lookups count
                    start = time.perf_counter()
                    if kind == "query":
                        result = run_on_mount(["samtools", "view", "-c", str(path), REGION], pid, timeout=300)
                    else:
                        result = run_on_mount(["cat", str(path)], pid, timeout=300, keep_stdout=False)
                    seconds = time.perf_counter() - start
                    stats = self.emulator.stats()
                if result.returncode != 0:
                    raise RuntimeError(f"{series.name} failed: {result.stderr.strip()[-300:]}")
                by_object = object_bytes_by_id(stats["store_ranges"])
                entry = {
                    "seconds": seconds, "store_requests": stats["store_requests"], "store_bytes": stats["store_bytes"],
                    "api_requests": stats["api_requests"], "bam_bytes_asked": by_object.get(self.bam["Id"], 0),
                    "bai_bytes_asked": by_object.get(self.bai["Id"], 0), "ranges": stats["store_ranges"],
                }
                if kind == "query":
                    entry["reads"] = int(result.stdout.strip())
                series.runs.append(entry)
                shutil.rmtree(cache_dir, ignore_errors=True)
                note(f"{series.name} run {run + 1}: {stats['store_requests']} GETs, {stats['store_bytes']} bytes, "
                     f"{stats['api_requests']} API requests")
        return query, whole

    # -- every platform ----------------------------------------------------------------------

    def server_copies(self, kind: str, sizes: set[int]) -> list[Path]:
        """The emulator's own files for `kind` whose sizes are among `sizes`: what `cold_start`
        reads beforehand so the server serves from memory (a file of the same size read in
        passing costs nothing)."""
        found = []
        for directory, _, names in os.walk(self.data_dir / kind):
            for name in names:
                path = Path(directory, name)
                with contextlib.suppress(OSError):
                    if path.is_file() and path.stat().st_size in sizes:
                        found.append(path)
        return sorted(found)

    def discover(self) -> dict[str, dict]:
        """Walk one mount of every platform (untimed, uncounted) and pick, per platform, its
        largest file and its first coordinate-sorted BAM with a `.bai` beside it."""
        found: dict[str, dict] = {}
        with self.omicsfs_mount(self.workdir / "cache-discover", self.all_config) as (mountpoint, pid):
            for kind in KINDS:
                entry: dict = {"errors": []}
                found[kind] = entry
                files: list[tuple[int, str]] = []
                try:
                    for directory, subdirectories, names in os.walk(mountpoint / kind):
                        # Hidden directories (Seven Bridges' `.tasks` shows the project files again)
                        # and entity metadata (`.json`, `.id`) are left out.
                        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
                        for name in names:
                            if name.startswith("."):
                                continue
                            path = Path(directory, name)
                            files.append((os.stat(path).st_size, str(path.relative_to(mountpoint))))
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
                    header = run_on_mount(["samtools", "view", "-H", str(mountpoint / path)], pid, timeout=120)
                    hd = next((line for line in header.stdout.splitlines() if line.startswith("@HD")), "")
                    if header.returncode == 0 and "SO:coordinate" in hd.split("\t"):
                        entry["bam"] = {"path": path, "size": sizes[path], "bai_size": sizes[f"{path}.bai"]}
                        break
                else:
                    entry["errors"].append(f"no coordinate-sorted BAM with a .bai beside it under {kind}")
                note(f"{kind}: {len(files)} files; largest {largest} ({size:,} bytes); "
                     f"BAM {entry.get('bam', {}).get('path')}")
        shutil.rmtree(self.workdir / "cache-discover", ignore_errors=True)
        return found

    def bench_platform_read(self, kind: str, target: dict) -> tuple[Series, Series]:
        """Cold (fresh mount, empty cache dir) and warm (remount, same cache dir) reads of one
        platform's largest file, through the all-platform mount. The path lookups are made
        untimed before each read, and counted apart (`lookup_*`)."""
        cold = Series(f"{kind} cold")
        warm = Series(f"{kind} warm (remount, disk block cache)")
        assert self.emulator is not None
        size = target["size"]
        objects = self.server_copies(kind, {size})
        for run in range(self.runs):
            cache_dir = self.workdir / f"cache-{kind}-{run}"
            for series, fresh in ((cold, True), (warm, False)):
                if fresh:
                    self.cold_start(*objects)
                with self.omicsfs_mount(cache_dir, self.all_config) as (mountpoint, pid):
                    path = mountpoint / target["path"]
                    self.emulator.reset_stats()  # after the mount's credential checks
                    os.stat(path)  # the path lookups, outside the timed read
                    lookup = self.emulator.stats()
                    self.emulator.reset_stats()
                    entry = measured_read(path, size, pid, self.server_pid)
                    stats = self.emulator.stats()
                series.runs.append(entry | {
                    "store_requests": stats["store_requests"], "store_bytes": stats["store_bytes"],
                    "api_requests": stats["api_requests"], "lookup_api_requests": lookup["api_requests"],
                    "lookup_store_requests": lookup["store_requests"], "lookup_store_bytes": lookup["store_bytes"],
                })
                note(f"{series.name} run {run + 1}: {size / entry['seconds'] / MB:.0f} MB/s "
                     f"({entry['seconds'] * 1000:.0f} ms), {stats['api_requests']} API + {stats['store_requests']} "
                     f"content requests, {stats['store_bytes'] / size:.3f}x the size")
            shutil.rmtree(cache_dir, ignore_errors=True)
        return cold, warm

    def bench_platform_query(self, kind: str, bam: dict) -> Series:
        """One `samtools view -c BAM REGION` through a fresh mount with an empty cache dir; counts
        from after the mount (lookups included), as for the BaseSpace BAM figures."""
        series = Series(f"{kind} samtools view -c")
        assert self.emulator is not None
        objects = self.server_copies(kind, {bam["size"], bam["bai_size"]})
        for run in range(self.runs):
            cache_dir = self.workdir / f"query-cache-{kind}-{run}"
            self.cold_start(*objects)
            with self.omicsfs_mount(cache_dir, self.all_config) as (mountpoint, pid):
                self.emulator.reset_stats()
                start = time.perf_counter()
                result = run_on_mount(["samtools", "view", "-c", str(mountpoint / bam["path"]), REGION], pid, timeout=300)
                seconds = time.perf_counter() - start
                stats = self.emulator.stats()
            shutil.rmtree(cache_dir, ignore_errors=True)
            if result.returncode != 0:
                raise RuntimeError(f"samtools view -c on {kind} failed: {result.stderr.strip()[-300:]}")
            series.runs.append({
                "seconds": seconds, "reads": int(result.stdout.strip()), "store_requests": stats["store_requests"],
                "store_bytes": stats["store_bytes"], "api_requests": stats["api_requests"], "ranges": stats["store_ranges"],
            })
            note(f"{series.name} run {run + 1}: {stats['api_requests']} API + {stats['store_requests']} content requests, "
                 f"{stats['store_bytes']:,} bytes ({stats['store_bytes'] / bam['size']:.3f}x the BAM)")
        return series

    def bench_platforms(self) -> dict[str, dict]:
        """The per-platform figures: what `render` prints in the two per-platform tables."""
        answer: dict[str, dict] = {}
        extra = ("lookup_api_requests", "lookup_store_requests", "lookup_store_bytes", "reads")
        for kind, found in self.discover().items():
            row: dict = {"errors": list(found["errors"])}
            answer[kind] = row
            if "largest" in found:
                target = found["largest"]
                row["largest"] = dict(target)
                try:
                    cold, warm = self.bench_platform_read(kind, target)
                    row["cold"] = cold.summary(target["size"], extra)
                    row["warm"] = warm.summary(target["size"], extra)
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    row["errors"].append(f"reading {target['path']} failed: {exc}")
                    note(row["errors"][-1])
            if "bam" in found:
                bam = found["bam"]
                row["bam"] = dict(bam)
                try:
                    row["region_query"] = self.bench_platform_query(kind, bam).summary(bam["size"], extra)
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    row["errors"].append(f"the region query on {bam['path']} failed: {exc}")
                    note(row["errors"][-1])
        return answer

    # -- all of it -----------------------------------------------------------------------------

    def run(self) -> dict:
        started = time.monotonic()
        load_before = os.getloadavg()
        self.start_emulator()
        # curl first, the FUSE ceiling next, then omicsfs, rclone and the BAM figures.
        curl = self.bench_curl()
        nullfs = self.bench_nullfs()
        cold, page, disk = self.bench_omicsfs()
        rclone = self.bench_rclone()
        query, whole = self.bench_bam()
        platforms = self.bench_platforms()
        elapsed = time.monotonic() - started
        return {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {
                "kernel": platform.release(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "load_average_before": load_before,
                "load_average_after": os.getloadavg(),
                "root": os.geteuid() == 0,
                "drop_caches_allowed": self.drop_caches_allowed,
                "versions": tool_versions(),
            },
            "settings": {
                "runs": self.runs,
                "file": LARGE_PATH,
                "file_size": self.size,
                "read_command": "dd if=FILE of=/dev/null bs=1M",
                "mb": MB,
                "bam_size": self.bam["Size"],
                "bai_size": self.bai["Size"],
                "region": REGION,
                "platforms": list(KINDS),
            },
            "throughput": {key: series.summary(self.size) for key, series in (
                ("curl", curl), ("nullfs", nullfs), ("omicsfs_cold", cold), ("omicsfs_warm_page_cache", page),
                ("omicsfs_warm_disk_cache", disk), ("rclone", rclone))},
            "bam": {key: series.summary(self.bam["Size"]) | {"reads": series.med("reads")}
                    for key, series in (("region_query", query), ("whole_read", whole))},
            "platforms": platforms,
            "elapsed_s": elapsed,
        }


def tool_versions() -> dict:
    versions = {}
    for name, command in (("curl", ["curl", "--version"]), ("rclone", ["rclone", "version"]),
                          ("samtools", ["samtools", "--version"])):
        try:
            output = subprocess.run(command, capture_output=True, timeout=20, check=False).stdout
            versions[name] = output.decode(errors="replace").splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            versions[name] = None
    try:
        import pyfuse3

        versions["pyfuse3"] = pyfuse3.__version__
    except (ImportError, AttributeError):
        versions["pyfuse3"] = None
    return versions


# -- the table -----------------------------------------------------------------------------------


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _binary_size(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} bytes"


def render(results: dict) -> str:
    settings, machine = results["settings"], results["machine"]
    size = settings["file_size"]
    rows = results["throughput"]
    ceiling = rows["nullfs"].get("mb_s")
    curl = rows["curl"].get("mb_s")
    lines = [
        (f"omicsfs read benchmark: {settings['file']} ({_binary_size(size)}), {settings['read_command']}, "
         f"median of {settings['runs']} runs; MB = 10^6 bytes"),
        (f"machine: {machine['cpus']} CPUs, Linux {machine['kernel']}, load average "
         f"{machine['load_average_before'][0]:.1f} before / {machine['load_average_after'][0]:.1f} after; "
         f"drop_caches {'used' if machine['drop_caches_allowed'] else 'not allowed'}"),
        "",
        (f"{'':46} {'MB/s':>6} {'(min-max)':>13} {'seconds':>8} {'x nullfs':>9} {'x curl':>7} "
         f"{'GETs':>5} {'fetched/size':>13} {'FUSE CPU s':>11} {'HTTP CPU s':>11}"),
    ]
    order = ("curl", "nullfs", "omicsfs_cold", "omicsfs_warm_page_cache", "omicsfs_warm_disk_cache", "rclone")
    for key in order:
        row = rows[key]
        if row.get("mb_s") is None:
            lines.append(f"{row['name']:46} {row.get('error') or 'no figure'}")
            continue
        mb_s = row["mb_s"]
        spread = f"({row['mb_s_min']:.0f}-{row['mb_s_max']:.0f})"
        fetched = row.get("store_bytes")
        lines.append(
            f"{row['name']:46} {mb_s:6.0f} {spread:>13} {row['seconds']:8.2f} "
            f"{_fmt(mb_s / ceiling if ceiling else None, '9.2f'):>9} {_fmt(mb_s / curl if curl else None, '7.2f'):>7} "
            f"{_fmt(row.get('store_requests'), '5.0f'):>5} "
            f"{_fmt(fetched / size if fetched is not None else None, '12.3f') + ('x' if fetched is not None else ''):>13} "
            f"{_fmt(row.get('daemon_cpu_s'), '11.1f'):>11} {_fmt(row.get('server_cpu_s'), '11.1f'):>11}"
        )
        if row.get("error"):
            lines.append(f"{'':46} note: {row['error']}")
    bam_size = settings["bam_size"]
    lines += [
        "",
        (f"S1.bam ({bam_size:,} bytes; S1.bam.bai {settings['bai_size']:,} bytes), each run through a fresh mount "
         "with an empty cache dir; server-side counts from after the mount:"),
        (f"{'':46} {'reads':>6} {'API req':>8} {'GETs':>5} {'bytes fetched':>14} {'x BAM size':>11} "
         f"{'BAM asked':>10} {'BAI asked':>10}"),
    ]
    for key in ("region_query", "whole_read"):
        row = results["bam"][key]
        if row.get("store_bytes") is None:
            lines.append(f"{row['name']:46} {row.get('error') or 'no figure'}")
            continue
        bam_asked = median([r["bam_bytes_asked"] for r in row["runs"]])
        bai_asked = median([r["bai_bytes_asked"] for r in row["runs"]])
        lines.append(
            f"{row['name']:46} {_fmt(row.get('reads'), '6.0f'):>6} {row['api_requests']:8.0f} {row['store_requests']:5.0f} "
            f"{row['store_bytes']:14,.0f} {row['store_bytes'] / bam_size:10.3f}x {bam_asked:10,.0f} {bai_asked:10,.0f}"
        )
    lines += render_platforms(results)
    lines += ["", f"whole bench: {results['elapsed_s']:.0f} s"]
    return "\n".join(lines)


def render_platforms(results: dict) -> list[str]:
    """The two per-platform tables: sequential cold/warm reads, and the region query."""
    platforms = results.get("platforms") or {}
    runs = results["settings"]["runs"]
    lines = [
        "",
        (f"Per platform ({len(platforms)} platforms in one omicsfs mount): sequential read of each platform's largest "
         f"file, median of {runs} runs."),
        ("cold = fresh mount, empty cache dir; warm = unmount, mount again with the same cache dir (disk block cache). "
         "Requests the emulator saw:"),
        ("lookup = the path's lookups, before the read (untimed); API = platform API requests; content = object-store "
         "GETs (Isabl: its API's stream endpoint)."),
        (f"{'':13} {'':13}  {' cold read ':-^14}  {' warm read ':-^14}  {' lookup ':-^11}  "
         f"{' cold read requests ':-^26}  {' warm read ':-^11}"),
        (f"{'':13} {'size bytes':>13}  {'MB/s':>6} {'ms':>7}  {'MB/s':>6} {'ms':>7}  {'API':>3} {'content':>7}  "
         f"{'API':>3} {'content':>7} {'fetched/size':>14}  {'API':>3} {'content':>7}"),
    ]
    small = False
    for kind, row in platforms.items():
        cold, warm, largest = row.get("cold") or {}, row.get("warm") or {}, row.get("largest") or {}
        if cold.get("mb_s") is None:
            lines.append(f"{kind:13} {'; '.join(row['errors']) or 'no figure'}")
            continue
        size = largest["size"]
        small = small or size < 100 * MB
        fetched = cold.get("store_bytes")
        lines.append(
            f"{kind:13} {size:13,}  {cold['mb_s']:6.0f} {cold['seconds'] * 1000:7.0f}  "
            f"{_fmt(warm.get('mb_s'), '6.0f'):>6} {_fmt(warm['seconds'] * 1000 if warm.get('seconds') else None, '7.0f'):>7}  "
            f"{_fmt(cold.get('lookup_api_requests'), '3.0f'):>3} {_fmt(cold.get('lookup_store_requests'), '7.0f'):>7}  "
            f"{_fmt(cold.get('api_requests'), '3.0f'):>3} {_fmt(cold.get('store_requests'), '7.0f'):>7} "
            f"{_fmt(fetched / size if fetched is not None else None, '13.3f') + ('x' if fetched is not None else ''):>14}  "
            f"{_fmt(warm.get('api_requests'), '3.0f'):>3} {_fmt(warm.get('store_requests'), '7.0f'):>7}"
        )
        if row["errors"]:
            lines.append(f"{'':13} note: {'; '.join(row['errors'])}")
    if small:
        lines.append(f"{'':13} (files of a few MB take milliseconds: their MB/s measure per-file latency -- "
                     "download URL, first GETs, dd's start -- more than throughput)")
    for kind, row in platforms.items():
        if row.get("largest"):
            lines.append(f"{'':13} {kind}: {row['largest']['path'].partition('/')[2]}")
    lines += [
        "",
        (f"Per platform (same mount): samtools view -c BAM {results['settings']['region']} on a coordinate-sorted "
         f"BAM with its .bai, median of {runs} runs,"),
        ("each through a fresh mount with an empty cache dir; requests counted from after the mount (path lookups "
         "included); content = object-store GETs (Isabl: stream):"),
        (f"{'':13} {'BAM bytes':>11} {'BAI bytes':>9} {'reads':>6} {'API req':>8} {'content req':>11} "
         f"{'bytes fetched':>14} {'x BAM size':>11} {'seconds':>8}"),
    ]
    for kind, row in platforms.items():
        query, bam = row.get("region_query") or {}, row.get("bam") or {}
        if query.get("store_bytes") is None:
            errors = [e for e in row["errors"] if "BAM" in e or "region" in e or "walking" in e]
            lines.append(f"{kind:13} {'; '.join(errors) or 'no figure'}")
            continue
        lines.append(
            f"{kind:13} {bam['size']:11,} {bam['bai_size']:9,} {_fmt(query.get('reads'), '6.0f'):>6} "
            f"{query['api_requests']:8.0f} {query['store_requests']:11.0f} {query['store_bytes']:14,.0f} "
            f"{query['store_bytes'] / bam['size']:10.3f}x {query['seconds']:8.2f}"
        )
    for kind, row in platforms.items():
        if row.get("bam"):
            lines.append(f"{'':13} {kind}: {row['bam']['path'].partition('/')[2]}")
    return lines


# -- main ----------------------------------------------------------------------------------------


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description="omicsfs read benchmark (see bench/README.md)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure; the median is reported (default 3)")
    parser.add_argument("--data", default=str(default_data_dir()),
                        help="emulator data directory (default ~/.cache/omicsfs/bench-data)")
    parser.add_argument("--large-file-size", default="1G",
                        help="size of the large file (default 1G; another size regenerates the data dir)")
    parser.add_argument("--workdir", help="where mount points and cache dirs go (default: a new dir in $TMPDIR)")
    parser.add_argument("--no-rclone", action="store_true", help="skip the rclone baseline")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="JSON results (default bench/results/latest.json)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    for tool in ("dd", "curl", "samtools"):
        if not shutil.which(tool):
            print(f"bench: {tool} is not on PATH", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    bench = Bench(args)
    try:
        results = bench.run()
    except KeyboardInterrupt:
        note("interrupted; cleaning up")
        return 130
    finally:
        # A second Ctrl-C must not cut the cleanup short and leave mounts behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.close()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1) + "\n")
    print(render(results))
    print(f"\n(JSON: {output})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
