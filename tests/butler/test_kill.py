"""ACCEPTANCE 27: a writer killed with SIGKILL at a random instant of a put.

A writer process puts to 3 outputs without pause (small payloads that travel in
the journal, and large ones staged on their own, over overlapping data IDs) and
is killed at a random instant.  Then every output is opened alone, in a random
order (each open recovers what the dead writer left, deciding from that output's
side), and: each put the writer began is in all outputs at one version with the
same sha256, or in none; each put it finished is there; versions run without
gaps; and ``verify`` is clean.  The state found right after each kill is
classified, so the campaign shows which phases of the protocol it hit.

Writers are forked from a process that imported the library once (a kill costs
milliseconds, not an interpreter start).  ``make test`` runs a bounded campaign;
``make stress`` runs thousands of trials (BUTLER_KILL_TRIALS).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from butler import Butler, DataRepository
from butler.maintenance import verify
from tests.butler.conftest import NOTE_POLICY, MakeRepo

TRIALS = int(os.environ.get("BUTLER_KILL_TRIALS", "80"))
VISITS = 12

POLICY = NOTE_POLICY

# The fork server: reads "trial seed delay_us" lines, forks a writer, kills it with
# SIGKILL after the delay (from its first put on), and prints what it began and finished.
SERVER = textwrap.dedent(
    """
    import json, os, random, signal, sys, time
    import butler
    from butler import Butler
    outputs, visits = sys.argv[1:-1], int(sys.argv[-1])
    for line in sys.stdin:
        trial, seed, delay = line.split()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            rng = random.Random(int(seed))
            writer = Butler(outputs=outputs)
            os.write(w, b"ready\\n")
            n = 0
            while True:
                visit = rng.randrange(visits)
                tag = f"t{trial}-{n}"
                size = rng.choice([100, 3000, 200000])
                if rng.random() < 0.1:  # a removal, journaled like a put
                    os.write(w, (json.dumps(["remove", visit, tag]) + "\\n").encode())
                    try:
                        writer.remove("note", visit=visit)
                    except LookupError:
                        pass
                else:
                    os.write(w, (json.dumps(["begin", visit, tag]) + "\\n").encode())
                    refs = writer.put({"tag": tag, "blob": "x" * size}, "note", visit=visit)
                    done = ["done", visit, tag, [ref.version for ref in refs]]
                    os.write(w, (json.dumps(done) + "\\n").encode())
                n += 1
        os.close(w)
        stream = os.fdopen(r)
        assert stream.readline() == "ready\\n"
        time.sleep(int(delay) / 1e6)  # the random instant
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        events = [json.loads(line) for line in stream if line.endswith("\\n")]
        stream.close()
        print(json.dumps(events), flush=True)
    """
)


def classify(outputs: list[Path]) -> str:
    """Which phase the kill interrupted, from what the outputs hold before recovery."""
    journals = [set(os.listdir(repo / ".butler" / "journal")) for repo in outputs]
    staged = [
        name
        for repo in outputs
        for name in os.listdir(repo / ".butler" / "staging")
        if not name.startswith(("owner-", "new-owner-"))
    ]
    if any(journals):
        if not all(journals[0] == each for each in journals):
            return "journals in some outputs (at the commit point)"
        if staged:
            return "every journal written, files staged (committed, not applied)"
        return "journals, nothing staged (applied, not settled)"
    if staged:
        return "staged files, no journal (before the commit point)"
    return "nothing pending (between puts)"


#: (repository, visit, version, sha256) -> tag: a version's bytes never change, so each
#: is read once (the final verify hashes every file again).
_TAGS: dict[tuple[Path, int, int, str], str] = {}


def scan(repo: Path, visits: range) -> dict[int, list[tuple[int, str, str, bool]]]:
    """visit -> [(version, tag, sha256, current)] in ``repo`` (opened alone: it recovers
    first); a removed current version is not current."""
    found: dict[int, list[tuple[int, str, str, bool]]] = {}
    with Butler(repo) as butler:
        for visit in visits:
            try:
                refs = butler.versions("note", visit=visit)
            except LookupError:
                found[visit] = []
                continue
            exists = butler.exists("note", visit=visit)
            current = butler.ref("note", visit=visit).version if exists else 0
            found[visit] = []
            for ref in refs:
                key = (repo, visit, ref.version, ref.sha256)
                if key not in _TAGS:
                    _TAGS[key] = butler.get("note", visit=visit, version=ref.version)["tag"]
                found[visit].append((ref.version, _TAGS[key], ref.sha256, ref.version == current))
    return found


@pytest.mark.engines()
def test_a_writer_killed_anywhere_leaves_all_or_nothing(
    make_repo: MakeRepo, tmp_path: Path
) -> None:
    outputs = [make_repo(name, policy=POLICY) for name in ("A", "B", "C")]
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, *map(str, outputs), str(VISITS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    rng = random.Random(27)
    phases: Counter[str] = Counter()
    finished: dict[str, int] = {}  # tag -> version, for puts that returned
    try:
        for trial in range(TRIALS):
            server.stdin.write(f"{trial} {rng.randrange(1 << 30)} {rng.randrange(60_000)}\n")
            server.stdin.flush()
            events = json.loads(server.stdout.readline())
            phases[classify(outputs)] += 1
            begun = {tag for kind, _, tag, *_ in events if kind == "begin"}
            phases["(trials with a removal)"] += any(e[0] == "remove" for e in events)
            for kind, _, tag, *rest in events:
                if kind == "done":
                    assert len(set(rest[0])) == 1, f"{tag}: versions differ between outputs"
                    finished[tag] = rest[0][0]
            order = outputs[:]
            rng.shuffle(order)  # whichever output opens first decides for all
            views = {repo: scan(repo, range(VISITS)) for repo in order}
            first = views[outputs[0]]
            for repo in outputs[1:]:
                assert views[repo] == first, f"trial {trial}: {repo.name} differs from A"
            for _visit, versions in first.items():
                assert [v for v, *_ in versions] == list(range(1, len(versions) + 1))
            present = {tag: version for versions in first.values() for version, tag, *_ in versions}
            for tag, version in finished.items():
                assert present.get(tag) == version, f"finished put {tag} lost"
            assert set(present) <= begun | set(finished) | set(present_before(trial, first))
            if trial % 20 == 19:
                report = verify(Butler(outputs=outputs))
                assert report.ok, report.problems
    finally:
        server.stdin.close()
        server.wait(timeout=60)
        server.stdout.close()
    report = verify(Butler(outputs=outputs))
    assert report.ok, report.problems
    for repo in outputs:
        DataRepository(repo).close()
    print("phases hit:", dict(phases))
    # The campaign must reach both sides of the commit point.
    assert phases["staged files, no journal (before the commit point)"] > 0, phases
    assert any("journal" in phase for phase in phases), phases


def present_before(trial: int, view: dict[int, list[tuple[int, str, str, bool]]]) -> set[str]:
    """Tags of earlier trials (still present: they were decided then)."""
    return {
        tag
        for versions in view.values()
        for _, tag, *_ in versions
        if int(tag[1:].split("-")[0]) < trial
    }


CONCURRENT_WRITER = textwrap.dedent(
    """
    import json, random, sys
    from butler import Butler
    outputs, name, log = sys.argv[1:-2], sys.argv[-2], sys.argv[-1]
    rng = random.Random(name)
    writer = Butler(outputs=outputs)
    with open(log, "a") as done:
        for n in range(100000):
            visit = rng.randrange(6)
            tag = f"{name}-{n}"
            blob = "y" * rng.choice([50, 150000])
            refs = writer.put({"tag": tag, "blob": blob}, "note", visit=visit)
            done.write(json.dumps([visit, tag, refs[0].version]) + "\\n")
            done.flush()
    """
)


@pytest.mark.engines()
def test_writers_killed_among_live_ones_lose_nothing(make_repo: MakeRepo, tmp_path: Path) -> None:
    """Three writers put at once; one after another is killed at a random instant and
    replaced, while the others go on (their recoveries, settling and group commits run
    beside the dead one's leftovers).  Every put a writer finished is there; the outputs
    agree; versions run without gaps; verify is clean."""
    import time

    outputs = [make_repo(name, policy=POLICY) for name in ("A", "B")]
    log = tmp_path / "done.jsonl"
    rng = random.Random(2627)

    def start(name: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_WRITER, *map(str, outputs), name, str(log)]
        )

    writers = {f"w{n}": start(f"w{n}") for n in range(3)}
    kills = int(os.environ.get("BUTLER_KILL_TRIALS", "80")) // 8
    try:
        for kill in range(kills):
            name = rng.choice(sorted(writers))
            # A random instant of its life: it has usually put a few by then.
            time.sleep(rng.uniform(0.3, 0.9))  # the random instant (not a synchronisation)
            writers[name].kill()
            writers[name].wait()
            writers[f"{name}k{kill}"] = start(f"{name}k{kill}")
            del writers[name]
    finally:
        for process in writers.values():
            process.kill()
            process.wait()
    finished = [json.loads(line) for line in log.read_text().splitlines() if line.endswith("]")]
    assert len(finished) > 20, "the writers got nothing done"
    views = [scan(repo, range(6)) for repo in outputs]
    assert views[0] == views[1]
    present = {tag: version for versions in views[0].values() for version, tag, *_ in versions}
    for _, tag, version in finished:
        assert present.get(tag) == version, f"{tag} finished at version {version}, then lost"
    for versions in views[0].values():
        assert [v for v, *_ in versions] == list(range(1, len(versions) + 1))
    report = verify(Butler(outputs=outputs))
    assert report.ok, report.problems
