"""Recovery's one decision per journal (butler.recovery.decide) and the actions it takes.

The states are made for real: a child process puts to two outputs and dies at a
named step (BUTLER_TEST_CRASH_AT), as in tests/butler/test_transaction.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from butler import Butler, DataRepository
from butler.journal import decode
from butler.recovery import Decision, decide, recover
from tests.butler.conftest import NOTE_POLICY, MakeRepo

POLICY = {**NOTE_POLICY, "datasetTypes": {"info": {"genre": "meta"}}}

CHILD = textwrap.dedent(
    """
    import sys
    from butler import Butler
    Butler(outputs=[sys.argv[1], sys.argv[2]]).put({"value": "new"}, "info", visit=7)
    """
)


def crashed(make_repo: MakeRepo, step: str) -> tuple[Path, Path]:
    a, b = make_repo("A", policy=POLICY), make_repo("B", policy=POLICY)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(a), str(b)],
        env=dict(os.environ, BUTLER_TEST_CRASH_AT=step),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 70, done.stderr
    return a, b


def journal_of(repo: Path) -> tuple[DataRepository, object]:
    opened = DataRepository(repo)  # opening runs no recovery
    (path,) = (repo / ".butler" / "journal").iterdir()
    return opened, decode(path.read_bytes())


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ("journal#1", Decision.ABORT),  # A holds its journal, B never got one
        ("prepared", Decision.COMMIT),  # both hold their journals: committed
        ("renamed#1", Decision.COMMIT),  # applying had begun in A
        ("applied#2", Decision.COMMIT),  # files in place, the registry not yet committed
        ("settled#1", Decision.SETTLE),  # A's registry has it: only settling is left
    ],
)
def test_the_decision_for_each_state(make_repo: MakeRepo, step: str, expected: Decision) -> None:
    a, _ = crashed(make_repo, step)
    repo, entry = journal_of(a)
    assert decide(repo, entry) is expected  # type: ignore[arg-type]


def test_a_participant_that_cannot_be_read_leaves_the_journal(make_repo: MakeRepo) -> None:
    a, b = crashed(make_repo, "prepared")
    shutil.move(b, b.with_name("B-away"))
    repo, entry = journal_of(a)
    assert decide(repo, entry) is Decision.UNREACHABLE  # type: ignore[arg-type]
    actions = recover(repo)
    assert [action.kind for action in actions] == ["left"]
    assert not Butler(a).exists("info", visit=7)  # invisible until it is settled
    shutil.move(b.with_name("B-away"), b)
    actions = recover(DataRepository(a))
    assert "rolled forward" in [action.kind for action in actions]
    assert Butler(a).get("info", visit=7) == {"value": "new"}


@pytest.mark.parametrize("step", ["journal#1", "prepared", "renamed#1", "applied#1", "staged"])
def test_recover_reports_what_it_did_and_both_sides_agree(make_repo: MakeRepo, step: str) -> None:
    a, b = crashed(make_repo, step)
    first = recover(DataRepository(a))
    second = recover(DataRepository(b))
    kinds = {action.kind for action in first + second}
    committed = step not in ("journal#1", "staged")
    assert kinds <= {"settled", "rolled forward", "rolled back", "removed"}
    assert ("rolled back" in kinds) == (step == "journal#1")
    for repo in (a, b):
        assert os.listdir(repo / ".butler" / "journal") == []
        assert Butler(repo).exists("info", visit=7) is committed


def test_a_journal_whose_bytes_are_gone_fails_alone(make_repo: MakeRepo) -> None:
    """Nothing raises out of recovery: the entry it cannot apply is a failed action and a
    problem of the repository, which still opens and serves what it holds."""
    a, b = crashed(make_repo, "prepared")
    with Butler(a) as first:  # A recovers: the put applies there
        assert first.get("info", visit=7) == {"value": "new"}
    # Now B loses the bytes: the staged file, and the journal's copy of the payload.
    journal = next((b / ".butler" / "journal").iterdir())
    header = journal.read_bytes().split(b"\n", 1)[0]
    journal.write_bytes(header.replace(b'"inline":0', b'"inline":-1') + b"\n")
    for staged in (b / ".butler" / "staging").iterdir():
        if not staged.name.startswith(("owner-", "new-owner-")):
            staged.unlink()
    repo = DataRepository(b)
    actions = recover(repo)
    assert [action.kind for action in actions] == ["failed"]
    assert "butler repair" in actions[0].message and repo.problems
    with Butler(b) as alone:  # opens, reads, says what to fix
        assert not alone.exists("info", visit=7)
    from butler.maintenance import verify

    assert not verify(Butler(outputs=[a, b])).ok


def test_a_participants_state_is_read_journal_first(make_repo: MakeRepo) -> None:
    """Settling renames a journal into its record whole (its payload is cut only after),
    so a journal, then a record, are each whole whenever another participant looks."""
    from butler.recovery import participant_state

    _a, b = crashed(make_repo, "prepared")  # both hold their journals
    (journal,) = (b / ".butler" / "journal").iterdir()
    txid = journal.name.removesuffix(".json")
    assert participant_state(str(b), txid) == "prepared"
    record = b / ".butler" / "records" / journal.name
    journal.rename(record)  # settled, payload not cut yet
    assert participant_state(str(b), txid) == "applied"
    record.rename(journal)
    data = journal.read_bytes()
    journal.write_bytes(data[: len(data) - 10])  # cut short while being written
    assert participant_state(str(b), txid) == "absent"
    journal.unlink()
    assert participant_state(str(b), txid) == "absent"
    assert participant_state(str(b.with_name("nowhere")), txid) is None
