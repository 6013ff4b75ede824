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
    repos       .repos/<label>/...           no (EROFS)
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
from collections.abc import Callable
from dataclasses import dataclass

import trio

from butler import Butler, DatasetRef
from butler.errors import ButlerError, DatasetNotFoundError
from butler.view import REPOS, STATUS, VERSIONS, Node, View
from butlerfs import scratch
from butlerfs.entries import Entry, EntryCache
from butlerfs.errors import refusal
from butlerfs.scratch import Draft, DraftTable, ScratchArea
from butlerfs.worker import Worker

log = logging.getLogger("butlerfs")

STATUS_FILE = f"{STATUS}/status"


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
    """A union path with a component beginning with "." (``.name.XXXXXX``, ``.tmp/x``)."""
    return namespace(path) is Namespace.UNION and scratch.is_scratch_path(path)


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
        self.drafts = DraftTable()
        self._made: dict[str, set[str]] = {}  # parent → directories made by mkdir
        self._write_lock = trio.Lock()
        self._token = self.view.token()
        self._started_ns = time.time_ns()

    # -- reading -----------------------------------------------------------

    async def stat(self, path: str) -> Entry:
        draft = self.drafts.get(path)
        if draft is not None:
            return self.draft_entry(draft)
        if path == STATUS_FILE:
            return self._status_entry(await self.status())
        if self._is_made(path):
            return self._directory(path)
        cached = self._cache.get(path)
        if cached is not None:
            return cached
        generation = self._cache.generation
        entry = self._entry(await self.worker.run(self.view.stat, path))
        self._cache.put(entry, generation)
        return entry

    async def listdir(self, path: str) -> list[Entry]:
        generation = self._cache.generation
        try:
            nodes = await self.worker.run(self.view.listdir, path)
        except DatasetNotFoundError:
            if not self._is_made(path):
                raise
            nodes = []
        entries = {node.name: self._entry(node) for node in nodes}
        for entry in entries.values():
            self._cache.put(entry, generation)
        if path == STATUS:
            entries["status"] = self._status_entry(await self.status())
        for name in self._made.get(path, ()):
            entries.setdefault(name, self._directory(posixpath.join(path, name)))
        for draft in self.drafts.children(path):
            entries[posixpath.basename(draft.path)] = self.draft_entry(draft)
        return [entries[name] for name in sorted(entries)]

    async def status(self) -> bytes:
        return await self.worker.run(self._status_bytes)

    async def open_dataset(self, path: str) -> tuple[int, Entry]:
        """An fd on the committed file at ``path`` and its entry."""
        for attempt in range(2):
            entry = await self.stat(path)
            if entry.ref is None:
                raise refusal(errno.EISDIR, f"/{path} is a directory")
            try:
                fd = await self.worker.run(os.open, entry.ref.path, os.O_RDONLY | os.O_CLOEXEC)
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
        ref = node.ref
        if ref is None:
            return self._directory(node.path)
        writable = namespace(node.path) is Namespace.UNION and self._accepts(ref.dataset_type)
        mode = 0o644 if writable else 0o444
        return Entry(node.path, False, mode, ref.size, int(ref.committed * 1e9), ref)

    def _directory(self, path: str) -> Entry:
        writable = namespace(path) is Namespace.UNION and self.writable
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

    def _is_made(self, path: str) -> bool:
        parent, name = posixpath.split(path)
        return name in self._made.get(parent, ())

    # -- writing -------------------------------------------------------------

    def check_writable(self, path: str) -> None:
        """EROFS, with the reason, unless ``path`` is in the writable union view."""
        if self.settings.read_only:
            raise refusal(errno.EROFS, f"/{path}: the mount is read-only (mounted with -o ro)")
        area = namespace(path)
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
                raise refusal(exc.errno, f"/{target}: nothing was put: {reason}") from exc
        self._changed_here(target)
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
            draft.file, target.dataset_type, dict(target.data_id), provenance=provenance
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

    async def statfs(self) -> os.statvfs_result:
        """The first output's filesystem (where writes go), else the first input's."""
        members = self.butler.resolver.outputs or self.butler.resolver.search
        return await self.worker.run(os.statvfs, members[0].repo.path)

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
        async with self._write_lock:
            await self.worker.run(self._remove, entry.ref, path)
        self._changed_here(path)

    def _remove(self, ref: DatasetRef, path: str) -> None:
        try:
            labels = self.butler.remove(ref.dataset_type, ref.data_id)
        except DatasetNotFoundError:
            raise refusal(
                errno.EROFS,
                f"/{path}: only input {ref.repository} holds it, and inputs are never changed",
            ) from None
        log.info("removed /%s from %s", path, ", ".join(labels))

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
        return paths

    async def reload(self) -> None:
        """Open the source again (SIGHUP): new repositories, policies, labels."""
        async with self._write_lock:
            butler = await self.worker.run(self._reopen)
            view = await self.worker.run(View, butler)
            old, self.butler, self.view = self.butler, butler, view
            self._cache.clear()
            self._token = await self.worker.run(view.token)
        await self.worker.run(old.close)
