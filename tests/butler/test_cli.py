"""The ``butler`` command line, run as a subprocess against real repositories in tmp_path."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from butler.progress import ProgressBar
from tests.butler.conftest import (
    STANDARD_POLICY,
    MakeRepo,
    butler_command,
    exposure_path,
    make_image,
    subprocess_env,
)

COMMANDS = [
    "create",
    "define",
    "types",
    "put",
    "get",
    "query",
    "versions",
    "provenance",
    "verify",
    "repair",
    "reindex",
]


def butler(
    *args: str | Path, status: int = 0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``butler ARGS``; fail the test, showing both streams, unless it exits ``status``."""
    done = subprocess.run(
        butler_command(*map(str, args)),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )
    assert done.returncode == status, (
        f"butler {' '.join(map(str, args))} exited {done.returncode}, expected {status}\n"
        f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    )
    return done


def butler_json(*args: str | Path, status: int = 0) -> Any:
    return json.loads(butler(*args, "--json", status=status).stdout)


def assert_one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = done.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{done.stderr}"
    assert lines[0].startswith("butler: "), lines[0]
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"


def fits_file(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    make_image(seed).writeto(path)
    return path


def policy_file(tmp_path: Path, wrapped: bool = False) -> Path:
    """The standard policy as a file; JSON is YAML, so no YAML writer is needed here."""
    path = tmp_path / ("butler-like.yaml" if wrapped else "policy.yaml")
    content: dict[str, object] = (
        {"butler": 1, "policy": STANDARD_POLICY} if wrapped else STANDARD_POLICY
    )
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


def two_outputs(tmp_path: Path, make_repo: MakeRepo) -> tuple[Path, Path, Path]:
    """Repositories A and B and an aggregator file writing to both."""
    a, b = make_repo("A"), make_repo("B")
    aggregator = tmp_path / "agg.yaml"
    aggregator.write_text(json.dumps({"butler": 1, "outputs": [str(a), str(b)]}), encoding="utf-8")
    return a, b, aggregator


# -- startup and help ------------------------------------------------------------------------


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    butler("--help")  # warm the file cache: the figure below is the startup, not the disk
    started = time.perf_counter()
    done = butler("--help")
    elapsed = time.perf_counter() - started
    print(f"butler --help took {elapsed:.3f} s")
    assert "commands:" in done.stdout and "verify" in done.stdout
    assert elapsed < 1.0, f"butler --help took {elapsed:.2f} s (the target is 0.3 s)"

    timing = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "butler", "--help"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    imported = {line.split("|")[-1].strip() for line in timing.stderr.splitlines()}
    heavy = sorted(m for m in imported if m.split(".")[0] in ("astropy", "numpy", "h5py"))
    assert not heavy, f"butler --help imports {heavy}"


def test_put_of_an_image_imports_no_astropy(tmp_path: Path, make_repo: MakeRepo) -> None:
    """A plain FITS image is checked without astropy: its import is most of a one-file put."""
    repo = make_repo("A")
    image = fits_file(tmp_path / "image.fits", 1)
    command = ["put", str(repo), "calexp", str(image), "visit=1", "ccd=1"]
    timing = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "butler", *command],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    imported = {line.split("|")[-1].strip() for line in timing.stderr.splitlines()}
    heavy = sorted(m for m in imported if m.split(".")[0] in ("astropy", "numpy", "h5py"))
    assert not heavy, f"butler put imports {heavy[:5]}"
    assert (repo / exposure_path("calexp", 1, 1)).read_bytes() == image.read_bytes()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    done = butler(command, "-h")
    assert done.stdout.startswith(f"usage: butler {command}")


def test_no_command_is_a_usage_error() -> None:
    done = butler(status=2)
    assert "usage: butler" in done.stderr
    butler("frobnicate", status=2)


# -- the round trip --------------------------------------------------------------------------


