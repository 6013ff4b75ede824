"""Who may write a repository now, and which writers are alive.

Two questions the write protocol asks, answered with ``flock`` on files of
the repository (the embedded engine; a PostgreSQL-registered repository
answers them with the database's advisory locks instead, because ``flock`` on
shared filesystems is unreliable):

- the **repository lock** (``.butler/lock``): held from a put's prepare to its
  apply, by one writer at a time (also between the threads of one process);
- **owners**: every writing process holds ``.butler/staging/owner-<tag>.lock``
  locked for as long as it lives, and names its staged files after its tag, so a
  staged file whose owner's lock can be taken is a dead writer's leftover.

An owner's lock file appears under its final name already locked: it is
created under a temporary name, locked, then renamed.  So no one can find an
owner's file unlocked and judge a live writer dead (a file created and locked
in two steps could be found in between).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Protocol

from butler import layout
from butler.confine import Root
from butler.errors import RepositoryError, os_error_text


class Locks(Protocol):
    """What the write protocol asks of a repository's locks, whatever answers it:
    :class:`FileLocks` here, ``butler.postgres.session.DatabaseLocks`` for a
    PostgreSQL-registered repository."""

    def repository(self) -> contextlib.AbstractContextManager[None]: ...
    def owner(self) -> str: ...
    def owner_alive(self, tag: str) -> bool: ...
    def release(self) -> None: ...


def _lock_error(exc: OSError, what: str, root: Root) -> RepositoryError:
    return RepositoryError(
        f"cannot take the {what} of repository {root.path}: {os_error_text(exc)}; check that "
        "its .butler directory exists and is writable by this user",
        errno=exc.errno,
    )


class FileLocks:
    """The repository lock and owner locks of one repository, as ``flock``s."""

    def __init__(self, root: Root) -> None:
        self._root = root
        self._thread_lock = threading.RLock()
        self._fd: int | None = None
        self._pid = 0
        self._owner: tuple[int, str, int] | None = None  # (pid, tag, fd)
        self._owner_lock = threading.Lock()

    @contextlib.contextmanager
    def repository(self) -> Iterator[None]:
        """Exclusive between processes (flock) and between this process's threads.

        Re-entrant within a thread.  The descriptor is kept open (reopened after a fork,
        whose child must not share the parent's lock).
        """
        with self._thread_lock:
            try:
                if self._fd is None or self._pid != os.getpid():
                    self._fd = self._root.open(layout.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
                    self._pid = os.getpid()
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except OSError as exc:
                raise _lock_error(exc, "write lock", self._root) from None
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def owner(self) -> str:
        """This process's owner tag, its lock taken (and its file made) on first use."""
        with self._owner_lock:
            if self._owner is not None and self._owner[0] == os.getpid():
                return self._owner[1]
            for _ in range(10):
                tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
                temporary = f"{layout.STAGING}/new-owner-{tag}.lock"
                try:
                    fd = self._root.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except OSError as exc:
                    raise _lock_error(exc, "owner lock", self._root) from None
                try:
                    self._root.rename(temporary, layout.owner_lock(tag))
                except FileNotFoundError:
                    # Taken for a dead writer's and removed between our open and our lock:
                    # start again under a new name.
                    os.close(fd)
                    continue
                except OSError as exc:
                    os.close(fd)
                    raise _lock_error(exc, "owner lock", self._root) from None
                self._owner = (os.getpid(), tag, fd)
                return tag
            raise RepositoryError(
                f"cannot make an owner lock in {self._root.path}: another process keeps "
                "removing them; check for a misbehaving cleaner",
                errno=errno.EAGAIN,
            )

    def owner_alive(self, tag: str) -> bool:
        """Does the process that owns ``tag`` still hold its lock?"""
        with self._owner_lock:
            if self._owner is not None and self._owner[1] == tag and self._owner[0] == os.getpid():
                return True
        return _held(self._root, layout.owner_lock(tag))

    def release(self) -> None:
        """Give up this process's owner tag (at close): its file goes with it."""
        with self._owner_lock:
            if self._owner is not None and self._owner[0] == os.getpid():
                _, tag, fd = self._owner
                with contextlib.suppress(OSError):
                    self._root.unlink(layout.owner_lock(tag))
                os.close(fd)
            self._owner = None
        with self._thread_lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # dropped unclosed: its descriptors go, and its tag dies
        with contextlib.suppress(Exception):
            self.release()


def _held(root: Root, relative: str) -> bool:
    """Is the lock file ``relative`` held by someone (False if it is gone)?"""
    try:
        fd = root.open(relative, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def sweep_owner_files(root: Root, locks: Locks) -> set[str]:
    """Remove the lock files of dead owners (and their half-made ones); live owners' tags."""
    alive: set[str] = set()
    for name in root.listdir(layout.STAGING):
        if name.startswith("owner-") and name.endswith(".lock"):
            tag = name[len("owner-") : -len(".lock")]
            if locks.owner_alive(tag):
                alive.add(tag)
            else:
                root.unlink(layout.owner_lock(tag))
        elif name.startswith("new-owner-") and not _held(root, f"{layout.STAGING}/{name}"):
            root.unlink(f"{layout.STAGING}/{name}")
    return alive
