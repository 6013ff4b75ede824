"""The mounted tree, read: what is at a path, and what the daemon keeps of it.

The library's :class:`butler.view.View` answers for committed datasets; this
module adds what only a mount shows — drafts being written, directories made
by ``mkdir`` and not yet holding a dataset (kept in memory until unmount), the
``.butler/status`` and ``.butler/log`` files — decides modes, and keeps the
caches (entries, listings, remembered absences).  Every call into the library
runs in a worker thread.  Changes (put, remove, define) are made by
:mod:`butlerfs.writes`; they, the change poll and reload hold :attr:`Tree.lock`
(a :class:`ChangeLock`): puts and removes share it, so that closes arriving
together reach the library together (which serializes per output and commits
what arrives together as one batch); a definition, the poll (which may reload
a policy) and reload take it alone, because the Butler's policy and caches are
shared by all of them.

    namespace   path                         writable?
    union       <template paths>             yes, if an output accepts the type
    repos       .repos/<label>/...           if <label> is an output: new files by its own
                                             templates, put to it alone; rm removes from it
                                             alone; no overwrite in place.  Else EROFS
    versions    .versions/<path>/v<N><ext>   no (EROFS)
    internal    .butler/status, .butler/log  no (EROFS)

The root lists the union only; the other namespaces are reached by name (and
listed with ``-o showmeta``).

A file's inode names the version it shows (butlerfs.inodes): :meth:`Tree.shown`
answers for an inode the kernel still holds after its path moved on.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import posixpath
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass

import trio

from butler import Butler, DatasetRef
from butler.errors import DatasetNotFoundError
from butler.view import INTERNAL, META, REPOS, VERSIONS, Area, Node, View, locate
from butlerfs.entries import Entry, EntryCache, ListingCache
from butlerfs.errors import refusal
from butlerfs.inodes import InodeId
from butlerfs.logbook import Logbook
from butlerfs.scratch import Draft, DraftTable, ScratchArea
from butlerfs.worker import Worker

log = logging.getLogger("butlerfs")

STATUS_FILE = f"{INTERNAL}/status"
LOG_FILE = f"{INTERNAL}/log"
#: The mount's own files in .butler/, made when read.
INTERNAL_FILES = ("log", "status")

#: Read-ahead of lookups (a cold ``stat`` of many files of one directory): the first
#: miss in a directory asks for its name alone; each next miss reads that many names
#: from it on, by name, in one range query, doubling up to the most.
_AHEAD_FIRST = 64
_AHEAD_MOST = 4096
_AHEAD_DIRECTORIES = 1024  # directories followed; then it starts again

#: Failed lookups the kernel may remember (see Tree.absent); beyond that, none more.
ABSENT_LIMIT = 4096

#: Union directories whose every child the daemon knows (see Tree.known_absent): names
#: kept in all, at most (the least recently listed directory goes first), and the largest
#: directory kept (a bigger listing is not worth holding for this).
COMPLETE_NAMES_MOST = 200_000
COMPLETE_DIRECTORY_MOST = 20_000

#: Old versions the kernel still holds an inode of (an open file, a memory map) whose
#: attributes were asked for: kept until the kernel forgets the inode, at most this many.
PINNED_LIMIT = 4096


class ChangeLock:
    """Shared by puts and removes; exclusive for definitions, the poll and reload.

    Writer-preferring: once an exclusive holder waits, new shared holders wait behind
    it, so a stream of closes cannot hold the poll off.  Trio tasks only (one thread).
    """

    def __init__(self) -> None:
        self._shared = 0
        self._exclusive = False
        self._waiting = 0  # exclusive holders waiting
        self._changed = trio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        while self._exclusive or self._waiting:
            await self._changed.wait()
        self._shared += 1
        try:
            yield
        finally:
            self._shared -= 1
            self._notify()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        self._waiting += 1
        try:
            while self._exclusive or self._shared:
                await self._changed.wait()
        finally:
            self._waiting -= 1
            self._notify()  # shared waiters may go on if this one gave up
        self._exclusive = True
        try:
            yield
        finally:
            self._exclusive = False
            self._notify()


def _listing_key(view: View) -> Hashable:
    """What a listing (or the status) of ``view`` is valid for: it and its changes."""
    return (view, view.revision, view.token())


def _list_if_changed(
    view: View, path: str, known: Hashable | None
) -> tuple[Hashable, list[Node] | None]:
    """(key, listing), or (key, None) when ``known`` is still the key (in a worker)."""
    key = _listing_key(view)  # before the listing: a change meanwhile shows next time
    if key == known:
        return key, None
    return key, view.listdir(path)


def _stat_ahead(
    view: View, path: str, limit: int
) -> tuple[Node | DatasetNotFoundError, list[Node]]:
    """``view.stat(path)`` and the names after it in its directory (in a worker)."""
    parent, _, name = path.rpartition("/")
    window = view.listdir_from(parent, name, limit)
    nodes = [] if window is None else window[0]
    if nodes and nodes[0].path == path:
        return nodes[0], nodes
    try:
        return view.stat(path), nodes
    except DatasetNotFoundError as exc:
        return exc, nodes


def dataset_paths(label: str, relative: str) -> list[str]:
    """Where a change to the file ``relative`` of repository ``label`` shows (as
    ``View.changes_since`` lists them): under .repos/, the union view and .versions/."""
    return [posixpath.join(REPOS, label, relative), relative, posixpath.join(VERSIONS, relative)]


def is_internal_file(path: str) -> bool:
    """A file of the mount's own (``.butler/<name>``), made when read."""
    place = locate(path)
    return place.area is Area.INTERNAL and bool(place.relative)


