"""Ranged GETs of presigned URLs in worker threads: a store's bytes go from the socket to the cache
file without passing through the event loop.

Why: a cold sequential read is bound by the one thread that runs the event loop. Through httpx,
every MiB received is copied by h11's buffers in Python, then written and checksummed on the
event loop, which also answers FUSE; here a worker thread receives into a buffer of its own
(`recv_into`), writes it to the cache file and checksums it, all system calls and C code that
release the GIL, so the network runs on the other core while the event loop serves reads. The
event loop hears of each MiB that landed (`TrioToken.run_sync_soon`) and wakes the readers
waiting for it.

It speaks only what a presigned object URL needs: one GET with a `Range`, HTTP/1.1 keep-alive,
`Content-Length` bodies, plain or TLS. Anything else (an error status, a redirect, a chunked
body) is handed back as an `Answer` for `Http` to judge with its usual rules, so retries, errno
mapping and log lines stay in one place; transport failures raise `OSError`s, which `Http` retries
and resumes like any other.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import certifi
import httpx

#: Bytes received into the buffer before they are written out and announced.
PIECE = 1024 * 1024
#: Idle connections kept per host, and the most header bytes an answer may have.
IDLE_PER_HOST = 8
MAX_HEADER = 64 * 1024
TIMEOUT = 30.0
#: Stores remembered across mounts (the latest first reads went to), and the connections opened
#: to each at mount: an indexed file's first reads go out three at once (header, end, index).
REMEMBERED = 4
WARM = 3
#: A store that does not answer a warming connection this soon is not waited for.
WARM_TIMEOUT = 5.0

log = logging.getLogger(__name__)


class Cut(OSError):
    """The connection ended before the answer did."""


class Unsupported(Exception):
    """Something this transport does not speak (a proxy, a chunked body): `Http`'s path serves it."""


