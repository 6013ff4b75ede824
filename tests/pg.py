"""A throwaway PostgreSQL cluster: for the tests (fixtures in tests/conftest.py) and
``bench/scale.py``.

``Cluster.start()`` runs ``initdb`` and ``pg_ctl`` from ``/usr/lib/postgresql/*/bin``
(Debian's ``postgresql`` package, which ``make test`` installs) in a temporary
directory.  The server refuses to run as root, so under root it runs as the
``postgres`` user the package creates, in a directory that user owns.  It listens
on a Unix socket in that directory and on 127.0.0.1 at a free port; local
connections are trusted, except for the role ``PASSWORD_ROLE``, which must give its
password (a test of credentials through ``PGPASSFILE``).  The database ``butler``
belongs to a role named after the user running the tests, so a registry URL needs
neither a user nor a password: ``postgresql:///butler?host=<socket directory>``.

Nothing here is a mock: it is the real server, stopped (and its directory removed)
at the end.
"""

from __future__ import annotations

import contextlib
import getpass
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

DATABASE = "butler"
PASSWORD_ROLE = "butler_password_user"
PASSWORD = "s3cret-Pa55-never-shown"  # the password of PASSWORD_ROLE (a test credential)
START_DEADLINE = 60.0  # seconds: initdb and the first start on a busy two-core machine


class ClusterUnavailable(RuntimeError):
    """No PostgreSQL server binaries here (the tests skip, or fail under CI=true)."""


