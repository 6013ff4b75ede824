"""``butler reindex``: the registry again from ``.butler/records`` and the files.

Every version, checksum and provenance record comes back from the records.
The rebuild is one registry transaction: until it commits, readers (a mount)
see the old registry whole; if anything fails, the old one stays as it was.
It never leaves a registry emptier than it found it: a dataset the registry
holds whose record is missing or torn stops the rebuild (``butler repair``
restores the record first, from another output or the registry itself).

A damaged registry file (it does not open) is kept aside as
``.butler/damaged/registry-<time>`` and a new one is built.  A file at a
template path with no record (copied in by hand) is adopted as a new version
with a fresh record; files matching no template are reported, untouched.
Journals left by dead writers are then finished by the normal recovery.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass, field

from butler import layout, recovery
from butler.apply import apply_put
from butler.errors import RegistryDamagedError
from butler.journal import FileRecord, PutEntry, RemovalEntry, TornEntryError, new_txid
from butler.maintenance.common import Progress, hash_relative, read_entry, record_names
from butler.registry import SQLiteRegistry, canonical_data_id
from butler.repository import DataRepository


@dataclass
class ReindexReport:
    records: int = 0
    removals: int = 0
    adopted: list[str] = field(default_factory=list)  # files found at template paths, unrecorded
    ignored: list[str] = field(default_factory=list)  # files matching no template
    damaged_kept: str = ""  # where a registry that did not open was moved


def reindex(path: str | os.PathLike[str], progress: Progress | None = None) -> ReindexReport:
    """Rebuild the registry of the repository at ``path`` from its records and files."""
    repo = DataRepository(path)
    report = ReindexReport()
    try:
        with repo.locks.repository():
            _rebuild(repo, report, progress)
        recovery.recover(repo)
    finally:
        repo.close()
    return report


def _rebuild(repo: DataRepository, report: ReindexReport, progress: Progress | None) -> None:
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
    recorded: set[str] = set()
    with repo.registry.writer() as writer:
        writer.clear()
        for entry in entries:
            if isinstance(entry, RemovalEntry):
                writer.remove(entry)
                report.removals += 1
            else:
                writer.add(entry)
                recorded.update(record.path for record in entry.files)
                report.records += 1
        writer.commit()
    _adopt_unrecorded(repo, recorded, report)
    repo.registry.sync()


def _registry_transactions(repo: DataRepository, report: ReindexReport) -> set[str]:
    """What the current registry holds (nothing if there is none); one that does not
    open is moved aside, never deleted, and a new one made."""
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
    (repo.path / layout.DAMAGED).mkdir(exist_ok=True)
    damaged = str(repo.path / layout.DAMAGED / f"registry-{time.strftime('%Y%m%dT%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{damaged}{suffix}")
    report.damaged_kept = damaged
    SQLiteRegistry(path, create=True).close()
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
