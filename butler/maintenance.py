"""Whole-repository maintenance: rebuild the registry from what is on disk.

These are the only operations allowed to scan a repository; nothing on the
get/put/mount path calls them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from butler.registry import Commit, FileEntry, canonical_data_id
from butler.repository import CONFIG_NAME, INTERNAL, REGISTRY_NAME, DataRepository
from butler.transaction import _write_durably, new_txid

Progress = Callable[[int, int], None]


@dataclass
class ReindexReport:
    records: int = 0
    removals: int = 0
    adopted: list[str] = field(default_factory=list)  # files found at template paths, unrecorded
    ignored: list[str] = field(default_factory=list)  # files matching no template


def reindex(path: str | os.PathLike[str], progress: Progress | None = None) -> ReindexReport:
    """Rebuild ``registry.sqlite3`` from ``.butler/records`` and the files.

    Every version, checksum and provenance record comes back from the records.  A
    file at a template path with no record (copied in by hand) is adopted as a new
    version with a fresh record; files matching no template are reported, untouched.
    """
    repo = DataRepository(path)
    report = ReindexReport()
    records_dir = repo.internal / "records"
    with repo.lock():
        registry = repo.registry
        registry.clear()
        names = sorted(os.listdir(records_dir))
        batch: list[Commit] = []
        recorded: set[str] = set()
        for done, name in enumerate(names, 1):
            record = json.loads((records_dir / name).read_text(encoding="utf-8"))
            if record.get("removed"):
                registry.insert_many(batch)
                batch = []
                registry.mark_removed(record["dataset_type"], canonical_data_id(record["data_id"]))
                report.removals += 1
            else:
                batch.append(commit_of_record(record))
                recorded.update(entry["path"] for entry in record["files"])
                report.records += 1
            if len(batch) >= 5000:
                registry.insert_many(batch)
                batch = []
            if progress is not None:
                progress(done, len(names))
        registry.insert_many(batch)
        _adopt_unrecorded(repo, recorded, report)
    return report


def commit_of_record(record: dict[str, object]) -> Commit:
    files = record["files"]
    data_id = record["data_id"]
    assert isinstance(files, list) and isinstance(data_id, dict)
    return Commit(
        txid=str(record["txid"]),
        dataset_type=str(record["dataset_type"]),
        data_id=data_id,
        version=int(record["version"]),  # type: ignore[call-overload]
        committed=float(record["committed"]),  # type: ignore[arg-type]
        files=tuple(
            FileEntry(
                int(entry["location"]),
                bool(entry["primary"]),
                str(entry["path"]),
                str(entry["storage"]),
                int(entry["size"]),
                str(entry["sha256"]),
            )
            for entry in files
        ),
    )


def _adopt_unrecorded(repo: DataRepository, recorded: set[str], report: ReindexReport) -> None:
    skip = {CONFIG_NAME, INTERNAL, REGISTRY_NAME}
    for directory, subdirs, files in os.walk(repo.path):
        relative_dir = os.path.relpath(directory, repo.path)
        if relative_dir == ".":
            subdirs[:] = [d for d in subdirs if d not in skip and not d.startswith(".")]
            relative_dir = ""
        for name in files:
            relative = os.path.join(relative_dir, name) if relative_dir else name
            if relative in recorded or name in skip or name.startswith(REGISTRY_NAME):
                continue
            if _adopt(repo, relative):
                report.adopted.append(relative)
            else:
                report.ignored.append(relative)


def _adopt(repo: DataRepository, relative: str) -> bool:
    for name, definition in repo.policy.dataset_types.items():
        for index, location in enumerate(definition.locations):
            parsed = location.template.parse(relative)
            if parsed is None or parsed[0] not in (None, name):
                continue
            data = (repo.path / relative).read_bytes()
            data_id = parsed[1]
            version = repo.registry.max_version(name, canonical_data_id(data_id)) + 1
            txid = new_txid()
            record = {
                "txid": txid,
                "participants": [str(repo.path)],
                "dataset_type": name,
                "data_id": data_id,
                "version": version,
                "previous": None,
                "committed": (repo.path / relative).stat().st_mtime,
                "files": [
                    {
                        "location": index,
                        "primary": location is definition.primary,
                        "path": relative,
                        "staging": "",
                        "storage": location.storage,
                        "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                    }
                ],
                "provenance": {"adopted": "found at its template path by butler reindex"},
            }
            _write_durably(
                Path(repo.internal) / "records" / f"{txid}.json", json.dumps(record).encode()
            )
            repo.registry.insert(commit_of_record(record))
            return True
    return False
