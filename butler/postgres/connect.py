"""Reaching a PostgreSQL server: the address, connections, and errors as ButlerErrors.

An :class:`Address` is the ``registry:`` URL of ``butler.yaml``, parsed by libpq
itself (``postgresql://HOST[:PORT]/DATABASE[?PARAM=VALUE...]``, ``service=``
included).  It never holds a password: credentials come only from libpq's own
sources (``~/.pgpass`` or ``PGPASSFILE``, ``PGSERVICE``, the environment), so a
URL with one is refused, and messages name the server by host, port and
database, never by the URL.

Every connection gets bounded waits unless the URL sets its own: a server that
does not answer fails a connect in :data:`CONNECT_TIMEOUT` seconds, and a TCP
connection whose server vanished fails in :data:`TCP_USER_TIMEOUT_MS` instead of
hanging (a mount must answer ``EIO``, not stall).

:class:`Pool` keeps idle connections to one server for this process, shared by
every repository on it (each is a server process: one per repository and thread
would exhaust ``max_connections`` on a busy host).  It is our own rather than
psycopg-pool's: a reader must get libpq's reason at once (``connection refused``,
naming the host) instead of a pool timeout, and while the server is down a
read must fail at once, not wait (see :data:`RETRY_SECONDS`).
"""

from __future__ import annotations

import atexit
import errno
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import conninfo

from butler.errors import ButlerError, ConfigError, RegistryDamagedError, RepositoryError

CONNECT_TIMEOUT = 5  # seconds for a connect, unless the URL says connect_timeout
TCP_USER_TIMEOUT_MS = 15_000  # a silent server fails a query after this, not never
#: After a connect that failed slowly (a host that does not answer: the connect
#: timeout), reads fail at once with the same reason for this long instead of each
#: waiting again (a mount's lookups arrive by the thousand).  A refusal is fast and
#: is simply tried again: the server may be back already.
RETRY_SECONDS = 1.0
SLOW_FAILURE = 0.5  # seconds
IDLE_CONNECTIONS = 8  # kept per server and process; more are opened when needed

#: Defaults libpq applies unless the URL names them (keepalives find a dead server
#: behind an idle connection: the mount's LISTEN connection is idle for hours).
_DEFAULTS = {
    "connect_timeout": str(CONNECT_TIMEOUT),
    "application_name": "butler",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": str(TCP_USER_TIMEOUT_MS),
}
_SECRET_PARAMETERS = ("password",)

SCHEMES = ("postgresql://", "postgres://")

T = TypeVar("T")

#: A connection whose rows are tuples (psycopg's default row factory).
Connection = psycopg.Connection[tuple[Any, ...]]
Rows = list[tuple[Any, ...]]


def is_postgres_url(text: str) -> bool:
    return text.startswith(SCHEMES) or text.startswith("service=")


@dataclass(frozen=True)
class Address:
    """Where a registry's server is (never how to log in)."""

    url: str

    @classmethod
    def parse(cls, url: str, source: str = "registry") -> Address:
        """Check ``url`` as libpq reads it; ConfigError naming ``source`` if it is not one."""
        if not isinstance(url, str) or not is_postgres_url(url):
            raise ConfigError(
                f"{source}: the registry must be a PostgreSQL URL "
                "(postgresql://HOST[:PORT]/DATABASE), not this value"
            )
        try:
            parameters = conninfo.conninfo_to_dict(url)
        except psycopg.Error:
            # libpq's message may quote the URL, which may hold a password: not shown.
            raise ConfigError(
                f"{source}: the registry is not a valid PostgreSQL URL; write it as "
                "postgresql://HOST[:PORT]/DATABASE[?PARAMETER=VALUE...]"
            ) from None
        if any(key in parameters for key in _SECRET_PARAMETERS):
            raise ConfigError(
                f"{source}: the registry URL holds a password; remove it and give it through "
                "~/.pgpass (or PGPASSFILE), a service file (PGSERVICE) or the environment, "
                "never in butler.yaml or on a command line"
            )
        return cls(url)

    @property
    def parameters(self) -> dict[str, str]:
        return {k: str(v) for k, v in conninfo.conninfo_to_dict(self.url).items()}

    def conninfo(self) -> str:
        """The connection string: the URL with our bounded waits where it sets none."""
        given = self.parameters
        extra = {key: value for key, value in _DEFAULTS.items() if key not in given}
        return conninfo.make_conninfo(self.url, **extra)

    def describe(self) -> str:
        """``database butler on host db1, port 5432``: for messages (no user, no secret)."""
        given = self.parameters
        if "service" in given:
            return f"PostgreSQL service {given['service']!r}"
        database = given.get("dbname") or os.environ.get("PGDATABASE") or "(default database)"
        host = given.get("host") or given.get("hostaddr") or os.environ.get("PGHOST")
        where = f"host {host}" if host else "the local server"
        if host and host.startswith("/"):
            where = f"the server on socket directory {host}"
        port = given.get("port") or os.environ.get("PGPORT")
        return f"PostgreSQL database {database} on {where}" + (f", port {port}" if port else "")


def connect(address: Address, *, autocommit: bool = True) -> Connection:
    """A new connection, or a ButlerError saying why not."""
    try:
        return psycopg.connect(address.conninfo(), autocommit=autocommit)
    except psycopg.Error as exc:
        raise database_error(exc, address, "connect") from None


# -- errors ---------------------------------------------------------------------------

