"""Changes made elsewhere appear in the mount: notices or a poll, and kernel invalidations.

The kernel caches entries and attributes for long (see butlerfs.attributes),
and keeps file pages across opens (``keep_cache``); so every change to a path
must reach it as an invalidation of the path's directory entry: the next
lookup then gets the new version's inode (butlerfs.inodes), while files still
open on the old version keep its inode, attributes and pages, which are still
exactly that version's (a directory's attributes are dropped too).
:func:`watch_changes` learns of changes made by other processes (and hosts) in
one of two ways:

- when every repository's registry pushes its changes (PostgreSQL: a ``NOTIFY``
  at every commit), :func:`listen_for_changes` waits on those connections'
  sockets and asks what changed only when a notice arrives: no polling, and a
  put on any host shows here within milliseconds (ACCEPTANCE 30).  If a
  connection is lost, nothing can be verified any more: the daemon drops what
  it keeps in memory and the kernel's caches, so reads ask the registry (and
  fail with EIO, logged, while it is away); it reconnects by itself and then
  catches up with everything that changed meanwhile (the change log persists);
- otherwise :func:`poll_changes` asks the library every 0.3 s what changed
  (``View.changes_since``: one indexed query per repository), so a put by
  another process shows within a second (ACCEPTANCE 23).

This daemon's own puts, removes and renames push their paths directly.

Invalidations run in a thread of their own: the kernel may hold them until a
request on the same inode is answered, and that request is answered by the
trio loop, which therefore must not be the one waiting.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import posixpath

import pyfuse3
import trio

from butler.registry import Notices
from butlerfs.inodes import InodeId, InodeTable
from butlerfs.tree import Tree

log = logging.getLogger("butlerfs")

#: Three polls a second: changes show well within the promised second, at a few
#: indexed MAX() queries per poll.
POLL_SECONDS = 0.3
#: After a lost notice connection, the next attempt to open it; the first notice of
#: each failure is logged, then nothing until it changes or succeeds.
RECONNECT_SECONDS = 1.0
#: How often the listener checks, asking no server, that it still listens to every
#: repository of the view (a SIGHUP reload, an output created by a first write).
MEMBERS_SECONDS = 2.0


class Invalidator:
    def __init__(self, inodes: InodeTable) -> None:
        self._inodes = inodes
        self._send, self._receive = trio.open_memory_channel[str](math.inf)
        self._limiter = trio.CapacityLimiter(1)

    def changed(self, path: str) -> None:
        """Drop the kernel's entry of ``path`` (and a directory's attributes)."""
        self._send.send_nowait(path)

    def everything(self) -> None:
        for _, path in self._inodes.items():
            if path:
                self.changed(path)

    async def run(self) -> None:
        async for path in self._receive:
            paths = {path}
            while True:
                try:
                    paths.add(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            targets = [self._targets(each) for each in sorted(paths)]
            await trio.to_thread.run_sync(_invalidate, targets, limiter=self._limiter)

    def _targets(self, path: str) -> tuple[InodeId | None, InodeId | None, bytes]:
        parent, name = posixpath.split(path)
        return self._inodes.known(path), self._inodes.known(parent), os.fsencode(name)


def _invalidate(targets: list[tuple[InodeId | None, InodeId | None, bytes]]) -> None:
    for inode, parent, name in targets:
        try:
            if parent is not None:
                pyfuse3.invalidate_entry(parent, name)
            if inode is not None:
                pyfuse3.invalidate_inode(inode)
        except OSError as exc:
            # ENOENT: the kernel had already dropped it, which is what we wanted.
            if exc.errno != errno.ENOENT:
                log.debug("invalidating %s: %s", name, exc)


async def poll_changes(tree: Tree, invalidator: Invalidator) -> None:
    """Forever: every POLL_SECONDS, invalidate the paths the library says changed."""
    failing = ""
    while True:
        await trio.sleep(POLL_SECONDS)
        try:
            paths = await tree.changes()
        except Exception as exc:  # a broken repository must not end the mount
            if str(exc) != failing:
                log.warning("watching for changes failed (will retry): %s", exc)
                failing = str(exc)
            continue
        failing = ""
        for path in paths:
            invalidator.changed(path)


async def watch_changes(tree: Tree, invalidator: Invalidator) -> None:
    """Forever: listen for notices when every repository sends them, else poll."""
    failing = ""
    while True:
        view = tree.view
        try:
            notices = await tree.worker.run(view.notices)
        except Exception as exc:
            failing = _lost(tree, invalidator, exc, failing)
            await trio.sleep(RECONNECT_SECONDS)
            continue
        if notices is None:
            await poll_changes(tree, invalidator)
            return
        try:
            await _catch_up(tree, invalidator)  # what changed while nobody listened
            if failing:
                log.warning("listening for changes again; caught up with what changed meanwhile")
                failing = ""
            await listen_for_changes(tree, invalidator, notices)
        except Exception as exc:
            failing = _lost(tree, invalidator, exc, failing)
            await trio.sleep(RECONNECT_SECONDS)
        finally:
            for each in notices:
                each.close()


async def listen_for_changes(tree: Tree, invalidator: Invalidator, notices: list[Notices]) -> None:
    """Invalidate what changed at each notice; return when the view's repositories are no
    longer the ones listened to.  Raises when a connection is lost."""
    view = tree.view
    members = view.member_paths()
    while tree.view is view and view.member_paths() == members:
        with trio.move_on_after(MEMBERS_SECONDS):
            await _any_readable([each.fileno() for each in notices])
            if sum(each.drain() for each in notices):
                await _catch_up(tree, invalidator)


async def _any_readable(fds: list[int]) -> None:
    if len(fds) == 1:
        await trio.lowlevel.wait_readable(fds[0])
        return
    async with trio.open_nursery() as nursery:
        for fd in fds:
            nursery.start_soon(_readable_then_cancel, fd, nursery.cancel_scope)


async def _readable_then_cancel(fd: int, scope: trio.CancelScope) -> None:
    await trio.lowlevel.wait_readable(fd)
    scope.cancel()


async def _catch_up(tree: Tree, invalidator: Invalidator) -> None:
    for path in await tree.changes():
        invalidator.changed(path)


def _lost(tree: Tree, invalidator: Invalidator, exc: Exception, failing: str) -> str:
    """Notices stopped: forget what cannot be verified now; log each new reason once."""
    tree.forget_cached()
    invalidator.everything()
    if str(exc) != failing:
        log.warning(
            "not told of changes any more (will reconnect; until then reads ask the "
            "registry and fail if it cannot answer): %s",
            exc,
        )
    return str(exc)
