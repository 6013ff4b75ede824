"""Hostile data IDs, dataset type names and versions: refused before anything is written.

Every value at the edge of a key type goes through put, get, query, exists, versions and
uri; each must raise a ButlerError subclass whose message names the key, and leave the
repository exactly as it was (no file, no record, no registry row).  Afterwards the
repository still opens and ``butler verify`` finds nothing wrong.
"""

from __future__ import annotations

import copy
import decimal
import fractions
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from butler import Butler, DataRepository
from butler.errors import ButlerError
from tests.butler.conftest import PROJECT_ROOT, STANDARD_POLICY, settle

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

POLICY = copy.deepcopy(STANDARD_POLICY)
POLICY["genres"]["note"] = {  # type: ignore[index]
    "keys": {"tract": "int", "filter": "str"},
    "template": "{datasetType}/{filter}/t{tract}.yaml",  # filter is a whole component
    "storage": "yaml",
}
POLICY["datasetTypes"]["coaddNote"] = {"genre": "note"}  # type: ignore[index]


@dataclass(frozen=True)
class Hostile:
    id: str
    kind: str  # the class of hostility, counted in the report
    value: object


def _i(id: str, kind: str, value: object) -> Hostile:
    return Hostile(id, kind, value)


INT_VALUES = [
    _i("2**63", "int range", 2**63),
    _i("-2**63-1", "int range", -(2**63) - 1),
    _i("2**64", "int range", 2**64),
    _i("-2**64", "int range", -(2**64)),
    _i("10**100", "int range", 10**100),
    _i("10**5000", "int range", 10**5000),  # repr() alone refuses it
    _i("str-2**63", "int range", str(2**63)),
    _i("str-254-digits", "int range", "9" * 254),
    _i("str-300-digits", "int range", "9" * 300),
    _i("uint64-max", "int range", np.uint64(2**64 - 1)),
    _i("true", "int type", True),
    _i("false", "int type", False),
    _i("numpy-bool", "int type", np.bool_(True)),
    _i("float-1.0", "int type", 1.0),
    _i("float-1.5", "int type", 1.5),
    _i("nan", "int type", float("nan")),
    _i("inf", "int type", float("inf")),
    _i("numpy-float", "int type", np.float64(1.0)),
    _i("decimal", "int type", decimal.Decimal(1)),
    _i("fraction", "int type", fractions.Fraction(2, 1)),
    _i("complex", "int type", complex(1, 0)),
    _i("none", "int type", None),
    _i("list", "int type", [1]),
    _i("dict", "int type", {"a": 1}),
    _i("bytes", "int type", b"1"),
    _i("str-plus", "int string", "+1"),
    _i("str-space-before", "int string", " 1"),
    _i("str-space-after", "int string", "1 "),
    _i("str-newline", "int string", "1\n"),
    _i("str-underscore", "int string", "1_000"),
    _i("str-hex", "int string", "0x10"),
    _i("str-arabic-digits", "int string", "\u0661\u0662"),
    _i("str-fullwidth-digits", "int string", "\uff11"),
    _i("str-superscript", "int string", "\u00b2"),
    _i("str-empty", "int string", ""),
    _i("str-minus", "int string", "-"),
    _i("str-float", "int string", "1.0"),
    _i("str-exponent", "int string", "1e3"),
    _i("str-nul", "int string", "1\x00"),
]

