"""Drafts: files being written through the mount, kept in the mount's scratch directory.

A write never touches a repository until it is committed: the bytes go to a
*draft*, a private file in ``<first output>/.butler/scratch/<host>-<pid>/``
(the first output's filesystem, so the put that commits it copies locally;
``.butler/`` is never shown and never adopted by ``butler reindex``).  A
draft shows in its own mount only, at its view path:

- at a template path (``cp``, an editor saving in place): committed by a put
  when its last writer closes (see :mod:`butlerfs.operations`), then dropped;
- at a scratch name, one beginning with ``.`` (``rsync``'s ``.name.XXXXXX``,
  swap files): kept until it is deleted, renamed onto a template path (which
  commits it), or the mount ends.

A new draft starts in memory: a small file (``cp`` of a 4 KiB FITS) is created,
written, read and committed without a scratch file or a thread hop for any of it;
its bytes become a file only inside the put's worker call (the library's ingest
reads a file), which removes it again.  A draft *spills* to a scratch file once it
grows past :data:`MEMORY_DRAFT_MOST`, or when the drafts in memory hold
:data:`MEMORY_DRAFTS_MOST` in all: no large payload stays in the daemon.

Opening a committed dataset for writing makes a draft *based* on its version
(a descriptor on exactly that version's bytes), always a file: the copy is made
on the first write, and skipped when the first change is a truncation to zero
(``cp`` over a dataset opens it and truncates).

The scratch directory is removed at unmount; one left by a daemon that died is
removed by the next mount on the same host.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import posixpath
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from butler.view import Area, locate
from butlerfs.inodes import InodeId, draft_inode
from butlerfs.worker import Worker

#: Under an output's internal directory, which the library never lists or serves.
SCRATCH_DIRECTORY = Path(".butler") / "scratch"

_COPY_CHUNK = 1 << 20

#: A new draft stays in memory up to this size (most files written through a mount of
#: small datasets: FITS headers and cutouts, YAML, catalogs of a few rows).
MEMORY_DRAFT_MOST = 1 << 20
#: All drafts in memory together, at most (then new bytes spill to scratch files): a few
#: hundred concurrent small writers, not a payload kept (docs/mount.md, "Memory").
MEMORY_DRAFTS_MOST = 64 << 20


def is_scratch_path(path: str) -> bool:
    """A union path, or one below ``.repos/<label>/``, with a component beginning with "."
    (``.name.XXXXXX``, ``.tmp/x``): never a template path."""
    place = locate(path)
    if place.area is Area.UNION or (place.area is Area.REPOS and place.label):
        return any(part.startswith(".") for part in place.relative.split("/"))
    return False


@dataclass(eq=False)
class Draft:
    """A file being written: its view path, its scratch file, and who has it open."""

    path: str
    file: Path | None  # the scratch file; None while the draft is in memory
    fd: int  # -1 while in memory
    base: int | None  # fd on the version to copy in on the first change; None: already here
    size: int
    mode: int = 0o644
    content_format: str | None = None  # the storage format its first bytes must begin
    inode: InodeId = field(init=False)
    mtime_ns: int = field(default_factory=time.time_ns)
    writers: int = 0  # open handles that may write
    handles: int = 0  # all open handles
    dirty: bool = False  # changed since created or last committed
    discarded: bool = False  # deleted from the tree; the fd closes with the last handle
    lock: trio.Lock = field(default_factory=trio.Lock)
    memory: bytearray | None = None  # the bytes, while in memory (then file is None)

    def __post_init__(self) -> None:
        self.inode = draft_inode(self.path)  # kept through renames, as the kernel keeps it

    @property
    def is_scratch(self) -> bool:
        return is_scratch_path(self.path)

    def touch(self) -> None:
        self.dirty = True
        self.mtime_ns = time.time_ns()


class ScratchArea:
    """The mount's private directory of draft files; ``None`` root means no outputs."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        tag = f"{socket.gethostname()}-{os.getpid()}"
        self.directory = None if root is None else root / tag
        self._numbers = itertools.count(1)
        #: Bytes of the drafts in memory (changed on the trio thread only).
        self.memory_used = 0

    @classmethod
    def for_output(cls, output: Path | None) -> ScratchArea:
        return cls(None if output is None else output / SCRATCH_DIRECTORY)

    def create_file(self, suffix: str, data: bytes = b"") -> tuple[Path, int]:
        """A new private file holding ``data``, open for reading and writing (blocking)."""
        path = self.new_name(suffix)
        return path, self._create(path, data, os.O_RDWR)

    def new_name(self, suffix: str) -> Path:
        """A name for a new scratch file (not created)."""
        if self.directory is None:
            raise OSError(errno.EROFS, "this mount has no output repository to write to")
        return self.directory / f"{next(self._numbers)}{suffix}"

    def written(self, path: Path, data: bytes) -> None:
        """Create the scratch file ``path`` (from :meth:`new_name`) holding ``data``: the
        bytes of a draft in memory, as the file its put ingests (blocking)."""
        os.close(self._create(path, data, os.O_WRONLY))

    def _create(self, path: Path, data: bytes, access: int) -> int:
        flags = access | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:  # the mount's first scratch file
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, flags, 0o600)
        try:
            _write_all(fd, data, 0)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        return fd

    def reserve(self, draft: Draft, size: int) -> bool:
        """May ``draft`` (in memory) grow to ``size`` bytes?  If so, counted."""
        assert draft.memory is not None
        grow = size - len(draft.memory)
        if size > MEMORY_DRAFT_MOST or self.memory_used + grow > MEMORY_DRAFTS_MOST:
            return False
        self.memory_used += grow
        return True

    def forget_memory(self, draft: Draft) -> None:
        """The draft's bytes leave memory (spilled to a file, or the draft is gone)."""
        if draft.memory is not None:
            self.memory_used -= len(draft.memory)
            draft.memory = None

    def with_suffix(self, draft: Draft, suffix: str) -> None:
        """Rename the draft's file so its extension tells the put its format (blocking)."""
        assert draft.file is not None
        if draft.file.suffix != suffix:
            renamed = draft.file.with_name(f"{next(self._numbers)}{suffix}")
            os.rename(draft.file, renamed)
            draft.file = renamed

    def remove(self) -> None:
        """Delete the whole scratch directory (at unmount; blocking)."""
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def remove_stale(self) -> list[Path]:
        """Delete scratch directories of dead daemons on this host; those removed."""
        if self.root is None or not self.root.is_dir():
            return []
        host = socket.gethostname()
        removed = []
        for entry in self.root.iterdir():
            owner_host, _, pid = entry.name.rpartition("-")
            if owner_host == host and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DraftTable:
    """Drafts by view path, and by directory for listings."""

    def __init__(self) -> None:
        self._by_path: dict[str, Draft] = {}
        self._by_directory: dict[str, dict[str, Draft]] = {}

    def __len__(self) -> int:
        return len(self._by_path)

    def get(self, path: str) -> Draft | None:
        return self._by_path.get(path)

    def add(self, draft: Draft) -> None:
        self.pop(draft.path)
        self._by_path[draft.path] = draft
        directory, name = posixpath.split(draft.path)
        self._by_directory.setdefault(directory, {})[name] = draft

    def pop(self, path: str) -> Draft | None:
        draft = self._by_path.pop(path, None)
        if draft is not None:
            directory, name = posixpath.split(path)
            siblings = self._by_directory.get(directory, {})
            siblings.pop(name, None)
            if not siblings:
                self._by_directory.pop(directory, None)
        return draft

    def move(self, draft: Draft, new_path: str) -> None:
        self.pop(draft.path)
        draft.path = new_path
        self.add(draft)

    def children(self, directory: str) -> list[Draft]:
        return list(self._by_directory.get(directory, {}).values())


