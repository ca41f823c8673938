"""Running the emulator: `omicsfs emulator`, and in a thread or subprocess for demos and tests."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import uvicorn

from omicsfs.emulator import DEFAULT_TOKEN, World, build_app, default_data_dir

log = logging.getLogger(__name__)


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
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
