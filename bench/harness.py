"""What every benchmark of omicsfs needs, reading or (later) writing: the emulator, the nginx store
and the delaying proxy in front of them, mounts of omicsfs and of its yardsticks (a do-nothing FUSE,
rclone mount), dropping caches, measuring a step as the daemon and the store saw it, and cleaning
everything up on the way out, Ctrl-C and SIGTERM included.

Every mount and process a `Harness` starts is registered on its exit stack the moment it exists,
so `close()` unmounts and stops all of it, in reverse order, whatever happened.
"""

from __future__ import annotations

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

from delayproxy import DelayProxy
from omicsfs.emulator.server import EmulatorProcess, free_port
from omicsfs.mount import daemon_pid, is_mounted, mount_points
from store import NginxStore

HERE = Path(__file__).resolve().parent
NULLFS = HERE / "nullfs.py"
OMICSFS = [sys.executable, "-m", "omicsfs"]
MB = 1_000_000
MiB = 1 << 20
GiB = 1 << 30


def default_data_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "omicsfs" / "bench-data"


def note(message: str) -> None:
    """Progress, on stderr: stdout holds only the tables."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- processes -----------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie nobody reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def cpu_seconds(*pids: int | None) -> float | None:
    """User + system CPU seconds the processes have used so far (None if one is unknown)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, TypeError):
            return None
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def peak_rss(pid: int | None) -> int | None:
    """The most resident memory `pid` has held since it started (VmHWM), in bytes."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (OSError, TypeError):
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def stop_process(process: subprocess.Popen, grace: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=grace)


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


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


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


# -- caches and reads ----------------------------------------------------------------------------


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


def dd(path: Path, expected: int, daemon: int | None = None) -> float:
    """Seconds `dd if=path of=/dev/null bs=1M` takes; fails unless it read `expected` bytes."""
    start = time.perf_counter()
    result = run_on_mount(["dd", f"if={path}", "of=/dev/null", "bs=1M"], daemon, timeout=1800)
    seconds = time.perf_counter() - start
    copied = re.search(r"^(\d+) bytes", result.stderr, re.MULTILINE)
    if result.returncode != 0 or not copied or int(copied.group(1)) != expected:
        raise RuntimeError(f"dd {path} failed (exit {result.returncode}): {result.stderr.strip()[-300:]}")
    return seconds


def fuse_readahead_kb(mountpoint: Path) -> int | None:
    device = os.stat(mountpoint).st_dev
    try:
        return int(Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb").read_text())
    except (OSError, ValueError):
        return None


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


# -- series of runs ------------------------------------------------------------------------------


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


@dataclass
class Series:
    """The runs of one row: each run a dict of figures; a row's figure is the median over its runs."""

    name: str
    runs: list[dict] = field(default_factory=list)
    error: str | None = None

    def values(self, key: str) -> list:
        return [run[key] for run in self.runs if run.get(key) is not None]

    def med(self, key: str):
        return median(self.values(key))

    def summary(self) -> dict:
        """The medians of every numeric figure, with their min and max, and the raw runs."""
        answer: dict = {"name": self.name, "error": self.error, "runs": self.runs}
        keys = {key for run in self.runs for key, value in run.items() if isinstance(value, (int, float))}
        for key in sorted(keys):
            values = self.values(key)
            answer[key] = median(values)
            answer[f"{key}_min"], answer[f"{key}_max"] = min(values), max(values)
        return answer


@dataclass
class Mounted:
    path: Path
    pid: int | None


# -- the harness ---------------------------------------------------------------------------------


