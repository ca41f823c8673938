"""The control socket: how `omicsfs` commands reach a running mount's daemon.

A unix socket in a directory only the mount's owner may enter (0700, under `$XDG_RUNTIME_DIR`, else
the system's temporary directory), so only the owner and root can ask anything. A command finds it
from the mount point alone: its path is the mount root's `user.omicsfs.control` attribute. One JSON
request per connection (`{"op": ..., ...}` and a newline), one JSON answer: the op's result, or
`{"error": "...", "errno": N}`.

Why a socket and not files inside the mount: an answer can take time (an upload, a refresh of a
large tree) without holding a FUSE request, and a file in the mount would be readable by every user
of an `allow_other` mount.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from omicsfs.errors import OmicsfsError, PlatformError

log = logging.getLogger(__name__)

CONTROL_XATTR = "user.omicsfs.control"
MAX_REQUEST = 64 * 1024

Handler = Callable[[dict], Awaitable[dict]]


class ControlServer:
    """Serves the ops in `handlers` on a fresh socket until cancelled; removes it on the way out."""

    def __init__(self, handlers: dict[str, Handler]):
        self.handlers = handlers
        base = os.environ.get("XDG_RUNTIME_DIR") or None
        self.directory = Path(tempfile.mkdtemp(prefix="omicsfs-", dir=base if base and os.path.isdir(base) else None))
        self.path = str(self.directory / "control.sock")

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await listener.bind(self.path)
            os.chmod(self.path, 0o600)
            listener.listen(16)
            task_status.started(self.path)
            await trio.serve_listeners(self._answer, [trio.SocketListener(listener)])
        finally:
            listener.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    async def _answer(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                request = await _read_message(stream)
                handler = self.handlers.get(str(request.get("op")))
                if handler is None:
                    answer = {"error": f"unknown request {request.get('op')!r}", "errno": errno.EINVAL}
                else:
                    answer = await handler(request)
            except PlatformError as exc:
                answer = {"error": str(exc), "errno": exc.errno}
            except (ValueError, OmicsfsError) as exc:
                answer = {"error": str(exc), "errno": errno.EINVAL}
            except Exception as exc:  # a bug must not take the daemon down
                log.exception("control: request failed")
                answer = {"error": f"{type(exc).__name__}: {exc}", "errno": errno.EIO}
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(json.dumps(answer).encode() + b"\n")


async def _read_message(stream: trio.SocketStream) -> dict:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(MAX_REQUEST)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError("request too large")
    request = json.loads(data or b"{}")
    if not isinstance(request, dict):
        raise ValueError("a request is a JSON object")
    return request


def find_mount(path: Path) -> Path:
    """The omicsfs mount point that holds `path` (itself, or the nearest mounted parent)."""
    from omicsfs.mount import mount_points

    points = set(mount_points())
    candidate = Path(os.path.abspath(path))
    for directory in (candidate, *candidate.parents):
        if str(directory) in points:
            try:
                os.getxattr(directory, CONTROL_XATTR)
            except OSError:
                continue
            return directory
    raise OmicsfsError(f"{path} is not inside an omicsfs mount")


def request(mountpoint: Path, op: str, timeout: float | None = None, **arguments) -> dict:
    """Ask the daemon of `mountpoint`; its answer. Raises `OmicsfsError` with its error."""
    try:
        socket_path = os.getxattr(mountpoint, CONTROL_XATTR).decode()
    except OSError as exc:
        raise OmicsfsError(f"{mountpoint}: no omicsfs daemon answers there ({exc.strerror})") from None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        try:
            client.connect(socket_path)
            client.sendall(json.dumps({"op": op, **arguments}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = client.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            raise OmicsfsError(f"{mountpoint}: cannot reach its daemon at {socket_path} ({exc.strerror or exc})") from None
    answer = json.loads(data or b"{}")
    if "error" in answer:
        raise OmicsfsError(answer["error"])
    return answer
