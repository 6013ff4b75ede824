"""Hostile butler.yaml and aggregator files: each is refused with one line naming the file,
the key and what is expected; nothing raw escapes, from the library or the command line.

The corpora below are the test: add a case when a new way to break a file is found.
Counts per class are in CORPUS_CLASSES (checked, so the report stays true).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from butler import Butler, DataRepository
from butler.errors import ButlerError, ConfigError, RepositoryError
from tests.butler.conftest import PROJECT_ROOT, STANDARD_POLICY


@dataclass(frozen=True)
class Case:
    """A hostile file: ``text`` replaces the file (``{root}`` is the directory holding it)."""

    id: str
    kind: str  # the class of hostility, counted in the report
    text: bytes
    mentions: tuple[str, ...]  # the key and what is expected, as the message must say
    error: type[ButlerError] = ConfigError
    extra: dict[str, bytes] = field(default_factory=dict)  # other files beside it


def _policy(**changes: object) -> dict[str, object]:
    """The standard policy with dotted-path changes: ``{"genres.exposure.template": x}``."""
    policy = copy.deepcopy(STANDARD_POLICY)
    for dotted, value in changes.items():
        node: dict[str, object] = policy
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node[part]
            assert isinstance(child, dict)
            node = child
        node[leaf] = value
    return policy


def _config(policy: object = None, **top: object) -> bytes:
    """A butler.yaml as JSON (which is YAML): ``butler: 1``, a label, the policy."""
    data: dict[str, object] = {"butler": 1, "label": "hostile"}
    data["policy"] = copy.deepcopy(STANDARD_POLICY) if policy is None else policy
    data.update(top)
    return json.dumps(data).encode()


def _types(**types: object) -> dict[str, object]:
    policy = copy.deepcopy(STANDARD_POLICY)
    datasets = policy["datasetTypes"]
    assert isinstance(datasets, dict)
    datasets.update(types)
    return policy


def _genre(name: str, keys: dict[str, str], template: str, **types: object) -> dict[str, object]:
    """The standard policy with one more genre (storage yaml) and dataset types."""
    policy = _types(**types)
    genres = policy["genres"]
    assert isinstance(genres, dict)
    genres[name] = {"keys": keys, "template": template, "storage": "yaml"}
    return policy


# A "billion laughs": 1 KB of YAML that expands to 10**9 nodes.
LAUGHS = b'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + b"".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n".encode()
    for i in range(8)
)
# The same with mappings and merge keys: each level merges the previous one ten times.
MERGES = b"a: &a {x: 1, y: 2}\n" + b"".join(
    f"{chr(98 + i)}: &{chr(98 + i)} {{<<: [{', '.join([f'*{chr(97 + i)}'] * 10)}]}}\n".encode()
    for i in range(8)
)


def _inside(top: bytes, bomb: bytes) -> bytes:
    """A bomb as the value of a key of an otherwise valid file."""
    indented = b"".join(b"  " + line + b"\n" for line in bomb.splitlines())
    return top + b"\n" + indented


# -- the butler.yaml corpus ----------------------------------------------------------------

BUTLER_YAML: list[Case] = [
    # YAML structure: bombs, recursion, depth, encoding, documents, size
    Case("laughs-in-policy", "alias bomb", _inside(b"butler: 1\npolicy:", LAUGHS), ("alias",)),
    Case("merge-bomb", "alias bomb", _inside(b"butler: 1\npolicy:", MERGES), ("alias",)),
    Case("laughs-as-label", "alias bomb", LAUGHS + b"butler: 1\nlabel: *i\n", ("alias",)),
    Case("recursive-policy", "alias bomb", b"butler: 1\npolicy: &p {genres: *p}\n", ("alias",)),
    Case("recursive-parents", "alias bomb", b"butler: 1\nparents: &p [*p]\n", ("alias",)),
    Case(
        "deep-block",
        "deep nesting",
        b"butler: 1\npolicy:\n"
        + b"".join(b"  " * (i + 1) + b"k:\n" for i in range(40))
        + b"  " * 41
        + b"1\n",
        ("levels",),
    ),
    Case(
        "deep-flow", "deep nesting", b"butler: 1\npolicy: " + b"[" * 5000 + b"]" * 5000, ("YAML",)
    ),
    Case("two-documents", "YAML structure", b"butler: 1\n---\nbutler: 1\n", ("single document",)),
    Case("invalid-utf8", "YAML structure", b"butler: 1\nlabel: \xff\xfe\n", ("UTF-8",)),
    Case("raw-nul", "YAML structure", b"butler: 1\nlabel: a\x00b\n", ("#x0000",)),
    Case(
        "python-tag", "YAML structure", b"butler: !!python/object:os.system 1\n", ("python/object",)
    ),
    Case("empty", "not a mapping", b"", ("must be a mapping",)),
    Case("scalar", "not a mapping", b"hello\n", ("must be a mapping",)),
    Case("list", "not a mapping", b"- butler: 1\n", ("must be a mapping",)),
    Case("huge-file", "size", b"butler: 1\n" + b"#" * (17 * 2**20) + b"\n", ("larger than",)),
    # Wrong types and values of the top-level fields
    Case("butler-true", "wrong type", b"butler: true\n", ("butler", "True", "int 1")),
    Case("butler-str", "wrong type", b"butler: '1'\n", ("butler", "int 1")),
    Case("butler-float", "wrong type", b"butler: 1.0\n", ("butler", "int 1")),
    Case("butler-list", "wrong type", b"butler: [1]\n", ("butler", "int 1")),
    Case("butler-2", "wrong type", b"butler: 2\n", ("format version 2",), RepositoryError),
    Case("no-butler", "wrong type", b"label: x\n", ("format version None",), RepositoryError),
    Case("huge-int", "YAML structure", b"butler: " + b"9" * 5000 + b"\n", ("4300 digits",)),
    Case("bad-date", "YAML structure", b"butler: 1\nlabel: 2001-13-45\n", ("month",)),
    Case("label-list", "wrong type", _config(label=[1, 2]), ("label", "[1, 2]", "a name")),
    Case("label-int", "wrong type", _config(label=5), ("label", "an int", "a name")),
    Case("label-map", "wrong type", _config(label={"a": 1}), ("label", "a mapping")),
    Case("label-bool", "wrong type", _config(label=True), ("label", "a bool")),
    Case("label-empty", "wrong type", _config(label=""), ("label", "a name")),
    Case("label-slash", "unsafe name", _config(label="a/b"), ("label", "without '/'")),
    Case("label-dotdot", "unsafe name", _config(label=".."), ("label", "not '.' or '..'")),
    Case("label-nul", "NUL", _config(label="a\x00b"), ("label", "NUL")),
    Case("label-control", "unsafe name", _config(label="a\nb"), ("label", "control")),
    Case("label-long", "unsafe name", _config(label="é" * 200), ("label", "255 bytes")),
    Case(
        "label-binary", "wrong type", b"butler: 1\nlabel: !!binary aGVsbG8=\n", ("label", "bytes")
    ),
    Case("parents-str", "wrong type", _config(parents="../raw"), ("parents", "a list of paths")),
    Case("parents-map", "wrong type", _config(parents={"a": 1}), ("parents", "a list")),
    Case("parents-int", "wrong type", _config(parents=[1]), ("parents[0]", "a path")),
    Case("parents-null", "wrong type", _config(parents=[None]), ("parents[0]", "a path")),
    Case("parents-empty", "wrong type", _config(parents=[""]), ("parents[0]", "a path")),
    Case("parents-nul", "NUL", _config(parents=["a\x00b"]), ("parents[0]", "NUL")),
    Case("policy-list", "wrong type", _config(policy=[]), ("policy", "a list", "a mapping")),
    Case("policy-str", "wrong type", _config(policy="x"), ("policy", "a mapping")),
    Case("policy-true", "wrong type", b"butler: 1\npolicy: true\n", ("policy", "a mapping")),
    Case("unknown-top", "unknown key", _config(parent=["../raw"]), ("unknown key", "parent")),
    Case("unknown-case", "unknown key", _config(Policy={}), ("unknown key", "Policy")),
    Case("int-top-key", "unknown key", b"butler: 1\n1: x\n", ("top-level key", "1")),
    Case("bool-top-key", "unknown key", b"butler: 1\non: x\n", ("top-level key", "True")),
    # Wrong types inside the policy
    Case("genres-list", "policy type", _config(_policy(genres=[])), ("genres", "mapping")),
    Case(
        "genre-list",
        "policy type",
        _config(_policy(**{"genres.exposure": []})),
        ("genre 'exposure'", "mapping"),
    ),
    Case(
        "keys-list",
        "policy type",
        _config(_policy(**{"genres.exposure.keys": ["visit"]})),
        ("keys", "mapping"),
    ),
    Case(
        "key-type-list",
        "policy type",
        _config(_policy(**{"genres.exposure.keys": {"visit": ["int"]}})),
        ("key 'visit'", "['int']", "use one of"),
    ),
    Case(
        "key-type-float",
        "policy type",
        _config(_policy(**{"genres.exposure.keys": {"visit": "float"}})),
        ("key 'visit'", "float"),
    ),
    Case(
        "genre-bool-name",
        "policy type",
        b"butler: 1\npolicy: {genres: {on: {keys: {}, template: x, storage: yaml}}}\n",
        ("genres", "True", "a str"),
    ),
    Case(
        "template-int",
        "policy type",
        _config(_policy(**{"genres.exposure.template": 5})),
        ("template", "an int", "a str"),
    ),
    Case(
        "template-list",
        "policy type",
        _config(_policy(**{"genres.exposure.template": ["a"]})),
        ("template", "a list", "a str"),
    ),
    Case(
        "storage-list",
        "policy type",
        _config(_policy(**{"genres.exposure.storage": ["fits"]})),
        ("storage", "['fits']"),
    ),
    Case(
        "python-int",
        "policy type",
        _config(_policy(**{"genres.exposure.python": 5})),
        ("python", "an int"),
    ),
    Case(
        "types-list", "policy type", _config(_policy(datasetTypes=[])), ("datasetTypes", "mapping")
    ),
    Case(
        "type-list", "policy type", _config(_types(calexp=[])), ("dataset type 'calexp'", "mapping")
    ),
    Case(
        "type-genre-list",
        "policy type",
        _config(_types(calexp={"genre": ["exposure"]})),
        ("dataset type 'calexp'", "genre", "['exposure']"),
    ),
    Case(
        "type-genre-map",
        "policy type",
        _config(_types(calexp={"genre": {"a": 1}})),
        ("dataset type 'calexp'", "genre"),
    ),
    Case(
        "type-template-int",
        "policy type",
        _config(_types(calexp={"genre": "exposure", "template": 5})),
        ("calexp", "template", "a str"),
    ),
    Case(
        "type-storage-int",
        "policy type",
        _config(_types(calexp={"genre": "exposure", "storage": 5})),
        ("calexp", "storage", "fits"),
    ),
    Case(
        "type-python-list",
        "policy type",
        _config(_types(calexp={"genre": "exposure", "python": ["x"]})),
        ("calexp", "python", "a list"),
    ),
    Case(
        "locations-map",
        "policy type",
        _config(_types(calexp={"genre": "exposure", "locations": {}})),
        ("calexp", "locations", "list"),
    ),
    Case(
        "location-int",
        "policy type",
        _config(_types(calexp={"genre": "exposure", "locations": [5]})),
        ("location 0", "mapping"),
    ),
    Case(
        "location-mode-list",
        "policy type",
        _config(_types(calexp={"genre": "exposure", "locations": [{"mode": ["rw"]}]})),
        ("location 0", "mode", "['rw']"),
    ),
    Case(
        "location-template-null",
        "policy type",
        _config(_types(calexp={"genre": "exposure", "locations": [{"template": None}]})),
        ("location 0", "template", "a str"),
    ),
    Case(
        "on-exists-list", "policy type", _config(_policy(on_exists=[])), ("on_exists", "use one of")
    ),
    Case(
        "policy-unknown",
        "unknown key",
        _config(_policy(onexists="error")),
        ("unknown field", "onexists"),
    ),
    Case(
        "type-bad-name",
        "policy type",
        _config(_types(**{"cal/exp": {"genre": "exposure"}})),
        ("invalid dataset type name", "cal/exp"),
    ),
    Case(
        "type-nul-name",
        "NUL",
        _config(_types(**{"cal\x00exp": {"genre": "exposure"}})),
        ("invalid dataset type name",),
    ),
    # Templates: widths, lengths, collisions
    Case(
        "width-huge",
        "template",
        _config(_genre("w", {"visit": "int"}, "{datasetType}/{visit:0999999999d}.yaml")),
        ("template", "width", "255"),
    ),
    Case(
        "width-overflow",
        "template",
        _config(
            _genre("w", {"visit": "int"}, "{datasetType}/{visit:99999999999999999999999d}.yaml")
        ),
        ("template", "width", "255"),
    ),
    Case(
        "width-uint32",
        "template",
        _config(_genre("w", {"visit": "int"}, "{datasetType}/{visit:04294967295d}.yaml")),
        ("template", "width"),
    ),
    Case(
        "width-256",
        "template",
        _config(_genre("w", {"visit": "int"}, "{datasetType}/{visit:0256d}.yaml")),
        ("template", "width"),
    ),
    Case(
        "component-long",
        "template",
        _config(_genre("w", {"visit": "int"}, "{datasetType}/" + "x" * 250 + "{visit:09d}.yaml")),
        ("template", "component 2", "255"),
    ),
    Case(
        "template-long",
        "template",
        _config(_genre("w", {"visit": "int"}, "x/" * 3000 + "{visit}.yaml")),
        ("template", "longer than 4095"),
    ),
    Case(
        "template-nul",
        "NUL",
        _config(_genre("w", {"visit": "int"}, "{datasetType}/\x00{visit}.yaml")),
        ("template", "control character"),
    ),
    Case(
        "collide-task",
        "collision",
        _config(
            _genre(
                "cfg",
                {"task": "str"},
                "config/{task}_{datasetType}.yaml",
                config={"genre": "cfg"},
                b_config={"genre": "cfg"},
            )
        ),
        ("'config'", "'b_config'", "config/a_b_config.yaml", "would share the files"),
    ),
    Case(
        "collide-no-type",
        "collision",
        _config(
            _genre(
                "flat", {"visit": "int"}, "v{visit}.yaml", a={"genre": "flat"}, b={"genre": "flat"}
            )
        ),
        ("'a'", "'b'", "would share the files"),
    ),
    Case(
        "collide-prefix",
        "collision",
        _config(
            _types(
                a={"genre": "exposure", "template": "x/{visit}-{ccd}"},
                b={"genre": "exposure", "template": "x/{visit}-{ccd}/{datasetType}.fits"},
            )
        ),
        ("'a'", "'b'", "a directory of"),
    ),
    Case(
        "collide-registry",
        "collision",
        _config(
            _genre(
                "one", {}, "x.yaml", registry={"genre": "one", "template": "{datasetType}.sqlite3"}
            )
        ),
        ("registry",),
    ),
    Case(
        "collide-butler-yaml",
        "collision",
        _config(_genre("none", {}, "{datasetType}.yaml", butler={"genre": "none"})),
        ("'butler'", "butler.yaml"),
    ),
    Case(
        "collide-locations",
        "collision",
        _config(
            _types(
                calexp={
                    "genre": "exposure",
                    "locations": [
                        {"template": "c/{visit}-{ccd}.fits"},
                        {"template": "c/{visit}-{ccd}.fits", "storage": "npy", "mode": "w"},
                    ],
                }
            )
        ),
        ("location 0", "location 1", "would share the files"),
    ),
]


@pytest.fixture
def hostile_repo(tmp_path: Path) -> Callable[[Case], Path]:
    """A real repository whose butler.yaml is then replaced by a case's text."""

    def make(case: Case) -> Path:
        root = tmp_path / "repo"
        DataRepository.create(root, policy=copy.deepcopy(STANDARD_POLICY)).close()
        for name, text in case.extra.items():
            (root / name).write_bytes(text)
        (root / "butler.yaml").write_bytes(case.text.replace(b"{root}", os.fsencode(root)))
        return root

    return make


