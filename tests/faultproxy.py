"""A fault-injecting HTTP proxy for real-mount tests: what a flaky network and a sloppy server do.

It stands between omicsfs and the emulator on loopback, forwarding each request and, by a seeded
generator or by explicit rules, answers instead with what real deployments produce: 500/503, 429
with Retry-After, a connection reset before any byte, a body cut short, a stall, a 200 whose JSON
is garbled, a broken chunked encoding, or an answer rewritten (hostile names, missing fields).

The emulator builds presigned URLs from the Host header it is sent, which the proxy passes on as
it came: store reads go through the proxy too. Each request is one connection (`Connection:
close`), handled in a thread with socket timeouts, so nothing outlives `close()` for long.
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import socketserver
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

#: Faults that any request may get, and those only a JSON answer may get.
FAULTS = ("500", "503", "429", "reset", "cut", "stall", "chunked")
JSON_FAULTS = ("garbage",)
STALL_SECONDS = 3.0


@dataclass
class Rule:
    """An explicit fault: the next `count` requests whose path matches `path` (a regex) get `fault`;
    `rewrite` replaces text in a JSON answer (`(old, new)`), the rest of it forwarded as it is."""

    path: str
    fault: str = "rewrite"
    count: int = 1
    rewrite: tuple[str, str] | None = None
    #: Cut after this many bytes of the body (default: half of it).
    cut_after: int | None = None
    #: Let this many matching requests pass before the first fault (to spread faults out).
    after: int = 0
    matched: int = 0


@dataclass
class FaultProxy:
    upstream_port: int
    #: Share of requests given a random fault (0: only the rules apply).
    rate: float = 0.0
    seed: int = 0
    #: Path prefixes never faulted (the emulator's control API).
    spared: tuple[str, ...] = ("/_emulator",)
    rules: list[Rule] = field(default_factory=list)
    seen: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one request ---------------------------------------------------------------------------

    def _count(self, fault: str | None) -> None:
        with self._lock:
            self.seen[fault or "forwarded"] += 1

    def _choose(self, path: str) -> tuple[str | None, Rule | None]:
        with self._lock:
            chosen = None
            for rule in self.rules:
                if rule.count > 0 and re.search(rule.path, path):
                    rule.matched += 1
                    if chosen is None and rule.matched > rule.after:
                        rule.count -= 1
                        chosen = rule
            if chosen is not None:
                return chosen.fault, chosen
            if path.startswith(self.spared) or self._random.random() >= self.rate:
                return None, None
            return self._random.choice(FAULTS + JSON_FAULTS), None

    def _handle(self, client: socket.socket) -> None:
        client.settimeout(30)
        try:
            head, body = _read_request(client)
        except (OSError, ValueError):
            return
        method, path, headers = head
        fault, rule = self._choose(path)
        if fault not in ("garbage", "rewrite"):  # those two are counted once known to apply
            self._count(fault)
        if fault in ("500", "503", "429"):
            extra = {"Retry-After": "1"} if fault == "429" else {}
            message = b'{"message": "injected"}'
            _send(client, int(fault), {"Content-Type": "application/json", **extra}, message)
            return
        if fault == "reset":
            _reset(client)
            return
        if fault == "stall":
            time.sleep(STALL_SECONDS)
        status, reason, answer_headers, answer = _forward(self.upstream_port, method, path, headers, body)
        is_json = answer_headers.get("content-type", "").startswith("application/json")
        if fault == "garbage" and not (is_json and status == 200):
            fault = None  # only a JSON answer can be garbled without giving wrong bytes to a reader
            self._count(None)
        if fault == "rewrite" and rule and rule.rewrite and is_json:
            answer = answer.replace(rule.rewrite[0].encode(), rule.rewrite[1].encode())
            self._count("rewrite")
        if fault == "garbage":
            answer = b'{"Response": {"Items": [{"Id": "12' + b"\xff\xfe garbled"
            self._count("garbage")
        if fault == "cut" and answer:
            cut = rule.cut_after if rule and rule.cut_after is not None else len(answer) // 2
            _send(client, status, answer_headers, answer, reason, length=len(answer), body=answer[:cut])
            _reset(client)
            return
        if fault == "chunked":
            _send_broken_chunked(client, status, answer_headers, answer, reason)
            return
        _send(client, status, answer_headers, answer, reason)


def _read_request(client: socket.socket) -> tuple[tuple[str, str, list[tuple[str, str]]], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = client.recv(65536)
        if not piece:
            raise ValueError("closed before a request")
        data += piece
    raw_head, _, body = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if ":" in line]
    length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
    while len(body) < length:
        piece = client.recv(65536)
        if not piece:
            break
        body += piece
    return (method, path, headers), body


def _forward(port: int, method: str, path: str, headers: list[tuple[str, str]], body: bytes):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            if name.lower() not in ("connection", "keep-alive"):
                connection.putheader(name, value)
        connection.putheader("Connection", "close")
        connection.endheaders(body or None)
        response = connection.getresponse()
        answer = response.read()
        kept = {k: v for k, v in response.getheaders() if k.lower() not in ("transfer-encoding", "connection", "content-length")}
        return response.status, response.reason, {k.lower(): v for k, v in kept.items()}, answer
    finally:
        connection.close()


def _send(client: socket.socket, status: int, headers: dict, answer: bytes, reason: str = "",
          length: int | None = None, body: bytes | None = None) -> None:
    lines = [f"HTTP/1.1 {status} {reason or http.client.responses.get(status, '')}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("content-length", "connection")]
    lines += [f"Content-Length: {len(answer) if length is None else length}", "Connection: close", "", ""]
    try:
        client.sendall("\r\n".join(lines).encode("latin-1") + (answer if body is None else body))
    except OSError:
        pass


def _send_broken_chunked(client: socket.socket, status: int, headers: dict, answer: bytes, reason: str) -> None:
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers.items() if k.lower() != "content-length"]
    lines += ["Transfer-Encoding: chunked", "Connection: close", "", ""]
    half = answer[: len(answer) // 2]
    try:
        client.sendall("\r\n".join(lines).encode("latin-1") + f"{len(half):x}\r\n".encode() + half + b"\r\nZZ-not-a-size\r\n")
    except OSError:
        pass
    _reset(client)


def _reset(client: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed peer or a middlebox does."""
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
    except OSError:
        pass
