"""What ``stat`` shows for a path, and the daemon's cache of it.

The kernel caches entries for long (butlerfs.attributes) and is told of every
change; the daemon keeps the same entries, dropped by the same notices, so
that an ``open`` or ``getxattr`` right after ``ls -l`` costs no registry
query.  A query that started before a change finished must not put its stale
answer back: every drop advances a generation, and only an answer of the
current generation is kept.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from butler import DatasetRef


@dataclass(frozen=True)
class Entry:
    """What ``stat`` shows for a path."""

    path: str
    is_directory: bool
    mode: int  # permission bits
    size: int = 0
    mtime_ns: int = 0
    ref: DatasetRef | None = None  # the committed dataset file, if it is one
    volatile: bool = False  # changes without notice (drafts, status): the kernel must not cache

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)


class EntryCache:
    #: Enough for the working set of big listings; when full it starts again (cheap, rare).
    LIMIT = 200_000

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self.generation = 0

    def get(self, path: str) -> Entry | None:
        return self._entries.get(path)

    def put(self, entry: Entry, generation: int) -> None:
        """Keep ``entry`` if nothing was dropped since ``generation`` was read."""
        if entry.volatile or generation != self.generation:
            return
        if len(self._entries) >= self.LIMIT:
            self._entries.clear()
        self._entries[entry.path] = entry

    def drop(self, path: str) -> None:
        self._entries.pop(path, None)
        self.generation += 1

    def clear(self) -> None:
        self._entries.clear()
        self.generation += 1
