"""BaseSpace V1 (`v1pre3`), as the API reference (seed 002) describes it, quirks included.

- Envelope `{"Response": ..., "ResponseStatus": {}, "Notifications": []}`; lists carry `Items`,
  `DisplayedCount`, `TotalCount`, `Offset`, `Limit`, `SortDir`, `SortBy`.
- `Limit` defaults to 10, at most 1024 (1000 for file lists); pages are further capped by
  `knobs.page_cap`, so a client must page by what it received.
- `Href*` values are relative with no leading slash (`v1pre3/projects/1`).
- Run list items have no `Name`, only `ExperimentName`; `runs/{id}` has `Name`.
- Run file items carry only `Id`, `Href`, `Name`, `Size`, `Path`, `DateCreated`.
- The token is accepted from `x-access-token`, `Authorization: Bearer` or `?access_token=`;
  anything else gets 401.
- `files/{id}/content` answers 302 to a presigned URL with an `Expires` header, or with
  `?redirect=meta` a JSON `HrefContent` / `Expires`.
- 429s (injected through the knobs) carry `X-RateLimit-*` and `X-Retry-After`.

V2 (seed 001), where the emulator derives the V2 view from the V1 account as BaseSpace does
(a dataset per sample and per app result, `V1pre3Id` naming it; a biosample per sample name):
- `{"Items", "Paging"}` envelopes with lower-case `offset`/`limit` (default 10, at most 1000 here),
  capped by `knobs.page_cap` too; errors as `V2Error` (`ErrorCode`, `ErrorMessage`).
- `datasets/{id}/files` and `appsessions/{id}/logfiles` list the files directly in `directory`
  (root is /) and, with `includesubdirectories=true`, the `SubDirectories` below it, as objects
  `{"Name", "Path"}` (the reference leaves their shape open).
- `users/current` (V1) carries `StorageStatistics`.

OAuth device flow (seed 002, `omicsfs login`), for the one app the emulator knows (`CLIENT_ID`,
`CLIENT_SECRET`): `POST oauthv2/deviceauthorization` answers the seed's fields; `POST oauthv2/token`
(`code` = the device code, `grant_type=device`, the client's credentials in the body or a Basic
header) answers RFC 8628's `authorization_pending`, `slow_down` (a poll sooner than the interval,
or one the `device_slow_down` knob forces; each adds 5 s to the interval the code then needs),
`access_denied`, `expired_token`, or the account's token once the user approved. The
verification page `/basespace/oauth/device` shows a form; posting `user_code` with
`action=approve|deny` is what a user's click does, and what tests do.
Writing back (seed 002, "写回", and its multipart upload section), with the rules the server enforces:
- `POST projects` (form `name`): 201 and a new project, or 200 and the user's existing project of
  that name. `DELETE projects/{id}` and `DELETE appresults/{id}` move them to the trash (gone from
  every list, their samples, app results and sessions with them) and answer the trash item.
- `POST projects/{id}/appresults` (`Content-Type: application/json`, `Name` required): 201, a new
  app result `Running` with a new AppSession (or the one `HrefAppSession` names, if neither
  Complete nor Aborted). Its V2 dataset and session appear with it.
- An app result takes files only while its AppSession is Running, NeedsAttention or TimedOut (what
  BaseSpace's SDKs call `canWorkOn`): otherwise file writes answer 403. `POST appsessions/{id}`
  (form `status`, `statussummary` of at most 128 characters) changes the status; once Complete or
  Aborted it changes no more (400).
- `POST appresults/{id}/files?name=&directory=` with the file's `Content-Type` (required) and the
  bytes as body stores a file in one request (at most `SINGLE_PART_MAX`, the size above which
  BaseSpace's SDKs switch to multipart; a `Content-MD5`, if sent, is checked). With `multipart=true`
  it creates a pending file (not listed, not readable) whose parts go to `PUT files/{id}/parts/{n}`:
  n in 1..10000, each at most `MAX_PART`, `Content-MD5` checked, answered with
  `{"Number", "ETag" (hex MD5), "Size"}`; sent again, a part replaces itself. `POST
  files/{id}?uploadstatus=complete` assembles parts 1..n (201 and the file); it is refused (400) if
  a number is missing, a part but the last is under `MIN_PART`, or the file is not pending (already
  completed or aborted); `uploadstatus=aborted` drops the parts.
- The reference says this POST "changes or creates" a file: a file uploaded to the name and
  directory of an existing file replaces it once complete, under a new id (the old id answers 404
  from then on); until then the old file is listed and read as before.
- Part and whole uploads go through `multipart.PartStore`, so the fault knobs (`part_faults`) apply
  to them (a whole file is part 1), and the stats count them (a whole file as an upload of one part).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import html
import math
import secrets
import time
from dataclasses import dataclass
import itertools
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from omicsfs.emulator import World, form_fields, sampledata
from omicsfs.emulator.multipart import MAX_PARTS, PartStore, Upload, UploadError

PREFIX = "/basespace"
API = "v1pre3"
#: The BaseSpace app the emulator has registered: what a site's table gives `omicsfs login`.
CLIENT_ID = "omicsfs-emulator-app"
CLIENT_SECRET = "omicsfs-emulator-app-secret"

#: Part sizes, read strictly: "5 MB" as 5 MiB (the larger reading) and "25 MB" as 25·10⁶ bytes (the
#: smaller), so that a client passing here passes whichever BaseSpace means.
MIN_PART = 5 * 1024 * 1024
MAX_PART = 25_000_000
#: The largest file taken in one request: BaseSpace's SDKs upload anything larger in parts.
SINGLE_PART_MAX = 25_000_000
#: AppSession statuses in which its app results take files (the SDKs' `canWorkOn`).
WRITABLE_STATUSES = ("Running", "NeedsAttention", "TimedOut")
#: The statuses `POST appsessions/{id}` accepts, as it spells them back.
SESSION_STATUSES = {s.lower(): s for s in ("Running", "Complete", "NeedsAttention", "TimedOut", "Aborted")}


def envelope(response: dict, status: int = 200, message: str | None = None, code: str | None = None) -> JSONResponse:
    status_body = {"Message": message, "ErrorCode": f"BASESPACE.{code or status}"} if message else {}
    return JSONResponse({"Response": response, "ResponseStatus": status_body, "Notifications": []}, status_code=status)


def refusal(status: int, code: str, message: str) -> JSONResponse:
    """An error in BaseSpace's envelope; the shape `PartStore.receive` refuses parts in."""
    return envelope({}, status, message, code)


