"""Emulators of the platforms: real HTTP servers that behave as the API references describe.

One server (`omicsfs emulator`) serves every platform under its own prefix (`/basespace/...`),
an S3-like object store (`/store/...`) that hands out HMAC-signed, expiring URLs and serves
`Range`, and a control API (`/_emulator/...`) through which tests and benchmarks turn the quirks
up (page caps, URL lifetime, injected failures) and read what the server saw.

A platform's emulator is the module `omicsfs.emulator.<kind>`, exporting `PREFIX` and
`routes(world)`; it is found by name, as platform modules are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import importlib
import os
import pkgutil
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

DEFAULT_TOKEN = "omicsfs-demo-token"
#: Not platform modules: the shared pieces of the emulator package.
_SHARED_MODULES = {"sampledata", "server", "multipart"}


@dataclass
class Knobs:
    """What tests turn up. Every field can be set through `POST /_emulator/knobs`."""

    #: The most items any list page holds, whatever `Limit` asked (real servers cap pages too).
    page_cap: int = 250
    #: Seconds a presigned URL stays valid.
    url_lifetime: float = 600.0
    #: Seconds the expiry a platform states lies beyond the real one (clocks differ): clients must
    #: still recover when the store refuses a URL they believe valid.
    url_expiry_skew: float = 0.0
    #: Failures to inject: the next `count` requests whose path starts with `prefix` get `status`.
    failures: list[dict] = field(default_factory=list)
    #: Paths under these prefixes answer 404, as a server without those endpoints (an older or
    #: private installation: BaseSpace without `/v2/`, Isabl without `rest-auth/user/`).
    absent_prefixes: list[str] = field(default_factory=list)
    #: Faults of uploaded parts (`multipart.py`): each `{"part": N (any if absent), "fault":
    #: "status" | "drop" | "slow" | "badetag", "count": 1, "status": 500, "after": bytes before
    #: a drop, "seconds": a slow part's delay}`.
    part_faults: list[dict] = field(default_factory=list)
    #: Seconds a presigned part URL stays valid (Seven Bridges says about a minute).
    part_url_lifetime: float = 60.0
    #: The token the platforms accept from now on (None: the one the emulator started with), to
    #: test a token rotated while mounted.
    token: str | None = None
    #: OAuth device flow (BaseSpace's `omicsfs login`): how long a code lives, the poll interval
    #: it states, and how many of the next polls are told `slow_down` (a server under load).
    device_code_lifetime: float = 1800.0
    device_poll_interval: float = 1.0
    device_slow_down: int = 0
    #: Where presigned URLs point: `<store_url>/<object id>?X-Expires=...`; None: this server's own
    #: `/store`. bench/ points it at another server holding the same objects (`GET /_emulator/objects`).
    store_url: str | None = None


@dataclass
class Stats:
    """What the server saw, for tests and benchmarks."""

    api_requests: int = 0
    store_requests: int = 0
    store_bytes: int = 0
    injected_failures: int = 0
    #: Redirects answered (Django's APPEND_SLASH): a client that asks canonical paths causes none.
    redirects: int = 0
    #: Writes: multipart uploads begun and completed, part requests received and parts accepted,
    #: and the bytes of accepted parts (a whole small file counts as one part).
    uploads_started: int = 0
    uploads_completed: int = 0
    part_requests: int = 0
    parts_received: int = 0
    upload_bytes: int = 0
    store_ranges: list[str] = field(default_factory=list)
    #: What each device-flow token poll was answered: authorization_pending, slow_down, access_token...
    token_polls: list[str] = field(default_factory=list)


class World:
    """The emulator's state: the data on disk, the knobs, the object store's signing key, the stats."""

    def __init__(self, data_dir: Path, token: str = DEFAULT_TOKEN, large_file_size: int = 1 << 30,
                 deep_bam_size: int = 0, wide_directory_files: int = 0):
        self.data_dir = Path(data_dir)
        self.initial_token = token
        self.large_file_size = large_file_size
        self.deep_bam_size = deep_bam_size
        self.wide_directory_files = wide_directory_files
        self.knobs = Knobs()
        self.stats = Stats()
        self._key = hashlib.sha256(b"omicsfs-emulator" + token.encode()).digest()
        #: object id -> file on disk, registered by each platform's emulator.
        self.objects: dict[str, Path] = {}
        #: Unfinished multipart uploads (`multipart.PartStore`), set when the app is built.
        self.parts = None

    @property
    def token(self) -> str:
        """The token every platform accepts now."""
        return self.knobs.token or self.initial_token

    # -- presigned URLs --------------------------------------------------------------------

    def _signature(self, object_id: str, expires: int) -> str:
        return hmac.new(self._key, f"{object_id}:{expires}".encode(), hashlib.sha256).hexdigest()

    def presign(self, request: Request, object_id: str) -> tuple[str, int]:
        """An absolute URL of the store for `object_id`, valid for `knobs.url_lifetime` seconds,
        and the expiry to state (which `knobs.url_expiry_skew` may push past the real one)."""
        expires = int(time.time() + self.knobs.url_lifetime)
        base = (self.knobs.store_url or f"{str(request.base_url).rstrip('/')}/store").rstrip("/")
        url = f"{base}/{object_id}?X-Expires={expires}&X-Signature={self._signature(object_id, expires)}"
        return url, int(expires + self.knobs.url_expiry_skew)

    def verify(self, object_id: str, expires: str, signature: str) -> str | None:
        """Why a presigned URL is refused, or None if it is good."""
        try:
            expires_at = int(expires)
        except ValueError:
            return "AuthorizationQueryParametersError"
        if not hmac.compare_digest(self._signature(object_id, expires_at), signature):
            return "SignatureDoesNotMatch"
        if expires_at < time.time():
            return "Request has expired"
        return None

    # -- injected failures -------------------------------------------------------------------

    def injected_failure(self, path: str) -> dict | None:
        for failure in self.knobs.failures:
            if path.startswith(failure.get("prefix", "/")) and failure.get("count", 0) > 0:
                failure["count"] -= 1
                self.stats.injected_failures += 1
                return failure
        return None


async def form_fields(request: Request) -> dict[str, str]:
    """An urlencoded body's fields (OAuth's requests): parsed here, as starlette's own form parser
    needs python-multipart for every kind of form."""
    return dict(parse_qsl((await request.body()).decode(errors="replace"), keep_blank_values=True))


# -- the object store --------------------------------------------------------------------------

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """(start, end inclusive), None for the whole object, or "unsatisfiable"."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match or match.groups() == ("", ""):
        return None  # as S3: a malformed Range is ignored
    first, last = match.groups()
    if first == "":
        length = int(last)
        if length == 0:
            return "unsatisfiable"
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        return "unsatisfiable"
    return start, end


