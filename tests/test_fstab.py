"""`mount.omicsfs`, the fstab helper: run as mount(8) runs it, then through mount(8) itself from an fstab line.

Another user reading a shared mount is a real other user (`setpriv` to nobody), in a directory
everyone may enter (pytest's own temporary directories are closed to others).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omicsfs.mount import allow_other_permitted, daemon_pid, is_mounted
from tests.conftest import assert_no_secrets, platform_table, toml_config

HELPER = Path(sys.executable).parent / "mount.omicsfs"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def run(*command: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=300)


def mountinfo(mountpoint: Path) -> tuple[str, str, set[str]] | None:
    """(type, source, super options) of the mount at `mountpoint`, from the kernel's own table."""
    unescape = lambda text: re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)  # noqa: E731
    with open("/proc/self/mountinfo") as table:
        for line in table:
            fields = line.split()
            after = fields.index("-")
            if unescape(fields[4]) == str(mountpoint):
                return fields[after + 1], unescape(fields[after + 2]), set(fields[after + 3].split(","))
    return None


def wait_gone(pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, f"the daemon {pid} outlived its mount"
        time.sleep(0.1)


@pytest.fixture
def config(fresh_emulator, tmp_path) -> Path:
    path = tmp_path / "lab.toml"
    path.write_text(toml_config({"basespace": platform_table(fresh_emulator, "basespace")}))
    path.chmod(0o600)
    return path




def test_the_helper_mounts_as_mount8_calls_it_and_umount_ends_it(fresh_emulator, config, shared_dir, tmp_path):
    mountpoint = shared_dir / "omics"
    mountpoint.mkdir()
    log = tmp_path / "omicsfs.log"
    options = f"rw,allow_other,default_permissions,_netdev,nofail,cache_dir={tmp_path / 'cache'},log_file={log}"
    mounted = run(HELPER, config, mountpoint, "-o", options)
    assert mounted.returncode == 0, mounted.stderr
    kind, source, super_options = mountinfo(mountpoint)
    assert (kind, source) == ("fuse.omicsfs", str(config)), "the source is the configuration, as fstab names it"
    assert {"allow_other", "default_permissions"} <= super_options
    # Another user reads the shared mount: allow_other lets them in, the mode bits let them read.
    listing = run(*NOBODY, "ls", mountpoint / "basespace")
    assert listing.returncode == 0 and listing.stdout.split() == ["BioSamples", "Projects", "Runs"], listing.stderr
    pid = daemon_pid(mountpoint)
    assert run("umount", mountpoint).returncode == 0
    assert not is_mounted(mountpoint)
    wait_gone(pid)
    assert_no_secrets(log, [fresh_emulator.token])

    # Without allow_other, the kernel keeps every other user out of the mount; a value option
    # (write_back=) reaches the daemon.
    mounted = run(HELPER, config, mountpoint, "-o", f"rw,cache_dir={tmp_path / 'cache'},write_back=async,log_file={log}")
    assert mounted.returncode == 0, mounted.stderr
    status = run(Path(sys.executable).parent / "omicsfs", "status", mountpoint, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["config"]["write_back"] == "async", status.stderr
    refused = run(*NOBODY, "ls", mountpoint)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    assert run("umount", mountpoint).returncode == 0 and not is_mounted(mountpoint)


@pytest.fixture
def helper_in_sbin():
    """mount(8) looks for `mount.fuse.omicsfs` in /sbin only: the link an admin makes, for the test's length."""
    assert os.getuid() == 0, "mount(8) runs helpers from /sbin, and only root may put one there and mount from fstab"
    link = Path("/sbin/mount.fuse.omicsfs")
    saved = link.with_name(link.name + ".saved-during-omicsfs-tests")
    if link.is_symlink() or link.exists():
        link.rename(saved)  # an installed omicsfs: put back afterwards
    link.symlink_to(HELPER)
    yield link
    link.unlink()
    if saved.is_symlink() or saved.exists():
        saved.rename(link)


def test_an_fstab_line_mounts_with_mount_and_mount_a_finds_it_mounted(fresh_emulator, config, tmp_path, helper_in_sbin):
    mountpoint = tmp_path / "lab omics"
    mountpoint.mkdir()
    fstab = tmp_path / "fstab"
    options = f"_netdev,nofail,allow_other,cache_dir={tmp_path / 'cache'},log_file={tmp_path / 'omicsfs.log'}"
    fstab.write_text(f"# the line the README shows, with this test's paths\n"
                     f"{config}  {str(mountpoint).replace(' ', chr(92) + '040')}  fuse.omicsfs  {options}  0 0\n")
    mounted = run("mount", "-T", fstab, mountpoint)
    assert mounted.returncode == 0, mounted.stderr
    assert os.listdir(mountpoint) == ["basespace"]
    assert mountinfo(mountpoint)[:2] == ("fuse.omicsfs", str(config))
    pid = daemon_pid(mountpoint)
    again = run("mount", "-a", "-v", "-T", fstab)
    assert again.returncode == 0 and "already mounted" in again.stdout, (again.stdout, again.stderr)
    assert daemon_pid(mountpoint) == pid and is_mounted(mountpoint)
    assert run("umount", mountpoint).returncode == 0
    assert not is_mounted(mountpoint)
    wait_gone(pid)


def test_the_helper_refuses_what_it_does_not_know_and_mounts_nothing(config, tmp_path):
    mountpoint = tmp_path / "omics"
    mountpoint.mkdir()
    typo = run(HELPER, config, mountpoint, "-o", "rw,allow_other,cache_sise=1G")
    assert typo.returncode == 1 and "unknown mount option 'cache_sise=1G'" in typo.stderr
    old_spelling = run(HELPER, f"omicsfs#{config}", mountpoint, "-o", "rw")
    assert old_spelling.returncode == 1 and f"write the fstab source as the configuration file alone ({config})" in old_spelling.stderr
    # -s (sloppy): an unknown option is a warning; -f (fake): all but the mount.
    fake = run(HELPER, config, mountpoint, "-sf", "-o", "rw,cache_sise=1G")
    assert fake.returncode == 0 and "cache_sise=1G" in fake.stderr and "ignored" in fake.stderr
    missing = run(HELPER, tmp_path / "no such.toml", mountpoint, "-o", "rw")
    assert missing.returncode == 32 and "no configuration file" in missing.stderr
    assert not is_mounted(mountpoint)


def test_allow_other_for_users_needs_user_allow_other_in_fuse_conf(tmp_path):
    conf = tmp_path / "fuse.conf"
    conf.write_text("# user_allow_other\nmount_max = 1000\n")
    assert not allow_other_permitted(conf, uid=1000)
    assert allow_other_permitted(conf, uid=0), "root needs no permission"
    conf.write_text("#mount_max = 1000\n  user_allow_other  \n")
    assert allow_other_permitted(conf, uid=1000)
    assert not allow_other_permitted(tmp_path / "absent.conf", uid=1000)