def server_binaries() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb and pg_ctl."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parent.parent.name),
    )
    if not found:
        raise ClusterUnavailable(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); "
            "'make setup' installs Debian's postgresql package"
        )
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Cluster:
    """One running PostgreSQL server in its own temporary directory."""

    def __init__(self, base: Path, binaries: Path, port: int, user: str | None) -> None:
        self.base = base
        self.binaries = binaries
        self.port = port
        self.user = user  # the OS user the server runs as (None: this one)
        self.data = base / "data"
        self.socket_dir = base / "socket"
        self.log = base / "server.log"

    # -- life ---------------------------------------------------------------------

    @classmethod
    def start(cls, *, max_connections: int = 300, durable: bool = False) -> Cluster:
        """``durable``: the server's own defaults (fsync and synchronous commits on), as a
        benchmark needs; otherwise they are off, as a throwaway test cluster can afford."""
        binaries = server_binaries()
        user = "postgres" if os.geteuid() == 0 else None
        base = Path(tempfile.mkdtemp(prefix="butler-pg-"))
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(base, entry.pw_uid, entry.pw_gid)
        base.chmod(0o755)  # clients (root, other users) reach the socket inside
        cluster = cls(base, binaries, free_port(), user)
        try:
            cluster._initdb(max_connections, durable)
            cluster.run_server()
            cluster._make_roles()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def _as_server_user(self, command: list[str], **kwargs: object) -> str:
        done = subprocess.run(
            command,
            user=self.user,
            group=self.user,
            extra_groups=[] if self.user else None,
            cwd=self.base,
            capture_output=True,
            text=True,
            check=False,
            timeout=START_DEADLINE,
            **kwargs,  # type: ignore[call-overload]
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
                + self.log_tail()
            )
        return str(done.stdout)

    def _initdb(self, max_connections: int, durable: bool) -> None:
        self.socket_dir.mkdir()
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.socket_dir, entry.pw_uid, entry.pw_gid)
        self._as_server_user(
            [
                str(self.binaries / "initdb"),
                "--pgdata",
                str(self.data),
                "--username",
                "postgres",
                "--auth-local",
                "trust",
                "--auth-host",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C.UTF-8",
                "--no-sync",
            ]
        )
        hba = self.data / "pg_hba.conf"
        # The password role first: its line wins over the trusting ones below it.
        lines = [
            f"local all {PASSWORD_ROLE} scram-sha-256",
            f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256",
            "local all all trust",
            "host all all 127.0.0.1/32 trust",
        ]
        hba.write_text("\n".join(lines) + "\n")
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": str(max_connections),
            "shared_buffers": "1GB" if durable else "256MB",
            "max_wal_size": "8GB",
        }
        if not durable:
            # A throwaway cluster: durability is not what the tests check.
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        with (self.data / "postgresql.conf").open("a") as conf:
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")

    def run_server(self) -> None:
        """Start the server (again, after :meth:`stop_server`) and wait until it answers."""
        self._as_server_user(
            [
                str(self.binaries / "pg_ctl"),
                "--pgdata",
                str(self.data),
                "--log",
                str(self.log),
                "--wait",
                "--timeout",
                str(int(START_DEADLINE)),
                "start",
            ]
        )

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect every client, as an admin's restart)."""
        self._as_server_user(
            [
                str(self.binaries / "pg_ctl"),
                "--pgdata",
                str(self.data),
                "--mode",
                mode,
                "--wait",
                "stop",
            ]
        )

    def running(self) -> bool:
        done = subprocess.run(
            [str(self.binaries / "pg_ctl"), "--pgdata", str(self.data), "status"],
            user=self.user,
            capture_output=True,
            check=False,
        )
        return done.returncode == 0

    def destroy(self) -> None:
        """Stop the server if it runs and remove everything it wrote."""
        with contextlib.suppress(Exception):
            if self.data.exists() and self.running():
                self.stop_server("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n--- server log ---\n" + "\n".join(text)

    # -- clients ------------------------------------------------------------------

    def _make_roles(self) -> None:
        me = getpass.getuser()
        self.psql(
            f'CREATE ROLE "{me}" LOGIN CREATEDB',
            f'CREATE DATABASE {DATABASE} OWNER "{me}"',
            f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{PASSWORD}'",
            f"GRANT CREATE ON DATABASE {DATABASE} TO {PASSWORD_ROLE}",
            database="postgres",
        )

    def psql(self, *statements: str, database: str = DATABASE) -> str:
        """Run SQL as the superuser through the Unix socket; its output (unaligned)."""
        command = [
            str(self.binaries / "psql"),
            "--no-psqlrc",
            "--quiet",
            "--tuples-only",
            "--no-align",
            "--set",
            "ON_ERROR_STOP=1",
            "--host",
            str(self.socket_dir),
            "--port",
            str(self.port),
            "--username",
            "postgres",
            "--dbname",
            database,
        ]
        for statement in statements:
            command += ["--command", statement]
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def url(self, database: str = DATABASE) -> str:
        """The registry URL over the Unix socket (no user, no password)."""
        return f"postgresql:///{database}?host={self.socket_dir}&port={self.port}"

    def tcp_url(self, database: str = DATABASE, user: str | None = None) -> str:
        who = f"{user}@" if user else ""
        return f"postgresql://{who}127.0.0.1:{self.port}/{database}"

    def wait_until_answering(self, deadline: float = START_DEADLINE) -> None:
        end = time.monotonic() + deadline
        while True:
            try:
                self.psql("SELECT 1")
                return
            except RuntimeError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)


# -- looking at a registry's schema from outside (tests/butler/conftest.py) -----------


def _connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True)


def dump_schema(url: str, schema: str) -> bytes:
    """Every row of every table of a registry schema, in a fixed order."""
    from psycopg import sql

    lines: list[str] = []
    with _connect(url) as connection:
        tables = connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename", (schema,)
        ).fetchall()
        for (table,) in tables:
            rows = connection.execute(
                sql.SQL("SELECT * FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
            ).fetchall()
            lines.append(f"-- {table}")
            lines.extend(sorted(repr(row) for row in rows))
    return "\n".join(lines).encode()


def drop_schema(url: str, schema: str) -> None:
    from psycopg import sql

    with _connect(url) as connection:
        connection.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def schema_exists(url: str, schema: str) -> bool:
    with _connect(url) as connection:
        found = connection.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)
        ).fetchone()
    return found is not None
