"""The journal's recovery from a crash injected at each step of a put.

A child process puts to two outputs and dies (os._exit, as in a crash) at the
named step; the next open must leave both outputs with the dataset or neither.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from butler import Butler, ButlerError, DataRepository

POLICY = {
    "genres": {
        "meta": {
            "keys": {"visit": "int"},
            "template": "{datasetType}/{datasetType}-v{visit:07d}.yaml",
            "storage": "yaml",
        }
    },
    "datasetTypes": {"info": {"genre": "meta"}},
}

# Before the commit point a crash rolls back; from it on, it rolls forward.
STEPS = {
    "staged": "neither",
    "journal#1": "neither",
    "prepared": "both",
    "renamed#1": "both",
    "applied#1": "both",
    "renamed#2": "both",
    "applied#2": "both",
    # Applied puts settle in batches (at the latest when the process exits): a crash
    # while settling leaves journals that the next open settles.
    "settled#1": "both",
    "settled#2": "both",
}

CHILD = textwrap.dedent(
    """
    import sys
    from butler import Butler
    b = Butler(outputs=[sys.argv[1], sys.argv[2]])
    b.put({"value": "new"}, "info", visit=7)
    print("survived")
    """
)


def make_outputs(tmp_path: Path) -> tuple[Path, Path]:
    first, second = tmp_path / "A", tmp_path / "B"
    DataRepository.create(first, policy=POLICY)
    DataRepository.create(second, policy=POLICY)
    with Butler(outputs=[first, second]) as butler:  # closing settles the put
        butler.put({"value": "old"}, "info", visit=7)
    return first, second


def crash_at(step: str, first: Path, second: Path) -> None:
    env = dict(os.environ, BUTLER_TEST_CRASH_AT=step)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(first), str(second)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 70, f"child did not crash at {step}: {done.stdout}{done.stderr}"


def leftovers(repo: Path) -> list[str]:
    """Journals and staged files; a live process's owner lock is not a leftover."""
    staging = [n for n in os.listdir(repo / ".butler" / "staging") if not n.startswith("owner-")]
    return sorted(os.listdir(repo / ".butler" / "journal")) + sorted(staging)


@pytest.mark.parametrize("step", sorted(STEPS))
@pytest.mark.parametrize("open_first", ["A", "B"])
def test_crash_at_each_step_is_all_or_nothing(tmp_path: Path, step: str, open_first: str) -> None:
    first, second = make_outputs(tmp_path)
    crash_at(step, first, second)
    order = [first, second] if open_first == "A" else [second, first]
    values = {}
    for repo in order:
        butler = Butler(repo)
        values[repo.name] = butler.get("info", visit=7)["value"]
        versions = [ref.version for ref in butler.versions("info", visit=7)]
        assert versions == ([1, 2] if STEPS[step] == "both" else [1])
        assert leftovers(repo) == []
        owners = [n for n in os.listdir(repo / ".butler" / "staging") if n.startswith("owner-")]
        assert all(n.startswith(f"owner-{os.getpid()}-") for n in owners), owners
        # Files on disk agree with the registry: the template path holds the latest.
        ref = butler.ref("info", visit=7)
        assert ref.path == str(repo / "info" / "info-v0000007.yaml")
        assert f"value: {values[repo.name]}" in Path(ref.path).read_text()
    expected = "new" if STEPS[step] == "both" else "old"
    assert values == {"A": expected, "B": expected}


def test_a_journal_cut_short_is_rolled_back(tmp_path: Path) -> None:
    first, _second = make_outputs(tmp_path)
    txid = "00000000000000ff-abcdefabcdef"
    (first / ".butler" / "journal" / f"{txid}.json").write_text('{"txid": "00000000')
    (first / ".butler" / "staging" / f"{txid}.0").write_bytes(b"partial")
    butler = Butler(first)
    assert leftovers(first) == []
    assert butler.get("info", visit=7) == {"value": "old"}


def test_a_journal_naming_a_vanished_participant_stays_invisible(tmp_path: Path) -> None:
    first, second = make_outputs(tmp_path)
    crash_at("journal#1", first, second)
    # The crash left A prepared and B not; now B's whole repository is gone.
    journal = next((first / ".butler" / "journal").iterdir())
    header, _, payload = journal.read_bytes().partition(b"\n")
    record = json.loads(header)
    record["participants"] = [str(first), str(tmp_path / "vanished")]
    journal.write_bytes(json.dumps(record).encode() + b"\n" + payload)
    butler = Butler(first)
    assert butler.get("info", visit=7) == {"value": "old"}
    assert [p.name for p in (first / ".butler" / "journal").iterdir()] == [journal.name]


def test_a_failed_put_then_a_retry(tmp_path: Path) -> None:
    first, second = make_outputs(tmp_path)
    butler = Butler(outputs=[first, second])
    with pytest.raises(TypeError):
        butler.put({"value": object()}, "info", visit=8)
    assert not butler.exists("info", visit=8)
    assert leftovers(first) == leftovers(second) == []
    butler.put({"value": 8}, "info", visit=8)
    assert Butler(second).get("info", visit=8) == {"value": 8}


