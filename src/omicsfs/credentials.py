"""A platform's token, where it came from, and how it goes on requests.

Tokens change while a mount lives: BugSeq's are JWTs that expire, others are rotated. A token that
came from a file (`token_file`) or the environment (`token_env`) is read again when the platform
refuses it (401), and the request is sent once more if the value changed, so that replacing the
file is enough: no remount. Every value a token ever had is kept for the log filter, which must
hide old and new alike.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Generator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import trio

log = logging.getLogger(__name__)

#: Every token value seen by this process: the log filter hides each of them.
_SECRETS: set[str] = set()

#: When a JWT's coming expiry is worth a warning: within a day at mount time, then an hour before.
WARN_AT_MOUNT = 24 * 3600.0
WARN_BEFORE = 3600.0


def secrets() -> set[str]:
    return _SECRETS


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT (read, not verified: only to warn and explain); None if not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return float(claims["exp"])
    except (ValueError, KeyError, TypeError):
        return None


def utc(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class Token:
    """The current value of one platform's token, read again from its source on demand.

    `source` is `("token_file", path)`, `("token_env", variable)` or None (given in the config
    itself: nothing to read again). `where` names the config table in messages.
    """

    def __init__(self, value: str, source: tuple[str, str] | None = None, where: str = ""):
        self.value = value
        self.source = source
        self.where = where
        _SECRETS.add(value)

    def describe_source(self) -> str:
        if self.source is None:
            return f"the token of {self.where}"
        kind, name = self.source
        return f"{kind} {name} of {self.where}" if kind == "token_file" else f"${name} ({self.where} token_env)"

    def reload(self) -> bool:
        """Read the token again from its file or variable; True if the value changed."""
        if self.source is None:
            return False
        kind, name = self.source
        try:
            fresh = Path(name).read_text().strip() if kind == "token_file" else os.environ.get(name, "").strip()
        except OSError as exc:
            log.warning("%s: cannot read %s again: %s", self.where, name, exc.strerror)
            return False
        if not fresh or fresh == self.value:
            return False
        _SECRETS.add(fresh)
        self.value = fresh
        return True

    @property
    def expiry(self) -> float | None:
        return jwt_expiry(self.value)


class TokenAuth(httpx.Auth):
    """Puts the token in the header a platform wants; on a 401, reads the token again and retries once.

    An `httpx.Auth`, so that it rides on every request of the platform (and on no request to
    another host: `Http` drops it on redirects that leave the API's origin).
    """

    def __init__(self, token: Token, header: str, template: str = "{}"):
        self.token = token
        self.header = header
        self.template = template

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        used = self.token.value
        request.headers[self.header] = self.template.format(used)
        response = yield request
        if response.status_code != 401:
            return
        # Another request may have read the new value already: retry whenever it differs from
        # what this request carried.
        if self.token.reload() or self.token.value != used:
            log.warning("%s: the platform refused the token (401); read it again from %s: it changed, retrying",
                        self.token.where, self.token.describe_source())
            request.headers[self.header] = self.template.format(self.token.value)
            yield request


async def watch_expiry(token: Token, name: str) -> None:
    """Warn, naming the table and the file to update, when a JWT has less than a day left (at the
    mount's start, or later), and again an hour before it expires. Returns once the token states
    no expiry or has expired (a refused request then reads the source again, see `TokenAuth`)."""
    warned: set[tuple[str, str]] = set()
    while (expires := token.expiry) is not None:
        left = expires - time.time()
        if left <= 0:
            return
        stage = "hour" if left <= WARN_BEFORE else "day" if left <= WARN_AT_MOUNT else None
        if stage and (token.value, stage) not in warned:
            if token.reload():
                continue  # updated already: judge the new one
            warned.add((token.value, stage))
            log.warning("%s: the token expires at %s (in %.1f h); update %s", name, utc(expires), left / 3600,
                        token.describe_source())
        # Until the next warning is due, or the expiry; at least hourly, since the source may change.
        due = left - WARN_BEFORE if left > WARN_BEFORE else left
        await trio.sleep(max(1.0, min(due, 3600.0)))
