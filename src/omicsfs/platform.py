"""The interface between the core and a platform module.

A platform describes its data as a tree of `Entry` values: `root()` is its top directory,
`list_dir()` lists any directory it handed out, and `read()` streams a byte range of any file it
handed out. The core owns inodes, naming, caching and FUSE; a platform owns its API.
"""

from __future__ import annotations

import abc
import base64
import errno
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, TypeVar

import trio

from omicsfs.credentials import Token, TokenAuth, utc
from omicsfs.errors import AccessDenied, NotFound, PlatformError
from omicsfs.http import Http, PresignedURLs

if TYPE_CHECKING:
    from omicsfs.login import Prompt

A = TypeVar("A")
R = TypeVar("R")

#: Requests a platform sends at once for one listing (details of each run, sizes of each file).
CONCURRENCY = 8


async def gather(function: Callable[[A], Awaitable[R]], arguments: Iterable[A], limit: int = CONCURRENCY) -> list[R]:
    """`function` over every argument, at most `limit` at once; the results in argument order.

    The first `PlatformError` cancels the rest and is raised as it is: the core maps it to an
    errno, where the `ExceptionGroup` a trio nursery would raise means nothing.
    """
    arguments = list(arguments)
    results: list = [None] * len(arguments)
    failures: list[PlatformError] = []
    limiter = trio.CapacityLimiter(limit)

    async with trio.open_nursery() as nursery:

        async def run(index: int, argument: A) -> None:
            async with limiter:
                try:
                    results[index] = await function(argument)
                except PlatformError as exc:
                    failures.append(exc)
                    nursery.cancel_scope.cancel()

        for index, argument in enumerate(arguments):
            nursery.start_soon(run, index, argument)
    if failures:
        raise failures[0]
    return results


#: Fetches the page of a list at an offset: its items, and the list's total where the API says it.
PageFetcher = Callable[[int], Awaitable[tuple[list, int | None]]]


async def all_pages(fetch: PageFetcher) -> list:
    """Every item of a list paged by offset, in order.

    The first page tells the page size the server grants and the total; the other pages are then
    asked at once (at most `CONCURRENCY`), where a client paging one after another pays a round
    trip per page: 10,000 files in pages of 1,000 cost two round trips rather than ten. A page that
    comes back short (the list changed, or the server caps pages unevenly) ends the parallel part:
    the rest is asked one page at a time from what was received, as is a list with no total.
    """
    items, total = await fetch(0)
    items = list(items)
    if items and total is not None and len(items) < total:
        size = len(items)
        offsets = list(range(size, total, size))
        for offset, (page, _) in zip(offsets, await gather(fetch, offsets)):
            if len(items) != offset or not page:
                break
            items.extend(page)
    while items and (total is None or len(items) < total):
        page, total = await fetch(len(items))
        if not page:
            break
        items.extend(page)
    return items


@dataclass(eq=False)
class Entry:
    """One directory or file as a platform describes it.

    `name` is the platform's own name; the core makes it safe and unique among its siblings
    (see `naming.py`), using `uid` to tell same-named siblings apart.
    """

    name: str
    is_dir: bool
    #: The platform's handle for this entry, given back to `list_dir` / `read`.
    key: Hashable
    #: A stable id (the platform's id where it has one): tells same-named siblings apart.
    uid: str = ""
    size: int = 0
    mtime: float = 0.0
    #: Changes whenever the content may have: cached blocks of another version are never served.
    version: str = ""
    #: The platform's API answer for this entity: shown as the hidden `.json` of a directory.
    info: dict | None = None
    #: Extra attributes, shown as `user.omicsfs.<name>` extended attributes.
    xattrs: dict[str, str] = field(default_factory=dict)
    #: A directory's listing, when the platform learned it together with the directory itself
    #: (folders built from file paths): the core then needs no `list_dir` call for it.
    children: list[Entry] | None = None
    #: A small file's whole content, when the platform has it at hand (a job's JSON answer).
    content: bytes | None = None
    #: What may be done here, where the platform allows it (see `Platform`'s writing methods):
    #: on a directory, "create" (new files inside, uploaded) and "mkdir" (new directories inside);
    #: on any entry, "delete" (rm, rmdir), "rename" (mv) and, on a file, "replace" (writing over
    #: it replaces it on the platform). Anything not allowed fails at once (EROFS or EPERM).
    allows: frozenset[str] = frozenset()
    #: The platform cannot list what is uploaded into this directory (BugSeq's uploads): the mount
    #: keeps a durable record of each upload it confirmed and lists those here.
    remembers_uploads: bool = False