def timestamp() -> str:
    """Now, as BaseSpace writes the dates of what it creates: 7 fractional digits and a Z."""
    now = datetime.now(UTC)
    return f"{now:%Y-%m-%dT%H:%M:%S}.{now.microsecond:06d}0Z"


def rate_limit_failure(retry_after: int = 1, count: int = 1) -> dict:
    """A knob value for a 429 storm the way BaseSpace sends it."""
    return {
        "prefix": PREFIX,
        "status": 429,
        "count": count,
        "headers": {
            "X-RateLimit-Policy": "api-requests-per-day",
            "X-RateLimit-Limit": "10000",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": "2026-11-23T00:00:00.0000000Z",
            "X-Retry-After": str(retry_after),
        },
        "body": {"ResponseStatus": {"ErrorCode": "BASESPACE.TOO_MANY_REQUESTS", "Message": "Rate limit exceeded"}},
    }


class Account:
    """The generated account, indexed by id the way the endpoints look things up."""

    def __init__(self, world: World):
        directory = world.data_dir / "basespace"
        self.data = sampledata.generate(directory, world.large_file_size, world.deep_bam_size, world.wide_directory_files)
        self.user = self.data["user"]
        self.projects = {p["Id"]: p for p in self.data["projects"]}
        self.samples = {s["Id"]: s for p in self.data["projects"] for s in p["samples"]}
        self.appresults = {a["Id"]: a for p in self.data["projects"] for a in p["appresults"]}
        self.runs = {r["Id"]: r for r in self.data["runs"]}
        self.files = {}
        for _, _, item in sampledata.iter_files(self.data):
            self.files[item["Id"]] = item
            world.objects[item["Id"]] = sampledata.object_path(directory, item["Id"])
        #: AppSession id -> the session (sample data's, and those made with new app results).
        self.sessions = {a["appsession"]["Id"]: a["appsession"] for a in self.appresults.values() if a.get("appsession")}
        #: Pending multipart uploads: file id -> (parts, the file, its app result).
        self.pending: dict[str, tuple[Upload, dict, dict]] = {}
        self.trash: list[dict] = []
        self._ids = itertools.count(90_000_001)
        self.written = _written_directory(world.data_dir)

    def new_id(self) -> str:
        return str(next(self._ids))

    def owner(self) -> dict:
        return {"Id": self.user["Id"], "Href": f"{API}/users/{self.user['Id']}", "Name": self.user["Name"]}


