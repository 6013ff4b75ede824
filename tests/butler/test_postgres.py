"""What only a PostgreSQL registry has (SPEC §9, ACCEPTANCE 29), against a real server.

The shared scenarios run for every engine in test_acceptance.py; here: one schema per
repository, credentials that never reach butler.yaml or a message, writers that
serialize through the database and take no ``flock``, the server stopped and started
under a running Butler, an unreachable server, moving a repository between engines,
and the notices a commit sends.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from butler import Butler, ButlerError, ConfigError, DataRepository, RepositoryError
from butler.errors import RegistryDamagedError
from tests.butler.conftest import (
    STANDARD_POLICY,
    butler_command,
    drop_registry,
    make_image,
    ref_key,
    settle,
    subprocess_env,
)
from tests.pg import PASSWORD, PASSWORD_ROLE, Cluster

DEADLINE = 30.0


def create(path: Path, url: str, **options: object) -> Path:
    DataRepository.create(path, policy=STANDARD_POLICY, registry=url, **options).close()  # type: ignore[arg-type]
    return path


def config_of(root: Path) -> dict[str, object]:
    return dict(yaml.safe_load((root / "butler.yaml").read_text()))


def wait_for(condition: object, what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def run_butler(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        butler_command(*args),
        env=env or subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def everything(root: Path) -> list[object]:
    """Every dataset, each version and its provenance, as the API reports them."""
    b = Butler(root)
    listed = []
    for ref in sorted(b.query(), key=ref_key):
        for version in b.versions(ref.dataset_type, ref.data_id):
            listed.append((ref_key(version), b.provenance(version)))
    b.close()
    return listed


# --- the schema ---------------------------------------------------------------------------


def test_one_schema_per_repository_named_from_its_label(tmp_path: Path, postgres: Cluster) -> None:
    first = create(tmp_path / "one" / "Shared Work", postgres.url(), label="Shared Work")
    second = create(tmp_path / "two" / "work", postgres.url(), label="shared-work")
    named = create(tmp_path / "named", postgres.url(), schema="survey_2031")

    schemas = [config_of(root)["schema"] for root in (first, second, named)]
    assert schemas[0] == "butler_shared_work" or schemas[0].startswith("butler_shared_work_")
    assert schemas[1].startswith("butler_shared_work") and schemas[1] != schemas[0]
    assert schemas[2] == "survey_2031"
    for root in (first, second, named):
        assert config_of(root)["registry"] == postgres.url()
        assert not (root / "registry.sqlite3").exists()
    Butler(first).put(make_image(1), "calexp", visit=1, ccd=1)
    assert Butler(first).exists("calexp", visit=1, ccd=1)
    assert not Butler(second).exists("calexp", visit=1, ccd=1), "two repositories share rows"

    with pytest.raises(RepositoryError) as caught:
        create(tmp_path / "again", postgres.url(), schema="survey_2031")
    assert caught.value.errno == errno.EEXIST
    assert "survey_2031" in str(caught.value) and "schema" in str(caught.value)
    assert not (tmp_path / "again" / "butler.yaml").exists()


def test_an_admin_may_make_the_schema_beforehand(tmp_path: Path, postgres: Cluster) -> None:
    postgres.psql(f'CREATE SCHEMA prepared_by_admin AUTHORIZATION "{getpass.getuser()}"')
    root = create(tmp_path / "A", postgres.url(), schema="prepared_by_admin")
    Butler(root).put({"exptime": 1.0}, "visitInfo", visit=1)
    assert Butler(root).get("visitInfo", visit=1) == {"exptime": 1.0}


def test_a_lost_schema_is_reported_then_rebuilt_by_reindex(
    tmp_path: Path, postgres: Cluster
) -> None:
    root = create(tmp_path / "A", postgres.url())
    b = Butler(root)
    b.put(make_image(1), "calexp", visit=1, ccd=1, provenance={"step": "one"})
    b.put(make_image(2), "calexp", visit=1, ccd=1)
    b.close()
    before = everything(root)
    settle()
    drop_registry(root)

    with pytest.raises(RegistryDamagedError) as caught:
        Butler(root).get("calexp", visit=1, ccd=1)
    assert "reindex" in str(caught.value)

    done = run_butler("reindex", str(root))
    assert done.returncode == 0, done.stderr
    assert everything(root) == before


def test_bulk_insert_keeps_the_flags_of_one_by_one(tmp_path: Path, postgres: Cluster) -> None:
    """insert_many (COPY) and add (one by one) leave the same rows: versions in and out of
    order, a data ID already present, a txid recorded twice."""
    from butler.journal import FileRecord, PutEntry

    def entry(n: int, visit: int, version: int) -> PutEntry:
        path = f"calexp/v{visit:07d}/calexp-v{visit:07d}-c001.fits"
        record = FileRecord(0, True, path, "fits", 10 + n, f"{n:064x}")
        txid = f"{n:016x}-000000000000"
        data_id: dict[str, int | str] = {"visit": visit, "ccd": 1}
        return PutEntry(txid, "calexp", data_id, version, float(n), (record,), (), {"n": n})

    first = [entry(1, 1, 1), entry(2, 2, 2), entry(3, 2, 1), entry(4, 3, 1)]
    later = [entry(5, 1, 2), entry(6, 3, 3), entry(7, 3, 2), entry(1, 1, 1)]
    results = []
    for name in ("one-by-one", "bulk"):
        repo = DataRepository(create(tmp_path / name, postgres.url()))
        for batch in (first, later):
            if name == "bulk":
                repo.registry.insert_many(batch)
                continue
            with repo.registry.writer() as writer:
                for each in batch:
                    writer.add(each)
                writer.commit()
        registry = repo.registry
        results.append(
            (
                registry.all_files(),
                registry.query(["calexp"], {"ccd": 1}),
                registry.query(None, {"visit": 3}),
                registry.list_directory("calexp", primary_only=True),
                registry.list_directory("calexp/v0000003", primary_only=True),
                registry.changes_since(0),
            )
        )
        repo.close()
    assert results[0] == results[1]
    current = {(row.data_id, row.version) for row in results[0][1]}
    assert current == {('{"ccd":1,"visit":1}', 2), ('{"ccd":1,"visit":2}', 2),
                       ('{"ccd":1,"visit":3}', 3)}  # fmt: skip


# --- credentials ------------------------------------------------------------------------


def test_credentials_never_reach_butler_yaml_or_a_message(
    tmp_path: Path, postgres: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_password = postgres.tcp_url().replace("://", f"://{PASSWORD_ROLE}:{PASSWORD}@")
    with pytest.raises(ConfigError) as caught:
        DataRepository.create(tmp_path / "refused", registry=with_password)
    assert PASSWORD not in str(caught.value)
    assert "pgpass" in str(caught.value)
    assert not (tmp_path / "refused").exists()
    done = run_butler("create", str(tmp_path / "refused"), "--registry", with_password)
    assert done.returncode != 0 and PASSWORD not in done.stdout + done.stderr

    # The password comes from libpq's own password file, as an admin sets it up.
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{postgres.port}:*:{PASSWORD_ROLE}:{PASSWORD}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    url = postgres.tcp_url(user=PASSWORD_ROLE)
    root = create(tmp_path / "A", url)
    Butler(root).put(make_image(1), "calexp", visit=1, ccd=1)
    assert Butler(root).exists("calexp", visit=1, ccd=1)
    settle()
    for path in root.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), f"the password is in {path}"

    # A new process (this one keeps its connections in a pool, already past the check).
    wrong = "not-the-Password-42"
    passfile.write_text(f"127.0.0.1:{postgres.port}:*:{PASSWORD_ROLE}:{wrong}\n")
    reader = (
        "import sys\nfrom butler import Butler, ButlerError\n"
        "try:\n    Butler(sys.argv[1]).get('calexp', visit=1, ccd=1)\n"
        "except ButlerError as exc:\n    print(exc.errno, exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", reader, str(root)], capture_output=True, text=True, timeout=60
    )
    assert done.stdout, done.stderr
    found, message = done.stdout.split(" ", 1)
    assert int(found) == errno.EACCES, message
    assert "127.0.0.1" in message and "pgpass" in message.lower(), message
    assert wrong not in message and PASSWORD not in message
    failed = run_butler("get", str(root), "calexp", "visit=1", "ccd=1", "-o", str(tmp_path / "x"))
    assert failed.returncode != 0 and "pgpass" in failed.stderr.lower(), failed.stderr
    assert wrong not in failed.stderr + failed.stdout and PASSWORD not in failed.stderr


# --- locks --------------------------------------------------------------------------------

# A writer that, with a "pause" argument, stops at the commit point of its put (the
# repository lock held) until told to go on.  It replaces the fault-injection hook of
# butler.faults, which the put calls there.
PAUSING_WRITER = r"""
import sys, time
from pathlib import Path
import numpy as np
from butler import Butler, faults

