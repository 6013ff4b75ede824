"""Changes made elsewhere appear in the mount: a poll, and kernel cache invalidations.

The kernel caches entries and attributes for long (see butlerfs.attributes),
and keeps file pages across opens (``keep_cache``); so every change to a path
must reach it as an invalidation of the path's directory entry: the next
lookup then gets the new version's inode (butlerfs.inodes), while files still
open on the old version keep its inode, attributes and pages, which are still
exactly that version's (a directory's attributes are dropped too):

- :func:`poll_changes` asks the library every 0.3 s what changed
  (``View.changes_since``: one indexed query per repository), so a put by
  another process shows within a second (ACCEPTANCE 23);
- this daemon's own puts, removes and renames push their paths directly.

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

from butlerfs.inodes import InodeId, InodeTable
from butlerfs.tree import Tree

log = logging.getLogger("butlerfs")

#: Three polls a second: changes show well within the promised second, at a few
#: indexed MAX() queries per poll.
POLL_SECONDS = 0.3


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
