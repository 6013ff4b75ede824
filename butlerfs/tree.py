"""The mounted tree: what is at a path, and what a change at a path does.

The library's :class:`butler.view.View` answers for committed datasets; this
module adds what only a mount has — drafts being written, directories made by
``mkdir`` and not yet holding a dataset (kept in memory until unmount), the
``.butler/status`` file — and decides modes.  Every call into the library
runs in a worker thread; every call that changes repositories (put, remove,
define, the change poll, reload) holds one lock, because the Butler's policy
and caches are shared by all of them.

    namespace   path                         writable?
    union       <template paths>             yes, if an output accepts the type
    repos       .repos/<label>/...           if <label> is an output: new files by its own
                                             templates, put to it alone; rm removes from it
                                             alone; no overwrite in place.  Else EROFS
    versions    .versions/<path>/v<N><ext>   no (EROFS)
    internal    .butler/status               no (EROFS)
"""

from __future__ import annotations

import enum
import errno
import json
import logging
import os
import posixpath
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import trio

from butler import Butler, DatasetRef
from butler.errors import ButlerError, DatasetNotFoundError
from butler.view import REPOS, STATUS, VERSIONS, Node, View
from butlerfs import scratch
from butlerfs.entries import Entry, EntryCache, ListingCache
from butlerfs.errors import refusal
from butlerfs.scratch import Draft, DraftTable, ScratchArea
from butlerfs.worker import Worker

log = logging.getLogger("butlerfs")

STATUS_FILE = f"{STATUS}/status"

#: Read-ahead of lookups (a cold ``stat`` of many files of one directory): the first
#: miss in a directory asks for its name alone; each next miss reads that many names
#: from it on, by name, in one range query, doubling up to the most.
_AHEAD_FIRST = 64
_AHEAD_MOST = 4096
_AHEAD_DIRECTORIES = 1024  # directories followed; then it starts again

#: Failed lookups the kernel may remember (see Tree.absent); beyond that, none more.
ABSENT_LIMIT = 4096


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


class Namespace(enum.Enum):
    UNION = "union"
    REPOS = REPOS
    VERSIONS = VERSIONS
    INTERNAL = STATUS


def namespace(path: str) -> Namespace:
    head = path.partition("/")[0]
    for each in (Namespace.REPOS, Namespace.VERSIONS, Namespace.INTERNAL):
        if head == each.value:
            return each
    return Namespace.UNION


def is_scratch_path(path: str) -> bool:
    """A union path, or one below ``.repos/<label>/``, with a component beginning with "."
    (``.name.XXXXXX``, ``.tmp/x``)."""
    area = namespace(path)
    return area in (Namespace.UNION, Namespace.REPOS) and scratch.is_scratch_path(path)


def _dataset_paths(label: str, relative: str) -> list[str]:
    """Where a change to the file ``relative`` of repository ``label`` shows (as
    ``View.changes_since`` lists them): under .repos/, the union view and .versions/."""
    return [posixpath.join(REPOS, label, relative), relative, posixpath.join(VERSIONS, relative)]


@dataclass(frozen=True)
class Settings:
    mountpoint: str
    source: str
    read_only: bool = False
    private_root: bool = False  # the root is 0700: see butlerfs.access


