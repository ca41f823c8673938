"""HTTP for every platform: one pooled client, retries with backoff, errno mapping, redaction.

Every request omicsfs makes goes through `Http`, so retry, rate-limit and logging rules live in
one place. Log lines and error messages name the request by `redact_url`, never with its query
string: presigned URLs carry their signature there, and some APIs accept tokens there.
"""

from __future__ import annotations

import contextlib
import threading
import email.utils
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Hashable
from typing import NoReturn, TypeVar
from dataclasses import dataclass, field

import cachetools
import httpcore
import httpx
import trio

from omicsfs import transfer
from omicsfs.errors import AccessDenied, PlatformError, error_for_status

log = logging.getLogger(__name__)

R = TypeVar("R")

#: Statuses worth another try: rate limiting and server-side failures.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def redact_url(url: str | httpx.URL) -> str:
    """The URL without query string or fragment: safe to log."""
    parsed = httpx.URL(str(url))
    text = str(parsed.copy_with(query=None, fragment=None))
    return text + ("?…" if parsed.query else "")


#: Bytes httpcore asks of the socket per receive. Its default, 64 KiB, sends every 64 KiB through
#: h11 and httpx in Python, which caps one stream near 330 MB/s here; 1 MiB lifts it past 1 GB/s
#: (measured with bench/). A class attribute of httpcore 1.x, left as it is should it move.
RECEIVE_SIZE = 1024 * 1024