def test_create_define_put_query_get_versions_provenance(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    butler("create", raw, "--policy", policy_file(tmp_path, wrapped=True))
    work = tmp_path / "work"
    done = butler(
        "create", work, "--label", "mine", "--policy", policy_file(tmp_path), "--parent", raw
    )
    assert "created repository mine" in done.stdout
    assert (work / "butler.yaml").is_file()

    butler("define", work, "icExp", "--genre", "exposure")
    first = fits_file(tmp_path / "in" / "first.fits", 1)
    second = fits_file(tmp_path / "in" / "second.fits", 2)
    refs = butler_json("put", work, "icExp", first, "visit=5", "ccd=3")
    assert [(r["dataset_type"], r["data_id"], r["version"]) for r in refs] == [
        ("icExp", {"visit": 5, "ccd": 3}, 1)
    ]
    assert (work / exposure_path("icExp", 5, 3)).read_bytes() == first.read_bytes()
    butler("put", work, "icExp", second, "visit=5", "ccd=3")

    listed = butler_json("query", work, "icExp", "visit=5")
    assert len(listed) == 1
    assert listed[0]["data_id"] == {"visit": 5, "ccd": 3}
    assert listed[0]["repository"] == "mine"
    assert listed[0]["version"] == 2
    assert listed[0]["size"] == second.stat().st_size
    assert listed[0]["storage"] == "fits"
    assert butler_json("query", work, "--genre", "exposure", "visit=5") == listed
    assert butler_json("query", work, "visit=6") == []

    table = butler("query", work, "icExp").stdout.splitlines()
    assert table[0].split() == ["DATASET", "TYPE", "DATA", "ID", "REPOSITORY", "VERSION", "SIZE"]
    assert table[1].split() == [
        "icExp",
        "visit=5",
        "ccd=3",
        "mine",
        "2",
        str(second.stat().st_size),
    ]

    out = tmp_path / "out.fits"
    butler("get", work, "icExp", "visit=5", "ccd=3", "-o", out)
    assert out.read_bytes() == second.read_bytes()
    butler("get", work, "icExp", "ccd=3", "visit=5", "version=1", "-o", out)
    assert out.read_bytes() == first.read_bytes()
    named = tmp_path / "icExp-v0000005-c003.fits"
    butler("get", work, "icExp", "visit=5", "ccd=3", "repositoryLabel=mine", "-o", named)
    assert named.read_bytes() == second.read_bytes()
    to_stdout = subprocess.run(
        butler_command("get", str(work), "icExp", "visit=5", "ccd=3", "-o", "-"),
        env=subprocess_env(),
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert to_stdout.stdout == second.read_bytes()

    versions = butler_json("versions", work, "icExp", "visit=5", "ccd=3")
    assert [(v["version"], v["current"]) for v in versions] == [(1, False), (2, True)]
    assert versions[0]["sha256"] != versions[1]["sha256"]
    assert "current" in butler("versions", work, "icExp", "visit=5", "ccd=3").stdout

    provenance = butler_json("provenance", work, "icExp", "visit=5", "ccd=3", "--version", "1")
    assert provenance["dataset"]["version"] == 1
    for key in ("time", "user", "host", "software", "inputs", "outputs"):
        assert key in provenance["provenance"], key
    assert "host:" in butler("provenance", work, "icExp", "visit=5", "ccd=3").stdout


def test_put_of_several_files_reads_data_ids_from_their_paths(
    tmp_path: Path, make_repo: MakeRepo
) -> None:
    repo = make_repo("A")
    files = [fits_file(tmp_path / "in" / exposure_path("raw", 7, ccd), ccd) for ccd in (1, 2, 3)]
    done = butler("put", repo, "raw", *files)
    assert done.stderr == ""  # no progress bar: stderr is not a terminal
    listed = butler_json("query", repo, "raw", "visit=7")
    assert sorted(ref["data_id"]["ccd"] for ref in listed) == [1, 2, 3]
    for ccd, file in zip((1, 2, 3), files, strict=True):
        assert (repo / exposure_path("raw", 7, ccd)).read_bytes() == file.read_bytes()

    stray = fits_file(tmp_path / "in" / "stray.fits", 9)
    done = butler("put", repo, "raw", files[0], stray, status=1)
    assert_one_line_error(done, "stray.fits")
    assert len(butler_json("query", repo, "raw")) == 3  # checked before anything was written


def test_global_policy_option_reaches_the_butler(tmp_path: Path, make_repo: MakeRepo) -> None:
    repo = make_repo("A")
    image = fits_file(tmp_path / "image.fits", 1)
    butler("put", repo, "calexp", image, "visit=1", "ccd=1")
    done = butler(
        "--policy", "on_exists=error", "put", repo, "calexp", image, "visit=1", "ccd=1", status=1
    )
    assert_one_line_error(done, "on_exists")
    done = butler(
        "put", repo, "calexp", image, "visit=1", "ccd=1", "--policy", "on_exists=error", status=1
    )
    assert_one_line_error(done, "on_exists")
    butler("put", repo, "calexp", image, "visit=1", "ccd=1")  # the default versions it


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        (["get", "{repo}", "nosuchtype", "visit=1", "ccd=1", "-o", "{out}"], ["nosuchtype"]),
        (["get", "{repo}", "calexp", "visit=abc", "ccd=1", "-o", "{out}"], ["visit", "int"]),
        (["get", "{repo}", "calexp", "visit=1", "ccd=1", "-o", "{out}"], ["no dataset"]),
        (["get", "{repo}", "calexp", "visit=1", "repositoryLabel=zz", "-o", "{out}"], ["zz"]),
        (["query", "{tmp}/missing"], ["missing"]),
        (["versions", "{repo}", "calexp", "visit=2", "ccd=1"], ["no dataset"]),
        (["put", "{repo}", "calexp", "{tmp}/absent.fits", "visit=1", "ccd=1"], ["absent.fits"]),
        (["put", "{repo}", "calexp", "{image}", "visit=../x", "ccd=1"], ["visit"]),
        (["put", "{repo}", "calexp", "{image}", "visit=1"], ["ccd"]),
        (["define", "{repo}", "icExp", "--genre", "nosuchgenre"], ["nosuchgenre"]),
        (["create", "{repo}"], ["already"]),
        (["create", "{tmp}/new", "--parent", "{tmp}/missing"], ["missing"]),
        (["create", "{tmp}/new", "--policy", "{tmp}/missing.yaml"], ["missing.yaml"]),
        (["get", "{repo}", "calexp", "visit=1", "ccd=2", "-o", "{tmp}/no/such/dir/x"], ["x"]),
    ],
)
def test_errors_are_one_line(
    tmp_path: Path, make_repo: MakeRepo, arguments: list[str], words: list[str]
) -> None:
    repo = make_repo("A")
    image = fits_file(tmp_path / "image.fits", 1)
    butler("put", repo, "calexp", image, "visit=1", "ccd=2")
    values = {
        "repo": str(repo),
        "tmp": str(tmp_path),
        "out": str(tmp_path / "out"),
        "image": str(image),
    }
    done = butler(*(argument.format(**values) for argument in arguments), status=1)
    assert_one_line_error(done, *words)
    assert not (tmp_path / "new").exists()
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    done = butler("--debug", "query", tmp_path / "missing", status=1)
    assert "Traceback" in done.stderr
    assert done.stderr.splitlines()[-1].startswith("butler: ")
    done = butler("query", tmp_path / "missing", "--debug", status=1)
    assert "Traceback" in done.stderr


