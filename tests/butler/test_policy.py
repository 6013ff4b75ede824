"""Policy validation and the merge of the three configuration levels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from butler import Butler, ConfigError, DataRepository, UnknownDatasetTypeError
from butler.policy import Policy, assignments_to_policy, merge

GENRE = {
    "keys": {"visit": "int", "ccd": "int"},
    "template": "{datasetType}/v{visit:07d}/{datasetType}-c{ccd:03d}.fits",
    "storage": "fits",
}
BASE = {"genres": {"exposure": GENRE}, "datasetTypes": {"calexp": {"genre": "exposure"}}}


def test_merge_is_deep_and_later_wins() -> None:
    merged = merge(
        {"on_exists": "version", "datasetTypes": {"calexp": {"genre": "exposure"}}},
        {"datasetTypes": {"calexp": {"storage": "hdf5"}, "src": {"genre": "catalog"}}},
        {"on_exists": "error"},
    )
    assert merged == {
        "on_exists": "error",
        "datasetTypes": {
            "calexp": {"genre": "exposure", "storage": "hdf5"},
            "src": {"genre": "catalog"},
        },
    }


def test_merge_replaces_lists_whole_and_copies() -> None:
    first = {"datasetTypes": {"calexp": {"locations": [{"template": "a/{visit}"}]}}}
    second = {"datasetTypes": {"calexp": {"locations": [{"template": "b/{visit}"}]}}}
    merged = merge(first, second)
    assert merged["datasetTypes"] == {"calexp": {"locations": [{"template": "b/{visit}"}]}}
    merged["datasetTypes"]["calexp"]["locations"].append("x")  # type: ignore[index]
    assert len(second["datasetTypes"]["calexp"]["locations"]) == 1


def test_command_line_assignments() -> None:
    assert assignments_to_policy(["on_exists=error", "datasetTypes.calexp.storage=hdf5"]) == {
        "on_exists": "error",
        "datasetTypes": {"calexp": {"storage": "hdf5"}},
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        assignments_to_policy(["on_exists"])


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"datasetTypes": {"calexp": {"genre": "nope"}}}, "unknown genre 'nope'"),
        (
            {"genres": {"g": {**GENRE, "template": "{datasetType}/v{visit}.fits"}}},
            "ccd",
        ),
        ({"genres": {"g": {**GENRE, "storage": "pickle"}}}, "unknown storage format 'pickle'"),
        ({"genres": {"g": {**GENRE, "template": "{datasetType}/{visit}{ccd}.fits"}}}, "template"),
        ({"genres": {"g": {**GENRE, "keys": {"visit": "float", "ccd": "int"}}}}, "float"),
        ({"on_exists": "overwrite"}, "on_exists"),
        ({"colour": "blue"}, "unknown field"),
        (
            {
                "genres": {"exposure": GENRE},
                "datasetTypes": {"x": {"genre": "exposure", "locations": [{"mode": "x"}]}},
            },
            "mode 'x'",
        ),
    ],
)
def test_validation_names_the_problem(policy: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Policy.from_mapping(policy, "test")


def test_locations_inherit_storage_and_primary_is_first_readable() -> None:
    policy = Policy.from_mapping(
        {
            "genres": {"exposure": GENRE},
            "datasetTypes": {
                "calexp": {
                    "genre": "exposure",
                    "locations": [
                        {
                            "template": "npy/{datasetType}-v{visit}-c{ccd}.npy",
                            "storage": "npy",
                            "mode": "w",
                        },
                        {"template": "{datasetType}/{visit}/{ccd}.fits", "mode": "rw"},
                    ],
                }
            },
        },
        "test",
    )
    calexp = policy.dataset_type("calexp")
    assert [loc.storage for loc in calexp.locations] == ["npy", "fits"]
    assert calexp.primary.template.text == "{datasetType}/{visit}/{ccd}.fits"
    with pytest.raises(UnknownDatasetTypeError, match="define it first"):
        policy.dataset_type("icExp")


def test_three_levels_repository_then_butler_then_command_line(tmp_path: Path) -> None:
    DataRepository.create(tmp_path / "in", policy={**BASE, "on_exists": "version"})
    butler = Butler(
        inputs=[tmp_path / "in"],
        outputs=[tmp_path / "out"],
        policy={"on_exists": "error", "datasetTypes": {"calexp": {"storage": "npy"}}},
        command_line_policy={"datasetTypes": {"calexp": {"storage": "fits"}}},
    )
    effective = butler.resolver.policy
    assert effective.on_exists == "error"
    assert effective.dataset_type("calexp").primary.storage == "fits"
    assert not (tmp_path / "out").exists()  # opening creates nothing
    butler.put(np.ones(2), "calexp", visit=1, ccd=1)
    # The new output was created at that first write with the inputs' policy merged
    # with the Butler's.
    created = DataRepository(tmp_path / "out").policy
    assert created.dataset_type("calexp").primary.storage == "npy"


def test_first_repository_in_search_order_defines_a_type(tmp_path: Path) -> None:
    other = {**GENRE, "template": "other/{datasetType}/v{visit:07d}-c{ccd:03d}.fits"}
    DataRepository.create(tmp_path / "a", policy=BASE)
    DataRepository.create(
        tmp_path / "b",
        policy={"genres": {"exposure": other}, "datasetTypes": {"calexp": {"genre": "exposure"}}},
    )
    first = Butler(inputs=[tmp_path / "a", tmp_path / "b"]).resolver.policy
    second = Butler(inputs=[tmp_path / "b", tmp_path / "a"]).resolver.policy
    assert first.dataset_type("calexp").primary.template.text == GENRE["template"]
    assert second.dataset_type("calexp").primary.template.text == other["template"]


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    repo = DataRepository.create(tmp_path / "r", policy=BASE)
    config = repo.path / "butler.yaml"
    config.write_text(config.read_text().replace("butler: 1", "butler: 7"))
    with pytest.raises(Exception, match="format version 7 is not supported"):
        Butler(repo.path)


def test_nested_aggregator_files(tmp_path: Path) -> None:
    DataRepository.create(tmp_path / "raw", policy=BASE)
    inner = tmp_path / "inner.yaml"
    inner.write_text("butler: 1\ninputs: [raw]\noutputs: [{path: work, mode: rw}]\n")
    Butler(inner).define("icExp", genre="exposure")  # a first write creates "work"
    outer = tmp_path / "outer.yaml"
    outer.write_text("butler: 1\ninputs: [inner.yaml]\noutputs: [final]\n")
    butler = Butler(outer)
    labels = [(label, mode) for label, _, mode in butler.repositories]
    # An aggregator as an input contributes its whole search order, read-only.
    assert labels == [("final", "rw"), ("work", "r"), ("raw", "r")]