def new_client(timeout: float = 30.0) -> httpx.AsyncClient:
    """The one client the daemon shares: pooled keep-alive connections to every host."""
    if hasattr(httpcore.AsyncHTTP11Connection, "READ_NUM_BYTES"):
        httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = RECEIVE_SIZE
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=10.0),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        follow_redirects=False,
        headers={"User-Agent": "omicsfs"},
    )


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    base_delay: float = 0.2
    max_delay: float = 20.0
    #: The jitter's source; tests give a seeded one.
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter": at least half the step, so a retry always pauses,
        and a random rest, so many waiting readers do not retry in step."""
        step = min(self.max_delay, self.base_delay * 2**attempt)
        return step / 2 + self.rng.uniform(0, step / 2)


def server_delay(response: httpx.Response) -> float | None:
    """Seconds the server asked us to wait, from whichever header it used.

    BaseSpace sends `X-Retry-After` (seconds); many send `Retry-After` (seconds or an HTTP date);
    Seven Bridges sends `X-RateLimit-Reset` as a Unix time.
    """
    headers = response.headers
    for name in ("x-retry-after", "retry-after"):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value))
            except ValueError:
                with contextlib.suppress(TypeError, ValueError):
                    return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    reset = headers.get("x-ratelimit-reset")
    if reset:
        try:
            value = float(reset)
        except ValueError:
            return None
        # A Unix time (seconds since 1970) rather than a number of seconds to wait.
        return max(0.0, value - time.time()) if value > 1e9 else value
    return None


_S3_ERROR = re.compile(r"<Code>([^<]*)</Code>(?:.*?<Message>([^<]*)</Message>)?", re.S)


def error_detail(response: httpx.Response) -> str:
    """A short human-readable reason from an error body, whatever envelope the platform uses
    (JSON envelopes, or an object store's XML `<Error><Code>`)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, httpx.ResponseNotRead):
        try:
            found = _S3_ERROR.search(response.text[:4096])
        except (httpx.ResponseNotRead, UnicodeDecodeError):
            return ""
        return f": {found.group(1)}{': ' + found.group(2) if found.group(2) else ''}"[:202] if found else ""
    if isinstance(body, dict):
        for key in ("ResponseStatus", "ErrorMessage", "message", "Message", "detail", "error"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("Message") or value.get("message")
            if value:
                return f": {str(value)[:200]}"
    return ""


#: Failures of the transport, at any point of a request: worth another try. Cut bodies and bad
#: chunked encoding are `RemoteProtocolError`s; a body that fails to decompress is a `DecodingError`.
RETRY_EXCEPTIONS = (httpx.TransportError, httpx.DecodingError)
#: A request body: bytes, or a function giving a fresh stream of them for each attempt (a part
#: read from its staging file as it is sent; give its length in a Content-Length header).
Content = bytes | Callable[[], AsyncIterable[bytes]] | None
#: Redirects followed for one GET (Django's APPEND_SLASH, FastAPI's slash redirects, a moved API).
MAX_REDIRECTS = 5
#: Headers that may follow a redirect to another origin: nothing that could carry a credential.
_PORTABLE_HEADERS = frozenset({"range", "accept", "accept-encoding", "user-agent"})


def _ok(status: int) -> bool:
    return 200 <= status < 300


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


class _Retry(Exception):
    """One attempt failed in a way worth another: `cause` for the log, `delay` if the server asked one."""

    def __init__(self, cause: str, delay: float | None = None):
        super().__init__(cause)
        self.cause = cause
        self.delay = delay


@dataclass
class RequestStats:
    """What one platform's requests came to, for `omicsfs status`."""

    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    errors: int = 0
    bytes_received: int = 0
    last_error: str = ""


class Http:
    """Requests with retries on connection errors, timeouts, cut bodies, 5xx and 429.

    One policy for every request omicsfs makes, API call or store read: a failure of the transport
    anywhere in the exchange (before the headers, or in the middle of a body) and a retryable
    status are tried again with backoff up to `retry.attempts` times, then reported with what the
    request was for and the last cause. Each platform has its own `Http` (one shared client
    underneath), so that its `stats` are its own.
    """

    def __init__(self, client: httpx.AsyncClient, retry: RetryPolicy = RetryPolicy(),
                 transfers: transfer.Connections | None = None):
        self.client = client
        self.retry = retry
        self.stats = RequestStats()
        #: Keep-alive connections of the worker-thread transport (`read_range_into`), shared.
        self.transfers = transfers or transfer.Connections()

    def _failed(self, error: PlatformError) -> PlatformError:
        self.stats.errors += 1
        self.stats.last_error = str(error)
        return error

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[R]]) -> R:
        """`attempt()` until it returns, retrying whatever it raises as `_Retry`."""
        cause = ""
        for number in range(self.retry.attempts):
            try:
                return await attempt()
            except _Retry as failure:
                cause = failure.cause
                delay = self.retry.backoff(number) if failure.delay is None else failure.delay
                if delay > self.retry.max_delay * 3:
                    raise self._failed(PlatformError(f"{what}: {cause}; the server asks to wait {delay:.0f} s, giving up")) from None
            if number + 1 < self.retry.attempts:
                self.stats.retries += 1
                log.warning("%s: %s; retry %d/%d in %.1f s", what, cause, number + 1, self.retry.attempts - 1, delay)
                await trio.sleep(delay)
        raise self._failed(PlatformError(f"{what}: gave up after {self.retry.attempts} attempts; last: {cause}"))

    async def _send(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: dict[str, str] | None,
        params: dict | None,
        json_body: object,
        content: Content,
        form: dict[str, str] | None,
        auth: httpx.Auth | None,
        ok: Callable[[int], bool],
        follow_redirects: bool | None,
    ) -> httpx.Response:
        """One attempt: the response once its headers are in (its body unread), if `ok` says so.

        Redirects of a GET or HEAD are followed unless `follow_redirects` is False; the credentials
        (`auth`, and every header but a few harmless ones) go only to the origin of `url`. Any
        other redirect is an error that names it, never a body to parse.
        """
        body = content() if callable(content) else content  # a fresh stream for each attempt
        request = self.client.build_request(method, url, headers=headers, params=params, json=json_body, content=body, data=form)
        origin = _origin(request.url)
        follow = method in ("GET", "HEAD") if follow_redirects is None else follow_redirects
        for _ in range(MAX_REDIRECTS + 1):
            started = time.monotonic()
            self.stats.requests += 1
            try:
                response = await self.client.send(request, stream=True, auth=auth if _origin(request.url) == origin else None)
            except RETRY_EXCEPTIONS as exc:
                raise _Retry(f"{type(exc).__name__} on {method} {redact_url(request.url)}") from None
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s: %s %s%s answered %d in %.3f s", what, method, redact_url(request.url),
                          f" ({request.headers['range']})" if "range" in request.headers else "", response.status_code,
                          time.monotonic() - started)
            if ok(response.status_code):
                return response
            if response.is_redirect and follow:
                await response.aclose()
                target = request.url.join(response.headers["location"])
                portable = {k: v for k, v in request.headers.items() if k.lower() in _PORTABLE_HEADERS}
                request = self.client.build_request(
                    method, target, headers=request.headers if _origin(target) == origin else portable
                )
                continue
            await self._refuse(response, method, what)
        raise PlatformError(f"{what}: {method} {redact_url(url)}: more than {MAX_REDIRECTS} redirects")

    async def _refuse(self, response: httpx.Response, method: str, what: str) -> NoReturn:
        """Raise what a response that is not `ok` stands for: `_Retry` or the error it maps to."""
        try:
            await response.aread()
        except RETRY_EXCEPTIONS:
            pass  # the status says enough
        finally:
            await response.aclose()
        status = response.status_code
        reason = f"{method} {redact_url(response.request.url)} answered {status} {response.reason_phrase}"
        if response.is_redirect:
            reason += f" (to {redact_url(response.request.url.join(response.headers['location']))}, not followed)"
        reason += error_detail(response)
        if status == 429:
            self.stats.rate_limited += 1
        if status not in RETRY_STATUSES:
            raise self._failed(error_for_status(status, f"{what}: {reason}"))
        asked = server_delay(response)
        raise _Retry(reason, None if asked is None else asked + self.retry.rng.uniform(0, 0.1))

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: dict[str, str] | None = None,
        params: dict | None = None,
        json_body: object = None,
        content: Content = None,
        form: dict[str, str] | None = None,
        auth: httpx.Auth | None = None,
        ok: Callable[[int], bool] = _ok,
        follow_redirects: bool | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """Send a request and yield the response once its headers are in; the body is read by the caller.

        Failures before the headers are retried here; the caller handles its own body (see
        `request` and `read_range`, which retry failures in the body too). `what` names what the
        request is for (a path in the mount, an API object); it leads every log line and error.
        The body is `json_body`, `content` or `form` (urlencoded, as OAuth endpoints take it).
        """
        options = dict(headers=headers, params=params, json_body=json_body, content=content, form=form, auth=auth, ok=ok,
                       follow_redirects=follow_redirects)
        response = await self._retrying(what, lambda: self._send(method, url, what=what, **options))
        try:
            yield response
        finally:
            await response.aclose()

    async def request(self, method: str, url: str, *, what: str, **options) -> httpx.Response:
        """Like `stream`, with the body read: a body cut short is a failed attempt, tried again."""
        return await self._retrying(what, lambda: self._whole(method, url, what, options))

    async def _whole(self, method: str, url: str, what: str, options: dict) -> httpx.Response:
        response = await self._send(method, url, what=what, **{**_SEND_DEFAULTS, **options})
        try:
            await response.aread()
        except RETRY_EXCEPTIONS as exc:
            raise _Retry(f"{type(exc).__name__} reading the answer to {method} {redact_url(url)}") from None
        finally:
            await response.aclose()
        self.stats.bytes_received += len(response.content)
        return response

    async def json(self, method: str, url: str, *, what: str, **options) -> tuple[httpx.Response, object]:
        """A request whose 2xx answer is JSON: the response and its parsed body (None for a 204 or
        a 3xx that `ok` accepts). A 2xx whose body is not JSON (cut, or garbled) is a failed
        attempt, tried again."""

        async def attempt() -> tuple[httpx.Response, object]:
            response = await self._whole(method, url, what, options)
            if not _ok(response.status_code) or response.status_code == 204:
                return response, None
            try:
                return response, response.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise _Retry(f"{method} {redact_url(url)} answered {response.status_code} with a body that is not JSON") from None

        return await self._retrying(what, attempt)

    async def get_json(self, url: str, *, what: str, **options) -> object:
        """The parsed body of a GET (see `json`)."""
        return (await self.json("GET", url, what=what, **options))[1]

    async def read_range(
        self,
        url: str,
        start: int,
        end: int,
        *,
        what: str,
        headers: dict[str, str] | None = None,
        params: dict | None = None,
        range_param: str | None = None,
        auth: httpx.Auth | None = None,
    ) -> AsyncIterator[bytes]:
        """Yield the bytes [start, end) of `url`, in order, as they arrive.

        One ranged GET, resumed from the first byte not yet received when its body is cut short
        (under the same retry policy as any failure). The range goes in a `Range` header, or in
        the query parameter `range_param` for APIs that take it there (Isabl's `bytes=first-last`).
        Whatever the answer's status, where its body starts is read from `Content-Range`; a 200
        without one is the whole object, unless its length is exactly the range asked for.
        """
        position = start
        failures = 0
        while position < end:
            range_headers, range_params = self._range_request(position, end, headers, params, range_param)
            started, received = time.monotonic(), 0
            try:
                async with self.stream("GET", url, what=what, headers=range_headers, params=range_params, auth=auth) as response:
                    skip = position - _body_offset(response, position, end, by_header=range_param is None)
                    if skip < 0:
                        raise PlatformError(f"{what}: asked for bytes from {position}, the server sent from {position - skip}")
                    chunks = response.aiter_raw()
                    async for chunk in chunks:
                        if skip:
                            dropped = min(skip, len(chunk))
                            chunk, skip = chunk[dropped:], skip - dropped
                        chunk = chunk[: end - position]
                        if chunk:
                            position += len(chunk)
                            received += len(chunk)
                            self.stats.bytes_received += len(chunk)
                            if position >= end:
                                # Before the last yield (a consumer may stop there): the body read
                                # to its end hands the connection back to the pool for the next
                                # request, where a body left unread would close it.
                                await _drain(chunks)
                                log.debug("%s: received bytes %d-%d in %.3f s", what, position - received, end - 1,
                                          time.monotonic() - started)
                            yield chunk
                        if position >= end:
                            break
                    if position < end:
                        raise httpx.RemoteProtocolError("the body ended before the range did")
            except RETRY_EXCEPTIONS as exc:
                failures += 1
                await self._resume_later(what, f"{type(exc).__name__} after {received} bytes of GET {redact_url(url)}",
                                         failures, position)

    async def _resume_later(self, what: str, cause: str, failures: int, position: int) -> None:
        """A ranged read cut short: give up once the tries are spent, else wait before it resumes."""
        if failures >= self.retry.attempts:
            raise self._failed(PlatformError(f"{what}: gave up after {failures} attempts; last: {cause}")) from None
        self.stats.retries += 1
        delay = self.retry.backoff(failures - 1)
        log.warning("%s: %s; resuming at byte %d in %.1f s", what, cause, position, delay)
        await trio.sleep(delay)

    async def read_range_into(
        self, url: str, start: int, end: int, write: Callable[[int, memoryview], None], landed: Callable[[int], None], *,
        what: str, working: Callable[[int], None] = lambda change: None,
    ) -> None:
        """Fetch the bytes [start, end) of a plain GET URL (a presigned store URL) in a worker thread
        (`transfer.py`): `write(position, data)` is called there, in order, for each piece; then
        `landed(position reached)` on the event loop. The same retries, resumes and errors as
        `read_range`; a server the transport does not speak to is read through `read_range`.

        A cancelled call returns at once and its worker stops at its next piece: `working(+1)` and
        `working(-1)` (on the event loop) bracket each worker's life, so that what `write` writes
        to stays open until the worker is gone.
        """
        position = start
        failures = 0
        token = trio.lowlevel.current_trio_token()
        stop = threading.Event()

        def written(at: int, data: memoryview) -> None:  # in the worker thread
            nonlocal position
            write(at, data)
            position = at + len(data)
            self.stats.bytes_received += len(data)
            token.run_sync_soon(landed, position)

        def offset(status: int, fields: dict) -> int:
            return body_offset(status, fields, position, end)

        def work(at: int) -> transfer.Answer | None:  # in the worker thread
            try:
                return transfer.get_range(self.transfers, url, at, end, written, stop, offset)
            finally:
                token.run_sync_soon(working, -1)

        while position < end:
            started, first = time.monotonic(), position
            self.stats.requests += 1
            working(+1)
            try:
                answer = await trio.to_thread.run_sync(work, position, abandon_on_cancel=True)
            except trio.Cancelled:
                stop.set()
                raise
            except transfer.Unsupported as exc:
                log.debug("%s: %s: read through httpx", what, exc)
                async for chunk in self.read_range(url, position, end, what=what):
                    write(position, memoryview(chunk))
                    position += len(chunk)
                    landed(position)
                return
            except OSError as exc:
                failures += 1
                await self._resume_later(what, f"{type(exc).__name__} ({exc}) after {position - first} bytes of GET "
                                               f"{redact_url(url)}", failures, position)
                continue
            if answer is None:
                log.debug("%s: GET %s (bytes=%d-%d) in a worker: %d bytes in %.3f s", what, redact_url(url), first, end - 1,
                          position - first, time.monotonic() - started)
                return
            # Not the bytes asked: judged as any answer is (retried, or the error it stands for).
            response = answer.response(url)
            if response.status_code in (200, 206):
                raise self._failed(PlatformError(f"{what}: asked for bytes from {position}, the server answered "
                                                 f"{response.headers.get('content-range') or 'the whole object'}"))
            try:
                await self._refuse(response, "GET", what)
            except _Retry as failure:
                failures += 1
                if failures >= self.retry.attempts:
                    raise self._failed(PlatformError(f"{what}: gave up after {failures} attempts; last: {failure.cause}")) from None
                delay = self.retry.backoff(failures - 1) if failure.delay is None else failure.delay
                if delay > self.retry.max_delay * 3:
                    raise self._failed(PlatformError(f"{what}: {failure.cause}; the server asks to wait {delay:.0f} s, giving up")) from None
                self.stats.retries += 1
                log.warning("%s: %s; retry %d/%d in %.1f s", what, failure.cause, failures, self.retry.attempts - 1, delay)
                await trio.sleep(delay)

    async def object_size(
        self, url: str, *, what: str, headers: dict[str, str] | None = None, params: dict | None = None,
        range_param: str | None = None, auth: httpx.Auth | None = None,
    ) -> int:
        """An object's size from a one-byte ranged GET (`Content-Range: bytes 0-0/N`, or 416 `*/0`).

        Not a HEAD: a URL presigned for GET refuses HEAD on S3.
        """
        headers, params = self._range_request(0, 1, headers, params, range_param)
        response = await self.request("GET", url, what=what, headers=headers, params=params, auth=auth,
                                      ok=lambda status: _ok(status) or status == 416)
        total = response.headers.get("content-range", "").rpartition("/")[2].strip()
        if total.isdigit():
            return int(total)
        length = response.headers.get("content-length", "")
        if response.status_code == 200 and length.isdigit():
            return int(length)
        raise PlatformError(f"{what}: the server answered {response.status_code} without telling the size")

    @staticmethod
    def _range_request(start, end, headers, params, range_param) -> tuple[dict, dict | None]:
        if range_param:
            return dict(headers or {}), {**(params or {}), range_param: f"{start}-{end - 1}"}
        return {**(headers or {}), "Range": f"bytes={start}-{end - 1}"}, params


