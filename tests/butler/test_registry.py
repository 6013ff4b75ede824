"""The registry (butler.registry): the write transaction, removals, and damage detection."""

from __future__ import annotations

from pathlib import Path

import pytest

from butler import DataRepository
from butler.errors import RegistryDamagedError
from butler.journal import FileRecord, PutEntry, RemovalEntry
from butler.registry import SQLiteRegistry, canonical_data_id


def entry(txid: str, version: int, visit: int = 1) -> PutEntry:
    record = FileRecord(0, True, f"d/v{visit}.yaml", "yaml", 3, "c" * 64)
    return PutEntry(txid, "note", {"visit": visit}, version, 1.0, (record,), ("/r",))


@pytest.fixture
def registry(tmp_path: Path) -> SQLiteRegistry:
    return SQLiteRegistry(tmp_path / "registry.sqlite3", create=True)


def test_rows_appear_only_when_the_transaction_commits(registry: SQLiteRegistry) -> None:
    key = canonical_data_id({"visit": 1})
    with registry.writer() as writer:
        writer.add(entry("t1", 1))
        assert writer.max_version("note", key) == 1  # the writer sees its own rows
        assert registry.lookup("note", key) == []  # readers do not, yet
    assert registry.lookup("note", key) == []  # not committed: rolled back
    with registry.writer() as writer:
        writer.add(entry("t1", 1))
        writer.add(entry("t1", 1))  # the same txid again: a no-op (apply is idempotent)
        writer.commit()
    assert [row.version for row in registry.versions("note", key)] == [1]
    assert registry.has_transaction("t1")


def test_versions_and_removal(registry: SQLiteRegistry) -> None:
    key = canonical_data_id({"visit": 1})
    registry.insert_many([entry("t1", 1), entry("t2", 2)])
    assert [r.version for r in registry.lookup("note", key)] == [2]
    with registry.writer() as writer:
        writer.remove(RemovalEntry("t3", "note", {"visit": 1}, 2, 2.0, ("d/v1.yaml",), ("/r",)))
        writer.commit()
    assert registry.lookup("note", key) == []  # removed: absent from reads
    assert registry.lookup("note", key, version=2)[0].removed  # but still there by version
    assert registry.has_transaction("t3")  # recovery asks whether a removal was applied
    assert registry.transactions() == {"t1", "t2", "t3"}
    seq = registry.change_seq()
    registry.insert_many([entry("t4", 3)])  # a new version after a removal is current
    assert [r.version for r in registry.lookup("note", key)] == [3]
    assert registry.changes_since(seq) == ["d/v1.yaml"]


def test_a_rebuild_that_fails_leaves_every_row(registry: SQLiteRegistry) -> None:
    registry.insert_many([entry("t1", 1), entry("t2", 1, visit=2)])
    with registry.writer() as writer:
        writer.clear()
        writer.add(entry("t1", 1))
        # no commit: as if the rebuild failed halfway
    assert registry.count() == 2


def test_a_lost_or_emptied_registry_is_refused(tmp_path: Path) -> None:
    from butler import Butler

    repo = DataRepository.create(tmp_path / "r")
    repo.close()
    with pytest.raises(RegistryDamagedError):  # nothing to lose yet: recreated, but empty
        (tmp_path / "r" / "registry.sqlite3").write_bytes(b"")
        DataRepository(tmp_path / "r").registry.count()
    (tmp_path / "r" / "registry.sqlite3").unlink()
    fresh = DataRepository(tmp_path / "r")
    assert fresh.registry.is_empty()  # no records: a missing registry is simply made
    fresh.close()
    policy = {
        "genres": {
            "g": {"keys": {"visit": "int"}, "template": "n/{visit}.yaml", "storage": "yaml"}
        },
        "datasetTypes": {"note": {"genre": "g"}},
    }
    DataRepository.create(tmp_path / "s", policy=policy).close()
    with Butler(tmp_path / "s") as butler:
        butler.put({"x": 1}, "note", visit=1)
    (tmp_path / "s" / "registry.sqlite3").unlink()
    for name in ("registry.sqlite3-wal", "registry.sqlite3-shm"):
        (tmp_path / "s" / name).unlink(missing_ok=True)
    with pytest.raises(RegistryDamagedError, match="butler reindex"):
        DataRepository(tmp_path / "s").registry.count()
    assert not (tmp_path / "s" / "registry.sqlite3").exists()