root, rendezvous, seed, mode = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def pause(step):
    if step == "prepared" and mode == "pause":
        (rendezvous / "holding").touch()
        deadline = time.monotonic() + 120
        while not (rendezvous / "go").exists():
            if time.monotonic() > deadline:
                sys.exit("never told to go")
            time.sleep(0.005)

faults.crash_point = pause
b = Butler(root)
b.put(np.full((4, 4), seed, dtype=np.float32), "calexp", visit=1, ccd=1)
b.close()
"""


def start_writer(root: Path, rendezvous: Path, seed: int, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PAUSING_WRITER, str(root), str(rendezvous), str(seed), mode],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def locks_of(pid: int) -> list[str]:
    """The lines of /proc/locks (flock, fcntl and OFD locks) held or awaited by ``pid``."""
    with open("/proc/locks") as locks:
        return [line for line in locks if len(line.split()) > 4 and line.split()[4] == str(pid)]


@contextlib.contextmanager
def holding_writer(root: Path, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A writer process stopped at its commit point (the repository lock held)."""
    rendezvous = tmp_path / f"rendezvous-{root.name}"
    rendezvous.mkdir()
    writer = start_writer(root, rendezvous, 1, "pause")
    try:
        wait_for(
            lambda: (rendezvous / "holding").exists() or writer.poll() is not None,
            "the writer to hold the repository lock",
        )
        assert writer.poll() is None, writer.communicate()
        yield writer
    finally:
        (rendezvous / "go").touch()
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, f"{out}\n{err}"