#: Most bytes read past a range's end to hand its connection back (a server that ignored the
#: range sends the whole object: that connection is closed instead).
DRAIN_LIMIT = 256 * 1024


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    left = DRAIN_LIMIT
    async for extra in chunks:
        left -= len(extra)
        if left < 0:
            return


_SEND_DEFAULTS = dict(headers=None, params=None, json_body=None, content=None, form=None, auth=None, ok=_ok,
                      follow_redirects=None)


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-\d+/(?:\d+|\*)\s*$")


def _body_offset(response: httpx.Response, start: int, end: int, *, by_header: bool = True) -> int:
    """Where in the object the body of an answer to a ranged request starts."""
    return body_offset(response.status_code, response.headers, start, end, by_header=by_header)


def body_offset(status: int, headers, start: int, end: int, *, by_header: bool = True) -> int:
    """`_body_offset` from a status and headers (a mapping with lower-case names, or httpx's)."""
    content_range = _CONTENT_RANGE.match(headers.get("content-range", ""))
    if content_range:
        return int(content_range.group(1))
    if status == 206:
        return start
    length = headers.get("content-length", "")
    if length.isdigit():
        # Exactly the range's length: honoured without saying so; anything else: the whole object.
        return start if int(length) == end - start else 0
    # No length: a server that honours a Range header answers 206 (RFC 9110), so a 200 ignored
    # it; an API taking the range as a parameter (Isabl's `stream`) answers with the range.
    return 0 if by_header else start


