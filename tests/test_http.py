"""Unit tests for `http.py` (retries, rate limits, errno mapping, redaction, presigned URLs) over
`httpx.MockTransport`, and for the `Redact` log filter of `cli.py`.

Tests that wait use pytest-trio's `autojump_clock`: sleeps take no real time, and the virtual
clock tells how long the code chose to wait.
"""

from __future__ import annotations

import base64
import email.utils
import errno
import io
import json
import logging
import time
import types

import httpx
import pytest
import trio

import omicsfs.credentials
import omicsfs.http
from omicsfs.cli import Redact
from omicsfs.credentials import Token, TokenAuth
from omicsfs.errors import AccessDenied, NotFound, PlatformError, error_for_status
from omicsfs.http import Http, PresignedURLs, RetryPolicy, error_detail, redact_url, server_delay

SIGNED = "https://store.example/bucket/obj.bam?X-Signature=deadbeef&X-Expires=123&token=hunter2"
SECRET_PARTS = ("deadbeef", "hunter2", "X-Signature", "X-Expires")
DATA = bytes(range(256)) * 64  # 16 KiB


class Body(httpx.AsyncByteStream):
    """A streamed response body (as a real transport gives), optionally cut off by a ReadError."""

    def __init__(self, data: bytes, *, chunk: int = 1000, cut_after: int | None = None):
        self.data = data
        self.chunk = chunk
        self.cut_after = cut_after

    async def __aiter__(self):
        for start in range(0, len(self.data), self.chunk):
            if self.cut_after is not None and start >= self.cut_after:
                raise httpx.ReadError("connection reset")
            yield self.data[start : start + self.chunk]


