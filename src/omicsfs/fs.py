"""The FUSE file system: inodes over platform entries, listings, reads, and writes that become uploads.

Nothing here knows a platform: it sees `Entry` values and calls the `Platform` interface. The
inode table keys nodes by (platform, key): a file whose content changed (another version) keeps
its inode, reads other cached blocks, and the kernel is told to drop its pages. Listings live in `listings.py`, apart from the nodes:
a node is made when the kernel learns of it (`lookup`, `readdir`) and dropped when the kernel
forgets it, so the daemon holds what the kernel's own caches hold, however large the tree a `find`
walked, and a forgotten node costs no listing while that is fresh.

Writes go to staging files and become uploads (`uploads.py`); what an entry `allows` decides what
may be written, deleted or renamed, and anything else is refused at once with EROFS (a place where
nothing can be written) or EPERM (a place that takes other writes), with a log line that says why.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pyfuse3
import trio

from omicsfs.blockcache import BLOCK_SIZE, BlockCache, IntoSource, ObjectRef, Source
from omicsfs.errors import PlatformError
from omicsfs.listings import Listings, Place
from omicsfs.naming import encodable, safe_name, unique_names
from omicsfs.platform import Entry, Platform, json_content
from omicsfs.reader import SEEK_WINDOW, FileReader
from omicsfs.uploads import Upload, Uploads

log = logging.getLogger(__name__)

#: Hidden files in every entity directory: the platform's answer for it, and its id.
META_FILES = (".json", ".id")
XATTR_PREFIX = "user.omicsfs."
#: What makes a directory a place that takes writes (else writes there are EROFS).
WRITABLE = frozenset({"create", "mkdir"})
#: How long the kernel may trust a file being written (its size changes): short.
STAGED_TTL = 1.0
#: After a refused or failed delete, deletes are refused this long: `rm -rf` cannot sweep an account.
DELETE_PAUSE = 5.0
#: Files that index the file of the same name (S1.bam.bai, S1.bai, x.vcf.gz.tbi...): a reader of
#: the one opens the other next, so both are made ready to read together.
INDEX_SUFFIXES = (".bai", ".csi", ".tbi", ".crai", ".fai", ".gzi")


def _object_of(platform: str, entry: Entry) -> ObjectRef:
    """The cached object of a file's content as `entry` describes it (its id, version and size)."""
    return ObjectRef.for_file(platform, entry.uid or repr(entry.key), entry.version, entry.size)


def _companions(name: str) -> list[str]:
    stem, dot, _ = name.rpartition(".")
    return [name + suffix for suffix in INDEX_SUFFIXES] + ([stem + ".bai", stem + ".crai"] if dot else [])


@dataclass(eq=False)
class Node:
    inode: int
    entry: Entry
    platform: Platform | None  # None for the mount's root
    path: str  # relative to the mount point, for log lines
    identity: tuple = ()
    #: The directory this node was found in: where a file that replaces this one is uploaded.
    parent: Entry | None = None
    parent_path: str = ""
    obj: ObjectRef | None = None
    #: How many times the kernel was told of this inode and has not forgotten it.
    lookups: int = 0
    #: The file is being written or uploaded: its bytes are in a staging file.
    upload: Upload | None = None

    @property
    def staged(self) -> bool:
        return self.upload is not None and self.upload.staged is not None


@dataclass
class DirHandle:
    node: Node
    names: list[tuple[str, Entry, Upload | None]]


@dataclass
class FileHandle:
    node: Node
    reader: FileReader | None = None
    #: A staged file's upload, written (`writing`) or read through this handle.
    upload: Upload | None = None
    writing: bool = False


def _meta_entries(entry: Entry) -> list[Entry]:
    """`.json` and `.id` of an entity directory, as content-backed files."""
    key = entry.key
    metas = []
    if entry.info is not None:
        content = json_content(entry.info)
        metas.append(Entry(".json", False, ("meta", key, ".json"), size=len(content), mtime=entry.mtime, content=content))
    if entry.uid:
        content = f"{entry.uid}\n".encode()
        metas.append(Entry(".id", False, ("meta", key, ".id"), size=len(content), mtime=entry.mtime, content=content))
    for meta in metas:
        meta.version = str(hash(meta.content))
    return metas


#: Operations whose first argument is a file or directory handle rather than an inode.
_HANDLE_OPERATIONS = frozenset({"read", "write", "readdir", "release", "releasedir", "flush", "fsync", "fsyncdir"})


