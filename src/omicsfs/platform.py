"""The interface between the core and a platform module.

A platform describes its data as a tree of `Entry` values: `root()` is its top directory,
`list_dir()` lists any directory it handed out, and `read()` streams a byte range of any file it
handed out. The core owns inodes, naming, caching and FUSE; a platform owns its API.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, TypeVar

import trio

from omicsfs.errors import AccessDenied, NotFound, PlatformError
from omicsfs.http import Http

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

    def __init__(self, name: str, settings: dict, http: Http):
        """`settings` is the platform's table from the config, with `token` resolved."""
        self.name = name
        self.settings = settings
        self.http = http

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
        return ""

    def root(self) -> Entry:
        """The platform's top directory, named as the config's table; `list_dir` gets its key `("top",)`."""
        return Entry(self.name, True, ("top",))

    @abc.abstractmethod
    async def list_dir(self, entry: Entry) -> list[Entry]:
        """The entries of a directory this platform described."""

    @abc.abstractmethod
    def read(self, entry: Entry, start: int, end: int, *, what: str) -> AsyncIterator[bytes]:
        """Yield the bytes [start, end) of a file, in order, as they arrive."""

    async def space_usage(self) -> SpaceUsage | None:
        """The account's quota and usage, where the platform tells them."""
        return None
