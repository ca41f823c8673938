"""The bench's object store: Debian's nginx serving the emulator's objects on loopback.

The emulator's own `/store` is a Python server, slower than the daemon it serves, so every reader
looked alike behind it. nginx serves the same files (a directory of symlinks named by object id,
from `GET /_emulator/objects`) with `sendfile`, and the emulator's presigned URLs are pointed at it
with the `store_url` knob. nginx ignores the URLs' signature and expiry: the bench measures reads,
not the store's checks (the tests cover those against the emulator's own store).

Its access log records, per request, the method, path (never the query string: no signature
reaches a log), the `Range` asked, the status, the body bytes sent and the connection; so requests,
bytes and connections are counted as the store saw them. `/rclone/` lists the few files the bench
reads through rclone mount (an autoindex page, which rclone's http backend reads), named as in the
mount, and `/status` is nginx's stub_status, which tells when no response is still being written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import httpx

#: Tab-separated, one line per request; `$uri` has no query string.
LOG_FORMAT = "$msec\\t$connection\\t$connection_requests\\t$request_method\\t$uri\\t$http_range\\t$status\\t$body_bytes_sent"


@dataclass(frozen=True)
class Request:
    """One line of the access log."""

    when: float
    connection: int
    method: str
    path: str
    range: str | None
    status: int
    body_bytes: int

    @property
    def is_object_get(self) -> bool:
        return self.method == "GET" and not self.path.endswith("/") and self.path != "/status"


@dataclass
class Traffic:
    """What the store saw during one step."""

    requests: list[Request]

    @property
    def gets(self) -> int:
        """GETs of objects (not of listings)."""
        return sum(r.is_object_get for r in self.requests)

    @property
    def bytes(self) -> int:
        """Body bytes sent for object GETs."""
        return sum(r.body_bytes for r in self.requests if r.is_object_get)

    @property
    def connections(self) -> int:
        return len({r.connection for r in self.requests})

    @property
    def other_requests(self) -> int:
        """HEADs and listings (rclone's http backend finds its files this way)."""
        return sum(not r.is_object_get for r in self.requests)

    def bytes_by_object(self) -> dict[str, int]:
        totals: dict[str, int] = defaultdict(int)
        for request in self.requests:
            if request.is_object_get:
                totals[request.path.rsplit("/", 1)[-1]] += request.body_bytes
        return dict(totals)

    def summary(self) -> dict:
        return {"store_gets": self.gets, "store_bytes": self.bytes, "store_connections": self.connections,
                "store_other_requests": self.other_requests, "store_bytes_by_object": self.bytes_by_object(),
                "store_ranges": [f"{r.path.rsplit('/', 1)[-1]} {r.range or '-'} {r.body_bytes}"
                                 for r in self.requests if r.is_object_get]}


class NginxStore:
    """nginx on 127.0.0.1, in the foreground of its own session, with everything under `root`."""

    def __init__(self, root: Path, objects: dict[str, str], rclone_files: dict[str, Path], port: int):
        self.root = root
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(nginx):
            raise RuntimeError("nginx is not installed (apt-get install nginx)")
        for name in ("objects", "rclone", "temp"):
            (root / name).mkdir(parents=True, exist_ok=True)
        for object_id, path in objects.items():
            (root / "objects" / object_id).symlink_to(path)
        for name, path in rclone_files.items():
            (root / "rclone" / name).symlink_to(path)
        self.access_log = root / "access.log"
        self.access_log.touch()
        self.error_log = root / "error.log"
        config = root / "nginx.conf"
        config.write_text(self._config())
        self.process = subprocess.Popen(
            [nginx, "-p", str(root), "-c", str(config), "-e", str(self.error_log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        self._wait_ready()

    def _config(self) -> str:
        # As root, workers would become `nobody`, who cannot reach files under /root: they stay root.
        user = "user root;" if os.geteuid() == 0 else ""
        temp = self.root / "temp"
        return f"""
{user}
daemon off;
worker_processes 1;
pid {self.root / 'nginx.pid'};
events {{ worker_connections 4096; }}
http {{
    log_format bench "{LOG_FORMAT}";
    access_log {self.access_log} bench;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    default_type application/octet-stream;
    types {{ }}
    server {{
        listen 127.0.0.1:{self.port};
        location /store/ {{ alias {self.root / 'objects'}/; }}
        location /rclone/ {{ alias {self.root / 'rclone'}/; autoindex on; }}
        location = /status {{ stub_status; access_log off; }}
    }}
}}
"""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"nginx exited with status {self.process.returncode}: {error.strip()} "
                                   f"{self.error_log.read_text(errors='replace')[-500:] if self.error_log.exists() else ''}")
            try:
                httpx.get(f"{self.url}/status", timeout=2).raise_for_status()
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not answer at {self.url} within 30 s") from None
                time.sleep(0.1)

    @property
    def store_url(self) -> str:
        """What the emulator's `store_url` knob is set to for presigned URLs to reach nginx directly."""
        return f"{self.url}/store"

    def pids(self) -> list[int]:
        """The master and its workers: whose CPU is the store's."""
        master = self.process.pid
        found = [master]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError):
                    if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == master:
                        found.append(int(entry.name))
        return found

    def mark(self) -> int:
        """Where the access log ends now: `traffic(mark)` is what came after."""
        return self.access_log.stat().st_size

    def quiesce(self, timeout: float = 10.0) -> bool:
        """Wait until no response is being written (stub_status `Writing` counts only its own
        request), so that every request of the step just ended is in the log; False on timeout
        (a client holding a response open, unread)."""
        deadline = time.monotonic() + timeout
        while True:
            text = httpx.get(f"{self.url}/status", timeout=5).text
            writing = int(text.split("Writing:")[1].split()[0])
            if writing <= 1:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def traffic(self, mark: int, settle: bool = True) -> Traffic:
        """The requests logged since `mark`, once the store is quiet (see `quiesce`)."""
        if settle:
            self.quiesce()
        with open(self.access_log, "rb") as log:
            log.seek(mark)
            lines = log.read().decode(errors="replace").splitlines()
        requests = []
        for line in lines:
            fields = line.split("\t")
            if len(fields) != 8:
                continue
            when, connection, _, method, path, asked, status, sent = fields
            requests.append(Request(float(when), int(connection), method, path, None if asked == "-" else asked,
                                    int(status), int(sent)))
        return Traffic(requests)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # nginx: fast shutdown
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(OSError):
            self.process.stderr.close()
