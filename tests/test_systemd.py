"""omicsfs as a systemd service: the notify protocol spoken by a real daemon, its journal lines, the unit files.

The daemon is run as a `Type=notify` unit runs it (`omicsfs mount DIR --foreground`, with
`$NOTIFY_SOCKET` naming a datagram socket), and this test reads the socket as systemd would.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from omicsfs.mount import is_mounted, unmount
from tests.conftest import assert_no_secrets, platform_table, toml_config

UNITS = Path(__file__).resolve().parent.parent / "packaging" / "systemd"
#: Options that give a service its own mount namespace (or imply one, or seal off /dev/fuse): a
#: FUSE mount made inside one is seen by no one else, so the units must use none of them.
NAMESPACING = {
    "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateMounts", "PrivateUsers", "PrivateNetwork",
    "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock",
    "ProtectProc", "ProcSubset", "ReadOnlyPaths", "ReadWritePaths", "InaccessiblePaths", "ExecPaths", "NoExecPaths",
    "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths", "MountFlags", "RootDirectory", "RootImage", "DynamicUser",
    "DevicePolicy", "DeviceAllow",
}
#: In a user unit these imply NoNewPrivileges=yes, which stops the setuid fusermount3 that mounts for users.
IMPLY_NO_NEW_PRIVILEGES = {
    "NoNewPrivileges", "SystemCallFilter", "SystemCallArchitectures", "RestrictAddressFamilies", "RestrictNamespaces",
    "LockPersonality", "MemoryDenyWriteExecute", "RestrictRealtime", "RestrictSUIDSGID", "ProtectHostname",
}


class NotifyListener:
    """What systemd does with `$NOTIFY_SOCKET`: bind a datagram socket and read `KEY=value` lines."""

    def __init__(self, address: str):
        self.address = address
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind("\0" + address[1:] if address.startswith("@") else address)
        self.received: list[list[str]] = []

    def next(self, timeout: float) -> list[str]:
        self.socket.settimeout(timeout)
        fields = self.socket.recv(4096).decode().split("\n")
        self.received.append(fields)
        return fields

    def rest(self) -> list[list[str]]:
        """Whatever else is queued, without waiting."""
        self.socket.setblocking(False)
        while True:
            try:
                self.received.append(self.socket.recv(4096).decode().split("\n"))
            except BlockingIOError:
                return self.received

    def close(self) -> None:
        self.socket.close()


def start_daemon(tmp_path: Path, table: dict, notify_socket: str) -> tuple[subprocess.Popen, Path, Path]:
    """`omicsfs mount DIR --foreground` as the units run it, stderr in a file systemd would call the journal."""
    config = tmp_path / "config.toml"
    config.write_text(toml_config({"basespace": table}))
    config.chmod(0o600)
    mountpoint = tmp_path / "mount point"
    mountpoint.mkdir()
    journal = tmp_path / "journal.log"
    stderr = journal.open("w")
    stat = os.fstat(stderr.fileno())
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket, "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "omicsfs", "mount", str(mountpoint), "--foreground", "--config", str(config),
         "--cache-dir", str(tmp_path / "cache")],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
    )
    stderr.close()
    return daemon, mountpoint, journal


def stop(daemon: subprocess.Popen, mountpoint: Path) -> None:
    if daemon.poll() is None:
        daemon.kill()
        daemon.wait()
    if is_mounted(mountpoint):
        unmount(mountpoint, lazy=True)


def test_ready_once_the_mount_is_live_then_stopping_and_a_clean_unmount_on_sigterm(fresh_emulator, tmp_path):
    listener = NotifyListener(str(tmp_path / "notify.socket"))
    daemon, mountpoint, journal = start_daemon(tmp_path, platform_table(fresh_emulator, "basespace"), listener.address)
    try:
        while True:
            fields = listener.next(timeout=120)
            if "READY=1" in fields:
                # Checked the moment READY=1 arrives: systemd starts what waits for the mount now.
                live, listing = is_mounted(mountpoint), os.listdir(mountpoint)
                break
        assert live and listing == ["basespace"]
        before_ready = listener.received[:-1]
        assert ["STATUS=checking the tokens of basespace"] in before_ready
        assert f"STATUS=mounted at {mountpoint}" in fields

        daemon.send_signal(signal.SIGTERM)
        assert listener.next(timeout=60) == ["STOPPING=1", f"STATUS=unmounting {mountpoint}"]
        assert daemon.wait(timeout=60) == 0
        assert not is_mounted(mountpoint)
        assert listener.rest().count(["READY=1", f"STATUS=mounted at {mountpoint}"]) == 1
    finally:
        stop(daemon, mountpoint)
        listener.close()
    # The journal's lines carry their priority (`<6>` info) and no time stamp (journald adds it).
    lines = journal.read_text().splitlines()
    assert f"<6>omicsfs.mount: mounted {mountpoint}" in lines
    assert f"<6>omicsfs.mount: unmounted {mountpoint}" in lines
    assert all(re.match(r"<[2-7]>", line) for line in lines if not line.startswith((" ", "Traceback"))), lines
    assert_no_secrets(journal, [fresh_emulator.token])


def test_a_refused_token_sends_no_ready_and_exits_non_zero(fresh_emulator, tmp_path):
    # An abstract-namespace socket ("@name"), as systemd's own NOTIFY_SOCKET may be.
    listener = NotifyListener(f"@omicsfs-test-{secrets.token_hex(8)}")
    refused = "not-the-token-" + secrets.token_hex(8)
    daemon, mountpoint, journal = start_daemon(tmp_path, platform_table(fresh_emulator, "basespace", token=refused), listener.address)
    try:
        assert daemon.wait(timeout=120) != 0
        received = listener.rest()
        assert ["STATUS=checking the tokens of basespace"] in received
        assert not any("READY=1" in fields for fields in received)
        failed = [field for fields in received for field in fields if field.startswith("STATUS=failed")]
        assert len(failed) == 1 and "rejected the access token (HTTP 401)" in failed[0], received
        assert not is_mounted(mountpoint)
    finally:
        stop(daemon, mountpoint)
        listener.close()
    refusals = [line for line in journal.read_text().splitlines() if "rejected the access token" in line]
    assert len(refusals) == 1 and refusals[0].startswith("<3>omicsfs: basespace: BaseSpace at"), refusals
    assert_no_secrets(journal, [refused])


def unit_keys(path: Path) -> dict[str, list[str]]:
    """KEY → values of a unit file (comments and section headers left out)."""
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def test_the_unit_files_pass_systemd_analyze_verify_and_keep_fuse_working(tmp_path):
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: the Makefile's apt packages include systemd"
    user_unit, system_unit = UNITS / "omicsfs@.service", UNITS / "omicsfs-lab.service"
    omicsfs = Path(sys.executable).parent / "omicsfs"
    # verify checks that ExecStart= exists: where each unit expects omicsfs (pipx's ~/.local/bin for
    # a user, /usr/local/bin for the system), this environment's omicsfs stands in.
    home = tmp_path / "home"
    (home / ".local/bin").mkdir(parents=True)
    (home / ".local/bin/omicsfs").symlink_to(omicsfs)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    user = subprocess.run(["systemd-analyze", "verify", "--user", str(user_unit)], capture_output=True, text=True, env=env)
    assert user.returncode == 0 and not user.stderr, user.stderr
    installed = tmp_path / system_unit.name
    installed.write_text(system_unit.read_text().replace("/usr/local/bin/omicsfs", str(omicsfs)))
    system = subprocess.run(["systemd-analyze", "verify", str(installed)], capture_output=True, text=True)
    assert system.returncode == 0 and not system.stderr, system.stderr

    for unit in (user_unit, system_unit):
        keys = unit_keys(unit)
        assert keys["Type"] == ["notify"] and keys["Restart"] == ["on-failure"], unit
        assert " mount " in keys["ExecStart"][0] and "--foreground" in keys["ExecStart"][0], "the daemon must be the main process"
        assert keys["LimitCORE"] == ["0"], "a core dump would hold the tokens"
        assert not NAMESPACING & set(keys), f"{unit.name}: {NAMESPACING & set(keys)} would hide the mount from everyone else"
    assert not IMPLY_NO_NEW_PRIVILEGES & set(unit_keys(user_unit)), "a user's mount needs the setuid fusermount3"
    assert "--allow-other" in unit_keys(system_unit)["ExecStart"][0]