def _guarded(name: str, operation):
    """`operation`, with whatever goes wrong in it turned into an errno for this call alone.

    pyfuse3 lets any exception but `FUSEError` escape its handler and end the main loop: one bad
    answer would unmount everything. Here a `PlatformError` becomes its errno and anything else
    EIO, each with one log line naming the path, the operation and the cause (the traceback at
    --debug), and the daemon serves on.
    """

    @functools.wraps(operation)
    async def guarded(self: Filesystem, *args):
        try:
            return await operation(self, *args)
        except pyfuse3.FUSEError:
            raise
        except PlatformError as exc:
            log.error("%s: %s failed: %s", self._describe(name, args), _operation(name, args), exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:  # the local disk: a full cache or staging directory, above all
            log.error("%s: %s failed: %s%s", self._describe(name, args), _operation(name, args), exc.strerror or exc,
                      f" ({exc.filename})" if exc.filename else "", exc_info=log.isEnabledFor(logging.DEBUG))
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception as exc:
            log.error("%s: %s failed: %s: %s", self._describe(name, args), _operation(name, args), type(exc).__name__, exc,
                      exc_info=log.isEnabledFor(logging.DEBUG))
            raise pyfuse3.FUSEError(errno.EIO) from None

    return guarded


def _operation(name: str, args: tuple) -> str:
    """An operation as a log line says it: a read with its size and offset, else its name."""
    if name == "read" and len(args) >= 3:
        return f"read of {args[2]} bytes at {args[1]}"
    return "listing" if name == "opendir" else name


def guard_operations(cls):
    """Wrap every FUSE operation `cls` defines with `_guarded`: one mechanism for all of them."""
    for name, value in list(vars(cls).items()):
        if name in _FUSE_OPERATIONS:
            setattr(cls, name, _guarded(name, value))
    return cls


_FUSE_OPERATIONS = frozenset(name for name, value in vars(pyfuse3.Operations).items() if callable(value) and not name.startswith("_"))


@dataclass
class Settings:
    metadata_ttl: float = 60.0
    max_window: int = 64 * 1024 * 1024


@guard_operations
class Filesystem(pyfuse3.Operations):
    def __init__(self, platforms: dict[str, Platform], cache: BlockCache, settings: Settings | None = None,
                 uploads: Uploads | None = None):
        super().__init__()
        self.platforms = platforms
        self.cache = cache
        self.settings = settings or Settings()
        self.listings = Listings(self.settings.metadata_ttl)
        self.uploads = uploads
        if uploads is not None:
            uploads.on_confirmed = self._confirmed
            uploads.adopt = self._adopt
        self.uid, self.gid = os.getuid(), os.getgid()
        #: The mount's root and the platforms' top directories show when the mount started.
        self.started = time.time()
        root = Entry("", True, "root", mtime=self.started)
        self.nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: Node(pyfuse3.ROOT_INODE, root, None, "")}
        self._inodes_by_identity: dict[tuple, int] = {}
        self._next_inode = itertools.count(pyfuse3.ROOT_INODE + 1)
        self._handles: dict[int, DirHandle | FileHandle] = {}
        self._next_handle = itertools.count(1)
        self._usage: tuple[float, tuple[int, int]] | None = None
        self._deletes_paused_until = 0.0
        #: Where `omicsfs` commands reach the running daemon (the root's `user.omicsfs.control`).
        self.control_path = ""

    # -- the inode table ---------------------------------------------------------------------

    def _describe(self, operation: str, args: tuple) -> str:
        """The path an operation is about, for its log lines."""
        node = None
        if args and operation in _HANDLE_OPERATIONS:
            handle = self._handles.get(args[0])
            node = handle.node if handle else None
        elif args and isinstance(args[0], int):
            node = self.nodes.get(args[0])
        path = (node.path or "/") if node else f"inode {args[0]}" if args else "/"
        if len(args) > 1 and isinstance(args[1], bytes):
            path = f"{path.rstrip('/')}/{os.fsdecode(args[1])}"
        return path

    def _node(self, inode: int) -> Node:
        try:
            return self.nodes[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _platform_of(self, parent: Node, name: str) -> Platform:
        return parent.platform or self.platforms[name]  # the root's entries are the platforms

    def _child(self, parent: Node, name: str, entry: Entry, upload: Upload | None = None) -> Node:
        """The node of a directory's entry, made when the kernel is first told of it."""
        platform = self._platform_of(parent, name)
        identity = (platform.name, entry.key)
        inode = self._inodes_by_identity.get(identity)
        if inode is not None:
            node = self.nodes[inode]
            self._update(node, entry)
            node.upload = upload or node.upload
            return node
        inode = next(self._next_inode)
        path = f"{parent.path}/{name}" if parent.path else name
        node = Node(inode, entry, platform, path, identity, parent.entry, parent.path, upload=upload)
        if not entry.is_dir and entry.content is None:
            node.obj = _object_of(platform.name, entry)
        self._inodes_by_identity[identity] = inode
        self.nodes[inode] = node
        return node

    def _update(self, node: Node, entry: Entry) -> None:
        """A node the kernel knows, as the platform describes it now. A file whose content changed
        (another version) keeps its inode: its cached blocks are another object, the kernel is
        told to drop the pages and attributes it holds, and descriptors opened before read the
        new bytes."""
        changed = entry.version != node.entry.version and not entry.is_dir and not node.staged
        node.entry = entry
        if changed:
            if entry.content is None:
                node.obj = _object_of(node.platform.name, entry)
            log.info("%s: changed on the platform; its cached pages are dropped", node.path)
            self.cache.nursery.start_soon(self._invalidate, node.inode)

    @staticmethod
    async def _invalidate(inode: int) -> None:
        # In a thread: the kernel may wait for requests on the inode that this loop must answer.
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, inode)
        except OSError as exc:  # forgotten meanwhile (ENOENT): nothing is cached
            log.debug("invalidating inode %d: %s", inode, exc)

    def _told(self, node: Node) -> pyfuse3.EntryAttributes:
        """The attributes of a node the kernel is being told of (and will forget in time)."""
        node.lookups += 1
        return self.attributes(node)

    # -- listings ------------------------------------------------------------------------------

    @staticmethod
    def _place(node: Node) -> Place:
        return node.platform.name, node.entry.key

    async def listing(self, node: Node) -> dict[str, Entry]:
        """Name → entry of a directory as its platform lists it (cached for the metadata TTL)."""
        platform, entry = node.platform, node.entry
        if platform is None:  # the mount's root: one directory per configured platform
            return {name: each.root() for name, each in self.platforms.items()}

        async def fetch() -> dict[str, Entry]:
            if entry.children is not None:
                entries = entry.children  # learned together with the directory itself
            else:
                started = time.monotonic()
                entries = await platform.list_dir(entry)
                log.debug("%s: listed %d entries in %.3f s", node.path, len(entries), time.monotonic() - started)
            named = unique_names(entries, lambda e: e.name, lambda e: e.uid, reserved=META_FILES)
            children = dict(named + [(meta.name, meta) for meta in _meta_entries(entry)])
            for child in children.values():  # nodes the kernel knows see the new answer
                inode = self._inodes_by_identity.get((platform.name, child.key))
                if inode is not None:
                    self._update(self.nodes[inode], child)
            return children

        return await self.listings.get(self._place(node), fetch)

    def _extras(self, node: Node) -> dict[str, Entry | Upload]:
        """What this mount adds to a directory's listing: entries it created, uploads it remembers,
        files being written (which hide a platform file of the same name they replace)."""
        if node.platform is None:
            return {}
        place = self._place(node)
        extras: dict[str, Entry | Upload] = {**self.listings.created(place)}
        if self.uploads is not None:
            extras.update(self.uploads.remembered_in(place))
            extras.update(self.uploads.staged_in(place))
        return extras

    async def _find(self, parent: Node, name: str) -> tuple[Entry | None, Upload | None]:
        """The entry named `name` in `parent` (and its upload, for a file being written)."""
        extra = self._extras(parent).get(name)
        if isinstance(extra, Upload):
            return extra.staged_entry(), extra
        if extra is not None:
            return extra, None
        return (await self.listing(parent)).get(name), None

    async def _children(self, node: Node) -> list[tuple[str, Entry, Upload | None]]:
        found = {name: (entry, None) for name, entry in (await self.listing(node)).items()}
        for name, extra in self._extras(node).items():
            found[name] = (extra.staged_entry(), extra) if isinstance(extra, Upload) else (extra, None)
        return [(name, entry, upload) for name, (entry, upload) in sorted(found.items())]

    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        entry = node.entry
        attrs.st_ino = node.inode
        attrs.generation = 0
        # The kernel may trust names and attributes as long as our own listing stays fresh.
        attrs.entry_timeout = attrs.attr_timeout = STAGED_TTL if node.staged else self.settings.metadata_ttl
        if entry.is_dir:
            attrs.st_mode = stat.S_IFDIR | (0o755 if entry.allows & WRITABLE else 0o555)
            attrs.st_nlink = 2
            attrs.st_size = 0
        else:
            writable = node.staged or entry.allows & {"replace", "delete", "rename"}
            attrs.st_mode = stat.S_IFREG | (0o644 if writable else 0o444)
            attrs.st_nlink = 1
            attrs.st_size = node.upload.staged.size if node.staged else entry.size
        attrs.st_uid, attrs.st_gid = self.uid, self.gid
        attrs.st_blksize = BLOCK_SIZE
        attrs.st_blocks = -(-attrs.st_size // 512)
        mtime = node.upload.record.mtime if node.staged else entry.mtime or (self.started if entry.is_dir else 0.0)
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = int(mtime * 1e9)
        return attrs

    # -- FUSE operations: reading ----------------------------------------------------------------

    async def lookup(self, parent_inode, name, ctx=None):
        parent = self._node(parent_inode)
        if not parent.entry.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        text = os.fsdecode(name)
        if text == ".":
            return self.attributes(parent)
        entry, upload = await self._find(parent, text)
        if entry is None:
            # A negative entry: the kernel may remember the name is absent for as long as our
            # listing says so, sparing tools that probe for optional files (.csi, .crai) a call each.
            absent = pyfuse3.EntryAttributes()
            absent.st_ino = 0
            absent.entry_timeout = self.settings.metadata_ttl
            return absent
        return self._told(self._child(parent, text, entry, upload))

    async def getattr(self, inode, ctx=None):
        return self.attributes(self._node(inode))

    async def opendir(self, inode, ctx):
        node = self._node(inode)
        if not node.entry.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        handle = next(self._next_handle)
        # A snapshot, so that a listing refreshed between two readdir calls skips or repeats nothing.
        self._handles[handle] = DirHandle(node, await self._children(node))
        return handle

    async def readdir(self, fh, start_id, token):
        handle = self._handles[fh]
        assert isinstance(handle, DirHandle)
        for position in range(start_id, len(handle.names)):
            name, entry, upload = handle.names[position]
            node = self._child(handle.node, name, entry, upload)
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
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        fh = next(self._next_handle)
        if writing:
            upload = node.upload if node.staged else await self._replace(node, truncate=bool(flags & os.O_TRUNC))
            if node.staged and flags & os.O_TRUNC and upload.staged.size:
                upload.staged.truncate(0)
                self.uploads.truncated(upload, 0)
            upload.writers += 1
            self._handles[fh] = FileHandle(node, upload=upload, writing=True)
            return pyfuse3.FileInfo(fh=fh)
        handle = FileHandle(node)
        if node.staged:
            handle.upload = node.upload
            node.upload.readers += 1
        elif node.entry.content is None:
            indexes = self._indexes(node)
            handle.reader = self._reader(node, indexed=bool(indexes))
            self.cache.nursery.start_soon(self._prepare, node, indexes)
        self._handles[fh] = handle
        # A version's bytes never change (a new version invalidates the inode): keep the page cache.
        return pyfuse3.FileInfo(fh=fh, keep_cache=not node.staged)

    async def read(self, fh, off, size):
        handle = self._handles[fh]
        assert isinstance(handle, FileHandle)
        if handle.upload is not None and handle.upload.staged is not None:
            return handle.upload.staged.read(off, size)
        node = handle.node
        if node.entry.content is not None:
            return node.entry.content[off : off + size]
        if handle.reader is None or handle.reader.obj != node.obj:
            # Opened before the file changed on the platform (or an upload was confirmed while
            # open): read what the platform holds now.
            if handle.reader is not None:
                handle.reader.close()
            handle.reader = self._reader(node)
        return await handle.reader.read(off, size)

    def _indexes(self, node: Node) -> dict[str, Entry]:
        """The index files beside a file (S1.bam.bai, x.vcf.gz.tbi) by their paths in the mount,
        as its directory's listing has them."""
        listing = self.listings.cached((node.platform.name, node.parent.key)) if node.parent is not None else None
        if listing is None:
            return {}
        names = [name for name in _companions(node.path.rsplit("/", 1)[-1]) if name in listing]
        return {f"{node.parent_path}/{name}": listing[name] for name in names
                if not listing[name].is_dir and listing[name].content is None}

    async def _prepare(self, node: Node, indexes: dict[str, Entry]) -> None:
        """At open, in the background: what a reader of an indexed file asks for after its first
        read, on its way beside it. htslib (samtools, tabix, IGV) opens a BAM, CRAM or bgzipped
        VCF, reads its header, checks its last bytes (BGZF's end-of-file marker) and reads its
        index (S1.bam.bai, x.vcf.gz.tbi): one after the other, three round trips and an API
        request for the index's URL; here one round trip. A file without an index beside it only
        has its download URL resolved."""
        last = node.obj.block_count() - 1
        tail = (last, last) if indexes and node.obj.size > SEEK_WINDOW else None
        head = (0, (SEEK_WINDOW - 1) // BLOCK_SIZE)
        platform = node.platform
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._prefetch, platform, node.path, node.entry, node.obj, tail)
            for path, entry in indexes.items():
                nursery.start_soon(self._prefetch, platform, path, entry, _object_of(platform.name, entry), head)

    async def _prefetch(self, platform: Platform, path: str, entry: Entry, obj: ObjectRef,
                        blocks: tuple[int, int] | None) -> None:
        """Resolve the download URL of `entry` (at `path` in the mount), then fetch its `blocks`
        (first, last) into the cache; nothing where the cache holds the whole file (a remount's
        cache: no API request)."""
        await self.cache.store.settled(obj)
        cached = self.cache.open(obj)
        try:
            if cached.held.find(0) < 0:
                return
            try:
                await platform.prepare_read(entry)
            except PlatformError as exc:  # the read itself will say what is wrong
                log.debug("%s: could not prepare a read: %s", path, exc)
                return
            if blocks is not None:  # a fetch that fails is asked again by the read that needs it
                self.cache.prefetch(cached, self._source(platform, entry, path), *blocks)
        finally:
            self.cache.close(cached)

    def _reader(self, node: Node, *, indexed: bool = False) -> FileReader:
        source = self._source(node.platform, node.entry, node.path)
        return FileReader(self.cache, node.obj, source, self.settings.max_window, indexed=indexed)

    @staticmethod
    def _source(platform: Platform, entry: Entry, what: str) -> Source:
        """Where the cache fetches a file's bytes from: a presigned URL, fetched in worker
        threads, or the platform's own `read`."""
        presigned = platform.presigned(entry)
        if presigned is not None:
            urls, key = presigned

            async def into(start: int, end: int, write, landed, working) -> None:
                await urls.read_range_into(key, start, end, write, landed, working, what=what)

            return IntoSource(into)

        def source(start: int, end: int):
            return platform.read(entry, start, end, what=what)

        return source

    async def release(self, fh):
        handle = self._handles.pop(fh, None)
        if isinstance(handle, FileHandle) and handle.reader is not None:
            handle.reader.close()
        if not isinstance(handle, FileHandle) or handle.upload is None:
            return
        upload = handle.upload
        if handle.writing:
            upload.writers -= 1
            if not upload.writers and upload.unconfirmed:
                self.uploads.schedule(upload)  # a close whose upload failed: kept, and tried again
        else:
            upload.readers -= 1
        self.uploads.release(upload)

    async def getxattr(self, inode, name, ctx):
        key = os.fsdecode(name)
        if not key.startswith(XATTR_PREFIX):
            # Not "no such attribute" but "not supported": `ls -l` asks every file for its ACL
            # (system.posix_acl_access) and SELinux label (security.selinux), and stops asking the
            # whole mount after the first ENOTSUP, where ENODATA costs a round trip per file.
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        value = self._xattrs(self._node(inode)).get(key[len(XATTR_PREFIX) :])
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return encodable(value).encode()

    async def listxattr(self, inode, ctx):
        return [f"{XATTR_PREFIX}{key}".encode() for key in self._xattrs(self._node(inode))]

    def _xattrs(self, node: Node) -> dict[str, str]:
        if node.inode == pyfuse3.ROOT_INODE:
            return {"control": self.control_path} if self.control_path else {}
        if node.staged:
            return node.upload.staged_entry().xattrs
        return node.entry.xattrs

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
        """Forget a node; open files keep their node through their handle."""
        self.nodes.pop(node.inode, None)
        if self._inodes_by_identity.get(node.identity) == node.inode:
            del self._inodes_by_identity[node.identity]

    # -- FUSE operations: writing ----------------------------------------------------------------

    def _refuse(self, directory: Node, path: str, what: str, why: str = "") -> NoReturn:
        """Refuse a write: EROFS where nothing can be written, EPERM where other writes are taken."""
        takes_writes = directory.platform is not None and bool(directory.entry.allows & WRITABLE)
        code = errno.EPERM if takes_writes else errno.EROFS
        reason = why or (f"{directory.platform.title} does not allow it here" if takes_writes else "this place is read-only")
        log.warning("%s: %s refused: %s", path or "/", what, reason)
        raise pyfuse3.FUSEError(code)

    def _new_name(self, directory: Node, name: bytes) -> str:
        """A name to create: shown as typed, or refused (EINVAL) where the mount would show it otherwise."""
        text = os.fsdecode(name)
        if safe_name(text) != text:
            log.warning("%s/%s: a name with control characters or invalid UTF-8 is shown otherwise; not created",
                        directory.path, encodable(text))
            raise pyfuse3.FUSEError(errno.EINVAL)
        return text

    def _path(self, directory: Node, name: str) -> str:
        return f"{directory.path}/{name}" if directory.path else name

    @staticmethod
    def _directory_of(node: Node) -> Node:
        """The directory a node was found in, as a node to word a refusal with (not in the table)."""
        return Node(0, node.parent or Entry("", True, ""), node.platform, node.parent_path)

    async def create(self, parent_inode, name, mode, flags, ctx):
        parent = self._node(parent_inode)
        text = self._new_name(parent, name)
        if "create" not in parent.entry.allows or self.uploads is None:
            self._refuse(parent, self._path(parent, text), "creating a file")
        if (await self._find(parent, text))[0] is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        upload = self.uploads.create(parent.platform, parent.entry, parent.path, text)
        upload.writers += 1
        node = self._child(parent, text, upload.staged_entry(), upload)
        fh = next(self._next_handle)
        self._handles[fh] = FileHandle(node, upload=upload, writing=True)
        return pyfuse3.FileInfo(fh=fh), self._told(node)

    async def _replace(self, node: Node, *, truncate: bool) -> Upload:
        """Open a platform file for writing: a new upload that replaces it where the platform allows."""
        if "replace" not in node.entry.allows or self.uploads is None or node.parent is None:
            directory = self._directory_of(node)
            self._refuse(directory, node.path, "writing over a file",
                         "" if directory.entry.allows.isdisjoint(WRITABLE) else f"{node.platform.title} cannot replace it")
        upload = self.uploads.create(node.platform, node.parent, node.parent_path, node.entry.name, replacing=node.entry)
        if not truncate:  # writes land on the file's present bytes (rsync --inplace): fetch them first
            reader = self._reader(node)
            try:
                position = 0
                while position < node.entry.size:
                    chunk = await reader.read(position, 1 << 20)
                    upload.staged.write(position, chunk)
                    position += len(chunk)
            finally:
                reader.close()
            self.uploads.written(upload, 0, position)
        node.upload = upload
        return upload

    async def write(self, fh, off, buf):
        handle = self._handles[fh]
        if not isinstance(handle, FileHandle) or not handle.writing:
            raise pyfuse3.FUSEError(errno.EBADF)
        upload = handle.upload
        try:
            written = upload.staged.write(off, buf)
        except OSError as exc:  # ENOSPC above all: the writer is told; nothing accepted is lost
            log.error("%s: staging a write of %d bytes at %d failed: %s", handle.node.path, len(buf), off, exc.strerror)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        self.uploads.written(upload, off, off + written)
        return written

    async def flush(self, fh):
        handle = self._handles.get(fh)
        if not isinstance(handle, FileHandle) or not handle.writing or handle.upload.writers != 1:
            return
        upload = handle.upload
        if upload.staged.size == 0 and upload.entry is None:
            # Nothing written yet and nothing on the platform: a shell's `cmd > F` (and dd's
            # `of=`) opens F, dups the descriptor and closes the original before a byte is
            # written; uploading here would send an empty file first. `release` sends it if
            # this was the last descriptor after all (`touch`, an empty `cp`).
            return
        await self._upload(handle, wait=None)

    async def fsync(self, fh, datasync):
        handle = self._handles.get(fh)
        if isinstance(handle, FileHandle) and handle.writing:
            handle.upload.staged.sync()
            await self._upload(handle, wait=True)

    async def _upload(self, handle: FileHandle, *, wait: bool | None) -> None:
        """Confirm a written file (`close` and `fsync`): EIO if its upload failed for good (kept)."""
        try:
            await self.uploads.close(handle.upload, wait=wait)
        except PlatformError as exc:
            log.error("%s: upload failed: %s; kept in the journal, tried again in the background", handle.node.path, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        if not node.staged:
            directory = self._directory_of(node)
            writable = "create" in directory.entry.allows or "create" in node.entry.allows
            if writable and not fields.update_size:
                # Times and modes where files are written (`cp -p`, `rsync -a` set them after the
                # copy): platforms keep their own dates and no modes, so the call succeeds and
                # changes nothing; `stat` shows the platform's date.
                log.debug("%s: times or mode not kept (the platform keeps its own)", node.path)
                return self.attributes(node)
            self._refuse(directory if not node.entry.is_dir or not writable else node, node.path, "changing attributes",
                         "" if not writable else "only a file being written can change size")
        upload = node.upload
        if fields.update_size:
            upload.staged.truncate(attr.st_size)
            self.uploads.truncated(upload, attr.st_size)
            if not upload.writers:
                await self.uploads.close(upload)
        if fields.update_mtime:
            # Kept while the file is written (cp -p, rsync -t ask); the platform sets its own time.
            upload.record.mtime = attr.st_mtime_ns / 1e9
        return self.attributes(node)

    async def mkdir(self, parent_inode, name, mode, ctx):
        parent = self._node(parent_inode)
        text = self._new_name(parent, name)
        if "mkdir" not in parent.entry.allows:
            self._refuse(parent, self._path(parent, text), "making a directory")
        if (await self._find(parent, text))[0] is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        entry = await parent.platform.make_directory(parent.entry, text)
        # Shown until a listing has it; one the platform knows only through its files' paths
        # (`children` given) is shown until then, however long.
        self.listings.add_created(self._place(parent), text, entry, local=entry.children is not None)
        log.info("%s: directory made", self._path(parent, text))
        return self._told(self._child(parent, text, entry))

    async def unlink(self, parent_inode, name, ctx):
        parent = self._node(parent_inode)
        text = os.fsdecode(name)
        entry, upload = await self._find(parent, text)
        if entry is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if entry.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if upload is not None:  # a file not yet confirmed: its upload is abandoned
            await self.uploads.cancel(upload)
            log.info("%s: removed before its upload was confirmed; the upload is abandoned", self._path(parent, text))
            return
        if text in META_FILES and isinstance(entry.key, tuple) and entry.key[:1] == ("meta",):
            # A view of its directory's entity, gone with it: `rm -rf` passes over it, unpaused.
            raise pyfuse3.FUSEError(errno.ENOENT)
        await self._delete(parent, text, entry)

    async def rmdir(self, parent_inode, name, ctx):
        parent = self._node(parent_inode)
        text = os.fsdecode(name)
        entry, _ = await self._find(parent, text)
        if entry is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if not entry.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        place = self._place(parent)
        if entry.children is not None and text in self.listings.created(place):  # made here, known only here
            child = Node(0, entry, parent.platform, self._path(parent, text))  # not in the table
            if [name for name, _, _ in await self._children(child) if name not in META_FILES]:
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            self.listings.remove_created(place, text)
            log.info("%s: directory removed (it existed only in the mount)", self._path(parent, text))
            return
        # The platform knows what empty means for its entities (and refuses, or EROFS/EPERM here).
        await self._delete(parent, text, entry)

    async def _delete(self, parent: Node, name: str, entry: Entry) -> None:
        path = self._path(parent, name)
        if "delete" not in entry.allows and parent.entry.allows.isdisjoint(WRITABLE):
            self._refuse(parent, path, "delete")  # a read-only place: EROFS, paused or not
        if time.monotonic() < self._deletes_paused_until:
            log.warning("%s: delete refused: deletes are paused for %.0f s after a refused delete", path, DELETE_PAUSE)
            raise pyfuse3.FUSEError(errno.EPERM)
        if "delete" not in entry.allows:
            self._deletes_paused_until = time.monotonic() + DELETE_PAUSE
            self._refuse(parent, path, "delete", "" if parent.entry.allows.isdisjoint(WRITABLE) else
                         f"{parent.platform.title} does not delete it; deletes are paused for {DELETE_PAUSE:.0f} s")
        try:
            await parent.platform.delete(entry)
        except PlatformError as exc:
            if exc.errno != errno.ENOTEMPTY:  # a directory not yet emptied is no refusal
                self._deletes_paused_until = time.monotonic() + DELETE_PAUSE
            raise
        self.listings.remove_created(self._place(parent), name)
        self.listings.invalidate(self._place(parent))
        log.info("%s: deleted", path)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        old_parent, new_parent = self._node(parent_inode_old), self._node(parent_inode_new)
        old_name, new_name = os.fsdecode(name_old), self._new_name(new_parent, name_new)
        path = self._path(old_parent, old_name)
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        entry, upload = await self._find(old_parent, old_name)
        if entry is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if old_parent.platform is None or new_parent.platform is not old_parent.platform:
            raise pyfuse3.FUSEError(errno.EXDEV)  # `mv` copies and deletes instead
        if (await self._find(new_parent, new_name))[0] is not None:
            log.warning("%s: rename over %s refused: remove it first", path, self._path(new_parent, new_name))
            raise pyfuse3.FUSEError(errno.EEXIST if flags & pyfuse3.RENAME_NOREPLACE else errno.EPERM)
        if upload is not None:
            if upload.record.handle is not None or not upload.unconfirmed:
                log.warning("%s: rename refused while its upload is under way; rename it once uploaded", path)
                raise pyfuse3.FUSEError(errno.EBUSY)
            if "create" not in new_parent.entry.allows:
                self._refuse(new_parent, self._path(new_parent, new_name), "moving a file being written here")
            self.uploads.move(upload, new_parent.entry, new_parent.path, new_name)
            return
        if "rename" not in entry.allows:
            self._refuse(old_parent, path, "rename")
        renamed = await old_parent.platform.rename(entry, new_parent.entry, new_name)
        for parent in (old_parent, new_parent):
            self.listings.remove_created(self._place(parent), old_name)
            self.listings.invalidate(self._place(parent))
        self.listings.add_created(self._place(new_parent), new_name, renamed)
        log.info("%s: renamed to %s", path, self._path(new_parent, new_name))

    async def link(self, inode, new_parent_inode, new_name, ctx):
        parent = self._node(new_parent_inode)
        self._refuse(parent, self._path(parent, os.fsdecode(new_name)), "a hard link", "platforms have no links")

    async def symlink(self, parent_inode, name, target, ctx):
        parent = self._node(parent_inode)
        self._refuse(parent, self._path(parent, os.fsdecode(name)), "a symbolic link", "platforms have no links")

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        parent = self._node(parent_inode)
        self._refuse(parent, self._path(parent, os.fsdecode(name)), "a special file", "platforms hold regular files only")

    async def setxattr(self, inode, name, value, ctx):
        self._refuse_xattr(self._node(inode), f"setting {os.fsdecode(name)}")

    async def removexattr(self, inode, name, ctx):
        self._refuse_xattr(self._node(inode), f"removing {os.fsdecode(name)}")

    def _refuse_xattr(self, node: Node, what: str) -> NoReturn:
        directory = self._directory_of(node)
        if directory.entry.allows.isdisjoint(WRITABLE):
            self._refuse(directory, node.path, what, "attributes come from the platform")
        # Where files are written, "not supported" (as a file system without user attributes
        # says): `cp -a` and `mv` from another file system carry on without a word.
        log.debug("%s: %s: attributes come from the platform", node.path, what)
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    def _confirmed(self, upload: Upload) -> None:
        """The platform confirmed a file: it shows as the platform's, under the same inode."""
        entry, record = upload.entry, upload.record
        self.listings.add_created(upload.place, record.name, entry)
        # Every node of this upload (one made by `create`, or a platform file's being replaced),
        # whether the kernel still looks it up or only an open descriptor holds it; an upload
        # confirmed again (written to after a first close) moves them on again.
        nodes = {id(node): node for node in self.nodes.values() if node.upload is upload}
        nodes.update({id(h.node): h.node for h in self._handles.values() if isinstance(h, FileHandle) and h.upload is upload})
        for node in nodes.values():
            if self._inodes_by_identity.get(node.identity) == node.inode:
                del self._inodes_by_identity[node.identity]
            node.entry, node.identity = entry, (record.platform, entry.key)
            node.obj = _object_of(record.platform, entry)
            if node.inode in self.nodes:
                self._inodes_by_identity[node.identity] = node.inode

    def _adopt(self, upload: Upload, path: str) -> bool:
        """A confirmed upload's bytes become the cached copy of the platform's new file."""
        entry = upload.entry
        obj = _object_of(upload.record.platform, entry)
        return self.cache.store.adopt(obj, Path(path), self.cache.nursery)

    # -- explicit acts (`omicsfs complete PATH`) -------------------------------------------------

    async def perform(self, action: str, path: str) -> str:
        """Do a platform's explicit `action` on the entry at `path` (relative to the mount point)."""
        node = (await self._resolve(path))[-1]
        if node.platform is None or action not in node.platform.actions:
            raise PlatformError(f"{path or '/'}: {action} is not something this platform does", errno_=errno.EINVAL)
        done = await node.platform.perform(action, node.entry)
        # An act changes what entries allow (a completed app result takes no more files): the
        # platform's listings are asked again.
        self.listings.invalidate_platform(node.platform.name)
        return done

    # -- refresh (`omicsfs refresh PATH [--recursive]`) ----------------------------------------

    #: Listings one `omicsfs refresh --recursive` asks for at once.
    REFRESH_PARALLEL = 8

    async def refresh(self, path: str, recursive: bool = False) -> dict:
        """Ask the platform again for the listing of the directory at `path` (relative to the mount
        point) and, `recursive`, of every directory below it whose listing is cached; the kernel
        forgets the names it holds there, so that the next `ls` or `stat` sees the platform as it
        is now rather than when the listing was cached (up to `metadata_ttl` ago).

        A directory whose entries came with its parent's listing (`Entry.children`: BaseSpace's
        folders under Files) can only be asked again through that parent: the nearest directory
        above it that the platform lists is refreshed, and then the way down from there.

        What was refreshed: {"refreshed": [{"path", "entries", "added", "removed"}], "failed":
        [{"path", "error"}]}; "added"/"removed" are None where no listing was cached before.
        """
        chain = await self._resolve(path)
        if not chain[-1].entry.is_dir:
            raise PlatformError(f"{path}: not a directory (refresh the directory that holds it)", errno_=errno.ENOTDIR)
        listed = max(index for index, node in enumerate(chain) if node.platform is None or node.entry.children is None)
        report: dict[str, list] = {"refreshed": [], "failed": []}
        #: (directory inode, names) the kernel is to forget, once the new listings are in.
        forget: list[tuple[int, set[str]]] = []
        try:
            node = chain[listed]
            for below in chain[listed + 1 :]:
                await self._refresh_directory(node, report, forget)
                name = below.path.rsplit("/", 1)[-1]
                entry, _ = await self._find(node, name)
                if entry is None or not entry.is_dir:
                    raise PlatformError(f"{below.path}: no longer on the platform", errno_=errno.ENOENT)
                node = Node(0, entry, below.platform, below.path)
            new = await self._refresh_directory(node, report, forget)
            if recursive:
                async with trio.open_nursery() as nursery:
                    self._refresh_below(node, new, report, forget, nursery, trio.CapacityLimiter(self.REFRESH_PARALLEL))
        finally:
            await trio.to_thread.run_sync(self._forget_in_kernel, forget)
        log.info("%s: refreshed %d listing(s)%s", path or "/", len(report["refreshed"]),
                 f", {len(report['failed'])} failed" if report["failed"] else "")
        return report

    async def _resolve(self, path: str) -> list[Node]:
        """The nodes from the root to `path` (ones of their own, not in the table)."""
        chain = [self.nodes[pyfuse3.ROOT_INODE]]
        for part in [part for part in path.split("/") if part and part != "."]:
            parent = chain[-1]
            entry = (await self._find(parent, part))[0] if parent.entry.is_dir else None
            if entry is None:
                raise PlatformError(f"{path}: no such file or directory", errno_=errno.ENOENT)
            chain.append(Node(0, entry, self._platform_of(parent, part), self._path(parent, part)))
        return chain

    def _refresh_below(self, node: Node, listing: dict[str, Entry], report: dict, forget: list, nursery: trio.Nursery,
                       limiter: trio.CapacityLimiter) -> None:
        """Refresh, in `nursery`, each subdirectory in `listing` whose own listing is cached, and below."""
        for name, entry in listing.items():
            if not entry.is_dir:
                continue
            platform = self._platform_of(node, name)
            if self.listings.cached((platform.name, entry.key)) is None:
                continue  # nothing cached there: the next look asks the platform anyway
            child = Node(0, entry, platform, self._path(node, name))
            nursery.start_soon(self._refresh_subtree, child, report, forget, nursery, limiter)

    async def _refresh_subtree(self, node: Node, report: dict, forget: list, nursery: trio.Nursery,
                               limiter: trio.CapacityLimiter) -> None:
        try:
            async with limiter:
                new = await self._refresh_directory(node, report, forget)
        except PlatformError as exc:  # one directory that fails does not stop the others
            log.warning("%s: refresh failed: %s", node.path, exc)
            report["failed"].append({"path": node.path, "error": str(exc)})
            return
        self._refresh_below(node, new, report, forget, nursery, limiter)

    async def _refresh_directory(self, node: Node, report: dict, forget: list) -> dict[str, Entry]:
        """Drop one directory's cached listing and fetch it again; note what the kernel is to forget."""
        place = self._place(node) if node.platform is not None else None
        cached = self.listings.cached(place) if place is not None else None
        # What `ls -a` showed before and shows now: the listing and what this mount adds to it.
        old = set(cached) | set(self._extras(node)) if cached is not None else None
        if place is not None:
            self.listings.invalidate(place)
        listing = await self.listing(node)
        new = set(listing) | set(self._extras(node))
        inode = self._kernel_inode(node)
        if inode is not None:
            # The old names (gone ones included), and the new ones: a name the kernel was told is
            # absent (a negative entry) must be asked again too.
            forget.append((inode, (old or set()) | new))
        report["refreshed"].append({"path": node.path, "entries": len(new),
                                    "added": sorted(new - old) if old is not None else None,
                                    "removed": sorted(old - new) if old is not None else None})
        return listing

    def _kernel_inode(self, node: Node) -> int | None:
        """The inode under which the kernel knows this directory, if it knows it."""
        if node.platform is None:
            return pyfuse3.ROOT_INODE
        return self._inodes_by_identity.get((node.platform.name, node.entry.key))

    @staticmethod
    def _forget_in_kernel(forget: list[tuple[int, set[str]]]) -> None:
        """Make the kernel forget names and directories' attributes (in a worker thread: each call
        waits for the kernel, which may first wait for a request of that directory that the event
        loop is answering). The synchronous calls, unlike `invalidate_entry_async`, let `refresh`
        return only once the kernel has forgotten: the next `ls` is sure to ask."""
        for inode, names in forget:
            for name in names:
                try:
                    pyfuse3.invalidate_entry(inode, os.fsencode(name))
                except OSError as exc:
                    if exc.errno != errno.ENOENT:  # ENOENT: the kernel did not hold that name
                        log.warning("refresh: the kernel could not forget %r in inode %d: %s", name, inode, exc.strerror)
            try:
                pyfuse3.invalidate_inode(inode)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    log.warning("refresh: the kernel could not forget the attributes of inode %d: %s", inode, exc.strerror)