class Harness:
    """The emulator, store, proxy and mounts of one bench run, and their cleanup."""

    def __init__(self, workdir_parent: str | None = None, keep_workdir: bool = False):
        self.stack = contextlib.ExitStack()
        self.workdir = Path(tempfile.mkdtemp(prefix="omicsfs-bench-", dir=workdir_parent))
        self.keep_workdir = keep_workdir
        self.stack.callback(self._remove_workdir)
        self.emulator: EmulatorProcess | None = None
        self.store: NginxStore | None = None
        self.proxy: DelayProxy | None = None
        self.drop_caches_allowed: bool | None = None
        self.mount_count = 0

    def close(self) -> None:
        self.stack.close()

    def _remove_workdir(self) -> None:
        live = [m for m in mount_points() if m.startswith(str(self.workdir) + "/")]
        if live:
            note(f"warning: leaving {self.workdir}: still mounted: {', '.join(live)}")
        elif self.keep_workdir:
            note(f"kept {self.workdir} (the daemons', rclone's and nginx's logs are there)")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- servers ---------------------------------------------------------------------------------

    def start_emulator(self, data: Path, **options) -> EmulatorProcess:
        """The emulator, with SIGINT blocked (the child inherits it): a Ctrl-C in the terminal, sent
        to the whole process group, must not stop the server under a mount mid-read; cleanup stops
        it, last. Its stdout goes to our stderr, so that stdout holds only the tables."""
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        sys.stdout.flush()
        saved_stdout = os.dup(1)
        os.dup2(2, 1)
        try:
            self.emulator = EmulatorProcess(data, **options)
            self.stack.callback(self._stop_emulator, self.emulator)
        finally:
            os.dup2(saved_stdout, 1)
            os.close(saved_stdout)
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return self.emulator.wait_ready()

    @staticmethod
    def _stop_emulator(emulator: EmulatorProcess) -> None:
        try:
            emulator.stop()
        except subprocess.TimeoutExpired:
            emulator.process.kill()
            emulator.process.wait()

    def start_store(self, rclone_files: dict[str, Path]) -> NginxStore:
        """nginx serving every object of the emulator; `rclone_files` (name -> file) listed under /rclone/."""
        assert self.emulator is not None
        self.store = NginxStore(self.workdir / "nginx", self.emulator.objects(), rclone_files, free_port())
        self.stack.callback(self.store.stop)
        return self.store

    def start_proxy(self, rtt_ms: float, window: int) -> DelayProxy:
        """The delaying proxy: `proxy.url(0)` reaches the emulator (the platforms' APIs), `url(1)` the store."""
        assert self.emulator is not None and self.store is not None
        upstreams = [f"127.0.0.1:{self.emulator.port}", f"127.0.0.1:{self.store.port}"]
        self.proxy = DelayProxy(upstreams, rtt_ms, window, log=self.workdir / "proxy.log")
        self.stack.callback(self.proxy.stop)
        return self.proxy

    def store_through(self, delayed: bool) -> str:
        """Point presigned URLs at the store directly or through the proxy; the store's base URL."""
        assert self.emulator is not None and self.store is not None
        url = f"{self.proxy.url(1)}/store" if delayed else self.store.store_url
        self.emulator.knobs(store_url=url)
        return url

    def write_config(self, name: str, platforms: dict[str, str]) -> Path:
        """A configuration mounting each `kind` at its API `url` (platforms: kind -> url)."""
        assert self.emulator is not None
        path = self.workdir / f"{name}.toml"
        path.write_text("".join(
            f'[platforms."{kind}"]\nkind = "{kind}"\nurl = "{url}"\ntoken = "{self.emulator.token}"\n\n'
            for kind, url in platforms.items()
        ))
        path.chmod(0o600)
        return path

    # -- measuring -------------------------------------------------------------------------------

    def cold_start(self, *server_files: Path) -> None:
        """Before a cold step: drop the kernel's caches (where allowed), then read the store's copy of
        the files the step will fetch, untimed, so that the store serves from memory, as S3 is not
        the bottleneck either: only the client differs between rows."""
        start = time.monotonic()
        self.drop_caches_allowed = drop_caches()
        for path in server_files:
            read_whole(path)
        if time.monotonic() - start > 10:
            note(f"(sync, drop_caches and re-reading the store's copy took {time.monotonic() - start:.0f} s)")

    @contextlib.contextmanager
    def measure(self, daemon: int | None = None):
        """Measure one step: yields a dict the step may add to; on exit it holds `seconds` (unless the
        step set its own), the store's view (`store_gets`, `store_bytes`, `store_connections`, ...;
        counted once the store is quiet), the emulator's (`api_requests`, and `emulator_store_*`:
        content it served itself, as Isabl's stream), and the CPU of the daemon and of the store."""
        assert self.emulator is not None and self.store is not None
        entry: dict = {}
        mark = self.store.mark()
        self.emulator.reset_stats()
        store_pids = self.store.pids()
        daemon_cpu, store_cpu = cpu_seconds(daemon) if daemon else None, cpu_seconds(*store_pids)
        start = time.perf_counter()
        yield entry
        entry.setdefault("seconds", time.perf_counter() - start)
        if daemon:
            after = cpu_seconds(daemon)
            entry["daemon_cpu_s"] = after - daemon_cpu if after is not None and daemon_cpu is not None else None
            entry["daemon_peak_rss"] = peak_rss(daemon)
        after = cpu_seconds(*store_pids)
        entry["store_cpu_s"] = after - store_cpu if after is not None and store_cpu is not None else None
        if not self.store.quiesce():
            entry["store_still_writing"] = True  # a response held open, unread: its bytes so far are counted
        entry.update(self.store.traffic(mark, settle=False).summary())
        stats = self.emulator.stats()
        entry["api_requests"] = stats["api_requests"]
        entry["emulator_store_requests"] = stats["store_requests"]
        entry["emulator_store_bytes"] = stats["store_bytes"]

    # -- mounts ----------------------------------------------------------------------------------

    def new_mountpoint(self, kind: str) -> Path:
        self.mount_count += 1
        path = self.workdir / f"mnt-{kind}-{self.mount_count}"
        path.mkdir()
        return path

    @contextlib.contextmanager
    def omicsfs_mount(self, config: Path, cache_dir: Path, *extra: str):
        """`omicsfs mount` (background mode, as a user would); yields a `Mounted`."""
        mountpoint = self.new_mountpoint("omicsfs")
        log = self.workdir / f"omicsfs-{self.mount_count}.log"
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(self._unmount_omicsfs, mountpoint)
            result = subprocess.run(
                [*OMICSFS, "mount", str(mountpoint), "--config", str(config), "--cache-dir", str(cache_dir),
                 "--log-file", str(log), *extra], capture_output=True, text=True, timeout=300, check=False,
            )
            if result.returncode != 0 or not is_mounted(mountpoint):
                raise RuntimeError(f"omicsfs mount failed: {result.stderr.strip()}\n{tail(log)}")
            yield Mounted(mountpoint, daemon_pid(mountpoint))

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
    def nullfs_mount(self, size: int):
        """`nullfs.py`, the do-nothing FUSE, holding `zeros` of `size` bytes."""
        mountpoint = self.new_mountpoint("nullfs")
        log = self.workdir / f"nullfs-{self.mount_count}.log"
        with open(log, "wb") as log_output:
            process = subprocess.Popen(
                [sys.executable, str(NULLFS), str(mountpoint), "--size", str(size)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_output, start_new_session=True,
            )
        try:
            ready, _, _ = select.select([process.stdout], [], [], 60)
            line = process.stdout.readline() if ready else b""
            if line.strip() != b"ready":
                raise RuntimeError(f"nullfs did not mount: {tail(log)}")
            yield Mounted(mountpoint, process.pid)
        finally:
            fuse_unmount(mountpoint)
            stop_process(process)
            process.stdout.close()

    @contextlib.contextmanager
    def rclone_mount(self, url: str, cache_mode: str, cache_dir: Path):
        """`rclone mount :http:` of `url` (an autoindex page) with `--vfs-cache-mode cache_mode`, its
        own defaults otherwise. Ready once mounted: nothing is listed, so a first lookup is cold."""
        mountpoint = self.new_mountpoint(f"rclone-{cache_mode}")
        log = self.workdir / f"rclone-{self.mount_count}.log"
        with open(log, "wb") as log_output:
            process = subprocess.Popen(
                ["rclone", "mount", ":http:", str(mountpoint), "--http-url", url, "--read-only",
                 "--vfs-cache-mode", cache_mode, "--cache-dir", str(cache_dir)],
                stdin=subprocess.DEVNULL, stdout=log_output, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 60
            while not is_mounted(mountpoint):
                if process.poll() is not None:
                    raise RuntimeError(f"rclone mount exited with status {process.returncode}: {tail(log)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"rclone mount did not mount within 60 s: {tail(log)}")
                time.sleep(0.05)
            yield Mounted(mountpoint, process.pid)
        finally:
            fuse_unmount(mountpoint)
            stop_process(process)


# -- the machine ---------------------------------------------------------------------------------


def tool_versions() -> dict:
    versions = {}
    for name, command in (("curl", ["curl", "--version"]), ("rclone", ["rclone", "version"]),
                          ("samtools", ["samtools", "--version"]), ("nginx", ["nginx", "-v"])):
        try:
            result = subprocess.run(command, capture_output=True, timeout=20, check=False)
            versions[name] = (result.stdout or result.stderr).decode(errors="replace").splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            versions[name] = None
    try:
        import pyfuse3

        versions["pyfuse3"] = pyfuse3.__version__
    except (ImportError, AttributeError):
        versions["pyfuse3"] = None
    return versions


def page_fill(directory: Path, size: int = 1024 * MiB) -> dict:
    """How fast this machine gives the page cache memory after `drop_caches`: a new file of `size`
    written once after the caches were dropped (and a moment left, as after a step's setup), then
    written over. On a VM that hands freed memory back to its host (virtio-balloon's free page
    reporting), the first write pays for getting it back: a cold read through a disk cache fills
    two sets of new pages (the cache file's and FUSE's), a client without one a single set."""
    path = directory / "page-fill.tmp"
    chunk = b"\1" * MiB
    drop_caches()
    time.sleep(2)
    speeds = []
    try:
        for _ in range(2):
            start = time.monotonic()
            with open(path, "r+b" if path.exists() else "wb", buffering=0) as file:
                for _ in range(size // MiB):
                    file.write(chunk)
            speeds.append(size / (time.monotonic() - start) / MB)
    finally:
        path.unlink(missing_ok=True)
    return {"new_pages_mb_s": speeds[0], "same_pages_mb_s": speeds[1]}


def machine(load_before: tuple, drop_caches_allowed: bool | None) -> dict:
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "root": os.geteuid() == 0,
        "drop_caches_allowed": drop_caches_allowed,
        "versions": tool_versions(),
    }


def interrupt(signum, frame):
    raise KeyboardInterrupt


def run_bench(bench, run) -> int:
    """Run `run()` with SIGTERM and SIGHUP turned into Ctrl-C, and `bench.close()` on the way out
    whatever happens; a second Ctrl-C during cleanup is ignored, so no mount is left behind."""
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    try:
        return run()
    except KeyboardInterrupt:
        note("interrupted; cleaning up")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.close()


def spread(row: dict, key: str, spec: str, transform=None) -> str:
    """A figure's min-max over the runs, as `(low-high)`; empty when a run is missing."""
    low, high = row.get(f"{key}_min"), row.get(f"{key}_max")
    if low is None or high is None:
        return ""
    if transform:
        low, high = sorted((transform(low), transform(high)))
    return f"({format(low, spec)}-{format(high, spec)})"


def goal_line(goals: list[dict], group: str, text: str, value: float | None, shown: str, met: bool | None) -> str:
    """A goal judged: recorded in `goals` (the results' JSON) and shown under its table."""
    goals.append({"group": group, "goal": text, "value": value, "met": met})
    verdict = "not measured" if value is None else "reported" if met is None else "met" if met else "NOT met"
    return f"  goal: {text}: {shown} -> {verdict}"


def load_note(results: dict, group: str) -> str:
    """The load average as the group started and ended: above the CPU count, others were running."""
    before, after = results.get("load", {}).get(group, (None, None))
    if before is None:
        return ""
    busy = max(before, after) > results["machine"]["cpus"]
    return f"; load average {before:.1f}/{after:.1f}" + (" (BUSY machine: figures disturbed)" if busy else "")


def missing_tool(*tools: str) -> str | None:
    """The first of `tools` not installed (nginx counts in /usr/sbin too), said on stderr; None if all are."""
    for tool in tools:
        if not shutil.which(tool) and not (tool == "nginx" and os.path.exists("/usr/sbin/nginx")):
            print(f"bench: {tool} is not on PATH (make bench installs it)", file=sys.stderr)
            return tool
    return None


def save_and_print(results: dict, tables: str, output: str) -> int:
    """The raw results to `output` as JSON, the tables to stdout."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(tables)
    print(f"\n(JSON: {path})")
    return 0


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def ratio(numerator, denominator) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None
