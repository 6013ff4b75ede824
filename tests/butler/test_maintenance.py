"""verify and repair (butler.maintenance), in process, on real repositories in tmp_path.

Half-done puts are made by a put whose apply step fails (an ``apply_put`` that raises), the
state a writer leaves when it dies after the commit point; an unreachable participant
is a repository moved away.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from butler import Butler, TransactionError, transaction
from butler.journal import PutEntry
from butler.maintenance import repair, verify
from butler.repository import DataRepository
from tests.butler.conftest import (
    MakeRepo,
    assert_same_image,
    exposure_path,
    make_image,
    settle,
)

CALEXP = exposure_path("calexp", 1, 1)


def flip_byte(path: Path, offset: int = 3000) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def kinds(problems: list[object]) -> list[tuple[str, str]]:
    return sorted((p.kind, p.repository) for p in problems)  # type: ignore[attr-defined]


@pytest.fixture
def closing() -> Iterator[list[Butler]]:
    """Butlers to close at the end of the test (so no SQLite connection outlives it)."""
    butlers: list[Butler] = []
    yield butlers
    for each in butlers:
        each.close()
    settle()


def test_a_clean_repository_verifies(make_repo: MakeRepo, closing: list[Butler]) -> None:
    repo = make_repo("A")
    b = Butler(repo)
    closing.append(b)
    b.put(make_image(1), "calexp", visit=1, ccd=1)
    b.put(make_image(2), "calexp", visit=1, ccd=1)
    b.put({"exptime": 30.0}, "visitInfo", visit=1)
    b.put(make_image(3), "raw", visit=2, ccd=1)
    b.remove("raw", visit=2, ccd=1)  # a removed version lives under versions/ too
    calls: list[tuple[int, int]] = []
    report = verify(b, progress=lambda done, total: calls.append((done, total)))
    assert report.ok, report.problems
    assert report.files == 4
    assert report.repositories == [("A", str(repo))]
    assert calls[-1] == (4, 4)
    assert verify(repo).ok  # a path works as well as a Butler
    assert json.loads(json.dumps(report.as_dict()))["ok"] is True


def test_repair_restores_every_version_from_the_other_output(
    make_repo: MakeRepo, closing: list[Butler]
) -> None:
    a, b = make_repo("A"), make_repo("B")
    both = Butler(outputs=[a, b])
    closing.append(both)
    both.put(make_image(1), "calexp", visit=1, ccd=1)
    both.put(make_image(2), "calexp", visit=1, ccd=1)
    flip_byte(a / ".butler" / "versions" / "v1" / CALEXP)
    (b / CALEXP).unlink()

    report = verify(both)
    assert kinds(report.problems) == [("corrupt", "A"), ("missing", "B")]
    assert all("butler repair" in p.message for p in report.problems)

    repaired = repair(both)
    assert repaired.ok, repaired.unresolved
    assert sorted(action.kind for action in repaired.actions) == ["restored", "restored"]
    assert verify(both).ok
    assert not list((a / ".butler" / "staging").glob("repair-*"))
    alone = Butler(a)
    closing.append(alone)
    assert_same_image(alone.get("calexp", visit=1, ccd=1, version=1), make_image(1))
    assert_same_image(Butler(b).get("calexp", visit=1, ccd=1), make_image(2))


def test_repair_never_writes_an_input(make_repo: MakeRepo, closing: list[Butler]) -> None:
    source, work = make_repo("source"), make_repo("work")
    writer = Butler(source)
    closing.append(writer)
    writer.put(make_image(1), "calexp", visit=1, ccd=1)
    flip_byte(source / CALEXP)
    before = (source / CALEXP).read_bytes()

    aggregate = Butler(inputs=[source], outputs=[work])
    closing.append(aggregate)
    repaired = repair(aggregate)
    assert not repaired.ok
    assert [p.kind for p in repaired.unresolved] == ["corrupt"]
    assert f"butler repair {source}" in repaired.unresolved[0].message
    assert (source / CALEXP).read_bytes() == before


def test_a_lost_record_is_written_again(make_repo: MakeRepo, closing: list[Butler]) -> None:
    from butler.maintenance import reindex

    repo = make_repo("A")
    b = Butler(repo)
    closing.append(b)
    ref = b.put(make_image(1), "calexp", visit=1, ccd=1)[0]
    b.close()  # settles the put: its journal becomes its record
    (repo / ".butler" / "records" / f"{ref.txid}.json").unlink()
    assert kinds(verify(b).problems) == [("unrecorded", "A")]
    repaired = repair(b)
    assert [action.kind for action in repaired.actions] == ["recorded"]
    assert verify(b).ok
    b.close()
    for registry in repo.glob("registry.sqlite3*"):
        registry.unlink()
    reindex(repo)
    rebuilt = Butler(repo)
    closing.append(rebuilt)
    assert_same_image(rebuilt.get("calexp", visit=1, ccd=1), make_image(1))


def test_outputs_storing_differently_do_not_disagree(
    make_repo: MakeRepo, closing: list[Butler]
) -> None:
    a, b = make_repo("A"), make_repo("B")
    routed = Butler(
        outputs=[
            {"path": str(a), "datasetTypes": ["calexp"]},
            {"path": str(b), "storage": {"calexp": "hdf5"}},
        ]
    )
    closing.append(routed)
    routed.put(make_image(1), "calexp", visit=1, ccd=1)
    routed.put({"exptime": 1.0}, "visitInfo", visit=1)  # only B accepts it
    assert verify(routed).ok

    direct = Butler(a)
    closing.append(direct)
    direct.put(make_image(2), "calexp", visit=2, ccd=1)
    problems = verify(routed).problems
    assert kinds(problems) == [("disagree", "B")]
    assert "visit=2 ccd=1" in problems[0].message


def half_done_put(monkeypatch: pytest.MonkeyPatch, outputs: list[Path], failing: set[Path]) -> None:
    """A put to ``outputs`` committed everywhere, applied only outside ``failing``."""
    real = transaction.apply_put

    def apply(repo: DataRepository, entry: PutEntry, *args: Any, **kwargs: Any) -> None:
        if repo.path in failing:
            raise OSError(errno.EIO, "simulated crash before apply")
        real(repo, entry, *args, **kwargs)

    b = Butler(outputs=outputs)
    with monkeypatch.context() as patch:
        patch.setattr(transaction, "apply_put", apply)
        with pytest.raises(TransactionError):
            b.put(make_image(7), "calexp", visit=1, ccd=1)
    b.close()
    settle()


def staged(repo: Path) -> list[Path]:
    """Files a put staged (not the owner locks of live processes)."""
    return [p for p in (repo / ".butler" / "staging").iterdir() if not p.name.startswith("owner-")]


def journals(repo: Path) -> list[str]:
    return sorted(p.name for p in (repo / ".butler" / "journal").iterdir())


def test_a_put_applied_elsewhere_is_rolled_forward(
    tmp_path: Path, make_repo: MakeRepo, monkeypatch: pytest.MonkeyPatch, closing: list[Butler]
) -> None:
    a, b = make_repo("A"), make_repo("B")
    half_done_put(monkeypatch, [a, b], failing={a})
    b.rename(tmp_path / "B-unmounted")  # B applied it, then became unreachable

    alone = Butler(a)  # opening recovers what it can decide: not this one
    closing.append(alone)
    assert len(journals(a)) == 1
    assert not alone.exists("calexp", visit=1, ccd=1)
    assert kinds(verify(alone).problems) == [("unsettled", "A")]

    repaired = repair(alone)
    assert [action.kind for action in repaired.actions] == ["rolled forward"]
    assert repaired.ok, repaired.unresolved
    assert journals(a) == []
    assert verify(alone).ok
    assert_same_image(alone.get("calexp", visit=1, ccd=1), make_image(7))


def test_a_put_that_never_reached_a_participant_is_rolled_back(
    tmp_path: Path, make_repo: MakeRepo, monkeypatch: pytest.MonkeyPatch, closing: list[Butler]
) -> None:
    a, c, b = make_repo("A"), make_repo("C"), make_repo("B")
    half_done_put(monkeypatch, [a, c, b], failing={a, b, c})
    # As if the writer died before B's journal: B holds nothing of it; C is unreachable.
    for leftover in [
        *(b / ".butler" / "journal").iterdir(),
        *(b / ".butler" / "staging").iterdir(),
    ]:
        leftover.unlink()
    away = tmp_path / "C-unmounted"
    c.rename(away)

    alone = Butler(a)
    closing.append(alone)
    assert kinds(verify(alone).problems) == [("unsettled", "A")]
    repaired = repair(alone)
    assert [action.kind for action in repaired.actions] == ["rolled back"]
    assert journals(a) == []
    assert staged(a) == []
    assert not alone.exists("calexp", visit=1, ccd=1)
    assert verify(alone).ok

    away.rename(c)  # C comes back: its own recovery decides the same
    returned = Butler(c)
    closing.append(returned)
    assert journals(c) == []
    assert not returned.exists("calexp", visit=1, ccd=1)
