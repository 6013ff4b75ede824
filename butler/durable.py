"""Writing so that a crash leaves either the old state or the new one, on disk.

    write_all(fd, data)             every byte, whatever os.write returns
    write_new(root, path, data)     a new file (never replacing one), optionally fsynced
    copy_into(source, fd)           stream a file into another, hashing it on the way
    fsync_directory(root, path)     make a directory's entries (new names) durable

Everything goes through a :class:`butler.confine.Root`, so nothing written
here can land outside the repository or through a planted link.  Replacing a
file atomically (``butler.yaml``) is a staged file plus a rename: see
:meth:`butler.repository.DataRepository.stage_config`.
"""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO

from butler.confine import Root

COPY_CHUNK = 1 << 20  # large blocks: copying runs at the disk's speed, not Python's


def write_all(fd: int, data: bytes | memoryview, offset: int | None = None) -> None:
    view = memoryview(data)
    position = offset
    while view:
        if position is None:
            written = os.write(fd, view)
        else:
            written = os.pwrite(fd, view, position)
            position += written
        view = view[written:]


def write_new(root: Root, path: str, data: bytes | memoryview, *, sync: bool) -> None:
    """Create ``path`` with ``data`` (O_EXCL: never replaces anything), fsynced if ``sync``.

    A failure removes what was created: no half file is left behind.
    """
    fd = root.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, data)
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        root.unlink(path)
        raise
    os.close(fd)


def copy_into(source: BinaryIO, fd: int) -> tuple[str, int]:
    """Copy the rest of ``source`` into ``fd``; (sha256 hex digest, bytes copied)."""
    digest = hashlib.sha256()
    size = 0
    while chunk := source.read(COPY_CHUNK):
        digest.update(chunk)
        write_all(fd, chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def fsync_directory(root: Root, path: str) -> None:
    """fsync the directory ``path`` ("" for the root): its new entries survive a crash."""
    with root.directory(path) as fd:
        os.fsync(fd)


def fsync_file(root: Root, path: str) -> None:
    fd = root.open(path)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hash_fd(fd: int) -> tuple[str, int]:
    """(sha256 hex digest, size) of what ``fd`` reads from its start."""
    digest = hashlib.sha256()
    size = 0
    offset = 0
    while chunk := os.pread(fd, COPY_CHUNK, offset):
        digest.update(chunk)
        size += len(chunk)
        offset += len(chunk)
    return digest.hexdigest(), size
