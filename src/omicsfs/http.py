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
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass

import cachetools
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


def new_client(timeout: float = 30.0) -> httpx.AsyncClient:
    """The one client the daemon shares: pooled keep-alive connections to every host."""
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

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter, so many waiting readers do not retry in step."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


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
        ok: Callable[[int], bool] = lambda status: status < 400,
    ) -> AsyncIterator[httpx.Response]:
        """Send a request and yield the response once its headers are in; the body is read by the caller.

        `what` names what the request is for (a path in the mount, an API object); it leads every
        log line and error message.
        """
        cause = ""
        for attempt in range(self.retry.attempts):
            request = self.client.build_request(method, url, headers=headers, params=params, json=json_body)
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
                delay = self.retry.backoff(attempt) if asked is None else asked + random.uniform(0, 0.1)
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
        self, url: str, start: int, end: int, *, what: str, headers: dict[str, str] | None = None
    ) -> AsyncIterator[bytes]:
        """Yield the bytes [start, end) of `url` with one ranged GET, as they arrive."""
        range_headers = {**(headers or {}), "Range": f"bytes={start}-{end - 1}"}
        async with self.stream("GET", url, what=what, headers=range_headers) as response:
            skip = 0
            if response.status_code == 200:
                # The server ignored Range and sends the whole object: keep only [start, end).
                skip = start
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

    async def url(self, key: Hashable) -> str:
        cached = self._urls.get(key)
        if cached is not None:
            url, expires = cached
            if expires is None or expires - self.EXPIRY_MARGIN > time.time():
                return url
        url, expires = await self._resolve(key)
        self._urls[key] = (url, expires)
        return url

    async def read_range(self, key: Hashable, start: int, end: int, *, what: str) -> AsyncIterator[bytes]:
        for attempt in range(2):
            url = await self.url(key)
            try:
                async for chunk in self.http.read_range(url, start, end, what=what):
                    start += len(chunk)
                    yield chunk
                return
            except AccessDenied:
                self._urls.pop(key, None)
                if attempt:
                    raise
                log.info("%s: the store refused the download URL (403), resolving a new one", what)
