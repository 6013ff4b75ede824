"""Inode numbers: a hash of what a file shows, so they are stable across remounts and hosts.

``ls -i``, ``find -inum``, ``rsync -H`` and backup tools compare inode numbers
between runs; numbering inodes in lookup order would renumber everything at
every mount.  So a number is the first 63 bits of BLAKE2b (63, not 64: some
languages and tools read ``st_ino`` as a signed 64-bit value) of:

    a directory               its path
    a dataset file            its path and the transaction of the version it shows
    a draft (being written)   its path when created and a number of this mount

A dataset's inode therefore names one version for good: when a new version lands,
the path gets a new inode (the kernel is told to look the name up again), while
an open file or a memory map keeps the old inode, its attributes and its pages,
which are exactly the old version's (docs/design.md, "Caching and invalidation").
The root is ``pyfuse3.ROOT_INODE``.  A collision needs ~2**31 paths in one mount
to become likely; it is detected and answered with EIO, never by serving the
wrong file.

The table maps the inodes the kernel knows (it counts lookups) back to paths,
and forgets them when the kernel does.  What an inode shows is found from its
path and number (butlerfs.tree.Tree.shown).
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
from typing import NewType

import pyfuse3

log = logging.getLogger("butlerfs")

InodeId = NewType("InodeId", int)

ROOT = InodeId(pyfuse3.ROOT_INODE)
_MASK = (1 << 63) - 1
_drafts = itertools.count(1)


def _hashed(text: str) -> InodeId:
    digest = hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    number = int.from_bytes(digest, "little") & _MASK
    # 0 is "no inode" to FUSE and 1 is the root: move the two unlucky hashes aside.
    return InodeId(number if number > ROOT else number + ROOT + 1)


def inode_of(path: str) -> InodeId:
    """The inode number of a directory or other path-named file ("" is the root)."""
    if path == "":
        return ROOT
    return _hashed(path)


def version_inode(path: str, txid: str) -> InodeId:
    """The inode number of the file at ``path`` showing the version committed by ``txid``."""
    return _hashed(f"{path}\0{txid}")


def draft_inode(path: str) -> InodeId:
    """A new inode number for a draft created at ``path`` (never reused in this process)."""
    return _hashed(f"{path}\0draft\0{next(_drafts)}")


class InodeTable:
    """Inode → path for every inode the kernel holds, with the kernel's lookup counts.

    Kernel-forget driven: an inode stays exactly as long as the kernel holds it (it
    forgets under memory pressure, at unmount, or when told an entry changed), so the
    table is as big as the kernel's own cache of this mount and no bigger.  Most
    inodes are looked up once (a readdirplus entry), so only counts above one are
    stored: about 150 bytes an inode.  Several inodes may name one path (versions of
    a file held open while newer ones landed).
    """

    def __init__(self) -> None:
        self._paths: dict[InodeId, str] = {ROOT: ""}
        self._extra: dict[InodeId, int] = {}  # lookups beyond the first, if any

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, inode: InodeId) -> str:
        """The path of a known inode; ESTALE if the kernel asks about one it forgot."""
        try:
            return self._paths[inode]
        except KeyError:
            raise OSError(errno.ESTALE, f"inode {inode} is not known (forgotten)") from None

    def get(self, inode: int) -> str | None:
        """The path of a known inode, or None (the hot paths' test, raising nothing)."""
        return self._paths.get(InodeId(inode))

    def remember(self, path: str, inode: InodeId | None = None) -> InodeId:
        """The inode of ``path`` (hashed unless given), counted as one more kernel lookup."""
        if inode is None:
            inode = inode_of(path)
        paths = self._paths
        known = paths.get(inode)
        if known is None:
            paths[inode] = path
        elif known != path:
            raise OSError(
                errno.EIO, f"inode {inode} collision between /{known} and /{path}; rename one"
            )
        elif inode != ROOT:
            extra = self._extra
            extra[inode] = extra.get(inode, 0) + 1
        return inode

    def known(self, path: str) -> InodeId | None:
        """The path-hashed inode of ``path`` (a directory's) if the kernel holds it."""
        inode = inode_of(path)
        return inode if self._paths.get(inode) == path else None

    def move(self, inode: InodeId, new: str) -> None:
        """After a rename the kernel keeps the inode under the new name; follow it."""
        if inode in self._paths and inode != ROOT:
            self._paths[inode] = new

    def forget(self, inode: InodeId, count: int) -> bool:
        """The kernel dropped ``count`` lookups; True if it no longer holds ``inode``."""
        if inode == ROOT or inode not in self._paths:
            return False
        left = self._extra.pop(inode, 0) + 1 - count
        if left > 1:
            self._extra[inode] = left - 1
            return False
        if left <= 0:
            del self._paths[inode]
            return True
        return False

    def lookups(self, inode: InodeId) -> int:
        """How many lookups of ``inode`` the kernel has not forgotten (0: not known)."""
        if inode not in self._paths:
            return 0
        return self._extra.get(inode, 0) + 1

    def items(self) -> list[tuple[InodeId, str]]:
        return list(self._paths.items())