def _assert_one_line(exc: BaseException, source: Path, case: Case) -> None:
    message = str(exc)
    assert "\n" not in message, message
    assert str(source) in message, message
    for needle in case.mentions:
        assert needle in message, f"{needle!r} not in: {message}"
    assert len(message) < 600, message


@pytest.mark.parametrize("case", BUTLER_YAML, ids=lambda case: case.id)
def test_hostile_butler_yaml_is_one_clear_error(
    case: Case, hostile_repo: Callable[[Case], Path]
) -> None:
    root = hostile_repo(case)
    for opening in (DataRepository, Butler):
        try:
            opening(root)
        except ButlerError as exc:
            assert isinstance(exc, case.error), f"{type(exc).__name__}: {exc}"
            _assert_one_line(exc, root / "butler.yaml", case)
        else:
            pytest.fail(f"{opening.__name__} opened a repository with a hostile butler.yaml")


def _butler_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "butler", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _assert_cli_one_line(result: subprocess.CompletedProcess[str], source: Path) -> None:
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("butler: "), result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert str(source) in result.stderr, result.stderr


@pytest.mark.parametrize("case", BUTLER_YAML, ids=lambda case: case.id)
def test_hostile_butler_yaml_through_the_cli(
    case: Case, hostile_repo: Callable[[Case], Path]
) -> None:
    root = hostile_repo(case)
    for command in (["verify", str(root)], ["query", str(root), "visitInfo"]):
        _assert_cli_one_line(_butler_cli(*command), root / "butler.yaml")


