"""HTTP for every platform: one pooled client, retries with backoff, errno mapping, redaction.

Every request omicsfs makes goes through `Http`, so retry, rate-limit and logging rules live in
one place. Log lines and error messages name the request by `redact_url`, never with its query
string: presigned URLs carry their signature there, and some APIs accept tokens there.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field

import cachetools
import httpcore
import httpx
import trio

from omicsfs.errors import AccessDenied, PlatformError, error_for_status

log = logging.getLogger(__name__)

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


def error_detail(response: httpx.Response) -> str:
    """A short human-readable reason from an error body, whatever envelope the platform uses."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, httpx.ResponseNotRead):
        return ""
    if isinstance(body, dict):
        for key in ("ResponseStatus", "ErrorMessage", "message", "Message", "detail", "error"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("Message") or value.get("message")
            if value:
                return f": {str(value)[:200]}"
    return ""


class Http:
    """Requests with retries on connection errors, timeouts, 5xx and 429."""

    def __init__(self, client: httpx.AsyncClient, retry: RetryPolicy = RetryPolicy()):
        self.client = client
        self.retry = retry

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
        form: dict[str, str] | None = None,
        ok: Callable[[int], bool] = lambda status: status < 400,
    ) -> AsyncIterator[httpx.Response]:
        """Send a request and yield the response once its headers are in; the body is read by the caller.

        `what` names what the request is for (a path in the mount, an API object); it leads every
        log line and error message. `json_body` or `form` (urlencoded, as OAuth endpoints take it) is the body.
        """
        cause = ""
        for attempt in range(self.retry.attempts):
            request = self.client.build_request(method, url, headers=headers, params=params, json=json_body, data=form)
            try:
                response = await self.client.send(request, stream=True)
            except httpx.TransportError as exc:
                cause = f"{type(exc).__name__} on {method} {redact_url(url)}"
                delay = self.retry.backoff(attempt)
            else:
                if ok(response.status_code):
                    try:
                        yield response
                    finally:
                        await response.aclose()
                    return
                await response.aread()
                await response.aclose()
                status = response.status_code
                reason = f"{method} {redact_url(url)} answered {status} {response.reason_phrase}{error_detail(response)}"
                if status not in RETRY_STATUSES:
                    raise error_for_status(status, f"{what}: {reason}")
                cause = reason
                asked = server_delay(response)
                delay = self.retry.backoff(attempt) if asked is None else asked + self.retry.rng.uniform(0, 0.1)
                if delay > self.retry.max_delay * 3:
                    raise PlatformError(f"{what}: {reason}; the server asks to wait {delay:.0f} s, giving up")
            if attempt + 1 < self.retry.attempts:
                log.warning("%s: %s; retry %d/%d in %.1f s", what, cause, attempt + 1, self.retry.attempts - 1, delay)
                await trio.sleep(delay)
        raise PlatformError(f"{what}: gave up after {self.retry.attempts} attempts; last: {cause}")

    async def request(self, method: str, url: str, *, what: str, **kwargs) -> httpx.Response:
        """Like `stream`, with the body read."""
        async with self.stream(method, url, what=what, **kwargs) as response:
            await response.aread()
            return response

    async def get_json(self, url: str, *, what: str, **kwargs) -> object:
        response = await self.request("GET", url, what=what, **kwargs)
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PlatformError(f"{what}: GET {redact_url(url)} answered with a body that is not JSON") from exc

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
    ) -> AsyncIterator[bytes]:
        """Yield the bytes [start, end) of `url` with one ranged GET, as they arrive.

        The range goes in a `Range` header, or in the query parameter `range_param` for APIs that
        take it there (Isabl's `bytes=first-last`). Whatever the answer's status, where its body
        starts is read from `Content-Range`; a 200 without one is the whole object, unless its
        length is exactly the range asked for.
        """
        headers, params = self._range_request(start, end, headers, params, range_param)
        async with self.stream("GET", url, what=what, headers=headers, params=params) as response:
            skip = start - _body_offset(response, start, end, by_header=range_param is None)
            if skip < 0:
                raise PlatformError(f"{what}: asked for bytes from {start}, the server sent from {start - skip}")
            remaining = end - start
            async for chunk in response.aiter_raw():
                if skip:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                chunk = chunk[:remaining]
                if chunk:
                    remaining -= len(chunk)
                    yield chunk
                if not remaining:
                    return

    async def object_size(
        self, url: str, *, what: str, headers: dict[str, str] | None = None, params: dict | None = None,
        range_param: str | None = None,
    ) -> int:
        """An object's size from a one-byte ranged GET (`Content-Range: bytes 0-0/N`, or 416 `*/0`).

        Not a HEAD: a URL presigned for GET refuses HEAD on S3.
        """
        headers, params = self._range_request(0, 1, headers, params, range_param)
        async with self.stream(
            "GET", url, what=what, headers=headers, params=params, ok=lambda status: status < 400 or status == 416
        ) as response:
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


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-\d+/(?:\d+|\*)\s*$")


def _body_offset(response: httpx.Response, start: int, end: int, *, by_header: bool = True) -> int:
    """Where in the object the body of an answer to a ranged request starts."""
    content_range = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
    if content_range:
        return int(content_range.group(1))
    if response.status_code == 206:
        return start
    length = response.headers.get("content-length", "")
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
            url, expires = await self._resolve(key)
            self._urls[key] = (url, expires)
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
