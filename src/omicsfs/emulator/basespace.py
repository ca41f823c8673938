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

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from omicsfs.emulator import World, form_fields
from omicsfs.emulator import sampledata

PREFIX = "/basespace"
API = "v1pre3"
#: The BaseSpace app the emulator has registered: what a site's table gives `omicsfs login`.
CLIENT_ID = "omicsfs-emulator-app"
CLIENT_SECRET = "omicsfs-emulator-app-secret"


def envelope(response: dict, status: int = 200, message: str | None = None) -> JSONResponse:
    status_body = {"Message": message, "ErrorCode": f"BASESPACE.{status}"} if message else {}
    return JSONResponse({"Response": response, "ResponseStatus": status_body, "Notifications": []}, status_code=status)


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
        self.data = sampledata.generate(directory, world.large_file_size)
        self.user = self.data["user"]
        self.projects = {p["Id"]: p for p in self.data["projects"]}
        self.samples = {s["Id"]: s for p in self.data["projects"] for s in p["samples"]}
        self.appresults = {a["Id"]: a for p in self.data["projects"] for a in p["appresults"]}
        self.runs = {r["Id"]: r for r in self.data["runs"]}
        self.files = {}
        for _, _, item in sampledata.iter_files(self.data):
            self.files[item["Id"]] = item
            world.objects[item["Id"]] = sampledata.object_path(directory, item["Id"])

    def owner(self) -> dict:
        return {"Id": self.user["Id"], "Href": f"{API}/users/{self.user['Id']}", "Name": self.user["Name"]}


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
        return {
            "Id": aid,
            "Href": f"{API}/appresults/{aid}",
            "UserOwnedBy": account.owner(),
            "Name": appresult["Name"],
            "Description": appresult.get("Description", ""),
            "Status": appresult.get("Status", "Complete"),
            "StatusSummary": "",
            "DateCreated": appresult["DateCreated"],
            "HrefFiles": f"{API}/appresults/{aid}/files",
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
            answer.update(ContentType=item["ContentType"], HrefContent=f"{API}/files/{fid}/content", UploadStatus="complete")
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
        return envelope(appresult_item(found)) if found else not_found(f"AppResult {aid}")

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

    datasets: dict[str, dict] = {}  # id -> {"answer", "files", "project", "sample name"}
    for project in account.projects.values():
        for kind, entities in (("illumina.fastq.v1.8", project["samples"]), ("common.files", project["appresults"])):
            for entity in entities:
                dataset_id = "ds." + hashlib.md5(f"dataset:{entity['Id']}".encode()).hexdigest()
                answer = {
                    "Id": dataset_id,
                    "Href": f"v2/datasets/{dataset_id}",
                    "HrefFiles": f"v2/datasets/{dataset_id}/files",
                    "Name": entity["Name"],
                    "DateCreated": entity["DateCreated"],
                    "DateModified": entity["DateCreated"],
                    "Project": project_item(project),
                    "TotalSize": sum(f["Size"] for f in entity["files"]),
                    "UserOwnedBy": account.owner(),
                    "DatasetType": {"Id": kind, "Name": "FASTQ" if kind.startswith("illumina") else "Files"},
                    "QcStatus": "QcPassed",
                    "UploadStatus": "Complete",
                    "V1pre3Id": entity["Id"],
                    "IsDeleted": False,
                }
                sample_name = entity["Name"] if kind.startswith("illumina") else None
                datasets[dataset_id] = {"answer": answer, "files": entity["files"], "project": project["Id"], "sample": sample_name}
    biosamples: dict[str, dict] = {}
    for project in account.projects.values():
        for sample in project["samples"]:
            biosample_id = str(5_000_000 + int(hashlib.md5(sample["Name"].encode()).hexdigest()[:6], 16))
            biosamples.setdefault(biosample_id, {
                "Id": biosample_id,
                "Href": f"v2/biosamples/{biosample_id}",
                "BioSampleName": sample["Name"],
                "UserOwnedBy": account.owner(),
                "DefaultProject": project_item(project),
                "DateCreated": sample["DateCreated"],
                "DateModified": sample["DateCreated"],
                "Status": "Active",
                "LabStatus": "Sequenced",
            })
    appsessions: dict[str, dict] = {}
    for project in account.projects.values():
        for appresult in project["appresults"]:
            session = appresult.get("appsession")
            if session:
                answer = {
                    "Id": session["Id"],
                    "Name": session["Name"],
                    "Href": f"v2/appsessions/{session['Id']}",
                    "Application": {"Id": str(int(hashlib.md5(session["Application"].encode()).hexdigest()[:5], 16)), "Name": session["Application"]},
                    "UserCreatedBy": account.owner(),
                    "ExecutionStatus": session["ExecutionStatus"],
                    "QcStatus": "QcPassed",
                    "DateCreated": session["DateCreated"],
                    "DateModified": session["DateCreated"],
                    "TotalSize": sum(f["Size"] for f in appresult["files"]),
                }
                appsessions[session["Id"]] = {"answer": answer, "files": session["logs"], "project": project["Id"]}

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
        return v2_page(request, [d["answer"] for d in datasets.values() if d["project"] == pid])

    @v2_endpoint
    def dataset_list(request):
        wanted = request.query_params.get("inputbiosamples")
        chosen = list(datasets.values())
        if wanted:
            names = {biosamples[b]["BioSampleName"] for b in wanted.split(",") if b in biosamples}
            chosen = [d for d in chosen if d["sample"] in names]
        return v2_page(request, [d["answer"] for d in chosen])

    @v2_endpoint
    def dataset(request, did):
        found = datasets.get(did)
        return JSONResponse(found["answer"]) if found else v2_error(404, "BASESPACE.DATASET.NOT_FOUND", f"Dataset {did} not found")

    @v2_endpoint
    def dataset_files(request, did):
        found = datasets.get(did)
        if not found:
            return v2_error(404, "BASESPACE.DATASET.NOT_FOUND", f"Dataset {did} not found")
        return directory_listing(request, found["files"])

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
        return v2_page(request, [a["answer"] for a in chosen])

    @v2_endpoint
    def appsession_logfiles(request, aid):
        found = appsessions.get(aid)
        if not found:
            return v2_error(404, "BASESPACE.APPSESSION.NOT_FOUND", f"AppSession {aid} not found")
        return directory_listing(request, found["files"])

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
        Route(f"{base}/projects/{{pid}}", project),
        Route(f"{base}/projects/{{pid}}/samples", project_samples),
        Route(f"{base}/projects/{{pid}}/appresults", project_appresults),
        Route(f"{base}/samples/{{sid}}", sample),
        Route(f"{base}/samples/{{eid}}/files", files_of(account.samples, "Sample")),
        Route(f"{base}/appresults/{{aid}}", appresult),
        Route(f"{base}/appresults/{{eid}}/files", files_of(account.appresults, "AppResult")),
        Route(f"{base}/users/current/runs", runs),
        Route(f"{base}/runs/{{rid}}", run),
        Route(f"{base}/runs/{{eid}}/files", files_of(account.runs, "Run", compact=True)),
        Route(f"{base}/files/{{fid}}", file),
        Route(f"{base}/files/{{fid}}/content", content),
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
