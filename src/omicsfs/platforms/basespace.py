"""Illumina BaseSpace, through the V1 API (`v1pre3`) and what V2 adds, laid out as BaseMount users know it.

```
NAME/Projects/<project>/Samples/<sample>/Files/<Path…>            V1
NAME/Projects/<project>/AppResults/<appresult>/Files/<Path…>      V1
NAME/Projects/<project>/Datasets/<dataset>/<directories…>         V2
NAME/Projects/<project>/AppSessions/<appsession>/<log files…>     V2
NAME/BioSamples/<biosample>/<dataset>/<directories…>              V2
NAME/Runs/<run>/Files/<Path…>                                     V1
```

Reference: the V1 API reference (seed 002). What it makes us do:
- `Href*` values are relative to the host root with no leading slash: joined to `url`.
- Lists page with `Offset`/`Limit` until `TotalCount`; a page may hold fewer items than `Limit`
  (the server caps it), so the next offset counts the items received, never the limit.
- Run list items carry no `Name` (only `ExperimentName`): each run's own answer gives it.
- Dates have 7 fractional digits and often no zone (`dates.parse_timestamp`).
- Content: `files/{id}/content?redirect=meta` gives a presigned URL and its expiry (or a 302 to
  it, with the expiry in the `Expires` header); it is reused until it expires.

And the V2 reference (seed 001):
- Lists page with lower-case `offset`/`limit`; the envelope is `{"Items", "Paging": {"TotalCount"...}}`.
- `datasets/{id}/files` and `appsessions/{id}/logfiles` list one `directory` at a time ("root is
  /"), with `includesubdirectories` adding `SubDirectories`, whose item shape the reference leaves
  open: a path string, or an object with `Path` or `Name`, are all accepted. Directories are
  listed as they are opened, so a dataset of 100k files costs nothing until walked.
- V2 files are `V1pre3FileCompact`s: their ids are V1 file ids, read through V1 `files/{id}/content`.
- `users/current` carries `StorageStatistics` (`Quota`, `TotalSize`, `Unit`): shown by `df`.
"""

from __future__ import annotations

import email.utils
import logging
from collections.abc import AsyncIterator
from urllib.parse import urljoin

from omicsfs.dates import parse_timestamp
from omicsfs.errors import AccessDenied, ConfigError, NotFound, PlatformError
from omicsfs.http import PresignedURLs
from omicsfs.oauth import device_flow
from omicsfs.platform import Entry, Platform, SpaceUsage, gather

log = logging.getLogger(__name__)