@dataclass(frozen=True)
class Settings:
    mountpoint: str
    source: str
    read_only: bool = False
    private_root: bool = False  # the root is 0700: see butlerfs.access
    show_meta: bool = False  # -o showmeta: the root lists .repos, .versions, .butler
    autodefine: bool = False  # -o autodefine: a path may define a new dataset type
    log_file: str | None = None  # where the daemon logs, for .butler/status


class Tree:
    """The mount's namespace.  ``changed(path)`` is told of every change made here."""

    def __init__(
        self,
        view: View,
        reopen: Callable[[], View],
        worker: Worker,
        scratch_area: ScratchArea,
        settings: Settings,
        changed: Callable[[str], None],
        logbook: Logbook | None = None,
    ) -> None:
        self.view = view
        self._reopen = reopen
        self.worker = worker
        self.scratch = scratch_area
        self.settings = settings
        self.notify = changed
        self.logbook = logbook or Logbook()
        self.cache = EntryCache()
        self._listings = ListingCache()
        self._ahead: dict[str, int] = {}  # directory → read-ahead window of its next miss
        self._status: tuple[Hashable, dict[str, object]] | None = None
        #: The file I/O part of .butler/status (set by butlerfs.operations).
        self.io_status: Callable[[], dict[str, object]] = dict
        self._absent: set[str] = set()  # paths the kernel was told hold nothing
        self._absent_revision = self.view.revision
        self._pinned: OrderedDict[InodeId, Entry] = OrderedDict()
        self.drafts = DraftTable()
        self.made: dict[str, set[str]] = {}  # parent → directories made by mkdir
        # Union directory → the names of all its children, as of its listing (or mkdir),
        # plus every name a change has touched since (see known_absent).
        self._complete: OrderedDict[str, set[str]] = OrderedDict()
        self._complete_names = 0
        self._complete_revision = self.view.revision
        #: Held by every change to repositories (put, remove, define), the poll and reload.
        self.lock = ChangeLock()
        self._token = self.view.token()
        self._started_ns = time.time_ns()

    @property
    def butler(self) -> Butler:
        return self.view.butler

    # -- reading -----------------------------------------------------------

    def known(self, path: str) -> Entry | None:
        """The entry at ``path`` if the daemon has it in memory, else None.

        The hot lookups (``lookup``, ``getattr``, ``open`` after a listing) answer from
        this without a thread hop; None sends them to :meth:`stat`.
        """
        drafts = self.drafts
        if drafts:
            draft = drafts.get(path)
            if draft is not None:
                return self.draft_entry(draft)
        if self.made and self.is_made(path):
            return self._directory(path)
        return self.cache.get(path)

    async def stat(self, path: str) -> Entry:
        entry = self.known(path)
        if entry is not None:
            return entry
        if is_internal_file(path):
            return self._internal_entry(path, await self.internal_file(path))
        if self.known_absent(path):
            raise DatasetNotFoundError(f"/{path}: no such dataset or directory in this view")
        generation = self.cache.generation
        parent = path.rpartition("/")[0]
        ahead = self._ahead
        window = ahead.pop(parent, None)
        if window is None or not path:
            # A first miss in a directory asks for its name alone; if it was there, the
            # next miss reads ahead (failed lookups, as before creating files, never do).
            node = await self.worker.run(self.view.stat, path)
            if path:
                if len(ahead) >= _AHEAD_DIRECTORIES:
                    ahead.clear()
                ahead[parent] = _AHEAD_FIRST
            entry = self._entry(node)
            self.cache.put(entry, generation)
            return entry
        found, nodes = await self.worker.run(_stat_ahead, self.view, path, window)
        entries = self._entries(nodes, parent)
        self.cache.put_all(entries, generation)
        if isinstance(found, DatasetNotFoundError):
            raise found
        if entries and entries[0].path == path:
            ahead[parent] = min(window * 2, _AHEAD_MOST)  # it paid: read further next time
            return entries[0]
        entry = self._entry(found)
        self.cache.put(entry, generation)
        return entry

    async def shown(self, path: str, inode: InodeId) -> Entry:
        """What the kernel's ``inode`` of ``path`` shows.

        Usually what the path shows now; but an inode names one version (butlerfs.inodes),
        and the kernel may still hold an older version's inode (an open file, a memory
        map, or a dentry not yet invalidated): then that version, found among the
        versions the path has shown.  An inode found nowhere (a draft's, after its
        commit) shows what the path shows now.
        """
        try:
            entry: Entry | None = self.known(path) or await self.stat(path)
        except DatasetNotFoundError:
            entry = None
        if entry is not None and entry.inode == inode:
            return entry
        pinned = self._pinned.get(inode)
        if pinned is not None:
            return pinned
        nodes = await self.worker.run(self.view.version_nodes, path)
        for node in nodes:
            candidate = self._entry(node)
            if candidate.inode == inode:
                self._pinned[inode] = candidate
                if len(self._pinned) > PINNED_LIMIT:
                    self._pinned.popitem(last=False)
                return candidate
        if entry is None:
            raise DatasetNotFoundError(f"/{path}: no such dataset or directory in this view")
        return entry

    def forget(self, inode: InodeId) -> None:
        """The kernel no longer holds ``inode``."""
        self._pinned.pop(inode, None)

    async def listdir(self, path: str) -> list[Entry]:
        """The entries of directory ``path``, sorted by name.

        The library's part is kept, with the view's revision and the registries' change
        token it was listed at, and is listed again only when either moved: one thread
        hop and a MAX() per repository instead of a listing query, so a new dataset still
        shows the moment it is committed.  Drafts, directories made by mkdir, the mount's
        own files (and, with ``-o showmeta``, the namespaces in the root) are added at
        every call.
        """
        entries = await self._committed_listing(path)
        drafts = self.drafts.children(path) if self.drafts else []
        made = self.made.get(path, ()) if self.made else ()
        meta = path == "" and self.settings.show_meta
        if not drafts and not made and path != INTERNAL and not meta:
            return entries  # shared with the cache: callers never change a listing
        by_name = {entry.name: entry for entry in entries}
        if path == INTERNAL:
            for name in INTERNAL_FILES:
                child = f"{INTERNAL}/{name}"
                by_name[name] = self._internal_entry(child, await self.internal_file(child))
        if meta:
            for name in META:
                by_name[name] = self._directory(name)
        for name in made:
            by_name.setdefault(name, self._directory(posixpath.join(path, name)))
        for draft in drafts:
            by_name[posixpath.basename(draft.path)] = self.draft_entry(draft)
        return [by_name[name] for name in sorted(by_name)]

    async def _committed_listing(self, path: str) -> list[Entry]:
        generation = self.cache.generation
        known = self._listings.key(path)
        while True:
            try:
                key, nodes = await self.worker.run(_list_if_changed, self.view, path, known)
            except DatasetNotFoundError:
                if not self.is_made(path):
                    raise
                return []
            if nodes is not None:
                entries = self._entries(nodes, path)
                self._listings.put(path, key, entries)  # checked against the token at each use
                break
            kept = self._listings.get(path, key)
            if kept is not None:
                entries = kept
                break
            known = None  # evicted or replaced meanwhile (another task): list it after all
        if generation == self.cache.generation:  # nothing changed while it was listed
            self._keep_complete(path, [entry.name for entry in entries])
        self.cache.put_all(entries, generation)
        return entries

    # -- what is known not to be there -------------------------------------------

    def known_absent(self, path: str) -> bool:
        """Is nothing committed at union path ``path``, as far as the daemon knows?

        True when its directory was listed (or made by mkdir) and neither the listing nor
        any change since (this mount's, or another process's as the poll reports it)
        named it: a lookup before creating a file (``cp``) is then answered without a
        thread hop or a query.  A put by another process there shows at the next poll
        (0.3 s) or notice, as a new version of a known path does; once notices stop,
        nothing is known complete (:meth:`forget_cached`).
        """
        parent, _, name = path.rpartition("/")
        names = self._complete.get(parent)
        if names is None or name in names:
            return False
        if self._complete_revision != self.view.revision:
            self._clear_complete()  # a new policy may show anything anywhere
            return False
        return locate(path).area is Area.UNION  # not .repos, .versions, .butler at the root

    def make_directory(self, path: str) -> None:
        """mkdir made ``path`` (nothing was there): kept in memory, and known empty."""
        parent, name = posixpath.split(path)
        self.made.setdefault(parent, set()).add(name)
        self._keep_complete(path, [])

    def _keep_complete(self, path: str, names: list[str]) -> None:
        if len(names) > COMPLETE_DIRECTORY_MOST or locate(path).area is not Area.UNION:
            return
        if self._complete_revision != self.view.revision:
            self._clear_complete()
        known = self._complete.pop(path, None)
        if known is not None:
            self._complete_names -= len(known)
        self._complete[path] = set(names)
        self._complete_names += len(names)
        while self._complete_names > COMPLETE_NAMES_MOST:
            _, evicted = self._complete.popitem(last=False)
            self._complete_names -= len(evicted)

    def _learn(self, paths: list[str]) -> None:
        """Changes landed on ``paths``: each name (and its directories) may exist now."""
        complete = self._complete
        if not complete:
            return
        for path in paths:
            while path:
                parent, _, name = path.rpartition("/")
                names = complete.get(parent)
                if names is not None and name not in names:
                    names.add(name)
                    self._complete_names += 1
                path = parent

    def _clear_complete(self) -> None:
        self._complete.clear()
        self._complete_names = 0
        self._complete_revision = self.view.revision

    def absent(self, path: str) -> bool:
        """After a failed lookup: may the kernel remember that nothing is at ``path``?

        Only where nothing can appear but through this mount, which the kernel sees
        itself: a union path that no dataset type's template can produce, as a file or
        as a directory (``.git``, ``__pycache__``, ``.name.swp`` probes, a typo).  Such
        paths are followed, and told to the kernel again (dropped) when a change lands
        on them or below them, or when the policy changes (a new dataset type).
        """
        if not path or len(self._absent) >= ABSENT_LIMIT:
            return False
        if locate(path).area is not Area.UNION:
            return False
        if self.drafts.get(path) is not None:
            return False
        self.check_revision()
        view = self.view
        try:
            if view.parse(path) is not None or view.is_template_directory(path):
                return False
        except RuntimeError:  # the policy changed under us (another thread): just don't
            return False
        self._absent.add(path)
        return True

    def check_revision(self) -> None:
        """A new policy may put something anywhere: the kernel must forget every absence."""
        if self._absent_revision != self.view.revision:
            self._absent_revision = self.view.revision
            self._forget_absent(list(self._absent))

    def _forget_absent(self, paths: list[str]) -> None:
        """Tell the kernel to forget what it knows of these paths and their ancestors."""
        absent = self._absent
        if not absent:
            return
        for path in paths:
            while path:
                if path in absent:
                    absent.discard(path)
                    self.notify(path)
                path = path.rpartition("/")[0]

    def changed_here(self, path: str) -> None:
        """This mount changed ``path``: drop what the daemon and the kernel know of it."""
        self.cache.drop(path)
        self.notify(path)
        self.check_revision()
        self._forget_absent([path])
        self._learn([path])

    # -- the mount's own files --------------------------------------------------

    async def internal_file(self, path: str) -> bytes:
        """The bytes of ``.butler/status`` or ``.butler/log``, made when read."""
        if path == STATUS_FILE:
            return await self.status()
        if path == LOG_FILE:
            return self.logbook.text()
        raise DatasetNotFoundError(f"/{path}: no such file; {INTERNAL}/ holds status and log")

    async def status(self) -> bytes:
        """The status file, made when read.  The repositories' part is made again only
        after a change (COUNT(*) is slow); the mount's part (open files, passthrough) at
        every read."""
        known = self._status[0] if self._status is not None else None
        key, found = await self.worker.run(self._status_if_changed, self.view, known)
        if found is None:
            assert self._status is not None
            found = self._status[1]
        else:
            self._status = (key, found)
        status = {**found, "mount": self._mount_status()}
        return (json.dumps(status, indent=2) + "\n").encode()

    @staticmethod
    def _status_if_changed(
        view: View, known: Hashable
    ) -> tuple[Hashable, dict[str, object] | None]:
        key = _listing_key(view)
        return (key, None) if key == known else (key, view.status())

    def _mount_status(self) -> dict[str, object]:
        return {
            "mountpoint": self.settings.mountpoint,
            "source": self.settings.source,
            "pid": os.getpid(),
            "read_only": self.settings.read_only,
            "scratch": None if self.scratch.directory is None else str(self.scratch.directory),
            "log": self.settings.log_file,
            "autodefine": self.settings.autodefine,
            "drafts": len(self.drafts),
            "draft_bytes_in_memory": self.scratch.memory_used,
            **self.io_status(),
        }

    def _internal_entry(self, path: str, data: bytes) -> Entry:
        return Entry(path, False, 0o444, len(data), time.time_ns(), volatile=True)

    # -- opening -------------------------------------------------------------

    async def open_dataset(self, path: str, inode: InodeId) -> tuple[int, Entry]:
        """An fd on exactly the version ``inode`` shows, and its entry."""
        for attempt in range(2):
            entry = await self.shown(path, inode)
            ref = entry.ref
            if ref is None:
                raise refusal(errno.EISDIR, f"/{path} is a directory")
            try:
                fd = await self.worker.run(self.view.open_version, ref)
            except FileNotFoundError:
                if attempt:
                    raise
                self.cache.drop(path)  # the file is gone (a removal): ask again, once
                continue
            assert fd is not None  # the blocking opener always answers
            return fd, entry
        raise AssertionError("unreachable")

    async def provenance(self, ref: DatasetRef) -> dict[str, object]:
        return await self.worker.run(self.butler.provenance, ref)

    # -- entries and modes --------------------------------------------------------

    def draft_entry(self, draft: Draft) -> Entry:
        return Entry(
            draft.path,
            False,
            draft.mode,
            draft.size,
            draft.mtime_ns,
            volatile=True,
            inode=draft.inode,
        )

    def _entry(self, node: Node) -> Entry:
        return self._entries([node], node.path.rpartition("/")[0])[0]

    def _entries(self, nodes: list[Node], directory: str) -> list[Entry]:
        """Entries of ``nodes``, the children of ``directory`` (modes decided once a type)."""
        # The root holds .repos, .versions and .butler: each child its own namespace.
        area = None if directory == "" else locate(directory).area
        accepts: dict[str, bool] = {}
        entries = []
        for node in nodes:
            dataset_type = node.dataset_type
            if dataset_type is None:
                entries.append(self._directory(node.path))
                continue
            writable = accepts.get(dataset_type)
            if writable is None:
                node_area = area if area is not None else locate(node.path).area
                writable = node_area is Area.UNION and self.accepts(dataset_type)
                accepts[dataset_type] = writable
            mode = 0o644 if writable else 0o444
            mtime_ns = int(node.committed * 1e9)
            entries.append(Entry(node.path, False, mode, node.size, mtime_ns, node))
        return entries

    def _directory(self, path: str) -> Entry:
        place = locate(path)
        if place.area is Area.UNION:
            writable = self.writable
        else:
            writable = place.area is Area.REPOS and self.repo_output(path) is not None
        mode = 0o755 if writable else 0o555
        if path == "" and self.settings.private_root:
            mode &= 0o700
        return Entry(path, True, mode, mtime_ns=self._started_ns)

    @property
    def writable(self) -> bool:
        return not self.settings.read_only and bool(self.view.outputs)

    def accepts(self, dataset_type: str) -> bool:
        return self.writable and self.view.accepts(dataset_type)

    def repo_output(self, path: str) -> str | None:
        """The label of the output ``path`` is in or below (``.repos/<label>[/...]``), if
        it is writable; else None (an input's, ``.repos`` itself, a read-only mount)."""
        place = locate(path)
        if self.settings.read_only or place.area is not Area.REPOS or not place.label:
            return None
        return place.label if self.view.is_output(place.label) else None

    def is_made(self, path: str) -> bool:
        parent, name = posixpath.split(path)
        return name in self.made.get(parent, ())

    async def statfs(self) -> os.statvfs_result:
        """The first output's filesystem (where writes go), else the first input's."""
        return await self.worker.run(os.statvfs, self.view.space_path())

    # -- changes from elsewhere --------------------------------------------------

    async def changes(self) -> list[str]:
        """Paths changed since the last call, by anyone (this mount included)."""
        async with self.lock.exclusive():
            self._token, paths = await self.worker.run(self.view.changes_since, self._token)
        for path in paths:
            self.cache.drop(path)
        self.check_revision()
        self._forget_absent(paths)
        self._learn(paths)
        return paths

    def forget_cached(self) -> None:
        """Drop the entries and listings kept in memory: nothing tells of changes any more
        (the registry's notices stopped), so each is asked for again, and fails (EIO,
        logged) while the registry cannot answer."""
        self.cache.clear()
        self._listings.clear()
        self._status = None
        self._forget_absent(list(self._absent))
        self._clear_complete()

    async def reload(self) -> None:
        """Open the source again (SIGHUP): new repositories, policies, labels."""
        async with self.lock.exclusive():
            view = await self.worker.run(self._reopen)
            old, self.view = self.view, view
            self.cache.clear()
            self._listings.clear()
            self._pinned.clear()
            self._status = None
            self._forget_absent(list(self._absent))
            self._absent_revision = view.revision
            self._clear_complete()
            self._token = await self.worker.run(view.token)
        await self.worker.run(old.butler.close)
