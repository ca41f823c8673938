"""Illumina BaseSpace, through the V1 API (`v1pre3`), laid out as BaseMount users know it.

```
NAME/Projects/<project>/Samples/<sample>/Files/<Path…>
NAME/Projects/<project>/AppResults/<appresult>/Files/<Path…>
NAME/Runs/<run>/Files/<Path…>
```

Reference: the V1 API reference (seed 002). What it makes us do:
- `Href*` values are relative to the host root with no leading slash: joined to `url`.
- Lists page with `Offset`/`Limit` until `TotalCount`; a page may hold fewer items than `Limit`
  (the server caps it), so the next offset counts the items received, never the limit.
- Run list items carry no `Name` (only `ExperimentName`): each run's own answer gives it.
- Dates have 7 fractional digits and often no zone (`dates.parse_timestamp`).
- Content: `files/{id}/content?redirect=meta` gives a presigned URL and its expiry (or a 302 to
  it, with the expiry in the `Expires` header); it is reused until it expires.
"""

from __future__ import annotations

import email.utils
from collections.abc import AsyncIterator
from urllib.parse import urljoin

import trio

from omicsfs.dates import parse_timestamp
from omicsfs.errors import AccessDenied, PlatformError
from omicsfs.http import PresignedURLs
from omicsfs.platform import Entry, Platform

API = "v1pre3/"
#: The seed's caps: 1024 items a page, 1000 for file lists.
PAGE_LIMIT = 1024
FILE_PAGE_LIMIT = 1000
#: Run details fetched at once when listing runs (each run list item lacks its name).
DETAIL_CONCURRENCY = 8


def _expiry(text: str | None) -> float | None:
    """The Unix time a presigned URL expires, from an ISO date or an HTTP date; None if unknown."""
    if not text:
        return None
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return parse_timestamp(text) or None


