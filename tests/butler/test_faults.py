"""ACCEPTANCE 25: foreseeable failures fail before the commit point.

In the second of two outputs, the put is made impossible in each way a disk or an
admin can (for real: files and directories in the way, ``chattr +i``, a read-only
bind mount, a tmpfs out of inodes or blocks, an unwritable registry, a non-root
writer and a read-only directory).  Each time: the put raises a ButlerError whose
errno says why, neither output changes (files, records, registry rows), every
output still opens, ``verify`` is clean once the fault is cleared, and a retry
succeeds.  A disk that fills *after* the commit point is not foreseeable: the put
still applies, with the space the repository keeps in reserve.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from butler import Butler, ButlerError, DataRepository
from butler.maintenance import verify
from tests.butler.conftest import STANDARD_POLICY, exposure_path
from tests.pg import Cluster
from tests.system import (
    User,
    fill,
    new_user,
    read_only_bind,
    remove_user,
    require_root,
    set_immutable,
    tmpfs,
)

TARGET = exposure_path("calexp", 1, 1)  # calexp/v0000001/calexp-v0000001-c001.fits
TARGET_DIR = TARGET.rpartition("/")[0]

_IGNORED = ("registry.sqlite3", ".butler/lock", ".butler/reserve")


def files(repo: Path) -> dict[str, str]:
    """Every regular file the butler keeps, with its sha256 (not the registry's bytes,
    nor lock, reserve and owner files, which may change without changing anything)."""
    found = {}
    for path in repo.rglob("*"):
        relative = path.relative_to(repo).as_posix()
        if (
            path.is_symlink()
            or not path.is_file()
            or relative.startswith(_IGNORED)
            or "/owner-" in relative
            or relative.startswith((".inodes", ".filler"))
        ):
            continue
        found[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def rows(repo: Path) -> list[tuple[str, str, int, bool]]:
    # Closed at once: SQLite shares a process's descriptors between its connections to
    # one file, so one left open would let a later put write through a file made
    # immutable since (the kernel checks that at open, not at write).
    opened = DataRepository(repo)
    try:
        return sorted(
            (r.dataset_type, r.data_id, r.version, r.current) for r in opened.registry.all_files()
        )
    finally:
        opened.close()


def state(repo: Path) -> tuple[dict[str, str], list[tuple[str, str, int, bool]]]:
    return files(repo), rows(repo)


PUT_AS_USER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from butler import Butler, ButlerError
    try:
        Butler(outputs=[sys.argv[1], sys.argv[2]]).put(
            np.full((4, 4), float(sys.argv[3])), "calexp", visit=1, ccd=1
        )
    except ButlerError as exc:
        print(json.dumps({"errno": exc.errno, "message": str(exc)}))
    else:
        print(json.dumps({"errno": None, "message": ""}))
    """
)


@dataclass
class Setup:
    a: Path
    b: Path
    user: User | None = None
    undo: list[Callable[[], None]] = field(default_factory=list)

    def put(self, value: float) -> tuple[int | None, str]:
        """The put under test: (errno, message) of its ButlerError, or (None, "")."""
        if self.user is None:
            try:
                with Butler(outputs=[self.a, self.b]) as butler:
                    butler.put(np.full((4, 4), value), "calexp", visit=1, ccd=1)
            except ButlerError as exc:
                return exc.errno, str(exc)
            return None, ""
        done = self.user.run(
            sys.executable, "-c", PUT_AS_USER, self.a, self.b, str(value), timeout=120
        )
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        return answer["errno"], answer["message"]

    def clear(self) -> None:
        while self.undo:
            self.undo.pop()()


@dataclass(frozen=True)
class Fault:
    name: str
    errnos: frozenset[int]
    make: Callable[[Setup], None]
    as_user: bool = False
    b_on_tmpfs: dict[str, object] | None = None
    #: Put version 1 first: the failing put is then version 2 (replacing a file, or
    #: under .butler/versions/v2).
    second_version: bool = False


def _file_for_directory(s: Setup) -> None:
    (s.b / "calexp").mkdir()
    (s.b / TARGET_DIR).write_text("not a directory")
    s.undo.append(lambda: (s.b / TARGET_DIR).unlink())


def _directory_for_file(s: Setup) -> None:
    (s.b / TARGET).mkdir(parents=True)
    s.undo.append(lambda: shutil.rmtree(s.b / "calexp"))


