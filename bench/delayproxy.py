#!/usr/bin/env python3
"""A TCP proxy that puts servers on loopback some milliseconds away, for the bench.

    python bench/delayproxy.py [--rtt-ms 20] [--window 8M] HOST:PORT [HOST:PORT ...]

Each upstream `HOST:PORT` gets a listening port of its own on 127.0.0.1; once they all listen, the
proxy prints `ready PORT [PORT ...]` (in the order of the upstreams) and serves until killed.

The model is a network path with a round-trip time of `--rtt-ms` and no bandwidth limit:
- every chunk read from one side is written to the other `rtt / 2` after it arrived, in order,
  and without holding back the chunks behind it (a latency, not a throughput cap);
- a new connection's first bytes wait one more round trip, the TCP handshake a real network makes
  a client wait for before it can send its request; so a request on a new connection costs two
  round trips and one on a reused connection one, as over a real network;
- at most `--window` bytes per connection and direction are held (read, not yet written), as a
  TCP receive window holds them: memory stays bounded, and one connection carries at most
  `window` per `rtt / 2` (8 MiB per 10 ms is 840 MB/s: above what a client here reads).

Bytes a client never reads (a response it abandons by closing the connection) are still pulled
from the server up to that window, as over a real network: the server counts them as sent.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import re
import select
import subprocess
import sys
from pathlib import Path

DEFAULT_RTT_MS = 20.0
DEFAULT_WINDOW = 8 << 20


class _Half(asyncio.Protocol):
    """One side of a proxied connection: what it receives is written to its peer one way later.

    Protocols rather than streams: the bytes a transport hands over are queued and written as they
    came, one timer per batch of due chunks, so that the proxy costs little CPU next to the readers
    it is measured with on two cores.
    """

    def __init__(self, one_way: float, window: int, not_before: float = 0.0, upstream: tuple[str, int] | None = None):
        self.one_way, self.window, self.not_before, self.upstream = one_way, window, not_before, upstream
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.held = 0
        self.timer: asyncio.TimerHandle | None = None
        self.peer_full = False  # the peer's transport has asked for a pause in writing to it
        self.eof_passed = False  # this side's end of stream has been passed on to the peer

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.upstream:  # a client's side: open the server's now
            self.loop.create_task(self._connect_upstream())

    async def _connect_upstream(self) -> None:
        server = _Half(self.one_way, self.window)
        try:
            await self.loop.create_connection(lambda: server, *self.upstream)
        except OSError:
            self.transport.abort()
            return
        self.peer, server.peer = server, self
        for half in (self, server):  # what either side sent meanwhile
            half._flush()

    # -- what this side receives, on its way to the peer ----------------------------------------

    def data_received(self, data: bytes) -> None:
        self._queue(data)
        self.held += len(data)
        if self.held >= self.window:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._queue(None)
        return True  # half-closed: the peer may still answer

    def connection_lost(self, exc) -> None:
        if self.timer:
            self.timer.cancel()
        peer = self.peer.transport if self.peer else None
        if peer and not peer.is_closing():
            peer.abort() if exc else peer.close()  # a reset ends the whole connection, as a real one

    def _queue(self, data: bytes | None) -> None:
        self.queue.append((max(self.loop.time(), self.not_before) + self.one_way, data))
        if self.timer is None and self.peer:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _flush(self) -> None:
        self.timer = None
        peer = self.peer.transport
        if peer.is_closing():
            return
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now and not self.peer_full:
            _, data = self.queue.popleft()
            if data is not None:
                peer.write(data)
                self.held -= len(data)
                continue
            self.eof_passed = True
            if self.peer.eof_passed:  # both ways ended: the connection is over
                peer.close()
                self.transport.close()
                return
            if peer.can_write_eof():
                peer.write_eof()
        if self.held < self.window:
            self.transport.resume_reading()
        if self.queue and not self.peer_full:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    # -- flow control: our transport is the peer's way out --------------------------------------

    def pause_writing(self) -> None:
        self.peer.peer_full = True

    def resume_writing(self) -> None:
        self.peer.peer_full = False
        if self.peer.timer is None and self.peer.queue:
            self.peer._flush()


async def serve(upstreams: list[tuple[str, int]], rtt: float, window: int) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for upstream in upstreams:
        def accepted(upstream=upstream) -> _Half:
            # A new connection's first bytes wait one more round trip: the handshake a real network makes first.
            return _Half(rtt / 2, window, not_before=loop.time() + rtt, upstream=upstream)

        servers.append(await loop.create_server(accepted, "127.0.0.1", 0))
    ports = [server.sockets[0].getsockname()[1] for server in servers]
    print("ready", *ports, flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG]?)", text.strip().upper().removesuffix("IB").removesuffix("B"))
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text}")
    return int(match.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[match.group(2)]


class DelayProxy:
    """The proxy in a subprocess of its own session (a Ctrl-C in the terminal does not stop it
    under a mount mid-read: its owner stops it, last); `ports[i]` reaches `upstreams[i]`."""

    def __init__(self, upstreams: list[str], rtt_ms: float = DEFAULT_RTT_MS, window: int = DEFAULT_WINDOW,
                 log: Path | None = None):
        self.rtt_ms = rtt_ms
        output = open(log, "wb") if log else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--rtt-ms", str(rtt_ms), "--window", str(window), *upstreams],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=output, start_new_session=True,
            )
        finally:
            if log:
                output.close()
        ready, _, _ = select.select([self.process.stdout], [], [], 30)
        line = self.process.stdout.readline().decode() if ready else ""
        if not line.startswith("ready "):
            self.stop()
            raise RuntimeError(f"the delaying proxy did not start (it said {line.strip()!r})")
        self.ports = [int(port) for port in line.split()[1:]]

    def url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.ports[index]}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(OSError):
            self.process.stdout.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("upstreams", nargs="+", type=parse_address, metavar="HOST:PORT")
    parser.add_argument("--rtt-ms", type=float, default=DEFAULT_RTT_MS, help="round-trip time added (default 20)")
    parser.add_argument("--window", type=parse_size, default=DEFAULT_WINDOW,
                        help="bytes held per connection and direction at most (default 8M)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.upstreams, args.rtt_ms / 1000, args.window))
    return 0


if __name__ == "__main__":
    sys.exit(main())
