"""Shared fixtures: one emulator for the session, real mounts made with the real `omicsfs` command.

Every mount is made with `omicsfs mount` (background mode, as a user would) against the emulator
over loopback, and on teardown it is unmounted and its log is checked for leaked secrets.

Every test that uses the emulator or a mount is marked `mount`, so that `pytest -m "not mount"`
runs the unit tests alone, without starting the emulator.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from omicsfs.emulator.server import EmulatorProcess
from omicsfs.mount import daemon_pid, is_mounted, unmount

#: The sample account's large file in tests: large next to the small memory caches tests mount with.
TEST_LARGE_FILE = "64M"
OMICSFS = [sys.executable, "-m", "omicsfs"]
#: Fixtures that start the emulator or mount: a test using one is a `mount` test.
MOUNT_FIXTURES = {"emulator", "fresh_emulator", "mount"}


def pytest_collection_modifyitems(items):
    for item in items:
        if MOUNT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.mount)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory) -> EmulatorProcess:
    data = os.environ.get("OMICSFS_TEST_DATA") or tmp_path_factory.mktemp("emulator-data")
    process = EmulatorProcess(data, large_file_size=TEST_LARGE_FILE).wait_ready()
    yield process
    process.stop()


@pytest.fixture
def fresh_emulator(emulator) -> EmulatorProcess:
    """The session's emulator with default knobs, zeroed stats and its data as generated."""
    emulator.reset()
    yield emulator
    emulator.reset()  # data a test changed never reaches the next test, whatever fixture it uses


def platform_table(emulator: EmulatorProcess, kind: str, **overrides) -> dict:
    """A config table for `kind` served by the emulator under `/<kind>`."""
    return {"kind": kind, "url": f"{emulator.url}/{kind}", "token": emulator.token, **overrides}


def toml_config(platforms: dict[str, dict]) -> str:
    lines = []
    for name, table in platforms.items():
        lines.append(f'[platforms."{name}"]')
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
        lines.append("")
    return "\n".join(lines)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Mounted:
    path: Path
    log: Path
    secrets: list[str]

    def daemon_pid(self) -> int:
        """The daemon serving this mount."""
        pid = daemon_pid(self.path)
        if pid is None:
            raise LookupError(f"no daemon for {self.path}")
        return pid


@pytest.fixture
def shared_dir():
    """A directory other users may enter (pytest's own temporary directories are closed to
    others), with a space in its name; whatever is still mounted in it is unmounted at the end."""
    directory = Path(tempfile.mkdtemp(prefix="omicsfs shared "))
    directory.chmod(0o755)
    yield directory
    for mountpoint in directory.iterdir():
        if is_mounted(mountpoint):
            unmount(mountpoint, lazy=True)
    shutil.rmtree(directory)


def wait_for(condition, what: str = "the condition", timeout: float = 120):
    """Poll `condition` until it returns something true, and return that; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.1)


def md5sums(paths: list[Path]) -> dict[Path, str]:
    """md5sum, the real tool, over many files."""
    sums = {}
    for start in range(0, len(paths), 200):
        batch = paths[start : start + 200]
        output = subprocess.run(["md5sum", "--", *map(str, batch)], capture_output=True, text=True, check=True).stdout
        for path, line in zip(batch, output.splitlines()):
            sums[path] = line.split()[0]
    return sums


def run_omicsfs(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*OMICSFS, *args], capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"omicsfs {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


@pytest.fixture
def mount(fresh_emulator, tmp_path):
    """`mount(platforms=None, *extra_args)` mounts with the real command and returns a `Mounted`."""
    mounts: list[Mounted] = []

    def do_mount(platforms: dict[str, dict] | None = None, *extra: str, cache_dir: Path | None = None) -> Mounted:
        index = len(mounts)
        platforms = platforms or {"basespace": platform_table(fresh_emulator, "basespace")}
        config = tmp_path / f"config{index}.toml"
        config.write_text(toml_config(platforms))
        config.chmod(0o600)
        mountpoint = tmp_path / f"mount point {index}"  # a space, as users have in paths
        mountpoint.mkdir()
        log = tmp_path / f"omicsfs{index}.log"
        cache = cache_dir or tmp_path / f"cache{index}"
        run_omicsfs("mount", str(mountpoint), "--config", str(config), "--cache-dir", str(cache), "--log-file", str(log), *extra)
        assert is_mounted(mountpoint)
        mounted = Mounted(mountpoint, log, [t["token"] for t in platforms.values() if "token" in t])
        mounts.append(mounted)
        return mounted

    yield do_mount
    for mounted in mounts:
        if is_mounted(mounted.path):
            run_omicsfs("unmount", str(mounted.path))
        assert not is_mounted(mounted.path)
        assert_no_secrets(mounted.log, mounted.secrets)


def assert_no_secrets(log: Path, secrets: list[str]) -> None:
    text = log.read_text() if log.exists() else ""
    for secret in secrets:
        assert secret not in text, f"a token reached {log}"
    assert "X-Signature" not in text, f"a presigned URL's signature reached {log}"

