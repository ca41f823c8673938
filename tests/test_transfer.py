"""The worker-thread transport (`transfer.py`) and `Http.read_range_into` over it, against a small
HTTP/1.1 server of the test's own on loopback whose answers each test scripts."""

from __future__ import annotations

import random
import socket
import socketserver
import threading
import time
from collections.abc import Callable

import httpx
import pytest
import trio

from omicsfs import transfer
from omicsfs.errors import AccessDenied, NotFound, PlatformError
from omicsfs.http import Http, PresignedURLs, RetryPolicy, body_offset

DATA = random.Random(7).randbytes(3 * 1024 * 1024 + 12345)


class Server:
    """Answers each GET with `answer(range_start, range_end, connection_number)` -> raw bytes to send
    (None: close without a word; a `Closing` of bytes: send them, then close, as a connection
    cut in the middle). Keeps connections alive and records requests and connections."""

    def __init__(self, answer: Callable[[int, int, int], bytes | None]):
        self.answer = answer
        self.requests: list[tuple[int, str]] = []  # (connection, range header)
        self.connections = 0
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                server.connections += 1
                number = server.connections
                buffer = b""
                while True:
                    while b"\r\n\r\n" not in buffer:
                        chunk = self.request.recv(65536)
                        if not chunk:
                            return
                        buffer += chunk
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
                    wanted = fields.get("Range", "")
                    server.requests.append((number, wanted))
                    first, last = (int(x) for x in wanted.removeprefix("bytes=").split("-"))
                    reply = server.answer(first, last + 1, number)
                    if reply is None:
                        return
                    self.request.sendall(reply)
                    if isinstance(reply, Closing):
                        return

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/bucket/object?X-Signature=secret"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Closing(bytes):
    """An answer after which the server closes the connection."""


