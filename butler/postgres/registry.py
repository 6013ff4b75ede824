"""The registry of one repository in a PostgreSQL schema: the SQLite registry's
semantics (``butler/registry.py``) on a server that many hosts share.

Reads take a connection from the process's :class:`~butler.postgres.connect.Pool`
(autocommit: each statement sees every commit before it).  A write transaction
runs on the repository's :class:`~butler.postgres.session.Session`, the
connection that holds the repository lock; it begins by taking a
transaction-level advisory lock on the same key, so writers of one schema
commit one at a time even without the repository lock (bulk fills), and the
change log's sequence numbers are in commit order, which watchers rely on.

Write transactions commit asynchronously (``synchronous_commit = off``): a put's
journal stays until it is settled, and settling calls :meth:`PostgresRegistry.sync`,
which waits for the server's log flush (one for a batch of puts, as SQLite's WAL is
flushed).  A server crash may lose the last commits' rows, never their journals:
the next writer's recovery finds each journal's txid missing and records it again.

Every commit that changed something sends ``NOTIFY`` on the schema's channel
(delivered when it commits); :class:`Notices` is a listening connection whose
socket a mount daemon waits on.

A put's rows go in one statement (one round trip);
many at once (``insert_many``, ``reindex``) go by ``COPY`` into temporary
tables and one ``INSERT ... SELECT`` per table.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from butler.errors import ButlerError
from butler.journal import PutEntry, RemovalEntry
from butler.postgres.connect import Address, Connection, Pool, connect, database_error
from butler.postgres.schema import channel
from butler.postgres.session import Session, lock_key
from butler.registry import Row, _row, canonical_data_id

_ROW_COLUMNS = (
    "d.dataset_type, d.data_id, d.version, d.txid, d.committed, d.current, d.removed, "
    "f.location, f.path, f.storage, f.size, f.sha256"
)
_FROM = "FROM {s}.datasets d JOIN {s}.files f ON f.dataset = d.id"
_LOOKUP_CURRENT = (
    f"SELECT {_ROW_COLUMNS} {_FROM} WHERE d.dataset_type = %s AND d.data_id = %s "
    "AND d.current AND NOT d.removed ORDER BY f.primary_file DESC, f.location"
)
_LOOKUP_VERSION = (
    f"SELECT {_ROW_COLUMNS} {_FROM} WHERE d.dataset_type = %s AND d.data_id = %s "
    "AND d.version = %s ORDER BY f.primary_file DESC, f.location"
)
# The current version's rows, each with the max version; one row of NULLs and the max
# when there is no current version (removed, or never put).
_CURRENT_AND_MAX = (
    f"SELECT {_ROW_COLUMNS}, m.max FROM (SELECT MAX(version) AS max FROM {{s}}.datasets "
    "WHERE dataset_type = %s AND data_id = %s) m LEFT JOIN ({s}.datasets d JOIN {s}.files f "
    "ON f.dataset = d.id) ON d.dataset_type = %s AND d.data_id = %s AND d.current "
    "AND NOT d.removed ORDER BY f.primary_file DESC, f.location"
)
# add(): every row of one put in one statement.  The sub-statements share one snapshot:
# "newer" and "recorded" see the table as it was before, which is what add() means.
_ADD = """
WITH recorded AS (
    SELECT EXISTS (SELECT 1 FROM {s}.datasets WHERE txid = %(txid)s)
        OR EXISTS (SELECT 1 FROM {s}.removals WHERE txid = %(txid)s) AS yes
), demoted AS (
    UPDATE {s}.datasets SET current = false
    WHERE dataset_type = %(type)s AND data_id = %(id)s AND version < %(version)s AND current
      AND NOT (SELECT yes FROM recorded)
), added AS (
    INSERT INTO {s}.datasets (dataset_type, data_id, version, txid, committed, current)
    SELECT %(type)s, %(id)s, %(version)s, %(txid)s, %(committed)s,
           NOT EXISTS (SELECT 1 FROM {s}.datasets WHERE dataset_type = %(type)s
                       AND data_id = %(id)s AND version > %(version)s)
    WHERE NOT (SELECT yes FROM recorded)
    RETURNING id
), files AS (
    INSERT INTO {s}.files
    SELECT added.id, f.* FROM added, unnest(%(locations)s::integer[], %(primaries)s::boolean[],
        %(paths)s::text[], %(dirs)s::text[], %(names)s::text[], %(storages)s::text[],
        %(sizes)s::bigint[], %(sha256s)s::text[])
        AS f(location, primary_file, path, dir, name, storage, size, sha256)
), keys AS (
    INSERT INTO {s}.keys SELECT k.key, k.value, added.id
    FROM added, unnest(%(keys)s::text[], %(values)s::text[]) AS k(key, value)
    ON CONFLICT DO NOTHING
), directories AS (
    INSERT INTO {s}.dirs SELECT d.parent, d.name
    FROM added, unnest(%(parents)s::text[], %(dirnames)s::text[]) AS d(parent, name)
    ON CONFLICT DO NOTHING
)
INSERT INTO {s}.changes (path)
SELECT c.path FROM added, unnest(%(paths)s::text[]) WITH ORDINALITY AS c(path, n) ORDER BY c.n
"""
_MAX_VERSION = "SELECT MAX(version) FROM {s}.datasets WHERE dataset_type = %s AND data_id = %s"
_HAS_TXID = (
    "SELECT EXISTS (SELECT 1 FROM {s}.datasets WHERE txid = %s) "
    "OR EXISTS (SELECT 1 FROM {s}.removals WHERE txid = %s)"
)

#: Rows per COPY batch of a bulk insert (each batch is a few INSERT ... SELECTs).
BULK_BATCH = 50_000


def key_value(value: object) -> str:
    """How a data ID value is kept in ``keys``: its JSON, so 5 and "5" differ."""
    return json.dumps(value, ensure_ascii=False)


class PostgresRegistry:
    """The registry of one PostgreSQL-registered repository (schema ``schema``)."""

    def __init__(self, address: Address, schema: str, pool: Pool, session: Session) -> None:
        self.address = address
        self.schema = schema
        self._pool = pool
        self._session = session
        self._quoted = '"' + schema.replace('"', '""') + '"'
        self._sql: dict[str, str] = {}
        self._key = lock_key(schema, "repository")
        self.channel = channel(schema)
        #: How a write transaction begins, sent with its first statement (one round trip).
        #: Not flushed by itself: the put's journal stays until sync() (settling, batched),
        #: as SQLite's synchronous=NORMAL; see the module docstring.
        self.begin: tuple[tuple[str, tuple[object, ...]], ...] = (
            ("BEGIN", ()),
            ("SET LOCAL synchronous_commit = off", ()),
            ("SELECT pg_advisory_xact_lock(%s)", (self._key,)),
        )
        notify = sql.SQL("SELECT pg_notify({}, ''); COMMIT").format(sql.Literal(self.channel))
        self.notify_and_commit = notify.as_string()

    def q(self, template: str) -> str:
        """``template`` with ``{s}`` as this schema (cached: the same text each time, so
        the server's prepared statements are reused)."""
        found = self._sql.get(template)
        if found is None:
            found = self._sql[template] = template.replace("{s}", self._quoted)
        return found

    def _fetch(self, template: str, parameters: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self._pool.fetch(self.q(template), parameters)

    # -- reads ---------------------------------------------------------------------

    def lookup(self, dataset_type: str, data_id: str, version: int | None = None) -> list[Row]:
        if version is None:
            return [_row(r) for r in self._fetch(_LOOKUP_CURRENT, (dataset_type, data_id))]
        return [_row(r) for r in self._fetch(_LOOKUP_VERSION, (dataset_type, data_id, version))]

    def query(
        self, dataset_types: Sequence[str] | None, keys: Mapping[str, int | str]
    ) -> list[Row]:
        where = ["d.current", "NOT d.removed", "f.primary_file"]
        parameters: list[object] = []
        if dataset_types is not None:
            if not dataset_types:
                return []
            where.append("d.dataset_type = ANY(%s)")
            parameters.append(list(dataset_types))
        if keys:
            selects = " INTERSECT ".join(
                "SELECT dataset FROM {s}.keys WHERE key = %s AND value = %s" for _ in keys
            )
            where.append(f"d.id IN ({selects})")
            for key, value in keys.items():
                parameters.extend((key, key_value(value)))
        template = (
            f"SELECT {_ROW_COLUMNS} {_FROM} WHERE {' AND '.join(where)} "
            "ORDER BY d.dataset_type, d.data_id"
        )
        return [_row(r) for r in self._fetch(template, parameters)]

    def versions(self, dataset_type: str, data_id: str) -> list[Row]:
        template = (
            f"SELECT {_ROW_COLUMNS} {_FROM} WHERE d.dataset_type = %s AND d.data_id = %s "
            "AND f.primary_file ORDER BY d.version"
        )
        return [_row(r) for r in self._fetch(template, (dataset_type, data_id))]

    def max_version(self, dataset_type: str, data_id: str) -> int:
        return int(self._fetch(_MAX_VERSION, (dataset_type, data_id))[0][0] or 0)

    def has_transaction(self, txid: str) -> bool:
        return bool(self._fetch(_HAS_TXID, (txid, txid))[0][0])

    def transactions(self) -> set[str]:
        rows = self._fetch("SELECT txid FROM {s}.datasets UNION SELECT txid FROM {s}.removals")
        return {txid for (txid,) in rows}

    def list_directory(
        self,
        directory: str,
        primary_only: bool,
        include_removed: bool = False,
        start: str = "",
        limit: int = -1,
    ) -> tuple[list[str], list[Row]]:
        bound = None if limit < 0 else limit
        subdirs = [
            name
            for (name,) in self._fetch(
                "SELECT name FROM {s}.dirs WHERE parent = %s AND name >= %s ORDER BY name LIMIT %s",
                (directory, start, bound),
            )
        ]
        template = (
            f"SELECT {_ROW_COLUMNS} FROM {{s}}.files f JOIN {{s}}.datasets d ON d.id = f.dataset "
            "WHERE f.dir = %s AND f.name >= %s AND d.current"
            + ("" if include_removed else " AND NOT d.removed")
            + (" AND f.primary_file" if primary_only else "")
            + " ORDER BY f.name LIMIT %s"
        )
        return subdirs, [_row(r) for r in self._fetch(template, (directory, start, bound))]

    def lookup_path(self, path: str) -> list[Row]:
        directory, name = posixpath.split(path)
        template = (
            f"SELECT {_ROW_COLUMNS} FROM {{s}}.files f JOIN {{s}}.datasets d ON d.id = f.dataset "
            "WHERE f.dir = %s AND f.name = %s AND d.current AND NOT d.removed LIMIT 1"
        )
        return [_row(r) for r in self._fetch(template, (directory, name))]

    def is_directory(self, directory: str) -> bool:
        if directory == "":
            return True
        parent, name = posixpath.split(directory)
        return bool(
            self._fetch("SELECT 1 FROM {s}.dirs WHERE parent = %s AND name = %s", (parent, name))
        )

    def all_files(self) -> list[Row]:
        template = (
            f"SELECT {_ROW_COLUMNS} {_FROM} "
            "ORDER BY d.dataset_type, d.data_id, d.version, f.location"
        )
        return [_row(r) for r in self._fetch(template)]

    def change_seq(self) -> int:
        return int(self._fetch("SELECT MAX(seq) FROM {s}.changes")[0][0] or 0)

    def changes_since(self, seq: int) -> list[str]:
        rows = self._fetch("SELECT path FROM {s}.changes WHERE seq > %s ORDER BY seq", (seq,))
        return [path for (path,) in rows]

    def count(self) -> int:
        template = "SELECT COUNT(*) FROM {s}.datasets WHERE current AND NOT removed"
        return int(self._fetch(template)[0][0])

    def is_empty(self) -> bool:
        return not self._fetch("SELECT 1 FROM {s}.datasets LIMIT 1")

    def notices(self) -> Notices:
        """A new connection listening for this registry's commits (the caller closes it)."""
        return Notices(self.address, self.channel)

    # -- writes --------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self) -> Iterator[PostgresWriter]:
        """A write transaction on the session, rolled back unless committed."""
        session = self._session
        with session.lock:
            transaction = PostgresWriter(self, session.connection())
            try:
                yield transaction
            finally:
                if transaction.begun and not transaction.done:
                    _rollback(transaction.connection)

    def insert_many(self, entries: Iterable[PutEntry]) -> None:
        """Record many puts in one transaction, by COPY (bulk fills: benchmarks, moves)."""
        with self.writer() as writer:
            writer.add_many(entries)
            writer.commit()

    def sync(self) -> None:
        """Make every committed transaction durable: a synchronous commit of a transaction
        of its own waits until the write-ahead log is flushed past it, and so past every
        asynchronous commit before it."""

        def flush(connection: Connection) -> None:
            with connection.pipeline():
                connection.execute("BEGIN")
                connection.execute("SET LOCAL synchronous_commit = on")
                connection.execute("SELECT pg_current_xact_id()")  # a commit record to wait for
                connection.execute("COMMIT")

        self._pool.run(flush, "flush its log")

    def close(self) -> None:
        """Connections belong to the process's pool and the repository's session."""


def _rollback(connection: Connection) -> None:
    with contextlib.suppress(psycopg.Error):
        if not connection.broken and not connection.closed:
            connection.execute("ROLLBACK")


class PostgresWriter:
    """One open write transaction of a :class:`PostgresRegistry`."""

    def __init__(self, registry: PostgresRegistry, connection: Connection) -> None:
        self._registry = registry
        self._connection = connection
        self.begun = False  # BEGIN goes with the first statement (see _run)
        self.done = False
        self._changed = False
        #: Answers this transaction knows without asking again (the repository lock keeps
        #: other writers out): max versions read with ``current``, txids it added.
        self._max: dict[tuple[str, str], int] = {}
        self._added: set[str] = set()
        self._savepoints = 0

    def _run(
        self, template: str, parameters: Sequence[object] | Mapping[str, object] = ()
    ) -> psycopg.Cursor[Any]:
        query = self._registry.q(template)
        try:
            if self.begun:
                return self._connection.execute(query, parameters)
            self.begun = True
            with self._connection.pipeline():  # the transaction's start, in the same trip
                for statement, arguments in self._registry.begin:
                    self._connection.execute(statement, arguments)
                cursor = self._connection.execute(query, parameters)
            return cursor
        except psycopg.Error as exc:
            raise database_error(exc, self._registry.address, "record the change") from None

    @property
    def connection(self) -> Connection:
        return self._connection

    def _begin_now(self) -> None:
        if not self.begun:
            self._run("SELECT 1")

    def max_version(self, dataset_type: str, data_id: str) -> int:
        known = self._max.get((dataset_type, data_id))
        if known is not None:
            return known
        row = self._run(_MAX_VERSION, (dataset_type, data_id)).fetchone()
        return int(row[0] or 0) if row else 0

    def current(self, dataset_type: str, data_id: str) -> list[Row]:
        """The current version's files, primary first; the max version comes along (a put
        asks for both, one round trip instead of two)."""
        rows = self._run(_CURRENT_AND_MAX, (dataset_type, data_id, dataset_type, data_id))
        found = rows.fetchall()
        self._max[(dataset_type, data_id)] = int(found[0][-1] or 0)
        return [_row(r[:-1]) for r in found if r[0] is not None]

    def has_transaction(self, txid: str) -> bool:
        if txid in self._added:
            return True
        row = self._run(_HAS_TXID, (txid, txid)).fetchone()
        return bool(row and row[0])

    def add(self, entry: PutEntry, fresh: bool = False) -> None:
        """Record one committed version; a no-op if its txid is already recorded.  One
        statement (one round trip): see :data:`_ADD`.  ``fresh`` changes nothing here:
        the statement checks the txid at no extra cost."""
        if entry.txid in self._added:
            return  # added by this transaction already (prepare, then apply)
        self._max.clear()
        records = entry.files
        directories = sorted(_directories(record.path for record in records))
        parameters = {
            "txid": entry.txid,
            "type": entry.dataset_type,
            "id": canonical_data_id(entry.data_id),
            "version": entry.version,
            "committed": entry.committed,
            "locations": [record.location for record in records],
            "primaries": [record.primary for record in records],
            "paths": [record.path for record in records],
            "dirs": [posixpath.dirname(record.path) for record in records],
            "names": [posixpath.basename(record.path) for record in records],
            "storages": [record.storage for record in records],
            "sizes": [record.size for record in records],
            "sha256s": [record.sha256 for record in records],
            "keys": list(entry.data_id),
            "values": [key_value(value) for value in entry.data_id.values()],
            "parents": [parent for parent, _ in directories],
            "dirnames": [name for _, name in directories],
        }
        self._run(_ADD, parameters)
        self._changed = True
        self._added.add(entry.txid)

    def add_many(self, entries: Iterable[PutEntry]) -> None:
        """:meth:`add` for many entries, in order, by COPY: the same rows and flags."""
        batch: list[PutEntry] = []
        for entry in entries:
            batch.append(entry)
            if len(batch) >= BULK_BATCH:
                self._add_batch(batch)
                batch = []
        if batch:
            self._add_batch(batch)

    def _add_batch(self, entries: list[PutEntry]) -> None:
        self._max.clear()
        self._begin_now()
        try:
            _bulk_add(self._connection, self._registry.q, entries)
        except psycopg.Error as exc:
            raise database_error(exc, self._registry.address, "record the changes") from None
        self._changed = True

    def remove(self, entry: RemovalEntry) -> None:
        """Hide version ``entry.version`` from reads; a no-op if already recorded."""
        self._max.clear()
        if self.has_transaction(entry.txid):
            return
        rows = self._run(
            "SELECT d.id, f.path FROM {s}.datasets d JOIN {s}.files f ON f.dataset = d.id "
            "WHERE d.dataset_type = %s AND d.data_id = %s AND d.version = %s",
            (entry.dataset_type, canonical_data_id(entry.data_id), entry.version),
        ).fetchall()
        for dataset in sorted({dataset for dataset, _ in rows}):
            self._run("UPDATE {s}.datasets SET removed = true WHERE id = %s", (dataset,))
            self._run(
                "INSERT INTO {s}.removals VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (entry.txid, dataset),
            )
        for _, path in rows:
            self._run("INSERT INTO {s}.changes (path) VALUES (%s)", (path,))
        self._changed = True

    def clear(self) -> None:
        """Drop every dataset row (a rebuild within this transaction).  DELETE, not
        TRUNCATE: readers keep seeing the old rows until the rebuild commits."""
        self._max.clear()
        self._added.clear()
        self._run("INSERT INTO {s}.changes (path) SELECT DISTINCT path FROM {s}.files")
        for table in ("files", "datasets", "keys", "dirs", "removals"):
            self._run(f"DELETE FROM {{s}}.{table}")  # fixed names, never user input
        self._changed = True

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """What is recorded inside is undone if it raises (one put of a group commit)."""
        self._savepoints += 1
        name = f"put{self._savepoints}"
        added, changed = set(self._added), self._changed
        self._run(f"SAVEPOINT {name}")  # a fixed name, never user input
        try:
            yield
        except BaseException:
            self._added, self._changed = added, changed
            self._max.clear()
            with contextlib.suppress(ButlerError):
                self._run(f"ROLLBACK TO SAVEPOINT {name}")
                self._run(f"RELEASE SAVEPOINT {name}")
            raise
        self._run(f"RELEASE SAVEPOINT {name}")

    def commit(self) -> None:
        connection = self._connection
        if not self.begun:  # nothing was asked or changed: nothing to commit
            self.done = True
            return
        if connection.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
            # Failed (or never began): a COMMIT now would only roll back, and succeed.
            raise database_error(
                psycopg.OperationalError("the transaction was aborted before its commit"),
                self._registry.address,
                "commit",
            )
        try:
            connection.execute(self._registry.notify_and_commit if self._changed else "COMMIT")
        except psycopg.Error as exc:
            raise database_error(exc, self._registry.address, "commit") from None
        self.done = True


def _directories(paths: Iterable[str]) -> set[tuple[str, str]]:
    """(parent, name) of every directory above each path."""
    found: set[tuple[str, str]] = set()
    seen: set[str] = set()
    for path in paths:
        directory = posixpath.dirname(path)
        while directory and directory not in seen:
            seen.add(directory)
            found.add(posixpath.split(directory))
            directory = posixpath.dirname(directory)
    return found


_BULK_TABLES = """
CREATE TEMP TABLE new_datasets (
    ord bigint, dataset_type text COLLATE "C", data_id text COLLATE "C", version integer,
    txid text, committed double precision
) ON COMMIT DROP;
CREATE TEMP TABLE new_files (
    txid text, location integer, primary_file boolean, path text COLLATE "C",
    dir text COLLATE "C", name text COLLATE "C", storage text, size bigint, sha256 text
) ON COMMIT DROP;
CREATE TEMP TABLE new_keys (txid text, key text COLLATE "C", value text COLLATE "C")
    ON COMMIT DROP;
CREATE TEMP TABLE new_dirs (parent text COLLATE "C", name text COLLATE "C") ON COMMIT DROP
"""

_BULK_STEPS = (
    # Entries whose txid is recorded already are no-ops, as for add().
    "DELETE FROM new_datasets n WHERE EXISTS (SELECT 1 FROM {s}.datasets d WHERE d.txid = n.txid)"
    " OR EXISTS (SELECT 1 FROM {s}.removals r WHERE r.txid = n.txid)",
    # add() in order: older current versions step down...
    "UPDATE {s}.datasets d SET current = false FROM new_datasets n "
    "WHERE d.dataset_type = n.dataset_type AND d.data_id = n.data_id AND d.version < n.version "
    "AND d.current",
    # ...and a version is current unless a newer one is recorded, here or in this batch.
    "INSERT INTO {s}.datasets (dataset_type, data_id, version, txid, committed, current) "
    "SELECT n.dataset_type, n.data_id, n.version, n.txid, n.committed, "
    "n.version = max(n.version) OVER (PARTITION BY n.dataset_type, n.data_id) "
    "AND NOT EXISTS (SELECT 1 FROM {s}.datasets d WHERE d.dataset_type = n.dataset_type "
    "AND d.data_id = n.data_id AND d.version > n.version) FROM new_datasets n ORDER BY n.ord",
    "INSERT INTO {s}.files SELECT d.id, f.location, f.primary_file, f.path, f.dir, f.name, "
    "f.storage, f.size, f.sha256 FROM new_files f JOIN new_datasets n ON n.txid = f.txid "
    "JOIN {s}.datasets d ON d.txid = f.txid",
    "INSERT INTO {s}.keys SELECT k.key, k.value, d.id FROM new_keys k "
    "JOIN new_datasets n ON n.txid = k.txid JOIN {s}.datasets d ON d.txid = k.txid "
    "ON CONFLICT DO NOTHING",
    "INSERT INTO {s}.dirs SELECT DISTINCT parent, name FROM new_dirs ON CONFLICT DO NOTHING",
    "INSERT INTO {s}.changes (path) SELECT f.path FROM new_files f "
    "JOIN new_datasets n ON n.txid = f.txid ORDER BY n.ord, f.location",
)


def _bulk_add(connection: Connection, q: Callable[[str], str], entries: list[PutEntry]) -> None:
    """COPY ``entries`` into temporary tables, then move them with one statement each."""
    for statement in _BULK_TABLES.split(";"):
        connection.execute(statement)  # fixed text
    cursor = connection.cursor()
    with cursor.copy(
        "COPY new_datasets (ord, dataset_type, data_id, version, txid, committed) FROM STDIN"
    ) as copy:
        for ord_, entry in enumerate(entries):
            copy.write_row(
                (ord_, entry.dataset_type, canonical_data_id(entry.data_id), entry.version,
                 entry.txid, entry.committed)
            )  # fmt: skip
    with cursor.copy("COPY new_files FROM STDIN") as copy:
        for entry in entries:
            for record in entry.files:
                directory, name = posixpath.split(record.path)
                copy.write_row(
                    (entry.txid, record.location, record.primary, record.path, directory, name,
                     record.storage, record.size, record.sha256)
                )  # fmt: skip
    with cursor.copy("COPY new_keys FROM STDIN") as copy:
        for entry in entries:
            for key, value in entry.data_id.items():
                copy.write_row((entry.txid, key, key_value(value)))
    with cursor.copy("COPY new_dirs FROM STDIN") as copy:
        paths = (record.path for entry in entries for record in entry.files)
        for row in sorted(_directories(paths)):
            copy.write_row(row)
    cursor.execute("ANALYZE new_datasets")
    for step in _BULK_STEPS:
        cursor.execute(q(step))
    for table in ("new_datasets", "new_files", "new_keys", "new_dirs"):
        cursor.execute(f"DROP TABLE {table}")  # fixed names


class Notices:
    """A connection listening for one registry's commits.

    Wait until :meth:`fileno` is readable, then :meth:`drain`: it returns how many
    notices arrived (0: a wake-up without one) and raises a ButlerError once the
    connection is lost (the server stopped, the network dropped).
    """

    def __init__(self, address: Address, channel_name: str) -> None:
        self._address = address
        self._connection = connect(address)
        try:
            self._connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel_name)))
        except psycopg.Error as exc:
            self._connection.close()
            raise database_error(exc, address, "listen for changes") from None

    def fileno(self) -> int:
        return self._connection.pgconn.socket

    def drain(self) -> int:
        pgconn = self._connection.pgconn
        try:
            pgconn.consume_input()
        except psycopg.Error as exc:
            raise database_error(exc, self._address, "listen for changes") from None
        count = 0
        while pgconn.notifies() is not None:
            count += 1
        if pgconn.status != psycopg.pq.ConnStatus.OK:
            raise database_error(
                psycopg.OperationalError("the server closed the connection"),
                self._address,
                "listen for changes",
            )
        return count

    def close(self) -> None:
        self._connection.close()


__all__ = ["Notices", "PostgresRegistry", "PostgresWriter", "connect"]
