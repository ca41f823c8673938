"""Multipart uploads as object stores take them, shared by the platform emulators.

S3's rules (what Seven Bridges' and BugSeq's presigned part URLs lead to, and what BaseSpace's own
`files/{id}/parts/{n}` follows with other sizes): parts numbered 1..10000, sent in any order and
again (the last one sent wins); a `Content-MD5` that does not match the bytes is refused
(400 BadDigest); each part answers its ETag, the quoted hex MD5 of its bytes; completing names
every part with its ETag, in ascending order, all but the last at least `min_part` bytes, and
assembles the object. Parts are kept on disk, never in memory.

Knobs (`Knobs.part_faults`) make parts fail as networks and stores do, so that tests can prove each
retry: a status for part N, the connection dropped in the middle of a part's body, a slow part,
an ETag that does not match what was sent; and `Knobs.part_url_lifetime` expires part URLs early.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import shutil
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from pathlib import Path

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from omicsfs.emulator import World, _s3_error

S3_MIN_PART = 5 * 1024 * 1024
S3_MAX_PART = 5 * 1024**3
MAX_PARTS = 10_000


class UploadError(Exception):
    """Why an upload cannot complete: an S3-style error code and a message."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass
class Upload:
    upload_id: str
    directory: Path
    min_part: int
    max_part: int
    max_parts: int = MAX_PARTS
    #: number -> (ETag, size)
    parts: dict[int, tuple[str, int]] = field(default_factory=dict)
    completed: bool = False
    aborted: bool = False


