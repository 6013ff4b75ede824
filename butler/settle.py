"""Settling: making applied puts durable in batches, then turning journals into records.

A put is committed when every output holds its journal (durable), and visible
once applied (links, renames, a registry row).  What applying wrote is not yet
flushed: new names in directories, the bytes of files written from a journal's
inline payload, the registry's WAL (SQLite ``synchronous=NORMAL``).  Until it
is, the journal stays, so a crash simply applies the put again.  Settling
flushes all of that once for a batch of puts, then keeps each journal's header
as the put's plain-text record: the payload is cut off and the file renamed
into ``.butler/records/``.

A batch settles when 32 puts wait or one has waited a second (checked at the
next put), when its repository closes, and at exit; recovery settles any
applied journal it meets, whoever applied it.  The state is the repository's
own (:class:`Settlement`), never the process's.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from butler import faults, layout
from butler.confine import Root
from butler.durable import fsync_directory, fsync_file
from butler.journal import PutEntry, RemovalEntry
from butler.locks import Locks
from butler.registry import Registry

BATCH = 32  # applied puts waiting per repository, at most
SECONDS = 1.0  # and none waits longer than this once another put comes


@dataclass
class Flushes:
    """What applying one entry wrote that is not yet durable (paths relative to the root)."""

    files: set[str] = field(default_factory=set)
    directories: set[str] = field(default_factory=set)


def flushes_of(entry: PutEntry | RemovalEntry) -> Flushes:
    """Everything applying ``entry`` may have changed, for settling it."""
    pending = Flushes(directories={layout.JOURNAL, layout.RECORDS})
    if isinstance(entry, RemovalEntry):
        pending.directories.update(path.rpartition("/")[0] for path in entry.paths)
        return pending
    for record in entry.files:
        version_file = layout.version_file(entry.version, record.path)
        if record.inline >= 0:
            pending.files.add(version_file)  # written from the journal, never fsynced
        pending.directories.add(version_file.rpartition("/")[0])
        pending.directories.add(record.path.rpartition("/")[0])
    pending.directories.update(path.rpartition("/")[0] for path in entry.stale_paths)
    if entry.config_staged:
        pending.directories.add("")
    return pending


class Settlement:
    """The entries this process applied in one repository and has not settled yet."""

    def __init__(self, root: Root, registry: Callable[[], Registry]) -> None:
        self._root = root
        self._registry = registry
        self._waiting: dict[str, Flushes] = {}
        self._since = 0.0
        self._lock = threading.Lock()

    def note(self, entry: PutEntry | RemovalEntry) -> None:
        with self._lock:
            if not self._waiting:
                self._since = time.monotonic()
            self._waiting[entry.txid] = flushes_of(entry)

    def is_mine(self, txid: str) -> bool:
        with self._lock:
            return txid in self._waiting

    def due(self) -> bool:
        with self._lock:
            return bool(self._waiting) and (
                len(self._waiting) >= BATCH or time.monotonic() - self._since >= SECONDS
            )

    def settle(self) -> None:
        """Settle everything waiting; the caller holds the repository lock."""
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        if waiting:
            settle(self._root, self._registry(), waiting)

    def settle_all(self, locks: Locks) -> None:
        """Settle everything waiting, taking the repository lock (close, exit)."""
        with self._lock:
            if not self._waiting:
                return
        if not os.path.isdir(self._root.absolute(layout.JOURNAL)):
            return  # moved or deleted meanwhile: the next open settles it where it is
        with locks.repository():
            self.settle()


def settle(root: Root, registry: Registry, entries: Mapping[str, Flushes]) -> None:
    """Flush what applying ``entries`` wrote, then turn their journals into records."""
    files = set().union(*(flushes.files for flushes in entries.values()))
    directories = set().union(*(flushes.directories for flushes in entries.values()))
    for path in sorted(files):
        with contextlib.suppress(FileNotFoundError):
            fsync_file(root, path)
    for directory in sorted(directories - {layout.JOURNAL, layout.RECORDS}):
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            fsync_directory(root, directory)
    registry.sync()
    faults.crash_point("settled")
    for txid in entries:
        to_record(root, txid)
    fsync_directory(root, layout.RECORDS)
    fsync_directory(root, layout.JOURNAL)


def to_record(root: Root, txid: str) -> None:
    """Keep a settled journal's header as the record; its payload is no longer needed."""
    journal = layout.journal(txid)
    try:
        fd = root.open(journal, os.O_RDWR)
    except FileNotFoundError:
        return  # another process settled it
    try:
        end = _header_end(fd)
        if end is not None and os.fstat(fd).st_size > end:
            os.ftruncate(fd, end)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        root.rename(journal, layout.record(txid))


def _header_end(fd: int) -> int | None:
    """The offset just past the header's newline, or None if the file has none."""
    offset = 0
    while chunk := os.pread(fd, 1 << 16, offset):
        found = chunk.find(b"\n")
        if found >= 0:
            return offset + found + 1
        offset += len(chunk)
    return None
