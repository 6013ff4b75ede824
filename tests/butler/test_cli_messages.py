"""Errors on the command line speak its language: CLI commands, not Python calls; data IDs
as key=value; "did you mean" for near misses; grammar right.  Run as a user types them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from butler import Butler, ButlerError, DataRepository
from butler.cli.messages import COMMAND_LINE_HINTS, describe_error
from butler.errors import LIBRARY_HINTS
from tests.butler.conftest import STANDARD_POLICY, MakeRepo
from tests.butler.test_cli import assert_one_line_error, butler, fits_file

# What a Python hint looks like: a call (name followed by "("), a class method, a dict.
PYTHON = re.compile(r"[A-Za-z_][\w.]*\(|\bButler\.|DataRepository|\{'|ignore_missing_simple")


@pytest.fixture
def setup(tmp_path: Path, make_repo: MakeRepo) -> dict[str, str]:
    """Repository A with calexp visit=1 ccd=1 and ccd=2; an aggregator reading A, writing
    A and a write-only output W."""
    repo = make_repo("A")
    with Butler(repo) as library:
        for ccd in (1, 2):
            library.ingest(fits_file(tmp_path / f"{ccd}.fits", ccd), "calexp", visit=1, ccd=ccd)
    aggregator = tmp_path / "agg.yaml"
    outputs = [{"path": "A", "mode": "rw"}, {"path": "W", "mode": "w"}]
    aggregator.write_text(json.dumps({"butler": 1, "outputs": outputs}), encoding="utf-8")
    notes = tmp_path / "notes.fits"
    notes.write_text("not an image\n" * 300)
    return {
        "repo": str(repo),
        "agg": str(aggregator),
        "tmp": str(tmp_path),
        "image": str(tmp_path / "1.fits"),
        "notes": str(notes),
    }


# (arguments, words the one line must hold)
CASES = [
    (
        ["get", "{repo}", "calexpp", "visit=1", "ccd=1", "-o", "-"],
        ["did you mean calexp?", "butler define {repo} calexpp --genre GENRE"],
    ),
    (["query", "{repo}", "Calexp"], ["did you mean calexp?"]),
    (
        ["put", "{repo}", "icExp", "{image}", "visit=1", "ccd=1"],
        ["unknown dataset type 'icExp'", "butler define {repo} icExp --genre GENRE"],
    ),
    (
        ["get", "{repo}", "calexp", "visit=1", "ccd=9", "-o", "-"],
        ["calexp visit=1 ccd=9", "repository searched: A", "butler query {repo} calexp"],
    ),
    (["versions", "{repo}", "calexp", "visit=3", "ccd=1"], ["butler query {repo} calexp"]),
    (["query", "{tmp}/typo"], ["butler create {tmp}/typo"]),
    (["define", "{repo}", "icExp", "--genre", "exposre"], ["did you mean exposure?"]),
    (
        ["define", "{repo}", "icExp", "--genre", "exposure", "--storage", "fitz"],
        ["did you mean fits?"],
    ),
    (["query", "{repo}", "--genre", "exposur"], ["did you mean exposure?"]),
    (
        ["get", "{repo}", "calexp", "visit=1", "ccd=1", "repositoryLabel=a", "-o", "-"],
        ["no repository is labelled 'a'", "did you mean A?"],
    ),
    (
        ["get", "{agg}", "calexp", "visit=1", "ccd=1", "repositoryLabel=W", "-o", "-"],
        ["'W' is a write-only output", "repositories read: A"],
    ),
    (["get", "{repo}", "calexp", "vist=1", "ccd=1", "-o", "-"], ["did you mean visit?"]),
    (["put", "{repo}", "calexp", "{image}", "visit=1"], ["data ID visit=1 is missing key ccd;"]),
    (
        ["put", "{repo}", "calexp", "{image}", "visit=1", "ccd=1", "version=3"],
        ["put takes no version=", "versions are numbered by the butler"],
    ),
    (["get", "{repo}", "calexp", "visit=1", "-o", "-"], ["visit=1 matches 2 datasets"]),
    (
        ["put", "{repo}", "calexp", "{notes}", "visit=1", "ccd=3"],
        ["notes.fits is not a valid fits file", "does not begin with a FITS primary header"],
    ),
    (
        [
            "get",
            "{repo}",
            "calexp",
            "visit=1",
            "ccd=1",
            "-o",
            "-",
            "--policy",
            "datasetTypes.calexp.storage=fitz",
        ],
        ["did you mean fits?"],
    ),
    (
        ["--policy", "on_exists=error", "put", "{repo}", "calexp", "{image}", "visit=1", "ccd=1"],
        ["calexp visit=1 ccd=1 already exists"],
    ),
]


@pytest.mark.parametrize(("arguments", "words"), CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_errors_in_command_line_terms(
    setup: dict[str, str], arguments: list[str], words: list[str]
) -> None:
    done = butler(*(argument.format(**setup) for argument in arguments), status=1)
    assert_one_line_error(done, *(word.format(**setup) for word in words))
    assert not PYTHON.search(done.stderr), f"a Python hint on the command line: {done.stderr}"


def test_a_mistyped_command_gets_did_you_mean() -> None:
    done = butler("qurey", "somewhere", status=2)
    assert "unknown command 'qurey'; did you mean query?" in done.stderr
    assert "butler --help" in done.stderr
    done = butler("frobnicate", status=2)
    assert "did you mean" not in done.stderr and "unknown command 'frobnicate'" in done.stderr


def test_counts_read_right(tmp_path: Path, make_repo: MakeRepo) -> None:
    repo = make_repo("A")
    butler("put", repo, "calexp", fits_file(tmp_path / "one.fits", 1), "visit=1", "ccd=1")
    assert "verified 1 file, 5.6 KiB, in 1 repository: no problems" in butler("verify", repo).stdout
    assert "repair: 0 actions, all clean" in butler("repair", repo).stdout
    assert f"reindexed {repo}: 1 record, 0 removals" in butler("reindex", repo).stdout


def test_every_hint_has_both_phrasings() -> None:
    assert COMMAND_LINE_HINTS.keys() == LIBRARY_HINTS.keys()


def test_the_library_phrases_hints_for_python(tmp_path: Path, make_repo: MakeRepo) -> None:
    repo = make_repo("A")
    with Butler(repo) as library:
        with pytest.raises(ButlerError) as unknown:
            library.get("calexpp", visit=1, ccd=1)
        with pytest.raises(ButlerError) as missing:
            library.get("calexp", visit=1, ccd=1)
    with pytest.raises(ButlerError) as not_a_repository:
        DataRepository(tmp_path / "typo")
    assert "Butler.define('calexpp', genre=...)" in str(unknown.value)
    assert "Butler.query('calexp', ...)" in str(missing.value)
    assert f"DataRepository.create('{tmp_path / 'typo'}')" in str(not_a_repository.value)
    for error in (unknown.value, missing.value, not_a_repository.value):
        assert error.hint is not None
        assert str(error).startswith(error.problem + "; ")
        on_the_command_line = describe_error(error, "get", str(repo))
        assert on_the_command_line.rpartition("; ")[2].split()[0] in ("define", "list", "create")
        assert "'butler " in on_the_command_line or ": butler " in on_the_command_line
        assert not PYTHON.search(on_the_command_line), on_the_command_line


def test_a_policy_with_a_near_miss_format(make_repo: MakeRepo) -> None:
    broken = json.loads(json.dumps(STANDARD_POLICY))
    broken["genres"]["exposure"]["storage"] = "fitz"
    with pytest.raises(ButlerError, match="did you mean fits"):
        make_repo("A", policy=broken)