class Server:
    """A MockTransport handler that answers from a script and records each request and when it came."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        #: Each request's headers as sent (an auth flow may change a request's headers to send it again).
        self.headers: list[httpx.Headers] = []
        self.times: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.headers.append(request.headers.copy())
        self.times.append(trio.current_time())
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        return answer

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:])]


def ok(body: bytes = b"{}", **kwargs) -> httpx.Response:
    return httpx.Response(200, content=body, **kwargs)


def status(code: int, headers: dict | None = None, body: object = None) -> httpx.Response:
    content = json.dumps(body).encode() if body is not None else b""
    return httpx.Response(code, headers=headers, content=content)


def ranged(request: httpx.Request) -> httpx.Response:
    """Answers a Range request from DATA with 206, as an object store does."""
    first, last = request.headers["range"].removeprefix("bytes=").split("-")
    part = DATA[int(first) : int(last) + 1]
    return httpx.Response(206, stream=Body(part), headers={"Content-Range": f"bytes {first}-{last}/{len(DATA)}"})


@pytest.fixture
async def client_for():
    clients = []

    def make(server: Server) -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=httpx.MockTransport(server))
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def http_for(client_for, server: Server, attempts: int = 4, base_delay: float = 0.5, max_delay: float = 10.0) -> Http:
    return Http(client_for(server), RetryPolicy(attempts=attempts, base_delay=base_delay, max_delay=max_delay))


def assert_redacted(text: str) -> None:
    for part in SECRET_PARTS:
        assert part not in text, f"{part!r} leaked into {text!r}"


# -- redact_url, server_delay, error_detail ------------------------------------------------------


@pytest.mark.parametrize(
    "url, expected",
    [
        (SIGNED, "https://store.example/bucket/obj.bam?…"),
        ("https://api.example/v1pre3/files/7", "https://api.example/v1pre3/files/7"),
        ("https://api.example/a?b=c#frag", "https://api.example/a?…"),
        ("https://api.example/a#frag", "https://api.example/a"),
        (httpx.URL(SIGNED), "https://store.example/bucket/obj.bam?…"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def response_with(headers: dict) -> httpx.Response:
    return httpx.Response(429, headers=headers)


def test_server_delay_headers():
    assert server_delay(response_with({})) is None
    assert server_delay(response_with({"X-Retry-After": "5"})) == 5.0
    assert server_delay(response_with({"Retry-After": "7"})) == 7.0
    assert server_delay(response_with({"Retry-After": "1.5"})) == 1.5
    assert server_delay(response_with({"Retry-After": "-3"})) == 0.0
    # BaseSpace's header wins over the standard one.
    assert server_delay(response_with({"X-Retry-After": "2", "Retry-After": "9"})) == 2.0
    # An unreadable value falls through to the next header.
    assert server_delay(response_with({"X-Retry-After": "soon", "Retry-After": "4"})) == 4.0
    assert server_delay(response_with({"Retry-After": "whenever"})) is None


def test_server_delay_http_date():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert server_delay(response_with({"Retry-After": when})) == pytest.approx(30, abs=2)
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert server_delay(response_with({"Retry-After": past})) == 0.0


def test_server_delay_rate_limit_reset():
    # Seven Bridges: the Unix time the limit resets.
    assert server_delay(response_with({"X-RateLimit-Reset": str(int(time.time()) + 12)})) == pytest.approx(12, abs=1.5)
    assert server_delay(response_with({"X-RateLimit-Reset": str(int(time.time()) - 100)})) == 0.0
    # A small number is seconds to wait.
    assert server_delay(response_with({"X-RateLimit-Reset": "3"})) == 3.0
    assert server_delay(response_with({"X-RateLimit-Reset": "tomorrow"})) is None


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"ResponseStatus": {"ErrorCode": "NotFound", "Message": "File not found"}}, ": File not found"),
        ({"message": "Token expired"}, ": Token expired"),
        ({"Message": "Forbidden"}, ": Forbidden"),
        ({"detail": "nope"}, ": nope"),
        ({"error": "x" * 500}, ": " + "x" * 200),
        ({"other": 1}, ""),
        ([1, 2], ""),
    ],
)
def test_error_detail(body, expected):
    assert error_detail(httpx.Response(400, json=body)) == expected


def test_error_detail_of_a_body_that_is_not_json():
    assert error_detail(httpx.Response(502, content=b"<html>Bad gateway</html>")) == ""
    assert error_detail(httpx.Response(502, content=b"\xff\xfe\x00garbage")) == ""


@pytest.mark.parametrize(
    "code, cls, errno_",
    [(404, NotFound, errno.ENOENT), (401, AccessDenied, errno.EACCES), (403, AccessDenied, errno.EACCES),
     (416, PlatformError, errno.EINVAL), (400, PlatformError, errno.EIO), (409, PlatformError, errno.EIO)],
)
def test_error_for_status(code, cls, errno_):
    error = error_for_status(code, "what: why")
    assert type(error) is cls and error.errno == errno_ and error.status == code and str(error) == "what: why"


def test_retry_backoff_is_bounded():
    policy = RetryPolicy(attempts=8, base_delay=0.2, max_delay=5.0)
    for attempt in range(12):
        for _ in range(20):
            assert min(5.0, 0.2 * 2**attempt) / 2 <= policy.backoff(attempt) <= min(5.0, 0.2 * 2**attempt)


# -- Http: success, retries, rate limits ----------------------------------------------------------


async def test_request_returns_the_response(client_for):
    server = Server(ok(b'{"Response": {"Id": "7"}}'))
    http = http_for(client_for, server)
    assert await http.get_json("https://api.example/v1pre3/users/current", what="check") == {"Response": {"Id": "7"}}
    assert len(server.requests) == 1


async def test_params_and_headers_are_sent(client_for):
    server = Server(ok())
    http = http_for(client_for, server)
    await http.request("GET", "https://api.example/files", what="list", params={"Offset": 5}, headers={"x-access-token": "t"})
    request = server.requests[0]
    assert request.url.params["Offset"] == "5" and request.headers["x-access-token"] == "t"


@pytest.mark.parametrize(
    "headers, wait",
    [({"X-Retry-After": "3"}, 3.0), ({"Retry-After": "7"}, 7.0), ({"X-RateLimit-Reset": "5"}, 5.0)],
)
async def test_429_waits_as_long_as_the_server_asks(client_for, autojump_clock, headers, wait):
    server = Server(status(429, headers), status(429, headers), ok(b"[1]"))
    http = http_for(client_for, server)
    assert await http.get_json("https://api.example/x", what="rate") == [1]
    assert len(server.requests) == 3
    for gap in server.gaps:
        assert wait <= gap <= wait + 0.11


async def test_429_with_a_reset_time(client_for, autojump_clock):
    reset = str(int(time.time()) + 20)
    server = Server(status(429, {"X-RateLimit-Reset": reset}), ok())
    http = http_for(client_for, server)
    await http.request("GET", "https://api.example/x", what="rate")
    assert server.gaps[0] == pytest.approx(20, abs=1.5)


async def test_429_without_a_header_backs_off(client_for, autojump_clock):
    server = Server(status(429), status(429), status(429), ok())
    http = http_for(client_for, server, attempts=4, base_delay=0.5)
    await http.request("GET", "https://api.example/x", what="rate")
    assert len(server.requests) == 4
    for attempt, gap in enumerate(server.gaps):
        assert gap <= 0.5 * 2**attempt + 1e-9


async def test_server_asking_for_too_long_a_wait_is_not_waited_for(client_for, autojump_clock):
    server = Server(status(429, {"Retry-After": "3600"}), ok())
    http = http_for(client_for, server, max_delay=10.0)
    start = trio.current_time()
    with pytest.raises(PlatformError, match="giving up") as info:
        await http.request("GET", SIGNED, what="slow")
    assert trio.current_time() - start < 1
    assert len(server.requests) == 1
    assert info.value.errno == errno.EIO
    assert_redacted(str(info.value))


@pytest.mark.parametrize("code", [500, 502, 503, 504])
async def test_5xx_is_retried(client_for, autojump_clock, code):
    server = Server(status(code), status(code), ok(b'"fine"'))
    http = http_for(client_for, server)
    assert await http.get_json("https://api.example/x", what="flaky") == "fine"
    assert len(server.requests) == 3


async def test_connection_errors_are_retried(client_for, autojump_clock):
    server = Server(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), ok(b"[]"))
    http = http_for(client_for, server)
    assert await http.get_json("https://api.example/x", what="net") == []
    assert len(server.requests) == 3


async def test_exhausted_retries_raise_eio(client_for, autojump_clock, caplog):
    server = Server(status(503, body={"message": "try later"}))
    http = http_for(client_for, server, attempts=4)
    with caplog.at_level(logging.WARNING, logger="omicsfs.http"):
        with pytest.raises(PlatformError) as info:
            await http.request("GET", SIGNED, what="sample.bam")
    error = info.value
    assert type(error) is PlatformError and error.errno == errno.EIO
    assert len(server.requests) == 4
    message = str(error)
    assert message.startswith("sample.bam: gave up after 4 attempts")
    assert "503" in message and "try later" in message and "https://store.example/bucket/obj.bam?…" in message
    assert_redacted(message)
    retries = [r.getMessage() for r in caplog.records]
    assert len(retries) == 3  # one line per retry, none after the last attempt
    for line in retries:
        assert_redacted(line)
        assert line.startswith("sample.bam: ")


async def test_exhausted_retries_on_connection_errors(client_for, autojump_clock):
    server = Server(httpx.ConnectError("refused"))
    http = http_for(client_for, server, attempts=3)
    with pytest.raises(PlatformError) as info:
        await http.request("GET", SIGNED, what="file", params={"access_token": "hunter2"})
    assert info.value.errno == errno.EIO
    assert "ConnectError" in str(info.value)
    assert_redacted(str(info.value))
    assert len(server.requests) == 3


# -- Http: errors that are not retried ------------------------------------------------------------


@pytest.mark.parametrize(
    "code, cls, errno_",
    [(404, NotFound, errno.ENOENT), (401, AccessDenied, errno.EACCES), (403, AccessDenied, errno.EACCES),
     (400, PlatformError, errno.EIO), (416, PlatformError, errno.EINVAL)],
)
async def test_errors_map_to_errno_without_retrying(client_for, autojump_clock, code, cls, errno_):
    server = Server(status(code, body={"ResponseStatus": {"Message": "Nope"}}), ok())
    http = http_for(client_for, server)
    with pytest.raises(PlatformError) as info:
        await http.request("GET", SIGNED, what="Projects/P1/x.bam")
    error = info.value
    assert type(error) is cls and error.errno == errno_ and error.status == code
    assert len(server.requests) == 1
    message = str(error)
    assert message.startswith("Projects/P1/x.bam: GET https://store.example/bucket/obj.bam?… answered")
    assert str(code) in message and "Nope" in message
    assert_redacted(message)


async def test_custom_ok(client_for):
    server = Server(status(404))
    http = http_for(client_for, server)
    response = await http.request("GET", "https://api.example/x", what="probe", ok=lambda code: code in (200, 404))
    assert response.status_code == 404


async def test_body_that_is_not_json_every_time(client_for, autojump_clock):
    server = Server(ok(b"<html>maintenance</html>"))
    http = http_for(client_for, server)
    with pytest.raises(PlatformError, match="gave up after 4 attempts.*not JSON") as info:
        await http.get_json(SIGNED, what="list")
    assert_redacted(str(info.value))
    assert len(server.requests) == 4


async def test_a_garbled_or_cut_json_answer_is_tried_again(client_for, autojump_clock):
    cut = httpx.Response(200, stream=Body(b'{"items": [1, 2, 3]}' * 100, cut_after=1000))
    server = Server(ok(b'{"items": [1, 2'), cut, ok(b'{"items": [1, 2, 3]}'))
    http = http_for(client_for, server)
    response, body = await http.json("POST", "https://api.example/bulk", what="bulk", json_body={"ids": [1]})
    assert body == {"items": [1, 2, 3]} and response.status_code == 200
    assert len(server.requests) == 3 and all(gap >= 0.25 for gap in server.gaps)


# -- Http.read_range ------------------------------------------------------------------------------


async def test_read_range_sends_range_and_streams(client_for):
    server = Server(ranged)
    http = http_for(client_for, server)
    chunks = [chunk async for chunk in http.read_range(SIGNED, 100, 5100, what="f", headers={"x-a": "b"})]
    assert len(chunks) > 1  # streamed, not read whole
    assert b"".join(chunks) == DATA[100:5100]
    assert server.requests[0].headers["range"] == "bytes=100-5099"
    assert server.requests[0].headers["x-a"] == "b"


async def test_read_range_when_the_server_sends_the_whole_object_from_the_start(client_for):
    """A 200 answer ignores Range: the bytes before `start` are dropped."""
    server = Server(lambda request: httpx.Response(200, stream=Body(DATA, chunk=700)))
    http = http_for(client_for, server)
    data = b"".join([chunk async for chunk in http.read_range(SIGNED, 1500, len(DATA), what="f")])
    assert data == DATA[1500:]


async def test_read_range_refused(client_for):
    server = Server(status(403))
    http = http_for(client_for, server)
    with pytest.raises(AccessDenied) as info:
        async for _ in http.read_range(SIGNED, 0, 10, what="f"):
            pass
    assert_redacted(str(info.value))


def cut_ranged(cut_after: int):
    """Like `ranged`, but every body is cut off after `cut_after` bytes."""

    def answer(request: httpx.Request) -> httpx.Response:
        first, last = request.headers["range"].removeprefix("bytes=").split("-")
        part = DATA[int(first) : int(last) + 1]
        return httpx.Response(206, stream=Body(part, cut_after=cut_after), headers={"Content-Range": f"bytes {first}-{last}/{len(DATA)}"})

    return answer


async def test_read_range_resumes_a_cut_body_where_it_stopped(client_for, autojump_clock):
    server = Server(cut_ranged(cut_after=6000))
    http = http_for(client_for, server, attempts=8)
    received = bytearray()
    async for chunk in http.read_range(SIGNED, 0, len(DATA), what="f"):
        received += chunk
    assert bytes(received) == DATA
    assert [r.headers["range"] for r in server.requests] == ["bytes=0-16383", "bytes=6000-16383", "bytes=12000-16383"]
    assert all(gap >= 0.25 for gap in server.gaps), "each resume waits at least half its backoff step"


async def test_read_range_gives_up_on_a_body_cut_every_time(client_for, autojump_clock):
    server = Server(cut_ranged(cut_after=0))
    http = http_for(client_for, server, attempts=4)
    with pytest.raises(PlatformError) as info:
        async for _ in http.read_range(SIGNED, 0, len(DATA), what="f"):
            pass
    assert len(server.requests) == 4
    assert "gave up after 4 attempts" in str(info.value) and "ReadError" in str(info.value)
    assert_redacted(str(info.value))


# -- PresignedURLs --------------------------------------------------------------------------------


class Resolver:
    """Hands out a new presigned URL per call, with the given lifetime."""

    def __init__(self, lifetime: float | None):
        self.lifetime = lifetime
        self.calls: list[object] = []

    async def __call__(self, key):
        self.calls.append(key)
        expires = None if self.lifetime is None else time.time() + self.lifetime
        return f"https://store.example/{key}?X-Signature=sig{len(self.calls)}", expires


async def test_presigned_url_is_reused_until_near_expiry(client_for):
    resolver = Resolver(lifetime=3600)
    urls = PresignedURLs(http_for(client_for, Server(ok())), resolver)
    first = await urls.url("file-1")
    assert await urls.url("file-1") == first
    assert await urls.url("file-2") != first
    assert resolver.calls == ["file-1", "file-2"]


async def test_presigned_url_without_expiry_is_reused(client_for):
    resolver = Resolver(lifetime=None)
    urls = PresignedURLs(http_for(client_for, Server(ok())), resolver)
    assert await urls.url("k") == await urls.url("k")
    assert len(resolver.calls) == 1


@pytest.mark.parametrize("lifetime", [PresignedURLs.EXPIRY_MARGIN - 1, 0, -60])
async def test_presigned_url_near_or_past_expiry_is_resolved_again(client_for, lifetime):
    resolver = Resolver(lifetime=lifetime)
    urls = PresignedURLs(http_for(client_for, Server(ok())), resolver)
    first = await urls.url("k")
    second = await urls.url("k")
    assert first != second
    assert resolver.calls == ["k", "k"]


async def test_presigned_read_range_resolves_again_after_403(client_for, caplog):
    def store(request: httpx.Request) -> httpx.Response:
        if request.url.params["X-Signature"] == "sig1":
            return status(403)  # the first URL has expired at the store, whatever it said
        return ranged(request)

    server = Server(store)
    resolver = Resolver(lifetime=3600)
    urls = PresignedURLs(http_for(client_for, server), resolver)
    with caplog.at_level(logging.INFO, logger="omicsfs.http"):
        data = b"".join([chunk async for chunk in urls.read_range("obj", 10, 4000, what="obj.bam")])
    assert data == DATA[10:4000]
    assert len(resolver.calls) == 2
    assert [r.url.params["X-Signature"] for r in server.requests] == ["sig1", "sig2"]
    assert all(r.headers["range"] == "bytes=10-3999" for r in server.requests)
    # The new URL is the one kept.
    assert await urls.url("obj") == "https://store.example/obj?X-Signature=sig2"
    for record in caplog.records:
        assert_redacted(record.getMessage())
        assert "sig1" not in record.getMessage()


async def test_presigned_read_range_gives_up_after_a_second_403(client_for):
    server = Server(status(403))
    resolver = Resolver(lifetime=3600)
    urls = PresignedURLs(http_for(client_for, server), resolver)
    with pytest.raises(AccessDenied) as info:
        async for _ in urls.read_range("obj", 0, 100, what="obj.bam"):
            pass
    assert info.value.errno == errno.EACCES
    assert len(resolver.calls) == 2 and len(server.requests) == 2
    assert "sig" not in str(info.value)
    # A refused URL is not kept.
    await urls.url("obj")
    assert len(resolver.calls) == 3


async def test_presigned_read_resumed_later_uses_a_fresh_url(client_for, monkeypatch):
    """A read resumed after the URL's expiry (e.g. by the block cache) resolves again first."""
    now = [time.time()]
    monkeypatch.setattr(omicsfs.http, "time", types.SimpleNamespace(time=lambda: now[0], monotonic=time.monotonic))  # http.py's clock only
    server = Server(ranged)
    resolver = Resolver(lifetime=60)  # resolves with the real clock: expires at about now[0] + 60
    resolver_time = now[0]
    urls = PresignedURLs(http_for(client_for, server), resolver)
    assert b"".join([c async for c in urls.read_range("obj", 0, 1000, what="f")]) == DATA[:1000]
    now[0] = resolver_time + 60 - PresignedURLs.EXPIRY_MARGIN - 1  # not yet within the margin
    assert b"".join([c async for c in urls.read_range("obj", 1000, 2000, what="f")]) == DATA[1000:2000]
    now[0] = resolver_time + 60 - PresignedURLs.EXPIRY_MARGIN + 1  # within it
    assert b"".join([c async for c in urls.read_range("obj", 2000, 3000, what="f")]) == DATA[2000:3000]
    assert [r.url.params["X-Signature"] for r in server.requests] == ["sig1", "sig1", "sig2"]
    assert [r.headers["range"] for r in server.requests] == ["bytes=0-999", "bytes=1000-1999", "bytes=2000-2999"]