#: Resolves a file's key to (presigned URL, Unix time it expires or None when unknown).
Resolver = Callable[[Hashable], Awaitable[tuple[str, float | None]]]


class PresignedURLs:
    """Ranged reads through presigned URLs, each reused until it expires.

    A URL is re-resolved shortly before its stated expiry, and once more when the store refuses it
    with 403 (clocks differ, and some platforms state no expiry), also in the middle of a read.
    """

    #: Resolve again this many seconds before the stated expiry.
    EXPIRY_MARGIN = 10.0

    def __init__(self, http: Http, resolve: Resolver, capacity: int = 4096):
        self.http = http
        self._resolve = resolve
        self._urls: cachetools.LRUCache = cachetools.LRUCache(maxsize=capacity)
        self._resolving: dict[Hashable, trio.Event] = {}

    async def url(self, key: Hashable) -> str:
        while True:
            cached = self._urls.get(key)
            if cached is not None:
                url, expires = cached
                if expires is None or expires - self.EXPIRY_MARGIN > time.time():
                    return url
            resolving = self._resolving.get(key)
            if resolving is None:
                break
            await resolving.wait()  # another reader is asking already: one request for all
        done = self._resolving[key] = trio.Event()
        try:
            started = time.monotonic()
            url, expires = await self._resolve(key)
            self._urls[key] = (url, expires)
            log.debug("download URL of %s resolved in %.3f s (%s)", key, time.monotonic() - started,
                      "no stated expiry" if expires is None else f"expires in {expires - time.time():.0f} s")
        finally:
            del self._resolving[key]
            done.set()
        return url

    def forget(self, key: Hashable) -> None:
        self._urls.pop(key, None)

    async def size(self, key: Hashable, *, what: str) -> int:
        """The object's size, asked of the store (for platforms whose listings may omit it)."""
        try:
            return await self.http.object_size(await self.url(key), what=what)
        except AccessDenied:  # refused before its stated expiry: once more with a fresh URL
            self.forget(key)
        return await self.http.object_size(await self.url(key), what=what)

    async def read_range_into(self, key: Hashable, start: int, end: int, write, landed, working, *, what: str) -> None:
        """`Http.read_range_into` through the object's URL, resolved again once if the store refuses it."""
        reached = start

        def landed_at(position: int) -> None:
            nonlocal reached
            reached = position
            landed(position)

        for attempt in range(2):
            url = await self.url(key)
            try:
                await self.http.read_range_into(url, reached, end, write, landed_at, what=what, working=working)
                return
            except AccessDenied:
                self.forget(key)
                if attempt:
                    raise
                log.info("%s: the store refused the download URL (403), resolving a new one", what)

    async def read_range(self, key: Hashable, start: int, end: int, *, what: str) -> AsyncIterator[bytes]:
        for attempt in range(2):
            url = await self.url(key)
            try:
                async for chunk in self.http.read_range(url, start, end, what=what):
                    start += len(chunk)
                    yield chunk
                return
            except AccessDenied:
                self.forget(key)
                if attempt:
                    raise
                log.info("%s: the store refused the download URL (403), resolving a new one", what)
