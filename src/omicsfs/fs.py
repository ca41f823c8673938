"""The FUSE file system: inodes over platform entries, listings cached for the metadata TTL.

Nothing here knows a platform: it sees `Entry` values and calls the `Platform` interface. The
mount is read-only for now; the inode table keys nodes by (platform, key, version) so that a file
whose content changed gets a new inode, and thereby a fresh page cache.

A listing holds entries, not nodes: a node is made when the kernel learns of it (`lookup`,
`readdir`) and dropped when the kernel forgets it, so the daemon holds what the kernel's own
caches hold, however large the tree a `find` walked.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import math
import os
import stat
import time
from dataclasses import dataclass

import pyfuse3
import trio

from omicsfs.blockcache import BLOCK_SIZE, BlockCache, ObjectRef
from omicsfs.errors import PlatformError
from omicsfs.naming import unique_names
from omicsfs.platform import Entry, Platform
from omicsfs.reader import FileReader

log = logging.getLogger(__name__)

#: Hidden files in every entity directory: the platform's answer for it, and its id.
META_FILES = (".json", ".id")
XATTR_PREFIX = "user.omicsfs."


@dataclass(eq=False)
class Node:
    inode: int
    entry: Entry
    platform: Platform | None  # None for the mount's root
    path: str  # relative to the mount point, for log lines
    identity: tuple = ()
    #: A directory's listing: name → entry, as of `listed_at`.
    children: dict[str, Entry] | None = None
    listed_at: float = -math.inf
    obj: ObjectRef | None = None
    #: How many times the kernel was told of this inode and has not forgotten it.
    lookups: int = 0


@dataclass
class DirHandle:
    node: Node
    names: list[tuple[str, Entry]]


@dataclass
class FileHandle:
    node: Node
    reader: FileReader | None = None


def _meta_entries(entry: Entry) -> list[Entry]:
    """`.json` and `.id` of an entity directory, as content-backed files."""
    key = entry.key
    metas = []
    if entry.info is not None:
        content = (json.dumps(entry.info, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
        metas.append(Entry(".json", False, ("meta", key, ".json"), size=len(content), mtime=entry.mtime, content=content))
    if entry.uid:
        content = f"{entry.uid}\n".encode()
        metas.append(Entry(".id", False, ("meta", key, ".id"), size=len(content), mtime=entry.mtime, content=content))
    for meta in metas:
        meta.version = str(hash(meta.content))
    return metas


@dataclass
class Settings:
    metadata_ttl: float = 60.0
    max_window: int = 64 * 1024 * 1024


class Filesystem(pyfuse3.Operations):
    def __init__(self, platforms: dict[str, Platform], cache: BlockCache, settings: Settings | None = None):
        super().__init__()
        self.platforms = platforms
        self.cache = cache
        self.settings = settings or Settings()
        self.uid, self.gid = os.getuid(), os.getgid()
        #: Directories the platform gives no date (the root, each platform's top) show the mount's start, not 1970.
        self.started = time.time()
        root = Entry("", True, "root")
        self.nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: Node(pyfuse3.ROOT_INODE, root, None, "")}
        self._inodes_by_identity: dict[tuple, int] = {}
        self._next_inode = itertools.count(pyfuse3.ROOT_INODE + 1)
        self._listing_locks: dict[int, trio.Lock] = {}
        self._handles: dict[int, DirHandle | FileHandle] = {}
        self._next_handle = itertools.count(1)
        self._usage: tuple[float, tuple[int, int]] | None = None

    # -- the inode table ---------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        try:
            return self.nodes[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _platform_of(self, parent: Node, name: str) -> Platform:
        return parent.platform or self.platforms[name]  # the root's entries are the platforms

    def _child(self, parent: Node, name: str, entry: Entry) -> Node:
        """The node of a directory's entry, made when the kernel is first told of it."""
        platform = self._platform_of(parent, name)
        identity = (platform.name, entry.key, entry.version)
        inode = self._inodes_by_identity.get(identity)
        if inode is not None:
            node = self.nodes[inode]
            node.entry = entry
            return node
        inode = next(self._next_inode)
        path = f"{parent.path}/{name}" if parent.path else name
        node = Node(inode, entry, platform, path, identity)
        if not entry.is_dir and entry.content is None:
            node.obj = ObjectRef.for_file(platform.name, entry.uid or repr(entry.key), entry.version, entry.size)
        self._inodes_by_identity[identity] = inode
        self.nodes[inode] = node
        return node

    def _told(self, node: Node) -> pyfuse3.EntryAttributes:
        """The attributes of a node the kernel is being told of (and will forget in time)."""
        node.lookups += 1
        return self.attributes(node)

    async def listing(self, node: Node) -> dict[str, Entry]:
        """Name → entry for a directory, listed again once older than the metadata TTL."""
        if self._fresh(node):
            return node.children  # type: ignore[return-value]
        lock = self._listing_locks.setdefault(node.inode, trio.Lock())
        async with lock:  # concurrent lookups in one directory cause one listing
            if self._fresh(node):
                return node.children  # type: ignore[return-value]
            entry, platform = node.entry, node.platform
            if platform is None:  # the mount's root: one directory per configured platform
                children = {name: each.root() for name, each in self.platforms.items()}
            else:
                if entry.children is not None and node.children is None:
                    entries = entry.children  # learned together with the directory itself
                else:
                    try:
                        entries = await platform.list_dir(entry)
                    except PlatformError as exc:
                        log.error("%s: listing failed: %s", node.path, exc)
                        raise pyfuse3.FUSEError(exc.errno) from None
                named = unique_names(entries, lambda e: e.name, lambda e: e.uid, reserved=META_FILES)
                named += [(meta.name, meta) for meta in _meta_entries(entry)]
                children = dict(named)
            for name, child in children.items():  # nodes the kernel knows see the new answer
                inode = self._inodes_by_identity.get((self._platform_of(node, name).name, child.key, child.version))
                if inode is not None:
                    self.nodes[inode].entry = child
            node.children = children
            node.listed_at = time.monotonic()
            return children

    def _fresh(self, node: Node) -> bool:
        if node.children is None:
            return False
        if node.platform is None:
            return True
        return time.monotonic() - node.listed_at < self.settings.metadata_ttl

    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        entry = node.entry
        attrs.st_ino = node.inode
        attrs.generation = 0
        # The kernel may trust names and attributes as long as our own listing stays fresh.
        attrs.entry_timeout = attrs.attr_timeout = self.settings.metadata_ttl
        if entry.is_dir:
            attrs.st_mode = stat.S_IFDIR | 0o555
            attrs.st_nlink = 2
            attrs.st_size = 0
        else:
            attrs.st_mode = stat.S_IFREG | 0o444
            attrs.st_nlink = 1
            attrs.st_size = entry.size
        attrs.st_uid, attrs.st_gid = self.uid, self.gid
        attrs.st_blksize = BLOCK_SIZE
        attrs.st_blocks = -(-attrs.st_size // 512)
        mtime_ns = int((entry.mtime or (self.started if entry.is_dir else 0.0)) * 1e9)
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = mtime_ns
        return attrs

    # -- FUSE operations -------------------------------------------------------------------

    async def lookup(self, parent_inode, name, ctx=None):
        parent = self._node(parent_inode)
        if not parent.entry.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        text = os.fsdecode(name)
        if text == ".":
            return self.attributes(parent)
        children = await self.listing(parent)
        entry = children.get(text)
        if entry is None:
            # A negative entry: the kernel may remember the name is absent for as long as our
            # listing says so, sparing tools that probe for optional files (.csi, .crai) a call each.
            absent = pyfuse3.EntryAttributes()
            absent.st_ino = 0
            absent.entry_timeout = self.settings.metadata_ttl
            return absent
        return self._told(self._child(parent, text, entry))

    async def getattr(self, inode, ctx=None):
        return self.attributes(self._node(inode))

    async def opendir(self, inode, ctx):
        node = self._node(inode)
        if not node.entry.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        children = await self.listing(node)
        handle = next(self._next_handle)
        # A snapshot, so that a listing refreshed between two readdir calls skips or repeats nothing.
        self._handles[handle] = DirHandle(node, sorted(children.items(), key=lambda item: item[0]))
        return handle

    async def readdir(self, fh, start_id, token):
        handle = self._handles[fh]
        assert isinstance(handle, DirHandle)
        for position in range(start_id, len(handle.names)):
            name, entry = handle.names[position]
            node = self._child(handle.node, name, entry)
            # readdirplus: the attributes go with the names, so `ls -l` needs no lookup per entry;
            # each name the kernel takes counts as a lookup it will forget.
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self.attributes(node), position + 1):
                if not node.lookups:
                    self._drop(node)  # not taken: the next readdir call starts here again
                return
            node.lookups += 1

    async def releasedir(self, fh):
        self._handles.pop(fh, None)

    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        if node.entry.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        handle = FileHandle(node)
        if node.entry.content is None:
            platform, entry, what = node.platform, node.entry, node.path
            assert platform is not None and node.obj is not None

            def source(start: int, end: int):
                return platform.read(entry, start, end, what=what)

            handle.reader = FileReader(self.cache, node.obj, source, self.settings.max_window)
        fh = next(self._next_handle)
        self._handles[fh] = handle
        # Files are immutable at one version (a new version is a new inode): keep the page cache.
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def read(self, fh, off, size):
        handle = self._handles[fh]
        assert isinstance(handle, FileHandle)
        if handle.reader is None:
            return handle.node.entry.content[off : off + size]
        try:
            return await handle.reader.read(off, size)
        except PlatformError as exc:
            log.error("%s: read of %d bytes at %d failed: %s", handle.node.path, size, off, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception:
            log.exception("%s: read of %d bytes at %d failed", handle.node.path, size, off)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def release(self, fh):
        self._handles.pop(fh, None)

    async def getxattr(self, inode, name, ctx):
        node = self._node(inode)
        key = os.fsdecode(name)
        if key.startswith(XATTR_PREFIX):
            value = node.entry.xattrs.get(key[len(XATTR_PREFIX) :])
            if value is not None:
                return value.encode()
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def listxattr(self, inode, ctx):
        node = self._node(inode)
        return [f"{XATTR_PREFIX}{key}".encode() for key in node.entry.xattrs]

    async def statfs(self, ctx):
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = BLOCK_SIZE
        total, used = await self._space_usage()
        data.f_blocks = total // BLOCK_SIZE
        data.f_bfree = data.f_bavail = max(0, total - used) // BLOCK_SIZE
        data.f_files = len(self.nodes)  # the inodes the daemon holds now
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    async def _space_usage(self) -> tuple[int, int]:
        """The platforms' quota and usage, summed; asked often (`df`, some tools before every
        write), so cached like listings."""
        if self._usage is not None and time.monotonic() - self._usage[0] < self.settings.metadata_ttl:
            return self._usage[1]
        total = used = 0
        for platform in self.platforms.values():
            try:
                usage = await platform.space_usage()
            except PlatformError as exc:
                log.warning("%s: storage usage unavailable: %s", platform.name, exc)
                usage = None
            if usage is not None:
                total, used = total + usage.total, used + usage.used
        self._usage = (time.monotonic(), (total, used))
        return total, used

    async def forget(self, inode_list):
        for inode, count in inode_list:
            node = self.nodes.get(inode)
            if node is None or inode == pyfuse3.ROOT_INODE:
                continue
            node.lookups -= count
            if node.lookups <= 0:
                self._drop(node)

    def _drop(self, node: Node) -> None:
        """Forget a node and its listing; open files keep their node through their handle."""
        self.nodes.pop(node.inode, None)
        if self._inodes_by_identity.get(node.identity) == node.inode:
            del self._inodes_by_identity[node.identity]
        self._listing_locks.pop(node.inode, None)