# -- the aggregator corpus -----------------------------------------------------------------

_GOOD_MEMBERS = b"inputs: [{path: repo, label: raw}]\noutputs: [{path: out, mode: rw}]\n"

AGGREGATOR: list[Case] = [
    Case("laughs", "alias bomb", LAUGHS + b"butler: 1\ninputs: *i\n", ("alias",)),
    Case("merge-bomb", "alias bomb", MERGES + b"butler: 1\n", ("alias",)),
    Case("laughs-in-policy", "alias bomb", _inside(b"butler: 1\npolicy:", LAUGHS), ("alias",)),
    Case("recursive-inputs", "alias bomb", b"butler: 1\ninputs: &i [*i]\n", ("alias",)),
    Case(
        "self-input",
        "recursive aggregator",
        b"butler: 1\ninputs: [agg.yaml]\n",
        ("loop", "agg.yaml -> "),
    ),
    Case("self-output", "recursive aggregator", b"butler: 1\noutputs: [./agg.yaml]\n", ("loop",)),
    Case(
        "mutual",
        "recursive aggregator",
        b"butler: 1\ninputs: [other.yaml]\n",
        ("loop", "other.yaml"),
        extra={"other.yaml": b"butler: 1\ninputs: [agg.yaml]\n"},
    ),
    Case(
        "fan-out",
        "recursive aggregator",
        b"butler: 1\ninputs: [f0.yaml, f0.yaml]\n",
        ("more than 64 aggregator files",),
        extra={
            f"f{i}.yaml": f"butler: 1\ninputs: [f{i + 1}.yaml, f{i + 1}.yaml]\n".encode()
            for i in range(12)
        },
    ),
    Case(
        "deep-flow",
        "deep nesting",
        b"butler: 1\npolicy: " + b"{a: " * 5000 + b"1" + b"}" * 5000,
        ("YAML",),
    ),
    Case(
        "deep-policy",
        "deep nesting",
        b"butler: 1\npolicy: " + b"{a: " * 40 + b"1" + b"}" * 40,
        ("levels",),
    ),
    Case(
        "two-documents", "YAML structure", b"butler: 1\n...\n---\nbutler: 1\n", ("single document",)
    ),
    Case("invalid-utf8", "YAML structure", b"butler: 1\ninputs: [\xc3\x28]\n", ("UTF-8",)),
    Case("empty", "not a mapping", b"", ("butler: 1",)),
    Case("list", "not a mapping", b"[butler, 1]\n", ("butler: 1",)),
    Case("huge-file", "size", b"butler: 1\n" + b"#" * (17 * 2**20) + b"\n", ("larger than",)),
    Case(
        "butler-true", "wrong type", b"butler: true\n" + _GOOD_MEMBERS, ("butler", "True", "int 1")
    ),
    Case("butler-missing", "wrong type", _GOOD_MEMBERS, ("butler", "int 1")),
    Case("butler-2", "wrong type", b"butler: 2\n" + _GOOD_MEMBERS, ("butler", "int 1")),
    Case("inputs-str", "wrong type", b"butler: 1\ninputs: repo\n", ("inputs", "a list")),
    Case("inputs-map", "wrong type", b"butler: 1\ninputs: {path: repo}\n", ("inputs", "a list")),
    Case("input-int", "wrong type", b"butler: 1\ninputs: [5]\n", ("inputs[0]", "path")),
    Case("input-null", "wrong type", b"butler: 1\ninputs: [null]\n", ("inputs[0]", "path")),
    Case(
        "input-no-path", "wrong type", b"butler: 1\ninputs: [{label: x}]\n", ("inputs[0]", "'path'")
    ),
    Case(
        "input-path-int",
        "wrong type",
        b"butler: 1\ninputs: [{path: 5}]\n",
        ("inputs[0].path", "a path"),
    ),
    Case("input-path-nul", "NUL", b'butler: 1\ninputs: ["a\\0b"]\n', ("inputs[0].path", "NUL")),
    Case(
        "output-path-nul",
        "NUL",
        b'butler: 1\noutputs: [{path: "out\\0"}]\n',
        ("outputs[0].path", "NUL"),
    ),
    Case(
        "label-list",
        "wrong type",
        b"butler: 1\ninputs: [{path: repo, label: [1, 2]}]\n",
        ("inputs[0].label", "a name"),
    ),
    Case(
        "label-slash",
        "unsafe name",
        b"butler: 1\ninputs: [{path: repo, label: a/b}]\n",
        ("inputs[0].label", "'/'"),
    ),
    Case(
        "mode-list",
        "wrong type",
        b"butler: 1\ninputs: [{path: repo, mode: [r]}]\n",
        ("mode", "['r']"),
    ),
    Case(
        "input-mode-w",
        "wrong type",
        b"butler: 1\ninputs: [{path: repo, mode: w}]\n",
        ("mode 'w'", "outputs"),
    ),
    Case(
        "types-str",
        "wrong type",
        b"butler: 1\noutputs: [{path: out, datasetTypes: calexp}]\n",
        ("datasetTypes", "list of names"),
    ),
    Case(
        "types-int",
        "wrong type",
        b"butler: 1\noutputs: [{path: out, datasetTypes: [1]}]\n",
        ("datasetTypes", "list of names"),
    ),
    Case(
        "types-bad-name",
        "wrong type",
        b"butler: 1\noutputs: [{path: out, datasetTypes: ['../x']}]\n",
        ("datasetTypes[0]", "invalid dataset type name"),
    ),
    Case(
        "storage-list",
        "wrong type",
        b"butler: 1\noutputs: [{path: out, storage: [hdf5]}]\n",
        ("storage", "formats"),
    ),
    Case(
        "storage-target",
        "wrong type",
        b"butler: 1\noutputs: [{path: out, storage: {calexp: 'os:system'}}]\n",
        ("outputs[0].storage.calexp", "os:system", "fits"),
    ),
    Case(
        "storage-value-list",
        "wrong type",
        b"butler: 1\noutputs: [{path: out, storage: {calexp: [fits]}}]\n",
        ("outputs[0].storage.calexp", "fits"),
    ),
    Case(
        "item-unknown",
        "unknown key",
        b"butler: 1\ninputs: [{path: repo, lable: x}]\n",
        ("unknown field", "lable"),
    ),
    Case("top-unknown", "unknown key", b"butler: 1\ninput: [repo]\n", ("unknown key", "input")),
    Case(
        "policy-list", "wrong type", b"butler: 1\npolicy: []\n", ("policy", "a list", "a mapping")
    ),
    Case("policy-str", "wrong type", b"butler: 1\npolicy: x\n", ("policy", "a mapping")),
    Case(
        "policy-genre-list",
        "policy type",
        b"butler: 1\n" + _GOOD_MEMBERS + b"policy: {datasetTypes: {calexp: {genre: [x]}}}\n",
        ("calexp", "genre", "['x']"),
    ),
    Case(
        "policy-width",
        "template",
        b"butler: 1\n"
        + _GOOD_MEMBERS
        + b"policy: {genres: {exposure: {template: "
        + b"'{datasetType}/{visit:04294967295d}-{ccd}.fits'}}}\n",
        ("template", "width"),
    ),
    Case(
        "policy-collision",
        "collision",
        b"butler: 1\n"
        + _GOOD_MEMBERS
        + b"policy: {datasetTypes: {calexp: {genre: exposure, template: "
        + b"'raw/v{visit:07d}/raw-v{visit:07d}-c{ccd:03d}.fits'}}}\n",
        ("'raw'", "'calexp'", "would share the files"),
    ),
]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def hostile_aggregator(tmp_path: Path) -> Callable[[Case], Path]:
    """agg.yaml beside two real repositories, ``repo`` and ``out``."""

    def make(case: Case) -> Path:
        for name in ("repo", "out"):
            DataRepository.create(tmp_path / name, policy=copy.deepcopy(STANDARD_POLICY)).close()
        for name, text in case.extra.items():
            (tmp_path / name).write_bytes(text)
        path = tmp_path / "agg.yaml"
        path.write_bytes(case.text)
        return path

    return make