def _written_directory(data_dir: Path) -> Path:
    """Where this process keeps uploaded files: its own directory (emulators may share a data
    directory), after removing those of emulators no longer running."""
    parent = data_dir / "written"
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob("basespace-*"):
        try:
            os.kill(int(stale.name.rpartition("-")[2]), 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except (ValueError, PermissionError):
            pass
    own = parent / f"basespace-{os.getpid()}"
    shutil.rmtree(own, ignore_errors=True)
    own.mkdir()
    return own


def routes(world: World) -> list[Route]:
    account = Account(world)

    def authorized(request: Request) -> bool:
        world.stats.api_requests += 1
        header = request.headers.get("x-access-token")
        bearer = request.headers.get("authorization", "")
        token = header or (bearer[7:] if bearer.lower().startswith("bearer ") else None) or request.query_params.get("access_token")
        return token == world.token

    def unauthorized() -> JSONResponse:
        return envelope({}, 401, "Unauthorized: the access token is missing, invalid or revoked")

    def not_found(what: str) -> JSONResponse:
        return envelope({}, 404, f"{what} not found")

    def page(request: Request, items: list[dict], max_limit: int = 1024) -> JSONResponse:
        query = request.query_params
        try:
            offset = int(query.get("Offset", 0))
            limit = int(query.get("Limit", 10))
        except ValueError:
            return envelope({}, 400, "Offset and Limit must be integers")
        if not 0 <= limit <= max_limit or offset < 0:
            return envelope({}, 400, f"Limit must be within 0-{max_limit}")
        sort_by = query.get("SortBy", "Id")
        descending = query.get("SortDir", "Asc").lower() == "desc"
        ordered = sorted(items, key=lambda item: _sort_key(item.get(sort_by, item.get("Id"))), reverse=descending)
        shown = ordered[offset : offset + min(limit, world.knobs.page_cap)]
        return envelope(
            {
                "Items": shown,
                "DisplayedCount": len(shown),
                "TotalCount": len(items),
                "Offset": offset,
                "Limit": limit,
                "SortDir": "Desc" if descending else "Asc",
                "SortBy": sort_by,
            }
        )

    def endpoint(handler):
        async def guarded(request: Request) -> Response:
            if not authorized(request):
                return unauthorized()
            return handler(request, **request.path_params)

        return guarded

    def project_item(project: dict) -> dict:
        pid = project["Id"]
        return {
            "Id": pid,
            "Href": f"{API}/projects/{pid}",
            "Name": project["Name"],
            "UserOwnedBy": account.owner(),
            "DateCreated": project["DateCreated"],
        }

    def project_detail(project: dict) -> dict:
        pid = project["Id"]
        return {
            **project_item(project),
            "Description": project.get("Description", ""),
            "HrefSamples": f"{API}/projects/{pid}/samples",
            "HrefAppResults": f"{API}/projects/{pid}/appresults",
            "HrefBaseSpaceUI": f"https://basespace.illumina.com/project/{pid}/{project['Name']}",
        }

    def sample_item(sample: dict) -> dict:
        sid = sample["Id"]
        return {
            "Id": sid,
            "Href": f"{API}/samples/{sid}",
            "UserOwnedBy": account.owner(),
            "Name": sample["Name"],
            "SampleId": sample.get("SampleId", sample["Name"]),
            "Status": sample.get("Status", "Complete"),
            "StatusSummary": "",
            "DateCreated": sample["DateCreated"],
        }

    def appresult_item(appresult: dict) -> dict:
        aid = appresult["Id"]
        session = appresult.get("appsession")
        return {
            "Id": aid,
            "Href": f"{API}/appresults/{aid}",
            "UserOwnedBy": account.owner(),
            "Name": appresult["Name"],
            "Description": appresult.get("Description", ""),
            # An app result inherits its AppSession's status (the reference's AppSessions section).
            "Status": session["ExecutionStatus"] if session else appresult.get("Status", "Complete"),
            "StatusSummary": session.get("StatusSummary", "") if session else "",
            "DateCreated": appresult["DateCreated"],
            "HrefFiles": f"{API}/appresults/{aid}/files",
        }

    def appresult_detail(appresult: dict) -> dict:
        session = appresult.get("appsession")
        return {**appresult_item(appresult), **({"AppSession": session_item(session)} if session else {})}

    def session_item(session: dict) -> dict:
        sid = session["Id"]
        return {
            "Id": sid,
            "Href": f"{API}/appsessions/{sid}",
            "Name": session["Name"],
            "Application": {"Name": session["Application"]},
            "UserCreatedBy": account.owner(),
            "Status": session["ExecutionStatus"],
            "StatusSummary": session.get("StatusSummary", ""),
            "DateCreated": session["DateCreated"],
            "References": [],
        }

    def run_item(run: dict) -> dict:
        # The list item: no Name, as in the reference.
        rid = run["Id"]
        return {
            "Id": rid,
            "Href": f"{API}/runs/{rid}",
            "ExperimentName": run["ExperimentName"],
            "Status": run.get("Status", "Complete"),
            "DateCreated": run["DateCreated"],
        }

    def run_detail(run: dict) -> dict:
        rid = run["Id"]
        return {
            **run_item(run),
            "Name": run["Name"],
            "Number": 0,
            "HrefFiles": f"{API}/runs/{rid}/files",
            "HrefSamples": f"{API}/runs/{rid}/samples",
            "UserOwnedBy": account.owner(),
            "UserUploadedBy": account.owner(),
            "HrefBaseSpaceUI": f"https://basespace.illumina.com/run/{rid}/{run['ExperimentName']}",
        }

    def file_item(item: dict, compact: bool = False) -> dict:
        fid = item["Id"]
        answer = {
            "Id": fid,
            "Href": f"{API}/files/{fid}",
            "Name": item["Name"],
            "Size": item["Size"],
            "Path": item["Path"],
            "DateCreated": item["DateCreated"],
        }
        if not compact:
            answer.update(ContentType=item["ContentType"], HrefContent=f"{API}/files/{fid}/content",
                          UploadStatus=item.get("UploadStatus", "complete"))
        return answer

    @endpoint
    def current_user(request):
        user = account.user
        return envelope(
            {
                **user,
                "Href": f"{API}/users/{user['Id']}",
                "HrefRuns": f"{API}/users/{user['Id']}/runs",
                "HrefProjects": f"{API}/users/{user['Id']}/projects",
            }
        )

    @endpoint
    def projects(request):
        return page(request, [project_item(p) for p in account.projects.values()])

    @endpoint
    def project(request, pid):
        found = account.projects.get(pid)
        return envelope(project_detail(found)) if found else not_found(f"Project {pid}")

    @endpoint
    def project_samples(request, pid):
        found = account.projects.get(pid)
        return page(request, [sample_item(s) for s in found["samples"]]) if found else not_found(f"Project {pid}")

    @endpoint
    def project_appresults(request, pid):
        found = account.projects.get(pid)
        return page(request, [appresult_item(a) for a in found["appresults"]]) if found else not_found(f"Project {pid}")

    @endpoint
    def sample(request, sid):
        found = account.samples.get(sid)
        return envelope({**sample_item(found), "HrefFiles": f"{API}/samples/{sid}/files"}) if found else not_found(f"Sample {sid}")

    @endpoint
    def appresult(request, aid):
        found = account.appresults.get(aid)
        return envelope(appresult_detail(found)) if found else not_found(f"AppResult {aid}")

    @endpoint
    def appsession(request, sid):
        found = account.sessions.get(sid)
        return envelope(session_item(found)) if found else not_found(f"AppSession {sid}")

    @endpoint
    def runs(request):
        return page(request, [run_item(r) for r in account.runs.values()])

    @endpoint
    def run(request, rid):
        found = account.runs.get(rid)
        return envelope(run_detail(found)) if found else not_found(f"Run {rid}")

    def files_of(table: dict, kind: str, compact: bool = False):
        @endpoint
        def handler(request, eid):
            found = table.get(eid)
            if not found:
                return not_found(f"{kind} {eid}")
            return page(request, [file_item(f, compact) for f in found["files"]], max_limit=1000)

        return handler

    @endpoint
    def file(request, fid):
        found = account.files.get(fid)
        return envelope(file_item(found)) if found else not_found(f"File {fid}")

    @endpoint
    def content(request, fid):
        if fid not in account.files:
            return not_found(f"File {fid}")
        if account.files[fid].get("UploadStatus", "complete") != "complete":
            return refusal(400, "FILES.UPLOAD_NOT_COMPLETE", f"File {fid} has no content until its upload is complete")
        url, expires = world.presign(request, fid)
        expires_http = email.utils.formatdate(expires, usegmt=True)
        if request.query_params.get("redirect", "true").lower() == "meta":
            iso = email.utils.parsedate_to_datetime(expires_http).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
            return envelope({"HrefContent": url, "SupportsRange": True, "Expires": iso})
        return RedirectResponse(url, status_code=302, headers={"Expires": expires_http})

    # -- V2 ----------------------------------------------------------------------------------

    def v2_error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"ErrorCode": code, "ErrorMessage": message}, status_code=status)

    def v2_page(request: Request, items: list[dict], extra: dict | None = None) -> JSONResponse:
        query = request.query_params
        try:
            offset = int(query.get("offset", 0))
            limit = int(query.get("limit", 10))
        except ValueError:
            return v2_error(400, "BASESPACE.COMMON.INVALID_PARAMETER", "offset and limit must be integers")
        if not 0 <= limit <= 1000 or offset < 0:
            return v2_error(400, "BASESPACE.COMMON.INVALID_PARAMETER", "limit must be within 0-1000")
        shown = items[offset : offset + min(limit, world.knobs.page_cap)]
        paging = {"DisplayedCount": len(shown), "TotalCount": len(items), "Offset": offset, "Limit": limit,
                  "SortDir": "Asc", "SortBy": query.get("sortby", "Id")}
        return JSONResponse({"Items": shown, **(extra or {}), "Paging": paging})

    def v2_endpoint(handler):
        async def guarded(request: Request) -> Response:
            if not authorized(request):
                return v2_error(401, "BASESPACE.AUTHENTICATION.UNAUTHORIZED", "The access token is missing, invalid or revoked")
            return handler(request, **request.path_params)

        return guarded

    datasets: dict[str, dict] = {}  # id -> {"entity", "kind", "project", "sample"}

    def add_dataset(project: dict, kind: str, entity: dict) -> None:
        """The V2 dataset BaseSpace shows for a sample or an app result."""
        dataset_id = "ds." + hashlib.md5(f"dataset:{entity['Id']}".encode()).hexdigest()
        sample_name = entity["Name"] if kind.startswith("illumina") else None
        datasets[dataset_id] = {"id": dataset_id, "entity": entity, "kind": kind, "project": project, "sample": sample_name}

    def dataset_answer(dataset: dict) -> dict:
        entity, kind, dataset_id = dataset["entity"], dataset["kind"], dataset["id"]
        return {
            "Id": dataset_id,
            "Href": f"v2/datasets/{dataset_id}",
            "HrefFiles": f"v2/datasets/{dataset_id}/files",
            "Name": entity["Name"],
            "DateCreated": entity["DateCreated"],
            "DateModified": entity["DateCreated"],
            "Project": project_item(dataset["project"]),
            "TotalSize": sum(f["Size"] for f in entity["files"]),
            "UserOwnedBy": account.owner(),
            "DatasetType": {"Id": kind, "Name": "FASTQ" if kind.startswith("illumina") else "Files"},
            "QcStatus": "QcPassed",
            "UploadStatus": "Complete",
            "V1pre3Id": entity["Id"],
            "IsDeleted": False,
        }

    # Loops at this level name their variables `each_…`: a plain `project` would rebind the
    # endpoint of that name before the routes below are built.
    for each_project in account.projects.values():
        for kind, entities in (("illumina.fastq.v1.8", each_project["samples"]), ("common.files", each_project["appresults"])):
            for entity in entities:
                add_dataset(each_project, kind, entity)
    biosamples: dict[str, dict] = {}
    for each_project in account.projects.values():
        for each_sample in each_project["samples"]:
            biosample_id = str(5_000_000 + int(hashlib.md5(each_sample["Name"].encode()).hexdigest()[:6], 16))
            biosamples.setdefault(biosample_id, {
                "Id": biosample_id,
                "Href": f"v2/biosamples/{biosample_id}",
                "BioSampleName": each_sample["Name"],
                "UserOwnedBy": account.owner(),
                "DefaultProject": project_item(each_project),
                "DateCreated": each_sample["DateCreated"],
                "DateModified": each_sample["DateCreated"],
                "Status": "Active",
                "LabStatus": "Sequenced",
            })
    appsessions: dict[str, dict] = {}  # id -> {"session", "appresult", "project"}

    def add_appsession(project: dict, appresult: dict) -> None:
        session = appresult.get("appsession")
        if session:
            appsessions[session["Id"]] = {"session": session, "appresult": appresult, "project": project["Id"]}

    def appsession_answer(found: dict) -> dict:
        session = found["session"]
        return {
            "Id": session["Id"],
            "Name": session["Name"],
            "Href": f"v2/appsessions/{session['Id']}",
            "Application": {"Id": str(int(hashlib.md5(session["Application"].encode()).hexdigest()[:5], 16)), "Name": session["Application"]},
            "UserCreatedBy": account.owner(),
            "ExecutionStatus": session["ExecutionStatus"],
            "StatusSummary": session.get("StatusSummary", ""),
            "QcStatus": "QcPassed",
            "DateCreated": session["DateCreated"],
            "DateModified": session.get("DateModified", session["DateCreated"]),
            "TotalSize": sum(f["Size"] for f in found["appresult"]["files"]),
        }

    for each_project in account.projects.values():
        for each_appresult in each_project["appresults"]:
            add_appsession(each_project, each_appresult)

    def v2_file(item: dict) -> dict:
        fid = item["Id"]
        return {**file_item(item), "HrefContent": f"{API}/files/{fid}/content", "ETag": item["Md5"]}

    def directory_listing(request: Request, files: list[dict]) -> JSONResponse:
        directory = "/" + request.query_params.get("directory", "/").strip("/")
        directory = directory.rstrip("/") + "/"
        inside, subdirectories = [], {}
        for item in files:
            path = "/" + item["Path"].lstrip("/")
            if not path.startswith(directory):
                continue
            rest = path[len(directory):]
            if "/" in rest:
                name = rest.split("/", 1)[0]
                subdirectories.setdefault(name, {"Name": name, "Path": f"{directory}{name}/"})
            else:
                inside.append(v2_file(item))
        extra = {}
        if request.query_params.get("includesubdirectories", "false").lower() == "true":
            extra["SubDirectories"] = sorted(subdirectories.values(), key=lambda d: d["Name"])
        return v2_page(request, inside, extra)

    @v2_endpoint
    def project_datasets(request, pid):
        if pid not in account.projects:
            return v2_error(404, "BASESPACE.PROJECT.NOT_FOUND", f"Project {pid} not found")
        return v2_page(request, [dataset_answer(d) for d in datasets.values() if d["project"]["Id"] == pid])

    @v2_endpoint
    def dataset_list(request):
        wanted = request.query_params.get("inputbiosamples")
        chosen = list(datasets.values())
        if wanted:
            names = {biosamples[b]["BioSampleName"] for b in wanted.split(",") if b in biosamples}
            chosen = [d for d in chosen if d["sample"] in names]
        return v2_page(request, [dataset_answer(d) for d in chosen])

    @v2_endpoint
    def dataset(request, did):
        found = datasets.get(did)
        return JSONResponse(dataset_answer(found)) if found else v2_error(404, "BASESPACE.DATASET.NOT_FOUND", f"Dataset {did} not found")

    @v2_endpoint
    def dataset_files(request, did):
        found = datasets.get(did)
        if not found:
            return v2_error(404, "BASESPACE.DATASET.NOT_FOUND", f"Dataset {did} not found")
        return directory_listing(request, found["entity"]["files"])

    @v2_endpoint
    def v2_current_user(request):
        user = account.user
        return JSONResponse({"Id": user["Id"], "Href": f"v2/users/{user['Id']}", "Name": user["Name"],
                             "Email": user.get("Email", ""), "DateCreated": user.get("DateCreated", "")})

    @v2_endpoint
    def biosample_list(request):
        return v2_page(request, list(biosamples.values()))

    @v2_endpoint
    def appsession_list(request):
        wanted = request.query_params.get("output.projects")
        chosen = [a for a in appsessions.values() if not wanted or a["project"] in wanted.split(",")]
        return v2_page(request, [appsession_answer(a) for a in chosen])

    @v2_endpoint
    def appsession_logfiles(request, aid):
        found = appsessions.get(aid)
        if not found:
            return v2_error(404, "BASESPACE.APPSESSION.NOT_FOUND", f"AppSession {aid} not found")
        return directory_listing(request, found["session"]["logs"])

    # -- writing back ------------------------------------------------------------------------

    store: PartStore = world.parts

    def write_endpoint(handler):
        """An endpoint that reads its request body: refusals drain it first."""

        async def guarded(request: Request) -> Response:
            if not authorized(request):
                await request.body()
                return unauthorized()
            return await handler(request, **request.path_params)

        return guarded

    async def form(request: Request) -> dict[str, str]:
        """A form POST's fields (`application/x-www-form-urlencoded`, as the reference asks), names
        read case-insensitively as BaseSpace reads them."""
        text = (await request.body()).decode("utf-8", "replace")
        return {name.lower(): values[-1] for name, values in parse_qs(text, keep_blank_values=True).items()}

    def query(request: Request, name: str) -> str | None:
        """A query parameter, its name read case-insensitively (`uploadstatus`, `UploadStatus`)."""
        return next((value for key, value in request.query_params.items() if key.lower() == name), None)

    def writable(appresult: dict) -> JSONResponse | None:
        """Why `appresult` takes no files now (403), or None."""
        session = appresult.get("appsession")
        status = session["ExecutionStatus"] if session else appresult.get("Status", "Complete")
        if status in WRITABLE_STATUSES:
            return None
        return refusal(403, "APPRESULTS.NOT_WRITABLE",
                       f"AppResult {appresult['Id']} is {status}: its AppSession takes no more files")

    @write_endpoint
    async def create_project(request):
        name = (await form(request)).get("name", "").strip()
        if not name:
            return refusal(400, "PROJECTS.NAME_REQUIRED", "name is required")
        existing = sorted((p for p in account.projects.values() if p["Name"] == name), key=lambda p: _sort_key(p["Id"]))
        if existing:  # the user's project of that name, as the reference answers: 200, not 201
            return envelope(project_detail(existing[0]))
        project = {"Id": account.new_id(), "Name": name, "Description": "", "DateCreated": timestamp(),
                   "samples": [], "appresults": []}
        account.projects[project["Id"]] = project
        return envelope(project_detail(project), 201)

    @write_endpoint
    async def create_appresult(request, pid):
        project = account.projects.get(pid)
        body = await request.body()
        if project is None:
            return not_found(f"Project {pid}")
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return refusal(415, "APPRESULTS.CONTENT_TYPE", "Content-Type must be application/json")
        try:
            fields = json.loads(body)
        except ValueError:
            return refusal(400, "APPRESULTS.INVALID_JSON", "the body is not JSON")
        name = str(fields.get("Name") or "").strip() if isinstance(fields, dict) else ""
        if not name:
            return refusal(400, "APPRESULTS.NAME_REQUIRED", "Name is required")
        now = timestamp()
        href_session = fields.get("HrefAppSession")
        if href_session:
            session = account.sessions.get(str(href_session).rstrip("/").rsplit("/", 1)[-1])
            if session is None:
                return refusal(400, "APPSESSIONS.NOT_FOUND", f"no AppSession at {href_session}")
            if session["ExecutionStatus"] in ("Complete", "Aborted"):
                return refusal(400, "APPSESSIONS.NOT_WRITABLE", f"AppSession {session['Id']} is {session['ExecutionStatus']}")
        else:  # a new AppSession comes with the app result
            session = {"Id": hashlib.md5(f"appsession:new:{account.new_id()}".encode()).hexdigest(), "Name": f"{name} {now[:19]}",
                       "Application": "BaseSpace API", "ExecutionStatus": "Running", "StatusSummary": "", "DateCreated": now, "logs": []}
            account.sessions[session["Id"]] = session
        appresult = {"Id": account.new_id(), "Name": name, "Description": str(fields.get("Description") or ""),
                     "DateCreated": now, "files": [], "appsession": session}
        account.appresults[appresult["Id"]] = appresult
        project["appresults"].append(appresult)
        add_dataset(project, "common.files", appresult)
        add_appsession(project, appresult)
        return envelope(appresult_detail(appresult), 201)

    @write_endpoint
    async def change_appsession(request, sid):
        session = account.sessions.get(sid)
        fields = await form(request)
        if session is None:
            return not_found(f"AppSession {sid}")
        status = SESSION_STATUSES.get(fields.get("status", "").strip().lower())
        if status is None:
            return refusal(400, "APPSESSIONS.STATUS_REQUIRED", f"status must be one of {', '.join(SESSION_STATUSES)}")
        summary = fields.get("statussummary", "")
        if len(summary) > 128:
            return refusal(400, "APPSESSIONS.SUMMARY_TOO_LONG", "statussummary is at most 128 characters")
        if session["ExecutionStatus"] in ("Complete", "Aborted"):
            return refusal(400, "APPSESSIONS.FINAL", f"AppSession {sid} is {session['ExecutionStatus']}: its status changes no more")
        session.update(ExecutionStatus=status, StatusSummary=summary, DateModified=timestamp())
        return envelope(session_item(session))

    def new_file(appresult: dict, name: str, directory: str, content_type: str, status: str) -> dict:
        path = f"{directory}/{name}" if directory else name
        item = {"Id": account.new_id(), "Name": name, "Path": path, "Size": 0, "ContentType": content_type,
                "DateCreated": timestamp(), "Md5": "", "UploadStatus": status}
        account.files[item["Id"]] = item
        return item

    def place(item: dict, appresult: dict, size: int, md5: str, stored: Path) -> None:
        """A completed file takes its path in the app result, replacing the file that had it."""
        for old in [f for f in appresult["files"] if f["Path"] == item["Path"]]:
            appresult["files"].remove(old)
            account.files.pop(old["Id"], None)
            gone = world.objects.pop(old["Id"], None)
            if gone is not None and gone.parent == account.written:
                gone.unlink(missing_ok=True)
        item.update(Size=size, Md5=md5, UploadStatus="complete", DateCreated=timestamp())
        appresult["files"].append(item)
        world.objects[item["Id"]] = stored

    @write_endpoint
    async def upload_file(request, aid):
        appresult = account.appresults.get(aid)
        name = (query(request, "name") or "").strip()
        directory = (query(request, "directory") or "").strip("/")
        content_type = request.headers.get("content-type", "").strip()
        multipart = (query(request, "multipart") or "").lower() == "true"
        if appresult is None:
            refused = not_found(f"AppResult {aid}")
        elif not content_type:
            refused = refusal(400, "FILES.CONTENT_TYPE_REQUIRED", "Content-Type is required")
        elif not name or "/" in name:
            refused = refusal(400, "FILES.NAME_INVALID", "name is required and holds no /")
        elif directory and any(part in ("", ".", "..") for part in directory.split("/")):
            refused = refusal(400, "FILES.DIRECTORY_INVALID", "directory holds an empty, . or .. part")
        else:
            refused = writable(appresult)
        if refused is not None:
            await request.body()
            return refused
        if multipart:
            await request.body()
            item = new_file(appresult, name, directory, content_type, "pending")
            upload = store.create(min_part=MIN_PART, max_part=MAX_PART, max_parts=MAX_PARTS)
            account.pending[item["Id"]] = (upload, item, appresult)
            return envelope(file_item(item), 201)
        # One request: the body is the file, received as the one part of an upload of one part.
        item = new_file(appresult, name, directory, content_type, "pending")
        upload = store.create(min_part=0, max_part=SINGLE_PART_MAX, max_parts=1)

        def finish(number: int, etag: str, size: int) -> Response:
            stored = account.written / item["Id"]
            size, md5 = store.complete(upload, [(number, etag)], stored)
            place(item, appresult, size, md5, stored)
            return envelope(file_item(item), 201)

        response = await store.receive(request, upload, 1, answer=finish, refuse=refusal)
        if not upload.completed:
            store.abort(upload)
            account.files.pop(item["Id"], None)
        return response

    @write_endpoint
    async def upload_part(request, fid, number):
        waiting = account.pending.get(fid)
        if fid not in account.files:
            refused = not_found(f"File {fid}")
        elif waiting is None:
            refused = refusal(400, "FILES.NOT_PENDING", f"File {fid} is not a pending multipart upload")
        else:
            refused = writable(waiting[2])
        if refused is not None:
            await request.body()
            return refused
        upload = waiting[0]

        def accepted(number: int, etag: str, size: int) -> Response:
            return envelope({"Number": number, "ETag": etag, "Size": size})

        return await store.receive(request, upload, number, answer=accepted, refuse=refusal)

    @write_endpoint
    async def file_status(request, fid):
        await request.body()
        item = account.files.get(fid)
        if item is None:
            return not_found(f"File {fid}")
        wanted = (query(request, "uploadstatus") or "").lower()
        waiting = account.pending.get(fid)
        if wanted not in ("complete", "aborted"):
            return refusal(400, "FILES.UPLOADSTATUS", "uploadstatus must be complete or aborted")
        if waiting is None:
            return refusal(400, "FILES.NOT_PENDING", f"File {fid} is not a pending upload: its upload is {item.get('UploadStatus', 'complete')}")
        upload, _, appresult = waiting
        if wanted == "aborted":
            store.abort(upload)
            del account.pending[fid]
            item["UploadStatus"] = "aborted"
            return envelope(file_item(item))
        refused = writable(appresult)
        if refused is not None:
            return refused
        numbers = sorted(upload.parts)
        if not numbers:
            return refusal(400, "FILES.NO_PARTS", f"File {fid} has no part uploaded")
        missing = next((expected for number, expected in zip(numbers, itertools.count(1)) if number != expected), None)
        if missing is not None:
            return refusal(400, "FILES.PART_MISSING", f"File {fid} has no part {missing}")
        stored = account.written / fid
        try:
            size, md5 = store.complete(upload, [(n, upload.parts[n][0]) for n in numbers], stored)
        except UploadError as exc:
            return refusal(400, f"FILES.{exc.code.upper()}", str(exc))
        del account.pending[fid]
        place(item, appresult, size, md5, stored)
        return envelope(file_item(item), 201)

    def to_trash(kind: str, entity: dict, included: dict[str, list[dict]]) -> JSONResponse:
        item = {
            "Id": account.new_id(), "Name": entity["Name"], "DateDeleted": timestamp(), "UserDeletedBy": account.owner(),
            "IncludedSamples": [sample_item(s) for s in included.get("samples", [])],
            "IncludedAppResults": [appresult_item(a) for a in included.get("appresults", [])],
            "IncludedAppSessions": [session_item(a["appsession"]) for a in included.get("appresults", []) if a.get("appsession")],
            f"Deleted{kind}": {**entity_answer(kind, entity), "IsDeleted": True},
            "IsVisibleInTrash": True, "Includes": ["FILEDATA", "METADATA"],
        }
        item.update(Href=f"{API}/trash/{item['Id']}", HrefPostRestoreFromTrash=f"{API}/trash/{item['Id']}/RestoreFromTrash")
        account.trash.append(item)
        return envelope(item)

    def entity_answer(kind: str, entity: dict) -> dict:
        return project_item(entity) if kind == "Project" else appresult_item(entity)

    def forget_appresult(appresult: dict) -> None:
        account.appresults.pop(appresult["Id"], None)
        for dataset_id in [d for d, found in datasets.items() if found["entity"] is appresult]:
            del datasets[dataset_id]
        session = appresult.get("appsession")
        if session:
            appsessions.pop(session["Id"], None)

    @write_endpoint
    async def trash_project(request, pid):
        await request.body()
        project = account.projects.pop(pid, None)
        if project is None:
            return not_found(f"Project {pid}")
        for sample in project["samples"]:
            account.samples.pop(sample["Id"], None)
        for dataset_id in [d for d, found in datasets.items() if found["project"] is project]:
            del datasets[dataset_id]
        for appresult in project["appresults"]:
            forget_appresult(appresult)
        return to_trash("Project", project, {"samples": project["samples"], "appresults": project["appresults"]})

    @write_endpoint
    async def trash_appresult(request, aid):
        await request.body()
        appresult = account.appresults.get(aid)
        if appresult is None:
            return not_found(f"AppResult {aid}")
        for project in account.projects.values():
            if appresult in project["appresults"]:
                project["appresults"].remove(appresult)
        forget_appresult(appresult)
        return to_trash("AppResult", appresult, {"appresults": [appresult]})

    base = f"/{API}"
    return [
        Route("/v2/users/current", v2_current_user),
        Route("/v2/projects/{pid}/datasets", project_datasets),
        Route("/v2/datasets", dataset_list),
        Route("/v2/datasets/{did}", dataset),
        Route("/v2/datasets/{did}/files", dataset_files),
        Route("/v2/biosamples", biosample_list),
        Route("/v2/appsessions", appsession_list),
        Route("/v2/appsessions/{aid}/logfiles", appsession_logfiles),
        Route(f"{base}/users/current", current_user),
        Route(f"{base}/users/current/projects", projects),
        Route(f"{base}/projects", create_project, methods=["POST"]),
        Route(f"{base}/projects/{{pid}}", project),
        Route(f"{base}/projects/{{pid}}", trash_project, methods=["DELETE"]),
        Route(f"{base}/projects/{{pid}}/samples", project_samples),
        Route(f"{base}/projects/{{pid}}/appresults", project_appresults),
        Route(f"{base}/projects/{{pid}}/appresults", create_appresult, methods=["POST"]),
        Route(f"{base}/samples/{{sid}}", sample),
        Route(f"{base}/samples/{{eid}}/files", files_of(account.samples, "Sample")),
        Route(f"{base}/appresults/{{aid}}", appresult),
        Route(f"{base}/appresults/{{aid}}", trash_appresult, methods=["DELETE"]),
        Route(f"{base}/appresults/{{eid}}/files", files_of(account.appresults, "AppResult")),
        Route(f"{base}/appresults/{{aid}}/files", upload_file, methods=["POST"]),
        Route(f"{base}/appsessions/{{sid}}", appsession),
        Route(f"{base}/appsessions/{{sid}}", change_appsession, methods=["POST"]),
        Route(f"{base}/users/current/runs", runs),
        Route(f"{base}/runs/{{rid}}", run),
        Route(f"{base}/runs/{{eid}}/files", files_of(account.runs, "Run", compact=True)),
        Route(f"{base}/files/{{fid}}", file),
        Route(f"{base}/files/{{fid}}", file_status, methods=["POST"]),
        Route(f"{base}/files/{{fid}}/content", content),
        Route(f"{base}/files/{{fid}}/parts/{{number:int}}", upload_part, methods=["PUT"]),
        *oauth_routes(world),
    ]


