"""A Data Repository: a self-contained directory of datasets (SPEC §3).

    REPO/butler.yaml          format version, label, parents, policy
    REPO/registry.sqlite3     index (a cache of .butler/records, see registry.py)
    REPO/<template paths>     the latest version of every dataset, plain files
    REPO/.butler/lock         flock taken while committing (see transaction.py)
    REPO/.butler/staging/     files being written by a put, fsynced, not yet visible
    REPO/.butler/journal/     one JSON per put between "prepared" and "committed"
    REPO/.butler/records/     one JSON per committed put: versions, checksums, provenance
    REPO/.butler/versions/vN/<template path>   version N once a newer one replaced it

A repository never depends on an aggregator: its parents are stored relative
to its own directory, so moving a family of repositories together keeps it
working.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from butler import yamlio
from butler.config import check_label, load_repository_config
from butler.errors import ConfigError, RepositoryError
from butler.policy import DatasetTypeDef, Policy
from butler.registry import Registry, Row

FORMAT_VERSION = 1
CONFIG_NAME = "butler.yaml"
REGISTRY_NAME = "registry.sqlite3"
INTERNAL = ".butler"


class DataRepository:
    """One repository on disk.  ``DataRepository(path)`` opens; ``create`` makes one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().resolve()
        config_path = self.path / CONFIG_NAME
        if not config_path.is_file():
            raise RepositoryError(
                f"{self.path} is not a butler repository (no {CONFIG_NAME}); "
                "create one with 'butler create PATH' or DataRepository.create(path)"
            )
        self._load_config(config_path)
        self._registry: Registry | None = None
        self.internal = self.path / INTERNAL
        self._thread_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._lock_pid = 0
        from butler.transaction import recover  # late: transaction imports this module

        recover(self)

    def _load_config(self, config_path: Path) -> None:
        loaded = load_repository_config(config_path)  # bounded read, schema: butler/config.py
        self.config: dict[str, object] = loaded.raw
        self.label = loaded.label or self.path.name
        self.parents = loaded.parent_paths(self.path)
        self.policy = Policy.from_mapping(loaded.policy, str(config_path))
        self._config_mtime = config_path.stat().st_mtime_ns

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        label: str | None = None,
        policy: Mapping[str, object] | None = None,
        parents: Sequence[str | os.PathLike[str]] = (),
    ) -> DataRepository:
        """Create a repository at ``path`` (which must not exist or be an empty directory)."""
        root = Path(path).expanduser().resolve()
        if (root / CONFIG_NAME).exists():
            raise RepositoryError(f"{root} is already a repository; open it with Butler({root!s})")
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise RepositoryError(f"{root} exists and is not an empty directory; choose a new path")
        Policy.from_mapping(policy, f"policy for new repository {root}")
        if label is not None:
            check_label(label, f"new repository {root}")  # checked again at every open
        root.mkdir(parents=True, exist_ok=True)
        for sub in ("staging", "journal", "records", "versions"):
            (root / INTERNAL / sub).mkdir(parents=True, exist_ok=True)
        relative_parents = [
            os.path.relpath(Path(parent).expanduser().resolve(), root) for parent in parents
        ]
        config: dict[str, object] = {
            "butler": FORMAT_VERSION,
            "label": label or root.name,
            "parents": relative_parents,
            "policy": dict(policy or {}),
        }
        _write_atomically(root / CONFIG_NAME, yamlio.dumps(config))
        Registry(root / REGISTRY_NAME).close()
        return cls(root)

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry(self.path / REGISTRY_NAME)
        return self._registry

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()
        with self._thread_lock:
            if self._lock_fd is not None and self._lock_pid == os.getpid():
                os.close(self._lock_fd)
            self._lock_fd = None

    def __repr__(self) -> str:
        return f"DataRepository({str(self.path)!r}, label={self.label!r})"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive between processes (flock) and between this process's threads.

        The descriptor is kept open (reopened after a fork, whose child must not share
        the parent's lock): a put takes this lock once per output.
        """
        with self._thread_lock:
            if self._lock_fd is None or self._lock_pid != os.getpid():
                self.internal.mkdir(exist_ok=True)
                self._lock_fd = os.open(self.internal / "lock", os.O_RDWR | os.O_CREAT, 0o644)
                self._lock_pid = os.getpid()
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def file_of(self, row: Row) -> Path:
        """Where a version's file is: its template path while current, else versions/vN/."""
        if row.current and not row.removed:
            return self.path / row.path
        return self.internal / "versions" / f"v{row.version}" / row.path

    def reload_config_if_changed(self) -> bool:
        """Reread butler.yaml if another process changed it (e.g. a define)."""
        config_path = self.path / CONFIG_NAME
        if config_path.stat().st_mtime_ns == self._config_mtime:
            return False
        self._load_config(config_path)
        return True

    def add_dataset_type(self, definition: DatasetTypeDef, replace: bool = False) -> None:
        """Record a dataset type in butler.yaml so the repository stays standalone."""
        with self.lock():
            self.reload_config_if_changed()
            if definition.name in self.policy.dataset_types and not replace:
                return
            config = dict(self.config)
            policy = dict(self.policy.raw)
            types = dict(policy.get("datasetTypes") or {})  # type: ignore[call-overload]
            types[definition.name] = definition.raw
            genres = dict(policy.get("genres") or {})  # type: ignore[call-overload]
            genre = definition.genre
            if genre not in genres:
                raise ConfigError(
                    f"repository {self.label} has no genre {genre!r}; add it to its policy"
                )
            policy["datasetTypes"] = types
            config["policy"] = policy
            Policy.from_mapping(policy, str(self.path / CONFIG_NAME))
            _write_atomically(self.path / CONFIG_NAME, yamlio.dumps(config))
            self._load_config(self.path / CONFIG_NAME)

    def add_genre(self, name: str, raw: Mapping[str, object]) -> None:
        """Copy a genre into butler.yaml (needed before a dataset type of it is copied in)."""
        with self.lock():
            self.reload_config_if_changed()
            if name in self.policy.genres:
                return
            config = dict(self.config)
            policy = dict(self.policy.raw)
            genres = dict(policy.get("genres") or {})  # type: ignore[call-overload]
            genres[name] = dict(raw)
            policy["genres"] = genres
            config["policy"] = policy
            Policy.from_mapping(policy, str(self.path / CONFIG_NAME))
            _write_atomically(self.path / CONFIG_NAME, yamlio.dumps(config))
            self._load_config(self.path / CONFIG_NAME)


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_repository(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()