#: SQLSTATE classes and codes → (errno, what to do).
_ADVICE: dict[str, tuple[int, str]] = {
    "28": (errno.EACCES, "give the password through ~/.pgpass, PGPASSFILE or PGSERVICE "
                         "(never in butler.yaml), or ask the database admin for access"),
    "3D000": (errno.ENOENT, "create the database (createdb) or fix registry: in butler.yaml"),
    "42501": (errno.EACCES, "ask the database admin to grant this user the rights on the "
                            "repository's schema (docs/scale-out.md)"),
    "53100": (errno.ENOSPC, "the database server's disk is full; free space there, then retry"),
    "53200": (errno.ENOMEM, "the database server is out of memory; retry later"),
    "53300": (errno.EAGAIN, "the server has too many connections; put a pooler such as "
                            "PgBouncer in front of it or raise max_connections"),
    "25006": (errno.EROFS, "the server is a read-only standby; point registry: at the primary"),
    "40001": (errno.EAGAIN, "another writer conflicted; retry"),
    "40P01": (errno.EAGAIN, "another writer conflicted (deadlock); retry"),
    "57014": (errno.ETIMEDOUT, "a statement timed out; retry, or raise statement_timeout"),
    "57P": (errno.EIO, "the server is shutting down or restarting; retry when it is back"),
    "08": (errno.EIO, "check that the server runs and accepts connections from this host, "
                      "then retry"),
}  # fmt: skip
_DAMAGED = ("3F000", "42P01", "42703")  # no schema, a missing table or column


def database_error(exc: psycopg.Error, address: Address, doing: str) -> ButlerError:
    """A ButlerError for a psycopg failure: the errno that says why, what to do, and
    the server named by host (libpq's messages never hold a password)."""
    reason = _first_line(exc)
    state = exc.sqlstate or _connect_state(reason)
    where = address.describe()
    if state in _DAMAGED:
        return RegistryDamagedError(
            f"the registry in {where} is missing its schema or a table ({reason}); run "
            "'butler reindex' on the repository to rebuild it from the records",
            errno=errno.EIO,
        )
    advice = _ADVICE.get(state) or _ADVICE.get(state[:3]) or _ADVICE.get(state[:2])
    if advice is None and isinstance(exc, psycopg.OperationalError):
        advice = _ADVICE["08"]  # no SQLSTATE: the connection itself failed
    number, what = advice or (errno.EIO, "retry; if it persists, run 'butler verify'")
    return RepositoryError(f"registry in {where} could not {doing}: {reason}; {what}", errno=number)


#: A failed connect has no SQLSTATE in psycopg: libpq's text says why.
_CONNECT_FAILURES = (
    ("authentication failed", "28P01"),
    ("no password supplied", "28P01"),
    ("password is required", "28P01"),
    ("does not exist", "3D000"),  # database "x" (role "x" is 28000, below)
)


def _connect_state(reason: str) -> str:
    if re.search(r'role "[^"]*" does not exist', reason):
        return "28000"
    for text, state in _CONNECT_FAILURES:
        if text in reason:
            return state
    return ""


def _first_line(exc: psycopg.Error) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text or type(exc).__name__


# -- the pool ------------------------------------------------------------------------------


class Pool:
    """Idle autocommit connections to one server, for this process's reads."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._failure: tuple[float, ButlerError] | None = None

    def fetch(self, sql: str, parameters: Sequence[object] | Mapping[str, object] = ()) -> Rows:
        """Run one read and return its rows."""
        return self.run(
            lambda connection: connection.execute(sql, parameters).fetchall(), "be read"
        )

    def run(self, work: Callable[[Connection], T], doing: str) -> T:
        """``work(connection)`` on a connection of the pool.  A connection the server dropped
        while it was idle (a restart) is replaced, and ``work`` tried once more on a new
        one: ``work`` must be a read, or one transaction of its own."""
        for attempt in range(2):
            connection, fresh = self._take()
            try:
                result = work(connection)
            except psycopg.Error as exc:
                if connection.broken or connection.closed:
                    connection.close()
                    if not fresh and attempt == 0:
                        self.close()  # a restart dropped them all: connect afresh
                        continue
                else:
                    self._give(connection)
                raise database_error(exc, self.address, doing) from None
            self._give(connection)
            return result
        raise AssertionError("unreachable")

    def _take(self) -> tuple[Connection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), False
            failure = self._failure
        if failure is not None and time.monotonic() - failure[0] < RETRY_SECONDS:
            raise failure[1]
        started = time.monotonic()
        try:
            connection = connect(self.address)
        except ButlerError as exc:
            if time.monotonic() - started > SLOW_FAILURE:
                self._failure = (time.monotonic(), exc)  # a timeout: not paid by every read
            raise
        self._failure = None
        return connection, True

    def _give(self, connection: Connection) -> None:
        if connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            connection.close()  # never hand on a connection inside a transaction
            return
        with self._lock:
            if len(self._idle) < IDLE_CONNECTIONS:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


_pools: dict[tuple[int, str], Pool] = {}
_pools_lock = threading.Lock()


def pool_for(address: Address) -> Pool:
    """This process's pool for ``address`` (a forked child makes its own)."""
    key = (os.getpid(), address.url)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = Pool(address)
        return pool


@atexit.register
def _close_pools() -> None:
    with _pools_lock:
        pools = [pool for (pid, _), pool in _pools.items() if pid == os.getpid()]
        _pools.clear()
    for pool in pools:
        pool.close()