def _aggregator_source(case: Case, path: Path) -> Path:
    """The file a message must name: the aggregator, or the nested one that is wrong."""
    return path.parent if case.kind == "recursive aggregator" else path


@pytest.mark.parametrize("case", AGGREGATOR, ids=lambda case: case.id)
def test_hostile_aggregator_is_one_clear_error(
    case: Case, hostile_aggregator: Callable[[Case], Path]
) -> None:
    path = hostile_aggregator(case)
    before = _tree(path.parent / "out")
    with pytest.raises(ButlerError) as raised:
        Butler(path)
    assert isinstance(raised.value, case.error), f"{type(raised.value).__name__}: {raised.value}"
    _assert_one_line(raised.value, _aggregator_source(case, path), case)
    assert _tree(path.parent / "out") == before, "a refused aggregator changed an output"


@pytest.mark.parametrize("case", AGGREGATOR, ids=lambda case: case.id)
def test_hostile_aggregator_through_the_cli(
    case: Case, hostile_aggregator: Callable[[Case], Path]
) -> None:
    path = hostile_aggregator(case)
    result = _butler_cli("query", str(path), "calexp")
    _assert_cli_one_line(result, _aggregator_source(case, path))


# -- bombs are refused fast and small -----------------------------------------------------

BOMBS = [case for case in BUTLER_YAML + AGGREGATOR if case.kind == "alias bomb"]


