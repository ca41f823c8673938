"""Mounting: check every platform's credentials, mount, serve until unmounted or signalled.

Credentials are checked before the mount exists, so a refused token never leaves a mount point
behind; `pyfuse3.close(unmount=True)` runs on every way out once it does.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pyfuse3
import trio

from omicsfs.blockcache import BlockCache, ObjectStore
from omicsfs.config import Config
from omicsfs.credentials import watch_expiry
from omicsfs.errors import OmicsfsError, PlatformError
from omicsfs.fs import Filesystem, Settings
from omicsfs.http import Http, new_client
from omicsfs.platform import Platform
from omicsfs import transfer
from omicsfs.platforms import platform_class
from omicsfs.service.control import ControlServer
from omicsfs.staging import Journal
from omicsfs.uploads import Uploads
from omicsfs.service import notify, status

log = logging.getLogger(__name__)

#: The FUSE device's readahead (KiB): the kernel's default, set where it may differ. Larger (dxfuse
#: sets 1024) gives sequential readers 1 MiB requests, but the kernel then reads ahead up to 1 MiB
#: past every seek of a region query, which the daemon must fetch: measured with bench/, 1024 more
#: than doubled a region query's bytes (11.5 against 5.8 MB) and did not speed a cold 1 GiB read
#: (192 against 526 MB/s), since the daemon's own window keeps the network busy either way.
READ_AHEAD_KB = 128
MAX_WINDOW = 64 * 1024 * 1024
#: In the cache dir: the stores the last mounts read from, warmed at the next (`transfer.Connections`).
STORES_FILE = "stores"


#: Where fusermount3 reads whether users other than root may mount with allow_other.
FUSE_CONF = Path("/etc/fuse.conf")


def mount_options(config: Config) -> list[str]:
    """FUSE's options for a mount of `config`.

    The mount's source (`mount`, `df`, findmnt) is the configuration file: mount(8) then finds an
    fstab line (`/etc/omicsfs/lab.toml /mnt/omics fuse.omicsfs ...`) already mounted, and `mount -a`
    leaves it be. `default_permissions`: the kernel checks the mode bits, for the owner and, with
    `allow_other`, for everyone.
    """
    source = os.path.abspath(config.source) if not config.source.startswith("<") else "omicsfs"  # "<demo>": no file
    source = source.replace("\\", "\\\\").replace(",", "\\,")  # FUSE splits options at unescaped commas
    # Not "ro": where a platform takes writes they become uploads; everywhere else each operation
    # refuses them itself, with EROFS (or EPERM) and a log line saying why.
    options = [f"fsname={source}", "subtype=omicsfs", "default_permissions", "noatime"]
    return options + (["allow_other"] if config.allow_other else [])


def allow_other_permitted(fuse_conf: Path = FUSE_CONF, uid: int | None = None) -> bool:
    """Whether fusermount3 will mount with allow_other for us: always for root, for others only
    when fuse.conf holds a `user_allow_other` line."""
    if (os.getuid() if uid is None else uid) == 0:
        return True
    try:
        lines = fuse_conf.read_text().splitlines()
    except OSError:
        return False
    return any(line.partition("#")[0].strip() == "user_allow_other" for line in lines)


def mount_points() -> list[str]:
    """Every mount point of this mount namespace (mountinfo escapes spaces and such as `\\040`)."""
    with open("/proc/self/mountinfo") as mounts:
        return [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]) for line in mounts]


def is_mounted(mountpoint: Path) -> bool:
    return os.path.realpath(mountpoint) in mount_points()


def unmount(mountpoint: Path, lazy: bool = False) -> None:
    """Unmount with fusermount3 (works unprivileged), falling back to umount."""
    command = shutil.which("fusermount3") or shutil.which("fusermount")
    args = [command, "-u"] + (["-z"] if lazy else []) if command else ["umount"] + (["-l"] if lazy else [])
    result = subprocess.run([*args, str(mountpoint)], capture_output=True, text=True)
    if result.returncode != 0:
        raise OmicsfsError(f"cannot unmount {mountpoint}: {result.stderr.strip() or result.returncode}")


def daemon_pid(mountpoint: Path) -> int | None:
    """The `omicsfs mount --foreground` process serving `mountpoint`, found by its command line."""
    wanted = str(Path(mountpoint).absolute()).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--foreground" in argv and wanted in argv:
            return int(entry.name)
    return None


def prepare_mountpoint(mountpoint: Path, allow_other: bool = False) -> None:
    """Fail early on a bad mount point or option; clear a dead mount a crashed daemon left behind."""
    if allow_other and not allow_other_permitted():
        raise OmicsfsError(f"allow_other: only root may use it unless {FUSE_CONF} has a line user_allow_other "
                           f"(as root: echo user_allow_other >> {FUSE_CONF})")
    try:
        # statvfs, not stat: the kernel answers a stat of a dead mount from its attribute cache,
        # where statvfs reaches the daemon (ENOTCONN when it died).
        os.statvfs(mountpoint)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            log.warning("%s: a previous mount died; unmounting it", mountpoint)
            unmount(mountpoint, lazy=True)
        elif exc.errno == errno.ENOENT:
            raise OmicsfsError(f"mount point {mountpoint} does not exist") from None
        else:
            raise OmicsfsError(f"mount point {mountpoint}: {exc.strerror}") from None
    if not mountpoint.is_dir():
        raise OmicsfsError(f"mount point {mountpoint} is not a directory")
    if is_mounted(mountpoint):
        raise OmicsfsError(f"{mountpoint} is already a mount point (omicsfs unmount {mountpoint})")


def build_platforms(config: Config, client: httpx.AsyncClient, transfers: transfer.Connections) -> dict[str, Platform]:
    """Every configured platform, each with an `Http` of its own (its own figures) on the shared
    client and the shared pool of the worker threads' connections."""
    return {p.name: platform_class(p.kind)(p.name, p.settings, Http(client, transfers=transfers)) for p in config.platforms}


