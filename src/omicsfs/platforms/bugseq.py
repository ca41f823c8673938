"""BugSeq, through its REST API (`/v1/`): a lab's analysis jobs and their result files, and uploads.

```
NAME/jobs/<name-or-id>/job.json            the job's results answer, inputs included
NAME/jobs/<name-or-id>/outputs/<filename>  each result file (folders where a filename holds `/`)
NAME/uploads/<filename>                    files written here are uploaded, for jobs to analyse
```

Reference: the BugSeq API 0.1.0 OpenAPI page (seed 000); where it is silent, the public
`bugseq-client` package (its PyPI README and generated `JobsApi` docs). What they make us do:
- `url` is the API host root (`https://api.bugseq.com`, as the bugseq-client README configures it):
  every path is `/v1/...` under it. `GET /v1/jobs/` keeps its trailing slash (a FastAPI server
  answers the slashless path with a 307, which we do not follow).
- Auth is `Authorization: Bearer <JWT>` (seed: HTTPBearer); `GET /v1/users/me` checks it. The JWTs
  come from BugSeq's OAuth login and expire (bugseq-client refreshes them): a refused token whose
  `exp` has passed is reported as expired.
- Jobs page with `skip`/`limit` (defaults 0/20) and `has_more`, no total: `skip` counts the jobs
  received (a server may cap a page below `limit`), until `has_more` is false. The seed names no
  maximum `limit`: we ask 100, and fall back to the default 20 if that is refused (422). Skip paging
  shifts when a job is submitted meanwhile, so a job seen twice is kept once (by id).
- `user_provided_name` is nullable and repeats: a job's directory is its name, or its id when null;
  the core appends the id to same-named siblings, so names stay unique and stable.
- `GET /v1/jobs/{id}/results` lists `inputs` and `outputs` as `[{"filename", "size"}]`; `outputs` is
  null until the job has results (an empty `outputs/` then), and `size` may be null. Output
  filenames may hold `/` (bugseq-client's README creates parent folders when saving them): they
  become folders. A job's listing comes with its `outputs/` listing (`Entry.children`).
- A null size is resolved before the file is shown (a wrong size truncates or pads every reader):
  a one-byte ranged GET of the download URL, whose `Content-Range` gives the total. Not a HEAD:
  an S3 URL presigned for GET refuses HEAD (the signature covers the method). The URL stays
  cached for the reads that follow. An output the download endpoint does not know (404) is left out.
- No per-file time: a file carries the job's `end_time` (else `created`); a job directory its `created`.
- `GET /v1/jobs/{id}/results/download?filename=F` answers JSON `{"url": ...}` (not a redirect) and
  states no expiry: the presigned URL's own is read (`url_expiry`); without one, the URL is reused
  until the store refuses it (403) and then resolved again (`PresignedURLs`).
- Every schema has `additionalProperties: false`: we send only the parameters the seed names.
- Errors are FastAPI's `{"detail": ...}`, a list of `{loc, msg, type}` for 422.

Writing: `uploads/` is the only writable place, and it only takes new files.
- A file written there goes to `POST /v1/files/multipart/init` (`filename`, and `s3_region` when the
  config sets one: job submissions name a region, and a file must be in it), then for each part
  `POST /v1/files/multipart/chunk` for a presigned PUT URL and the PUT itself, then
  `POST /v1/files/multipart/complete`. Multipart init needs no size, so parts stream while the file
  is still written. A file of at most 5 MiB (S3's minimum part) goes through
  `POST /v1/files/singlepart/init` and one presigned PUT instead.
- The seed leaves `presigned_s3_data` and `parts` untyped; the shapes assumed (S3's own, see
  `_upload_id`, `_presigned_put` and `_completed_parts`, the one place that reads or writes them):
  init's `presigned_s3_data` holds S3's `upload_id` (or `UploadId`); chunk's and singlepart init's
  hold a presigned request, `url` (or `URL`, or the bare URL as a string) with `method` (PUT if absent)
  and `headers` to send; complete takes `parts: [{"PartNumber", "ETag"}]`, ETags quoted as S3 sent them.
- Each part is sent with `Content-Length` and `Content-MD5` (S3 refuses bytes that do not match it),
  except to a SigV2-signed URL, whose signature covers `Content-MD5` and would then not match; the
  part's ETag (S3: the hex MD5 of its bytes) is returned unquoted for the core to check. A store that
  refuses a fresh part URL (403: expired on arrival, clocks apart) gets one more, freshly presigned.
  (ETags are MD5s in a bucket with S3's default encryption; one encrypted with KMS answers others,
  and `etag_is_md5` would have to be False: S3 still checks the bytes against `Content-MD5`.)
- A single-part upload checks the ETag of its PUT against the MD5 itself and sends again on the same
  URL when they differ; a URL refused (expired) is replaced by a new single-part upload.
- The API lists no uploaded files: `uploads/` is listed empty by this module and the core lists its
  own durable record of each upload it confirmed (`remembers_uploads`), each with its BugSeq file id
  as `uid` and in the `id` extended attribute, which is what a job submission (`file_ids`) needs.
- Reading an uploaded file back: the API has no download for uploaded inputs, so `read` of one fails
  with EACCES and says why (the core serves the bytes from its staging copy while it has one).
- Writing over a file already in `uploads/` is refused (its entry allows nothing: the core answers
  EPERM): BugSeq can neither delete nor replace an uploaded file, so a second upload under the same
  name would be a duplicate that hides the first one's id. Upload it under another name instead.
  The one exception is the core's own: a file written further after its upload was confirmed (an
  fsync, or a close of one of its descriptors, then more writes) is uploaded again as a new BugSeq
  file that the listing shows instead; the earlier id stays with BugSeq, unused.
- There are no deletes, renames or directories to create: the API has none.
- No abort either: an unfinished multipart upload stays with BugSeq's bucket (whose lifecycle rules
  are its own business); `abort_upload` does nothing.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import parse_qsl, quote, urljoin, urlsplit

from omicsfs.dates import parse_timestamp
from omicsfs.errors import AccessDenied, NotFound, PlatformError
from omicsfs.http import PresignedURLs
from omicsfs.platform import Entry, PartBody, PartRules, Platform, gather, json_content

log = logging.getLogger(__name__)

API = "/v1/"
#: Jobs asked per page; the seed's default, used when a server refuses more.
PAGE_LIMIT = 100
DEFAULT_LIMIT = 20
#: S3's rules, which BugSeq's presigned URLs lead to: parts of 5 MiB to 5 GiB but the last, numbered
#: 1..10000; up to 5 MiB in one single-part PUT; multipart init takes no size.
S3_MIN_PART = 5 * 1024 * 1024
PART_RULES = PartRules(min_part=S3_MIN_PART, max_part=5 * 1024**3, max_parts=10_000, whole_max=S3_MIN_PART,
                       needs_size=False, etag_is_md5=True)
#: Times a single-part PUT is sent on the same URL when its ETag does not match what was sent.
WHOLE_PUT_TRIES = 3


def url_expiry(url: str) -> float | None:
    """The Unix time a presigned URL expires, from its own query string; None if it does not say.

    AWS SigV4 (`X-Amz-Date` + `X-Amz-Expires`), GCS V4 (`X-Goog-Date` + `X-Goog-Expires`), S3 SigV2
    and CloudFront (`Expires`, a Unix time), or an `X-Expires` Unix time (omicsfs's emulated store).
    """
    query = {key.lower(): value for key, value in parse_qsl(urlsplit(url).query)}
    try:
        for vendor in ("amz", "goog"):
            signed, lifetime = query.get(f"x-{vendor}-date"), query.get(f"x-{vendor}-expires")
            if signed and lifetime:
                moment = datetime.strptime(signed, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
                return moment.timestamp() + int(lifetime)
        for key in ("expires", "x-expires"):
            if query.get(key):
                return float(query[key])
    except ValueError:
        return None
    return None


class BugSeq(Platform):
    kind = "bugseq"
    title = "BugSeq"
    optional_settings = {"s3_region": str}
    part_rules = PART_RULES

    def __init__(self, name, settings, http):
        super().__init__(name, settings, http)
        self.host = settings["url"].rstrip("/")
        self.urls = PresignedURLs(http, self._resolve_download)
        self.page_limit = PAGE_LIMIT

    # -- requests --------------------------------------------------------------------------

    async def _get(self, path: str, *, what: str, params: dict | None = None) -> dict:
        body = await self.http.get_json(self.host + API + path, what=what, auth=self.auth, params=params)
        if not isinstance(body, dict):
            raise PlatformError(f"{what}: BugSeq answered with something other than a JSON object")
        return body

    async def _post(self, path: str, body: dict, *, what: str) -> object:
        return (await self.http.json("POST", self.host + API + path, what=what, auth=self.auth, json_body=body))[1]

    async def check(self) -> None:
        await self._get("users/me", what=self.name)

    async def _jobs(self) -> list[dict]:
        """Every job the token sees, page by page."""
        what = f"{self.name}/jobs"
        jobs: dict[str, dict] = {}
        skip = 0
        while True:
            page = await self._jobs_page(skip, what)
            items = [item for item in page.get("job_runs") or [] if isinstance(item, dict) and item.get("id")]
            new = 0
            for item in items:
                if str(item["id"]) not in jobs:
                    jobs[str(item["id"])] = item
                    new += 1
            skip += len(items)
            if not page.get("has_more"):
                return list(jobs.values())
            if not new:
                log.warning("%s: BugSeq says it has more jobs but sent none we had not seen (at skip=%d); stopping", what, skip)
                return list(jobs.values())

    async def _jobs_page(self, skip: int, what: str) -> dict:
        try:
            return await self._get("jobs/", what=what, params={"skip": skip, "limit": self.page_limit})
        except PlatformError as exc:
            if exc.status != 422 or self.page_limit == DEFAULT_LIMIT:
                raise
            log.info("%s: BugSeq refused limit=%d (%s); paging by %d", what, self.page_limit, exc, DEFAULT_LIMIT)
            self.page_limit = DEFAULT_LIMIT
            return await self._get("jobs/", what=what, params={"skip": skip, "limit": self.page_limit})

    async def _results(self, job_id: str) -> dict:
        return await self._get(f"jobs/{quote(job_id, safe='')}/results", what=f"{self.name}: job {job_id} results")

    # -- the tree --------------------------------------------------------------------------

    async def list_dir(self, entry: Entry) -> list[Entry]:
        kind, *args = entry.key
        if kind == "top":
            return [Entry("jobs", True, ("jobs",)), _uploads()]
        if kind == "uploads":
            return []  # the API lists no uploads: the core lists those it confirmed
        if kind == "jobs":
            return [self._job_entry(item) for item in await self._jobs()]
        if kind == "job":
            return await self._job_listing(*args)
        if kind == "outputs":
            job_id, prefix = args
            return await self._outputs(job_id, await self._results(job_id), prefix)
        raise PlatformError(f"{self.name}: no listing for {kind}")

    def _job_entry(self, item: dict) -> Entry:
        job_id = str(item["id"])
        return Entry(
            str(item.get("user_provided_name") or job_id),
            True,
            ("job", job_id),
            uid=job_id,
            mtime=parse_timestamp(item.get("created")),
            info=item,
            xattrs={
                "id": job_id,
                "job_status": str(item.get("job_status") or ""),
                "results_url": str(item.get("results_url") or ""),
            },
        )

    async def _job_listing(self, job_id: str) -> list[Entry]:
        results = await self._results(job_id)
        content = json_content(results)
        mtime = _file_time(results)
        try:
            outputs = await self._outputs(job_id, results, "")
        except PlatformError as exc:
            # job.json stays readable; `outputs/` tries again (and reports) when it is listed itself.
            log.warning("%s; job %s is listed without its outputs for now", exc, job_id)
            outputs = None
        return [
            Entry("job.json", False, ("job.json", job_id), size=len(content), mtime=mtime,
                  version=hashlib.md5(content).hexdigest(), content=content),
            Entry("outputs", True, ("outputs", job_id, ""), mtime=mtime, children=outputs),
        ]

    async def _outputs(self, job_id: str, results: dict, prefix: str) -> list[Entry]:
        """The entries at `prefix` of the folder tree the output filenames describe, sizes resolved."""
        depth = len(_parts(prefix))
        files = [
            item for item in results.get("outputs") or []
            if isinstance(item, dict) and isinstance(item.get("filename"), str)
            and len(_parts(item["filename"])) > depth and _parts(item["filename"])[:depth] == _parts(prefix)
        ]
        sizes = await self._sizes(job_id, files)
        tree: dict = {}
        for item in files:
            filename = item["filename"]
            if filename not in sizes:
                continue
            *folders, _ = _parts(filename)[depth:]
            node = tree
            for folder in folders:
                node = node.setdefault(folder, {})
            node.setdefault(None, []).append(filename)
        return self._folder_entries(job_id, results, prefix, tree, sizes)

    def _folder_entries(self, job_id: str, results: dict, prefix: str, node: dict, sizes: dict[str, int]) -> list[Entry]:
        entries = [self._file(job_id, results, filename, sizes[filename]) for filename in node.get(None, [])]
        for folder, subtree in node.items():
            if folder is None:
                continue
            path = f"{prefix}/{folder}" if prefix else folder
            children = self._folder_entries(job_id, results, path, subtree, sizes)
            entries.append(Entry(folder, True, ("outputs", job_id, path), mtime=_file_time(results), children=children))
        return entries

    def _file(self, job_id: str, results: dict, filename: str, size: int) -> Entry:
        stamp = results.get("end_time") or results.get("created") or ""
        return Entry(
            _parts(filename)[-1],
            False,
            ("output", job_id, filename),
            uid=f"{job_id}:{filename}",
            size=size,
            mtime=parse_timestamp(stamp),
            version=f"{stamp}/{size}",
            xattrs={"job_id": job_id, "filename": filename},
        )

    # -- sizes -----------------------------------------------------------------------------

    async def _sizes(self, job_id: str, files: list[dict]) -> dict[str, int]:
        """Filename → size, null sizes resolved against the store; outputs that cannot be downloaded are left out."""
        sizes: dict[str, int] = {}
        unknown = []
        for item in files:
            size = item.get("size")
            if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
                sizes[item["filename"]] = size
            else:
                unknown.append(item["filename"])

        async def probe(filename: str) -> int | None:
            try:
                return await self.urls.size((job_id, filename), what=f"{self.name}: job {job_id} output {filename} size")
            except NotFound as exc:
                log.warning("%s: not shown: %s", self.name, exc)
                return None

        for filename, size in zip(unknown, await gather(probe, unknown)):
            if size is not None:
                sizes[filename] = size
        return sizes

    # -- content ---------------------------------------------------------------------------

    async def _resolve_download(self, key: tuple[str, str]) -> tuple[str, float | None]:
        job_id, filename = key
        what = f"{self.name}: job {job_id} output {filename}"
        body = await self._get(f"jobs/{quote(job_id, safe='')}/results/download", what=what, params={"filename": filename})
        url = body.get("url")
        if not isinstance(url, str) or not url:
            raise PlatformError(f"{what}: BugSeq gave no download URL")
        url = urljoin(self.host + "/", url)
        return url, url_expiry(url)

    def presigned(self, entry: Entry) -> tuple[PresignedURLs, tuple[str, str]] | None:
        kind, *args = entry.key
        return (self.urls, tuple(args)) if kind == "output" else None

    def read(self, entry: Entry, start: int, end: int, *, what: str) -> AsyncIterator[bytes]:
        kind, *args = entry.key
        if kind == "upload":
            return _refuse_read(what)
        job_id, filename = args
        return self.urls.read_range((job_id, filename), start, end, what=what)

    # -- uploads ---------------------------------------------------------------------------

    def _file_body(self, filename: str) -> dict:
        """The body of `singlepart/init` and `multipart/init`: only what the seed names."""
        body = {"filename": filename}
        if self.settings.get("s3_region"):
            body["s3_region"] = self.settings["s3_region"]
        return body

    def _check_uploads(self, parent: Entry, name: str, replacing: Entry | None) -> None:
        if tuple(parent.key) != UPLOADS_KEY:
            raise PlatformError(f"{self.name}: files can be written only into uploads/, not as {name}", errno_=errno.EROFS)
        if replacing is not None:  # written further after its upload: the core uploads it anew
            log.info("%s/uploads/%s: uploaded again with what was written since; BugSeq keeps the earlier "
                     "file %s too", self.name, name, replacing.uid or replacing.key[-1])

    async def begin_upload(self, parent: Entry, name: str, size: int | None, replacing: Entry | None) -> dict:
        self._check_uploads(parent, name, replacing)
        what = f"{self.name}/uploads/{name}"
        answer = _object(await self._post("files/multipart/init", self._file_body(name), what=what), what)
        file_id = _file_id(answer, what)
        upload_id = _upload_id(answer.get("presigned_s3_data"), what)
        log.info("%s: multipart upload begun as BugSeq file %s", what, file_id)
        return {"file_id": file_id, "upload_id": upload_id, "name": name}

    async def upload_part(self, handle: dict, number: int, body: PartBody) -> str:
        what = f"{self.name}/uploads/{handle['name']}: part {number}"

        async def presign() -> PresignedPut:
            request = {"file_id": handle["file_id"], "upload_id": handle["upload_id"], "part_number": number}
            return _presigned_put(_object(await self._post("files/multipart/chunk", request, what=what), what), what)

        return (await self._put(presign, body, what))[1]

    async def complete_upload(self, handle: dict, parts: list[tuple[int, str]], size: int) -> Entry:
        what = f"{self.name}/uploads/{handle['name']}"
        request = {"file_id": handle["file_id"], "upload_id": handle["upload_id"], "parts": _completed_parts(parts)}
        await self._post("files/multipart/complete", request, what=what)  # answers nothing the seed describes
        log.info("%s: uploaded as BugSeq file %s (%d bytes in %d parts)", what, handle["file_id"], size, len(parts))
        return _uploaded(handle["name"], handle["file_id"], size)

    async def upload_whole(self, parent: Entry, name: str, body: PartBody, replacing: Entry | None) -> Entry:
        self._check_uploads(parent, name, replacing)
        what = f"{self.name}/uploads/{name}"
        file_id = ""

        async def presign() -> PresignedPut:
            # A new single-part upload each time: its URL cannot be asked for again.
            nonlocal file_id
            answer = _object(await self._post("files/singlepart/init", self._file_body(name), what=what), what)
            file_id = _file_id(answer, what)
            return _presigned_put(answer, what)

        target = await presign()
        for attempt in range(1, WHOLE_PUT_TRIES + 1):
            target, etag = await self._put(presign, body, what, target)
            if not self.part_rules.etag_is_md5 or etag == body.md5.hex():
                log.info("%s: uploaded as BugSeq file %s (%d bytes)", what, file_id, body.size)
                return _uploaded(name, file_id, body.size)
            log.warning("%s: the store answered ETag %s for bytes whose MD5 is %s (try %d/%d)", what, etag,
                        body.md5.hex(), attempt, WHOLE_PUT_TRIES)
        raise PlatformError(f"{what}: the store's ETag never matched the MD5 of the bytes sent")

    async def _put(self, presign: Callable[[], Awaitable[PresignedPut]], body: PartBody, what: str,
                   target: PresignedPut | None = None) -> tuple[PresignedPut, str]:
        """PUT `body` to a presigned URL (`target`, or one from `presign`); the URL used and the
        ETag answered. A URL the store refuses (403) is replaced once by a fresh one."""
        target = target or await presign()
        try:
            return target, await self._send(target, body, what)
        except AccessDenied as exc:
            log.info("%s: the store refused the upload URL (%s); asking for a new one", what, exc.status)
        target = await presign()
        return target, await self._send(target, body, what)

    async def _send(self, target: PresignedPut, body: PartBody, what: str) -> str:
        """One presigned PUT (retried by `Http` as any request); the ETag, unquoted."""
        headers = {**target.headers, "Content-Length": str(body.size)}
        if not _signs_content_md5(target.url):
            headers["Content-MD5"] = body.content_md5
        response = await self.http.request(target.method, target.url, what=what, headers=headers, content=body.stream)
        etag = response.headers.get("etag", "").strip().strip('"').lower()
        if not etag:
            raise PlatformError(f"{what}: the store answered {response.status_code} without an ETag")
        return etag


UPLOADS_KEY = ("uploads",)


def _uploads() -> Entry:
    """`uploads/`: new files only, listed from the core's record of them (the API lists none)."""
    return Entry("uploads", True, UPLOADS_KEY, allows=frozenset({"create"}), remembers_uploads=True)


def _uploaded(name: str, file_id: str, size: int) -> Entry:
    """An uploaded file as `uploads/` shows it: its BugSeq file id is what a job submission needs."""
    return Entry(name, False, ("upload", file_id), uid=file_id, size=size, mtime=time.time(), version=file_id,
                 xattrs={"id": file_id})


async def _refuse_read(what: str) -> AsyncIterator[bytes]:
    raise PlatformError(f"{what}: BugSeq keeps uploaded files for analysis but has no download for them",
                        errno_=errno.EACCES)
    yield b""  # an async generator, failing when read as every read does


# -- the shapes the seed leaves open (`presigned_s3_data`, `parts`): S3's own -------------------------


@dataclass(frozen=True)
class PresignedPut:
    url: str
    method: str = "PUT"
    headers: dict[str, str] = field(default_factory=dict)


def _object(answer: object, what: str) -> dict:
    if not isinstance(answer, dict):
        raise PlatformError(f"{what}: BugSeq answered with something other than a JSON object")
    return answer


def _file_id(answer: dict, what: str) -> str:
    file_id = answer.get("id")
    if not isinstance(file_id, (str, int)) or isinstance(file_id, bool) or file_id == "":
        raise PlatformError(f"{what}: BugSeq gave no file id")
    return str(file_id)


def _pick(data: dict, *names: str) -> object:
    return next((data[name] for name in names if data.get(name) not in (None, "")), None)


def _upload_id(presigned: object, what: str) -> str:
    """S3's multipart upload id from `multipart/init`'s `presigned_s3_data`."""
    upload_id = _pick(presigned, "upload_id", "UploadId") if isinstance(presigned, dict) else None
    if not isinstance(upload_id, str):
        raise PlatformError(f"{what}: BugSeq's multipart init gave no upload_id")
    return upload_id


def _presigned_put(answer: dict, what: str) -> PresignedPut:
    """The presigned request in `chunk`'s or `singlepart/init`'s `presigned_s3_data`."""
    presigned = answer.get("presigned_s3_data")
    if isinstance(presigned, str):
        presigned = {"url": presigned}
    url = _pick(presigned, "url", "URL") if isinstance(presigned, dict) else None
    if not isinstance(url, str):
        raise PlatformError(f"{what}: BugSeq gave no presigned upload URL")
    method = _pick(presigned, "method", "Method") or "PUT"
    headers = _pick(presigned, "headers", "Headers") or {}
    if not isinstance(method, str) or not isinstance(headers, dict):
        raise PlatformError(f"{what}: BugSeq's presigned upload request is not of a known shape")
    return PresignedPut(url, method.upper(), {str(key): str(value) for key, value in headers.items()})


def _completed_parts(parts: list[tuple[int, str]]) -> list[dict]:
    """`complete`'s `parts`, as S3's CompleteMultipartUpload takes them: ascending, ETags quoted."""
    return [{"PartNumber": number, "ETag": '"' + etag.strip('"') + '"'} for number, etag in sorted(parts)]


def _signs_content_md5(url: str) -> bool:
    """A SigV2 presigned URL (`AWSAccessKeyId`, `Signature`): its signature covers `Content-MD5`,
    so sending one it was not made with breaks it. SigV4 signs only the headers it names."""
    return "awsaccesskeyid" in {key.lower() for key, _ in parse_qsl(urlsplit(url).query)}


def _parts(path: str) -> list[str]:
    """A filename's folders and name, empty segments dropped (`a//b` and `/a/b` are `a/b`)."""
    return [part for part in path.split("/") if part]


def _file_time(results: dict) -> float:
    return parse_timestamp(results.get("end_time") or results.get("created"))


PLATFORM = BugSeq
