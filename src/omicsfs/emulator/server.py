"""Running the emulator: `omicsfs emulator`, and in a thread or subprocess for demos and tests."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import uvicorn

from omicsfs.emulator import DEFAULT_TOKEN, World, build_app, default_data_dir

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def serve(port: int, data_dir: Path | None = None, token: str = DEFAULT_TOKEN, large_file_size: int = 1 << 30,
          host: str = "127.0.0.1", deep_bam_size: int = 0, wide_directory_files: int = 0) -> None:
    """Generate (or reuse) the sample data, then serve until interrupted."""
    world = World(data_dir or default_data_dir(), token, large_file_size, deep_bam_size, wide_directory_files)
    app = build_app(world)
    print(f"omicsfs emulator listening on http://{host}:{port} (token: {token}); data in {world.data_dir}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


class EmulatorProcess:
    """The emulator in a subprocess, with the control API at hand: for the demo, tests and bench/."""

    def __init__(self, data_dir: Path | None = None, token: str = DEFAULT_TOKEN, large_file_size: str = "1G",
                 port: int | None = None, deep_bam_size: str | int = 0, wide_directory_files: int = 0):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        command = [sys.executable, "-m", "omicsfs", "emulator", "--port", str(self.port), "--token", token,
                   "--large-file-size", str(large_file_size), "--data", str(self.data_dir),
                   "--deep-bam-size", str(deep_bam_size), "--wide-directory", str(wide_directory_files)]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, preexec_fn=_die_with(os.getpid()))

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

    def objects(self) -> dict[str, str]:
        """Every object of the store: id -> file."""
        return httpx.get(f"{self.url}/_emulator/objects", timeout=30).raise_for_status().json()

    def reset_stats(self) -> None:
        httpx.post(f"{self.url}/_emulator/stats/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _die_with(parent: int):
    """A `preexec_fn` that makes the child end with its parent however the parent ends (a kill -9
    included), so that no emulator is left holding its port: Linux's PR_SET_PDEATHSIG."""

    def arrange() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above: nobody would tell us
            os._exit(1)

    return arrange
