"""``butler types REPO_OR_AGG [--json]``: every dataset type, its genre, keys, locations
and where it is defined; run as a user types it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from tests.butler.conftest import EXPOSURE_TEMPLATE, STANDARD_POLICY, MakeRepo
from tests.butler.test_cli import butler, butler_json

HDULIST = "astropy.io.fits.HDUList"


def aggregator(tmp_path: Path, make_repo: MakeRepo) -> Path:
    """Input A (the standard policy), write-only output W defining icExp, and an
    aggregator file that gives calexp a second, npy location."""
    make_repo("A")
    own = copy.deepcopy(STANDARD_POLICY)
    own["datasetTypes"] = {"icExp": {"genre": "exposure"}}
    make_repo("W", policy=own)
    path = tmp_path / "agg.yaml"
    locations = [
        {"template": "{datasetType}/v{visit:07d}/c{ccd:03d}.fits", "storage": "fits", "mode": "rw"},
        {
            "template": "npy/{datasetType}-v{visit:07d}-c{ccd:03d}.npy",
            "storage": "npy",
            "mode": "w",
        },
    ]
    spec = {
        "butler": 1,
        "inputs": ["A"],
        "outputs": [{"path": "W", "mode": "w"}],
        "policy": {"datasetTypes": {"calexp": {"genre": "exposure", "locations": locations}}},
    }
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def test_types_json(tmp_path: Path, make_repo: MakeRepo) -> None:
    agg = aggregator(tmp_path, make_repo)
    listed = butler_json("types", agg, "--policy", "datasetTypes.visitInfo.storage=json")
    types: dict[str, Any] = {entry["name"]: entry for entry in listed["dataset_types"]}
    assert list(types) == ["calexp", "icExp", "raw", "src", "visitInfo"]  # sorted by name

    assert types["raw"] == {
        "name": "raw",
        "genre": "exposure",
        "keys": {"visit": "int", "ccd": "int"},
        "repository": "A",
        "overridden_by": [],
        "locations": [
            {"template": EXPOSURE_TEMPLATE, "storage": "fits", "python": HDULIST, "mode": "rw"}
        ],
    }
    assert types["calexp"]["repository"] == "A"
    assert types["calexp"]["overridden_by"] == ["agg.yaml"]
    assert [
        (loc["storage"], loc["python"], loc["mode"]) for loc in types["calexp"]["locations"]
    ] == [
        ("fits", HDULIST, "rw"),
        ("npy", "numpy.ndarray", "w"),
    ]
    assert types["icExp"]["repository"] == "W"  # only the write-only output defines it
    assert types["src"]["locations"][0]["python"] == "astropy.table.Table"
    assert types["visitInfo"]["overridden_by"] == ["--policy"]
    assert types["visitInfo"]["keys"] == {"visit": "int"}
    assert [(loc["storage"], loc["python"]) for loc in types["visitInfo"]["locations"]] == [
        ("json", "dict")
    ]
    genres = {entry["name"]: entry for entry in listed["genres"]}
    assert sorted(genres) == ["catalog", "exposure", "metadata"]
    assert genres["exposure"]["keys"] == {"visit": "int", "ccd": "int"}
    assert genres["exposure"]["template"] == EXPOSURE_TEMPLATE


def test_types_table(tmp_path: Path, make_repo: MakeRepo) -> None:
    agg = aggregator(tmp_path, make_repo)
    lines = butler("types", agg).stdout.splitlines()
    header = lines[0]
    for column in ("DATASET TYPE", "GENRE", "KEYS", "DEFINED IN", "STORAGE", "PYTHON", "TEMPLATE"):
        assert column in header
    rows = {line.split()[0]: line for line in lines[1:6]}
    assert rows["raw"].split() == [
        "raw",
        "exposure",
        "visit:int",
        "ccd:int",
        "A",
        "rw",
        "fits",
        HDULIST,
        EXPOSURE_TEMPLATE,
    ]
    # calexp's second location is a row of its own, under the first.
    calexp = lines.index(next(line for line in lines if line.startswith("calexp ")))
    assert lines[calexp].split()[4:6] == ["A,", "agg.yaml"]
    assert lines[calexp + 1].split() == [
        "w",
        "npy",
        "numpy.ndarray",
        "npy/{datasetType}-v{visit:07d}-c{ccd:03d}.npy",
    ]
    assert lines[calexp + 1].index("w") == header.index("MODE")
    genres = lines[lines.index("") + 1 :]
    assert genres[0].split() == ["GENRE", "KEYS", "STORAGE", "PYTHON", "TEMPLATE"]
    assert [line.split()[0] for line in genres[1:]] == ["catalog", "exposure", "metadata"]


def test_types_of_one_repository_needs_no_aggregator(make_repo: MakeRepo) -> None:
    repo = make_repo("A")
    listed = butler_json("types", repo)
    assert {entry["repository"] for entry in listed["dataset_types"]} == {"A"}


def test_messages_that_speak_of_templates_point_at_types(
    tmp_path: Path, make_repo: MakeRepo
) -> None:
    repo = make_repo("A")
    stray = tmp_path / "stray.fits"
    other = tmp_path / "other.fits"
    for path in (stray, other):
        path.write_bytes(b"")
    done = butler("put", repo, "calexp", stray, other, status=1)
    assert f"'butler types {repo}' shows the templates" in done.stderr
