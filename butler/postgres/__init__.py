"""The registry in PostgreSQL, for repositories that many hosts share (SPEC §9).

A repository whose ``butler.yaml`` says ``registry: postgresql://HOST/DB`` keeps
its index in its own schema there (``schema:``), while its files, journals and
records stay on the shared filesystem.  Everything above the registry is
unchanged: the same write protocol, recovery and ``reindex``.  What differs:

    connect.py   the address (no credentials), connections, errors as ButlerErrors
    schema.py    the tables, the schema's name, making and checking it
    session.py   the repository and owner locks: advisory locks, not flock
    registry.py  the Registry and its writer; NOTIFY on commit, Notices to LISTEN

``import butler`` never imports this package (nor psycopg): only opening or
creating a PostgreSQL-registered repository does, through :func:`database`.
docs/scale-out.md is the admin's side.
"""

from __future__ import annotations

from butler.confine import Root
from butler.errors import ConfigError, RegistryDamagedError

try:
    import psycopg
except ImportError as _missing:  # pragma: no cover - the extra is installed in tests
    raise ConfigError(
        "this repository's registry is in PostgreSQL, which needs the optional driver: "
        "pip install 'butlerfs[postgres]'"
    ) from _missing

from butler.postgres import schema as schemas
from butler.postgres.connect import Address, connect, database_error, is_postgres_url, pool_for
from butler.postgres.registry import Notices, PostgresRegistry
from butler.postgres.session import DatabaseLocks, Session


class Database:
    """One repository's registry in PostgreSQL: where, which schema, its session."""

    def __init__(self, url: str, schema: str, root: Root, source: str) -> None:
        self.address = Address.parse(url, source)
        self.schema = schemas.check_name(schema, source)
        self.pool = pool_for(self.address)
        self.session = Session(self.address, self.schema)
        self.locks = DatabaseLocks(self.session, self.pool, root)

    def describe(self) -> str:
        return f"schema {self.schema} in {self.address.describe()}"

    def open_registry(self, label: str, path: str, has_records: bool) -> PostgresRegistry:
        """The registry; a missing schema is made if the repository has no records yet
        (as a missing registry.sqlite3 is), else it must be rebuilt by reindex."""
        if not self.exists():
            if has_records:
                raise RegistryDamagedError(
                    f"the registry of {path} ({self.describe()}) is missing but the "
                    f"repository holds records of its datasets; run 'butler reindex {path}' "
                    "to rebuild it from them"
                )
            self.make_schema(label, path)
        return self.registry()

    def registry(self) -> PostgresRegistry:
        return PostgresRegistry(self.address, self.schema, self.pool, self.session)

    def make_schema(self, label: str, path: str) -> None:
        """Create this schema (new, or again after it was lost)."""
        made = schemas.create(self.address, label, self.schema, path)
        assert made == self.schema

    def exists(self) -> bool:
        """Is the schema there (RegistryDamagedError if it is but holds no registry)?"""
        return self.pool.run(
            lambda connection: schemas.check(connection, self.address, self.schema), "be opened"
        )

    def rename_aside(self, suffix: str) -> str:
        """Keep a damaged schema under another name (never dropped); that name."""
        aside = f"{self.schema}_{suffix}"[: schemas.MAX_IDENTIFIER]
        connection = connect(self.address)
        try:
            connection.execute(
                psycopg.sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                    psycopg.sql.Identifier(self.schema), psycopg.sql.Identifier(aside)
                )
            )
        except psycopg.Error as exc:
            raise database_error(exc, self.address, f"rename schema {self.schema}") from None
        finally:
            connection.close()
        return aside

    def close(self) -> None:
        self.session.close()


def database(config: dict[str, object], label: str, root: Root, source: str) -> Database | None:
    """The Database a repository's ``butler.yaml`` names, or None for SQLite."""
    url = config.get("registry")
    schema = config.get("schema")
    if url is None or url == "sqlite":
        if schema is not None:
            raise ConfigError(f"{source}: 'schema' needs 'registry: postgresql://...'")
        return None
    if not isinstance(url, str):
        raise ConfigError(f"{source}: registry must be a PostgreSQL URL")
    if schema is None:
        schema = schemas.name_from_label(label)
    if not isinstance(schema, str):
        raise ConfigError(f"{source}: schema must be a name")
    return Database(url, schema, root, source)


def create_schema(url: str, schema: str | None, label: str, path: str) -> str:
    """A new registry schema for a repository being created at ``path``: its name."""
    address = Address.parse(url, "--registry")
    if schema is not None:
        schemas.check_name(schema, "--schema")
    return schemas.create(address, label, schema, path)


def check_url(url: str, source: str) -> None:
    Address.parse(url, source)


__all__ = [
    "Database",
    "DatabaseLocks",
    "Notices",
    "PostgresRegistry",
    "check_url",
    "create_schema",
    "database",
    "is_postgres_url",
]