async def check_credentials(platforms: dict[str, Platform]) -> None:
    """Check every platform at once; report every failure, not just the first."""
    failures: list[str] = []

    async def check(platform: Platform) -> None:
        try:
            await platform.verify()
        except PlatformError as exc:
            failures.append(str(exc))

    async with trio.open_nursery() as nursery:
        for platform in platforms.values():
            nursery.start_soon(check, platform)
    if failures:
        raise OmicsfsError("\n".join(sorted(failures)))


def tune_device(mountpoint: Path) -> None:
    """Set the FUSE device's readahead to `READ_AHEAD_KB`, when we may (root)."""
    device = os.stat(mountpoint).st_dev
    setting = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
    try:
        setting.write_text(str(READ_AHEAD_KB))
    except OSError as exc:
        log.info("readahead stays at the kernel default (%s: %s)", setting, exc.strerror)


async def serve(config: Config, mountpoint: Path, ready: Callable[[], None]) -> None:
    """Mount and serve until unmounted or sent SIGINT/SIGTERM. Raises `OmicsfsError` before mounting.

    Signals are received for the whole of it, cleanup included: one before the mount is live
    stops the start; one while serving unmounts; one during the unmount is noted and the cleanup
    carries on to its end (a script's `kill` after `fusermount3 -u` must not abandon it).

    A service manager is told what it does (`notify`): the tokens being checked, the mount live
    (READY=1), the mount ending (STOPPING=1).
    """
    prepare_mountpoint(mountpoint, config.allow_other)
    life = _Life(mountpoint)
    failure: Exception | None = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as watcher:
            watcher.start_soon(life.receive, signals)
            try:
                with life.starting:
                    await _serve(config, mountpoint, ready, life)
            except Exception as exc:  # raised as itself, not inside a nursery's ExceptionGroup
                failure = exc
                while isinstance(failure, ExceptionGroup) and len(failure.exceptions) == 1:
                    failure = failure.exceptions[0]
            finally:
                watcher.cancel_scope.cancel()
    if failure is not None:
        raise failure
    if life.phase == "interrupted":
        raise OmicsfsError(f"interrupted before {mountpoint} was mounted")