def test_writers_serialize_through_the_database_and_take_no_flock(
    tmp_path: Path, postgres: Cluster
) -> None:
    root = create(tmp_path / "A", postgres.url())
    rendezvous = tmp_path / "second"
    rendezvous.mkdir()
    with holding_writer(root, tmp_path) as first:
        assert locks_of(first.pid) == [], "a PostgreSQL-registered writer took a file lock"
        assert not (root / ".butler" / "lock").exists()
        held = postgres.psql(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        )
        assert int(held) >= 2, "no advisory locks held (repository and owner)"
        # A second writer waits for the first in the database, not in a file lock.
        second = start_writer(root, rendezvous, 2, "go")
        wait_for(
            lambda second=second: (
                int(postgres.psql("SELECT count(*) FROM pg_locks WHERE NOT granted")) > 0
                or second.poll() is not None
            ),
            "the second writer to wait for the repository lock",
        )
        assert second.poll() is None, second.communicate()
        assert locks_of(second.pid) == []
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, f"{out}\n{err}"
    versions = Butler(root).versions("calexp", visit=1, ccd=1)
    assert [ref.version for ref in versions] == [1, 2]
    assert not (root / ".butler" / "lock").exists()


def test_an_sqlite_writer_does_take_a_flock(tmp_path: Path) -> None:
    """The other engine, so the check above is known to see a lock when there is one."""
    root = tmp_path / "A"
    DataRepository.create(root, policy=STANDARD_POLICY, registry="sqlite").close()
    with holding_writer(root, tmp_path) as writer:
        assert any("FLOCK" in line for line in locks_of(writer.pid)), locks_of(writer.pid)


