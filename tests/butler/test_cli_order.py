"""``butler query`` and ``butler versions`` list datasets in the genre's key order, ints
numerically (SPEC §6 "Order"); run as a user types them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from butler import Butler
from tests.butler.conftest import MakeRepo, make_image
from tests.butler.test_cli import butler, butler_json

# Declared visit before ccd: the order a person reads an exposure's data ID in.
CATALOGUE = {
    "keys": {"id": "int"},
    "template": "{datasetType}/{datasetType}-{id}.yaml",
    "storage": "yaml",
}
OBSERVATION = {
    "keys": {"night": "str", "visit": "int"},
    "template": "{datasetType}/{night}/{datasetType}-{visit}.yaml",
    "storage": "yaml",
}


def test_query_sorts_by_declared_keys_ints_numerically(
    make_repo: MakeRepo, policy: dict[str, Any]
) -> None:
    repo = make_repo("A", policy=policy)
    with Butler(repo) as library:
        # Put in an order that neither the registry's text order nor put order hides.
        for visit, ccd in [(1002, 0), (1001, 1), (1001, 0), (1002, 10), (1002, 2), (999, 3)]:
            library.put(make_image(ccd), "calexp", visit=visit, ccd=ccd)
    expected = [(999, 3), (1001, 0), (1001, 1), (1002, 0), (1002, 2), (1002, 10)]

    listed = butler_json("query", repo, "calexp")
    assert [(r["data_id"]["visit"], r["data_id"]["ccd"]) for r in listed] == expected
    assert [list(r["data_id"]) for r in listed] == [["visit", "ccd"]] * len(expected)

    table = butler("query", repo, "calexp").stdout.splitlines()[1:]
    assert [line.split()[1:3] for line in table] == [
        [f"visit={visit}", f"ccd={ccd}"] for visit, ccd in expected
    ]


def test_query_of_several_types_groups_by_type_then_data_id(
    make_repo: MakeRepo, policy: dict[str, Any]
) -> None:
    repo = make_repo("A", policy=policy)
    with Butler(repo) as library:
        for visit in (10, 9, 100):
            library.put(make_image(visit), "raw", visit=visit, ccd=1)
            library.put(make_image(visit), "calexp", visit=visit, ccd=1)
    listed = butler_json("query", repo, "--genre", "exposure")
    assert [(r["dataset_type"], r["data_id"]["visit"]) for r in listed] == [
        ("calexp", 9),
        ("calexp", 10),
        ("calexp", 100),
        ("raw", 9),
        ("raw", 10),
        ("raw", 100),
    ]


def test_int_and_str_keys(make_repo: MakeRepo, policy: dict[str, Any]) -> None:
    policy["genres"].update(catalogue=CATALOGUE, observation=OBSERVATION)
    policy["datasetTypes"].update(source={"genre": "catalogue"}, log={"genre": "observation"})
    repo = make_repo("A", policy=policy)
    with Butler(repo) as library:
        for number in (1001, 0, 2, 1000, 10):
            library.put({"id": number}, "source", id=number)
        for night, visit in [("2026-01-10", 3), ("2026-01-09", 20), ("2026-01-10", 12)]:
            library.put({"visit": visit}, "log", night=night, visit=visit)
    ids = [r["data_id"]["id"] for r in butler_json("query", repo, "source")]
    assert ids == [0, 2, 10, 1000, 1001]
    logs = butler_json("query", repo, "log")
    assert [(r["data_id"]["night"], r["data_id"]["visit"]) for r in logs] == [
        ("2026-01-09", 20),
        ("2026-01-10", 3),
        ("2026-01-10", 12),
    ]


def test_versions_in_numeric_order(tmp_path: Path, make_repo: MakeRepo) -> None:
    repo = make_repo("A")
    with Butler(repo) as library:
        for seed in range(12):
            library.put(make_image(seed), "calexp", visit=1, ccd=1)
    listed = butler_json("versions", repo, "calexp", "visit=1", "ccd=1")
    assert [v["version"] for v in listed] == list(range(1, 13))
    assert [v["current"] for v in listed] == [False] * 11 + [True]
    rows = butler("versions", repo, "calexp", "visit=1", "ccd=1").stdout.splitlines()[2:]
    assert [int(row.split()[0]) for row in rows] == list(range(1, 13))


def test_an_ambiguous_data_id_lists_candidates_in_order(make_repo: MakeRepo) -> None:
    repo = make_repo("A")
    with Butler(repo) as library:
        for ccd in (10, 2, 1):
            library.put(make_image(ccd), "calexp", visit=5, ccd=ccd)
    done = butler("get", repo, "calexp", "visit=5", "-o", "-", status=1)
    assert "visit=5 ccd=1 in A; visit=5 ccd=2 in A; visit=5 ccd=10 in A" in done.stderr