STR_VALUES = [
    _i("empty", "str component", ""),
    _i("dot", "str component", "."),
    _i("dotdot", "str component", ".."),
    _i("hidden", "str component", ".r"),
    _i("option", "str component", "-rf"),
    _i("slash", "str forbidden char", "a/b"),
    _i("traversal", "str forbidden char", "../x"),
    _i("nul", "str forbidden char", "r\x00"),
    _i("soh", "str forbidden char", "r\x01"),
    _i("tab", "str forbidden char", "r\t"),
    _i("newline", "str forbidden char", "r\n"),
    _i("escape", "str forbidden char", "\x1b[31m"),
    _i("us", "str forbidden char", "r\x1f"),
    _i("del", "str forbidden char", "r\x7f"),
    _i("c1-next-line", "str forbidden char", "r\x85"),
    _i("c1-last", "str forbidden char", "r\x9f"),
    _i("lone-surrogate", "str forbidden char", "r\ud800"),
    _i("256-ascii", "str length", "x" * 256),
    _i("256-bytes-2-byte-chars", "str length", "\u00e9" * 128),
    _i("256-bytes-4-byte-chars", "str length", "\U0001d11e" * 64),
    _i("256-bytes-3-byte-mix", "str length", "\u20ac" * 85 + "x"),
    _i("huge", "str length", "x" * 10**6),
    _i("int", "str type", 5),
    _i("none", "str type", None),
    _i("bytes", "str type", b"r"),
    _i("list", "str type", ["r"]),
    _i("bool", "str type", True),
]

VERSION_VALUES = [
    _i("zero", "version", 0),
    _i("negative", "version", -1),
    _i("2**63", "version", 2**63),
    _i("2**70", "version", 2**70),
    _i("10**5000", "version", 10**5000),
    _i("true", "version", True),
    _i("float", "version", 1.0),
    _i("str-float", "version", "1.0"),
    _i("str-space", "version", " 1"),
    _i("str-arabic", "version", "\u0661"),
    _i("str-word", "version", "latest"),
    _i("list", "version", [1]),
    _i("uint64-max", "version", np.uint64(2**64 - 1)),
]

TYPE_NAMES = [
    _i("dict", "dataset type", {"x": 1}),
    _i("list", "dataset type", ["calexp"]),
    _i("none", "dataset type", None),
    _i("int", "dataset type", 5),
    _i("empty", "dataset type", ""),
    _i("slash", "dataset type", "cal/exp"),
    _i("dotdot", "dataset type", ".."),
    _i("nul", "dataset type", "calexp\x00"),
    _i("huge", "dataset type", "c" * 10**6),
]