def json_content(value: object) -> bytes:
    """A platform's JSON answer as the bytes of a file (`.json`, BugSeq's `job.json`): readable
    UTF-8, or, when it holds text UTF-8 cannot encode (a lone surrogate, valid in JSON), ASCII
    with escapes, which says exactly what the platform sent."""
    try:
        return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    except UnicodeEncodeError:
        return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class PartRules:
    """How a platform takes a file in parts; the core plans the parts within these rules."""

    #: Every part but the last is at least this long (S3: 5 MiB).
    min_part: int
    #: Every part is at most this long (BaseSpace: 25 MB; S3: 5 GiB).
    max_part: int
    #: Parts are numbered 1..max_parts.
    max_parts: int = 10_000
    #: Files up to this size go in one request (`upload_whole`), not in parts.
    whole_max: int = 0
    #: The upload must be told the file's size when it begins (Seven Bridges): it begins at close.
    #: Otherwise parts stream while the file is still being written.
    needs_size: bool = False
    #: A part's ETag is the hex MD5 of its bytes (S3, BaseSpace): the core checks it and sends a
    #: part again when it differs.
    etag_is_md5: bool = True


@dataclass(frozen=True)
class PartBody:
    """The bytes of one part (or of a whole small file), read from the staging file as sent.

    `stream()` gives a fresh iterator each call, so that a retried request sends the bytes again
    without holding them in memory; `md5` is their MD5 (`Content-MD5` is its base64).
    """

    size: int
    md5: bytes
    stream: Callable[[], AsyncIterator[bytes]]

    @property
    def content_md5(self) -> str:
        return base64.b64encode(self.md5).decode()


@dataclass(frozen=True)
class SpaceUsage:
    total: int
    used: int


