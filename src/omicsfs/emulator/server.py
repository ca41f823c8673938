"""Running the emulator: `omicsfs emulator`, and in a thread or subprocess for demos and tests."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import uvicorn

from omicsfs.emulator import DEFAULT_TOKEN, BodyCut, World, build_app, default_data_dir

log = logging.getLogger(__name__)


class _QuietCuts(logging.Filter):
    """Drops uvicorn's report of a body the emulator cut on purpose (`knobs.cuts`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        return not isinstance(error, BodyCut)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def serve(port: int, data_dir: Path | None = None, token: str = DEFAULT_TOKEN, large_file_size: int = 1 << 30,
          host: str = "127.0.0.1") -> None:
    """Generate (or reuse) the sample data, then serve until interrupted."""
    world = World(data_dir or default_data_dir(), token, large_file_size)
    app = build_app(world)
    print(f"omicsfs emulator listening on http://{host}:{port} (token: {token}); data in {world.data_dir}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    logging.getLogger("uvicorn.error").addFilter(_QuietCuts())  # after the Config set up logging
    try:
        server.run()
    finally:
        world.close()


class EmulatorProcess:
    """The emulator in a subprocess, with the control API at hand: for the demo, tests and bench/."""

    def __init__(self, data_dir: Path | None = None, token: str = DEFAULT_TOKEN, large_file_size: str = "1G",
                 port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        command = [sys.executable, "-m", "omicsfs", "emulator", "--port", str(self.port), "--token", token,
                   "--large-file-size", str(large_file_size), "--data", str(self.data_dir)]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 600) -> EmulatorProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the emulator exited with status {self.process.returncode}")
            try:
                httpx.get(f"{self.url}/_emulator/knobs", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.2)
        raise TimeoutError(f"the emulator did not answer at {self.url} within {timeout:.0f} s")

    def knobs(self, **changes) -> dict:
        return httpx.post(f"{self.url}/_emulator/knobs", json=changes, timeout=10).raise_for_status().json()

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/_emulator/stats", timeout=10).raise_for_status().json()

    def reset_stats(self) -> None:
        httpx.post(f"{self.url}/_emulator/stats/reset", timeout=10).raise_for_status()

    def reset(self) -> None:
        """Default knobs, zeroed stats, and the data as generated (what tests changed, undone)."""
        httpx.post(f"{self.url}/_emulator/reset", timeout=10).raise_for_status()

    def control(self, method: str, path: str, body: dict | list | None = None) -> dict | list:
        """A call to a platform's control routes, e.g. `control("POST", "basespace/files", {...})`."""
        return httpx.request(method, f"{self.url}/_emulator/{path}", json=body, timeout=10).raise_for_status().json()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
