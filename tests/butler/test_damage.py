"""ACCEPTANCE 28: damage is found and repaired, and nothing ever empties a registry.

Two outputs hold the same datasets (two versions of one).  Then one of them is
damaged the way disks and people damage things: a flipped byte, a deleted file
(at its template path or its version's own name), a deleted, truncated or emptied
registry, a truncated or deleted record.  ``butler verify`` (the command, as a
user runs it) reports each one and exits non-zero; ``butler repair`` or
``butler reindex`` restores it from the other output with the original
provenance; no command leaves a registry emptier than it found it; and a put
refuses to start afresh at version 1 beside a lost registry.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from butler import Butler, ButlerError, DataRepository
from tests.butler.conftest import (
    MakeRepo,
    assert_same_image,
    butler_command,
    exposure_path,
    make_image,
    subprocess_env,
)

CALEXP = exposure_path("calexp", 1, 1)
VERSION_1 = f".butler/versions/v1/{CALEXP}"
VERSION_2 = f".butler/versions/v2/{CALEXP}"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        butler_command(*args), env=subprocess_env(), capture_output=True, text=True, timeout=120
    )


def history(repo: Path) -> list[tuple[int, str, object]]:
    """(version, sha256, provenance) of every calexp version: what must survive."""
    with Butler(repo) as butler:
        return [
            (ref.version, ref.sha256, butler.provenance(ref))
            for ref in butler.versions("calexp", visit=1, ccd=1)
        ]


def registry_rows(repo: Path) -> int:
    """Datasets the registry holds, whichever engine it is."""
    opened = DataRepository(repo)
    try:
        return opened.registry.count()
    finally:
        opened.close()


def record_of(repo: Path, version: int) -> Path:
    with Butler(repo) as butler:
        ref = next(r for r in butler.versions("calexp", visit=1, ccd=1) if r.version == version)
    return repo / ".butler" / "records" / f"{ref.txid}.json"


def flip(path: Path, offset: int = 2900) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@dataclass(frozen=True)
class Damage:
    name: str
    kind: str  # what verify calls it
    do: Callable[[Path], None]
    fix: str  # "repair" or "reindex"


#: Damage to files and records: the same on every registry engine.
DAMAGES = [
    Damage("a flipped byte in the current file", "corrupt", lambda a: flip(a / CALEXP), "repair"),
    Damage("a flipped byte in an old version", "corrupt", lambda a: flip(a / VERSION_1), "repair"),
    Damage("a deleted current file", "missing", lambda a: (a / CALEXP).unlink(), "repair"),
    Damage("a deleted old version", "missing", lambda a: (a / VERSION_1).unlink(), "repair"),
    Damage("a truncated record", "torn", lambda a: truncate(record_of(a, 2)), "repair"),
    Damage("a deleted record", "unrecorded", lambda a: record_of(a, 1).unlink(), "repair"),
]
#: Damage to the SQLite registry file (PostgreSQL's lost schema: test_postgres.py).
REGISTRY_DAMAGES = [
    Damage(
        "a deleted registry",
        "registry",
        lambda a: [p.unlink() for p in a.glob("registry.sqlite3*")],
        "reindex",
    ),
    Damage(
        "a truncated registry", "registry", lambda a: truncate(a / "registry.sqlite3"), "reindex"
    ),
    Damage(
        "an emptied registry",
        "registry",
        lambda a: (a / "registry.sqlite3").write_bytes(b""),
        "reindex",
    ),
]


@pytest.fixture
def outputs(make_repo: MakeRepo) -> tuple[Path, Path]:
    a, b = make_repo("A"), make_repo("B")
    with Butler(outputs=[a, b]) as butler:
        butler.put(make_image(1), "calexp", visit=1, ccd=1, provenance={"run": "first"})
        butler.put(make_image(2), "calexp", visit=1, ccd=1, provenance={"run": "second"})
        butler.put(make_image(3), "calexp", visit=2, ccd=1)
    # Let SQLite fold its log into the file: damage below hits the registry itself.
    for repo in (a, b):
        if (repo / "registry.sqlite3").exists():
            with sqlite3.connect(repo / "registry.sqlite3") as connection:
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return a, b


@pytest.mark.engines()
@pytest.mark.parametrize("damage", DAMAGES, ids=[d.name for d in DAMAGES])
def test_damage_is_found_and_repaired(damage: Damage, outputs: tuple[Path, Path]) -> None:
    found_and_repaired(damage, outputs)


@pytest.mark.parametrize("damage", REGISTRY_DAMAGES, ids=[d.name for d in REGISTRY_DAMAGES])
def test_a_damaged_registry_file_is_found_and_rebuilt(
    damage: Damage, outputs: tuple[Path, Path]
) -> None:
    found_and_repaired(damage, outputs)


def found_and_repaired(damage: Damage, outputs: tuple[Path, Path]) -> None:
    """verify names the damage, the fix it names restores every version exactly."""
    a, b = outputs
    original = history(b)
    damage.do(a)
    aggregator = a.parent / "both.yaml"
    aggregator.write_text(f"butler: 1\noutputs: [{a}, {b}]\n")

    found = cli("verify", str(aggregator))
    assert found.returncode != 0, found.stdout
    assert any(line.startswith(f"{damage.kind}:") for line in found.stdout.splitlines()), (
        found.stdout + found.stderr
    )

    fixed = cli(damage.fix, str(aggregator if damage.fix == "repair" else a))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    clean = cli("verify", str(aggregator))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert history(a) == original  # every version, checksum and the original provenance
    assert_same_image(Butler(a).get("calexp", visit=1, ccd=1, version=1), make_image(1))
    assert_same_image(Butler(a).get("calexp", visit=1, ccd=1), make_image(2))
    assert registry_rows(a) == registry_rows(b)


def test_a_lost_registry_is_never_started_afresh(outputs: tuple[Path, Path]) -> None:
    a, _ = outputs
    for path in a.glob("registry.sqlite3*"):
        path.unlink()
    with pytest.raises(ButlerError, match="butler reindex") as refused:
        Butler(a).put(make_image(9), "calexp", visit=1, ccd=1)
    assert "reindex" in str(refused.value)
    assert not (a / "registry.sqlite3").exists()  # not silently recreated
    assert (a / CALEXP).is_file()  # the current file was not overwritten
    assert_same_image(make_image(2), _fits(a / CALEXP))


def test_an_emptied_registry_is_never_started_afresh(outputs: tuple[Path, Path]) -> None:
    a, _ = outputs
    (a / "registry.sqlite3").unlink()
    shutil.copy(_fresh_registry(a.parent), a / "registry.sqlite3")
    with pytest.raises(ButlerError, match="reindex"):
        Butler(a).put(make_image(9), "calexp", visit=3, ccd=1)
    assert cli("reindex", str(a)).returncode == 0
    assert [v for v, _, _ in history(a)] == [1, 2]


@pytest.mark.engines()
def test_reindex_never_leaves_a_registry_emptier(outputs: tuple[Path, Path]) -> None:
    a, b = outputs
    record_of(a, 1).unlink()
    rows = registry_rows(a)
    refused = cli("reindex", str(a))
    assert refused.returncode != 0
    assert "butler repair" in refused.stderr
    assert registry_rows(a) == rows  # nothing dropped
    aggregator = a.parent / "both.yaml"
    aggregator.write_text(f"butler: 1\noutputs: [{a}, {b}]\n")
    assert cli("repair", str(aggregator)).returncode == 0
    assert cli("reindex", str(a)).returncode == 0
    assert registry_rows(a) == rows
    assert history(a) == history(b)


def _fits(path: Path) -> object:
    from astropy.io import fits

    return fits.open(path)


def _fresh_registry(where: Path) -> Path:
    """A registry file of a repository that never held anything."""
    fresh = DataRepository.create(where / "fresh")
    fresh.close()
    return where / "fresh" / "registry.sqlite3"


@pytest.mark.engines()
def test_outputs_that_disagree_about_a_removal_are_reported(outputs: tuple[Path, Path]) -> None:
    a, b = outputs
    with Butler(a) as alone:  # removed from A only, bypassing the aggregator
        alone.remove("calexp", visit=2, ccd=1)
    aggregator = a.parent / "both.yaml"
    aggregator.write_text(f"butler: 1\noutputs: [{a}, {b}]\n")
    found = cli("verify", str(aggregator))
    assert found.returncode != 0
    lines = [line for line in found.stdout.splitlines() if line.startswith("disagree:")]
    assert any("removed in A only" in line and "visit=2 ccd=1" in line for line in lines), lines
    # Removal through the aggregator is all or nothing: both outputs agree again.
    with Butler(aggregator) as both:
        assert both.remove("calexp", visit=2, ccd=1) == ["B"]
    assert cli("verify", str(aggregator)).returncode == 0
