"""The dataset index of one repository, and the embedded engine: SQLite in WAL mode.

The registry is a cache of the plain-text records under ``.butler/records``:
every row can be rebuilt from them (``butler reindex``).  It answers the
questions the resolver asks, each through an index and never by scanning the
repository:

- the latest (or a given) version of one data ID: ``lookup``;
- every current dataset matching a partial data ID: ``query`` (a ``keys``
  table indexed on (key, value));
- the children of one directory: ``list_directory`` (a ``dirs`` table and an
  index on each file's directory);
- what changed since a sequence number: ``change_seq`` / ``changes_since``.

Writes go through :meth:`Registry.writer`: one transaction, opened under the
repository's write lock *before* a put's commit point, so that the version is
assigned, and the rows are proven insertable (a writable database, a free
row), before anything is committed; its ``commit`` runs when the put applies.

:class:`Registry` is the interface both engines keep (the embedded SQLite one
here; PostgreSQL for many hosts).  Read connections are per thread (WAL lets
readers run beside one writer), so the mount daemon's worker threads never
share a cursor; the write transaction has a connection of its own.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import posixpath
import sqlite3
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from butler.errors import RegistryDamagedError, RepositoryError
from butler.journal import PutEntry, RemovalEntry

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    id INTEGER PRIMARY KEY,
    dataset_type TEXT NOT NULL,
    data_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    txid TEXT NOT NULL,
    committed REAL NOT NULL,
    current INTEGER NOT NULL DEFAULT 1,
    removed INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS datasets_by_id ON datasets (dataset_type, data_id, version);
CREATE INDEX IF NOT EXISTS datasets_by_txid ON datasets (txid);
CREATE TABLE IF NOT EXISTS files (
    dataset INTEGER NOT NULL REFERENCES datasets (id),
    location INTEGER NOT NULL,
    primary_file INTEGER NOT NULL,
    path TEXT NOT NULL,
    dir TEXT NOT NULL,
    name TEXT NOT NULL,
    storage TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (dataset, location)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_by_dir ON files (dir, name);
CREATE TABLE IF NOT EXISTS keys (
    key TEXT NOT NULL, value NOT NULL, dataset INTEGER NOT NULL,
    PRIMARY KEY (key, value, dataset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dirs (
    parent TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (parent, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS removals (txid TEXT PRIMARY KEY, dataset INTEGER NOT NULL);
"""

_ROW_COLUMNS = (
    "d.dataset_type, d.data_id, d.version, d.txid, d.committed, d.current, d.removed, "
    "f.location, f.path, f.storage, f.size, f.sha256"
)

# SQLite's primary result codes (sqlite3.Error.sqlite_errorcode & 0xff).
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_READONLY, _SQLITE_IOERR = 3, 5, 8, 10
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 11, 13, 14, 26


@dataclass(frozen=True)
class Row:
    """One file of one dataset version, as the registry returns it."""

    dataset_type: str
    data_id: str  # canonical JSON, see canonical_data_id
    version: int
    txid: str
    committed: float
    current: bool
    removed: bool
    location: int
    path: str
    storage: str
    size: int
    sha256: str


