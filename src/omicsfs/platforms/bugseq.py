"""BugSeq, through its REST API (`/v1/`), read-only: a lab's analysis jobs and their result files.

```
NAME/jobs/<name-or-id>/job.json            the job's results answer, inputs included
NAME/jobs/<name-or-id>/outputs/<filename>  each result file (folders where a filename holds `/`)
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
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from urllib.parse import parse_qsl, quote, urljoin, urlsplit


from omicsfs.dates import parse_timestamp
from omicsfs.errors import NotFound, PlatformError
from omicsfs.http import PresignedURLs
from omicsfs.platform import Entry, Platform, gather, json_content

log = logging.getLogger(__name__)

API = "/v1/"
#: Jobs asked per page; the seed's default, used when a server refuses more.
PAGE_LIMIT = 100
DEFAULT_LIMIT = 20


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
            return [Entry("jobs", True, ("jobs",))]
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

    def read(self, entry: Entry, start: int, end: int, *, what: str) -> AsyncIterator[bytes]:
        _, job_id, filename = entry.key
        return self.urls.read_range((job_id, filename), start, end, what=what)


def _parts(path: str) -> list[str]:
    """A filename's folders and name, empty segments dropped (`a//b` and `/a/b` are `a/b`)."""
    return [part for part in path.split("/") if part]


def _file_time(results: dict) -> float:
    return parse_timestamp(results.get("end_time") or results.get("created"))


PLATFORM = BugSeq
