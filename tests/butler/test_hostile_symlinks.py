"""Links planted in a member repository are never followed (issue 8, item 1; library side).

Whoever can write a member repository can plant a symbolic link where a dataset,
a template directory, ``.butler/...``, ``butler.yaml`` or the registry should be.
The butler must never leave the repository's tree and never follow a link it did
not make: reads refuse (UnsafePathError, errno ELOOP), writes refuse before
anything is written (nothing lands outside), and ``verify`` names every link.
(Through the mount, with another real user planting the link: tests/butlerfs.)
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from butler import Butler, ButlerError, DataRepository
from butler.errors import UnsafePathError
from butler.maintenance import verify
from tests.butler.conftest import MakeRepo, exposure_path, make_image

CALEXP = exposure_path("calexp", 1, 1)
SECRET = b"SIMPLE  = secret bytes of another user"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere" / "secret.fits"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


def _link(at: Path, to: Path) -> None:
    if at.is_dir() and not at.is_symlink():
        import shutil

        shutil.rmtree(at)
    elif at.exists() or at.is_symlink():
        at.unlink()
    at.parent.mkdir(parents=True, exist_ok=True)
    at.symlink_to(to)


READ_PLANTS: dict[str, Callable[[Path, Path], None]] = {
    "the current file": lambda repo, secret: _link(repo / CALEXP, secret),
    "the version's own file": lambda repo, secret: _link(
        repo / ".butler" / "versions" / "v1" / CALEXP, secret
    ),
    "a template directory": lambda repo, secret: _link(
        repo / ".butler" / "versions" / "v1" / "calexp", secret.parent
    ),
    ".butler/versions": lambda repo, secret: _link(repo / ".butler" / "versions", secret.parent),
}


@pytest.mark.parametrize("where", sorted(READ_PLANTS))
def test_a_planted_link_is_never_read_through(
    where: str, make_repo: MakeRepo, secret: Path
) -> None:
    shared = make_repo("shared")
    with Butler(shared) as owner:
        owner.put(make_image(1), "calexp", visit=1, ccd=1)
    secret.parent.joinpath("calexp", "v0000001").mkdir(parents=True)
    (secret.parent / "calexp" / "v0000001" / CALEXP.rpartition("/")[2]).write_bytes(SECRET)
    READ_PLANTS[where](shared, secret)
    reader = Butler(inputs=[shared])
    try:
        reader.get("calexp", visit=1, ccd=1)
    except ButlerError as exc:
        assert exc.errno in (errno.ELOOP, errno.EIO, errno.ENOENT), exc
        assert "secret" not in str(exc)
    else:
        # The template path is for plain tools only: reads use the version's own name.
        assert where == "the current file"
    report = verify(shared)
    assert any(p.kind in ("unsafe", "missing") for p in report.problems), report.problems


WRITE_PLANTS: dict[str, Callable[[Path, Path], None]] = {
    "a template directory": lambda repo, outside: _link(repo / "calexp", outside),
    "the template path": lambda repo, outside: _link(repo / CALEXP, outside / "target.fits"),
    ".butler/staging": lambda repo, outside: _link(repo / ".butler" / "staging", outside),
    ".butler/versions": lambda repo, outside: _link(repo / ".butler" / "versions", outside),
    ".butler/journal": lambda repo, outside: _link(repo / ".butler" / "journal", outside),
}


@pytest.mark.parametrize("where", sorted(WRITE_PLANTS))
def test_a_planted_link_is_never_written_through(
    where: str, make_repo: MakeRepo, tmp_path: Path
) -> None:
    a, b = make_repo("A"), make_repo("B")
    outside = tmp_path / "outside"
    outside.mkdir()
    WRITE_PLANTS[where](b, outside)
    with pytest.raises(ButlerError) as refused:
        Butler(outputs=[a, b]).put(np.ones((4, 4)), "calexp", visit=1, ccd=1)
    assert isinstance(refused.value, UnsafePathError) or refused.value.errno == errno.ELOOP, (
        refused.value
    )
    assert list(outside.rglob("*")) == [], "something was written outside the repository"
    assert not Butler(a).exists("calexp", visit=1, ccd=1)  # all or nothing: A has nothing
    assert any(p.kind == "unsafe" for p in verify(b).problems)


def test_a_linked_butler_yaml_or_registry_is_refused(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo("A")
    elsewhere = tmp_path / "elsewhere.yaml"
    (repo / "butler.yaml").rename(elsewhere)
    (repo / "butler.yaml").symlink_to(elsewhere)
    with pytest.raises(UnsafePathError):
        DataRepository(repo)
    (repo / "butler.yaml").unlink()
    elsewhere.rename(repo / "butler.yaml")
    registry = tmp_path / "other.sqlite3"
    (repo / "registry.sqlite3").rename(registry)
    (repo / "registry.sqlite3").symlink_to(registry)
    with pytest.raises(UnsafePathError):
        Butler(repo).query("calexp")


def test_a_forged_path_in_a_registry_never_leaves_the_tree(
    make_repo: MakeRepo, secret: Path
) -> None:
    import sqlite3

    repo = make_repo("A")
    with Butler(repo) as butler:
        butler.put(make_image(1), "calexp", visit=1, ccd=1)
    forged = os.path.relpath(secret, repo)  # ../elsewhere/secret.fits
    with sqlite3.connect(repo / "registry.sqlite3") as connection:
        connection.execute("UPDATE files SET path = ?", (forged,))
    with pytest.raises(ButlerError) as refused:
        Butler(repo).get("calexp", visit=1, ccd=1)
    assert "secret bytes" not in str(refused.value)