def test_malformed_key_value_is_a_usage_error(make_repo: MakeRepo) -> None:
    repo = make_repo("A")
    done = butler("get", repo, "calexp", "visit", "-o", "x", status=2)
    assert "key=value" in done.stderr
    assert "Traceback" not in done.stderr
    butler("query", repo, "calexp", "visit=1", "visit=2", status=2)


def test_get_refuses_a_corrupt_file(tmp_path: Path, make_repo: MakeRepo) -> None:
    repo = make_repo("A")
    butler("put", repo, "calexp", fits_file(tmp_path / "image.fits", 1), "visit=1", "ccd=1")
    flip_byte(repo / exposure_path("calexp", 1, 1))
    out = tmp_path / "out.fits"
    done = butler("get", repo, "calexp", "visit=1", "ccd=1", "-o", out, status=1)
    assert_one_line_error(done, "corrupt", "butler repair")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


# -- verify, repair, reindex -----------------------------------------------------------------


def flip_byte(path: Path, offset: int = 3000) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_finds_corrupt_and_missing_files_and_repair_restores_them(
    tmp_path: Path, make_repo: MakeRepo
) -> None:
    a, b, aggregator = two_outputs(tmp_path, make_repo)
    first = fits_file(tmp_path / "first.fits", 1)
    second = fits_file(tmp_path / "second.fits", 2)
    butler("put", aggregator, "calexp", first, "visit=1", "ccd=1")
    butler("put", aggregator, "calexp", second, "visit=1", "ccd=1")
    clean = butler_json("verify", aggregator)
    assert clean["ok"] is True and clean["problems"] == []
    assert clean["files"] == 4  # two versions in two outputs
    assert "no problems" in butler("verify", aggregator).stdout

    flip_byte(a / exposure_path("calexp", 1, 1))
    (b / ".butler" / "versions" / "v1" / exposure_path("calexp", 1, 1)).unlink()
    report = butler_json("verify", aggregator, status=1)
    assert report["ok"] is False
    found = sorted((p["kind"], p["repository"], p["version"]) for p in report["problems"])
    assert found == [("corrupt", "A", 2), ("missing", "B", 1)]
    human = butler("verify", aggregator, status=1).stdout
    assert "corrupt:" in human and "missing:" in human and "2 problems" in human
    butler("verify", b, status=1)  # one repository alone
    butler("verify", a, status=1)

    repaired = butler_json("repair", aggregator)
    assert repaired["ok"] is True
    assert sorted(action["repository"] for action in repaired["actions"]) == ["A", "B"]
    assert butler_json("verify", aggregator)["ok"] is True
    out = tmp_path / "out.fits"
    butler("get", a, "calexp", "visit=1", "ccd=1", "-o", out)
    assert out.read_bytes() == second.read_bytes()
    butler("get", b, "calexp", "visit=1", "ccd=1", "version=1", "-o", out)
    assert out.read_bytes() == first.read_bytes()
    assert "all clean" in butler("repair", aggregator).stdout