# Each round opens the outputs afresh (a new owner tag, and recovery, which removes dead
# writers' staged files) and puts once: writers starting while others recover.
FRESH_WRITER = r"""
import sys
from butler import Butler

worker, rounds, *outputs = sys.argv[1:]
for n in range(int(rounds)):
    with Butler(outputs=outputs) as butler:
        butler.put({"worker": int(worker), "n": n}, "visitInfo", visit=1000 * int(worker) + n)
"""


@pytest.mark.parametrize("registry", ["sqlite", "postgresql"])
def test_writers_starting_while_others_recover_lose_no_staged_file(
    tmp_path: Path, postgres: Cluster, registry: str
) -> None:
    """Recovery removes only dead writers' staged files, even those of a writer that
    started meanwhile (its owner appeared after the recovery looked for owners)."""
    url = postgres.url() if registry == "postgresql" else "sqlite"
    outputs = [create(tmp_path / name, url) for name in ("A", "B")]
    workers, rounds = 8, 12
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", FRESH_WRITER, str(w), str(rounds), *map(str, outputs)],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    failures = []
    for writer in writers:
        out, err = writer.communicate(timeout=300)
        if writer.returncode != 0:
            failures.append(err.strip().splitlines()[-1] if err.strip() else out)
    assert not failures, failures
    for root in outputs:
        with Butler(root) as butler:
            assert len(butler.query("visitInfo")) == workers * rounds


# --- the server going away --------------------------------------------------------------


def staged_files(root: Path) -> list[str]:
    return sorted(
        name for name in os.listdir(root / ".butler" / "staging") if not name.startswith("owner-")
    )


def test_server_stopped_and_started_under_a_running_butler(
    tmp_path: Path, own_postgres: Cluster
) -> None:
    a = create(tmp_path / "A", own_postgres.url())
    b = tmp_path / "B"
    DataRepository.create(b, policy=STANDARD_POLICY, registry="sqlite").close()
    both = Butler(outputs=[a, b])
    both.put(make_image(1), "calexp", visit=1, ccd=1)
    b_before = everything(b)

    own_postgres.stop_server()
    started = time.monotonic()
    with pytest.raises(ButlerError) as caught:
        both.put(make_image(2), "calexp", visit=1, ccd=1)
    message = str(caught.value)
    assert time.monotonic() - started < 10, "a put waited for the absent server"
    assert caught.value.errno == errno.EIO, message
    assert str(own_postgres.socket_dir) in message, message
    assert "no output was changed" in message, message
    assert everything(b) == b_before, "the SQLite output changed while the other failed"
    assert staged_files(a) == [] and staged_files(b) == []
    with pytest.raises(RepositoryError) as caught:
        both.get("calexp", visit=1, ccd=1, repositoryLabel="A")
    assert caught.value.errno == errno.EIO
    assert str(own_postgres.socket_dir) in str(caught.value)

    own_postgres.run_server()
    [ref_a, ref_b] = both.put(make_image(3), "calexp", visit=1, ccd=1)  # resumes by itself
    assert (ref_a.version, ref_b.version) == (2, 2)
    for root in (a, b):
        alone = Butler(root)
        assert [r.version for r in alone.versions("calexp", visit=1, ccd=1)] == [1, 2]
        got = alone.get("calexp", visit=1, ccd=1)
        assert got[0].header["SEED"] == 3
        alone.close()
    both.close()