API = "v1pre3/"
API_V2 = "v2/"
#: The seed's caps: 1024 items a page, 1000 for file lists (V2 states none: 1000 is asked there too).
PAGE_LIMIT = 1024
FILE_PAGE_LIMIT = 1000
#: What `omicsfs login` asks BaseSpace to grant: browsing and reading all the user's data (the mount reads).
LOGIN_SCOPE = "BROWSE GLOBAL, READ GLOBAL"
_UNITS = {"": 1, "b": 1, "byte": 1, "bytes": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}


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
    title = "BaseSpace"
    token_name = "access token"
    auth_header = ("x-access-token", "{}")
    #: `omicsfs login`'s device flow: the app each site registers with BaseSpace, and what it asks for.
    optional_settings = {"client_id": str, "client_secret": str, "scope": str}

    def __init__(self, name, settings, http):
        super().__init__(name, settings, http)
        self.host = settings["url"].rstrip("/") + "/"
        self.urls = PresignedURLs(http, self._resolve_content)
        #: Whether the V2 API is there; `check` asks, at mount time.
        self.v2 = True

    # -- requests --------------------------------------------------------------------------

    def _url(self, href: str) -> str:
        """An absolute URL for an API path or a relative `Href` (`v1pre3/projects/1`)."""
        href = href.lstrip("/")
        return urljoin(self.host, href if href.startswith((API, API_V2)) else API + href)

    async def _response(self, href: str, *, what: str, params: dict | None = None) -> dict:
        body = await self.http.get_json(self._url(href), what=what, auth=self.auth, params=params)
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

    async def _v2_items(self, href: str, *, what: str, params: dict | None = None) -> list[dict]:
        """Every item of a V2 list, page by page."""
        items, _ = await self._v2_page_all(href, what=what, params=params)
        return items

    async def _v2_page_all(self, href: str, *, what: str, params: dict | None = None) -> tuple[list[dict], list]:
        """Every item of a V2 list, and the `SubDirectories` a file list names along the way."""
        items: list[dict] = []
        subdirectories: list = []
        while True:
            query = {**(params or {}), "offset": len(items), "limit": FILE_PAGE_LIMIT}
            body = await self.http.get_json(self._url(href), what=what, auth=self.auth, params=query)
            if not isinstance(body, dict):
                raise PlatformError(f"{what}: BaseSpace answered without an Items envelope")
            page = body.get("Items") or []
            items.extend(page)
            for subdirectory in body.get("SubDirectories") or []:
                if subdirectory not in subdirectories:
                    subdirectories.append(subdirectory)
            total = (body.get("Paging") or {}).get("TotalCount")
            if not page or (total is not None and len(items) >= total):
                return items, subdirectories

    async def check(self) -> None:
        await self._response("users/current", what=self.name)
        self.v2 = await self._has_v2()

    async def _has_v2(self) -> bool:
        """Whether this BaseSpace has the V2 API (an older or private instance answers 404 under
        `v2/`): asked once per mount, so that Datasets, AppSessions and BioSamples are shown only
        where they can be listed."""
        try:
            await self.http.get_json(self._url(f"{API_V2}users/current"), what=f"{self.name}: V2 API", auth=self.auth)
        except NotFound:
            log.info("%s: no V2 API at %s (404): Datasets, AppSessions and BioSamples are not shown", self.name, self.host)
            return False
        except AccessDenied:
            raise
        except PlatformError as exc:
            log.warning("%s: the V2 API did not answer (%s): Datasets, AppSessions and BioSamples are not shown", self.name, exc)
            return False
        return True

    async def login(self, prompt) -> str:
        """The OAuth device flow of the reference (seed 002: `oauthv2/deviceauthorization`, then
        `oauthv2/token` with the device code as `code` and `grant_type=device`), through the app the
        site registered: its `client_id` and `client_secret` are in the table."""
        missing = [key for key in ("client_id", "client_secret") if not self.settings.get(key)]
        if missing:
            raise ConfigError(f"[platforms.{self.name}]: omicsfs login signs in through your site's BaseSpace app: "
                              f"set {' and '.join(missing)} (the app's credentials in the BaseSpace developer portal)")
        client = {"client_id": self.settings["client_id"]}
        return await device_flow(
            self.http, prompt, what=f"{self.name}: BaseSpace login",
            authorize_url=self._url("oauthv2/deviceauthorization"),
            authorize_form={**client, "response_type": "device_code", "scope": self.settings.get("scope", LOGIN_SCOPE)},
            token_url=self._url("oauthv2/token"),
            token_form=lambda device_code: {**client, "client_secret": self.settings["client_secret"], "code": device_code,
                                            "grant_type": "device"},
        )

    # -- the tree --------------------------------------------------------------------------

    async def list_dir(self, entry: Entry) -> list[Entry]:
        kind, *args = entry.key
        if kind == "top":
            return [Entry(name, True, (name.lower(),)) for name in ("Projects", "Runs", *(("BioSamples",) if self.v2 else ()))]
        if kind == "projects":
            projects = await self._items("users/current/projects", what=f"{self.name}/Projects")
            return [self._entity(item, ("project", item["Id"])) for item in projects]
        if kind == "project":
            (project_id,) = args
            names = ("Samples", "AppResults", *(("Datasets", "AppSessions") if self.v2 else ()))
            return [Entry(name, True, (name.lower(), project_id)) for name in names]
        if kind in ("datasets", "biosample"):
            (parent_id,) = args
            href, params = (
                (f"{API_V2}projects/{parent_id}/datasets", None)
                if kind == "datasets"
                else (f"{API_V2}datasets", {"inputbiosamples": parent_id})
            )
            items = await self._v2_items(href, what=f"{self.name}: {kind} {parent_id} datasets", params=params)
            # The place is part of the key: a dataset shown under a project and under a biosample
            # must be two directories to the kernel, which refuses a directory with two parents.
            place = f"{kind}:{parent_id}"
            return [self._entity(item, ("directory", f"{API_V2}datasets/{item['Id']}/files", "/", place)) for item in items]
        if kind == "appsessions":
            (project_id,) = args
            items = await self._v2_items(
                f"{API_V2}appsessions", what=f"{self.name}: project {project_id} appsessions", params={"output.projects": project_id}
            )
            return [
                self._entity(item, ("directory", f"{API_V2}appsessions/{item['Id']}/logfiles", "/", project_id)) for item in items
            ]
        if kind == "biosamples":
            items = await self._v2_items(f"{API_V2}biosamples", what=f"{self.name}/BioSamples")
            return [self._entity(item, ("biosample", item["Id"]), item.get("BioSampleName")) for item in items]
        if kind == "directory":
            return await self._v2_directory(*args)
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

        async def detail(item: dict) -> dict:
            href = item.get("Href") or f"runs/{item['Id']}"
            return await self._response(href, what=f"{self.name}/Runs: run {item['Id']}")

        entries = []
        for item, run in zip(items, await gather(detail, items)):
            name = run.get("Name") or run.get("ExperimentName") or item["Id"]
            entries.append(self._entity(run, ("run", item["Id"]), name))
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

    async def _v2_directory(self, href: str, directory: str, place: str) -> list[Entry]:
        """One directory of a V2 file list: its files, and its subdirectories to be listed when opened."""
        files, subdirectories = await self._v2_page_all(
            href, what=f"{self.name}: {href} {directory}", params={"directory": directory, "includesubdirectories": "true"}
        )
        entries = [self._file(item) for item in files]
        for subdirectory in subdirectories:
            if isinstance(subdirectory, dict):
                subdirectory = subdirectory.get("Path") or subdirectory.get("Name") or ""
            name = str(subdirectory).rstrip("/").rsplit("/", 1)[-1]
            if name:
                entries.append(Entry(name, True, ("directory", href, f"{directory.rstrip('/')}/{name}/", place)))
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
        # A 302 to the store is an answer here (its Location is the URL), not a redirect to follow.
        response, answer = await self.http.json(
            "GET", self._url(f"files/{file_id}/content"), what=what, auth=self.auth, params={"redirect": "meta"},
            follow_redirects=False, ok=lambda status: 200 <= status < 400,
        )
        if response.is_redirect:
            return response.headers["location"], _expiry(response.headers.get("expires"))
        body = (answer.get("Response") if isinstance(answer, dict) else None) or {}
        url = body.get("HrefContent")
        if not url:
            raise PlatformError(f"{what}: BaseSpace gave no download URL")
        return urljoin(self.host, url), _expiry(body.get("Expires") or response.headers.get("expires"))

    async def space_usage(self) -> SpaceUsage | None:
        user = await self._response("users/current", what=f"{self.name}: storage statistics")
        statistics = user.get("StorageStatistics")
        if not isinstance(statistics, dict) or statistics.get("Quota") is None:
            return None
        unit = _UNITS.get(str(statistics.get("Unit") or "").strip().lower(), 1)
        return SpaceUsage(total=int(statistics["Quota"]) * unit, used=int(statistics.get("TotalSize") or 0) * unit)

    def read(self, entry: Entry, start: int, end: int, *, what: str) -> AsyncIterator[bytes]:
        _, file_id = entry.key
        return self.urls.read_range(file_id, start, end, what=what)


PLATFORM = BaseSpace
