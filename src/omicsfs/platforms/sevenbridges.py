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

Writes (docs.sevenbridges.com's upload and file calls; sevenbridges-python `transfer/upload.py` and
`File`; sevenbridges2 `Upload`, `Part`):
- Where: inside a project the user may write to (`permissions.write`) and its folders. The public
  reference project, the `Projects` and owner directories, `.tasks` and a task's outputs take no
  writes (a task's output is a project file: it is changed through the project's tree).
- A new file is uploaded when it is closed (`part_rules.needs_size`: the upload is initialized
  with the file's size): `POST upload/multipart` with `project` or `parent`, `name`, `size` and
  the part size we ask (SBG's recommended 32 MiB, larger where 10,000 parts would not hold the
  file). The service may answer a part size of its own; the handle's `part_size` is the one it
  answered, and the parts are cut to it. Each part: `GET upload/multipart/{id}/part/{n}` for a
  presigned URL (valid about a minute; fetched for each attempt and again whenever the store
  refuses it), the PUT with the method, headers and success codes that answer names (plus
  `Content-MD5`, which the store checks), then the headers named in its `report` (the ETag) are
  reported with `POST upload/multipart/{id}/part`. `POST .../complete` lists every part; should
  its answer be lost (the upload is then gone), the file it made is found by name, size and time.
  An empty file is one empty part, as the public clients send it.
- Overwriting a file replaces it: the upload is initialized with `overwrite=true`, and SBG deletes
  the old file and creates the new one, with a new id, when the upload completes; until then the
  old file is untouched. A new file never overwrites one created meanwhile by someone else: SBG
  refuses the name (EEXIST).
- `mkdir` creates a folder (`POST files` with `type: folder`); `rm` deletes a file and `rmdir` an
  empty folder (`DELETE files/{id}`). `mv` of a file renames it (`PATCH files/{id}`) or moves it
  to another folder of its project (`POST files/{id}/actions/move`); across projects it fails
  with EXDEV, so that `mv` copies and deletes. Folders cannot be renamed (SBG: "Updating folder
  details is not supported"; its bulk asynchronous move gives a moved folder a new id).
- SBG's error codes say more than their HTTP status: a name taken is EEXIST, a folder not empty
  ENOTEMPTY, a move across projects EXDEV (`_ERRNO_BY_CODE`).

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

import errno
import hashlib
import logging
import math
from collections.abc import AsyncIterator

import httpx
import trio

from omicsfs.dates import parse_timestamp
from omicsfs.errors import AccessDenied, NotFound, PlatformError, error_for_status
from omicsfs.http import PresignedURLs, redact_url
from omicsfs.platform import Entry, PartBody, PartRules, Platform

log = logging.getLogger(__name__)

API = "v2"
#: The seed's cap on `limit`.
PAGE_LIMIT = 100
#: File ids one `bulk/files/get` call takes (an assumption: the same cap as `limit`).
BULK_LIMIT = 100
PUBLIC_PROJECT = "admin/sbg-public-data"
TASKS_DIR = ".tasks"

MiB = 1024 * 1024
#: S3's rules, which SBG's part URLs lead to: parts of 5 MiB to 5 GiB, at most 10,000; 5 TiB a file.
PART_RULES = PartRules(min_part=5 * MiB, max_part=5 * 1024 * MiB, max_parts=10_000, needs_size=True, etag_is_md5=True)
#: The part size asked for at init: sevenbridges-python's `PartSize.UPLOAD_RECOMMENDED_SIZE`. Every
#: part costs two API calls (its URL, its report) of the 1000 a 5-minute window allows.
RECOMMENDED_PART = 32 * MiB
#: Fresh part URLs tried for one part when the store refuses them (expired: valid about a minute).
PART_URL_TRIES = 3
#: What may be done in a project one may write to, and to what is in it.
WRITABLE_DIRECTORY = frozenset({"create", "mkdir"})
WRITABLE_FOLDER = frozenset({"create", "mkdir", "delete"})
WRITABLE_FILE = frozenset({"delete", "rename", "replace"})
#: SBG error codes whose errno says more than the HTTP status (docs: API status codes).
_ERRNO_BY_CODE = {
    5003: errno.EEXIST,  # Requested file already exists.
    5030: errno.EEXIST,  # Requested folder already exists.
    8004: errno.EEXIST,  # (upload) Requested file already exists.
    5015: errno.EXDEV,  # Moving files between projects is not supported.
    5021: errno.ENOTEMPTY,  # Deleting non-empty folders is not supported.
    5023: errno.EPERM,  # Updating folder details is not supported.
    5024: errno.EINVAL,  # Invalid name parameter.
}


class SevenBridges(Platform):
    kind = "sevenbridges"
    title = "Seven Bridges"
    token_name = "authentication token"
    auth_header = ("X-SBG-Auth-Token", "{}")
    optional_settings = {"public_files": bool}

    part_rules = PART_RULES

    def __init__(self, name, settings, http):
        super().__init__(name, settings, http)
        base = settings["url"].rstrip("/")
        self.base = base if base.endswith(f"/{API}") else f"{base}/{API}"
        self.headers = {"Accept": "application/json"}
        self.public_files = bool(settings.get("public_files", False))
        self.urls = PresignedURLs(http, self._resolve_download)
        #: project id -> whether the user may write there, learned from each project listing.
        self._writable: dict[str, bool] = {}

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
            writable = await self._project_writable(project_id)
            entries = [self._file_or_folder(item, writable) for item in items]
            if project_id != PUBLIC_PROJECT:  # reference files only: no one runs tasks there
                entries.append(Entry(TASKS_DIR, True, ("tasks", project_id)))
            return entries
        if kind == "folder":
            folder_id, project_id = args
            items = await self._items("files", what=f"{self.name}: folder {folder_id}", params={"parent": folder_id})
            writable = await self._project_writable(project_id)
            return [self._file_or_folder(item, writable) for item in items]
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
        self._writable.update((str(item["id"]), _writable(item)) for item in projects)
        return projects

    async def _project_writable(self, project_id: str) -> bool:
        """Whether the user may write in a project: from the last project listing, else asked."""
        if project_id not in self._writable:
            try:
                project = await self._get(f"projects/{project_id}", what=f"{self.name}: project {project_id}")
            except (NotFound, AccessDenied):
                project = {"id": project_id}
            self._writable[project_id] = _writable(project)
        return self._writable[project_id]

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
            allows=WRITABLE_DIRECTORY if _writable(item) else frozenset(),
        )

    def _file_or_folder(self, item: dict, writable: bool = False) -> Entry:
        """A file or folder of a project; `writable`: the user may change what is in that project."""
        if item.get("type") == "folder":
            return Entry(
                str(item.get("name") or item["id"]),
                True,
                # The project rides in the key: a move names its target by key alone.
                ("folder", str(item["id"]), str(item.get("project", ""))),
                uid=str(item["id"]),
                mtime=_mtime(item),
                info=item,
                xattrs={"id": str(item["id"]), "href": str(item.get("href", ""))},
                allows=WRITABLE_FOLDER if writable else frozenset(),
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
            allows=WRITABLE_FILE if writable else frozenset(),
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

    def presigned(self, entry: Entry) -> tuple[PresignedURLs, str] | None:
        return (self.urls, entry.key[1]) if entry.key[0] == "file" else None

    def read(self, entry: Entry, start: int, end: int, *, what: str) -> AsyncIterator[bytes]:
        _, file_id = entry.key
        return self.urls.read_range(file_id, start, end, what=what)

    # -- writing ---------------------------------------------------------------------------

    async def _change(self, method: str, path: str, *, what: str, json_body: object = None, params: dict | None = None) -> dict:
        """A call that changes the account; its JSON answer ({} when it has none). A refusal is raised
        with the errno its SBG error code stands for (`_ERRNO_BY_CODE`), else its HTTP status's."""
        response, body = await self.http.json(
            method, self._url(path), what=what, headers=self.headers, auth=self.auth, json_body=json_body, params=params,
            ok=_answered,
        )
        if response.is_success:
            return body if isinstance(body, dict) else {}
        try:
            refusal = response.json()
        except ValueError:
            refusal = {}
        refusal = refusal if isinstance(refusal, dict) else {}
        reason = f"{what}: {method} {redact_url(response.url)} answered {response.status_code}"
        if refusal.get("message"):
            reason += f": {str(refusal['message'])[:200]}"
        code = refusal.get("code")
        if code in _ERRNO_BY_CODE:
            raise PlatformError(reason, errno_=_ERRNO_BY_CODE[code], status=response.status_code)
        raise error_for_status(response.status_code, reason)

    def _target(self, parent: Entry) -> dict:
        """How the API names a directory that takes new files and folders: `project` or `parent`."""
        kind, *args = parent.key
        if kind == "project":
            return {"project": args[0]}
        if kind == "folder":
            return {"parent": args[0]}
        raise PlatformError(f"{self.name}: nothing can be created in {parent.name}", errno_=errno.EROFS)

    async def make_directory(self, parent: Entry, name: str) -> Entry:
        what = f"{self.name}: new folder {name}"
        item = await self._change("POST", "files", what=what, json_body={"name": name, "type": "folder", **self._target(parent)})
        return self._file_or_folder(item, writable=True)  # a real folder: no `children`, those are path-made ones

    async def begin_upload(self, parent: Entry, name: str, size: int | None, replacing: Entry | None) -> dict:
        if size is None:
            raise PlatformError(f"{self.name}: an upload to {self.title} must be told the file's size", errno_=errno.EINVAL)
        target = self._target(parent)
        asked = requested_part_size(size)
        body = {**target, "name": name, "size": size, "part_size": asked}
        params = {"overwrite": "true"} if replacing is not None else None
        answer = await self._change("POST", "upload/multipart", what=f"{self.name}: upload of {name}", json_body=body, params=params)
        if not answer.get("upload_id"):
            raise PlatformError(f"{self.name}: upload of {name}: {self.title} answered no upload_id")
        part_size = int(answer.get("part_size") or asked)
        if part_size != asked:
            log.info("%s: upload of %s: %s chose parts of %d bytes", self.name, name, self.title, part_size)
        return {
            "upload_id": str(answer["upload_id"]),
            "part_size": part_size,
            "name": name,
            "size": size,
            "initiated": str(answer.get("initiated") or ""),
            **target,
        }

    async def upload_part(self, handle: dict, number: int, body: PartBody) -> str:
        upload_id = handle["upload_id"]
        what = f"{self.name}: upload of {handle['name']}, part {number}"
        for attempt in range(1, PART_URL_TRIES + 1):
            part = await self._change("GET", f"upload/multipart/{upload_id}/part/{number}", what=what)
            if not part.get("url"):
                raise PlatformError(f"{what}: {self.title} gave no part URL")
            codes = {int(code) for code in part.get("success_codes") or [200]}
            headers = {str(k): str(v) for k, v in (part.get("headers") or {}).items()}
            headers.update({"Content-Length": str(body.size), "Content-MD5": body.content_md5})
            try:
                response = await self.http.request(
                    str(part.get("method") or "PUT"), part["url"], what=what, headers=headers, content=body.stream,
                    ok=lambda status: status in codes,
                )
            except AccessDenied:
                # The URL expired (they live about a minute) or was refused: ask for a fresh one.
                log.info("%s: the store refused the part URL (try %d of %d); asking for a new one", what, attempt, PART_URL_TRIES)
                continue
            wanted = (part.get("report") or {}).get("headers") or ["ETag"]
            collected = {str(name): response.headers[name].strip().strip('"') for name in wanted if name in response.headers}
            etag = next((value for name, value in collected.items() if name.lower() == "etag"), "")
            if not etag:
                raise PlatformError(f"{what}: the store answered no ETag")
            report = {"part_number": number, "response": {"headers": collected}}
            await self._change("POST", f"upload/multipart/{upload_id}/part", what=f"{what} report", json_body=report)
            return etag
        raise PlatformError(f"{what}: the store refused {PART_URL_TRIES} fresh part URLs", status=403)

    async def complete_upload(self, handle: dict, parts: list[tuple[int, str]], size: int) -> Entry:
        upload_id = handle["upload_id"]
        what = f"{self.name}: upload of {handle['name']}"
        try:
            if not parts and size == 0:  # an empty file is one empty part, as the public clients send it
                parts = [(1, await self.upload_part(handle, 1, EMPTY_PART))]
            reports = [{"part_number": number, "response": {"headers": {"ETag": etag}}} for number, etag in parts]
            item = await self._change("POST", f"upload/multipart/{upload_id}/complete", what=f"{what} complete",
                                      json_body={"parts": reports})
        except NotFound:
            found = await self._completed_before(handle, size)
            if found is None:
                raise
            log.info("%s: completed already (its answer was lost): %s", what, found.uid)
            return found
        return self._file_or_folder(item, writable=True)

    async def _completed_before(self, handle: dict, size: int) -> Entry | None:
        """The file an upload made when completing it answered that the upload is gone: a complete
        whose answer was lost, retried, or repeated after a restart. Found by name in its folder,
        with the size and a creation no earlier than the upload's."""
        params = {key: handle[key] for key in ("project", "parent") if key in handle}
        try:
            items = await self._items("files", what=f"{self.name}: upload of {handle['name']}", params={**params, "name": handle["name"]})
        except NotFound:
            return None
        begun = parse_timestamp(handle.get("initiated"))
        for item in items:
            if item.get("type") == "file" and item.get("name") == handle["name"] and item.get("size") == size:
                if begun and parse_timestamp(item.get("created_on")) >= begun:
                    return self._file_or_folder(item, writable=True)
        return None

    async def abort_upload(self, handle: dict) -> None:
        what = f"{self.name}: upload of {handle.get('name')}"
        try:
            await self._change("DELETE", f"upload/multipart/{handle['upload_id']}", what=f"{what} abort")
        except NotFound:
            pass  # gone already
        except PlatformError as exc:
            log.warning("%s: could not abort it (%s); %s drops unfinished uploads itself", what, exc, self.title)

    async def upload_whole(self, parent: Entry, name: str, body: PartBody, replacing: Entry | None) -> Entry:
        """SBG has no single-request upload: a multipart upload of one part."""
        handle = await self.begin_upload(parent, name, body.size, replacing)
        try:
            etag = await self.upload_part(handle, 1, body)
            return await self.complete_upload(handle, [(1, etag)], body.size)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.abort_upload(handle)
            raise

    async def delete(self, entry: Entry) -> None:
        kind, *args = entry.key
        if kind not in ("file", "folder"):
            raise PlatformError(f"{self.name}: {entry.name} cannot be deleted", errno_=errno.EPERM)
        await self._change("DELETE", f"files/{args[0]}", what=f"{self.name}: delete {entry.name}")

    async def rename(self, entry: Entry, new_parent: Entry, new_name: str) -> Entry:
        kind, *args = entry.key
        if kind != "file":
            raise PlatformError(f"{self.name}: {self.title} cannot rename folders", errno_=errno.EPERM)
        what = f"{self.name}: rename {entry.name} to {new_name}"
        info = entry.info or {}
        project = str(info.get("project") or entry.xattrs.get("project") or "")
        target_kind, target_id, *rest = new_parent.key
        if target_kind == "project":
            target_project = target_id
        elif target_kind == "folder":
            target_project = rest[0] if rest else ""
        else:
            raise PlatformError(f"{what}: {new_parent.name} takes no files", errno_=errno.EROFS)
        if project and target_project and project != target_project:
            raise PlatformError(f"{what}: {self.title} moves files only within a project", errno_=errno.EXDEV)
        folder_id = await self._root_folder(target_id) if target_kind == "project" else target_id
        if folder_id == info.get("parent"):
            if new_name == entry.name:
                return entry
            item = await self._change("PATCH", f"files/{args[0]}", what=what, json_body={"name": new_name})
        else:
            item = await self._change("POST", f"files/{args[0]}/actions/move", what=what,
                                      json_body={"parent": folder_id, "name": new_name})
        return self._file_or_folder(item, writable=True)

    async def _root_folder(self, project_id: str) -> str:
        """The id of a project's root folder, which a move names as its target."""
        project = await self._get(f"projects/{project_id}", what=f"{self.name}: project {project_id}")
        if not project.get("root_folder"):
            raise PlatformError(f"{self.name}: project {project_id} states no root folder")
        return str(project["root_folder"])


def requested_part_size(size: int) -> int:
    """The part size asked for at init: SBG's recommended one, or the smallest whole MiB that fits the
    file in the part count, within S3's bounds."""
    needed = math.ceil(size / PART_RULES.max_parts / MiB) * MiB
    return min(PART_RULES.max_part, max(RECOMMENDED_PART, needed))


async def _no_bytes() -> AsyncIterator[bytes]:
    return
    yield


#: The one part of an empty file.
EMPTY_PART = PartBody(0, hashlib.md5(b"").digest(), _no_bytes)


def _answered(status: int) -> bool:
    """A final answer to a call that changes the account: success, or a refusal to read the SBG
    error code of (429s and 5xx are retried by `Http`)."""
    return 200 <= status < 300 or (400 <= status < 500 and status not in (408, 429))


def _writable(project: dict) -> bool:
    """Whether a project (its API resource) takes writes from this user."""
    return project.get("id") != PUBLIC_PROJECT and bool((project.get("permissions") or {}).get("write"))


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
