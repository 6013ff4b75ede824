"""Entries as pyfuse3.EntryAttributes, with how long the kernel may cache them.

A committed dataset never changes under its version, and every change to a
path (a put or remove here or in another process, a reload) is invalidated
explicitly by :mod:`butlerfs.live`; so the kernel may keep entries and
attributes for long, and ``ls -l``/``find`` of a warm tree never reach the
daemon.  The timeout is only a backstop for a missed invalidation.  Drafts and
``.butler/status`` change without notice and are never cached.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

import pyfuse3

from butlerfs.entries import Entry
from butlerfs.inodes import InodeId

#: Seconds the kernel may trust an entry or its attributes without asking again.
CACHE_SECONDS = 300.0

#: ``cp`` and friends size their buffers by st_blksize; 128 KiB is FUSE's read size.
BLOCK_SIZE = 128 * 1024


@dataclass(frozen=True)
class Owner:
    """Every file belongs to the user who mounted (SPEC §8: per-user views)."""

    uid: int
    gid: int


def attributes(entry: Entry, inode: InodeId, owner: Owner) -> pyfuse3.EntryAttributes:
    attrs = pyfuse3.EntryAttributes()
    attrs.st_ino = inode
    attrs.generation = 0
    timeout = 0.0 if entry.volatile else CACHE_SECONDS
    attrs.entry_timeout = timeout
    attrs.attr_timeout = timeout
    kind = stat.S_IFDIR if entry.is_directory else stat.S_IFREG
    attrs.st_mode = kind | entry.mode
    # 1 link for directories means "unknown" to find(1): it must not skip subdirectories.
    attrs.st_nlink = 1
    attrs.st_uid = owner.uid
    attrs.st_gid = owner.gid
    attrs.st_rdev = 0
    attrs.st_size = entry.size
    attrs.st_blksize = BLOCK_SIZE
    attrs.st_blocks = (entry.size + 511) // 512
    attrs.st_atime_ns = entry.mtime_ns
    attrs.st_mtime_ns = entry.mtime_ns
    attrs.st_ctime_ns = entry.mtime_ns
    return attrs


def absent() -> pyfuse3.EntryAttributes:
    """A failed lookup the kernel may remember (inode 0) until told otherwise."""
    attrs = pyfuse3.EntryAttributes()
    attrs.st_ino = 0
    attrs.entry_timeout = CACHE_SECONDS
    attrs.attr_timeout = CACHE_SECONDS
    return attrs
