"""Directory listings: what each directory holds, named, for `metadata_ttl` seconds.

Kept apart from the inodes, as the platform gave them: the kernel forgetting a directory's inode
(memory pressure, `drop_caches`) does not cost a listing while it is fresh. Bounded in entries, so
a `find` over a large account does not grow the daemon for good.

Besides what platforms list, the entries this mount created (a directory made with `mkdir`, a
file whose upload the platform just confirmed) are shown until a listing of their directory
includes them: a platform may list a new file later than it confirmed it, and a BaseSpace folder
exists only through the paths of its files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Hashable

import cachetools
import trio

from omicsfs.platform import Entry

log = logging.getLogger(__name__)

#: A directory, as its platform's name and the directory entry's key.
Place = tuple[str, Hashable]

#: Entries in all the listings kept at once (a listing of 10,000 files counts 10,000).
MAX_ENTRIES = 500_000
#: How long an entry this mount created is shown while no listing of its directory has it yet.
CREATED_GRACE = 600.0


class Listings:
    def __init__(self, ttl: float, max_entries: int = MAX_ENTRIES):
        self.ttl = ttl
        # Each listing weighs its entries; one larger than the bound is simply not kept.
        self._cache: cachetools.TTLCache = cachetools.TTLCache(
            maxsize=max_entries, ttl=ttl, timer=time.monotonic, getsizeof=lambda listing: max(1, len(listing))
        )
        self._locks: dict[Place, trio.Lock] = {}
        #: place -> name -> (entry, when created, whether it exists only in the mount so far)
        self._created: dict[Place, dict[str, tuple[Entry, float, bool]]] = {}

    async def get(self, place: Place, fetch: Callable[[], Awaitable[dict[str, Entry]]]) -> dict[str, Entry]:
        """The named listing of `place`: cached, else fetched once however many ask at once."""
        listing = self._cache.get(place)
        if listing is not None:
            return listing
        lock = self._locks.setdefault(place, trio.Lock())
        try:
            async with lock:
                listing = self._cache.get(place)
                if listing is None:
                    listing = await fetch()
                    self._settle(place, listing)
                    if self.ttl > 0:
                        self._cache[place] = listing
                return listing
        finally:
            if not lock.statistics().tasks_waiting and self._locks.get(place) is lock:
                del self._locks[place]

    def cached(self, place: Place) -> dict[str, Entry] | None:
        return self._cache.get(place)

    def invalidate(self, place: Place) -> None:
        self._cache.pop(place, None)

    def invalidate_platform(self, platform: str) -> None:
        for place in [place for place in self._cache if place[0] == platform]:
            self._cache.pop(place, None)

    # -- what this mount created ------------------------------------------------------------

    def add_created(self, place: Place, name: str, entry: Entry, *, local: bool = False) -> None:
        """Show `entry` as `name` in `place` until a listing includes it. `local`: it exists only in
        the mount (a BaseSpace folder before its first file) and stays until listed or removed."""
        self._created.setdefault(place, {})[name] = (entry, time.monotonic(), local)

    def remove_created(self, place: Place, name: str) -> Entry | None:
        found = self._created.get(place, {}).pop(name, None)
        if place in self._created and not self._created[place]:
            del self._created[place]
        return found[0] if found else None

    def created(self, place: Place) -> dict[str, Entry]:
        now = time.monotonic()
        shown = {}
        for name, (entry, when, local) in list(self._created.get(place, {}).items()):
            if local or now - when < CREATED_GRACE:
                shown[name] = entry
            else:
                self.remove_created(place, name)
        return shown

    def _settle(self, place: Place, listing: dict[str, Entry]) -> None:
        """Stop showing created entries that the platform now lists itself."""
        created = self._created.get(place)
        if not created:
            return
        keys = {entry.key for entry in listing.values()}
        for name, (entry, _, _) in list(created.items()):
            if entry.key in keys:
                self.remove_created(place, name)