def _s3_error(status: int, code: str, message: str) -> Response:
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return Response(body, status_code=status, media_type="application/xml")


async def store_object(request: Request) -> Response:
    world: World = request.app.state.world
    world.stats.store_requests += 1
    object_id = request.path_params["object_id"]
    refused = world.verify(object_id, request.query_params.get("X-Expires", ""), request.query_params.get("X-Signature", ""))
    if refused:
        return _s3_error(403, "AccessDenied", refused)
    path = world.objects.get(object_id)
    if path is None:
        return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
    size = path.stat().st_size
    wanted = parse_range(request.headers.get("range"), size)
    if wanted == "unsatisfiable":
        return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
    start, end = wanted if wanted else (0, size - 1)
    length = max(0, end - start + 1)
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(length), "ETag": f'"{object_id}-{size}"'}
    status = 200
    if wanted:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    world.stats.store_ranges.append(f"{object_id}:{start}-{end}")
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    return file_response(world, path, start, length, status, headers)


def file_response(world: World, path: Path, start: int, length: int, status: int, headers: dict) -> StreamingResponse:
    """`length` bytes of `path` from `start`, streamed and counted in `world.stats.store_bytes`."""

    async def body():
        with open(path, "rb") as file:
            file.seek(start)
            remaining = length
            while remaining:
                chunk = file.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                remaining -= len(chunk)
                world.stats.store_bytes += len(chunk)
                yield chunk

    return StreamingResponse(body(), status_code=status, headers=headers, media_type="application/octet-stream")


# -- control API -------------------------------------------------------------------------------


async def get_stats(request: Request) -> Response:
    return JSONResponse(dataclasses.asdict(request.app.state.world.stats))


async def reset_stats(request: Request) -> Response:
    request.app.state.world.stats = Stats()
    return JSONResponse({})


async def objects(request: Request) -> Response:
    """Every object the store holds, id -> file: so that another server can serve the same bytes."""
    return JSONResponse({object_id: str(path) for object_id, path in request.app.state.world.objects.items()})


async def knobs(request: Request) -> Response:
    world: World = request.app.state.world
    if request.method == "POST":
        changes = await request.json()
        unknown = set(changes) - {f.name for f in dataclasses.fields(Knobs)}
        if unknown:
            return JSONResponse({"error": f"unknown knobs {sorted(unknown)}"}, status_code=400)
        for name, value in changes.items():
            setattr(world.knobs, name, value)
    return JSONResponse(dataclasses.asdict(world.knobs))


# -- assembly ----------------------------------------------------------------------------------


def platform_modules() -> list:
    import omicsfs.emulator as package

    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.name not in _SHARED_MODULES and not m.name.startswith("_"))
    return [importlib.import_module(f"{__name__}.{name}") for name in names]


class _InjectFailures:
    """ASGI middleware: answers injected failures (429 storms, 5xx) before any route runs."""

    def __init__(self, app, world: World):
        self.app = app
        self.world = world

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not scope["path"].startswith("/_emulator"):
            if any(scope["path"].startswith(prefix) for prefix in self.world.knobs.absent_prefixes):
                await JSONResponse({"detail": "Not found."}, status_code=404)(scope, receive, send)
                return
            failure = self.world.injected_failure(scope["path"])
            if failure is not None:
                status = int(failure.get("status", 500))
                headers = {str(k): str(v) for k, v in failure.get("headers", {}).items()}
                response = JSONResponse(failure.get("body", {"message": f"injected {status}"}), status_code=status, headers=headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(world: World) -> Starlette:
    from omicsfs.emulator import multipart  # it builds on this module

    world.parts = multipart.PartStore(world)
    routes = [
        Route("/store/{object_id}", store_object, methods=["GET", "HEAD"]),
        Route("/store/uploads/{upload_id}/{number:int}", multipart.store_part, methods=["PUT"]),
        Route("/_emulator/stats", get_stats),
        Route("/_emulator/stats/reset", reset_stats, methods=["POST"]),
        Route("/_emulator/knobs", knobs, methods=["GET", "POST"]),
        Route("/_emulator/objects", objects),
    ]
    for module in platform_modules():
        routes.append(Mount(module.PREFIX, routes=module.routes(world)))
    app = Starlette(routes=routes)
    app.state.world = world
    app.add_middleware(_InjectFailures, world=world)
    return app


def default_data_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "omicsfs" / "emulator-data"
