"""Isabl, through its REST API v1 (Django REST Framework), read-only.

```
NAME/projects/<short_title>/individuals/<system_id>/samples/<system_id>/experiments/<system_id>/
    analyses/<application>-<version>-<pk>/<result files>
NAME/projects/<short_title>/analyses/<application>-<version>-<pk>/<result files>   (project-level)
```

Reference: the API reference (seed 004: operation ids and parameters, no paths); where it is
silent, the public client papaemmelab/isabl_cli and the Isabl docs (isabl-io/docs). What they make
us do:
- `url` is the installation's root (`https://isabl.example.org`, `/api/v1/` is added) or its API
  base ending in `/api/v1` (isabl_cli's `ISABL_API_URL`, which users already have).
- Paths: DRF routers' canonical form, slash-terminated (`/{endpoint}/`, `/{endpoint}/{id}/`), as
  isabl_cli asks them: under Django's `APPEND_SLASH` the unslashed form answers 301 with an empty body.
- `Authorization: Token <key>` (isabl_cli `get_token_headers`; the key comes from the seed's
  `rest-auth/login/`). The token is checked with `GET rest-auth/user/`, as isabl_cli does;
  the seed does not list that endpoint, so where it answers 404, with `GET projects/?limit=1`.
- Lists: DRF `limit`/`offset` (seed) in `{"count", "next", "previous", "results"}`; the server
  caps pages, so the next offset counts the items received. `next` only says whether there is
  more: it is an absolute URL built by the server (behind a TLS proxy DRF may write `http://` or
  an internal host), and the token goes to no host but `url`'s. `ordering=id` keeps pages stable.
- Filters (the seed's list parameters; a bare relation compares by pk): individuals and samples by
  `projects` (a related filter through their experiments), samples by `individual`, experiments by
  `sample` and `projects`, an experiment's analyses by `targets` (isabl_cli `app.py` filters
  analyses by `targets__pk__in`), a project's own analyses by `project_level_analysis` (isabl_cli
  `test/utils.py`).
- `results` maps keys to paths, strings (MD5s), numbers or any JSON (docs: "Writing
  Applications"). A result is a file when it is an absolute path and the server can send it:
  a one-byte `stream` gives its size in `Content-Range` (`Http.object_size`); a result the
  server refuses (400/404: a directory, a file never written) is not shown. The seed types
  `results` as a string: a JSON text is parsed.
- File names are the paths' basenames (`x.bam` next to `x.bam.bai`, so tools find indexes);
  the core appends the result key to basenames that repeat within an analysis.
- Content comes from the API itself, no presigned URLs: `analyses/{id}/stream?result=KEY&bytes=A-B`
  (seed `analyses_stream_read`: `bytes` "Byte range to retrieve", taken as HTTP's inclusive
  `first-last`). The answer may be 206 or 200, with or without `Content-Range`: `Http.read_range`
  reads where the body starts from what the answer says.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import AsyncIterator


from omicsfs.dates import parse_timestamp
from omicsfs.errors import AccessDenied, NotFound, PlatformError
from omicsfs.platform import Entry, Platform, all_pages, gather

log = logging.getLogger(__name__)

API = "api/v1/"
#: isabl_cli `iterate` asks 5000 items a page; the server may send fewer.
PAGE_LIMIT = 5000
#: Statuses that say a result is not a file the API can send (a directory, a missing file).
NOT_A_FILE = frozenset({400, 404})


class Isabl(Platform):
    kind = "isabl"
    title = "Isabl"
    token_name = "API token"
    auth_header = ("Authorization", "Token {}")

    def __init__(self, name, settings, http):
        super().__init__(name, settings, http)
        url = settings["url"].rstrip("/") + "/"
        self.api = url if url.endswith("/" + API) else url + API
        self.headers = {"Accept": "application/json"}
        # Content as stored: a compressed transfer would make lengths and ranges disagree.
        self.content_headers = {**self.headers, "Accept": "*/*", "Accept-Encoding": "identity"}

    # -- requests --------------------------------------------------------------------------

    def _url(self, *parts: object) -> str:
        """The canonical URL of an API path, as DRF's routers write it: slash-terminated
        (`projects/`, `analyses/7/stream/`). The unslashed form costs a 301 under Django's
        APPEND_SLASH (followed by `Http`, but a round trip each time)."""
        return self.api + "/".join(str(part).strip("/") for part in parts) + "/"

    async def _list(self, endpoint: str, *, what: str, **filters) -> list[dict]:
        """Every item of a list (the pages after the first asked at once)."""

        async def page(offset: int) -> tuple[list, int | None]:
            params = {**filters, "ordering": "id", "limit": PAGE_LIMIT, "offset": offset}
            body = await self.http.get_json(self._url(endpoint), what=what, headers=self.headers, auth=self.auth, params=params)
            if not isinstance(body, dict) or not isinstance(body.get("results"), list):
                raise PlatformError(f"{what}: Isabl answered without a results list")
            count = body.get("count")
            if not isinstance(count, int):  # no count: `next` alone says whether more follows
                count = None if body.get("next") else offset + len(body["results"])
            return body["results"], count

        items = await all_pages(page)
        # A filter across a many-to-many relation (`projects`) may repeat an object if the server's
        # query lacks DISTINCT: each object once.
        unique: dict = {}
        for item in items:
            unique.setdefault(item.get("pk", id(item)), item)
        return list(unique.values())

    async def check(self) -> None:
        """`rest-auth/user/`, as isabl_cli asks; the published schema does not list it, so where it
        is absent (404), a one-item page of `projects/`, which any valid token may read."""
        try:
            user = await self.http.get_json(self._url("rest-auth/user"), what=self.name, headers=self.headers, auth=self.auth)
        except NotFound:
            log.info("%s: no rest-auth/user/ at %s; checking the token with projects/ instead", self.name, self.api)
            page = await self.http.get_json(self._url("projects"), what=self.name, headers=self.headers, auth=self.auth,
                                            params={"limit": 1})
            if not isinstance(page, dict) or not isinstance(page.get("results"), list):
                raise PlatformError(f"{self.name}: {self._url('projects')} did not answer with a list: is `url` an Isabl API?")
            return
        if not isinstance(user, dict) or "username" not in user:
            raise PlatformError(f"{self.name}: {self._url('rest-auth/user')} did not name a user: is `url` an Isabl API?")

    async def login(self, prompt) -> str:
        """The API token from a username and password (seed: `rest-auth/login/` answers `{"key"}`, as
        isabl_cli logs in); an empty username asks for the token itself."""
        username = prompt.ask(f"Isabl username for [platforms.{self.name}] (empty to give an API token instead): ")
        if not username:
            return await super().login(prompt)
        password = prompt.secret("Password (typing is not shown): ")
        response = await self.http.request(
            "POST", self._url("rest-auth/login/"), what=f"{self.name}: Isabl login", json_body={"username": username, "password": password},
            headers={"Accept": "application/json"}, ok=lambda status: status < 400 or status in (400, 401, 403),
        )
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code >= 400 or not isinstance(body, dict) or not body.get("key"):
            reasons = body.get("non_field_errors") or body.get("detail") if isinstance(body, dict) else None
            reason = " ".join(reasons) if isinstance(reasons, list) else str(reasons or f"HTTP {response.status_code}")
            raise AccessDenied(f"{self.name}: Isabl at {self.settings['url']} refused the login of {username}: {reason}",
                               status=response.status_code)
        return str(body["key"])

    # -- the tree --------------------------------------------------------------------------

    async def list_dir(self, entry: Entry) -> list[Entry]:
        kind, *args = entry.key
        if kind == "top":
            return [Entry("projects", True, ("projects",))]
        if kind == "projects":
            projects = await self._list("projects", what=f"{self.name}/projects")
            return [self._project(item) for item in projects]
        if kind == "project":
            (project,) = args
            return [Entry("individuals", True, ("individuals", project)), Entry("analyses", True, ("project analyses", project))]
        if kind == "individuals":
            (project,) = args
            items = await self._list("individuals", what=f"{self.name}: project {project} individuals", projects=project)
            return [self._entity(item, ("individual", project, item["pk"])) for item in items]
        if kind == "individual":
            project, individual = args
            return [Entry("samples", True, ("samples", project, individual))]
        if kind == "samples":
            project, individual = args
            items = await self._list(
                "samples", what=f"{self.name}: individual {individual} samples", individual=individual, projects=project
            )
            return [self._entity(item, ("sample", project, item["pk"])) for item in items]
        if kind == "sample":
            project, sample = args
            return [Entry("experiments", True, ("experiments", project, sample))]
        if kind == "experiments":
            project, sample = args
            items = await self._list("experiments", what=f"{self.name}: sample {sample} experiments", sample=sample, projects=project)
            return [self._entity(item, ("experiment", item["pk"])) for item in items]
        if kind == "experiment":
            (experiment,) = args
            return [Entry("analyses", True, ("experiment analyses", experiment))]
        if kind in ("experiment analyses", "project analyses"):
            (pk,) = args
            field = "targets" if kind == "experiment analyses" else "project_level_analysis"
            items = await self._list("analyses", what=f"{self.name}: {kind.split()[0]} {pk} analyses", **{field: pk})
            return [self._analysis(item) for item in items]
        if kind == "analysis":
            return await self._result_files(entry)
        raise PlatformError(f"{self.name}: no listing for {kind}")

    def _entity(self, item: dict, key: tuple, name: str | None = None) -> Entry:
        pk = str(item["pk"])
        xattrs = {"id": pk}
        for field in ("system_id", "storage_url", "status"):
            if item.get(field):
                xattrs[field] = str(item[field])
        return Entry(
            name or str(item.get("system_id") or item.get("identifier") or pk),
            True,
            key,
            uid=pk,
            mtime=parse_timestamp(item.get("modified") or item.get("created")),
            info=item,
            xattrs=xattrs,
        )

    def _project(self, item: dict) -> Entry:
        # The seed makes `short_title` optional (nullable); `title` is then the best name.
        name = item.get("short_title") or item.get("title") or str(item["pk"])
        return self._entity(item, ("project", item["pk"]), name)

    def _analysis(self, item: dict) -> Entry:
        application = item.get("application") or {}
        name = f"{application.get('name', 'analysis')}-{application.get('version', '')}-{item['pk']}"
        return self._entity(item, ("analysis", item["pk"]), name)

    # -- result files ----------------------------------------------------------------------

    @staticmethod
    def _results(analysis: dict) -> dict:
        results = analysis.get("results") or {}
        if isinstance(results, str):  # the seed types `results` as a string
            try:
                results = json.loads(results)
            except ValueError:
                return {}
        return results if isinstance(results, dict) else {}

    async def _result_files(self, entry: Entry) -> list[Entry]:
        """The analysis's results that are files, each with its size asked of the server."""
        (pk,) = entry.key[1:]
        analysis = entry.info or await self.http.get_json(
            self._url("analyses", pk), what=f"{self.name}: analysis {pk}", headers=self.headers, auth=self.auth
        )
        candidates = {
            key: value for key, value in self._results(analysis).items() if isinstance(value, str) and value.startswith("/")
        }
        sizes = dict(zip(candidates, await gather(lambda key: self._size(pk, key), candidates)))
        mtime = parse_timestamp(analysis.get("finished") or analysis.get("modified"))
        stamp = analysis.get("modified") or ""
        return [
            Entry(
                posixpath.basename(path.rstrip("/")) or key,
                False,
                ("result", pk, key),
                uid=key,  # tells same-named results apart; the version makes it unique across analyses
                size=sizes[key],
                mtime=mtime,
                version=f"{pk}/{key}/{path}/{stamp}/{sizes[key]}",
                xattrs={"result": key, "path": path, "analysis": str(pk)},
            )
            for key, path in sorted(candidates.items())
            if sizes[key] is not None
        ]

    async def _size(self, pk: int, key: str) -> int | None:
        """A result file's size, or None when the server says it is no file it can send."""
        what = f"{self.name}: analysis {pk} result {key}"
        try:
            return await self.http.object_size(
                self._url("analyses", pk, "stream"), what=what, headers=self.content_headers, auth=self.auth,
                params={"result": key}, range_param="bytes",
            )
        except PlatformError as exc:
            if isinstance(exc, AccessDenied) or exc.status not in NOT_A_FILE:
                raise
            log.debug("%s: not a file the API can send (%s)", what, exc)
            return None

    # -- content ---------------------------------------------------------------------------

    def read(self, entry: Entry, start: int, end: int, *, what: str) -> AsyncIterator[bytes]:
        _, pk, key = entry.key
        return self.http.read_range(
            self._url("analyses", pk, "stream"), start, end, what=what, headers=self.content_headers, auth=self.auth,
            params={"result": key}, range_param="bytes",
        )


PLATFORM = Isabl
