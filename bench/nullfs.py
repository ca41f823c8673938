#!/usr/bin/env python3
"""A do-nothing pyfuse3 file system: the FUSE ceiling that bench_read.py measures omicsfs against.

It holds one read-only file, `zeros`, of `--size` bytes (1 GiB by default); a read returns that
many zero bytes and does nothing else. It is mounted the way omicsfs mounts (pyfuse3 + trio, the
same mount options, the file opened with keep_cache, the FUSE device's read_ahead_kb set as
omicsfs sets it, from a thread once the mount is live), so reading `zeros` measures what pyfuse3 and the
kernel cost on this machine with no fetching, caching or bookkeeping at all.

    python bench/nullfs.py MOUNTPOINT [--size 1G]

It prints `ready` on stdout once mounted and tuned, and serves until unmounted
(`fusermount3 -u MOUNTPOINT`) or sent SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import stat
import sys
from pathlib import Path

import pyfuse3
import trio

from omicsfs.blockcache import BLOCK_SIZE
from omicsfs.mount import tune_device

FILE_NAME = b"zeros"
FILE_INODE = pyfuse3.ROOT_INODE + 1
TIMEOUT = 3600.0


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    suffix = text[-1:] if text[-1:] in units else ""
    return int(float(text[: len(text) - len(suffix)]) * units[suffix])


class NullFS(pyfuse3.Operations):
    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.uid, self.gid = os.getuid(), os.getgid()

    def _attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        attrs.entry_timeout = attrs.attr_timeout = TIMEOUT
        if inode == pyfuse3.ROOT_INODE:
            attrs.st_mode, attrs.st_nlink, attrs.st_size = stat.S_IFDIR | 0o555, 2, 0
        else:
            attrs.st_mode, attrs.st_nlink, attrs.st_size = stat.S_IFREG | 0o444, 1, self.size
        attrs.st_uid, attrs.st_gid = self.uid, self.gid
        attrs.st_blksize = BLOCK_SIZE  # as omicsfs reports
        attrs.st_blocks = -(-attrs.st_size // 512)
        return attrs

    async def getattr(self, inode, ctx=None):
        if inode not in (pyfuse3.ROOT_INODE, FILE_INODE):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attributes(inode)

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode == pyfuse3.ROOT_INODE and name == FILE_NAME:
            return self._attributes(FILE_INODE)
        if name == b".":
            return self._attributes(parent_inode)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def opendir(self, inode, ctx):
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh, start_id, token):
        if start_id == 0:
            pyfuse3.readdir_reply(token, FILE_NAME, self._attributes(FILE_INODE), 1)

    async def open(self, inode, flags, ctx):
        if inode != FILE_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh, off, size):
        return bytes(max(0, min(size, self.size - off)))


async def announce(mountpoint: Path) -> None:
    # In a thread: stat() on our own mount point needs the FUSE loop running to be answered.
    await trio.to_thread.run_sync(tune_device, mountpoint)
    print("ready", flush=True)


async def terminate_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            pyfuse3.terminate()
            return


async def serve(mountpoint: Path, size: int) -> None:
    options = ["fsname=nullfs", "subtype=nullfs", "ro", "default_permissions", "noatime"]
    pyfuse3.init(NullFS(size), str(mountpoint), options)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(announce, mountpoint)
            nursery.start_soon(terminate_on_signal)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--size", default="1G", help="size of the file `zeros` (default 1G)")
    args = parser.parse_args()
    trio.run(serve, args.mountpoint.absolute(), parse_size(args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