class Platform(abc.ABC):
    """One configured account on one platform: a top-level directory of the mount."""

    #: The `kind` that names this module in the configuration.
    kind: ClassVar[str] = ""
    #: Keys the config table must / may hold (besides `kind` and the token keys), with their types.
    required_settings: ClassVar[dict[str, type]] = {"url": str}
    optional_settings: ClassVar[dict[str, type]] = {}
    needs_token: ClassVar[bool] = True
    #: How the platform's users name it and its token, for the messages of a failed mount.
    title: ClassVar[str] = ""
    token_name: ClassVar[str] = "token"
    #: The header that carries the token, and how its value is written around it.
    auth_header: ClassVar[tuple[str, str]] = ("Authorization", "Bearer {}")

    def __init__(self, name: str, settings: dict, http: Http):
        """`settings` is the platform's table from the config, with `token` resolved (and
        `token_source`, where to read it again)."""
        self.name = name
        self.settings = settings
        self.http = http
        self.token: Token | None = None
        self.auth: TokenAuth | None = None
        if self.needs_token:
            self.token = Token(settings["token"], settings.get("token_source"), f"[platforms.{name}]")
            self.auth = TokenAuth(self.token, *self.auth_header)

    @abc.abstractmethod
    async def check(self) -> None:
        """Verify the credentials with one cheap request (`verify` words the failures)."""

    async def verify(self) -> None:
        """`check`, with a refused token or a wrong URL told the way a user can act on."""
        where = f"[platforms.{self.name}]"
        try:
            await self.check()
        except AccessDenied as exc:
            raise AccessDenied(
                f"{self.name}: {self.title} at {self.settings['url']} rejected the {self.token_name} "
                f"(HTTP {exc.status}){self.token_hint()}; check the token of {where}",
                status=exc.status,
            ) from None
        except NotFound as exc:
            raise NotFound(f"{self.name}: no {self.title} API at {self.settings['url']} ({exc}); check the url of {where}") from None
        except PlatformError as exc:
            if exc.status is not None:
                raise
            # Retries exhausted: unreachable, or failing on every try.
            raise PlatformError(f"{self.name}: {self.title} at {self.settings['url']} did not answer ({exc}); check the url of {where} and the network") from None

    async def login(self, prompt: Prompt) -> str:
        """A new token for this table, from the person at the terminal (`omicsfs login`).

        Called on an instance made without a token (`settings["token"]` is ""). By default the
        token is asked for without echo; a platform with a sign-in flow of its own overrides this.
        """
        return prompt.secret(f"{self.title} {self.token_name} for [platforms.{self.name}] (typing is not shown): ")

    def token_hint(self) -> str:
        """More on why a token may have been refused (an expiry the token states), or ""."""
        expires = self.token.expiry if self.token else None
        return f"; the token expired at {utc(expires)}" if expires and expires < time.time() else ""

    def root(self) -> Entry:
        """The platform's top directory, named as the config's table; `list_dir` gets its key `("top",)`."""
        return Entry(self.name, True, ("top",))

    @abc.abstractmethod
    async def list_dir(self, entry: Entry) -> list[Entry]:
        """The entries of a directory this platform described."""

    @abc.abstractmethod
    def read(self, entry: Entry, start: int, end: int, *, what: str) -> AsyncIterator[bytes]:
        """Yield the bytes [start, end) of a file, in order, as they arrive."""

    def presigned(self, entry: Entry) -> tuple[PresignedURLs, Hashable] | None:
        """Where a file's bytes are a plain GET of a presigned URL: the platform's `PresignedURLs`
        and the file's key in it. The core then fetches them itself, in worker threads
        (`Http.read_range_into`), rather than through `read`; None: `read` it is."""
        return None

    async def prepare_read(self, entry: Entry) -> None:
        """Get ready to read `entry` soon (resolve its download URL). The core calls it in the
        background when a file is opened, and for the index files beside it, so that their first
        reads do not wait for an API round trip each."""
        found = self.presigned(entry)
        if found is not None:
            urls, key = found
            await urls.url(key)

    async def space_usage(self) -> SpaceUsage | None:
        """The account's quota and usage, where the platform tells them."""
        return None

    # -- writing ------------------------------------------------------------------------------
    #
    # A platform that takes writes declares `part_rules` and implements the methods below for the
    # entries whose `allows` say so; a read-only platform implements none of them. The core owns
    # staging, the journal, part planning, parallelism, retries and resuming; a platform owns only
    # its API calls. An upload's `handle` is plain JSON-able data (a dict of str/int/lists) that
    # the journal stores and hands back after a restart; entry keys are tuples of str/int, so that
    # the journal can store a parent's key and rebuild it (`Entry(name, True, key)`): `begin_upload`
    # and `make_directory` may rely on `parent.key` only.

    #: None: the platform takes no writes.
    part_rules: ClassVar[PartRules | None] = None

    async def make_directory(self, parent: Entry, name: str) -> Entry:
        """Create directory `name` in `parent` (a project, a folder...) and describe it.

        A platform whose folders exist only through the paths of their files (BaseSpace's Files)
        returns an entry with `children=[]` without asking its API: the core shows it until a
        listing of `parent` includes it.
        """
        raise PlatformError(f"{self.name}: directories cannot be created here", errno_=errno.EROFS)

    async def begin_upload(self, parent: Entry, name: str, size: int | None, replacing: Entry | None) -> dict:
        """Start a multipart upload of file `name` into `parent`; its handle. `size` is None when
        the file is still being written (only where `part_rules.needs_size` is False);
        `replacing` is the platform file being overwritten, where `"replace"` is allowed.

        Where the platform's API settles the part size when the upload begins (Seven Bridges answers
        one at init, which may differ from the one asked), the handle holds it as `part_size`:
        every part but the last is then exactly that long."""
        raise PlatformError(f"{self.name}: files cannot be written here", errno_=errno.EROFS)

    async def upload_part(self, handle: dict, number: int, body: PartBody) -> str:
        """Send part `number` (from 1); the ETag the platform answered. Safe to call again for the
        same number (a retry or a rewritten part replaces it)."""
        raise NotImplementedError

    async def complete_upload(self, handle: dict, parts: list[tuple[int, str]], size: int) -> Entry:
        """Finish the upload from its (number, ETag) parts; the new file as a listing shows it."""
        raise NotImplementedError

    async def abort_upload(self, handle: dict) -> None:
        """Give up an upload the platform holds unfinished (best effort)."""

    async def upload_whole(self, parent: Entry, name: str, body: PartBody, replacing: Entry | None) -> Entry:
        """Upload a file of at most `part_rules.whole_max` bytes in one go; the new file."""
        raise NotImplementedError

    async def delete(self, entry: Entry) -> None:
        """Delete a file or an empty directory (where its `allows` has "delete"). What empty means
        is the platform's (an app result's fixed `Files` folder does not count): a directory that
        is not is refused with ENOTEMPTY."""
        raise PlatformError(f"{self.name}: {entry.name} cannot be deleted", errno_=errno.EPERM)

    async def rename(self, entry: Entry, new_parent: Entry, new_name: str) -> Entry:
        """Rename or move an entry (where its `allows` has "rename"); the entry as it is now."""
        raise PlatformError(f"{self.name}: {entry.name} cannot be renamed", errno_=errno.EPERM)

    #: Explicit acts on an entry that no file operation expresses, by name (BaseSpace: "complete"
    #: an app result's session), run by `omicsfs <action> PATH`.
    actions: ClassVar[frozenset[str]] = frozenset()

    async def perform(self, action: str, entry: Entry) -> str:
        """Do `action` on `entry`; a sentence saying what was done, for the user."""
        raise PlatformError(f"{self.name}: {action} is not something {self.title} does", errno_=errno.EINVAL)