async def test_presigned_read_not_found_is_not_resolved_again(client_for):
    server = Server(status(404))
    resolver = Resolver(lifetime=3600)
    urls = PresignedURLs(http_for(client_for, server), resolver)
    with pytest.raises(NotFound):
        async for _ in urls.read_range("obj", 0, 100, what="f"):
            pass
    assert len(resolver.calls) == 1


# -- cli.Redact -----------------------------------------------------------------------------------


@pytest.fixture
def redacted_log():
    """A logger whose handler formats through `Redact`; returns (logger, stream)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(Redact(["tok-ABC123", "", "second-secret"]))
    logger = logging.getLogger("omicsfs.test-redact")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, stream
    logger.handlers.clear()


def test_redact_strips_query_strings(redacted_log):
    logger, stream = redacted_log
    logger.info("GET %s answered %d", SIGNED, 200)
    logger.info("url in quotes: '%s' and <%s>", SIGNED, "http://h/p?a=1")
    text = stream.getvalue()
    assert_redacted(text)
    assert "GET https://store.example/bucket/obj.bam?… answered 200" in text
    assert "'https://store.example/bucket/obj.bam?…'" in text and "<http://h/p?…>" in text


def test_redact_leaves_other_urls_alone(redacted_log):
    logger, stream = redacted_log
    logger.info("listing https://api.example/v1pre3/projects/1/samples (page 2)")
    assert "listing https://api.example/v1pre3/projects/1/samples (page 2)" in stream.getvalue()


def test_redact_replaces_tokens(redacted_log):
    logger, stream = redacted_log
    logger.warning("header x-access-token: %s", "tok-ABC123")
    logger.warning("second-secret in the message itself")
    text = stream.getvalue()
    assert "tok-ABC123" not in text and "second-secret" not in text
    assert text.count("<token>") == 2


def test_redact_cleans_exception_text(redacted_log):
    logger, stream = redacted_log
    try:
        raise RuntimeError(f"request to {SIGNED} with token tok-ABC123 failed")
    except RuntimeError:
        logger.exception("fetch failed for %s", "tok-ABC123")
    text = stream.getvalue()
    assert "Traceback" in text and "RuntimeError" in text
    assert_redacted(text)
    assert "tok-ABC123" not in text
    assert "https://store.example/bucket/obj.bam?…" in text


def test_redact_cleans_chained_exception_text(redacted_log):
    logger, stream = redacted_log
    try:
        try:
            raise httpx.ConnectError(f"cannot reach {SIGNED}")
        except httpx.ConnectError as exc:
            raise PlatformError("obj.bam: gave up") from exc
    except PlatformError:
        logger.error("read failed", exc_info=True)
    text = stream.getvalue()
    assert "ConnectError" in text and "gave up" in text
    assert_redacted(text)


def test_redact_keeps_the_record_loggable_twice(redacted_log):
    """After the filter the message is final: a second handler must not re-apply the arguments."""
    logger, stream = redacted_log
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "100%% of %s", (SIGNED,), None)
    assert Redact(["not-in-it"]).filter(record)
    assert record.getMessage() == "100% of https://store.example/bucket/obj.bam?…"
    assert Redact(["not-in-it"]).filter(record)
    assert record.getMessage() == "100% of https://store.example/bucket/obj.bam?…"


async def test_concurrent_readers_of_one_file_resolve_its_url_once():
    resolutions = []

    async def resolve(key):
        resolutions.append(key)
        await trio.sleep(0.01)
        return f"https://store.example/{key}?X-Signature=s", None

    urls = PresignedURLs(Http(httpx.AsyncClient()), resolve)
    found = []

    async def reader():
        found.append(await urls.url("file-1"))

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(reader)
    assert resolutions == ["file-1"]
    assert found == ["https://store.example/file-1?X-Signature=s"] * 8


# -- redirects -----------------------------------------------------------------------------------


def redirect(code: int, location: str) -> httpx.Response:
    return httpx.Response(code, headers={"Location": location})


async def test_a_get_follows_a_redirect_on_its_origin_with_its_credentials(client_for):
    """Django's APPEND_SLASH: 301 to the slashed path, query kept, empty body."""
    server = Server(redirect(301, "/api/v1/projects/?limit=1"), ok(b'{"results": []}'))
    http = http_for(client_for, server)
    auth = TokenAuth(Token("tok-1"), "Authorization", "Token {}")
    body = await http.get_json("https://isabl.example/api/v1/projects?limit=1", what="p", auth=auth, headers={"Accept": "application/json"})
    assert body == {"results": []}
    assert [str(r.url) for r in server.requests] == ["https://isabl.example/api/v1/projects?limit=1",
                                                      "https://isabl.example/api/v1/projects/?limit=1"]
    assert [h.get("authorization") for h in server.headers] == ["Token tok-1", "Token tok-1"]
    assert server.requests[1].headers["accept"] == "application/json"