def test_threads_writing_one_data_id_while_others_read(tmp_path: Path) -> None:
    """Every version is numbered once, and a reader never sees a torn dataset."""
    first, second = make_outputs(tmp_path)
    butler = Butler(outputs=[first, second])
    stop = threading.Event()
    errors: list[str] = []

    def write(writer: int) -> None:
        for i in range(15):
            butler.put({"tag": f"{writer}-{i}", "blob": f"{writer}-{i};" * 20000}, "info", visit=7)

    def read() -> None:
        reader = Butler(first)
        while not stop.is_set():
            value = reader.get("info", visit=7)
            if "blob" in value and value["blob"] != f"{value['tag']};" * 20000:
                errors.append(value["tag"])

    readers = [threading.Thread(target=read) for _ in range(2)]
    writers = [threading.Thread(target=write, args=(w,)) for w in range(3)]
    for thread in readers + writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in readers:
        thread.join()
    assert errors == []
    for repo in (first, second):
        versions = [ref.version for ref in Butler(repo).versions("info", visit=7)]
        assert versions == list(range(1, 47))


# A put that copies a dataset type into outputs that lack it: the butler.yaml change
# is part of the put (staged before the commit point, renamed in when applying).
NEW_TYPE_CHILD = textwrap.dedent(
    """
    import sys
    from butler import Butler
    policy = {"datasetTypes": {"extra": {"genre": "meta"}}}
    b = Butler(outputs=[sys.argv[1], sys.argv[2]], policy=policy)
    b.put({"value": "new"}, "extra", visit=7)
    print("survived")
    """
)


@pytest.mark.parametrize("step", sorted(STEPS))
def test_a_new_dataset_type_is_recorded_with_the_put(tmp_path: Path, step: str) -> None:
    first, second = make_outputs(tmp_path)
    env = dict(os.environ, BUTLER_TEST_CRASH_AT=step)
    done = subprocess.run(
        [sys.executable, "-c", NEW_TYPE_CHILD, str(first), str(second)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 70, done.stdout + done.stderr
    for repo in (first, second):
        butler = Butler(repo)  # opened alone: recovery finishes or undoes the put
        holds = butler.exists("extra", visit=7) if "extra" in _types(repo) else False
        assert holds == (STEPS[step] == "both")
        # The type is recorded exactly when the dataset is there: standalone again.
        assert ("extra" in _types(repo)) == holds
        assert leftovers(repo) == []
        assert not [p for p in repo.iterdir() if p.name.startswith(".butler.yaml")]


def _types(repo: Path) -> set[str]:
    return set(DataRepository(repo).policy.dataset_types)


def test_a_group_commit_keeps_each_put_all_or_nothing(tmp_path: Path) -> None:
    """Puts committed together (one lock round, one registry transaction per output): one
    that fails in prepare is undone alone, the others land, versions stay in order."""
    first, second = make_outputs(tmp_path)
    source = tmp_path / "files"
    source.mkdir()
    items = []
    for visit in (1, 2, 7, 7, 3):  # info visit=7 exists already (version 1 from make_outputs)
        path = source / f"{visit}-{len(items)}.yaml"
        path.write_text(f"value: v{visit}-{len(items)}\n")
        items.append((path, "info", {"visit": visit}))
    items.append((source / "missing.yaml", "info", {"visit": 4}))  # fails before staging
    butler = Butler(outputs=[first, second])
    results = butler.ingest_many(items)
    assert [type(r).__name__ for r in results[:5]] == ["list"] * 5
    assert isinstance(results[5], ButlerError)
    versions = [[ref.version for ref in refs] for refs in results[:5]]  # type: ignore[union-attr]
    assert versions == [[1, 1], [1, 1], [2, 2], [3, 3], [1, 1]]  # in the order given
    butler.close()
    # Now one of a batch is refused (a directory where its file must go): only it fails.
    (first / "info" / "info-v0000005.yaml").mkdir()
    more = [
        (source / "1-0.yaml", "info", {"visit": 5}),
        (source / "2-1.yaml", "info", {"visit": 6}),
    ]
    with Butler(outputs=[first, second]) as butler:
        refused, landed = butler.ingest_many(more)
    assert isinstance(refused, ButlerError) and refused.errno == errno.EISDIR
    assert [ref.version for ref in landed] == [1, 1]  # type: ignore[union-attr]
    for repo in (first, second):
        alone = Butler(repo)
        assert not alone.exists("info", visit=5)
        assert alone.get("info", visit=6) == {"value": "v2-1"}
        assert [ref.version for ref in alone.versions("info", visit=7)] == [1, 2, 3]
        assert leftovers(repo) == []
        alone.close()
