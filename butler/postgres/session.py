"""Who may write a PostgreSQL-registered repository: advisory locks, not ``flock``.

The same two questions as :mod:`butler.locks` answers with files, answered by
the database, because ``flock`` on NFS, CephFS or Lustre is honoured badly or
not at all between hosts:

- the **repository lock**: a session-level ``pg_advisory_lock`` on a key made
  from the schema, held from a put's prepare to its apply;
- **owners**: each writing process holds an advisory lock on a key made from
  its owner tag for as long as it lives; ``owner_alive(tag)`` asks whether that
  lock can be taken (and gives it back at once).  The tag's file
  ``.butler/staging/owner-<tag>.lock`` is still made, as a plain empty file, so
  the sweep of :func:`butler.locks.sweep_owner_files` finds the tag; its
  liveness comes from the database.

Both locks, and every write transaction, live on one dedicated connection per
repository object (a :class:`Session`): the write transaction runs on the
session that holds the repository lock, so a writer cannot lose its lock (the
server restarted, the network dropped) and go on committing.  If the session
breaks while the lock is held, everything on it fails; a committed put is then
finished by the next writer's recovery.  A session that broke while idle is
opened again at the next use, and takes its owner lock again under the same tag.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator

import psycopg

from butler import layout
from butler.confine import Root
from butler.errors import RepositoryError
from butler.postgres.connect import Address, Connection, Pool, connect, database_error


def lock_key(schema: str, kind: str, name: str = "") -> int:
    """A signed 64-bit advisory-lock key for (schema, kind, name): unique per database."""
    digest = hashlib.blake2b(f"butler\0{schema}\0{kind}\0{name}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


class Session:
    """The dedicated connection of one repository object in one process."""

    def __init__(self, address: Address, schema: str) -> None:
        self.address = address
        self.schema = schema
        #: Held by whoever uses the connection: the repository lock's holder, or a
        #: writer; re-entrant, so one thread does both.
        self.lock = threading.RLock()
        self._connection: Connection | None = None
        self._pid = 0
        self._owner: tuple[int, str] | None = None  # (pid, tag)
        self.holding = 0  # depth of the repository lock held on this connection
        self._closer: weakref.finalize[[Connection, int], Session] | None = None
        #: Makes the owner's file again (another process may have swept it while this
        #: session was lost and the tag looked dead).
        self.owner_file: Callable[[str], None] | None = None

    def connection(self) -> Connection:
        """The session's connection (the caller holds :attr:`lock`), opened again if it
        broke while the repository lock was not held; then the owner lock is taken again."""
        connection = self._connection
        if (
            connection is not None
            and not (connection.broken or connection.closed)
            and self._pid == os.getpid()
        ):
            return connection
        if connection is not None and self._pid == os.getpid() and self.holding:
            raise RepositoryError(
                f"the connection to {self.address.describe()} was lost while this process "
                "held the repository's write lock; what it had prepared is not committed "
                "(a committed put is finished by the next writer); retry",
                errno=errno.EIO,
            )
        self._drop()
        connection = connect(self.address)
        self._connection, self._pid = connection, os.getpid()
        self._closer = weakref.finalize(self, _close_if_ours, connection, os.getpid())
        # Not at exit: the repositories settle then (butler.repository), on this session;
        # the process's end closes the socket anyway.
        self._closer.atexit = False
        if self._owner is not None and self._owner[0] == os.getpid():
            self._advisory("pg_advisory_lock", lock_key(self.schema, "owner", self._owner[1]))
            if self.owner_file is not None:
                self.owner_file(self._owner[1])
        return connection

    def _drop(self) -> None:
        if self._closer is not None and self._pid == os.getpid():
            self._closer()  # closes the connection
        self._closer = None
        self._connection = None

    def take(self, key: int) -> None:
        """``pg_advisory_lock(key)``, the session opened again first if it was dropped
        while idle (a server restart): writers resume by themselves once it is back."""
        connection = self.connection()
        try:
            connection.execute("SELECT pg_advisory_lock(%s)", (key,))
            return
        except psycopg.Error as exc:
            if not connection.broken or self.holding:
                raise database_error(exc, self.address, "take a lock") from None
        self.connection()
        self._advisory("pg_advisory_lock", key)

    def _advisory(self, function: str, key: int) -> bool:
        """``SELECT <function>(key)`` on the session (a fixed function name)."""
        assert self._connection is not None
        try:
            row = self._connection.execute(f"SELECT {function}(%s)", (key,)).fetchone()
        except psycopg.Error as exc:
            raise database_error(exc, self.address, "take a lock") from None
        return row is None or row[0] is not False

    def close(self) -> None:
        with self.lock:
            self._drop()


def _close_if_ours(connection: Connection, pid: int) -> None:
    """Close a session's connection, unless this is a forked child: closing there would
    end the parent's session on the server (libpq says goodbye on the shared socket)."""
    if os.getpid() == pid:
        connection.close()


class DatabaseLocks:
    """The repository lock and owner locks of one PostgreSQL-registered repository."""

    def __init__(self, session: Session, pool: Pool, root: Root) -> None:
        self._session = session
        self._pool = pool
        self._root = root
        self._key = lock_key(session.schema, "repository")

    @contextlib.contextmanager
    def repository(self) -> Iterator[None]:
        """Exclusive between processes and hosts (the database) and between this
        process's threads (the session's lock).  Re-entrant within a thread."""
        session = self._session
        with session.lock:
            if session.holding == 0:
                session.take(self._key)
            session.holding += 1
            try:
                yield
            finally:
                session.holding -= 1
                if session.holding == 0:
                    connection = session._connection
                    if connection is not None and not connection.broken:
                        with contextlib.suppress(RepositoryError):
                            session._advisory("pg_advisory_unlock", self._key)

    def owner(self) -> str:
        """This process's owner tag, its lock taken (and its file made) on first use."""
        session = self._session
        with session.lock:
            owner = session._owner
            if owner is not None and owner[0] == os.getpid():
                return owner[1]
            tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            session.take(lock_key(session.schema, "owner", tag))
            session._owner = (os.getpid(), tag)
            session.owner_file = self._make_owner_file
            self._make_owner_file(tag)
            return tag

    def _make_owner_file(self, tag: str) -> None:
        try:
            fd = self._root.open(layout.owner_lock(tag), os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RepositoryError(
                f"cannot make the owner file of repository {self._root.path}: "
                f"{exc.strerror}; check that its .butler directory is writable",
                errno=exc.errno,
            ) from None
        os.close(fd)

    def owner_alive(self, tag: str) -> bool:
        """Does the process that owns ``tag`` (on any host) still hold its lock?"""
        owner = self._session._owner
        if owner is not None and owner == (os.getpid(), tag):
            return True
        key = lock_key(self._session.schema, "owner", tag)
        # One statement, so the probe's lock is given back on the connection that took it.
        rows = self._pool.fetch(
            "SELECT CASE WHEN pg_try_advisory_lock(%s) THEN pg_advisory_unlock(%s) ELSE false END",
            (key, key),
        )
        return not rows[0][0]

    def release(self) -> None:
        """Give up this process's owner tag and the session (at close)."""
        session = self._session
        with session.lock:
            owner = session._owner
            if owner is not None and owner[0] == os.getpid():
                with contextlib.suppress(OSError):
                    self._root.unlink(layout.owner_lock(owner[1]))
            session._owner = None
            session._drop()