# -- the bytes of a draft: in memory on the trio thread, else through the Worker ----------


def in_memory(path: str, mode: int, content: str | None) -> Draft:
    """A new, empty draft at ``path``, kept in memory until it spills."""
    return Draft(path, None, -1, None, 0, mode, content, memory=bytearray())


async def spill(draft: Draft, area: ScratchArea, worker: Worker) -> None:
    """Give a draft in memory its scratch file (before it outgrows memory)."""
    async with draft.lock:  # writes wait: none may land in memory once this copies it
        memory = draft.memory
        if memory is None:
            return
        suffix = "" if draft.is_scratch else posixpath.splitext(draft.path)[1]
        draft.file, draft.fd = await worker.run(area.create_file, suffix, bytes(memory))
        area.forget_memory(draft)


def _in_memory(draft: Draft, area: ScratchArea, size: int) -> bytearray | None:
    """The draft's memory if it may hold ``size`` bytes now (no spill under way), else None."""
    memory = draft.memory
    if memory is None or draft.lock.locked() or not area.reserve(draft, max(size, len(memory))):
        return None
    return memory


async def prepare(draft: Draft, worker: Worker, keep: int | None = None) -> None:
    """Copy the base version in, if still pending (at most ``keep`` bytes of it)."""
    async with draft.lock:
        base = draft.base
        if base is not None:
            if keep != 0:
                await worker.run(_copy_into, base, draft.fd, keep)
            draft.base = None
            os.close(base)