class Tree:
    """The mount's namespace.  ``changed(path)`` is told of every change made here."""

    def __init__(
        self,
        butler: Butler,
        reopen: Callable[[], Butler],
        worker: Worker,
        scratch_area: ScratchArea,
        settings: Settings,
        changed: Callable[[str], None],
    ) -> None:
        self.butler = butler
        self.view = View(butler)
        self._reopen = reopen
        self.worker = worker
        self.scratch = scratch_area
        self.settings = settings
        self._notify = changed
        self._cache = EntryCache()
        self._listings = ListingCache()
        self._ahead: dict[str, int] = {}  # directory → read-ahead window of its next miss
        self._status: tuple[Hashable, bytes] | None = None
        self._absent: set[str] = set()  # paths the kernel was told hold nothing
        self._absent_revision = self.view.revision
        self.drafts = DraftTable()
        self._made: dict[str, set[str]] = {}  # parent → directories made by mkdir
        self._write_lock = trio.Lock()
        self._token = self.view.token()
        self._started_ns = time.time_ns()

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
        if path == STATUS_FILE:
            return None  # made on demand
        if self._made and self._is_made(path):
            return self._directory(path)
        return self._cache.get(path)

    async def stat(self, path: str) -> Entry:
        entry = self.known(path)
        if entry is not None:
            return entry
        if path == STATUS_FILE:
            return self._status_entry(await self.status())
        generation = self._cache.generation
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
            self._cache.put(entry, generation)
            return entry
        found, nodes = await self.worker.run(_stat_ahead, self.view, path, window)
        entries = self._entries(nodes, parent)
        self._cache.put_all(entries, generation)
        if isinstance(found, DatasetNotFoundError):
            raise found
        if entries and entries[0].path == path:
            ahead[parent] = min(window * 2, _AHEAD_MOST)  # it paid: read further next time
            return entries[0]
        entry = self._entry(found)
        self._cache.put(entry, generation)
        return entry

    async def listdir(self, path: str) -> list[Entry]:
        """The entries of directory ``path``, sorted by name.

        The library's part is kept, with the view's revision and the registries' change
        token it was listed at, and is listed again only when either moved: one thread
        hop and a MAX() per repository instead of a listing query, so a new dataset still
        shows the moment it is committed.  Drafts, directories made by mkdir and the
        status file are added at every call.
        """
        entries = await self._committed_listing(path)
        drafts = self.drafts.children(path) if self.drafts else []
        made = self._made.get(path, ()) if self._made else ()
        if not drafts and not made and path != STATUS:
            return entries  # shared with the cache: callers never change a listing
        by_name = {entry.name: entry for entry in entries}
        if path == STATUS:
            by_name["status"] = self._status_entry(await self.status())
        for name in made:
            by_name.setdefault(name, self._directory(posixpath.join(path, name)))
        for draft in drafts:
            by_name[posixpath.basename(draft.path)] = self.draft_entry(draft)
        return [by_name[name] for name in sorted(by_name)]

    async def _committed_listing(self, path: str) -> list[Entry]:
        generation = self._cache.generation
        known = self._listings.key(path)
        while True:
            try:
                key, nodes = await self.worker.run(_list_if_changed, self.view, path, known)
            except DatasetNotFoundError:
                if not self._is_made(path):
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
        self._cache.put_all(entries, generation)
        return entries

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
        if namespace(path) is not Namespace.UNION or self.drafts.get(path) is not None:
            return False
        self._check_revision()
        view = self.view
        try:
            if view.parse(path) is not None or view.is_template_directory(path):
                return False
        except RuntimeError:  # the policy changed under us (another thread): just don't
            return False
        self._absent.add(path)
        return True

    def _check_revision(self) -> None:
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
                    self._notify(path)
                path = path.rpartition("/")[0]

    async def status(self) -> bytes:
        """The status file: made when read, again only after a change (COUNT(*) is slow)."""
        known = self._status[0] if self._status is not None else None
        key, data = await self.worker.run(self._status_if_changed, self.view, known)
        if data is None:
            assert self._status is not None
            return self._status[1]
        self._status = (key, data)
        return data

    def _status_if_changed(self, view: View, known: Hashable) -> tuple[Hashable, bytes | None]:
        key = _listing_key(view)
        return (key, None) if key == known else (key, self._status_bytes())

    async def open_dataset(self, path: str) -> tuple[int, Entry]:
        """An fd on the committed file at ``path`` and its entry."""
        for attempt in range(2):
            entry = await self.stat(path)
            ref = entry.ref
            if ref is None:
                raise refusal(errno.EISDIR, f"/{path} is a directory")
            try:
                fd = await self.worker.run(os.open, ref.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                if attempt:
                    raise
                self._cache.drop(path)  # a newer version replaced it: ask again, once
                continue
            return fd, entry
        raise AssertionError("unreachable")

    async def provenance(self, ref: DatasetRef) -> dict[str, object]:
        return await self.worker.run(self.butler.provenance, ref)

    def draft_entry(self, draft: Draft) -> Entry:
        return Entry(draft.path, False, draft.mode, draft.size, draft.mtime_ns, volatile=True)

    def _entry(self, node: Node) -> Entry:
        return self._entries([node], node.path.rpartition("/")[0])[0]

    def _entries(self, nodes: list[Node], directory: str) -> list[Entry]:
        """Entries of ``nodes``, the children of ``directory`` (modes decided once a type)."""
        # The root holds .repos, .versions and .butler: each child its own namespace.
        area = None if directory == "" else namespace(directory)
        accepts: dict[str, bool] = {}
        entries = []
        for node in nodes:
            dataset_type = node.dataset_type
            if dataset_type is None:
                entries.append(self._directory(node.path))
                continue
            writable = accepts.get(dataset_type)
            if writable is None:
                node_area = area if area is not None else namespace(node.path)
                writable = node_area is Namespace.UNION and self._accepts(dataset_type)
                accepts[dataset_type] = writable
            mode = 0o644 if writable else 0o444
            mtime_ns = int(node.committed * 1e9)
            entries.append(Entry(node.path, False, mode, node.size, mtime_ns, node))
        return entries

    def _directory(self, path: str) -> Entry:
        area = namespace(path)
        if area is Namespace.UNION:
            writable = self.writable
        else:
            writable = area is Namespace.REPOS and self._repo_output(path) is not None
        mode = 0o755 if writable else 0o555
        if path == "" and self.settings.private_root:
            mode &= 0o700
        return Entry(path, True, mode, mtime_ns=self._started_ns)

    def _status_entry(self, data: bytes) -> Entry:
        return Entry(STATUS_FILE, False, 0o444, len(data), time.time_ns(), volatile=True)

    def _status_bytes(self) -> bytes:
        status = self.view.status()
        status["mount"] = {
            "mountpoint": self.settings.mountpoint,
            "source": self.settings.source,
            "pid": os.getpid(),
            "read_only": self.settings.read_only,
            "scratch": None if self.scratch.directory is None else str(self.scratch.directory),
        }
        return (json.dumps(status, indent=2) + "\n").encode()

    @property
    def writable(self) -> bool:
        return not self.settings.read_only and bool(self.butler.resolver.outputs)

    def _accepts(self, dataset_type: str) -> bool:
        return self.writable and any(m.accepts(dataset_type) for m in self.butler.resolver.outputs)

    def _repo_output(self, path: str) -> str | None:
        """The label of the output ``path`` is in or below (``.repos/<label>[/...]``), if
        it is writable; else None (an input's, ``.repos`` itself, a read-only mount)."""
        if self.settings.read_only or not path.startswith(REPOS + "/"):
            return None
        label = path.split("/", 2)[1]
        return label if any(m.label == label for m in self.butler.resolver.outputs) else None

    def _is_made(self, path: str) -> bool:
        parent, name = posixpath.split(path)
        return name in self._made.get(parent, ())

    # -- writing -------------------------------------------------------------

    def check_writable(self, path: str) -> None:
        """EROFS, with the reason, unless ``path`` is in the writable union view or below
        an output's ``.repos/<label>/``."""
        if self.settings.read_only:
            raise refusal(errno.EROFS, f"/{path}: the mount is read-only (mounted with -o ro)")
        area = namespace(path)
        if area is Namespace.REPOS:
            label, _, relative = path.partition("/")[2].partition("/")
            if relative and self._repo_output(path) is not None:
                return
            outputs = ", ".join(m.label for m in self.butler.resolver.outputs) or "none"
            if not relative:
                reason = f"{REPOS}/ lists the repositories; write inside an output's directory"
            else:
                reason = f"{label} is not an output, and inputs are never changed; write"
                reason += " at the dataset's path in the top-level view, or under an output's"
            raise refusal(errno.EROFS, f"/{path}: {reason} (outputs: {outputs})")
        if area is not Namespace.UNION:
            raise refusal(
                errno.EROFS,
                f"/{path}: {area.value}/ is read-only; write at the dataset's template path "
                "in the top-level view instead",
            )
        if not self.butler.resolver.outputs:
            raise refusal(errno.EROFS, f"/{path}: this mount has no output repository")

    async def create(self, path: str, mode: int) -> Draft:
        """A new draft at ``path``: a scratch name, or a template path an output accepts."""
        self.check_writable(path)
        if not is_scratch_path(path):
            await self.worker.run(self.view.classify_write, path)  # EROFS / EACCES, with reason
        return await self._new_draft(path, None, 0, mode & 0o777 or 0o644)

    async def open_for_writing(self, path: str) -> Draft:
        """The draft to write at ``path``: the open one, or a new one based on the dataset."""
        draft = self.drafts.get(path)
        if draft is not None:
            return draft
        self.check_writable(path)
        entry = await self.stat(path)
        if entry.ref is None:
            raise refusal(errno.EISDIR, f"/{path} is a directory")
        if namespace(path) is Namespace.REPOS:
            raise refusal(
                errno.EROFS,
                f"/{path}: a dataset under {REPOS}/ is not overwritten in place; write a "
                "'.' name beside it and rename it over (a new version in this output only), "
                "or overwrite it in the top-level view (every output)",
            )
        await self.worker.run(self.view.classify_write, path)
        return await self._new_draft(path, entry.ref.path, entry.size, 0o644)

    async def _new_draft(self, path: str, base: str | None, size: int, mode: int) -> Draft:
        suffix = "" if is_scratch_path(path) else posixpath.splitext(path)[1]
        file, fd = await self.worker.run(self.scratch.create_file, suffix)
        draft = Draft(path, file, fd, base, size, mode)
        self.drafts.add(draft)
        return draft

    def attach(self, draft: Draft, writable: bool) -> None:
        """One more open handle on ``draft``."""
        draft.handles += 1
        draft.writers += writable

    def ready_to_commit(self, draft: Draft) -> bool:
        """At the close of a writer: is it the last writer of a changed template-path draft?"""
        return draft.dirty and draft.writers == 1 and not draft.is_scratch and not draft.discarded

    async def release(self, draft: Draft, writable: bool) -> None:
        """A handle closed.  The last writer of a template-path draft ends it: put, drop."""
        draft.handles -= 1
        draft.writers -= writable
        if draft.discarded:
            if draft.handles == 0:
                await self.worker.run(scratch.close_file, draft)
            return
        if not writable or draft.writers > 0 or draft.is_scratch:
            return
        try:
            if draft.dirty:  # written after the last flush (a shared mmap, say)
                await self.commit(draft)
        finally:
            await self.discard(draft)

    async def commit(self, draft: Draft, path: str | None = None) -> list[DatasetRef]:
        """Put the draft's bytes as the dataset at ``path`` (default: its own path)."""
        target = draft.path if path is None else path
        await scratch.prepare(draft, self.worker)
        draft.dirty = False  # consumed, whether the put succeeds or not: no retry at release
        async with self._write_lock:
            try:
                refs = await self.worker.run(self._put, draft, target)
            except ButlerError as exc:
                # The library names the scratch file, which means nothing to the user.
                reason = str(exc).replace(str(draft.file), f"the bytes written to /{target}")
                raise refusal(
                    exc.errno or errno.EIO, f"/{target}: nothing was put: {reason}"
                ) from exc
        self._changed_here(target)
        for ref in refs:  # the same dataset in the other namespaces, before the poll sees it
            for each in _dataset_paths(ref.repository, ref.relative_path):
                if each != target:
                    self._changed_here(each)
        labels = ", ".join(ref.repository for ref in refs)
        log.info("put /%s: %s v%d to %s", target, refs[0].dataset_type, refs[0].version, labels)
        return refs

    def _put(self, draft: Draft, path: str) -> list[DatasetRef]:
        target = self.view.classify_write(path)
        if target.define_genre is not None:
            self.butler.define(target.dataset_type, genre=target.define_genre)
            self.view.refresh()
        self.scratch.with_suffix(draft, posixpath.splitext(path)[1])
        provenance = {"butlerfs": {"mountpoint": self.settings.mountpoint, "path": path}}
        return self.butler.ingest(
            draft.file,
            target.dataset_type,
            dict(target.data_id),
            provenance=provenance,
            outputs=target.outputs,  # a .repos/<label>/ path: that output alone
        )

    async def discard(self, draft: Draft) -> None:
        """Forget a draft; its file goes now, its fd with the last handle."""
        if self.drafts.get(draft.path) is draft:
            self.drafts.pop(draft.path)
            self._changed_here(draft.path)  # the kernel's pages were the draft's
        draft.discarded = True
        await self.worker.run(scratch.close_file, draft)

    async def truncate(self, path: str, size: int) -> Entry:
        """``truncate``/``O_TRUNC``: of a draft, in place; of a dataset, a new version now."""
        draft = self.drafts.get(path)
        if draft is not None:
            await scratch.truncate(draft, self.worker, size)
            return self.draft_entry(draft)
        draft = await self.open_for_writing(path)
        try:
            await scratch.truncate(draft, self.worker, size)
            await self.commit(draft)
        finally:
            await self.discard(draft)
        return await self.stat(path)

    async def set_mode(self, path: str, mode: int) -> Entry:
        """chmod: a draft keeps it (rsync sets it before the rename); datasets ignore it."""
        draft = self.drafts.get(path)
        if draft is None:
            return await self.stat(path)
        draft.mode = mode & 0o777
        return self.draft_entry(draft)

    def _changed_here(self, path: str) -> None:
        self._cache.drop(path)
        self._notify(path)
        self._check_revision()
        self._forget_absent([path])

    async def statfs(self) -> os.statvfs_result:
        """The first output's filesystem (where writes go), else the first input's."""
        members = self.butler.resolver.outputs or self.butler.resolver.search
        return await self.worker.run(os.statvfs, members[0].path)

    async def mkdir(self, path: str) -> Entry:
        self.check_writable(path)
        if await self._exists(path):
            raise refusal(errno.EEXIST, f"/{path} exists")
        if not is_scratch_path(path) and not self.view.is_template_directory(path):
            raise refusal(
                errno.EACCES,
                f"/{path}: no dataset type's template has such a directory; see the "
                "templates in .butler/status",
            )
        parent, name = posixpath.split(path)
        self._made.setdefault(parent, set()).add(name)
        return self._directory(path)

    async def rmdir(self, path: str) -> None:
        self.check_writable(path)
        entry = await self.stat(path)
        if not entry.is_directory:
            raise refusal(errno.ENOTDIR, f"/{path} is not a directory")
        if await self.listdir(path):
            raise refusal(errno.ENOTEMPTY, f"/{path} is not empty")
        parent, name = posixpath.split(path)
        self._made.get(parent, set()).discard(name)

    async def unlink(self, path: str) -> None:
        """Delete a draft, or remove a dataset from every output holding it."""
        draft = self.drafts.get(path)
        if draft is not None:
            await self.discard(draft)
            return
        self.check_writable(path)
        entry = await self.stat(path)
        if entry.ref is None:
            raise refusal(errno.EISDIR, f"/{path} is a directory")
        ref = entry.ref
        async with self._write_lock:
            labels = await self.worker.run(self._remove, ref, path)
        self._changed_here(path)
        for label in labels:  # the same dataset in the other namespaces
            for each in _dataset_paths(label, ref.relative_path):
                if each != path:
                    self._changed_here(each)

    def _remove(self, ref: DatasetRef, path: str) -> list[str]:
        """Remove from every output holding it, or (``.repos/<label>/``) from that one."""
        label = self._repo_output(path)
        if label is not None:
            labels = self.butler.remove(ref.dataset_type, ref.data_id, outputs=[label])
        else:
            try:
                labels = self.butler.remove(ref.dataset_type, ref.data_id)
            except DatasetNotFoundError:
                raise refusal(
                    errno.EROFS,
                    f"/{path}: only input {ref.repository} holds it, and inputs are never changed",
                ) from None
        log.info("removed /%s from %s", path, ", ".join(labels))
        return labels

    async def rename(self, old: str, new: str, *, replace: bool = True) -> None:
        """Only a scratch file moves: within scratch, or onto a template path (a put)."""
        draft = self.drafts.get(old)
        if draft is None or not draft.is_scratch:
            await self.stat(old)  # ENOENT if there is nothing to rename
            raise refusal(
                errno.EXDEV,
                f"/{old} → /{new}: datasets are not renamed in place; copy and delete "
                "(mv does this by itself)",
            )
        self.check_writable(new)
        if not replace and await self._exists(new):
            raise refusal(errno.EEXIST, f"/{new} exists (rename without replace)")
        if is_scratch_path(new):
            replaced = self.drafts.get(new)
            if replaced is not None:
                await self.discard(replaced)
            self.drafts.move(draft, new)
            return
        await self.commit(draft, new)
        await self.discard(draft)

    async def _exists(self, path: str) -> bool:
        try:
            await self.stat(path)
        except DatasetNotFoundError:
            return False
        return True

    # -- changes from elsewhere --------------------------------------------------

    async def changes(self) -> list[str]:
        """Paths changed since the last call, by anyone (this mount included)."""
        async with self._write_lock:
            self._token, paths = await self.worker.run(self.view.changes_since, self._token)
        for path in paths:
            self._cache.drop(path)
        self._check_revision()
        self._forget_absent(paths)
        return paths

    def forget_cached(self) -> None:
        """Drop the entries and listings kept in memory: nothing tells of changes any more
        (the registry's notices stopped), so each is asked for again, and fails (EIO,
        logged) while the registry cannot answer."""
        self._cache.clear()
        self._listings.clear()
        self._status = None

    async def reload(self) -> None:
        """Open the source again (SIGHUP): new repositories, policies, labels."""
        async with self._write_lock:
            butler = await self.worker.run(self._reopen)
            view = await self.worker.run(View, butler)
            old, self.butler, self.view = self.butler, butler, view
            self._cache.clear()
            self._listings.clear()
            self._status = None
            self._forget_absent(list(self._absent))
            self._absent_revision = view.revision
            self._token = await self.worker.run(view.token)
        await self.worker.run(old.close)
