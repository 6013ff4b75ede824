"""A Data Repository: a self-contained directory of datasets (SPEC §3).

Its layout is in :mod:`butler.layout`.  A repository never depends on an
aggregator: its parents are stored relative to its own directory, so moving a
family of repositories together keeps it working.

Opening (``DataRepository(path)``) reads ``butler.yaml`` and nothing else: it
takes no lock, runs no recovery and changes nothing.  Whoever writes calls
:func:`butler.recovery.recover` first (the resolver does, for outputs).
Every file below the root is reached through :class:`butler.confine.Root`:
never through a symbolic link, never outside the tree.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import stat
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from butler import layout, yamlio
from butler.config import FORMAT_VERSION, check_label, load_repository_config
from butler.confine import Root
from butler.durable import fsync_directory, write_new
from butler.errors import (
    ConfigError,
    Hint,
    RegistryDamagedError,
    RepositoryError,
    UnsafePathError,
    os_error_text,
)
from butler.group import GroupCommit
from butler.journal import new_txid
from butler.locks import FileLocks, Locks
from butler.policy import DatasetTypeDef, Policy
from butler.registry import Registry, Row, SQLiteRegistry
from butler.settle import Settlement

if TYPE_CHECKING:
    from butler.postgres import Database

CONFIG_NAME = layout.CONFIG
REGISTRY_NAME = layout.REGISTRY
INTERNAL = layout.INTERNAL


class DataRepository:
    """One repository on disk.  ``DataRepository(path)`` opens; ``create`` makes one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().resolve()
        if not (self.path / CONFIG_NAME).is_file():
            raise RepositoryError(
                f"{self.path} is not a butler repository (no {CONFIG_NAME})",
                errno=errno.ENOENT,
                hint=Hint("create", {"path": str(self.path)}),
            )
        try:
            self.root = Root(str(self.path))
        except OSError as exc:
            raise RepositoryError(
                f"cannot open repository {self.path}: {os_error_text(exc)}", errno=exc.errno
            ) from None
        self.internal = self.path / INTERNAL
        self._load_config()
        #: The PostgreSQL registry's database (``registry:`` in butler.yaml), else None.
        self.database = _database_of(self.config, self.label, self.root, self.path)
        self.locks: Locks = FileLocks(self.root) if self.database is None else self.database.locks
        self._registry: Registry | None = None
        self.settlement = Settlement(self.root, lambda: self.registry)
        #: What recovery could not do here (shown by the mount's status, and verify).
        self.problems: list[str] = []
        #: Group commits of puts whose outputs start with this one (butler.group).
        self.groups: dict[tuple[str, ...], GroupCommit[Any]] = {}
        self.groups_lock = threading.Lock()
        _settle_at_exit(self)

    # -- configuration -----------------------------------------------------------

    def _load_config(self) -> None:
        """Read butler.yaml (never through a link; schema and bounds: butler/config.py)."""
        config_path = self.path / CONFIG_NAME
        try:
            fd = self.root.open(CONFIG_NAME)
        except UnsafePathError:
            raise
        except OSError as exc:
            raise RepositoryError(
                f"cannot read {config_path}: {os_error_text(exc)}", errno=exc.errno
            ) from None
        try:
            self._config_stat = os.fstat(fd)
            with os.fdopen(fd, "rb", closefd=False) as stream:
                loaded = load_repository_config(config_path, stream)
        finally:
            os.close(fd)
        self.config: dict[str, object] = loaded.raw
        self.label = loaded.label or self.path.name
        self.parents = loaded.parent_paths(self.path)
        self.policy = Policy.from_mapping(loaded.policy, str(config_path))

    def reload_config_if_changed(self) -> bool:
        """Reread butler.yaml if another process changed it (e.g. a define)."""
        try:
            now = self.root.lstat(CONFIG_NAME)
        except OSError:
            return False
        seen = self._config_stat
        if (now.st_ino, now.st_mtime_ns, now.st_size) == (
            seen.st_ino,
            seen.st_mtime_ns,
            seen.st_size,
        ):
            return False
        self._load_config()
        return True

    def config_with(
        self, definitions: Sequence[tuple[DatasetTypeDef, Mapping[str, object] | None, bool]]
    ) -> dict[str, object] | None:
        """butler.yaml with dataset types (and their genres) added, or None if it holds them.

        Each item is (definition, its genre's raw spec if the repository may lack it,
        replace an existing definition of that name).  Validated before it is returned.
        """
        self.reload_config_if_changed()
        policy = dict(self.policy.raw)
        genres = dict(policy.get("genres") or {})  # type: ignore[call-overload]
        types = dict(policy.get("datasetTypes") or {})  # type: ignore[call-overload]
        changed = False
        for definition, genre_spec, replace in definitions:
            if definition.genre not in genres:
                if genre_spec is None:
                    raise ConfigError(
                        f"repository {self.label} has no genre {definition.genre!r}; add it "
                        "to its policy"
                    )
                genres[definition.genre] = dict(genre_spec)
                changed = True
            if definition.name not in types or (
                replace and types[definition.name] != definition.raw
            ):
                types[definition.name] = definition.raw
                changed = True
        if not changed:
            return None
        policy["genres"] = genres
        policy["datasetTypes"] = types
        Policy.from_mapping(policy, str(self.path / CONFIG_NAME))
        return {**self.config, "policy": policy}

    def stage_config(self, config: Mapping[str, object], name: str) -> None:
        """Write ``config`` as the staged file ``name`` (fsynced; renamed into place later)."""
        write_new(self.root, layout.staged(name), yamlio.dumps(dict(config)).encode(), sync=True)

    def install_config(self, staged_name: str) -> None:
        """Rename a staged butler.yaml into place (durable), and reload it."""
        self.root.rename(layout.staged(staged_name), CONFIG_NAME)
        fsync_directory(self.root, "")
        self._load_config()

    def write_config(self, config: Mapping[str, object]) -> None:
        """Replace butler.yaml atomically; the caller holds the repository lock.

        Staged under the writer's owner tag, so a crash leaves only a staged file that the
        next recovery removes, never a stray temporary beside butler.yaml.
        """
        name = layout.staged_name(new_txid(), self.locks.owner(), 0)
        self.stage_config(config, name)
        try:
            self.install_config(name)
        except BaseException:
            self.root.unlink(layout.staged(name))
            raise

    # -- creation ----------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        label: str | None = None,
        policy: Mapping[str, object] | None = None,
        parents: Sequence[str | os.PathLike[str]] = (),
        registry: str | None = None,
        schema: str | None = None,
    ) -> DataRepository:
        """Create a repository at ``path`` (which must not exist or be an empty directory).

        ``registry``: ``postgresql://HOST/DB`` keeps its registry in PostgreSQL, in a
        schema of its own (``schema``, default named from the label); None: the
        ``BUTLER_REGISTRY`` environment variable if set, else SQLite (``"sqlite"``).
        """
        root = Path(path).expanduser().resolve()
        if registry is None:
            registry = os.environ.get("BUTLER_REGISTRY", "").strip() or None
        if registry == "sqlite":
            registry = None
        if schema is not None and registry is None:
            raise ConfigError("a schema is given but no PostgreSQL registry; give registry= too")
        if registry is not None:
            from butler.postgres import check_url  # only now: psycopg is an extra

            check_url(registry, "registry")
        if (root / CONFIG_NAME).exists():
            raise RepositoryError(f"{root} is already a repository; open it with Butler({root!s})")
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise RepositoryError(f"{root} exists and is not an empty directory; choose a new path")
        Policy.from_mapping(policy, f"policy for new repository {root}")
        if label is not None:
            check_label(label, f"new repository {root}")  # checked again at every open
        try:
            root.mkdir(parents=True, exist_ok=True)
            for sub in layout.DIRECTORIES:
                (root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RepositoryError(
                f"cannot create repository {root}: {os_error_text(exc)}", errno=exc.errno
            ) from None
        relative_parents = [
            os.path.relpath(Path(parent).expanduser().resolve(), root) for parent in parents
        ]
        config: dict[str, object] = {
            "butler": FORMAT_VERSION,
            "label": label or root.name,
            "parents": relative_parents,
            "policy": dict(policy or {}),
        }
        if registry is None:
            SQLiteRegistry(root / REGISTRY_NAME, create=True).close()
        else:
            from butler.postgres import create_schema  # only now: psycopg is an extra

            config["registry"] = registry
            config["schema"] = create_schema(registry, schema, str(config["label"]), str(root))
        # butler.yaml last: a repository is one only once everything else is there.
        staged = root / layout.staged(f"create-{os.getpid()}.yaml")
        staged.write_text(yamlio.dumps(config), encoding="utf-8")
        os.replace(staged, root / CONFIG_NAME)
        return cls(root)

    # -- the registry ----------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = self._open_registry()
        return self._registry

    def _open_registry(self) -> Registry:
        if self.database is not None:
            return self.database.open_registry(self.label, str(self.path), self.has_records())
        path = self.path / REGISTRY_NAME
        try:
            found = self.root.lstat(REGISTRY_NAME)
        except FileNotFoundError:
            found = None
        if found is not None and not stat.S_ISREG(found.st_mode):
            raise UnsafePathError(
                f"{path} is not a regular file (a link or a directory); move it away and "
                "run 'butler reindex' on the repository"
            )
        if found is None:
            if self.has_records():
                raise RegistryDamagedError(
                    f"{path} is missing but the repository holds records of its datasets; "
                    f"run 'butler reindex {self.path}' to rebuild it from them"
                )
            if not os.access(self.path, os.W_OK):
                raise RepositoryError(f"{path} is missing and the repository is read-only")
            return SQLiteRegistry(path, create=True)
        return SQLiteRegistry(path)

    def check_registry(self) -> None:
        """Raise if the registry is missing or empty beside records (a lost index must be
        rebuilt with ``butler reindex``, never silently started afresh)."""
        registry = self.registry
        if registry.is_empty() and self.has_records():
            raise RegistryDamagedError(
                f"registry {self.registry_name()} is empty but the repository holds "
                f"records of its datasets; run 'butler reindex {self.path}' to rebuild it"
            )

    def registry_name(self) -> str:
        """Where the registry is, for messages: its file, or its PostgreSQL schema."""
        if self.database is not None:
            return self.database.describe()
        return str(self.path / REGISTRY_NAME)

    def has_records(self) -> bool:
        try:
            with os.scandir(self.path / layout.RECORDS) as entries:
                return any(layout.txid_of(entry.name) for entry in entries)
        except FileNotFoundError:
            return False

    def reset_registry(self) -> None:
        """Forget the open registry (after reindex moved a damaged one aside)."""
        if self._registry is not None:
            self._registry.close()
        self._registry = None

    # -- files ---------------------------------------------------------------------

    def file_of(self, row: Row) -> Path:
        """Where a user finds a version's file: at its template path while it is current,
        else under ``.butler/versions/v<N>/``.  (Reads open the version's own name,
        which never changes: :meth:`open_file`.)"""
        if row.current and not row.removed:
            return self.path / row.path
        return self.path / layout.version_file(row.version, row.path)

    def open_file(self, row: Row) -> int:
        """An fd on exactly this version's file, opened without following any link."""
        fd = self.open_version(row.version, row.path, current=row.current and not row.removed)
        assert fd is not None
        return fd

    def open_version(
        self, version: int, path: str, *, cached: bool = False, current: bool = True
    ) -> int | None:
        """An fd on version ``version`` of the file at template path ``path``: its own
        name, never through a link.  With ``cached``, None unless the kernel can resolve
        it without waiting for the disk (hot paths try that first)."""
        relative = layout.version_file(version, path)
        if cached:
            return self.root.open_cached(relative)
        try:
            return self.root.open(relative)
        except FileNotFoundError:
            if not current:
                raise
        # A repository written before every version had its own name (round 1) keeps
        # its current versions at the template path only.
        return self.root.open(path)

    def close(self) -> None:
        self.settlement.settle_all()
        if self._registry is not None:
            self._registry.close()
        self.locks.release()

    def __repr__(self) -> str:
        return f"DataRepository({str(self.path)!r}, label={self.label!r})"

    # -- compatibility: the repository lock ---------------------------------------------

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """The repository's write lock (see :mod:`butler.locks`)."""
        return self.locks.repository()


_open_repositories: weakref.WeakSet[DataRepository] = weakref.WeakSet()


def _settle_at_exit(repo: DataRepository) -> None:
    _open_repositories.add(repo)


@atexit.register
def _settle_open_repositories() -> None:
    """At exit, settle what each open repository applied (its journals would otherwise
    wait for the next open's recovery)."""
    for repo in list(_open_repositories):
        with contextlib.suppress(Exception):
            repo.settlement.settle_all()
        with contextlib.suppress(Exception):
            repo.locks.release()  # after settling: a database session closes cleanly


def _database_of(
    config: Mapping[str, object], label: str, root: Root, path: Path
) -> Database | None:
    """The PostgreSQL database ``butler.yaml`` names (psycopg imported only then)."""
    if config.get("registry") in (None, "sqlite") and config.get("schema") is None:
        return None
    from butler.postgres import database

    return database(dict(config), label, root, str(path / CONFIG_NAME))


def is_repository(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()