class BaseSpace(Platform):
    kind = "basespace"

    def __init__(self, name, settings, http):
        super().__init__(name, settings, http)
        self.host = settings["url"].rstrip("/") + "/"
        self.headers = {"x-access-token": settings["token"]}
        self.urls = PresignedURLs(http, self._resolve_content)

    # -- requests --------------------------------------------------------------------------

    def _url(self, href: str) -> str:
        """An absolute URL for an API path or a relative `Href` (`v1pre3/projects/1`)."""
        href = href.lstrip("/")
        return urljoin(self.host, href if href.startswith(API) else API + href)

    async def _response(self, href: str, *, what: str, params: dict | None = None) -> dict:
        body = await self.http.get_json(self._url(href), what=what, headers=self.headers, params=params)
        if not isinstance(body, dict) or not isinstance(body.get("Response"), dict):
            raise PlatformError(f"{what}: BaseSpace answered without a Response envelope")
        return body["Response"]

    async def _items(self, href: str, *, what: str, limit: int = PAGE_LIMIT) -> list[dict]:
        """Every item of a list, page by page."""
        items: list[dict] = []
        while True:
            params = {"Offset": len(items), "Limit": limit, "SortBy": "Id", "SortDir": "Asc"}
            response = await self._response(href, what=what, params=params)
            page = response.get("Items") or []
            items.extend(page)
            total = response.get("TotalCount")
            if not page or (total is not None and len(items) >= total):
                return items

    async def check(self) -> None:
        try:
            await self._response("users/current", what=self.name)
        except AccessDenied as exc:
            raise AccessDenied(
                f"{self.name}: BaseSpace at {self.host} rejected the access token "
                f"(HTTP {exc.status}); check the token of [platforms.{self.name}]",
                status=exc.status,
            ) from None

    # -- the tree --------------------------------------------------------------------------

    def root(self) -> Entry:
        return Entry(self.name, True, ("top",))

    async def list_dir(self, entry: Entry) -> list[Entry]:
        kind, *args = entry.key
        if kind == "top":
            return [Entry("Projects", True, ("projects",)), Entry("Runs", True, ("runs",))]
        if kind == "projects":
            projects = await self._items("users/current/projects", what=f"{self.name}/Projects")
            return [self._entity(item, ("project", item["Id"])) for item in projects]
        if kind == "project":
            (project_id,) = args
            return [Entry("Samples", True, ("samples", project_id)), Entry("AppResults", True, ("appresults", project_id))]
        if kind in ("samples", "appresults"):
            (project_id,) = args
            items = await self._items(f"projects/{project_id}/{kind}", what=f"{self.name}: project {project_id} {kind}")
            return [self._entity(item, (kind[:-1], item["Id"])) for item in items]
        if kind in ("sample", "appresult", "run"):
            (entity_id,) = args
            return [Entry("Files", True, ("files", kind + "s", entity_id, ""))]
        if kind == "runs":
            return await self._runs()
        if kind == "files":
            container, entity_id, prefix = args
            files = await self._items(
                f"{container}/{entity_id}/files", what=f"{self.name}: {container[:-1]} {entity_id} files", limit=FILE_PAGE_LIMIT
            )
            return self._folder(container, entity_id, prefix, files)
        raise PlatformError(f"{self.name}: no listing for {kind}")

    def _entity(self, item: dict, key: tuple, name: str | None = None) -> Entry:
        return Entry(
            name or str(item.get("Name") or item["Id"]),
            True,
            key,
            uid=str(item["Id"]),
            mtime=parse_timestamp(item.get("DateCreated")),
            info=item,
            xattrs={"id": str(item["Id"]), "href": str(item.get("Href", ""))},
        )

    async def _runs(self) -> list[Entry]:
        items = await self._items("users/current/runs", what=f"{self.name}/Runs")
        details: dict[str, dict] = {}
        limiter = trio.CapacityLimiter(DETAIL_CONCURRENCY)

        async def fetch(item: dict) -> None:
            async with limiter:
                href = item.get("Href") or f"runs/{item['Id']}"
                details[item["Id"]] = await self._response(href, what=f"{self.name}/Runs: run {item['Id']}")

        async with trio.open_nursery() as nursery:
            for item in items:
                nursery.start_soon(fetch, item)
        entries = []
        for item in items:
            detail = details[item["Id"]]
            name = detail.get("Name") or detail.get("ExperimentName") or item["Id"]
            entries.append(self._entity(detail, ("run", item["Id"]), name))
        return entries

    def _folder(self, container: str, entity_id: str, prefix: str, files: list[dict]) -> list[Entry]:
        """The entries at `prefix` of the folder tree the files' `Path`s describe.

        Subfolders come with their listings (`Entry.children`), so walking down a run's BaseCalls
        costs no further requests.
        """
        root: dict = {}
        for item in files:
            path = str(item.get("Path") or item.get("Name") or item["Id"]).strip("/")
            *folders, _ = path.split("/")
            node = root
            for folder in folders:
                node = node.setdefault(folder, {})
            node.setdefault(None, []).append(item)
        node = root
        for folder in filter(None, prefix.split("/")):
            node = node.get(folder, {})
        return self._folder_entries(container, entity_id, prefix, node)

    def _folder_entries(self, container: str, entity_id: str, prefix: str, node: dict) -> list[Entry]:
        entries = [self._file(item) for item in node.get(None, [])]
        for folder, subtree in node.items():
            if folder is None:
                continue
            path = f"{prefix}/{folder}" if prefix else folder
            children = self._folder_entries(container, entity_id, path, subtree)
            mtime = max((child.mtime for child in children), default=0.0)
            entries.append(Entry(folder, True, ("files", container, entity_id, path), mtime=mtime, children=children))
        return entries

    def _file(self, item: dict) -> Entry:
        created = item.get("DateCreated") or ""
        return Entry(
            str(item.get("Name") or item["Id"]),
            False,
            ("file", str(item["Id"])),
            uid=str(item["Id"]),
            size=int(item.get("Size") or 0),
            mtime=parse_timestamp(created),
            version=f"{item.get('Size')}/{created}/{item.get('ETag', '')}",
            info=item,
            xattrs={"id": str(item["Id"]), "href": str(item.get("Href", ""))},
        )

    # -- content ---------------------------------------------------------------------------

    async def _resolve_content(self, file_id: str) -> tuple[str, float | None]:
        what = f"{self.name}: file {file_id} content"
        response = await self.http.request(
            "GET", self._url(f"files/{file_id}/content"), what=what, headers=self.headers, params={"redirect": "meta"}
        )
        if response.is_redirect:
            return response.headers["location"], _expiry(response.headers.get("expires"))
        body = response.json().get("Response") or {}
        url = body.get("HrefContent")
        if not url:
            raise PlatformError(f"{what}: BaseSpace gave no download URL")
        return urljoin(self.host, url), _expiry(body.get("Expires") or response.headers.get("expires"))

    def read(self, entry: Entry, start: int, end: int, *, what: str) -> AsyncIterator[bytes]:
        _, file_id = entry.key
        return self.urls.read_range(file_id, start, end, what=what)


PLATFORM = BaseSpace
