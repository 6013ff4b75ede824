"""The FUSE request handlers: each turns inode and handle numbers into paths and handles,
asks the tree, and answers.

Every handler is wrapped once by :func:`butlerfs.errors.translated`, so they
raise whatever is natural and the client sees the errno of that module's table;
every handler with a caller is checked by :func:`butlerfs.access.checked`.
Nothing here blocks: the tree runs library and disk calls in worker threads.

Write protocol (docs/mount.md): a new file at a template path, or a dataset
opened for writing, is a draft; the close (FUSE ``flush``) of its last writer
puts it, so the put's error is what ``close()`` returns; ``fsync`` puts too.
A scratch file (``.name``) is put only when renamed onto a template path.  A
flush by a task that was killed by a signal discards the draft instead
(butlerfs.exits): which task flushes is known from pyfuse3 patched for it
(``pyfuse3.BUTLERFS_PATCH >= 1``: ``flush(fh, ctx)``), else it is taken to be
the task that opened the handle.

A file's inode names the version it shows (butlerfs.inodes): ``getattr``,
``open`` and ``getxattr`` of an inode answer for that version, even after the
path moved on to a newer one.
"""

from __future__ import annotations

import errno
import os
import posixpath
from collections.abc import Sequence

import pyfuse3

from butler.errors import DatasetNotFoundError
from butlerfs import scratch, xattrs
from butlerfs.access import Access, checked, checks_caller_itself
from butlerfs.attributes import Owner, absent, attributes
from butlerfs.entries import Entry
from butlerfs.errors import REQUEST_PATH, refusal, translated
from butlerfs.exits import exit_of
from butlerfs.handles import (
    BackingFile,
    Directory,
    DraftFile,
    FileHandleId,
    Handle,
    HandleTable,
    Snapshot,
)
from butlerfs.inodes import InodeId, InodeTable
from butlerfs.passthrough import Passthrough
from butlerfs.tree import Tree, is_internal_file
from butlerfs.worker import Reader
from butlerfs.writes import Writes

#: pyfuse3 patched to pass the flushing task to ``flush`` (``flush_with_context``).
FLUSH_HAS_CONTEXT = getattr(pyfuse3, "BUTLERFS_PATCH", 0) >= 1