@pytest.mark.parametrize("target", ["https://elsewhere.example/obj", "http://isabl.example/obj", "https://isabl.example:8443/obj"])
async def test_a_redirect_to_another_origin_carries_no_credentials(client_for, target):
    server = Server(redirect(302, target), ok(b"bytes"))
    http = http_for(client_for, server)
    auth = TokenAuth(Token("tok-1"), "X-SBG-Auth-Token")
    response = await http.request("GET", "https://isabl.example/a", what="a", auth=auth,
                                  headers={"X-Access-Token": "tok-2", "Range": "bytes=0-4"})
    assert response.content == b"bytes"
    second = server.requests[1]
    assert str(second.url) == target
    assert "x-sbg-auth-token" not in second.headers and "x-access-token" not in second.headers
    assert second.headers["range"] == "bytes=0-4", "a ranged read stays ranged"


@pytest.mark.parametrize("code", [301, 302, 307, 308])
async def test_a_redirect_not_followed_is_an_error_naming_it_never_a_body(client_for, code):
    server = Server(redirect(code, "https://api.example/v1/files/?X-Signature=deadbeef"))
    http = http_for(client_for, server)
    with pytest.raises(PlatformError) as info:
        await http.request("POST", "https://api.example/v1/files", what="upload", json_body={})
    message = str(info.value)
    assert f"answered {code}" in message and "https://api.example/v1/files/?…" in message and "not followed" in message
    assert_redacted(message)
    assert len(server.requests) == 1


