"""What ``stat`` shows for a path, and the daemon's caches of it.

The kernel caches entries for long (butlerfs.attributes) and is told of every
change; the daemon keeps the same entries, dropped by the same notices, so
that a ``lookup``, ``open`` or ``getxattr`` right after ``ls -l`` costs no
registry query and no thread hop.  A query that started before a change
finished must not put its stale answer back: every drop advances a
generation, and only an answer of the current generation is kept.

Both caches are bounded (docs/mount.md, "Memory"): entries by an approximate
LRU of :attr:`EntryCache.LIMIT` paths, listings by their total number of entries.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable

from butler import DatasetRef
from butler.view import Node
from butlerfs.inodes import InodeId, inode_of, version_inode


class Entry:
    """What ``stat`` shows for a path (never changed once made)."""

    __slots__ = ("inode", "is_directory", "mode", "mtime_ns", "node", "path", "size", "volatile")

    def __init__(
        self,
        path: str,
        is_directory: bool,
        mode: int,  # permission bits
        size: int = 0,
        mtime_ns: int = 0,
        node: Node | None = None,  # the committed dataset file, if it is one
        volatile: bool = False,  # changes without notice (drafts, status): never cached
        inode: InodeId | None = None,  # default: of the version shown, else of the path
    ) -> None:
        self.path = path
        self.is_directory = is_directory
        self.mode = mode
        self.size = size
        self.mtime_ns = mtime_ns
        self.node = node
        self.volatile = volatile
        if inode is None:
            txid = None if node is None else node.txid
            inode = inode_of(path) if txid is None else version_inode(path, txid)
        self.inode: InodeId = inode  # hashed once: readdir and lookup reply it

    @property
    def ref(self) -> DatasetRef | None:
        """The committed dataset (made on first use from the registry row)."""
        return None if self.node is None else self.node.ref

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    def __repr__(self) -> str:
        return f"Entry({self.path!r}, directory={self.is_directory}, size={self.size})"


class EntryCache:
    """Entries by path: the newer half is a dict that, when full, replaces the older half.

    An approximate LRU at the cost of a dict lookup: a hit in the older half moves the
    entry to the newer one, so what is in use survives; what is not falls out within
    two turns.  At most :attr:`LIMIT` entries (a few hundred bytes each, and the row of
    their dataset).
    """

    LIMIT = 64_000

    def __init__(self, limit: int = LIMIT) -> None:
        self._newer: dict[str, Entry] = {}
        self._older: dict[str, Entry] = {}
        self._half = max(1, limit // 2)
        self.generation = 0

    def __len__(self) -> int:
        return len(self._newer) + len(self._older)

    def get(self, path: str) -> Entry | None:
        entry = self._newer.get(path)
        if entry is None:
            entry = self._older.get(path)
            if entry is not None:
                self._keep(entry)
        return entry

    def put(self, entry: Entry, generation: int) -> None:
        """Keep ``entry`` if nothing was dropped since ``generation`` was read."""
        if entry.volatile or generation != self.generation:
            return
        self._keep(entry)

    def put_all(self, entries: Iterable[Entry], generation: int) -> None:
        if generation != self.generation:
            return
        for entry in entries:
            if not entry.volatile:
                self._keep(entry)

    def _keep(self, entry: Entry) -> None:
        newer = self._newer
        newer[entry.path] = entry
        if len(newer) >= self._half:
            self._older = newer
            self._newer = {}

    def drop(self, path: str) -> None:
        self._newer.pop(path, None)
        self._older.pop(path, None)
        self.generation += 1

    def clear(self) -> None:
        self._newer = {}
        self._older = {}
        self.generation += 1


class ListingCache:
    """Directory listings, each kept with the key it is valid for.

    The key is whatever proves the listing current (the view and its revision, and the
    registries' change token: see :meth:`butlerfs.tree.Tree.listdir`); a listing is
    only returned for the same key.  Least recently used listings go first once they
    hold more than :attr:`LIMIT` entries in all; a bigger one is not kept.
    """

    LIMIT = 150_000  # a find over 10^5 datasets finds them all again

    def __init__(self, limit: int = LIMIT) -> None:
        self._listings: OrderedDict[str, tuple[Hashable, list[Entry]]] = OrderedDict()
        self._size = 0
        self._limit = limit

    def key(self, path: str) -> Hashable | None:
        found = self._listings.get(path)
        return None if found is None else found[0]

    def get(self, path: str, key: Hashable) -> list[Entry] | None:
        found = self._listings.get(path)
        if found is None or found[0] != key:
            return None
        self._listings.move_to_end(path)
        return found[1]

    def put(self, path: str, key: Hashable, entries: list[Entry]) -> None:
        self.drop(path)
        if len(entries) > self._limit // 2:
            return
        self._listings[path] = (key, entries)
        self._size += len(entries)
        while self._size > self._limit:
            _, (_, evicted) = self._listings.popitem(last=False)
            self._size -= len(evicted)

    def drop(self, path: str) -> None:
        found = self._listings.pop(path, None)
        if found is not None:
            self._size -= len(found[1])

    def clear(self) -> None:
        self._listings.clear()
        self._size = 0

    @property
    def entries(self) -> int:
        return self._size