DATA_IDS = [
    _i("str", "data ID shape", "visit=1"),
    _i("list-of-pairs", "data ID shape", [("visit", 1)]),
    _i("int", "data ID shape", 5),
    _i("int-key", "data ID shape", {1: 1}),
    _i("huge-key", "data ID shape", {"k" * 10**6: 1}),
    _i("nul-key", "data ID shape", {"vis\x00it": 1}),
]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One repository with a dataset of each genre, shared by every case (each checks that
    it changed nothing, so order does not matter)."""
    root = tmp_path_factory.mktemp("hostile") / "repo"
    DataRepository.create(root, policy=copy.deepcopy(POLICY)).close()
    with Butler(root) as butler:
        butler.put({"a": 1}, "visitInfo", visit=1)
        butler.put({"a": 2}, "coaddNote", tract=1, filter="r")
    settle()
    yield root


def _state(root: Path) -> tuple[dict[str, bytes], list[tuple[str, str, int]]]:
    """Every file (but SQLite's own and the lock) and every registry row, all versions."""
    files = {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.name.startswith("registry.sqlite3") and path.name != "lock"
    }
    with Butler(root) as butler:
        rows = [(r.dataset_type, str(r.data_id), r.version) for r in butler.query()]
        for ref in list(butler.query()):
            rows += [
                (v.dataset_type, str(v.data_id), v.version)
                for v in butler.versions(ref.dataset_type, ref.data_id)
            ]
    settle()
    return files, rows


Operation = Callable[[Butler, str, dict[str, object]], object]

OPERATIONS: dict[str, Operation] = {
    "put": lambda b, t, d: b.put({"hostile": True}, t, d),
    "get": lambda b, t, d: b.get(t, d),
    "query": lambda b, t, d: b.query(t, d),
    "exists": lambda b, t, d: b.exists(t, d),
    "versions": lambda b, t, d: b.versions(t, d),
    "uri": lambda b, t, d: b.uri(t, d),
}


def _refused(root: Path, call: Callable[[Butler], object], *needles: str) -> str:
    """``call`` raises a ButlerError naming ``needles``, and nothing on disk changed."""
    before = _state(root)
    with Butler(root) as butler:
        try:
            result = call(butler)
        except ButlerError as exc:
            message = str(exc)
        else:
            pytest.fail(f"accepted, returned {result!r:.200}")
    assert "\n" not in message and len(message) < 1000, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert _state(root) == before, "a refused call changed the repository"
    return message


def _cases(values: list[Hostile]) -> list[object]:
    return [
        pytest.param(operation, value, id=f"{operation}-{value.id}")
        for operation in OPERATIONS
        for value in values
    ]


@pytest.mark.parametrize(("operation", "hostile"), _cases(INT_VALUES))
def test_hostile_int_values(repo: Path, operation: str, hostile: Hostile) -> None:
    _refused(
        repo, lambda b: OPERATIONS[operation](b, "visitInfo", {"visit": hostile.value}), "'visit'"
    )


@pytest.mark.parametrize(("operation", "hostile"), _cases(STR_VALUES))
def test_hostile_str_values(repo: Path, operation: str, hostile: Hostile) -> None:
    data_id = {"tract": 1, "filter": hostile.value}
    _refused(repo, lambda b: OPERATIONS[operation](b, "coaddNote", data_id), "'filter'")


@pytest.mark.parametrize(
    ("operation", "hostile"),
    [
        pytest.param(operation, value, id=f"{operation}-{value.id}")
        for operation in ("get", "exists", "uri", "put")
        for value in VERSION_VALUES
    ],
)
def test_hostile_versions(repo: Path, operation: str, hostile: Hostile) -> None:
    data_id = {"visit": 1, "version": hostile.value}
    _refused(repo, lambda b: OPERATIONS[operation](b, "visitInfo", data_id), "version")


@pytest.mark.parametrize(
    ("operation", "hostile"),
    # query(None, ...) is the documented "every dataset type"
    [case for case in _cases(TYPE_NAMES) if case.id != "query-none"],  # type: ignore[attr-defined]
)
def test_hostile_dataset_type_names(repo: Path, operation: str, hostile: Hostile) -> None:
    name = hostile.value
    _refused(repo, lambda b: OPERATIONS[operation](b, name, {"visit": 1}), "dataset type")  # type: ignore[arg-type]


@pytest.mark.parametrize(("operation", "hostile"), _cases(DATA_IDS))
def test_hostile_data_id_shapes(repo: Path, operation: str, hostile: Hostile) -> None:
    data_id = hostile.value
    _refused(repo, lambda b: OPERATIONS[operation](b, "visitInfo", data_id), "data ID")  # type: ignore[arg-type]


def test_hostile_keywords_are_refused_like_mappings(repo: Path) -> None:
    _refused(repo, lambda b: b.put({"x": 1}, "visitInfo", visit=2**63), "'visit'")
    _refused(repo, lambda b: b.get("visitInfo", visit=1, version=2**70), "version")
    _refused(repo, lambda b: b.query(visit=2**63), "'visit'")  # no type: every genre's keys
    _refused(repo, lambda b: b.query(genre="note", tract=-(2**63) - 1), "'tract'")
    _refused(repo, lambda b: b.query(genre=["note"]), "genre")  # type: ignore[arg-type]
    _refused(repo, lambda b: b.remove("visitInfo", visit=2**64), "'visit'")


@pytest.mark.parametrize(
    ("data_id", "template_path"),
    [
        ({"visit": INT64_MAX}, f"visitInfo/visitInfo-v{INT64_MAX:07d}.yaml"),
        ({"visit": INT64_MIN}, f"visitInfo/visitInfo-v{INT64_MIN:07d}.yaml"),
        ({"visit": str(INT64_MAX)}, f"visitInfo/visitInfo-v{INT64_MAX:07d}.yaml"),
        ({"visit": np.int64(INT64_MIN)}, f"visitInfo/visitInfo-v{INT64_MIN:07d}.yaml"),
        ({"visit": np.uint64(INT64_MAX)}, f"visitInfo/visitInfo-v{INT64_MAX:07d}.yaml"),
    ],
    ids=["max", "min", "max-str", "min-numpy", "max-uint64"],
)
def test_the_edges_of_the_int_range_are_accepted(
    tmp_path: Path, data_id: dict[str, object], template_path: str
) -> None:
    """The last values in range work end to end: put, get, query, versions, a new version."""
    root = tmp_path / "repo"
    DataRepository.create(root, policy=copy.deepcopy(POLICY)).close()
    with Butler(root) as butler:
        [ref] = butler.put({"n": 1}, "visitInfo", data_id)
        assert ref.relative_path == template_path
        butler.put({"n": 2}, "visitInfo", data_id)
        assert butler.get("visitInfo", data_id) == {"n": 2}
        assert butler.get("visitInfo", {**data_id, "version": 1}) == {"n": 1}
        assert [r.version for r in butler.versions("visitInfo", data_id)] == [1, 2]
        assert len(butler.query("visitInfo", data_id)) == 1
        assert butler.exists("visitInfo", data_id)


@pytest.mark.parametrize(
    "value",
    ["x" * 255, "\u00e9" * 127 + "x", "\U0001d11e" * 63 + "xyz", "r-1.x", "r\u00a0"],
    ids=["255-ascii", "255-bytes-2-byte", "255-bytes-4-byte", "inner-dot-dash", "nbsp"],
)
def test_the_longest_and_oddest_safe_names_are_accepted(tmp_path: Path, value: str) -> None:
    root = tmp_path / "repo"
    DataRepository.create(root, policy=copy.deepcopy(POLICY)).close()
    with Butler(root) as butler:
        [ref] = butler.put({"n": 1}, "coaddNote", tract=1, filter=value)
        assert ref.relative_path == f"coaddNote/{value}/t1.yaml"
        assert butler.get("coaddNote", tract=1, filter=value) == {"n": 1}


def test_after_every_hostile_call_the_repository_is_sound(repo: Path) -> None:
    """Runs last in this module (pytest keeps file order): a fresh open and a clean verify."""
    assert DataRepository(repo).label == "repo"
    with Butler(repo) as butler:
        assert butler.get("visitInfo", visit=1) == {"a": 1}
        assert butler.get("coaddNote", tract=1, filter="r") == {"a": 2}
        assert len(butler.query()) == 2
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "butler", "verify", str(repo)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "no problems" in result.stdout


CORPUS_CLASSES = dict(
    Counter(
        value.kind for value in INT_VALUES + STR_VALUES + VERSION_VALUES + TYPE_NAMES + DATA_IDS
    )
)


def test_a_file_named_with_an_int_out_of_range_is_not_adopted(tmp_path: Path) -> None:
    """Paths are parsed back into data IDs (reindex, the mount): a visit past 2**63-1 in a
    file name matches no template, instead of failing in the registry."""
    root = tmp_path / "repo"
    DataRepository.create(root, policy=copy.deepcopy(POLICY)).close()
    (root / "visitInfo").mkdir()
    (root / "visitInfo" / f"visitInfo-v{2**63}.yaml").write_text("a: 1\n")
    (root / "visitInfo" / f"visitInfo-v{INT64_MAX}.yaml").write_text("a: 2\n")
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "butler", "reindex", str(root)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"ignored (matches no template): visitInfo/visitInfo-v{2**63}.yaml" in result.stdout
    with Butler(root) as butler:
        assert [ref.data_id for ref in butler.query("visitInfo")] == [{"visit": INT64_MAX}]