def partial(start: int, end: int, *, body: bytes | None = None, extra: str = "") -> bytes:
    body = DATA[start:end] if body is None else body
    return (f"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{end - 1}/{len(DATA)}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def status(code: int, message: bytes = b"<Error><Code>AccessDenied</Code></Error>", extra: str = "") -> bytes:
    return f"HTTP/1.1 {code} Status\r\nContent-Length: {len(message)}\r\n{extra}\r\n".encode() + message


@pytest.fixture
def serve():
    servers = []

    def start(answer) -> Server:
        servers.append(Server(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def fetch(server: Server, start: int, end: int, connections: transfer.Connections | None = None) -> tuple[bytes, transfer.Answer | None]:
    """get_range into memory: the bytes written, in order, and the answer."""
    out = bytearray(end - start)
    positions = []

    def write(position: int, data: memoryview) -> None:
        positions.append(position)
        out[position - start : position - start + len(data)] = data

    answer = transfer.get_range(connections or transfer.Connections(), server.url, start, end, write, threading.Event(),
                                lambda code, fields: body_offset(code, fields, start, end))
    assert positions == sorted(positions)
    return bytes(out), answer


def test_a_range_arrives_whole_in_pieces_and_the_connection_is_kept(serve):
    server = serve(lambda start, end, _: partial(start, end))
    connections = transfer.Connections()
    assert fetch(server, 100, 2_500_000, connections) == (DATA[100:2_500_000], None)
    assert fetch(server, 2_500_000, len(DATA), connections) == (DATA[2_500_000:], None)
    assert [number for number, _ in server.requests] == [1, 1], "the second GET reused the first's connection"
    assert [wanted for _, wanted in server.requests] == ["bytes=100-2499999", f"bytes=2500000-{len(DATA) - 1}"]


def test_a_server_that_ignores_the_range_is_read_from_where_the_range_starts(serve):
    server = serve(lambda start, end, _: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(DATA) + DATA)
    assert fetch(server, 1_000_000, 1_200_000) == (DATA[1_000_000:1_200_000], None)


def test_an_error_status_is_handed_back_with_its_body(serve):
    server = serve(lambda start, end, _: status(403))
    data, answer = fetch(server, 0, 10)
    assert answer is not None and answer.status == 403 and answer.body == b"<Error><Code>AccessDenied</Code></Error>"


def test_a_body_cut_short_is_a_cut(serve):
    server = serve(lambda start, end, _: Closing(partial(start, end)[: -1000]))
    with pytest.raises(transfer.Cut):
        fetch(server, 0, 100_000)


def test_a_chunked_body_is_left_to_httpx(serve):
    server = serve(lambda start, end, _: b"HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    with pytest.raises(transfer.Unsupported):
        fetch(server, 0, 5)


def test_a_kept_connection_the_server_closed_meanwhile_is_replaced(serve):
    answers = iter([partial(0, 10, extra=""), None, partial(10, 20)])
    server = serve(lambda start, end, number: next(answers))
    connections = transfer.Connections()
    assert fetch(server, 0, 10, connections) == (DATA[:10], None)
    assert fetch(server, 10, 20, connections) == (DATA[10:20], None)
    assert [number for number, _ in server.requests] == [1, 1, 2]


def test_a_mount_warms_connections_to_the_stores_the_last_one_read_from(serve, tmp_path):
    server = serve(lambda start, end, _: partial(start, end))
    remember = tmp_path / "stores"
    first = transfer.Connections(remember=remember)
    first.warm()  # nothing remembered yet: nothing opened
    assert server.connections == 0
    assert fetch(server, 0, 10, first) == (DATA[:10], None)
    # Addresses only: no path, no signature.
    assert remember.read_text() == f"http 127.0.0.1 {httpx.URL(server.url).port}\n"
    assert "secret" not in remember.read_text()

    # The next mount opens WARM connections before its first read, and its reads use them.
    again = transfer.Connections(remember=remember)
    again.warm()
    deadline = time.monotonic() + 10
    while server.connections < 1 + transfer.WARM and time.monotonic() < deadline:  # accepted in the server's threads
        time.sleep(0.01)
    for start in range(0, 30, 10):
        assert fetch(server, start, start + 10, again) == (DATA[start : start + 10], None)
    assert server.connections == 1 + transfer.WARM
    assert {number for number, _ in server.requests[1:]} <= set(range(2, 2 + transfer.WARM))


def test_remembered_stores_are_a_few_and_a_gone_one_costs_nothing(tmp_path):
    remember = tmp_path / "stores"
    ports = []
    for _ in range(6):  # ports nothing listens on
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            ports.append(unused.getsockname()[1])
    remember.write_text("".join(f"http 127.0.0.1 {port}\n" for port in ports) + "not a line\nftp 127.0.0.1 21\n")
    connections = transfer.Connections(remember=remember)
    assert connections._known == [("http", "127.0.0.1", port) for port in ports[-transfer.REMEMBERED:]]
    connections.warm()  # refused: given up at once, nothing kept
    assert not any(connections._idle.values())


# -- Http.read_range_into: the async side, with the usual retries --------------------------------------


def http() -> Http:
    return Http(None, RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05))


async def into(http_: Http, url: str, start: int, end: int) -> tuple[bytes, list[int]]:
    out = bytearray(end - start)
    landed: list[int] = []
    working = []

    def write(position: int, data: memoryview) -> None:
        out[position - start : position - start + len(data)] = data

    await http_.read_range_into(url, start, end, write, landed.append, what="f", working=working.append)
    await trio.sleep(0.05)  # what the worker announced last reaches the loop
    assert sum(working) == 0, "every worker announced its end"
    return bytes(out), landed


async def test_read_range_into_resumes_a_cut_body_where_it_stopped(serve):
    cuts = iter([900_000, 700_000])

    def answer(start, end, _):
        cut = next(cuts, None)
        reply = partial(start, end)
        return Closing(reply[: cut]) if cut else reply

    server = serve(answer)
    data, landed = await into(http(), server.url, 0, len(DATA))
    assert data == DATA
    assert landed[-1] == len(DATA) and landed == sorted(landed)
    assert len(server.requests) == 3 and server.requests[1][1].startswith("bytes=")
    resumed_at = int(server.requests[1][1].removeprefix("bytes=").split("-")[0])
    assert 800_000 < resumed_at < 900_000, "resumed from the last byte received"


async def test_read_range_into_retries_5xx_and_maps_4xx(serve):
    replies = iter([status(503, b"busy"), status(500, b"oops")])
    server = serve(lambda start, end, _: next(replies, None) or partial(start, end))
    data, _ = await into(http(), server.url, 5, 5000)
    assert data == DATA[5:5000] and len(server.requests) == 3
    for code, error in ((403, AccessDenied), (404, NotFound)):
        refusing = serve(lambda start, end, _, code=code: status(code))
        with pytest.raises(error) as info:
            await into(http(), refusing.url, 0, 10)
        assert "secret" not in str(info.value), "no signature in an error"


async def test_read_range_into_gives_up_after_its_attempts(serve):
    server = serve(lambda start, end, _: None)
    with pytest.raises(PlatformError, match="gave up after 4 attempts"):
        await into(http(), server.url, 0, 10)


async def test_presigned_read_range_into_resolves_a_refused_url_again(serve):
    good = serve(lambda start, end, _: partial(start, end))
    refusing = serve(lambda start, end, _: status(403))
    urls = iter([refusing.url, good.url])

    async def resolve(key):
        return next(urls), None

    presigned = PresignedURLs(http(), resolve)
    out = bytearray(1000)
    await presigned.read_range_into("k", 0, 1000, lambda p, d: out.__setitem__(slice(p, p + len(d)), d), lambda p: None,
                                    lambda change: None, what="f")
    assert bytes(out) == DATA[:1000]


async def test_a_proxy_sends_the_read_through_httpx(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    with pytest.raises(transfer.Unsupported):
        transfer._key(__import__("httpx").URL("http://store.example/object"))
    # Loopback is never proxied.
    monkeypatch.setenv("NO_PROXY", "store.example")
    assert transfer._key(__import__("httpx").URL("http://store.example/object")) == ("http", "store.example", 80)


def test_nothing_listens_is_an_oserror():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError):
        transfer.get_range(transfer.Connections(), f"http://127.0.0.1:{port}/x", 0, 10, lambda p, d: None, threading.Event(),
                           lambda code, fields: 0)


async def test_read_range_into_waits_its_backoff_between_tries(serve):
    """Two 503s: the waits are backoff(0) then backoff(1), each at least half its step (equal
    jitter): 0.1-0.2 s, then 0.2-0.4 s. No wait, or the wrong step, falls outside."""
    replies = iter([status(503), status(503)])
    server = serve(lambda start, end, _: next(replies, None) or partial(start, end))
    slow = Http(None, RetryPolicy(attempts=4, base_delay=0.2, max_delay=1.0))
    started = trio.current_time()
    data, _ = await into(slow, server.url, 0, 1000)
    waited = trio.current_time() - started - 0.05  # `into` sleeps 0.05 s after the read
    assert data == DATA[:1000] and len(server.requests) == 3
    assert 0.3 <= waited < 0.6 + 0.25, f"waited {waited:.2f} s"


async def test_read_range_into_takes_a_retry_after_up_to_three_times_its_longest_wait(serve):
    """A 429 asking for 1 s is waited out when the longest backoff is 0.4 s (1 <= 3 x 0.4); one
    asking for 2 s is more than the policy allows: the read gives up at once and says why."""
    policy = RetryPolicy(attempts=4, base_delay=0.1, max_delay=0.4)
    replies = iter([status(429, extra="Retry-After: 1\r\n")])
    patient = serve(lambda start, end, _: next(replies, None) or partial(start, end))
    started = trio.current_time()
    data, _ = await into(Http(None, policy), patient.url, 0, 1000)
    assert data == DATA[:1000] and trio.current_time() - started >= 1.0
    impatient = serve(lambda start, end, _: status(429, extra="Retry-After: 2\r\n"))
    with pytest.raises(PlatformError, match="asks to wait 2 s, giving up"):
        await into(Http(None, policy), impatient.url, 0, 1000)
    assert len(impatient.requests) == 1
