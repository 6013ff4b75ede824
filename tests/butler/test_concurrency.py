"""ACCEPTANCE 26: concurrent writers and readers, in real processes.

8 writer processes put overlapping data IDs to the same 2 outputs (payloads small
enough to travel in the journal, and large ones staged on their own), while 4
reader processes get the latest version and given versions.  Every payload says
who wrote it, so a read that returns bytes of another version, or a mix of two,
is caught.  Afterwards every put that returned is at its version in both outputs
with its exact bytes, and versions run 1..n without gaps.  (The mount's readers
are in tests/butlerfs.)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest

from butler import Butler, DataRepository
from butler.maintenance import verify
from tests.butler.conftest import NOTE_POLICY, MakeRepo

STRESS = os.environ.get("BUTLER_STRESS") == "1"  # make stress: a longer run
WRITERS = 16 if STRESS else 8
READERS = 4
PUTS = 200 if STRESS else 24  # per writer
DATA_IDS = 3  # every writer puts to all of them: versions interleave

POLICY = NOTE_POLICY

# The payload names its writer and put; "blob" repeats the tag, large every third put
# (larger than what travels in the journal), so a torn or mixed read cannot pass.
WRITER = textwrap.dedent(
    """
    import hashlib, json, sys
    from butler import Butler
    a, b, writer, puts, ids, out = sys.argv[1:7]
    butler = Butler(outputs=[a, b])
    with open(out, "w") as log:
        for n in range(int(puts)):
            visit = n % int(ids)
            tag = f"w{writer}-{n}"
            blob = (tag + ";") * (40000 if n % 3 == 0 else 20)
            refs = butler.put({"tag": tag, "blob": blob}, "note", visit=visit)
            versions = sorted({ref.repository: ref.version for ref in refs}.items())
            log.write(json.dumps([visit, tag, versions, refs[0].sha256]) + "\\n")
            log.flush()
    butler.close()
    """
)

READER = textwrap.dedent(
    """
    import json, os, random, sys
    from butler import Butler
    repo, ids, stop, out = sys.argv[1:5]
    butler = Butler(repo)
    seen, errors = [], []
    rng = random.Random(os.getpid())
    reads = 0
    while not os.path.exists(stop) or len(seen) < 20:
        reads += 1
        if reads % 10 == 0:  # opening runs recovery: it must never judge a live writer dead
            butler = Butler(repo)
        visit = rng.randrange(int(ids))
        try:
            refs = butler.versions("note", visit=visit)
        except LookupError:
            continue
        version = rng.choice([None, rng.choice(refs).version])
        keys = {"visit": visit} if version is None else {"visit": visit, "version": version}
        value = butler.get("note", **keys)
        tag = value["tag"]
        if value["blob"] not in ((tag + ";") * 40000, (tag + ";") * 20):
            errors.append(f"torn or mixed: {tag}")
        if version is not None:
            seen.append([visit, version, tag])
    json.dump({"seen": seen, "errors": errors}, open(out, "w"))
    """
)


@pytest.mark.engines()
def test_concurrent_writers_and_readers_lose_and_tear_nothing(
    make_repo: MakeRepo, tmp_path: Path
) -> None:
    a, b = make_repo("A", policy=POLICY), make_repo("B", policy=POLICY)
    with Butler(outputs=[a, b]) as butler:  # readers find something from the start
        for visit in range(DATA_IDS):
            butler.put({"tag": "w-seed", "blob": "w-seed;" * 20}, "note", visit=visit)
    stop = tmp_path / "stop"
    readers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                READER,
                str(repo),
                str(DATA_IDS),
                str(stop),
                str(tmp_path / f"reader{n}.json"),
            ]
        )
        for n, repo in enumerate([a, b, a, b][:READERS])
    ]
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                str(a),
                str(b),
                str(n),
                str(PUTS),
                str(DATA_IDS),
                str(tmp_path / f"writer{n}.jsonl"),
            ]
        )
        for n in range(WRITERS)
    ]
    assert [w.wait(timeout=300) for w in writers] == [0] * WRITERS
    stop.touch()
    assert [r.wait(timeout=300) for r in readers] == [0] * READERS

    # Every put that returned: at one version, the same in both outputs.
    wrote: dict[tuple[int, int], tuple[str, str]] = {}  # (visit, version) -> (tag, sha)
    for n in range(WRITERS):
        lines = (tmp_path / f"writer{n}.jsonl").read_text().splitlines()
        assert len(lines) == PUTS
        for line in lines:
            visit, tag, versions, sha = json.loads(line)
            (_, va), (_, vb) = versions
            assert va == vb, f"{tag}: version {va} in A but {vb} in B"
            assert (visit, va) not in wrote, f"version {va} of visit {visit} given twice"
            wrote[(visit, va)] = (tag, sha)
    per_visit = defaultdict(list)
    for visit, version in wrote:
        per_visit[visit].append(version)
    for repo in (a, b):
        alone = Butler(repo)
        for visit in range(DATA_IDS):
            refs = alone.versions("note", visit=visit)
            assert [ref.version for ref in refs] == list(range(1, len(refs) + 1))  # no gaps
            assert len(refs) == 1 + len(per_visit[visit])  # the seed, then every put
            for ref in refs[1:]:
                tag, sha = wrote[(visit, ref.version)]
                assert ref.sha256 == sha
                data = Path(ref.version_path).read_bytes()
                assert hashlib.sha256(data).hexdigest() == sha
                assert alone.get("note", visit=visit, version=ref.version)["tag"] == tag
        alone.close()

    # No reader saw a torn or mixed dataset, nor another version's bytes.
    for n in range(READERS):
        report = json.loads((tmp_path / f"reader{n}.json").read_text())
        assert report["errors"] == []
        for visit, version, tag in report["seen"]:
            expected = "w-seed" if version == 1 else wrote[(visit, version)][0]
            assert tag == expected, f"version {version} of visit {visit} read as {tag}"
    assert verify(Butler(outputs=[a, b])).ok
    for repo in (a, b):
        assert os.listdir(repo / ".butler" / "journal") == []  # all settled at close
        DataRepository(repo).close()