# -- OAuth device flow -----------------------------------------------------------------------------


@dataclass
class DeviceCode:
    user_code: str
    expires_at: float
    interval: float
    state: str = "pending"  # approved, denied
    last_poll: float = -math.inf


def oauth_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


def oauth_routes(world: World) -> list[Route]:
    codes: dict[str, DeviceCode] = {}  # device code → its state

    def by_user_code(user_code: str) -> DeviceCode | None:
        return next((code for code in codes.values() if code.user_code == user_code.strip().lower()), None)

    async def device_authorization(request: Request) -> Response:
        world.stats.api_requests += 1
        form = await form_fields(request)
        if form.get("client_id") != CLIENT_ID:
            return oauth_error(400, "invalid_client", "Unknown client_id")
        if form.get("response_type") != "device_code":
            return oauth_error(400, "unsupported_response_type", "response_type must be device_code")
        device_code, user_code = secrets.token_hex(16), secrets.token_hex(3)[:5]
        lifetime, interval = world.knobs.device_code_lifetime, world.knobs.device_poll_interval
        codes[device_code] = DeviceCode(user_code, time.time() + lifetime, interval)
        page = str(request.base_url).rstrip("/") + PREFIX + "/oauth/device"
        return JSONResponse({"verification_uri": page, "verification_with_code_uri": f"{page}?code={user_code}",
                             "user_code": user_code, "expires_in": lifetime, "device_code": device_code, "interval": interval})

    def client_credentials(request: Request, form) -> tuple[str | None, str | None]:
        """From a Basic header or the body (the seed: either, not both)."""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            client_id, _, secret = base64.b64decode(header[6:]).decode(errors="replace").partition(":")
            return client_id, secret
        return form.get("client_id"), form.get("client_secret")

    def poll(code: DeviceCode, now: float) -> str:
        if now > code.expires_at:
            return "expired_token"
        too_soon = now - code.last_poll < code.interval - 0.05  # the client's own clock may differ a little
        if world.knobs.device_slow_down > 0 or too_soon:
            world.knobs.device_slow_down = max(0, world.knobs.device_slow_down - 1)
            code.interval += 5
            return "slow_down"
        return {"pending": "authorization_pending", "approved": "access_token", "denied": "access_denied"}[code.state]

    async def token(request: Request) -> Response:
        world.stats.api_requests += 1
        form = await form_fields(request)
        if client_credentials(request, form) != (CLIENT_ID, CLIENT_SECRET):
            return oauth_error(401, "invalid_client", "Client authentication failed")
        if form.get("grant_type") != "device":
            return oauth_error(400, "unsupported_grant_type", "This emulator grants device codes only")
        device_code = form.get("code", "")
        code = codes.get(device_code)
        if code is None:
            return oauth_error(400, "invalid_grant", "Unknown or used device code")
        now = time.time()
        outcome = poll(code, now)
        code.last_poll = now
        world.stats.token_polls.append(outcome)
        if outcome in ("access_token", "access_denied", "expired_token"):
            del codes[device_code]
        if outcome == "access_token":
            return JSONResponse({"access_token": world.token})
        descriptions = {
            "authorization_pending": "The user has not yet approved the access request",
            "slow_down": "Polling too fast: wait longer between requests",
            "access_denied": "The user denied the access request",
            "expired_token": "The device code has expired",
        }
        return oauth_error(400, outcome, descriptions[outcome])

    async def verification_page(request: Request) -> Response:
        if request.method == "GET":
            user_code = html.escape(request.query_params.get("code", ""))
            return HTMLResponse(
                "<!doctype html><title>BaseSpace (emulator): approve a device</title>"
                f"<form method=post><label>Code <input name=user_code value='{user_code}'></label>"
                "<button name=action value=approve>Approve</button><button name=action value=deny>Deny</button></form>"
            )
        form = await form_fields(request)
        code = by_user_code(str(form.get("user_code", "")))
        if code is None or time.time() > code.expires_at:
            return HTMLResponse("<!doctype html><p>Unknown or expired code.</p>", status_code=404)
        code.state = "approved" if form.get("action") == "approve" else "denied"
        return HTMLResponse(f"<!doctype html><p>omicsfs was {html.escape(code.state)}. You may close this page.</p>")

    return [
        Route(f"/{API}/oauthv2/deviceauthorization", device_authorization, methods=["POST"]),
        Route(f"/{API}/oauthv2/token", token, methods=["POST"]),
        Route("/oauth/device", verification_page, methods=["GET", "POST"]),
    ]


def _sort_key(value) -> tuple:
    """Numeric ids sort as numbers, as BaseSpace's do."""
    text = str(value)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)
