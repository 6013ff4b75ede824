"""``butler reindex``: the registry again from ``.butler/records`` and the files.

Every version, checksum and provenance record comes back from the records.
The rebuild is one registry transaction: until it commits, readers (a mount)
see the old registry whole; if anything fails, the old one stays as it was.
It never leaves a registry emptier than it found it: a dataset the registry
holds whose record is missing or torn stops the rebuild (``butler repair``
restores the record first, from another output or the registry itself).

A damaged registry file (it does not open) is kept aside as
``.butler/damaged/registry-<time>`` and a new one is built (a damaged
PostgreSQL schema is renamed ``<schema>_damaged_<time>``; a missing one is
made again).  A file at a template path with no record (copied in by hand) is
adopted as a new version with a fresh record; files matching no template are
reported, untouched.  Journals left by dead writers are then finished by the
normal recovery.

``registry=`` (``butler reindex REPO --registry URL``) *moves* the repository to
another engine: ``postgresql://HOST/DB`` (a new schema there) or ``sqlite``.
The new registry is filled from the records, then ``butler.yaml`` is switched
to it in one rename; a SQLite file left behind is deleted (the records and the
new registry hold everything), a PostgreSQL schema left behind is kept as it
was (another copy of the repository may still use it) and named in the report.
Processes that opened the repository before the move keep its old registry:
stop writers and mounts first (docs/scale-out.md).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from butler import layout, recovery
from butler.apply import apply_put
from butler.errors import ConfigError, RegistryDamagedError
from butler.journal import FileRecord, PutEntry, RemovalEntry, TornEntryError, new_txid
from butler.maintenance.common import Progress, hash_relative, read_entry, record_names
from butler.registry import Registry, SQLiteRegistry, canonical_data_id
from butler.repository import DataRepository


@dataclass
class ReindexReport:
    records: int = 0
    removals: int = 0
    adopted: list[str] = field(default_factory=list)  # files found at template paths, unrecorded
    ignored: list[str] = field(default_factory=list)  # files matching no template
    damaged_kept: str = ""  # where a registry that did not open was moved
    moved_to: str = ""  # the new registry, after a move to another engine
    left_behind: str = ""  # the old registry a move kept (a PostgreSQL schema)


def reindex(
    path: str | os.PathLike[str],
    progress: Progress | None = None,
    *,
    registry: str | None = None,
    schema: str | None = None,
) -> ReindexReport:
    """Rebuild the registry of the repository at ``path`` from its records and files;
    with ``registry``, in another engine (a move: see the module's docstring)."""
    repo = DataRepository(path)
    report = ReindexReport()
    moving = registry is not None and _is_move(repo, registry, schema)
    try:
        with repo.locks.repository():
            entries = _read_records(repo, report, progress)
            if moving:
                assert registry is not None
                _move(repo, entries, registry, schema, report)
            else:
                _fill(repo.registry, entries, report, clear=True)
                _adopt_unrecorded(repo, _recorded(entries), report)
                repo.registry.sync()
        if moving:  # the repository again, with its new registry and locks
            repo.close()
            repo = DataRepository(path)
            with repo.locks.repository():
                _adopt_unrecorded(repo, _recorded(entries), report)
        recovery.recover(repo)
    finally:
        repo.close()
    return report


def _read_records(
    repo: DataRepository, report: ReindexReport, progress: Progress | None
) -> list[PutEntry | RemovalEntry]:
    """Every record, in commit order; stops (nothing changed) if one the registry holds
    is missing or torn."""
    entries: list[PutEntry | RemovalEntry] = []
    torn: list[str] = []
    names = record_names(repo)
    for done, txid in enumerate(names, 1):
        try:
            entries.append(read_entry(repo, layout.record(txid)))
        except TornEntryError:
            torn.append(txid)
        if progress is not None:
            progress(done, len(names))
    known = _registry_transactions(repo, report)
    lost = known - {entry.txid for entry in entries}
    if lost or torn:
        raise RegistryDamagedError(
            f"reindex of {repo.path} stopped, nothing changed: it would lose "
            f"{len(lost | set(torn))} dataset version(s) whose records are missing or torn "
            f"(e.g. {sorted(lost | set(torn))[0]}); run 'butler repair' on the aggregator or "
            "repository first (it restores records from other outputs or the registry)",
            errno=errno.EIO,
        )
    return entries


def _fill(
    registry: Registry,
    entries: Sequence[PutEntry | RemovalEntry],
    report: ReindexReport,
    *,
    clear: bool,
) -> None:
    """One transaction: (clear, then) every entry in commit order; runs of puts in bulk."""
    with registry.writer() as writer:
        if clear:
            writer.clear()
        run: list[PutEntry] = []
        for entry in entries:
            if isinstance(entry, RemovalEntry):
                writer.add_many(run)
                run = []
                writer.remove(entry)
                report.removals += 1
            else:
                run.append(entry)
                report.records += 1
        writer.add_many(run)
        writer.commit()


def _recorded(entries: Sequence[PutEntry | RemovalEntry]) -> set[str]:
    return {r.path for e in entries if isinstance(e, PutEntry) for r in e.files}


def _is_move(repo: DataRepository, registry: str, schema: str | None) -> bool:
    if registry == "sqlite":
        if schema is not None:
            raise ConfigError("--schema is for a PostgreSQL registry, not for sqlite")
        return repo.database is not None
    if repo.database is None:
        return True
    return registry != repo.config.get("registry") or (
        schema is not None and schema != repo.database.schema
    )


def _move(
    repo: DataRepository,
    entries: Sequence[PutEntry | RemovalEntry],
    registry: str,
    schema: str | None,
    report: ReindexReport,
) -> None:
    """Fill a registry in the other engine, then switch butler.yaml to it."""
    config = dict(repo.config)
    config.pop("registry", None)
    config.pop("schema", None)
    if registry == "sqlite":
        path = repo.path / layout.REGISTRY
        if path.exists():  # a file left from before an earlier move: never reused
            _keep_aside(repo, "registry-replaced")
        target: Registry = SQLiteRegistry(path, create=True)
        report.moved_to = str(path)
        closing = target.close
    else:
        from butler.postgres import Database, create_schema  # psycopg: an optional extra

        made = create_schema(registry, schema, repo.label, str(repo.path))
        database = Database(registry, made, repo.root, "--registry")
        target = database.registry()
        config.update(registry=registry, schema=made)
        report.moved_to = database.describe()
        closing = database.close
    try:
        _fill(target, entries, report, clear=False)
        target.sync()
    finally:
        closing()
    old_database = repo.database
    repo.reset_registry()
    repo.write_config(config)  # the switch: one rename of butler.yaml
    if old_database is not None:
        report.left_behind = (
            f"{old_database.describe()} (kept as it was; drop it with 'DROP SCHEMA "
            f"{old_database.schema} CASCADE' once no copy of the repository uses it)"
        )
    else:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(repo.path / f"{layout.REGISTRY}{suffix}")


def _keep_aside(repo: DataRepository, name: str) -> str:
    """Move the SQLite registry (and its -wal, -shm) into ``.butler/damaged/`` as
    ``<name>-<time>``, never deleting it; the path it now has."""
    path = repo.path / layout.REGISTRY
    (repo.path / layout.DAMAGED).mkdir(exist_ok=True)
    aside = str(repo.path / layout.DAMAGED / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    return aside


def _registry_transactions(repo: DataRepository, report: ReindexReport) -> set[str]:
    """What the current registry holds (nothing if there is none); one that does not
    open is moved aside, never deleted, and a new one made."""
    if repo.database is not None:
        return _schema_transactions(repo, report)
    path = repo.path / layout.REGISTRY
    if not path.exists():
        SQLiteRegistry(path, create=True).close()
        repo.reset_registry()
        return set()
    try:
        return repo.registry.transactions()
    except RegistryDamagedError:
        pass
    repo.reset_registry()
    report.damaged_kept = _keep_aside(repo, "registry")
    SQLiteRegistry(path, create=True).close()
    return set()


def _schema_transactions(repo: DataRepository, report: ReindexReport) -> set[str]:
    """:func:`_registry_transactions` for a PostgreSQL schema: made again if missing, a
    damaged one renamed aside (never dropped)."""
    database = repo.database
    assert database is not None
    try:
        if database.exists():
            return repo.registry.transactions()
    except RegistryDamagedError:
        repo.reset_registry()
        aside = database.rename_aside(f"damaged_{time.strftime('%Y%m%dT%H%M%S')}")
        report.damaged_kept = f"schema {aside}"
    database.make_schema(repo.label, str(repo.path))
    repo.reset_registry()
    return set()


def _adopt_unrecorded(repo: DataRepository, recorded: set[str], report: ReindexReport) -> None:
    for directory, subdirs, files in os.walk(repo.path):
        relative_dir = os.path.relpath(directory, repo.path)
        if relative_dir == ".":
            subdirs[:] = [d for d in subdirs if d not in layout.RESERVED_TOP]
            relative_dir = ""
        subdirs[:] = [d for d in subdirs if not os.path.islink(os.path.join(directory, d))]
        for name in files:
            relative = os.path.join(relative_dir, name) if relative_dir else name
            if relative in recorded or relative in layout.RESERVED_TOP:
                continue
            if name.startswith(layout.REGISTRY) or os.path.islink(os.path.join(directory, name)):
                continue
            if _adopt(repo, relative):
                report.adopted.append(relative)
            else:
                report.ignored.append(relative)


def _adopt(repo: DataRepository, relative: str) -> bool:
    """Record a file found at a template path as the next version of its dataset."""
    for name, definition in repo.policy.dataset_types.items():
        for index, location in enumerate(definition.locations):
            parsed = location.template.parse(relative)
            if parsed is None or parsed[0] not in (None, name):
                continue
            digest, size = hash_relative(repo, relative)
            data_id = parsed[1]
            with repo.registry.writer() as writer:
                version = writer.max_version(name, canonical_data_id(data_id)) + 1
                entry = PutEntry(
                    new_txid(),
                    name,
                    dict(data_id),
                    version,
                    repo.root.lstat(relative).st_mtime,
                    (
                        FileRecord(
                            index,
                            location is definition.primary,
                            relative,
                            location.storage,
                            size,
                            digest,
                            staged="",
                        ),
                    ),
                    (str(repo.path),),
                    {"adopted": "found at its template path by butler reindex"},
                )
                # Its version's own name first, then the record, then the row.
                target = layout.version_file(version, relative)
                with repo.root.directory(target.rpartition("/")[0], create=True):
                    pass
                if not repo.root.exists(target):
                    repo.root.link(relative, target)
                _write_record(repo, entry)
                apply_put(repo, entry, writer, newest=False)
                writer.commit()
            return True
    return False


def _write_record(repo: DataRepository, entry: PutEntry) -> None:
    from butler.durable import fsync_directory, write_new
    from butler.journal import encode

    write_new(repo.root, layout.record(entry.txid), encode(entry), sync=True)
    fsync_directory(repo.root, layout.RECORDS)


__all__ = ["ReindexReport", "reindex"]