@pytest.mark.parametrize("case", BOMBS, ids=lambda case: case.id)
def test_alias_bombs_are_refused_before_they_expand(
    case: Case, hostile_repo: Callable[[Case], Path]
) -> None:
    """Under 1 KB each, expanding to about 10**9 nodes: refused in milliseconds.

    Not a benchmark: the bound is a thousand times what the refusal takes, and an
    expansion would take hours and gigabytes.
    """
    root = hostile_repo(case)
    tracemalloc.start()
    started = time.monotonic()
    with pytest.raises(ConfigError):
        DataRepository(root)
    elapsed = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(case.text) < 1024
    assert elapsed < 0.5, f"took {elapsed:.2f} s"
    assert peak < 5 * 2**20, f"peak {peak} bytes"


def test_a_yaml_dataset_that_is_a_bomb_is_refused(tmp_path: Path) -> None:
    """The yaml storage format reads through the same bounds (a file dropped in place)."""
    root = tmp_path / "repo"
    DataRepository.create(root, policy=copy.deepcopy(STANDARD_POLICY)).close()
    with Butler(root) as butler:
        ref = butler.put({"a": 1}, "visitInfo", visit=1)[0]
        Path(ref.path).write_bytes(LAUGHS)
        started = time.monotonic()
        with pytest.raises(ButlerError, match="alias"):
            butler.get("visitInfo", visit=1)
        assert time.monotonic() - started < 0.5