@dataclass
class Answer:
    """What a server answered instead of the bytes asked: for `Http` to judge."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def response(self, url: str) -> httpx.Response:
        return httpx.Response(self.status, headers=self.headers, content=self.body, request=httpx.Request("GET", url),
                              extensions={"reason_phrase": self.reason.encode()})


Key = tuple[str, str, int]


class Connections:
    """Keep-alive sockets per (scheme, host, port), shared by the worker threads.

    With `remember` (a file in the cache dir), the stores connected to are kept across mounts
    (their addresses only: no URL, no signature), and `warm` opens connections to them at the
    next mount, while its first listings run: a mount's first read then pays its request alone,
    not a new connection too (a round trip, and one or two more for TLS to S3)."""

    def __init__(self, remember: Path | None = None) -> None:
        self._idle: dict[Key, list[socket.socket]] = defaultdict(list)
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        self._remember = remember
        self._known = self._load()

    def _load(self) -> list[Key]:
        if self._remember is None:
            return []
        try:
            lines = self._remember.read_text().splitlines()
        except (OSError, ValueError):
            return []  # none yet, or not ours to read: nothing is warmed
        known = []
        for line in lines:
            scheme, host, port = (line.split(" ") + ["", "", ""])[:3]
            if scheme in ("http", "https") and host and port.isdigit():
                known.append((scheme, host, int(port)))
        return known[-REMEMBERED:]

    def _note(self, key: Key) -> None:
        """Remember a store the first time this mount connects to it (under the lock)."""
        if self._remember is None or key in self._known:
            return
        self._known = [*self._known, key][-REMEMBERED:]
        try:
            partial = self._remember.with_name(self._remember.name + ".new")
            partial.write_text("".join(f"{scheme} {host} {port}\n" for scheme, host, port in self._known))
            os.replace(partial, self._remember)
        except OSError as exc:
            log.debug("cannot remember the store %s: %s", key[1], exc)

    def take(self, key: Key) -> tuple[socket.socket, bool]:
        """A connection to `key` and whether it was reused (a reused one may have been closed by
        the server meanwhile: a failure on it before any byte is tried once more on a new one)."""
        with self._lock:
            if self._idle[key]:
                return self._idle[key].pop(), True
            self._note(key)
        return self._connect(key, TIMEOUT), False

    def _connect(self, key: Key, timeout: float) -> socket.socket:
        scheme, host, port = key
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.settimeout(TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context(cafile=certifi.where())
            sock = self._tls.wrap_socket(sock, server_hostname=host)
        return sock

    def warm(self) -> None:
        """In a worker thread, at mount: open `WARM` connections to each remembered store."""
        for key in list(self._known):
            for _ in range(WARM):
                try:
                    sock = self._connect(key, WARM_TIMEOUT)
                except OSError as exc:
                    log.debug("no warm connection to the store %s: %s", key[1], exc)
                    break
                self.give_back(key, sock)

    def give_back(self, key: Key, sock: socket.socket) -> None:
        with self._lock:
            if len(self._idle[key]) < IDLE_PER_HOST:
                self._idle[key].append(sock)
                return
        sock.close()

    def close(self) -> None:
        with self._lock:
            for socks in self._idle.values():
                for sock in socks:
                    sock.close()
            self._idle.clear()


def _key(url: httpx.URL) -> Key:
    if url.scheme not in ("http", "https"):
        raise Unsupported(f"scheme {url.scheme}")
    if urllib.request.getproxies() and not urllib.request.proxy_bypass(url.host):
        raise Unsupported("a proxy is configured")
    return url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80)


def get_range(
    connections: Connections,
    url: str,
    start: int,
    end: int,
    write: Callable[[int, memoryview], None],
    stop: threading.Event,
    body_offset: Callable[[int, dict[str, str]], int],
) -> Answer | None:
    """In a worker thread: GET bytes [start, end) of `url`, handing each piece received to
    `write(position, data)`, in order. None once the whole range was written; an `Answer` when the
    server answered something else (or a body of the wrong shape). Raises `OSError` when the
    transport fails (`Cut` when the body ends short), `Unsupported` for what `Http` must serve."""
    parsed = httpx.URL(url)
    key = _key(parsed)
    target = parsed.raw_path.decode("ascii")
    request = (f"GET {target} HTTP/1.1\r\nHost: {parsed.netloc.decode('ascii')}\r\nRange: bytes={start}-{end - 1}\r\n"
               "User-Agent: omicsfs\r\nAccept-Encoding: identity\r\n\r\n").encode("ascii")
    for attempt in (1, 2):
        sock, reused = connections.take(key)
        try:
            sock.sendall(request)
            head, rest = _read_head(sock)
            break
        except OSError:
            sock.close()
            if not reused or attempt == 2:
                raise
    keep = False
    try:
        status, reason, headers = _parse_head(head)
        fields = {name.lower(): value for name, value in headers}
        if "chunked" in fields.get("transfer-encoding", "").lower():
            raise Unsupported("a chunked body")
        length = fields.get("content-length", "")
        if not length.isdigit():
            raise Unsupported("a body without Content-Length")
        length = int(length)
        if status not in (200, 206):
            body = rest[:length]
            while len(body) < min(length, MAX_HEADER):
                chunk = sock.recv(MAX_HEADER)
                if not chunk:
                    break
                body += chunk
            keep = len(body) == length and fields.get("connection", "").lower() != "close"
            return Answer(status, reason, headers, body[:MAX_HEADER])
        skip = start - body_offset(status, fields)
        wanted_end = skip + (end - start)  # the body's bytes [skip, wanted_end) are the range
        if skip < 0 or wanted_end > length:
            return Answer(status, reason, headers, b"")  # not the bytes asked: Http says what is wrong
        buffer = bytearray(PIECE)
        view = memoryview(buffer)
        filled = 0  # bytes of the range in the buffer, not yet written
        position = start  # where the buffer's first byte goes
        consumed = 0  # bytes of the body received so far
        early = memoryview(rest)[:length]  # what arrived with the head
        try:
            while consumed < wanted_end:
                if stop.is_set():
                    return None
                if consumed < skip:  # before the range: received and dropped
                    if early:
                        n = min(len(early), skip - consumed)
                        early = early[n:]
                    else:
                        n = len(sock.recv(min(PIECE, skip - consumed)))
                elif early:
                    n = min(len(early), PIECE - filled, wanted_end - consumed)
                    view[filled : filled + n] = early[:n]
                    early = early[n:]
                    filled += n
                else:  # the socket straight into the buffer
                    n = sock.recv_into(view[filled:], min(PIECE - filled, wanted_end - consumed))
                    filled += n
                if not n:
                    raise Cut(f"the body ended {end - position - filled} bytes short of the range")
                consumed += n
                if filled == PIECE or consumed == wanted_end:
                    write(position, view[:filled])
                    position, filled = position + filled, 0
        except OSError:
            if filled:  # what arrived before the cut is kept: the retry resumes after it
                write(position, view[:filled])
            raise
        # The rest of the body, if short, is read so that the connection can serve the next GET.
        left = length - consumed - len(early)
        while 0 < left <= 256 * 1024:
            n = len(sock.recv(left))
            if not n:
                break
            left -= n
        keep = left == 0 and fields.get("connection", "").lower() != "close"
        return None
    finally:
        if keep:
            connections.give_back(key, sock)
        else:
            sock.close()


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(MAX_HEADER)
        if not chunk:
            raise Cut("the connection closed before an answer")
        data += chunk
        if len(data) > MAX_HEADER:
            raise OSError("an answer's head larger than 64 KiB")
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _parse_head(head: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, status_reason = lines[0].partition(" ")
    status, _, reason = status_reason.partition(" ")
    if not version.startswith("HTTP/1.") or not status.isdigit():
        raise OSError(f"not an HTTP/1.1 answer: {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip(), value.strip()))
    return int(status), reason, headers
