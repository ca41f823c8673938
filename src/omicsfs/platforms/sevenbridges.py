"""Seven Bridges (the Platform, and CGC / Cavatica, which share its API), through the `v2` API.

```
NAME/Projects/<owner>/<project>/<the project's folders and files>
NAME/Projects/<owner>/<project>/.tasks/<task>/<the task's output files>
```

Reference: the API overview (seed 003); where it is silent, the public docs (docs.sevenbridges.com)
and the public clients sbg/sevenbridges-python and sevenbridges2 (R). What they make us do:
- `url` is the API base as SBG documents it (`https://api.sbgenomics.com/v2`, EU
  `https://eu-api.sbgenomics.com/v2`, CGC `https://cgc-api.sbgenomics.com/v2`); `/v2` is appended
  when missing, so the bare host works too.
- Every request carries `X-SBG-Auth-Token` (seed: Authentication); `GET /v2/user` checks it.
- Lists page with `limit` (at most 100) and `offset`; the total is the `X-Total-Matching-Query`
  header, which comes when `offset` is given (seed: Response pagination). A page may hold fewer
  items than `limit`, so the next offset counts the items received. The body's `links` are not
  followed: the seed's own examples of them are malformed; offsets are rebuilt instead.
- Lists return "some default properties" unless `fields=_all` (seed: Generic query parameters);
  we ask `_all`, as sevenbridges-python's queries do, so sizes and dates come with the listing and
  a directory's `.json` holds the whole resource.
- A project is `{owner}/{short name}` (seed: Project short names): a directory per owner, then the
  short name, which is unique per owner, immutable and file-name safe; the given name is in `.json`.
- `GET /v2/files?project=` lists a project's root and `?parent=<folder id>` a folder, never both;
  items are `type` `file` or `folder` (sevenbridges2 `Files$query`, sevenbridges-python `File`).
- Content: `GET /v2/files/{id}/download_info` gives `{"url"}` (sevenbridges-python
  `File.download_info`) and no expiry, so a URL is reused until the store refuses it (403), then
  resolved again (`PresignedURLs`).
- Tasks: `GET /v2/tasks?project=`, `GET /v2/tasks/{id}`; `outputs` maps each output id to a CWL
  `File` (`{"class": "File", "path": <file id>, "name", "secondaryFiles"}`), a list of them, a
  `Directory`, or a plain value (seed: Inputs; sevenbridges-python `map_input_output`). Outputs are
  ordinary project files: their details come from `POST /v2/bulk/files/get` (sevenbridges-python
  `File.bulk_get`), at most 100 ids a call (the public clients state no cap; 100 is `limit`'s).
- The public reference files are the project `admin/sbg-public-data` (seed), which the user's
  project list does not include: `public_files = true` adds it under `admin/`.
- Rate limit: 1000 requests per 5 minutes; a 429 says when the window resets in
  `X-RateLimit-Reset`, a Unix time (public docs; sevenbridges-python `rate_limit_sleeper`), which
  `Http` waits for.

Why `.tasks` is hidden rather than a visible `Tasks/`: a task's outputs are files the project tree
already shows (SBG writes them into the project, `origin.task` naming the task), so the project
directory stays what the Files tab of the SBG web UI shows: `ls`, shell globs (`project/*`) and
`cp -r project/*` see each file once, and no synthetic folder can collide with a user's own folder
named `Tasks` (SBG folder names are free). `.tasks` is still one `cd` away; `du`, `find` and
`rsync` do walk it (exclude it there). An output has the same key as its file in the project, so
both paths are one inode, and share cached blocks. Secondary files (`.bai`, `.tbi`) sit next to
their primary file, so indexed tools work in a task's directory.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx

from omicsfs.dates import parse_timestamp
from omicsfs.errors import AccessDenied, NotFound, PlatformError
from omicsfs.http import PresignedURLs, redact_url
from omicsfs.platform import Entry, Platform

log = logging.getLogger(__name__)

API = "v2"
#: The seed's cap on `limit`.
PAGE_LIMIT = 100
#: File ids one `bulk/files/get` call takes (an assumption: the same cap as `limit`).
BULK_LIMIT = 100
PUBLIC_PROJECT = "admin/sbg-public-data"
TASKS_DIR = ".tasks"


class SevenBridges(Platform):
    kind = "sevenbridges"
    title = "Seven Bridges"
    token_name = "authentication token"
    auth_header = ("X-SBG-Auth-Token", "{}")
    optional_settings = {"public_files": bool}

    def __init__(self, name, settings, http):
        super().__init__(name, settings, http)
        base = settings["url"].rstrip("/")
        self.base = base if base.endswith(f"/{API}") else f"{base}/{API}"
        self.headers = {"Accept": "application/json"}
        self.public_files = bool(settings.get("public_files", False))
        self.urls = PresignedURLs(http, self._resolve_download)

    # -- requests --------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    async def _get(self, path: str, *, what: str, params: dict | None = None) -> dict:
        return _json_object(await self.http.json("GET", self._url(path), what=what, headers=self.headers, auth=self.auth, params=params), what)

    async def _items(self, path: str, *, what: str, params: dict | None = None) -> list[dict]:
        """Every item of a list, page by page, with all fields."""
        items: list[dict] = []
        while True:
            query = {**(params or {}), "offset": len(items), "limit": PAGE_LIMIT, "fields": "_all"}
            answer = await self.http.json("GET", self._url(path), what=what, headers=self.headers, auth=self.auth, params=query)
            response, body = answer[0], _json_object(answer, what)
            page = body.get("items") or []
            items.extend(page)
            total = response.headers.get("x-total-matching-query")
            if not page:
                return items
            if total is not None and total.isdigit():
                if len(items) >= int(total):
                    return items
            elif not any(link.get("rel") == "next" for link in body.get("links") or []):
                return items

    async def check(self) -> None:
        await self._get("user", what=self.name)

    # -- the tree --------------------------------------------------------------------------

    async def list_dir(self, entry: Entry) -> list[Entry]:
        kind, *args = entry.key
        if kind == "top":
            return [Entry("Projects", True, ("projects",))]
        if kind == "projects":
            return self._owners(await self._projects())
        if kind == "owner":
            (owner,) = args
            return [self._project(item) for item in await self._projects() if _owner(item) == owner]
        if kind == "project":
            (project_id,) = args
            items = await self._items("files", what=f"{self.name}: project {project_id} files", params={"project": project_id})
            entries = [self._file_or_folder(item) for item in items]
            if project_id != PUBLIC_PROJECT:  # reference files only: no one runs tasks there
                entries.append(Entry(TASKS_DIR, True, ("tasks", project_id)))
            return entries
        if kind == "folder":
            (folder_id,) = args
            items = await self._items("files", what=f"{self.name}: folder {folder_id}", params={"parent": folder_id})
            return [self._file_or_folder(item) for item in items]
        if kind == "tasks":
            (project_id,) = args
            tasks = await self._items("tasks", what=f"{self.name}: project {project_id} tasks", params={"project": project_id})
            return [self._task(item) for item in tasks]
        if kind == "task":
            (task_id,) = args
            return await self._task_outputs(task_id)
        raise PlatformError(f"{self.name}: no listing for {kind}")

    async def _projects(self) -> list[dict]:
        projects = await self._items("projects", what=f"{self.name}/Projects")
        if self.public_files and not any(item.get("id") == PUBLIC_PROJECT for item in projects):
            projects.append(await self._public_project())
        return projects

    async def _public_project(self) -> dict:
        what = f"{self.name}: project {PUBLIC_PROJECT}"
        try:
            return await self._get(f"projects/{PUBLIC_PROJECT}", what=what)
        except (NotFound, AccessDenied) as exc:
            # Its files may still be listed (`files?project=`) when its details are not shown.
            log.warning("%s: no project details (%s); listing its files anyway", what, exc)
            return {"id": PUBLIC_PROJECT, "name": "Public Reference Files"}

    def _owners(self, projects: list[dict]) -> list[Entry]:
        """One directory per owner, handed over with its projects."""
        owners: dict[str, list[Entry]] = {}
        for item in projects:
            owners.setdefault(_owner(item), []).append(self._project(item))
        return [
            Entry(owner, True, ("owner", owner), mtime=max(p.mtime for p in entries), children=entries)
            for owner, entries in owners.items()
        ]

    def _project(self, item: dict) -> Entry:
        project_id = str(item["id"])
        return Entry(
            project_id.partition("/")[2] or project_id,
            True,
            ("project", project_id),
            uid=project_id,
            mtime=_mtime(item),
            info=item,
            xattrs={"id": project_id, "href": str(item.get("href", ""))},
        )

    def _file_or_folder(self, item: dict) -> Entry:
        if item.get("type") == "folder":
            return Entry(
                str(item.get("name") or item["id"]),
                True,
                ("folder", str(item["id"])),
                uid=str(item["id"]),
                mtime=_mtime(item),
                info=item,
                xattrs={"id": str(item["id"]), "href": str(item.get("href", ""))},
            )
        modified = item.get("modified_on") or item.get("created_on") or ""
        return Entry(
            str(item.get("name") or item["id"]),
            False,
            ("file", str(item["id"])),
            uid=str(item["id"]),
            size=int(item.get("size") or 0),
            mtime=_mtime(item),
            version=f"{item.get('size')}/{modified}",
            info=item,
            xattrs={"id": str(item["id"]), "href": str(item.get("href", "")), "project": str(item.get("project", ""))},
        )

    def _task(self, item: dict) -> Entry:
        task_id = str(item["id"])
        return Entry(
            str(item.get("name") or task_id),
            True,
            ("task", task_id),
            uid=task_id,
            mtime=parse_timestamp(item.get("end_time") or item.get("created_time")),
            info=item,
            xattrs={"id": task_id, "status": str(item.get("status", "")), "href": str(item.get("href", ""))},
        )

    async def _task_outputs(self, task_id: str) -> list[Entry]:
        """The files a task's outputs name, asked afresh: a running task gains outputs."""
        what = f"{self.name}: task {task_id}"
        task = await self._get(f"tasks/{task_id}", what=what)
        ids = list(dict.fromkeys(_output_ids(task.get("outputs"))))
        entries = []
        for start in range(0, len(ids), BULK_LIMIT):
            chunk = ids[start : start + BULK_LIMIT]
            answer = await self.http.json(
                "POST", self._url("bulk/files/get"), what=f"{what} outputs", headers=self.headers, auth=self.auth, json_body={"file_ids": chunk}
            )
            for record in _json_object(answer, what).get("items") or []:
                if record.get("resource"):
                    entries.append(self._file_or_folder(record["resource"]))
                else:
                    log.warning("%s: an output is not available: %s", what, (record.get("error") or {}).get("message"))
        return entries

    # -- content ---------------------------------------------------------------------------

    async def _resolve_download(self, file_id: str) -> tuple[str, float | None]:
        what = f"{self.name}: file {file_id} download"
        body = await self._get(f"files/{file_id}/download_info", what=what)
        url = body.get("url")
        if not url:
            raise PlatformError(f"{what}: Seven Bridges gave no download URL")
        return url, None

    def read(self, entry: Entry, start: int, end: int, *, what: str) -> AsyncIterator[bytes]:
        _, file_id = entry.key
        return self.urls.read_range(file_id, start, end, what=what)


def _json_object(answer: tuple[httpx.Response, object], what: str) -> dict:
    response, body = answer
    if not isinstance(body, dict):
        raise PlatformError(f"{what}: Seven Bridges answered {redact_url(response.url)} with something other than a JSON object")
    return body


def _owner(project: dict) -> str:
    return str(project["id"]).partition("/")[0]


def _mtime(item: dict) -> float:
    return parse_timestamp(item.get("modified_on") or item.get("created_on"))


def _output_ids(value: object) -> list[str]:
    """Ids of the files and folders a task's outputs name, secondary files after their primary."""
    if isinstance(value, list):
        return [found for element in value for found in _output_ids(element)]
    if isinstance(value, dict):
        if str(value.get("class", "")).lower() in ("file", "directory"):
            own = [str(value["path"])] if value.get("path") else []
            return own + _output_ids(value.get("secondaryFiles"))
        return [found for element in value.values() for found in _output_ids(element)]
    return []


PLATFORM = SevenBridges
