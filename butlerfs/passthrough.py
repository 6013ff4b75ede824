"""FUSE passthrough: reads of committed datasets served by the kernel from their files.

A committed dataset opened for reading is answered with a *backing id*: the kernel
then reads (and maps) the version's own file directly, and the daemon sees no
``read`` at all (docs/passthrough.md has the patched pyfuse3 and the kernel's
rules).  Everything else stays in the daemon: drafts and writes, the mount's own
``.butler/`` files, and every open of a mount where passthrough is off.

Used when all of these hold, decided once at start (:meth:`Passthrough.start`) and
shown as ``"passthrough": "on"`` or ``"off: <reason>"`` in ``.butler/status``:

- pyfuse3 is the patched build (``pyfuse3.BUTLERFS_PATCH``), and the mount was not
  made with ``-o passthrough=off``;
- the kernel granted it at INIT (Linux >= 6.9 with ``CONFIG_FUSE_PASSTHROUGH``);
- the daemon may register backing files: the kernel checks ``capable(CAP_SYS_ADMIN)``,
  so a per-user mount (an ordinary user's daemon) serves reads itself.  A probe
  registers one repository file at start; an ``EPERM`` later turns it off too.

The kernel's rules, kept here for every inode (a file's inode names one version,
butlerfs.inodes, so one version's file is one inode's backing file):

- one backing id per inode, shared by all its opens, released at the ``release``
  of the last one (none outlive their opens: :attr:`Passthrough.backing_ids` is the
  count of live ones);
- all concurrent opens of an inode of one kind: while an inode has passthrough opens,
  every new open of it is one too; while it has opens served by the daemon (an open
  that fell back, a draft written through a version's inode), so are new ones;
- no ``keep_cache`` on a passthrough open (the pages are the backing file's own).

A registration that fails for one file (``ELOOP``: a repository on overlayfs, or
``EMFILE``) falls back to the daemon for that open, logged once per reason.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3

from butlerfs.options import PASSTHROUGH_MODES

log = logging.getLogger("butlerfs")

#: pyfuse3 built with tools/build-passthrough.sh (docs/passthrough.md).
PATCHED = getattr(pyfuse3, "BUTLERFS_PATCH", 0) >= 1

ON = "on"
NOT_PATCHED = (
    f"pyfuse3 {pyfuse3.__version__} is not the patched build (make setup builds it: "
    "docs/passthrough.md)"
)
NOT_ASKED = "mounted with -o passthrough=off"
NOT_GRANTED = "the kernel did not grant it (it needs Linux >= 6.9 with CONFIG_FUSE_PASSTHROUGH)"
NO_CAPABILITY = (
    "the daemon lacks CAP_SYS_ADMIN, which the kernel requires to register backing "
    "files (a per-user mount)"
)


@dataclass
class _Opens:
    """The open files of one inode: passthrough ones (``backing_id`` > 0) or daemon ones."""

    backing_id: int
    count: int


class Passthrough:
    """Backing ids of the mount's inodes, and whether passthrough is used at all."""

    def __init__(self, mode: str = "auto") -> None:
        if mode not in PASSTHROUGH_MODES:
            raise ValueError(f"passthrough={mode}: give one of {', '.join(PASSTHROUGH_MODES)}")
        #: Ask the kernel for passthrough at INIT (``Operations.enable_passthrough``).
        self.requested = PATCHED and mode == "auto"
        self._off = NOT_ASKED if mode == "off" else None if PATCHED else NOT_PATCHED
        self._started = False
        self._opens: dict[int, _Opens] = {}
        self._failures: set[int] = set()  # errnos of failed registrations, logged once each
        #: Counters for .butler/status (and the tests): opens answered with a backing id,
        #: backing ids registered, registrations that fell back to the daemon.
        self.passthrough_opens = 0
        self.registered = 0
        self.fallbacks = 0

    # -- the mount's decision ----------------------------------------------------------

    @property
    def on(self) -> bool:
        return self._started and self._off is None

    @property
    def state(self) -> str:
        """``"on"``, or ``"off: <reason>"`` (``.butler/status``)."""
        if self._off is not None:
            return f"off: {self._off}"
        return ON if self._started else "off: the mount has not started yet"

    def start(self, probes: Iterable[Path]) -> None:
        """Decide, once the kernel has answered INIT; says what was decided in the log.

        ``probes``: regular files on the repositories' file systems; the first that opens
        is registered and released again, which shows whether the kernel accepts this
        daemon's backing files there (CAP_SYS_ADMIN, the stacking depth).
        """
        self._started = True
        if self._off is None and not pyfuse3.passthrough_enabled():
            self._off = NOT_GRANTED
        if self._off is None:
            self._probe(probes)
        if self._off is None:
            log.info(
                "FUSE passthrough: on (committed datasets opened for reading are read by the "
                "kernel from their version's file)"
            )
        else:
            log.info("FUSE passthrough: off: %s; files are served through the daemon", self._off)

    def _probe(self, probes: Iterable[Path]) -> None:
        for path in probes:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                backing_id = pyfuse3.passthrough_open(fd)
            except OSError as exc:
                self._off = _reason(exc, path)
                return
            finally:
                os.close(fd)
            pyfuse3.passthrough_close(backing_id)
            return
        # Nothing to probe with (no repository file opened): the first open decides.

    # -- the inodes' opens ------------------------------------------------------------------

    @property
    def tracking(self) -> bool:
        """Whether opens are counted per inode: from start until passthrough is known off
        (an open the daemon serves before :meth:`start` still binds its inode's kind)."""
        return self.requested and self._off is None

    def current(self, inode: int) -> int | None:
        """The backing id ``inode``'s open files use (> 0), 0 if the daemon serves them,
        None if it has none open."""
        opens = self._opens.get(inode)
        return None if opens is None else opens.backing_id

    def passes(self, inode: int) -> bool:
        """Has ``inode`` open passthrough files (so every new open of it must be one)?"""
        opens = self._opens.get(inode)
        return opens is not None and opens.backing_id > 0

    def attach(self, inode: int) -> int:
        """One more open of ``inode``, of the kind of those open: their backing id, or 0."""
        opens = self._opens[inode]
        opens.count += 1
        if opens.backing_id:
            self.passthrough_opens += 1
        return opens.backing_id

    def register(self, inode: int, fd: int) -> int:
        """An open of ``inode`` on the version's file ``fd``: its backing id, or 0 when the
        daemon serves it.  The caller keeps ``fd`` only when 0 is returned (the kernel
        holds its own reference to a backing file)."""
        if inode in self._opens:  # opened meanwhile (the caller waited for a thread)
            return self.attach(inode)
        backing_id = 0
        if self.on:
            try:
                backing_id = pyfuse3.passthrough_open(fd)
            except OSError as exc:
                self._refused(exc)
            else:
                self.registered += 1
                self.passthrough_opens += 1
        self._opens[inode] = _Opens(backing_id, 1)
        return backing_id

    def hold(self, inode: int) -> None:
        """An open of ``inode`` the daemon serves (a draft written through a version's
        inode): later opens of the inode are served by the daemon too while it is open."""
        opens = self._opens.get(inode)
        if opens is None:
            self._opens[inode] = _Opens(0, 1)
        else:
            opens.count += 1

    def release(self, inode: int) -> None:
        """A counted open of ``inode`` closed; the last one releases its backing id."""
        opens = self._opens.get(inode)
        if opens is None:
            return
        opens.count -= 1
        if opens.count > 0:
            return
        del self._opens[inode]
        if opens.backing_id:
            try:
                pyfuse3.passthrough_close(opens.backing_id)
            except (OSError, RuntimeError) as exc:  # unmounting: the kernel drops them all
                log.warning("releasing backing id %d: %s", opens.backing_id, exc)

    @property
    def backing_ids(self) -> int:
        """Backing ids registered and not yet released."""
        return sum(1 for opens in self._opens.values() if opens.backing_id)

    def _refused(self, exc: OSError) -> None:
        self.fallbacks += 1
        if exc.errno == errno.EPERM:  # the capability: no backing file will be accepted
            self._off = NO_CAPABILITY
            log.warning("FUSE passthrough: off: %s; files are served through the daemon", self._off)
            return
        if exc.errno not in self._failures:
            self._failures.add(exc.errno or 0)
            log.warning(
                "FUSE passthrough: a backing file was refused (%s): such files are served "
                "through the daemon",
                _reason(exc, None),
            )

    def status(self) -> dict[str, object]:
        return {
            "passthrough": self.state,
            "passthrough_opens": self.passthrough_opens,
            "backing_ids": self.backing_ids,
            "backing_ids_registered": self.registered,
            "passthrough_fallbacks": self.fallbacks,
        }


def _reason(exc: OSError, path: Path | None) -> str:
    where = f" of {path}" if path is not None else ""
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    if exc.errno == errno.EPERM:
        return NO_CAPABILITY
    if exc.errno == errno.ELOOP:
        return (
            f"the kernel refused the backing file{where} (ELOOP): the repositories are on a "
            "stacking file system (overlayfs) deeper than passthrough allows"
        )
    return f"the kernel refused the backing file{where} ({name}: {os.strerror(exc.errno or 0)})"