async def write(draft: Draft, area: ScratchArea, worker: Worker, offset: int, data: bytes) -> int:
    end = offset + len(data)
    memory = _in_memory(draft, area, end)
    if memory is not None:  # answered at once: no file, no thread
        if offset > len(memory):
            memory.extend(bytes(offset - len(memory)))  # a hole reads as zeros
        memory[offset:end] = data
        draft.size = len(memory)
        draft.touch()
        return len(data)
    await spill(draft, area, worker)
    await prepare(draft, worker)
    written = await worker.run(_write_all, draft.fd, data, offset)
    draft.size = max(draft.size, offset + written)
    draft.touch()
    return written


async def truncate(draft: Draft, area: ScratchArea, worker: Worker, size: int) -> None:
    memory = _in_memory(draft, area, size)
    if memory is not None:
        if size < len(memory):
            area.memory_used -= len(memory) - size
            del memory[size:]
        else:
            memory.extend(bytes(size - len(memory)))
        draft.size = size
        draft.touch()
        return
    await spill(draft, area, worker)
    await prepare(draft, worker, keep=size)
    await worker.run(os.ftruncate, draft.fd, size)
    draft.size = size
    draft.touch()


async def read(draft: Draft, worker: Worker, offset: int, size: int) -> bytes:
    memory = draft.memory
    if memory is not None:
        return bytes(memory[offset : offset + size])
    async with draft.lock:  # not while the base is being copied in (and closed)
        base = draft.base
        return await worker.run(os.pread, draft.fd if base is None else base, size, offset)


def payload(draft: Draft) -> bytes | None:
    """A copy of a draft's bytes if it is in memory (for its put, in a worker), else None."""
    return None if draft.memory is None else bytes(draft.memory)


def has_file(draft: Draft) -> bool:
    """Must :func:`close_file` run (in a worker) to drop the draft?"""
    return draft.file is not None or draft.base is not None


def close_file(draft: Draft) -> None:
    """Drop a discarded draft's scratch file; its descriptors with the last handle
    (blocking)."""
    if draft.file is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(draft.file)
    if draft.handles == 0:
        for fd in (draft.fd, draft.base):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        draft.base = None


def _write_all(fd: int, data: bytes, offset: int) -> int:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
    return done


def _copy_into(source: int, fd: int, keep: int | None) -> None:
    """Copy the descriptor ``source`` into ``fd``, 1 MiB at a time (never whole in memory)."""
    offset = 0
    while keep is None or offset < keep:
        want = _COPY_CHUNK if keep is None else min(_COPY_CHUNK, keep - offset)
        chunk = os.pread(source, want, offset)
        if not chunk:
            break
        offset += _write_all(fd, chunk, offset)