class PartStore:
    """Unfinished multipart uploads, their parts on disk under `world.data_dir/uploads/`."""

    def __init__(self, world: World):
        self.world = world
        self.directory = world.data_dir / "uploads"
        shutil.rmtree(self.directory, ignore_errors=True)  # an earlier run's unfinished parts
        self.uploads: dict[str, Upload] = {}
        self._ids = itertools.count(1)

    def create(self, *, min_part: int = S3_MIN_PART, max_part: int = S3_MAX_PART, max_parts: int = MAX_PARTS) -> Upload:
        upload_id = f"{int(time.time() * 1000):x}{next(self._ids):06x}"
        upload = Upload(upload_id, self.directory / upload_id, min_part, max_part, max_parts)
        upload.directory.mkdir(parents=True, exist_ok=True)
        self.uploads[upload_id] = upload
        self.world.stats.uploads_started += 1
        return upload

    def get(self, upload_id: str) -> Upload | None:
        """An upload still taking parts (S3: NoSuchUpload once completed or aborted)."""
        upload = self.uploads.get(upload_id)
        return upload if upload is not None and not upload.aborted and not upload.completed else None

    def presign_part(self, request: Request, upload_id: str, number: int) -> tuple[str, int]:
        """A presigned PUT URL of the store for one part, and when it expires."""
        lifetime = self.world.knobs.part_url_lifetime
        expires = int(time.time() + lifetime)
        base = f"{str(request.base_url).rstrip('/')}/store"
        key = f"upload:{upload_id}:{number}"
        return f"{base}/uploads/{upload_id}/{number}?X-Expires={expires}&X-Signature={self.world._signature(key, expires)}", expires

    async def receive(
        self,
        request: Request,
        upload: Upload,
        number: int,
        *,
        answer: Callable[[int, str, int], Response] | None = None,
        refuse: Callable[[int, str, str], Response] = _s3_error,
    ) -> Response:
        """One part's PUT: the knobs' faults, the checks, the bytes to disk; answers its ETag.

        A platform whose parts go to its own API (BaseSpace) answers in its own envelope:
        `answer(number, etag, size)` for an accepted part (S3's: the quoted ETag in a header) and
        `refuse(status, code, message)` for a refused one (S3's: an XML error).
        """
        world = self.world
        world.stats.part_requests += 1
        if not 1 <= number <= upload.max_parts:
            await _drain(request)
            return refuse(400, "InvalidArgument", f"Part number must be an integer between 1 and {upload.max_parts}")
        fault = _take_fault(world, number)
        if fault and fault.get("fault", "status") == "status":
            await _drain(request)
            return refuse(int(fault.get("status", 500)), "InternalError", f"injected failure of part {number}")
        if fault and fault["fault"] == "slow":
            await anyio.sleep(float(fault.get("seconds", 2)))  # uvicorn runs the emulator on asyncio
            if upload.completed or upload.aborted:  # finished while this part slept
                await _drain(request)
                return refuse(404, "NoSuchUpload", "The specified upload does not exist.")
        digest = hashlib.md5()
        partial = upload.directory / f"{number}.{next(self._ids)}.partial"
        size = 0
        try:
            with open(partial, "wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > upload.max_part:
                        raise UploadError("EntityTooLarge", f"part {number} is larger than {upload.max_part} bytes")
                    if fault and fault["fault"] == "drop" and size >= int(fault.get("after", 1)):
                        raise _Dropped()
                    digest.update(chunk)
                    out.write(chunk)
        except UploadError as exc:
            partial.unlink(missing_ok=True)
            return refuse(exc.status, exc.code, str(exc))
        except (_Dropped, ClientDisconnect):
            partial.unlink(missing_ok=True)
            return DroppedConnection()
        expected = request.headers.get("content-md5")
        if expected is not None and expected.strip() != base64.b64encode(digest.digest()).decode():
            partial.unlink(missing_ok=True)
            return refuse(400, "BadDigest", "The Content-MD5 you specified did not match what we received.")
        etag = digest.hexdigest()
        if fault and fault["fault"] == "badetag":
            etag = hashlib.md5(etag.encode()).hexdigest()  # a store that got other bytes than were sent
        partial.replace(upload.directory / str(number))
        upload.parts[number] = (etag, size)
        world.stats.parts_received += 1
        world.stats.upload_bytes += size
        if answer is not None:
            return answer(number, etag, size)
        return Response(status_code=200, headers={"ETag": f'"{etag}"'})

    def complete(self, upload: Upload, parts: list[tuple[int, str]], destination: Path) -> tuple[int, str]:
        """Assemble the object from `parts` (number, ETag) into `destination`; (size, hex MD5)."""
        if upload.completed:
            raise UploadError("NoSuchUpload", "The upload was already completed.", 404)
        if not parts:
            raise UploadError("MalformedXML", "The upload names no part.")
        numbers = [number for number, _ in parts]
        if numbers != sorted(set(numbers)):
            raise UploadError("InvalidPartOrder", "The list of parts was not in ascending order.")
        for position, (number, etag) in enumerate(parts):
            held = upload.parts.get(number)
            if held is None or held[0] != etag.strip().strip('"'):
                raise UploadError("InvalidPart", f"Part {number} was not uploaded, or its ETag does not match.")
            if position < len(parts) - 1 and held[1] < upload.min_part:
                raise UploadError("EntityTooSmall", f"Part {number} is smaller than {upload.min_part} bytes and not the last.")
        digest = hashlib.md5()
        destination.parent.mkdir(parents=True, exist_ok=True)
        size = 0
        with open(destination, "wb") as out:
            for number in numbers:
                with open(upload.directory / str(number), "rb") as part:
                    while chunk := part.read(1 << 20):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
        upload.completed = True
        shutil.rmtree(upload.directory, ignore_errors=True)
        self.world.stats.uploads_completed += 1
        return size, digest.hexdigest()

    def abort(self, upload: Upload) -> None:
        upload.aborted = True
        shutil.rmtree(upload.directory, ignore_errors=True)


class _Dropped(Exception):
    pass


class DroppedConnection(Response):
    """The connection dropped in the middle of a part: an answer begun and never finished, after
    which the server closes the connection (the client sees a cut, as from a reset)."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        raise ConnectionAbortedError("dropped in the middle of a part, as the knob asked")


def _take_fault(world: World, number: int) -> dict | None:
    for fault in world.knobs.part_faults:
        if fault.get("part", number) == number and fault.get("count", 1) > 0:
            fault["count"] = fault.get("count", 1) - 1
            world.stats.injected_failures += 1
            return fault
    return None


async def _drain(request: Request) -> None:
    async for _ in request.stream():
        pass


async def store_part(request: Request) -> Response:
    """`PUT /store/uploads/{upload_id}/{number}`: a presigned part URL (Seven Bridges, BugSeq)."""
    world: World = request.app.state.world
    store: PartStore = world.parts
    upload_id, number = request.path_params["upload_id"], int(request.path_params["number"])
    refused = world.verify(f"upload:{upload_id}:{number}", request.query_params.get("X-Expires", ""),
                           request.query_params.get("X-Signature", ""))
    if refused:
        await _drain(request)
        return _s3_error(403, "AccessDenied", refused)
    if "content-length" not in request.headers:  # S3 takes no chunked PUT to a presigned URL
        await _drain(request)
        return _s3_error(411, "MissingContentLength", "You must provide the Content-Length HTTP header.")
    upload = store.get(upload_id)
    if upload is None:
        await _drain(request)
        return _s3_error(404, "NoSuchUpload", "The specified upload does not exist.")
    return await store.receive(request, upload, number)
