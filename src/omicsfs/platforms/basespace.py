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

Writing back (seed 002's "write back" and multipart upload sections), as BaseMount users expect:
- `mkdir Projects/<new>` creates a project (`POST projects`, form `name`). BaseSpace answers 200
  with the user's existing project of that name instead of creating one: that mkdir fails with
  EEXIST, never succeeds on someone else's directory.
- `mkdir Projects/<p>/AppResults/<new>` creates an app result (`POST projects/{id}/appresults`,
  JSON `Name`), which comes with a new AppSession, Running. BaseSpace lets names repeat there; the
  mount does not make a namesake of an existing app result (EEXIST), as a local mkdir would not.
- `mkdir` anywhere below an app result's `Files/` makes a directory only in the mount (BaseSpace
  folders are the paths of files; `children=[]`, no request) until a file lands in it.
- Files are written anywhere below `AppResults/<a>/Files/` while the app result's AppSession is
  Running, NeedsAttention or TimedOut (what BaseSpace's SDKs call `canWorkOn`); once Complete or
  Aborted, BaseSpace takes no more files into it and the directory is read-only. A file is uploaded
  to its app result with `directory=` its folders below `Files/`: up to `PartRules.whole_max` in one
  request (the bytes as body, with `Content-MD5`), else `multipart=true`, parts of 5 MiB to 25 MB
  (`PUT files/{id}/parts/{n}`, `Content-MD5` always, the answer's ETag is the part's hex MD5, which
  the core checks), then `uploadstatus=complete`, after which the file's size is checked. The
  `Content-Type` sent is the file's type by its extension (BaseSpace serves it back on download).
- Overwriting a file replaces it: the reference's `POST appresults/{id}/files` "changes or
  creates" the file of that name and directory, so writing over an existing file (where its app
  result takes files) uploads the new content to the same path, and BaseSpace replaces the old file
  when the upload completes (the emulator gives the new file a new id, as a new upload).
- Nothing is deleted or renamed file by file: BaseSpace's V1 API has no file delete and no rename
  (`rm` of a file and every `mv` fail with EPERM). `rmdir` of an app result or a project moves it to
  BaseSpace's trash (`DELETE appresults|projects/{id}`, as BaseMount's rmdir does), but only when it
  holds no data — an app result without files, a project without samples or app results — and
  fails with ENOTEMPTY otherwise: the trash can be restored, but a `rmdir` (or an `rm -r` that reaches
  one) must never carry data away, which a local rmdir never does. That undoes a mistaken mkdir;
  trashing data stays an act done in BaseSpace.
- Completing an app result is explicit: `omicsfs complete Projects/<p>/AppResults/<a>` sets its
  AppSession to Complete (`POST appsessions/{id}`, `status=complete`) and says so; closing a file
  never does it. After it the app result's files are final.