def test_repair_without_a_good_copy_reports_it(tmp_path: Path, make_repo: MakeRepo) -> None:
    repo = make_repo("A")
    butler("put", repo, "calexp", fits_file(tmp_path / "image.fits", 1), "visit=1", "ccd=1")
    flip_byte(repo / exposure_path("calexp", 1, 1))
    done = butler("repair", repo, status=1)
    assert "not repaired" in done.stdout and "good copy" in done.stdout
    butler("verify", repo, status=1)


def test_verify_finds_outputs_that_disagree(tmp_path: Path, make_repo: MakeRepo) -> None:
    a, b, aggregator = two_outputs(tmp_path, make_repo)
    butler("put", aggregator, "calexp", fits_file(tmp_path / "one.fits", 1), "visit=1", "ccd=1")
    assert butler_json("verify", aggregator)["ok"] is True
    butler("put", a, "calexp", fits_file(tmp_path / "two.fits", 2), "visit=2", "ccd=1")
    butler("put", a, "raw", fits_file(tmp_path / "three.fits", 3), "visit=3", "ccd=1")
    butler("put", b, "raw", fits_file(tmp_path / "four.fits", 4), "visit=3", "ccd=1")

    report = butler_json("verify", aggregator, status=1)
    found = sorted((p["kind"], p["repository"], p["dataset_type"]) for p in report["problems"])
    assert found == [("disagree", "B", "calexp"), ("disagree", "B", "raw")]
    assert butler_json("verify", a)["ok"] is True  # each repository is sound on its own
    repaired = butler_json("repair", aggregator, status=1)
    assert [p["kind"] for p in repaired["unresolved"]] == ["disagree", "disagree"]


def test_reindex_after_losing_the_registry(tmp_path: Path, make_repo: MakeRepo) -> None:
    repo = make_repo("A")
    for ccd in (1, 2):
        butler(
            "put", repo, "calexp", fits_file(tmp_path / f"{ccd}.fits", ccd), "visit=1", f"ccd={ccd}"
        )
    butler("put", repo, "calexp", fits_file(tmp_path / "3.fits", 3), "visit=1", "ccd=1")
    before = butler_json("query", repo)
    for registry in repo.glob("registry.sqlite3*"):
        registry.unlink()
    report = butler_json("reindex", repo)
    assert report["records"] == 3
    assert butler_json("query", repo) == before
    assert len(butler_json("versions", repo, "calexp", "visit=1", "ccd=1")) == 2
    assert "reindexed" in butler("reindex", repo).stdout
    assert butler_json("verify", repo)["ok"] is True


# -- the progress bar ------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    terminal = Terminal()
    with ProgressBar("verify", terminal) as bar:
        bar(1, 4)
        bar(4, 4)
    drawn = terminal.getvalue()
    assert "verify [" in drawn and "4/4 100%" in drawn
    assert drawn.endswith("\r")  # erased at the end: the next line starts clean

    piped = io.StringIO()
    with ProgressBar("verify", piped) as bar:
        bar(1, 4)
        bar(4, 4)
    assert piped.getvalue() == ""


def test_verify_draws_a_progress_bar_on_a_terminal(tmp_path: Path, make_repo: MakeRepo) -> None:
    import os
    import pty

    repo = make_repo("A")
    butler("put", repo, "calexp", fits_file(tmp_path / "image.fits", 1), "visit=1", "ccd=1")
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            butler_command("verify", str(repo)),
            env={**subprocess_env(), "TERM": "xterm"},
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
            timeout=60,
            check=False,
        )
        os.close(terminal)
        drawn = b""
        with contextlib.suppress(OSError):  # EIO once the child's side is closed
            while chunk := os.read(controller, 4096):
                drawn += chunk
    finally:
        os.close(controller)
    assert done.returncode == 0, done.stdout
    assert b"verify [" in drawn and b"1/1 100%" in drawn
    assert "verify [" not in done.stdout  # the report itself stays clean
