"""Inode numbers: a hash of the path, so they are stable across remounts and hosts.

``ls -i``, ``find -inum``, ``rsync -H`` and backup tools compare inode numbers
between runs; numbering inodes in lookup order would renumber everything at
every mount.  The number is the first 63 bits of BLAKE2b of the view path (63,
not 64: some languages and tools read ``st_ino`` as a signed 64-bit value).
The root is ``pyfuse3.ROOT_INODE``.  A collision needs ~2**31 paths in one
mount to become likely; it is detected and answered with EIO, never by
serving the wrong file.

The table maps the inodes the kernel knows (it counts lookups) back to paths,
and forgets them when the kernel does.
"""

from __future__ import annotations

import errno
import hashlib
import logging
from typing import NewType

import pyfuse3

log = logging.getLogger("butlerfs")

InodeId = NewType("InodeId", int)

ROOT = InodeId(pyfuse3.ROOT_INODE)
_MASK = (1 << 63) - 1


def inode_of(path: str) -> InodeId:
    """The inode number of a view path ("" is the root)."""
    if path == "":
        return ROOT
    digest = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    number = int.from_bytes(digest, "little") & _MASK
    # 0 is "no inode" to FUSE and 1 is the root: move the two unlucky hashes aside.
    return InodeId(number if number > ROOT else number + ROOT + 1)


class InodeTable:
    """Inode → path for every inode the kernel holds, with the kernel's lookup counts.

    Kernel-forget driven: an inode stays exactly as long as the kernel holds it (it
    forgets under memory pressure, at unmount, or when told an entry changed), so the
    table is as big as the kernel's own cache of this mount and no bigger.  Most
    inodes are looked up once (a readdirplus entry), so only counts above one are
    stored, keyed by the path object the table holds anyway: about 150 bytes an inode.
    """

    def __init__(self) -> None:
        self._paths: dict[InodeId, str] = {ROOT: ""}
        self._extra: dict[str, int] = {}  # path → lookups beyond the first, if any

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
            extra[known] = extra.get(known, 0) + 1
        return inode

    def known(self, path: str) -> InodeId | None:
        """The inode of ``path`` if the kernel holds it, else None (nothing to invalidate)."""
        inode = inode_of(path)
        return inode if self._paths.get(inode) == path else None

    def move(self, old: str, new: str) -> InodeId | None:
        """After a rename the kernel keeps the old inode under the new name; follow it."""
        inode = self.known(old)
        if inode is not None:
            self._paths[inode] = new
            extra = self._extra.pop(old, None)
            if extra is not None:
                self._extra[new] = extra
        return inode

    def forget(self, inode: InodeId, count: int) -> None:
        path = self._paths.get(inode)
        if path is None or inode == ROOT:
            return
        left = self._extra.pop(path, 0) + 1 - count
        if left > 1:
            self._extra[path] = left - 1
        elif left <= 0:
            del self._paths[inode]

    def lookups(self, inode: InodeId) -> int:
        """How many lookups of ``inode`` the kernel has not forgotten (0: not known)."""
        path = self._paths.get(inode)
        if path is None:
            return 0
        return self._extra.get(path, 0) + 1

    def items(self) -> list[tuple[InodeId, str]]:
        return list(self._paths.items())