"""

from __future__ import annotations

import email.utils
import errno
import logging
import posixpath
from collections.abc import AsyncIterator
from urllib.parse import urlencode, urljoin

from omicsfs.dates import parse_timestamp
from omicsfs.errors import AccessDenied, ConfigError, NotFound, PlatformError
from omicsfs.http import PresignedURLs
from omicsfs.oauth import device_flow
from omicsfs.platform import Entry, PartBody, PartRules, Platform, SpaceUsage, all_pages, gather

log = logging.getLogger(__name__)

API = "v1pre3/"
API_V2 = "v2/"
#: The seed's caps: 1024 items a page, 1000 for file lists (V2 states none: 1000 is asked there too).
PAGE_LIMIT = 1024
FILE_PAGE_LIMIT = 1000
#: What `omicsfs login` asks BaseSpace to grant: browsing and reading all the user's data (the mount reads).
LOGIN_SCOPE = "BROWSE GLOBAL, READ GLOBAL"
_UNITS = {"": 1, "b": 1, "byte": 1, "bytes": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}

#: The reference's parts are "5–25 MB": 5 MiB and 25·10⁶ bytes are right whichever MB it means.
#: Files up to one part go in one request; anything larger streams in parts while it is written.
PART_RULES = PartRules(min_part=5 * 1024 * 1024, max_part=25_000_000, max_parts=10_000, whole_max=5 * 1024 * 1024,
                       needs_size=False, etag_is_md5=True)
#: AppSession statuses in which its app results take files (BaseSpace's SDKs: `canWorkOn`).
WRITABLE_STATUSES = frozenset({"Running", "NeedsAttention", "TimedOut"})
#: What an app result's session says when `omicsfs complete` completes it (128 characters at most).
COMPLETED_SUMMARY = "Marked complete with omicsfs"
#: What may be done where (`Entry.allows`).
_MAKE = frozenset({"mkdir"})
_WRITE = frozenset({"create", "mkdir"})
_TRASH = frozenset({"delete"})
_REPLACE = frozenset({"replace"})
#: Content types by extension, as BaseSpace labels such files; anything else is a stream of bytes.
_CONTENT_TYPES = {
    ".gz": "application/x-gzip", ".bgz": "application/x-gzip", ".zip": "application/zip", ".xml": "text/xml",
    ".txt": "text/plain", ".log": "text/plain", ".csv": "text/csv", ".tsv": "text/tab-separated-values",
    ".json": "application/json", ".html": "text/html", ".pdf": "application/pdf", ".png": "image/png",
}


def _content_type(name: str) -> str:
    return _CONTENT_TYPES.get(posixpath.splitext(name)[1].lower(), "application/octet-stream")


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
    part_rules = PART_RULES
    actions = frozenset({"complete"})

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
        """Every item of a list (the pages after the first asked at once)."""

        async def page(offset: int) -> tuple[list, int | None]:
            params = {"Offset": offset, "Limit": limit, "SortBy": "Id", "SortDir": "Asc"}
            response = await self._response(href, what=what, params=params)
            return response.get("Items") or [], response.get("TotalCount")

        return await all_pages(page)

    async def _v2_items(self, href: str, *, what: str, params: dict | None = None) -> list[dict]:
        """Every item of a V2 list, page by page."""
        items, _ = await self._v2_page_all(href, what=what, params=params)
        return items

    async def _v2_page_all(self, href: str, *, what: str, params: dict | None = None) -> tuple[list[dict], list]:
        """Every item of a V2 list, and the `SubDirectories` a file list names along the way."""
        named: dict[int, list] = {}  # offset -> the subdirectories that page named

        async def page(offset: int) -> tuple[list, int | None]:
            query = {**(params or {}), "offset": offset, "limit": FILE_PAGE_LIMIT}
            body = await self.http.get_json(self._url(href), what=what, auth=self.auth, params=query)
            if not isinstance(body, dict):
                raise PlatformError(f"{what}: BaseSpace answered without an Items envelope")
            named[offset] = body.get("SubDirectories") or []
            return body.get("Items") or [], (body.get("Paging") or {}).get("TotalCount")

        items = await all_pages(page)
        subdirectories: list = []
        for offset in sorted(named):
            subdirectories += [each for each in named[offset] if each not in subdirectories]
        return items, subdirectories

    async def check(self) -> None:
        # Both at once: the mount is ready a round trip sooner.
        async def ask(version: str) -> bool:
            if version == "v2":
                return await self._has_v2()
            await self._response("users/current", what=self.name)
            return True

        _, self.v2 = await gather(ask, ("v1", "v2"))

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
            names = ("Projects", "Runs", *(("BioSamples",) if self.v2 else ()))
            return [Entry(name, True, (name.lower(),), allows=_MAKE if name == "Projects" else frozenset()) for name in names]
        if kind == "projects":
            projects = await self._items("users/current/projects", what=f"{self.name}/Projects")
            return [self._entity(item, ("project", item["Id"]), allows=_TRASH) for item in projects]
        if kind == "project":
            (project_id,) = args
            names = ("Samples", "AppResults", *(("Datasets", "AppSessions") if self.v2 else ()))
            return [Entry(name, True, (name.lower(), project_id), allows=_MAKE if name == "AppResults" else frozenset())
                    for name in names]
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
            return [self._entity(item, (kind[:-1], item["Id"]), allows=_TRASH if kind == "appresults" else frozenset())
                    for item in items]
        if kind in ("sample", "appresult", "run"):
            (entity_id,) = args
            # An app result takes files while its session does: its Files directory says so, and
            # everything listed below it inherits that (`_folder`).
            takes_files = kind == "appresult" and (entry.info or {}).get("Status") in WRITABLE_STATUSES
            return [Entry("Files", True, ("files", kind + "s", entity_id, ""), allows=_WRITE if takes_files else frozenset())]
        if kind == "runs":
            return await self._runs()
        if kind == "files":
            container, entity_id, prefix = args
            files = await self._items(
                f"{container}/{entity_id}/files", what=f"{self.name}: {container[:-1]} {entity_id} files", limit=FILE_PAGE_LIMIT
            )
            # A file still being uploaded (by anyone) has no content yet: not shown.
            files = [item for item in files if str(item.get("UploadStatus") or "complete").lower() == "complete"]
            return self._folder(container, entity_id, prefix, files, writable="create" in entry.allows)
        raise PlatformError(f"{self.name}: no listing for {kind}")

    def _entity(self, item: dict, key: tuple, name: str | None = None, allows: frozenset[str] = frozenset()) -> Entry:
        return Entry(
            name or str(item.get("Name") or item["Id"]),
            True,
            key,
            uid=str(item["Id"]),
            mtime=parse_timestamp(item.get("DateCreated")),
            info=item,
            xattrs={"id": str(item["Id"]), "href": str(item.get("Href", ""))},
            allows=allows,
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

    def _folder(self, container: str, entity_id: str, prefix: str, files: list[dict], writable: bool = False) -> list[Entry]:
        """The entries at `prefix` of the folder tree the files' `Path`s describe.

        Subfolders come with their listings (`Entry.children`), so walking down a run's BaseCalls
        costs no further requests. In a `writable` tree (an app result that takes files) every
        folder takes new files and folders, and every file may be written over.
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
        return self._folder_entries(container, entity_id, prefix, node, writable)

    def _folder_entries(self, container: str, entity_id: str, prefix: str, node: dict, writable: bool) -> list[Entry]:
        entries = [self._file(item, _REPLACE if writable else frozenset()) for item in node.get(None, [])]
        for folder, subtree in node.items():
            if folder is None:
                continue
            path = f"{prefix}/{folder}" if prefix else folder
            children = self._folder_entries(container, entity_id, path, subtree, writable)
            mtime = max((child.mtime for child in children), default=0.0)
            entries.append(Entry(folder, True, ("files", container, entity_id, path), mtime=mtime, children=children,
                                 allows=_WRITE if writable else frozenset()))
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

    def _file(self, item: dict, allows: frozenset[str] = frozenset()) -> Entry:
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
            allows=allows,
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

    def presigned(self, entry: Entry) -> tuple[PresignedURLs, str] | None:
        return (self.urls, entry.key[1]) if entry.key[0] == "file" else None

    def read(self, entry: Entry, start: int, end: int, *, what: str) -> AsyncIterator[bytes]:
        _, file_id = entry.key
        return self.urls.read_range(file_id, start, end, what=what)

    # -- writing back ----------------------------------------------------------------------

    async def _call(self, method: str, href: str, *, what: str, form: dict[str, str] | None = None, **options) -> tuple[int, dict]:
        """A request that changes something: its status and the `Response` it answered. `form`
        goes as `application/x-www-form-urlencoded`, as the reference's form posts do."""
        if form is not None:
            options["content"] = urlencode(form).encode()
            options["headers"] = {**options.get("headers", {}), "Content-Type": "application/x-www-form-urlencoded"}
        response, body = await self.http.json(method, self._url(href), what=what, auth=self.auth, **options)
        if not isinstance(body, dict) or not isinstance(body.get("Response"), dict):
            raise PlatformError(f"{what}: BaseSpace answered without a Response envelope")
        return response.status_code, body["Response"]

    async def _holds_any(self, href: str, *, what: str) -> bool:
        """Whether a list has an item, from its first page of one."""
        response = await self._response(href, what=what, params={"Offset": 0, "Limit": 1})
        return bool(response.get("Items")) or int(response.get("TotalCount") or 0) > 0

    async def make_directory(self, parent: Entry, name: str) -> Entry:
        kind, *args = parent.key
        if kind == "projects":
            status, project = await self._call("POST", "projects", what=f"{self.name}/Projects: new project {name!r}",
                                               form={"name": name})
            if status != 201:
                raise PlatformError(f"{self.name}/Projects: BaseSpace already has a project named {name!r} "
                                    f"(id {project.get('Id')}): nothing created", errno_=errno.EEXIST)
            log.info("%s: created project %r (id %s)", self.name, name, project["Id"])
            return self._entity(project, ("project", project["Id"]), allows=_TRASH)
        if kind == "appresults":
            (project_id,) = args
            what = f"{self.name}: project {project_id}: new app result {name!r}"
            existing = await self._items(f"projects/{project_id}/appresults", what=what)
            if any(item.get("Name") == name for item in existing):
                raise PlatformError(f"{what}: the project has an app result of that name already", errno_=errno.EEXIST)
            _, appresult = await self._call("POST", f"projects/{project_id}/appresults", what=what, json_body={"Name": name})
            log.info("%s: created app result %r (id %s) in project %s", self.name, name, appresult["Id"], project_id)
            return self._entity(appresult, ("appresult", appresult["Id"]), allows=_TRASH)
        if kind == "files" and args[0] == "appresults":
            _, appresult_id, prefix = args
            path = f"{prefix}/{name}" if prefix else name
            return Entry(name, True, ("files", "appresults", appresult_id, path), children=[], allows=_WRITE)
        raise PlatformError(f"{self.name}: BaseSpace makes directories only in Projects, AppResults and an app result's Files",
                            errno_=errno.EROFS)

    def _destination(self, parent: Entry, name: str) -> tuple[str, str]:
        """(app result id, directory below its Files) that a file `name` written in `parent` goes to."""
        kind, *args = parent.key
        if kind != "files" or args[0] != "appresults":
            raise PlatformError(f"{self.name}: BaseSpace takes files only below an app result's Files", errno_=errno.EROFS)
        _, appresult_id, directory = args
        return appresult_id, directory

    async def _post_file(self, appresult_id: str, directory: str, name: str, body: PartBody | None) -> dict:
        """`POST appresults/{id}/files`: the file in one request (`body`), or a multipart upload begun."""
        params = {"name": name, **({"directory": directory} if directory else {})}
        headers = {"Content-Type": _content_type(name)}
        content = None
        if body is None:
            params["multipart"] = "true"
        else:
            headers.update({"Content-MD5": body.content_md5, "Content-Length": str(body.size)})
            content = body.stream
        what = f"{self.name}: app result {appresult_id}: {posixpath.join(directory, name)}"
        _, item = await self._call("POST", f"appresults/{appresult_id}/files", what=what, params=params, headers=headers,
                                   content=content)
        return item

    async def begin_upload(self, parent: Entry, name: str, size: int | None, replacing: Entry | None) -> dict:
        # The same request creates the file or, for a name that exists, starts its replacement.
        appresult_id, directory = self._destination(parent, name)
        item = await self._post_file(appresult_id, directory, name, None)
        return {"file": str(item["Id"]), "appresult": appresult_id, "path": posixpath.join(directory, name)}

    async def upload_part(self, handle: dict, number: int, body: PartBody) -> str:
        what = f"{self.name}: app result {handle['appresult']}: {handle['path']}: part {number}"
        _, part = await self._call(
            "PUT", f"files/{handle['file']}/parts/{number}", what=what,
            headers={"Content-MD5": body.content_md5, "Content-Length": str(body.size)}, content=body.stream,
        )
        etag = str(part.get("ETag") or "").strip().strip('"')
        if not etag:
            raise PlatformError(f"{what}: BaseSpace answered without the part's ETag")
        if part.get("Size") is not None and int(part["Size"]) != body.size:
            raise PlatformError(f"{what}: BaseSpace received {part['Size']} bytes of {body.size}")
        return etag

    async def complete_upload(self, handle: dict, parts: list[tuple[int, str]], size: int) -> Entry:
        what = f"{self.name}: app result {handle['appresult']}: {handle['path']}: completing file {handle['file']}"
        try:
            _, item = await self._call("POST", f"files/{handle['file']}", what=what, params={"uploadstatus": "complete"})
        except PlatformError as refused:
            # Refused as not pending: this may be a second completion, after an answer lost to the
            # network or to a crash. The file says whether the first one took.
            if refused.status not in (400, 409):
                raise
            item = await self._response(f"files/{handle['file']}", what=what)
            if str(item.get("UploadStatus") or "").lower() != "complete" or int(item.get("Size") or 0) != size:
                raise
            log.info("%s: already complete", what)
        return self._completed(item, size, what)

    def _completed(self, item: dict, size: int, what: str) -> Entry:
        status = str(item.get("UploadStatus") or "complete").lower()
        if status != "complete" or int(item.get("Size") or 0) != size:
            raise PlatformError(f"{what}: BaseSpace holds {item.get('Size')} bytes ({status}) where {size} were written")
        return self._file(item, _REPLACE)

    async def abort_upload(self, handle: dict) -> None:
        what = f"{self.name}: app result {handle['appresult']}: {handle['path']}: aborting file {handle['file']}"
        try:
            await self._call("POST", f"files/{handle['file']}", what=what, params={"uploadstatus": "aborted"})
        except PlatformError as exc:  # best effort: BaseSpace drops unfinished uploads on its own
            log.warning("%s: %s", what, exc)

    async def upload_whole(self, parent: Entry, name: str, body: PartBody, replacing: Entry | None) -> Entry:
        appresult_id, directory = self._destination(parent, name)
        item = await self._post_file(appresult_id, directory, name, body)
        return self._completed(item, body.size, f"{self.name}: app result {appresult_id}: {posixpath.join(directory, name)}")

    async def delete(self, entry: Entry) -> None:
        kind, *args = entry.key
        if kind not in ("project", "appresult"):
            what = "files" if not entry.is_dir else "this directory"
            raise PlatformError(f"{self.name}: {entry.name}: BaseSpace cannot delete {what}", errno_=errno.EPERM)
        (entity_id,) = args
        what = f"{self.name}: {kind} {entry.name!r} ({entity_id})"
        lists = ["samples", "appresults"] if kind == "project" else ["files"]
        held = await gather(lambda part: self._holds_any(f"{kind}s/{entity_id}/{part}", what=what), lists)
        if any(held):
            raise PlatformError(f"{what}: holds data; rmdir moves only an empty {kind} to BaseSpace's trash "
                                "(trash it in BaseSpace itself)", errno_=errno.ENOTEMPTY)
        try:
            await self._call("DELETE", f"{kind}s/{entity_id}", what=what)
        except NotFound:
            pass  # gone already: an answer lost and the request retried, or trashed elsewhere
        log.info("%s: moved to BaseSpace's trash", what)

    async def perform(self, action: str, entry: Entry) -> str:
        if action != "complete":
            return await super().perform(action, entry)
        kind, *args = entry.key
        if kind != "appresult":
            raise PlatformError(f"{self.name}: {entry.name}: complete applies to an app result "
                                "(Projects/<project>/AppResults/<app result>)", errno_=errno.EINVAL)
        (appresult_id,) = args
        what = f"{self.name}: app result {entry.name!r} ({appresult_id})"
        appresult = await self._response(f"appresults/{appresult_id}", what=what)
        session = appresult.get("AppSession") or {}
        if not session.get("Id"):
            raise PlatformError(f"{what}: BaseSpace names no AppSession to complete", errno_=errno.EINVAL)
        before = session.get("Status") or "unknown"
        if before == "Complete":
            return f"App result {entry.name!r} was already complete (AppSession {session['Id']}); nothing changed."
        if before == "Aborted":
            raise PlatformError(f"{what}: its AppSession {session['Id']} was aborted, and an aborted session cannot be completed",
                                errno_=errno.EPERM)
        _, after = await self._call("POST", f"appsessions/{session['Id']}", what=what,
                                    form={"status": "complete", "statussummary": COMPLETED_SUMMARY})
        log.info("%s: AppSession %s marked complete", what, session["Id"])
        return (f"Marked app result {entry.name!r} complete: its AppSession {session['Id']} went from {before} to "
                f"{after.get('Status', 'Complete')}, and BaseSpace takes no more files into it.")


PLATFORM = BaseSpace