def test_aliases_within_the_bound_still_read(tmp_path: Path) -> None:
    """Honest files may share a part with an anchor: only expansion past the bound is refused."""
    root = tmp_path / "repo"
    DataRepository.create(root, policy=copy.deepcopy(STANDARD_POLICY)).close()
    (root / "butler.yaml").write_text(
        "butler: 1\n"
        "label: shared\n"
        "policy:\n"
        "  genres:\n"
        "    exposure: &e {keys: {visit: int, ccd: int}, storage: fits,\n"
        "                  template: '{datasetType}/v{visit:07d}/{datasetType}-c{ccd:03d}.fits'}\n"
        "    exposure2: *e\n"
        "  datasetTypes: {calexp: {genre: exposure}, raw: {genre: exposure2}}\n"
    )
    repo = DataRepository(root)
    assert repo.label == "shared"
    assert repo.policy.genre("exposure2").keys == {"visit": int, "ccd": int}


# -- every corpus case counted per class ---------------------------------------------------

CORPUS_CLASSES = {
    "butler.yaml": dict(Counter(case.kind for case in BUTLER_YAML)),
    "aggregator": dict(Counter(case.kind for case in AGGREGATOR)),
}


def test_the_corpora_cover_every_class() -> None:
    expected = {
        "alias bomb",
        "deep nesting",
        "YAML structure",
        "not a mapping",
        "size",
        "wrong type",
        "unknown key",
        "NUL",
        "template",
        "collision",
    }
    assert expected <= set(CORPUS_CLASSES["butler.yaml"])
    assert "recursive aggregator" in CORPUS_CLASSES["aggregator"]
    ids = [case.id for case in BUTLER_YAML] + [f"agg-{case.id}" for case in AGGREGATOR]
    assert len(ids) == len(set(ids))