async def test_a_redirect_loop_ends(client_for):
    server = Server(redirect(301, "/a"))
    http = http_for(client_for, server)
    with pytest.raises(PlatformError, match="more than 5 redirects"):
        await http.get_json("https://api.example/a", what="a")
    assert len(server.requests) == 6


async def test_a_redirect_can_be_taken_as_the_answer(client_for):
    """BaseSpace's `content` answers 302 with the download URL in Location: the answer itself."""
    server = Server(redirect(302, SIGNED))
    http = http_for(client_for, server)
    response = await http.request("GET", "https://api.example/v1pre3/files/7/content", what="f",
                                  follow_redirects=False, ok=lambda code: 200 <= code < 400)
    assert response.status_code == 302 and response.headers["location"] == SIGNED
    assert len(server.requests) == 1


# -- tokens read again on 401 --------------------------------------------------------------------


def accepts(token: str):
    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers.get("x-access-token") != token:
            return status(401, body={"ResponseStatus": {"Message": "Unauthorized"}})
        return ok(b'{"Response": {}}')

    return answer


async def test_a_refused_token_is_read_again_from_its_file_and_the_request_retried(client_for, tmp_path, caplog):
    token_file = tmp_path / "token"
    token_file.write_text("old-token\n")
    token = Token("old-token", ("token_file", str(token_file)), "[platforms.bs]")
    server = Server(accepts("new-token"))
    http = http_for(client_for, server)
    auth = TokenAuth(token, "x-access-token")
    token_file.write_text("new-token\n")
    with caplog.at_level(logging.WARNING, logger="omicsfs.credentials"):
        assert await http.get_json("https://api.example/x", what="x", auth=auth) == {"Response": {}}
    assert [h["x-access-token"] for h in server.headers] == ["old-token", "new-token"]
    assert token.value == "new-token"
    assert "new-token" in omicsfs.credentials.secrets() and "old-token" in omicsfs.credentials.secrets()
    (record,) = [r for r in caplog.records if "refused the token" in r.getMessage()]
    assert str(token_file) in record.getMessage() and "[platforms.bs]" in record.getMessage()
    assert "new-token" not in record.getMessage()
    # Later requests carry the new token from the start.
    await http.get_json("https://api.example/y", what="y", auth=auth)
    assert server.headers[-1]["x-access-token"] == "new-token" and len(server.requests) == 3


