"""Open files and directories, by the handle number the kernel passes back.

Four kinds, each with what its reads need:

    BackingFile   a committed dataset: an fd on the repository's file (immutable per version),
                  or, with FUSE passthrough, the backing id the kernel reads it through
    Snapshot      bytes made by the daemon (``.butler/status``), frozen at open
    DraftFile     a file being written (see butlerfs.scratch)
    Directory     a listing, taken at the first readdir so that paging through it
                  never skips or repeats an entry while the directory changes
"""

from __future__ import annotations

import errno
import itertools
from dataclasses import dataclass
from typing import NewType, TypeVar

from butlerfs.entries import Entry
from butlerfs.scratch import Draft

FileHandleId = NewType("FileHandleId", int)


@dataclass
class BackingFile:
    fd: int  # -1 for a passthrough open: the kernel reads the file, the daemon holds no fd
    path: str
    size: int  # the committed version's: it never changes
    inode: int = 0
    backing_id: int = 0  # > 0: a passthrough open (butlerfs.passthrough)
    counted: bool = False  # counted by Passthrough (its release must be told)


@dataclass
class Snapshot:
    data: bytes


@dataclass
class DraftFile:
    draft: Draft
    writable: bool
    opener: int = 0  # the task that opened it: whose exit a flush is judged by (no patch)
    inode: int = 0  # the kernel's inode it was opened on (the draft's, or a version's)
    wrote: bool = False  # written through this handle
    counted: bool = False  # opened through a version's inode, counted by Passthrough


@dataclass
class Directory:
    path: str
    entries: list[Entry] | None = None  # taken by the first readdir


Handle = BackingFile | Snapshot | DraftFile | Directory
H = TypeVar("H", BackingFile, Snapshot, DraftFile, Directory)


class HandleTable:
    def __init__(self) -> None:
        self._open: dict[FileHandleId, Handle] = {}
        # Never reuse a number during a mount: a late request on a closed handle fails
        # cleanly instead of reaching another file.
        self._numbers = itertools.count(1)

    def add(self, handle: Handle) -> FileHandleId:
        number = FileHandleId(next(self._numbers))
        self._open[number] = handle
        return number

    def find(self, number: int) -> Handle | None:
        """The handle numbered ``number``, or None (the hot paths' test, raising nothing)."""
        return self._open.get(FileHandleId(number))

    def get(self, number: FileHandleId) -> Handle:
        try:
            return self._open[number]
        except KeyError:
            raise OSError(errno.EBADF, f"no open handle {number}") from None

    def get_as(self, number: FileHandleId, kind: type[H]) -> H:
        handle = self.get(number)
        if not isinstance(handle, kind):
            raise OSError(errno.EBADF, f"handle {number} is not a {kind.__name__}")
        return handle

    def pop(self, number: FileHandleId) -> Handle:
        handle = self.get(number)
        del self._open[number]
        return handle