# -- the put-time check: a rendered path against the output's own policy -------------------


def _task_policy(**templates: str) -> dict[str, object]:
    """One genre per dataset type, keyed by ``task`` (str), with the given templates."""
    return {
        "genres": {
            f"g_{name}": {"keys": {"task": "str"}, "template": template, "storage": "yaml"}
            for name, template in templates.items()
        },
        "datasetTypes": {name: {"genre": f"g_{name}"} for name in templates},
    }


TASK_TEMPLATE = "config/{task}_{datasetType}.yaml"


def test_check_path_owner_refuses_a_path_another_type_can_render() -> None:
    from butler.policy import Policy

    policy = Policy.from_mapping(_task_policy(b_config=TASK_TEMPLATE), "out/butler.yaml")
    with pytest.raises(ConfigError) as raised:
        policy.check_path_owner("config", ["config/a_b_config.yaml"])
    message = str(raised.value)
    assert "'config'" in message and "'b_config'" in message and "a_b_config" in message
    policy.check_path_owner("config", ["config/x_config.yaml"])  # b_config cannot render it
    policy.check_path_owner("b_config", ["config/a_b_config.yaml"])  # its own path
    with pytest.raises(ConfigError, match="a directory of"):
        policy.check_path_owner("flat", ["config"])  # a file where b_config needs a directory
    with pytest.raises(ConfigError, match=r"the repository's own file butler\.yaml"):
        policy.check_path_owner("butler", ["butler.yaml"])
    with pytest.raises(ConfigError, match="render the same path"):
        policy.check_path_owner("config", ["config/x.yaml", "config/x.yaml"])