async def test_a_token_from_the_environment_is_read_again(client_for, monkeypatch):
    monkeypatch.setenv("OMICSFS_T", "env-old")
    token = Token("env-old", ("token_env", "OMICSFS_T"), "[platforms.bs]")
    server = Server(accepts("env-new"))
    http = http_for(client_for, server)
    monkeypatch.setenv("OMICSFS_T", "env-new")
    await http.get_json("https://api.example/x", what="x", auth=TokenAuth(token, "x-access-token"))
    assert [h["x-access-token"] for h in server.headers] == ["env-old", "env-new"]


@pytest.mark.parametrize("source", [None, "unchanged"])
async def test_a_refused_token_that_did_not_change_is_refused_once(client_for, tmp_path, source):
    token_file = tmp_path / "token"
    token_file.write_text("old-token")
    token = Token("old-token", ("token_file", str(token_file)) if source else None, "[platforms.bs]")
    server = Server(accepts("new-token"))
    http = http_for(client_for, server)
    with pytest.raises(AccessDenied):
        await http.get_json("https://api.example/x", what="x", auth=TokenAuth(token, "x-access-token"))
    assert len(server.requests) == 1


def jwt(claims: dict) -> str:
    encode = lambda part: base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")  # noqa: E731
    return f"{encode({'alg': 'HS256'})}.{encode(claims)}.c2ln"