class _Life:
    """Where a mount is in its life, and what a signal does there."""

    def __init__(self, mountpoint: Path):
        self.mountpoint = mountpoint
        self.phase = "starting"
        #: Cancelled by a signal that comes before the mount exists.
        self.starting = trio.CancelScope()

    async def receive(self, signals) -> None:
        async for number in signals:
            name = signal.Signals(number).name
            if self.phase == "starting":
                log.info("%s before %s was mounted: stopping", name, self.mountpoint)
                self.phase = "interrupted"
                self.starting.cancel()
            elif self.phase == "serving":
                log.info("%s: unmounting %s", name, self.mountpoint)
                self.phase = "stopping"
                pyfuse3.terminate()
            else:
                log.info("%s: already unmounting %s; finishing the cleanup first", name, self.mountpoint)


async def _serve(config: Config, mountpoint: Path, ready: Callable[[], None], life: _Life) -> None:
    async with new_client() as client:
        transfers = transfer.Connections(remember=Path(config.cache_dir) / STORES_FILE)
        platforms = build_platforms(config, client, transfers)
        notify.status(f"checking the tokens of {', '.join(platforms)}")
        await check_credentials(platforms)
        store = ObjectStore(config.cache_dir, config.cache_size)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(trio.to_thread.run_sync, transfers.warm, abandon_on_cancel=True))
            cache = BlockCache(store, nursery)
            uploads = Uploads(Journal(config.cache_dir), platforms, nursery, write_back=config.write_back)
            # The prefetch window is capped so that prefetched blocks still fit the memory cache.
            settings = Settings(metadata_ttl=config.metadata_ttl, max_window=min(MAX_WINDOW, config.memory_cache_size // 2))
            filesystem = Filesystem(platforms, cache, settings, uploads)
            control = ControlServer({
                "perform": lambda request: _perform(filesystem, request),
                "status": lambda request: _status(filesystem, config, mountpoint),
                "refresh": lambda request: _refresh(filesystem, request),
            })
            filesystem.control_path = await nursery.start(control.serve)
            try:
                pyfuse3.init(filesystem, str(mountpoint), mount_options(config))
            except RuntimeError as exc:  # /dev/fuse not ours to open, fusermount3 refused...
                raise OmicsfsError(f"cannot mount {mountpoint}: {exc} (see the log for FUSE's own message)") from None
            life.phase = "serving"
            life.starting.shield = True  # from here on, a signal unmounts: nothing may cut the cleanup short
            try:
                await uploads.resume()
                nursery.start_soon(_announce, mountpoint, ready)
                for platform in platforms.values():
                    if platform.token is not None:
                        nursery.start_soon(watch_expiry, platform.token, platform.name)
                await pyfuse3.main()
                life.phase = "stopping"
                notify.stopping(f"unmounting {mountpoint}")
                pending = uploads.pending()
                if pending:
                    log.info("unmounting: waiting for %d upload(s) under way", len(pending))
                await uploads.drain()
            finally:
                life.phase = "stopping"
                pyfuse3.close(unmount=True)
                nursery.cancel_scope.cancel()
                left = [u.record.path for u in uploads.pending()]
                if left:
                    log.warning("unmounted %s with %d upload(s) not yet confirmed, kept in the journal for the next mount: %s",
                                mountpoint, len(left), ", ".join(left[:5]))
                log.info("unmounted %s", mountpoint)


async def _perform(filesystem: Filesystem, request: dict) -> dict:
    return {"message": await filesystem.perform(str(request["action"]), str(request.get("path", "")))}


async def _status(filesystem: Filesystem, config: Config, mountpoint: Path) -> dict:
    return status.snapshot(filesystem, config, mountpoint)


async def _refresh(filesystem: Filesystem, request: dict) -> dict:
    return await filesystem.refresh(str(request.get("path", "")), recursive=bool(request.get("recursive")))


async def _announce(mountpoint: Path, ready: Callable[[], None]) -> None:
    # In a thread: stat() on our own mount point needs the FUSE loop running to be answered.
    await trio.to_thread.run_sync(tune_device, mountpoint)
    log.info("mounted %s", mountpoint)
    notify.ready(f"mounted at {mountpoint}")
    ready()