def _versions_entry_is_a_file(s: Setup) -> None:
    (s.b / ".butler" / "versions" / "v2").write_text("not a directory")
    s.undo.append(lambda: (s.b / ".butler" / "versions" / "v2").unlink())


def _read_only_directory(s: Setup) -> None:
    (s.b / TARGET_DIR).mkdir(parents=True)
    (s.b / TARGET_DIR).chmod(0o555)
    s.undo.append(lambda: (s.b / TARGET_DIR).chmod(0o755))


def _immutable_directory(s: Setup) -> None:
    (s.b / TARGET_DIR).mkdir(parents=True)
    set_immutable(s.b / TARGET_DIR, True)
    s.undo.append(lambda: set_immutable(s.b / TARGET_DIR, False))


def _immutable_current_file(s: Setup) -> None:
    set_immutable(s.b / TARGET, True)
    s.undo.append(lambda: set_immutable(s.b / TARGET, False))


def _read_only_bind_mount(s: Setup) -> None:
    (s.b / TARGET_DIR).mkdir(parents=True)
    mount = read_only_bind(s.b / TARGET_DIR)
    mount.__enter__()
    s.undo.append(lambda: mount.__exit__(None, None, None))


def _no_free_inodes(s: Setup) -> None:
    fill(s.b, inodes=True)
    s.undo.append(lambda: shutil.rmtree(s.b / ".inodes"))


def _no_free_blocks(s: Setup) -> None:
    fill(s.b)
    s.undo.append(lambda: (s.b / ".filler").unlink())


def _immutable_registry(s: Setup) -> None:
    set_immutable(s.b / "registry.sqlite3", True)
    s.undo.append(lambda: set_immutable(s.b / "registry.sqlite3", False))


def _read_only_registry(s: Setup) -> None:
    (s.b / "registry.sqlite3").chmod(0o444)
    s.undo.append(lambda: (s.b / "registry.sqlite3").chmod(0o644))


FAULTS = [
    Fault("a file where a template directory must go", frozenset({errno.ENOTDIR}),
          _file_for_directory),
    Fault("a directory where the file must go", frozenset({errno.EISDIR}), _directory_for_file),
    Fault(".butler/versions/vN is a file", frozenset({errno.ENOTDIR}), _versions_entry_is_a_file,
          second_version=True),
    Fault("a read-only template directory, non-root writer", frozenset({errno.EACCES}),
          _read_only_directory, as_user=True),
    Fault("an immutable template directory", frozenset({errno.EPERM}), _immutable_directory),
    Fault("an immutable file to replace", frozenset({errno.EPERM}), _immutable_current_file,
          second_version=True),
    Fault("a read-only bind mount", frozenset({errno.EROFS}), _read_only_bind_mount),
    Fault("no free inodes", frozenset({errno.ENOSPC}), _no_free_inodes,
          b_on_tmpfs={"size": "8m", "inodes": 400}),
    Fault("no free blocks", frozenset({errno.ENOSPC}), _no_free_blocks,
          b_on_tmpfs={"size": "4m"}),
    Fault("an immutable registry", frozenset({errno.EACCES, errno.EPERM}), _immutable_registry),
    Fault("a read-only registry, non-root writer", frozenset({errno.EACCES}),
          _read_only_registry, as_user=True),
]  # fmt: skip