@translated
@checked
class Operations(pyfuse3.Operations):
    # Writes must all have arrived when flush commits them: no kernel write-back.
    enable_writeback_cache = False
    # With the patch, flush(fh, ctx): the task that closes, to tell a killed writer.
    flush_with_context = FLUSH_HAS_CONTEXT

    def __init__(
        self,
        tree: Tree,
        inodes: InodeTable,
        handles: HandleTable,
        owner: Owner,
        access: Access,
        xattr: str = "notsup",
        passthrough: Passthrough | None = None,
    ) -> None:
        super().__init__()
        self.tree = tree
        self.writes = Writes(tree)
        self.inodes = inodes
        self.handles = handles
        self.owner = owner
        self.callers = access  # what @checked checks every caller with
        # -o xattr=MODE (docs/mount.md, "Extended attributes and ls -l").  POSIX ACL support
        # is never announced (pyfuse3's enable_acl): the kernel would cache "no ACL" per
        # inode, but forgets it at every readdirplus, so `ls -l` would still ask for each
        # file, and other users' permission checks would cost a round trip.
        self.xattr_mode = xattr
        self._foreign_xattr = pyfuse3.FUSEError(errno.ENODATA)  # raised, never formatted
        # security.*, system.*, trusted.*: "not supported", which ls -l remembers.
        self._unsupported_xattr = pyfuse3.FUSEError(errno.EOPNOTSUPP)
        self._no_xattrs = pyfuse3.FUSEError(errno.ENOSYS)
        # FUSE passthrough (butlerfs.passthrough): asked for at INIT when it can be used.
        self.passthrough = passthrough or Passthrough("off")
        self.enable_passthrough = self.passthrough.requested
        #: read requests of committed datasets the daemon answered (passthrough: none).
        self.served_reads = 0
        self.reader = Reader(tree.worker)
        tree.io_status = self._io_status

    def _io_status(self) -> dict[str, object]:
        return {**self.passthrough.status(), "reads_served": self.served_reads}

    # -- helpers -------------------------------------------------------------

    def _path(self, inode: pyfuse3.InodeT) -> str:
        path = self.inodes.path(InodeId(inode))
        REQUEST_PATH.set(path)
        return path

    def _child(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT) -> str:
        parent = self._path(parent_inode)
        path = posixpath.join(parent, _decoded(name, parent))
        REQUEST_PATH.set(path)
        return path

    def _reply(self, entry: Entry) -> pyfuse3.EntryAttributes:
        """Attributes for a lookup-like answer: the kernel now holds one more reference."""
        return attributes(entry, self.inodes.remember(entry.path, entry.inode), self.owner)

    def _draft_file(self, fh: pyfuse3.FileHandleT) -> DraftFile | None:
        handle = self.handles.get(FileHandleId(fh))
        return handle if isinstance(handle, DraftFile) and handle.writable else None

    # -- names and attributes ------------------------------------------------

    @checks_caller_itself
    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        # Hot (a cold `stat` of every file): an entry the daemon has is answered from
        # memory, with no thread hop.
        self.callers.check(ctx.uid)
        parent = self.inodes.path(InodeId(parent_inode))
        if name == b".":
            path = parent
        elif name == b"..":
            path = posixpath.dirname(parent)
        else:
            child = _decoded(name, parent)
            path = f"{parent}/{child}" if parent else child
        entry = self.tree.known(path)
        if entry is None:
            try:
                entry = await self.tree.stat(path)
            except DatasetNotFoundError:
                if not self.tree.absent(path):
                    raise
                return absent()  # cached by the kernel until a change lands there
        return attributes(entry, self.inodes.remember(entry.path, entry.inode), self.owner)

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        forget = self.inodes.forget
        for inode, count in inode_list:
            if forget(InodeId(inode), count):
                self.tree.forget(InodeId(inode))

    @checks_caller_itself
    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self.callers.check(ctx.uid)
        path = self.inodes.path(InodeId(inode))
        entry = self.tree.known(path)
        if entry is None or entry.inode != inode:
            REQUEST_PATH.set(path)
            entry = await self.tree.shown(path, InodeId(inode))
        return attributes(entry, InodeId(inode), self.owner)

    async def setattr(
        self,
        inode: pyfuse3.InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        # Size is data; mode matters to a scratch file until its rename; owner and times
        # of a dataset are the butler's (commit time), so they are accepted and ignored.
        path = self._path(inode)
        if fields.update_size:
            entry = await self.writes.truncate(path, attr.st_size)
        elif fields.update_mode:
            entry = await self.writes.set_mode(path, attr.st_mode)
        else:
            entry = await self.tree.shown(path, InodeId(inode))
        return attributes(entry, InodeId(inode), self.owner)

    # -- directories ---------------------------------------------------------

    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        return self.handles.add(Directory(self._path(inode)))

    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        directory = self.handles.get_as(FileHandleId(fh), Directory)
        entries = directory.entries
        if entries is None or start_id == 0:
            entries = directory.entries = await self.tree.listdir(directory.path)
        reply = pyfuse3.readdir_reply
        remember = self.inodes.remember
        owner = self.owner
        for index in range(start_id, len(entries)):
            entry = entries[index]
            attrs = attributes(entry, entry.inode, owner)
            name = entry.path.rpartition("/")[2].encode("utf-8", "surrogateescape")
            if not reply(token, name, attrs, index + 1):
                break
            remember(entry.path, entry.inode)  # readdirplus: each entry counts as a lookup

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self.handles.pop(FileHandleId(fh))

    async def mkdir(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        return self._reply(await self.writes.mkdir(self._child(parent_inode, name)))

    async def rmdir(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        await self.writes.rmdir(self._child(parent_inode, name))

    async def unlink(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        await self.writes.unlink(self._child(parent_inode, name))

    async def rename(
        self,
        parent_inode_old: pyfuse3.InodeT,
        name_old: pyfuse3.FileNameT,
        parent_inode_new: pyfuse3.InodeT,
        name_new: pyfuse3.FileNameT,
        flags: pyfuse3.FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise refusal(errno.EINVAL, "exchanging two names is not supported")
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        moved = await self.writes.rename(old, new, replace=not flags & pyfuse3.RENAME_NOREPLACE)
        if moved is not None:  # the kernel keeps the moved inode under the new name
            self.inodes.move(moved.inode, new)

    async def link(
        self,
        inode: pyfuse3.InodeT,
        new_parent_inode: pyfuse3.InodeT,
        new_name: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise refusal(errno.EPERM, "hard links are not supported: a dataset has one path")

    async def symlink(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        target: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise refusal(errno.EPERM, "symbolic links are not supported: datasets are files")

    async def mknod(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise refusal(errno.EPERM, "special files are not supported: datasets are files")

    # -- files ---------------------------------------------------------------

    async def create(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        flags: pyfuse3.FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        draft = await self.writes.create(self._child(parent_inode, name), mode)
        self.writes.attach(draft, writable=True)
        handle = DraftFile(draft, writable=True, opener=ctx.pid, inode=draft.inode)
        fh = self.handles.add(handle)
        return pyfuse3.FileInfo(fh=fh, keep_cache=False), self._reply(self.tree.draft_entry(draft))

    @checks_caller_itself
    async def open(
        self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        self.callers.check(ctx.uid)
        path = self.inodes.path(InodeId(inode))
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        if not writable:
            # Hot (reading many small datasets): the version this inode shows is the one the
            # daemon has an entry for, and the kernel can open its file from its caches (or
            # the inode's open files already have a backing id).
            entry = self.tree.known(path)
            if entry is not None and entry.inode == inode and not entry.volatile:
                info = self._open_known(entry)
                if info is not None:
                    return info
        REQUEST_PATH.set(path)
        if writable and self.passthrough.passes(inode):
            await self._write_elsewhere(path)
        handle = await self._open(path, InodeId(inode), writable, ctx.pid)
        if isinstance(handle, BackingFile):
            return self._reading(handle)
        # A draft opened through a version's inode is written around the page cache
        # (direct_io), so that the version's pages (another process may map them) never
        # hold the draft's bytes.  The mount's own files' size is unknown until read.
        through_version = isinstance(handle, DraftFile) and handle.draft.inode != inode
        if through_version and self.passthrough.tracking:
            assert isinstance(handle, DraftFile)
            if self.passthrough.passes(inode):  # a reader got a backing id meanwhile
                self.writes.detach(handle.draft, handle.writable)
                self.writes.reclaim_unclaimed(handle.draft)
                raise pyfuse3.FUSEError(errno.ESTALE)  # as in _write_elsewhere
            self.passthrough.hold(inode)  # the inode's other opens: served by the daemon
            handle.counted = True
        if isinstance(handle, DraftFile) and handle.writable and flags & os.O_TRUNC:
            await self._truncated(handle)
        return pyfuse3.FileInfo(
            fh=self.handles.add(handle),
            keep_cache=False,
            direct_io=isinstance(handle, Snapshot) or through_version,
        )

    async def _truncated(self, handle: DraftFile) -> None:
        """``open(O_TRUNC)``: libfuse asks for atomic O_TRUNC, so the kernel sends no
        truncate of its own and the open must do it (else a shorter file written over a
        dataset would keep the old version's tail)."""
        try:
            await self.writes.truncate_draft(handle.draft)
        except BaseException:
            if handle.counted:
                self.passthrough.release(handle.inode)
            await self.writes.release(handle.draft, handle.writable)  # the open fails
            raise

    def _open_known(self, entry: Entry) -> pyfuse3.FileInfo | None:
        """An open of a committed version the daemon has the entry of, answered without
        waiting (None: it must wait for the disk, in a worker thread)."""
        passthrough = self.passthrough
        if passthrough.tracking and passthrough.current(entry.inode):
            # Open through passthrough already: share the inode's backing id, no fd needed.
            backing_id = passthrough.attach(entry.inode)
            handle = BackingFile(-1, entry.path, entry.size, entry.inode, backing_id, True)
            return pyfuse3.FileInfo(fh=self.handles.add(handle), backing_id=backing_id)
        ref = entry.ref
        if ref is None:
            return None
        try:
            fd = self.tree.view.open_version(ref, cached=True)
        except OSError:  # gone meanwhile: the worker finds out properly
            return None
        if fd is None:
            return None
        return self._reading(BackingFile(fd, entry.path, entry.size, entry.inode))

    def _reading(self, handle: BackingFile) -> pyfuse3.FileInfo:
        """Answer a read-only open of a committed version, through passthrough if it can."""
        passthrough = self.passthrough
        if passthrough.tracking:
            handle.counted = True
            backing_id = passthrough.register(handle.inode, handle.fd)
            if backing_id:
                os.close(handle.fd)  # the kernel holds the file now; read-only: cannot block
                handle.fd, handle.backing_id = -1, backing_id
                return pyfuse3.FileInfo(fh=self.handles.add(handle), backing_id=backing_id)
        # A version never changes and has an inode of its own: the kernel may keep its
        # pages (and mmap works, direct_io stays off).
        return pyfuse3.FileInfo(fh=self.handles.add(handle), keep_cache=True)

    async def _write_elsewhere(self, path: str) -> None:
        """A writer opening a version's inode that is open through passthrough: every open
        of that inode must be a passthrough one, and a draft must never be.  So the draft
        gets its own inode, and the kernel is told to look the path up again (ESTALE:
        the kernel repeats the open once, with a fresh lookup, which finds the draft)."""
        draft = await self.writes.open_for_writing(path)
        self.writes.reclaim_unclaimed(draft)
        raise pyfuse3.FUSEError(errno.ESTALE)

    async def _open(self, path: str, inode: InodeId, writable: bool, pid: int) -> Handle:
        draft = self.tree.drafts.get(path)
        if writable:
            draft = await self.writes.open_for_writing(path)
        if draft is not None and (writable or draft.inode == inode):
            self.writes.attach(draft, writable)
            return DraftFile(draft, writable, opener=pid, inode=inode)
        if is_internal_file(path):
            return Snapshot(await self.tree.internal_file(path))
        fd, entry = await self.tree.open_dataset(path, inode)
        return BackingFile(fd, path, entry.size, inode)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        handle = self.handles.get(FileHandleId(fh))
        if isinstance(handle, BackingFile):
            if handle.fd < 0:  # the kernel reads a passthrough open itself, never through us
                raise refusal(errno.EIO, f"/{handle.path}: a passthrough open was read by FUSE")
            self.served_reads += 1
            # Hot: pages in the page cache are read at once; pages on their way from the
            # disk are waited for on the trio thread (butlerfs.worker.Reader).
            data = await self.reader.read(handle.fd, size, off, handle.size)
            return data  # type: ignore[return-value]  # pyfuse3 takes any buffer
        if isinstance(handle, Snapshot):
            return handle.data[off : off + size]
        if isinstance(handle, DraftFile):
            return await scratch.read(handle.draft, self.tree.worker, off, size)
        raise refusal(errno.EISDIR, "read on a directory handle")

    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        handle = self._draft_file(fh)
        if handle is None:
            raise refusal(errno.EBADF, "write on a handle not opened for writing")
        REQUEST_PATH.set(handle.draft.path)
        written = await self.writes.write(handle.draft, off, buf)
        handle.wrote = True
        return written

    async def flush(
        self, fh: pyfuse3.FileHandleT, ctx: pyfuse3.RequestContext | None = None
    ) -> None:
        handle = self._draft_file(fh)
        if handle is None:
            return
        draft = handle.draft
        if not handle.wrote and not self.writes.ready_to_commit(draft):
            return  # nothing to commit or discard: no need to ask who closes
        REQUEST_PATH.set(draft.path)
        pid = ctx.pid if ctx is not None else handle.opener
        await self.writes.closed_by(draft, exit_of(pid), pid, handle.wrote, handle.inode)

    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        handle = self._draft_file(fh)
        if handle is not None and handle.draft.dirty and not handle.draft.is_scratch:
            REQUEST_PATH.set(handle.draft.path)
            await self.writes.commit(handle.draft)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        handle = self.handles.pop(FileHandleId(fh))
        if isinstance(handle, BackingFile):
            if handle.fd >= 0:
                os.close(handle.fd)  # read-only: nothing to flush, so it cannot block
            if handle.counted:
                self.passthrough.release(handle.inode)  # the last one: its backing id
        elif isinstance(handle, DraftFile):
            if handle.counted:
                self.passthrough.release(handle.inode)
            REQUEST_PATH.set(handle.draft.path)
            await self.writes.release(handle.draft, handle.writable)

    # -- extended attributes -------------------------------------------------

    @checks_caller_itself
    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        # Hot: ls -l asks security.selinux and system.posix_acl_access of the first file
        # (then remembers "not supported" for the filesystem).  A name that is not ours is
        # answered first, with a prebuilt error: no library, no formatting, no logging.
        # (with_traceback(None): a reraised instance would otherwise keep growing its
        # traceback.)
        if name not in xattrs.OURS and self.xattr_mode != "nosys" and self.callers.admits(ctx.uid):
            if name.startswith(b"user."):
                raise self._foreign_xattr.with_traceback(None)
            raise self._unsupported_xattr.with_traceback(None)  # security.*, system.*, ...
        self.callers.check(ctx.uid)
        if self.xattr_mode == "nosys":
            raise self._no_xattrs.with_traceback(None)
        path = self._path(inode)
        entry = self.tree.known(path)
        if entry is None or entry.inode != inode:
            entry = await self.tree.shown(path, InodeId(inode))
        if entry.ref is None:
            raise refusal(errno.ENODATA, f"/{entry.path} is not a dataset")
        return await xattrs.value(name, entry.ref, self.tree.provenance)

    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> Sequence[pyfuse3.XAttrNameT]:
        if self.xattr_mode == "nosys":
            raise self._no_xattrs.with_traceback(None)
        entry = await self.tree.shown(self._path(inode), InodeId(inode))
        return xattrs.NAMES if entry.ref is not None else ()

    async def setxattr(
        self,
        inode: pyfuse3.InodeT,
        name: pyfuse3.XAttrNameT,
        value: bytes,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if self.xattr_mode == "nosys":
            raise self._no_xattrs.with_traceback(None)
        raise refusal(errno.ENOTSUP, "extended attributes are the butler's, read-only")

    async def removexattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        if self.xattr_mode == "nosys":
            raise self._no_xattrs.with_traceback(None)
        raise refusal(errno.ENOTSUP, "extended attributes are the butler's, read-only")

    # -- the filesystem ------------------------------------------------------

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        found = await self.tree.statfs()
        data = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files"):
            setattr(data, field, getattr(found, field))
        data.f_ffree = data.f_favail = found.f_favail
        data.f_namemax = 255
        return data


def _decoded(name: bytes, parent: str) -> str:
    """A name the kernel passed, as text; EINVAL if it is not UTF-8 (every butler path is)."""
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        shown = name.decode("utf-8", "backslashreplace")
        REQUEST_PATH.set(posixpath.join(parent, shown))
        raise refusal(
            errno.EINVAL,
            f"/{posixpath.join(parent, shown)}: the name is not valid UTF-8, and butler paths "
            "are UTF-8 text; rename the file (e.g. with convmv) and write it again",
        ) from None