def test_unreachable_server_fails_in_seconds_naming_the_host(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port where nothing listens: refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(RepositoryError) as caught:
        DataRepository.create(tmp_path / "refused", registry=f"postgresql://127.0.0.1:{port}/db")
    assert time.monotonic() - started < 5
    assert "127.0.0.1" in str(caught.value) and str(port) in str(caught.value)

    # A server that accepts the connection and never answers: the connect timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(RepositoryError) as caught:
            DataRepository.create(tmp_path / "silent", registry=f"postgresql://127.0.0.1:{port}/db")
        waited = time.monotonic() - started
    assert waited < 15, f"waited {waited:.1f} s for a silent server"
    message = str(caught.value)
    assert "127.0.0.1" in message and "timeout" in message.lower(), message


# --- moving between engines ------------------------------------------------------------


def test_reindex_moves_a_repository_between_engines_and_back(
    tmp_path: Path, postgres: Cluster
) -> None:
    root = tmp_path / "A"
    DataRepository.create(root, policy=STANDARD_POLICY, registry="sqlite").close()
    b = Butler(root)
    b.put(make_image(1), "calexp", visit=1, ccd=1, provenance={"step": "first"})
    b.put(make_image(2), "calexp", visit=1, ccd=1, provenance={"step": "second"})
    b.put({"exptime": 30.0}, "visitInfo", visit=1)
    b.put(make_image(3), "raw", visit=2, ccd=1)
    b.remove("raw", visit=2, ccd=1)
    b.close()
    before = everything(root)
    settle()

    done = run_butler("reindex", str(root), "--registry", postgres.url())
    assert done.returncode == 0, done.stderr
    config = config_of(root)
    assert config["registry"] == postgres.url() and str(config["schema"]).startswith("butler_a")
    assert not list(root.glob("registry.sqlite3*"))
    assert everything(root) == before
    assert not Butler(root).exists("raw", visit=2, ccd=1)
    assert run_butler("verify", str(root)).returncode == 0
    Butler(root).put(make_image(4), "calexp", visit=1, ccd=1)
    before = everything(root)
    settle()

    done = run_butler("reindex", str(root), "--registry", "sqlite")
    assert done.returncode == 0, done.stderr
    assert str(config["schema"]) in done.stdout, "the schema left behind is not named"
    assert "registry" not in config_of(root) and "schema" not in config_of(root)
    assert (root / "registry.sqlite3").is_file()
    assert everything(root) == before
    assert run_butler("verify", str(root)).returncode == 0


def test_butler_registry_names_the_engine_of_new_repositories(
    tmp_path: Path, postgres: Cluster
) -> None:
    env = {**subprocess_env(), "BUTLER_REGISTRY": postgres.url()}
    done = run_butler("create", str(tmp_path / "A"), env=env)
    assert done.returncode == 0, done.stderr
    assert config_of(tmp_path / "A")["registry"] == postgres.url()
    assert "PostgreSQL" in done.stdout
    done = run_butler("create", str(tmp_path / "B"), "--registry", "sqlite", env=env)
    assert done.returncode == 0, done.stderr
    assert "registry" not in config_of(tmp_path / "B")
    assert (tmp_path / "B" / "registry.sqlite3").is_file()


# --- notices ------------------------------------------------------------------------------


def test_a_commit_sends_a_notice_of_what_changed(tmp_path: Path, postgres: Cluster) -> None:
    root = create(tmp_path / "A", postgres.url())
    repo = DataRepository(root)
    registry = repo.registry
    notices = registry.notices()
    assert notices is not None
    try:
        seen = registry.change_seq()
        done = subprocess.run(
            [sys.executable, "-c", PAUSING_WRITER, str(root), str(tmp_path), "5", "go"],
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        waiting = select.poll()  # not select(): a descriptor past 1024 is fine here
        waiting.register(notices.fileno(), select.POLLIN)
        assert waiting.poll(DEADLINE * 1000), "no notice arrived"
        assert notices.drain() >= 1
        changed = registry.changes_since(seen)
        assert "calexp/v0000001/calexp-v0000001-c001.fits" in changed
        assert notices.drain() == 0, "a second notice for one commit"
    finally:
        notices.close()
        repo.close()


def test_sqlite_has_no_notices(tmp_path: Path) -> None:
    root = tmp_path / "A"
    DataRepository.create(root, policy=STANDARD_POLICY, registry="sqlite").close()
    repo = DataRepository(root)
    assert repo.registry.notices() is None
    repo.close()


def test_import_butler_imports_no_driver() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys, butler; print('psycopg' in sys.modules)"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "False"