@pytest.fixture(scope="module")
def writer() -> Iterator[User]:
    """A non-root user who owns the outputs of the as_user faults."""
    require_root()
    user = new_user("w")
    try:
        yield user
    finally:
        remove_user(user)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory other users can reach (tmp_path is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="butler-faults-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _outputs(root: Path, fault: Fault) -> Iterator[tuple[Path, Path]]:
    """A on the ordinary disk, B on its own tmpfs when the fault needs one."""
    a = root / "A"
    b_parent = root / "B-disk"
    b_parent.mkdir()
    if fault.b_on_tmpfs is None:
        yield a, b_parent / "B"
        return
    with tmpfs(b_parent, **fault.b_on_tmpfs):  # type: ignore[arg-type]
        yield a, b_parent / "B"


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_a_foreseeable_failure_changes_nothing(
    fault: Fault, shared_tmp: Path, request: pytest.FixtureRequest
) -> None:
    require_root()
    user = request.getfixturevalue("writer") if fault.as_user else None
    changes_nothing(fault, shared_tmp, user, registry="sqlite")


#: The faults of the files, met by root: the same with a PostgreSQL registry (a SQLite
#: file's own faults, and a non-root writer's, who would need a role of its own there,
#: are SQLite's).
POSTGRES_FAULTS = [f for f in FAULTS if not f.as_user and "registry" not in f.name]


@pytest.mark.parametrize("fault", POSTGRES_FAULTS, ids=[f.name for f in POSTGRES_FAULTS])
def test_a_foreseeable_failure_changes_nothing_with_postgresql(
    fault: Fault, shared_tmp: Path, postgres: Cluster
) -> None:
    require_root()
    changes_nothing(fault, shared_tmp, None, registry=postgres.url())


def changes_nothing(fault: Fault, shared_tmp: Path, user: User | None, registry: str) -> None:
    """The fault makes the put fail with its errno, naming the output; nothing changed
    in either output (files and registry rows); both open; the retry succeeds."""
    with _outputs(shared_tmp, fault) as (a, b):
        for repo in (a, b):
            DataRepository.create(repo, policy=STANDARD_POLICY, registry=registry).close()
            with Butler(repo) as butler:  # closing settles the put
                butler.put({"seen": "before"}, "visitInfo", visit=9)  # not empty
        setup = Setup(a, b, user)
        if user is not None:
            user.own(shared_tmp)
        if fault.second_version:
            assert setup.put(0.5) == (None, "")
        before = {repo: state(repo) for repo in (a, b)}
        fault.make(setup)
        if user is not None:
            user.own(shared_tmp)  # what make() added is the writer's too (modes stay)

        number, message = setup.put(1.0)

        assert number in fault.errnos, f"errno {number}: {message}"
        assert str(b) in message, f"the message names the output's path: {message}"
        for repo in (a, b):
            DataRepository(repo).close()  # still opens
        # (A full disk may keep SQLite from opening the registry at all, even to read it:
        # the comparison runs once the fault is cleared, which changes nothing of ours.)
        setup.clear()
        for repo in (a, b):
            assert state(repo) == before[repo], f"{repo.name} changed"
        report = verify(Butler(outputs=[a, b]))
        assert report.ok, report.problems
        assert setup.put(2.0) == (None, "")  # the retry succeeds once the fault is cleared
        for repo in (a, b):
            assert (
                float(np.asarray(Butler(repo).get("calexp", visit=1, ccd=1)[0].data)[0, 0]) == 2.0
            )
        assert verify(Butler(outputs=[a, b])).ok


FILLING_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from butler import Butler
    refs = Butler(outputs=[sys.argv[1], sys.argv[2]]).put(
        np.full((64, 64), 3.0), "calexp", visit=1, ccd=1
    )
    print(refs[0].version)
    """
)


def test_a_disk_filling_after_the_commit_point_still_applies(shared_tmp: Path) -> None:
    """The reserve: the disk of B is filled at the commit point (a real full tmpfs)."""
    require_root()
    a = shared_tmp / "A"
    with tmpfs(shared_tmp / "B-disk", size="4m"):
        b = shared_tmp / "B-disk" / "B"
        for repo in (a, b):
            DataRepository.create(repo, policy=STANDARD_POLICY).close()
        env = dict(
            os.environ,
            BUTLER_TEST_FILL_AT="prepared",
            BUTLER_TEST_FILL_PATH=str(shared_tmp / "B-disk" / ".filler"),
        )
        done = subprocess.run(
            [sys.executable, "-c", FILLING_CHILD, str(a), str(b)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "1"
        for repo in (a, b):
            image = Butler(repo).get("calexp", visit=1, ccd=1)
            assert float(np.asarray(image[0].data)[0, 0]) == 3.0
        assert verify(Butler(outputs=[a, b])).ok
        # The reserve is spent: the next put is refused before its commit point...
        with pytest.raises(ButlerError) as refused:
            Butler(outputs=[a, b]).put(np.ones((64, 64)), "calexp", visit=1, ccd=2)
        assert refused.value.errno == errno.ENOSPC
        assert not Butler(a).exists("calexp", visit=1, ccd=2)
        # ... and accepted once space is freed.
        (shared_tmp / "B-disk" / ".filler").unlink()
        Butler(outputs=[a, b]).put(np.ones((64, 64)), "calexp", visit=1, ccd=2)
        assert verify(Butler(outputs=[a, b])).ok
