"""The mounted tree, written: drafts, their commit as a put, unlink, rename, mkdir.

A write never touches a repository until it is committed: the bytes go to a
draft (butlerfs.scratch), which the close (FUSE ``flush``) of its last writer
puts — to every accepting output, all or nothing — or, for a scratch name, a
rename onto a template path.  Around that:

- the first bytes of a file must be able to begin its format's file (a ``.fits``
  begins ``SIMPLE  =``): a write at offset 0 that cannot fails with EINVAL at
  that ``write()``, so a tool that ignores ``close()`` errors still sees it;
- a close the kernel makes because the writer was killed by a signal is not a
  put: the draft is discarded (butlerfs.exits);
- a new dataset type is defined by a path only with ``-o autodefine``; else the
  write is refused (EACCES) with the near miss and how to define it;
- every refusal says why, with the errno that says it (butlerfs.errors).

Every call that changes repositories holds the tree's lock (see butlerfs.tree).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
from pathlib import Path

import trio

from butler import formats
from butler.errors import ButlerError, DatasetNotFoundError, FormatError
from butler.formats.base import check_start
from butler.resolver import DatasetRef
from butler.view import REPOS, Area, WriteTarget, locate
from butlerfs import scratch
from butlerfs.entries import Entry
from butlerfs.errors import errno_of, refusal
from butlerfs.exits import Exit, holds_for_writing
from butlerfs.logbook import Refusal
from butlerfs.scratch import Draft, is_scratch_path
from butlerfs.tree import Tree, dataset_paths

log = logging.getLogger("butlerfs")

#: A closing process with more descriptors than this is looked at in a worker thread
#: (one /proc read each); a cp, a pipeline task holds a few dozen.
HOLDS_AT_ONCE = 256

#: A draft made for a writer that was told to look its path up again (ESTALE) is
#: dropped if no open has claimed it after this long (the kernel retries at once).
UNCLAIMED_SECONDS = 10.0


class Writes:
    """Changes made through the mount, on a :class:`~butlerfs.tree.Tree`."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.worker = tree.worker
        self._formats_loaded: set[str] = set()  # checked on the trio thread from then on

    # -- where writes may go ----------------------------------------------------

    def check_writable(self, path: str) -> None:
        """EROFS, with the reason, unless ``path`` is in the writable union view or below
        an output's ``.repos/<label>/``."""
        tree = self.tree
        if tree.settings.read_only:
            raise refusal(errno.EROFS, f"/{path}: the mount is read-only (mounted with -o ro)")
        place = locate(path)
        outputs = tree.view.outputs
        if place.area is Area.REPOS:
            if place.relative and tree.repo_output(path) is not None:
                return
            if not place.relative:
                reason = f"{REPOS}/ lists the repositories; write inside an output's directory"
            else:
                reason = f"{place.label} is not an output, and inputs are never changed; write"
                reason += " at the dataset's path in the top-level view, or under an output's"
            raise refusal(
                errno.EROFS, f"/{path}: {reason} (outputs: {', '.join(outputs) or 'none'})"
            )
        if place.area is not Area.UNION:
            raise refusal(
                errno.EROFS,
                f"/{path}: {place.area.value}/ is read-only; write at the dataset's template "
                "path in the top-level view instead",
            )
        if not outputs:
            raise refusal(errno.EROFS, f"/{path}: this mount has no output repository")

    async def _classify(self, path: str) -> WriteTarget:
        """What a file at ``path`` would be put as; EROFS / EACCES with the reason."""
        view = self.tree.view
        target = None
        if locate(path).area is Area.UNION:
            # Templates and the policy, in memory: answered at once (a .repos/ path may
            # read its repository's configuration, so it goes to a worker).
            with contextlib.suppress(RuntimeError):  # the policy changed under us (the poll)
                target = view.classify_write(path)
        if target is None:
            target = await self.worker.run(view.classify_write, path)
        if target.define_genre is not None and not self.tree.settings.autodefine:
            raise view.undefined_type_error(path, target)
        return target

    # -- drafts ------------------------------------------------------------------

    async def create(self, path: str, mode: int) -> Draft:
        """A new draft at ``path``: a scratch name, or a template path an output accepts.
        It starts in memory (butlerfs.scratch): no file, no thread."""
        self.check_writable(path)
        content = None
        if not is_scratch_path(path):
            content = (await self._classify(path)).content_format
        draft = scratch.in_memory(path, mode & 0o777 or 0o644, content)
        self.tree.drafts.add(draft)
        return draft

    async def open_for_writing(self, path: str) -> Draft:
        """The draft to write at ``path``: the open one, or a new one based on the dataset."""
        tree = self.tree
        draft = tree.drafts.get(path)
        if draft is not None:
            return draft
        self.check_writable(path)
        entry = await tree.stat(path)
        ref = entry.ref
        if ref is None:
            raise refusal(errno.EISDIR, f"/{path} is a directory")
        if locate(path).area is Area.REPOS:
            raise refusal(
                errno.EROFS,
                f"/{path}: a dataset under {REPOS}/ is not overwritten in place; write a "
                "'.' name beside it and rename it over (a new version in this output only), "
                "or overwrite it in the top-level view (every output)",
            )
        target = await self._classify(path)
        base = await self.worker.run(tree.view.open_version, ref)
        assert base is not None
        try:
            draft = await self._new_draft(path, base, entry.size, 0o644, target.content_format)
        except BaseException:
            os.close(base)
            raise
        # The kernel's entry names the version's inode: other opens of the path must now
        # find the draft (while the version's inode keeps showing the version).
        tree.changed_here(path)
        return draft

    async def _new_draft(
        self, path: str, base: int | None, size: int, mode: int, content: str | None
    ) -> Draft:
        suffix = "" if is_scratch_path(path) else posixpath.splitext(path)[1]
        file, fd = await self.worker.run(self.tree.scratch.create_file, suffix)
        draft = Draft(path, file, fd, base, size, mode, content)
        self.tree.drafts.add(draft)
        return draft

    def attach(self, draft: Draft, writable: bool) -> None:
        """One more open handle on ``draft``."""
        draft.handles += 1
        draft.writers += writable

    def detach(self, draft: Draft, writable: bool) -> None:
        """Undo :meth:`attach` of an open that is refused after all (nothing written)."""
        draft.handles -= 1
        draft.writers -= writable

    async def write(self, draft: Draft, offset: int, data: bytes) -> int:
        """Write to the draft; bytes at offset 0 must be able to begin its format's file."""
        storage = draft.content_format
        if offset == 0 and storage is not None and not draft.is_scratch:
            if storage in self._formats_loaded:
                _check_start(storage, data, draft.path)  # a few bytes compared: no hop
            else:  # the first use of a format imports its library (astropy...)
                await self.worker.run(_check_start, storage, data, draft.path)
                self._formats_loaded.add(storage)
        return await scratch.write(draft, self.tree.scratch, self.worker, offset, data)

    def ready_to_commit(self, draft: Draft) -> bool:
        """At the close of a writer: is it the last writer of a changed template-path draft?"""
        return draft.dirty and draft.writers == 1 and not draft.is_scratch and not draft.discarded

    async def closed_by(self, draft: Draft, state: Exit, pid: int, wrote: bool, inode: int) -> None:
        """A flush of a writable handle by task ``pid``: commit if it is the last close of
        the last writer; discard if the task was killed."""
        if state is Exit.KILLED:
            if wrote and not draft.discarded:
                await self.abandon(draft, pid)
            return  # a killed task's close is never a put
        if not self.ready_to_commit(draft):
            return
        # /proc reads never wait for a disk: at once, unless the process has many files.
        holds = holds_for_writing(pid, inode, most=HOLDS_AT_ONCE)
        if holds is None:
            holds = await self.worker.run(holds_for_writing, pid, inode)
        if holds:
            return  # a duplicate was closed (dup, numpy's tofile): its last close commits
        await self.commit(draft)

    async def abandon(self, draft: Draft, pid: int) -> None:
        """The writer was killed by a signal: its draft is not finished, so it is dropped."""
        reason = (
            f"/{draft.path}: the writing process (pid {pid}) was killed by a signal before "
            "it finished: nothing was put, the draft is discarded; write the file again"
        )
        log.warning(
            "discarded the draft of /%s: the writing process (pid %d) was killed by a signal",
            draft.path,
            pid,
            extra={"refusal": Refusal("close", draft.path, "DISCARDED", reason)},
        )
        await self.discard(draft)

    async def release(self, draft: Draft, writable: bool) -> None:
        """A handle closed.  The last writer of a template-path draft ends it: put, drop."""
        draft.handles -= 1
        draft.writers -= writable
        if draft.discarded:
            if draft.handles == 0 and scratch.has_file(draft):
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
        """Put the draft's bytes as the dataset at ``path`` (default: its own path).

        Puts share the tree's lock, so that closes arriving together reach the library
        together (it commits them as one batch); a put that must define its dataset type
        first (``-o autodefine``) takes it alone.
        """
        tree = self.tree
        target = draft.path if path is None else path
        await scratch.prepare(draft, self.worker)
        draft.dirty = False  # consumed, whether the put succeeds or not: no retry at release
        payload = scratch.payload(draft)  # the bytes of a draft in memory, as they are now
        file = draft.file
        if payload is not None:
            file = tree.scratch.new_name(posixpath.splitext(target)[1])
        failure = None
        try:
            try:
                async with tree.lock.shared():
                    refs = await self.worker.run(self._put, draft, target, payload, file, False)
            except _MustDefine:
                async with tree.lock.exclusive():
                    refs = await self.worker.run(self._put, draft, target, payload, file, True)
        except ButlerError as exc:
            # The library names the scratch file, which means nothing to the user.
            reason = str(exc).replace(str(file), f"the bytes written to /{target}")
            failure = refusal(errno_of(exc), f"/{target}: nothing was put: {reason}")
        if failure is not None:
            raise failure  # outside the except: nothing keeps the failed put's frames alive
        tree.changed_here(target)
        for ref in refs:  # the same dataset in the other namespaces, before the poll sees it
            for each in dataset_paths(ref.repository, ref.relative_path):
                if each != target:
                    tree.changed_here(each)
        labels = ", ".join(ref.repository for ref in refs)
        log.info("put /%s: %s v%d to %s", target, refs[0].dataset_type, refs[0].version, labels)
        return refs

    def _put(
        self, draft: Draft, path: str, payload: bytes | None, file: Path | None, define: bool
    ) -> list[DatasetRef]:
        """The put, in a worker: ``payload`` (a draft in memory) is written to ``file`` for
        the library to ingest, and removed after; else the draft's own file is put."""
        view = self.tree.view
        target = view.classify_write(path)
        if target.define_genre is not None:
            if not self.tree.settings.autodefine:
                raise view.undefined_type_error(path, target)
            if not define:
                raise _MustDefine
            view.butler.define(target.dataset_type, genre=target.define_genre)
            view.refresh()
        if payload is None:
            self.tree.scratch.with_suffix(draft, posixpath.splitext(path)[1])
            file = draft.file
        else:
            assert file is not None
            self.tree.scratch.written(file, payload)
        assert file is not None
        provenance = {"butlerfs": {"mountpoint": self.tree.settings.mountpoint, "path": path}}
        try:
            return view.butler.ingest(
                file,
                target.dataset_type,
                dict(target.data_id),
                provenance=provenance,
                outputs=target.outputs,  # a .repos/<label>/ path: that output alone
            )
        finally:
            if payload is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(file)

    async def discard(self, draft: Draft) -> None:
        """Forget a draft; its file goes now, its fds with the last handle."""
        tree = self.tree
        if tree.drafts.get(draft.path) is draft:
            tree.drafts.pop(draft.path)
            tree.changed_here(draft.path)  # the kernel's entry was the draft's
        draft.discarded = True
        tree.scratch.forget_memory(draft)
        if scratch.has_file(draft):
            await self.worker.run(scratch.close_file, draft)

    async def truncate_draft(self, draft: Draft) -> None:
        """Empty an open draft (``open`` with ``O_TRUNC``): the version it was based on is
        never copied in."""
        await scratch.truncate(draft, self.tree.scratch, self.worker, 0)

    def reclaim_unclaimed(self, draft: Draft) -> None:
        """Drop ``draft`` later if no open claims it (a writer told ESTALE to look its path
        up again may never come back: /proc/PID/fd/N cannot be looked up again)."""
        trio.lowlevel.spawn_system_task(self._reclaim, draft, name="butlerfs: unclaimed draft")

    async def _reclaim(self, draft: Draft) -> None:
        await trio.sleep(UNCLAIMED_SECONDS)
        if draft.handles or draft.discarded or draft.dirty:
            return
        try:
            await self.discard(draft)
        except Exception as exc:  # a system task must not raise: it would end the mount
            log.warning("dropping the unclaimed draft of /%s: %s", draft.path, exc)

    async def truncate(self, path: str, size: int) -> Entry:
        """``truncate``/``O_TRUNC``: of a draft, in place; of a dataset, a new version now."""
        tree = self.tree
        draft = tree.drafts.get(path)
        if draft is not None:
            await scratch.truncate(draft, tree.scratch, self.worker, size)
            return tree.draft_entry(draft)
        draft = await self.open_for_writing(path)
        try:
            await scratch.truncate(draft, tree.scratch, self.worker, size)
            await self.commit(draft)
        finally:
            await self.discard(draft)
        return await tree.stat(path)

    async def set_mode(self, path: str, mode: int) -> Entry:
        """chmod: a draft keeps it (rsync sets it before the rename); datasets ignore it."""
        draft = self.tree.drafts.get(path)
        if draft is None:
            return await self.tree.stat(path)
        draft.mode = mode & 0o777
        return self.tree.draft_entry(draft)

    # -- directories, unlink, rename ------------------------------------------------

    async def mkdir(self, path: str) -> Entry:
        tree = self.tree
        self.check_writable(path)
        if await self._exists(path):
            raise refusal(errno.EEXIST, f"/{path} exists")
        if not is_scratch_path(path) and not tree.view.is_template_directory(path):
            raise refusal(
                errno.EACCES,
                f"/{path}: no dataset type's template has such a directory; see the "
                "templates in .butler/status",
            )
        tree.make_directory(path)
        return tree.known(path) or await tree.stat(path)

    async def rmdir(self, path: str) -> None:
        tree = self.tree
        self.check_writable(path)
        entry = await tree.stat(path)
        if not entry.is_directory:
            raise refusal(errno.ENOTDIR, f"/{path} is not a directory")
        if await tree.listdir(path):
            raise refusal(errno.ENOTEMPTY, f"/{path} is not empty")
        parent, name = posixpath.split(path)
        tree.made.get(parent, set()).discard(name)

    async def unlink(self, path: str) -> None:
        """Delete a draft, or remove a dataset from every output holding it."""
        tree = self.tree
        draft = tree.drafts.get(path)
        if draft is not None:
            await self.discard(draft)
            return
        self.check_writable(path)
        entry = await tree.stat(path)
        if entry.ref is None:
            raise refusal(errno.EISDIR, f"/{path} is a directory")
        ref = entry.ref
        async with tree.lock.shared():
            labels = await self.worker.run(self._remove, ref, path)
        tree.changed_here(path)
        for label in labels:  # the same dataset in the other namespaces
            for each in dataset_paths(label, ref.relative_path):
                if each != path:
                    tree.changed_here(each)

    def _remove(self, ref: DatasetRef, path: str) -> list[str]:
        """Remove from every output holding it, or (``.repos/<label>/``) from that one."""
        butler = self.tree.view.butler
        label = self.tree.repo_output(path)
        if label is not None:
            labels = butler.remove(ref.dataset_type, ref.data_id, outputs=[label])
        else:
            try:
                labels = butler.remove(ref.dataset_type, ref.data_id)
            except DatasetNotFoundError:
                raise refusal(
                    errno.EROFS,
                    f"/{path}: only input {ref.repository} holds it, and inputs are never changed",
                ) from None
        log.info("removed /%s from %s", path, ", ".join(labels))
        return labels

    async def rename(self, old: str, new: str, *, replace: bool = True) -> Draft | None:
        """Only a scratch file moves: within scratch (returned, with its new path), or onto a
        template path (a put; None)."""
        tree = self.tree
        draft = tree.drafts.get(old)
        if draft is None or not draft.is_scratch:
            await tree.stat(old)  # ENOENT if there is nothing to rename
            raise refusal(
                errno.EXDEV,
                f"/{old} → /{new}: datasets are not renamed in place; copy and delete "
                "(mv does this by itself)",
            )
        self.check_writable(new)
        if not replace and await self._exists(new):
            raise refusal(errno.EEXIST, f"/{new} exists (rename without replace)")
        if is_scratch_path(new):
            replaced = tree.drafts.get(new)
            if replaced is not None:
                await self.discard(replaced)
            tree.drafts.move(draft, new)
            return draft
        await self._classify(new)  # EROFS / EACCES before anything is put
        await self.commit(draft, new)
        await self.discard(draft)
        return None

    async def _exists(self, path: str) -> bool:
        try:
            await self.tree.stat(path)
        except DatasetNotFoundError:
            return False
        return True


def _check_start(storage: str, data: bytes, path: str) -> None:
    """FormatError (EINVAL) if ``data`` cannot begin a file of ``storage``."""
    try:
        check_start(formats.get_format(storage), bytes(data[:64]))
    except FormatError as exc:
        raise FormatError(
            f"/{path}: {exc}; nothing was written (write a {storage} file, or name the file "
            "with the extension of its format)"
        ) from None


class _MustDefine(Exception):
    """The put must define its dataset type first: it is retried holding the lock alone."""