async def test_a_jwt_near_its_expiry_is_warned_of_at_mount_and_an_hour_before(autojump_clock, tmp_path, caplog, monkeypatch):
    now = [1_800_000_000.0]
    monkeypatch.setattr(omicsfs.credentials, "time", types.SimpleNamespace(time=lambda: now[0] + trio.current_time()))
    token_file = tmp_path / "bugseq.token"
    token = Token(jwt({"exp": now[0] + 5 * 3600}), ("token_file", str(token_file)), "[platforms.bugseq]")
    token_file.write_text(token.value)
    with caplog.at_level(logging.WARNING, logger="omicsfs.credentials"):
        await omicsfs.credentials.watch_expiry(token, "bugseq")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert all("[platforms.bugseq]" in w and str(token_file) in w and "2027-01-15 13:00:00 UTC" in w for w in warnings)
    assert "in 5.0 h" in warnings[0] and "in 1.0 h" in warnings[1]
    assert trio.current_time() == pytest.approx(5 * 3600, abs=2), "the watch ends when the token expires"


async def test_no_expiry_warning_once_the_file_holds_a_fresh_token(autojump_clock, tmp_path, caplog, monkeypatch):
    now = [1_800_000_000.0]
    monkeypatch.setattr(omicsfs.credentials, "time", types.SimpleNamespace(time=lambda: now[0] + trio.current_time()))
    token_file = tmp_path / "bugseq.token"
    token = Token(jwt({"exp": now[0] + 5 * 3600}), ("token_file", str(token_file)), "[platforms.bugseq]")
    token_file.write_text(jwt({"exp": now[0] + 400 * 86400}))  # replaced before the watch looked
    with caplog.at_level(logging.WARNING, logger="omicsfs.credentials"):
        with trio.move_on_after(10 * 86400):
            await omicsfs.credentials.watch_expiry(token, "bugseq")
    assert caplog.records == []