def test_a_write_only_output_can_hold_a_type_the_effective_policy_never_sees(
    tmp_path: Path,
) -> None:
    """Why the put needs the check: the effective policy takes ``config`` from the input,
    but the write-only output stores ``config`` by its own template, which can render the
    path that ``b_config`` (copied in at its first put) renders there."""
    inputs = _task_policy(b_config=TASK_TEMPLATE, config="{datasetType}s/{task}.yaml")
    DataRepository.create(tmp_path / "in", policy=inputs).close()
    own = _task_policy(config="config/{task}_b_{datasetType}.yaml")
    DataRepository.create(tmp_path / "out", policy=own).close()
    with Butler(inputs=[tmp_path / "in"], outputs=[{"path": tmp_path / "out", "mode": "w"}]) as b:
        [member] = b.resolver.outputs
        definition, _ = b.resolver.stored_definition(member, "b_config")
        path = definition.primary.template.render("b_config", {"task": "a"})
        assert path == "config/a_b_config.yaml"  # what out's own config renders for task "a"
        with pytest.raises(ConfigError, match="'config'"):
            member.repo.policy.check_path_owner("b_config", [path])


def test_define_refuses_a_type_that_collides_and_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    DataRepository.create(root, policy=_task_policy(b_config=TASK_TEMPLATE)).close()
    before = (root / "butler.yaml").read_bytes()
    with Butler(root) as butler, pytest.raises(ConfigError) as raised:
        butler.define("config", genre="g_b_config")
    assert "'config'" in str(raised.value) and "'b_config'" in str(raised.value)
    assert "config/a_b_config.yaml" in str(raised.value)
    assert (root / "butler.yaml").read_bytes() == before
    with Butler(root) as butler:  # a name that cannot collide is fine
        butler.define("configs", genre="g_b_config", template="{datasetType}/{task}.yaml")