def canonical_data_id(data_id: Mapping[str, int | str]) -> str:
    """The registry's key for a data ID: compact JSON with sorted keys."""
    return json.dumps(data_id, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class RegistryWriter(Protocol):
    """One open write transaction (see :meth:`Registry.writer`)."""

    def max_version(self, dataset_type: str, data_id: str) -> int: ...
    def current(self, dataset_type: str, data_id: str) -> list[Row]: ...
    def has_transaction(self, txid: str) -> bool: ...
    def add(self, entry: PutEntry, fresh: bool = False) -> None: ...
    def add_many(self, entries: Iterable[PutEntry]) -> None: ...
    def remove(self, entry: RemovalEntry) -> None: ...
    def clear(self) -> None: ...
    def savepoint(self) -> contextlib.AbstractContextManager[None]: ...
    def commit(self) -> None: ...


class Notices(Protocol):
    """Changes pushed by an engine that has them (PostgreSQL's LISTEN): wait until
    ``fileno()`` is readable, then ``drain()`` (how many arrived; raises a ButlerError
    once the connection is lost).  The caller closes it."""

    def fileno(self) -> int: ...
    def drain(self) -> int: ...
    def close(self) -> None: ...


class Registry(Protocol):
    """What the butler needs of a repository's index, whatever the engine."""

    def lookup(self, dataset_type: str, data_id: str, version: int | None = None) -> list[Row]: ...
    def lookup_path(self, path: str) -> list[Row]: ...
    def query(
        self, dataset_types: Sequence[str] | None, keys: Mapping[str, int | str]
    ) -> list[Row]: ...
    def versions(self, dataset_type: str, data_id: str) -> list[Row]: ...
    def max_version(self, dataset_type: str, data_id: str) -> int: ...
    def has_transaction(self, txid: str) -> bool: ...
    def list_directory(
        self,
        directory: str,
        primary_only: bool,
        include_removed: bool = False,
        start: str = "",
        limit: int = -1,
    ) -> tuple[list[str], list[Row]]: ...
    def is_directory(self, directory: str) -> bool: ...
    def all_files(self) -> list[Row]: ...
    def transactions(self) -> set[str]: ...
    def count(self) -> int: ...
    def is_empty(self) -> bool: ...
    def change_seq(self) -> int: ...
    def changes_since(self, seq: int) -> list[str]: ...
    def notices(self) -> Notices | None: ...
    def writer(self) -> contextlib.AbstractContextManager[RegistryWriter]: ...
    def insert_many(self, entries: Iterable[PutEntry]) -> None: ...
    def sync(self) -> None: ...
    def close(self) -> None: ...


def _disk_full(path: Path) -> bool:
    """No free blocks or inodes where ``path`` lives (SQLite cannot say so itself: it
    answers "unable to open" or "disk I/O error" when it cannot make its -wal/-shm)."""
    try:
        found = os.statvfs(path.parent)
    except OSError:
        return False
    return found.f_bavail == 0 or (found.f_files > 0 and found.f_favail == 0)


def registry_error(exc: sqlite3.Error, path: Path, doing: str) -> RepositoryError:
    """A ButlerError for an SQLite failure: the errno that says why, and what to do."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == _SQLITE_FULL or (code in (_SQLITE_CANTOPEN, _SQLITE_IOERR) and _disk_full(path)):
        return RepositoryError(
            f"registry {path} could not {doing}: the disk is full; free space and retry",
            errno=errno.ENOSPC,
        )
    if code in (_SQLITE_READONLY, _SQLITE_PERM):
        return RepositoryError(
            f"registry {path} could not {doing}: it is read-only to this user; make it and "
            "its directory writable, then retry",
            errno=errno.EACCES if os.path.exists(path) else errno.EROFS,
        )
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return RegistryDamagedError(
            f"registry {path} is damaged ({exc}); run 'butler reindex' on the repository "
            "(it rebuilds the registry from the records and keeps the damaged file aside)",
            errno=errno.EIO,
        )
    if code == _SQLITE_CANTOPEN:
        return RepositoryError(
            f"registry {path} cannot be opened ({exc}); check that it and its directory "
            "exist and are readable and writable",
            errno=errno.EACCES,
        )
    if code == _SQLITE_BUSY:
        return RepositoryError(
            f"registry {path} stayed locked by another process; retry", errno=errno.EBUSY
        )
    return RepositoryError(f"registry {path} could not {doing}: {exc}", errno=errno.EIO)


class SQLiteRegistry:
    """The embedded registry of one repository (``registry.sqlite3``)."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = path
        self._local = threading.local()
        self._write_connection: sqlite3.Connection | None = None
        self._write_pid = 0
        self._dirs: set[str] = set()  # directories known to be recorded (see _SQLiteWriter)
        if create:
            self._create()
        self._connect()

    # -- connections -----------------------------------------------------------

    def _create(self) -> None:
        try:
            connection = sqlite3.connect(self.path, isolation_level=None)
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.executescript(_SCHEMA)
                connection.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
            finally:
                connection.close()
        except sqlite3.Error as exc:
            raise registry_error(exc, self.path, "be created") from exc

    def _open(self) -> sqlite3.Connection:
        """A new read-write connection; never creates a missing database (mode=rw)."""
        if self.read_only:
            return self._connect_read_only()
        uri = f"file:{quote(str(self.path))}?mode=rw"
        connection = sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, timeout=60.0
        )
        # WAL: readers never block the writer.  NORMAL: a commit is not flushed by
        # itself; the write protocol keeps its journal until sync() (batched).
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        if not getattr(self, "_schema_checked", False):
            self._check_schema(connection)
        return connection

    def _connect(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        try:
            connection = self._open()
        except sqlite3.Error as exc:
            raise registry_error(exc, self.path, "be opened") from exc
        self._local.connection = connection
        return connection

    @property
    def read_only(self) -> bool:
        """A shared input the reader cannot write (its directory is not writable to us)."""
        return not os.access(self.path.parent, os.W_OK)

    def _connect_read_only(self) -> sqlite3.Connection:
        # mode=ro reads a WAL database while its -shm exists (a writer has it open);
        # otherwise every commit is already in the main file and immutable=1 reads it
        # without the locks a read-only directory cannot hold.
        for query in ("mode=ro", "immutable=1"):
            uri = f"file:{quote(str(self.path))}?{query}"
            try:
                connection = sqlite3.connect(
                    uri, uri=True, isolation_level=None, check_same_thread=False, timeout=60.0
                )
                connection.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            except sqlite3.OperationalError:
                continue
            return connection
        raise sqlite3.OperationalError("neither mode=ro nor immutable=1 could open it")

    def _check_schema(self, connection: sqlite3.Connection) -> None:
        try:
            found = connection.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.OperationalError:  # no meta table: emptied, or not a registry at all
            connection.close()
            raise RegistryDamagedError(
                f"registry {self.path} is empty or is not a butler registry; run 'butler "
                "reindex' on the repository to rebuild it from the records"
            ) from None
        if found is None or int(found[0]) != SCHEMA_VERSION:
            raise RegistryDamagedError(
                f"registry {self.path} has schema {found and found[0]}, this butler knows "
                f"{SCHEMA_VERSION}; run 'butler reindex' to rebuild it"
            )
        # Tables added after round 1 (removals): created when missing, harmlessly.
        connection.executescript(_SCHEMA)
        self._schema_checked = True

    def _execute(self, sql: str, parameters: Sequence[object] | Mapping[str, object] = ()) -> list:  # type: ignore[type-arg]
        try:
            return self._connect().execute(sql, parameters).fetchall()
        except sqlite3.Error as exc:
            raise registry_error(exc, self.path, "be read") from exc

    def sync(self) -> None:
        """Make every committed transaction durable: flush the WAL (or the database)."""
        for name in (f"{self.path}-wal", str(self.path)):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            return

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None
        if self._write_connection is not None and self._write_pid == os.getpid():
            self._write_connection.close()
        self._write_connection = None

    # -- reads ---------------------------------------------------------------

    def lookup(self, dataset_type: str, data_id: str, version: int | None = None) -> list[Row]:
        """The files of the latest (or the given) version, primary file first; [] if none.

        A removed dataset counts as absent unless its version is asked for.
        """
        if version is None:
            return [_row(row) for row in self._execute(_LOOKUP_CURRENT, (dataset_type, data_id))]
        rows = self._execute(_LOOKUP_VERSION, (dataset_type, data_id, version))
        return [_row(row) for row in rows]

    def query(
        self, dataset_types: Sequence[str] | None, keys: Mapping[str, int | str]
    ) -> list[Row]:
        """Primary files of every current dataset whose data ID contains ``keys``."""
        where = ["d.current = 1", "d.removed = 0", "f.primary_file = 1"]
        params: list[object] = []
        if dataset_types is not None:
            if not dataset_types:
                return []
            # With keys, the "+" keeps SQLite off the dataset-type index: without
            # statistics it would walk every dataset of the type instead of starting
            # from the few rows the keys index selects (120 ms against 0.2 ms at 10^6).
            column = "+d.dataset_type" if keys else "d.dataset_type"
            where.append(f"{column} IN ({','.join('?' * len(dataset_types))})")
            params.extend(dataset_types)
        if keys:
            selects = " INTERSECT ".join(
                "SELECT dataset FROM keys WHERE key = ? AND value = ?" for _ in keys
            )
            where.append(f"d.id IN ({selects})")
            for key, value in keys.items():
                params.extend((key, value))
        sql = (
            f"SELECT {_ROW_COLUMNS} FROM datasets d JOIN files f ON f.dataset = d.id "
            f"WHERE {' AND '.join(where)} ORDER BY d.dataset_type, d.data_id"
        )
        return [_row(row) for row in self._execute(sql, params)]

    def versions(self, dataset_type: str, data_id: str) -> list[Row]:
        sql = (
            f"SELECT {_ROW_COLUMNS} FROM datasets d JOIN files f ON f.dataset = d.id "
            "WHERE d.dataset_type = ? AND d.data_id = ? AND f.primary_file = 1 ORDER BY d.version"
        )
        return [_row(row) for row in self._execute(sql, (dataset_type, data_id))]

    def max_version(self, dataset_type: str, data_id: str) -> int:
        found = self._execute(_MAX_VERSION, (dataset_type, data_id))
        return int(found[0][0] or 0)

    def has_transaction(self, txid: str) -> bool:
        return bool(self._execute(_HAS_TXID, (txid, txid)))

    def transactions(self) -> set[str]:
        """Every txid the registry holds (puts and removals): for verify."""
        rows = self._execute("SELECT txid FROM datasets UNION SELECT txid FROM removals")
        return {txid for (txid,) in rows}

    def list_directory(
        self,
        directory: str,
        primary_only: bool,
        include_removed: bool = False,
        start: str = "",
        limit: int = -1,
    ) -> tuple[list[str], list[Row]]:
        """Subdirectory names and current files directly inside ``directory`` ("" = root).

        Both by name; with ``start`` only names from ``start`` on, and with ``limit`` at
        most that many of each (a window: complete up to the last name returned).
        """
        subdirs = [
            name
            for (name,) in self._execute(
                "SELECT name FROM dirs WHERE parent = ? AND name >= ? ORDER BY name LIMIT ?",
                (directory, start, limit),
            )
        ]
        sql = (
            f"SELECT {_ROW_COLUMNS} FROM files f JOIN datasets d ON d.id = f.dataset "
            "WHERE f.dir = ? AND f.name >= ? AND d.current = 1"
            + ("" if include_removed else " AND d.removed = 0")
            + (" AND f.primary_file = 1" if primary_only else "")
            + " ORDER BY f.name LIMIT ?"
        )
        return subdirs, [_row(row) for row in self._execute(sql, (directory, start, limit))]

    def lookup_path(self, path: str) -> list[Row]:
        """The current file at ``path`` (relative), as a list of zero or one rows."""
        directory, name = posixpath.split(path)
        sql = (
            f"SELECT {_ROW_COLUMNS} FROM files f JOIN datasets d ON d.id = f.dataset "
            "WHERE f.dir = ? AND f.name = ? AND d.current = 1 AND d.removed = 0 LIMIT 1"
        )
        return [_row(row) for row in self._execute(sql, (directory, name))]

    def is_directory(self, directory: str) -> bool:
        if directory == "":
            return True
        parent, name = posixpath.split(directory)
        sql = "SELECT 1 FROM dirs WHERE parent = ? AND name = ?"
        return bool(self._execute(sql, (parent, name)))

    def all_files(self) -> list[Row]:
        """Every file of every version, removed ones too (for verify and repair)."""
        sql = (
            f"SELECT {_ROW_COLUMNS} FROM datasets d JOIN files f ON f.dataset = d.id "
            "ORDER BY d.dataset_type, d.data_id, d.version, f.location"
        )
        return [_row(row) for row in self._execute(sql)]

    def change_seq(self) -> int:
        found = self._execute("SELECT MAX(seq) FROM changes")
        return int(found[0][0] or 0)

    def changes_since(self, seq: int) -> list[str]:
        sql = "SELECT path FROM changes WHERE seq > ? ORDER BY seq"
        return [path for (path,) in self._execute(sql, (seq,))]

    def count(self) -> int:
        sql = "SELECT COUNT(*) FROM datasets WHERE current = 1 AND removed = 0"
        return int(self._execute(sql)[0][0])

    def is_empty(self) -> bool:
        return not self._execute("SELECT 1 FROM datasets LIMIT 1")

    def notices(self) -> None:
        """None: SQLite pushes nothing; watchers compare :meth:`change_seq`."""
        return None

    # -- writes --------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self) -> Iterator[RegistryWriter]:
        """A write transaction (``BEGIN IMMEDIATE``), rolled back unless committed.

        The caller holds the repository's write lock, so one writer per Registry runs at
        a time; the connection is this Registry's own, reopened after a fork.
        """
        try:
            if self._write_connection is None or self._write_pid != os.getpid():
                self._write_connection = self._open()
                self._write_pid = os.getpid()
            connection = self._write_connection
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise registry_error(exc, self.path, "start a write") from exc
        transaction = _SQLiteWriter(connection, self.path, self._dirs)
        try:
            yield transaction
        finally:
            if not transaction.done:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")

    def insert_many(self, entries: Iterable[PutEntry]) -> None:
        """Record many puts in one transaction (bulk fills: benchmarks, rebuilds)."""
        with self.writer() as writer:
            writer.add_many(entries)
            writer.commit()


_LOOKUP_CURRENT = (
    f"SELECT {_ROW_COLUMNS} FROM datasets d JOIN files f ON f.dataset = d.id "
    "WHERE d.dataset_type = ? AND d.data_id = ? AND d.current = 1 AND d.removed = 0 "
    "ORDER BY f.primary_file DESC, f.location"
)
_LOOKUP_VERSION = (
    f"SELECT {_ROW_COLUMNS} FROM datasets d JOIN files f ON f.dataset = d.id "
    "WHERE d.dataset_type = ? AND d.data_id = ? AND d.version = ? "
    "ORDER BY f.primary_file DESC, f.location"
)
_MAX_VERSION = "SELECT MAX(version) FROM datasets WHERE dataset_type = ? AND data_id = ?"
_HAS_TXID = (
    "SELECT 1 FROM datasets WHERE txid = ? UNION ALL SELECT 1 FROM removals WHERE txid = ? LIMIT 1"
)


class _SQLiteWriter:
    def __init__(self, connection: sqlite3.Connection, path: Path, dirs: set[str]) -> None:
        self._connection = connection
        self._path = path
        self._savepoints = 0
        #: Directories known to be in the ``dirs`` table (committed ones: the registry's),
        #: and those this transaction added (known once it commits).
        self._dirs = dirs
        self._new_dirs: list[str] = []
        self.done = False

    def _run(self, sql: str, parameters: Sequence[object] = ()) -> sqlite3.Cursor:
        try:
            return self._connection.execute(sql, parameters)
        except sqlite3.Error as exc:
            raise registry_error(exc, self._path, "record the change") from exc

    def max_version(self, dataset_type: str, data_id: str) -> int:
        return int(self._run(_MAX_VERSION, (dataset_type, data_id)).fetchone()[0] or 0)

    def current(self, dataset_type: str, data_id: str) -> list[Row]:
        return [_row(row) for row in self._run(_LOOKUP_CURRENT, (dataset_type, data_id))]

    def has_transaction(self, txid: str) -> bool:
        return self._run(_HAS_TXID, (txid, txid)).fetchone() is not None

    def add(self, entry: PutEntry, fresh: bool = False) -> None:
        """Record one committed version; a no-op if its txid is already recorded (unless
        ``fresh``: the caller made the txid just now, so nothing can have recorded it)."""
        if not fresh and self.has_transaction(entry.txid):
            return
        data_id = canonical_data_id(entry.data_id)
        self._run(
            "UPDATE datasets SET current = 0 WHERE dataset_type = ? AND data_id = ? "
            "AND version < ? AND current = 1",
            (entry.dataset_type, data_id, entry.version),
        )
        newer = self._run(
            "SELECT 1 FROM datasets WHERE dataset_type = ? AND data_id = ? AND version > ?",
            (entry.dataset_type, data_id, entry.version),
        ).fetchone()
        cursor = self._run(
            "INSERT INTO datasets (dataset_type, data_id, version, txid, committed, current) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                entry.dataset_type,
                data_id,
                entry.version,
                entry.txid,
                entry.committed,
                0 if newer else 1,
            ),
        )
        dataset = cursor.lastrowid
        for record in entry.files:
            directory, name = posixpath.split(record.path)
            self._run(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    dataset,
                    record.location,
                    int(record.primary),
                    record.path,
                    directory,
                    name,
                    record.storage,
                    record.size,
                    record.sha256,
                ),
            )
            while directory and directory not in self._dirs:
                parent, leaf = posixpath.split(directory)
                self._run("INSERT OR IGNORE INTO dirs VALUES (?, ?)", (parent, leaf))
                self._new_dirs.append(directory)
                directory = parent
            self._run("INSERT INTO changes (path) VALUES (?)", (record.path,))
        try:
            self._connection.executemany(
                "INSERT OR IGNORE INTO keys VALUES (?, ?, ?)",
                [(key, value, dataset) for key, value in entry.data_id.items()],
            )
        except sqlite3.Error as exc:
            raise registry_error(exc, self._path, "record the change") from exc

    def add_many(self, entries: Iterable[PutEntry]) -> None:
        for entry in entries:
            self.add(entry)

    def remove(self, entry: RemovalEntry) -> None:
        """Hide version ``entry.version`` (the current one) from reads; it stays readable by
        version.  A no-op if this removal is already recorded."""
        if self.has_transaction(entry.txid):
            return
        data_id = canonical_data_id(entry.data_id)
        rows = self._run(
            "SELECT d.id, f.path FROM datasets d JOIN files f ON f.dataset = d.id "
            "WHERE d.dataset_type = ? AND d.data_id = ? AND d.version = ?",
            (entry.dataset_type, data_id, entry.version),
        ).fetchall()
        datasets = {dataset for dataset, _ in rows}
        for dataset in datasets:
            self._run("UPDATE datasets SET removed = 1 WHERE id = ?", (dataset,))
            self._run("INSERT OR IGNORE INTO removals VALUES (?, ?)", (entry.txid, dataset))
        for _, path in rows:
            self._run("INSERT INTO changes (path) VALUES (?)", (path,))

    def clear(self) -> None:
        """Drop every dataset row (a rebuild within this transaction); the change log
        keeps growing, so watchers see every path of the rebuild as changed."""
        self._dirs.clear()
        self._run("INSERT INTO changes (path) SELECT DISTINCT path FROM files")
        for table in ("datasets", "files", "keys", "dirs", "removals"):
            self._run(f"DELETE FROM {table}")  # fixed names, never user input

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """What is recorded inside is undone if it raises (one put of a group commit)."""
        self._savepoints += 1
        name = f"put{self._savepoints}"
        self._run(f"SAVEPOINT {name}")  # a fixed name, never user input
        try:
            yield
        except BaseException:
            with contextlib.suppress(RepositoryError):
                self._run(f"ROLLBACK TO {name}")
                self._run(f"RELEASE {name}")
            raise
        self._run(f"RELEASE {name}")

    def commit(self) -> None:
        try:
            self._connection.execute("COMMIT")
        except sqlite3.Error as exc:
            raise registry_error(exc, self._path, "commit") from exc
        self.done = True
        if len(self._dirs) > 100_000:
            self._dirs.clear()
        self._dirs.update(self._new_dirs)


def _row(values: tuple[object, ...]) -> Row:
    (dataset_type, data_id, version, txid, committed, current, removed, location, path, storage,
     size, sha256) = values  # fmt: skip
    return Row(
        sys.intern(str(dataset_type)),  # interned: a listing holds thousands of rows
        str(data_id),
        int(version),  # type: ignore[call-overload]
        str(txid),
        float(committed),  # type: ignore[arg-type]
        bool(current),
        bool(removed),
        int(location),  # type: ignore[call-overload]
        str(path),
        sys.intern(str(storage)),
        int(size),  # type: ignore[call-overload]
        str(sha256),
    )