# -- paging ---------------------------------------------------------------------------------------


async def test_all_pages_asks_the_pages_after_the_first_at_once():
    from omicsfs.platform import all_pages

    items = list(range(2345))
    asked: list[int] = []
    concurrent = [0, 0]

    async def page(offset):
        asked.append(offset)
        concurrent[0] += 1
        concurrent[1] = max(concurrent[1], concurrent[0])
        await trio.sleep(0.01)
        concurrent[0] -= 1
        return items[offset : offset + 250], len(items)  # the server caps pages at 250

    assert await all_pages(page) == items
    assert sorted(asked) == list(range(0, 2345, 250))
    assert concurrent[1] > 1


async def test_all_pages_goes_on_one_page_at_a_time_after_a_short_page_or_without_a_total():
    from omicsfs.platform import all_pages

    items = list(range(1000))

    async def uneven(offset):
        size = 100 if offset != 300 else 50  # one short page in the middle
        return items[offset : offset + size], len(items)

    assert await all_pages(uneven) == items

    async def no_total(offset):
        return items[offset : offset + 300], None

    assert await all_pages(no_total) == items


def test_error_detail_of_an_object_store_xml_error():
    body = b'<?xml version="1.0"?>\n<Error><Code>BadDigest</Code><Message>The Content-MD5 did not match.</Message></Error>'
    response = httpx.Response(400, content=body, headers={"Content-Type": "application/xml"})
    assert error_detail(response) == ": BadDigest: The Content-MD5 did not match."
    assert error_detail(httpx.Response(403, content=b"<Error><Code>AccessDenied</Code></Error>")) == ": AccessDenied"
