"""Behaviours of Butler beyond the acceptance scenarios (found by reading the docs against
the code)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from butler import Butler, ConfigError, DataRepository, InvalidDataIdError

GENRE = {
    "keys": {"visit": "int", "ccd": "int"},
    "template": "{datasetType}/v{visit:07d}/{datasetType}-c{ccd:03d}.fits",
    "storage": "fits",
    "python": "numpy.ndarray",
}
POLICY = {"genres": {"exposure": GENRE}, "datasetTypes": {"calexp": {"genre": "exposure"}}}


def test_routed_storage_is_recorded_in_the_output(tmp_path: Path) -> None:
    DataRepository.create(tmp_path / "in", policy=POLICY)
    butler = Butler(
        inputs=[tmp_path / "in"],
        outputs=[{"path": tmp_path / "h5", "storage": {"calexp": "hdf5"}}],
    )
    butler.put(np.ones((2, 2)), "calexp", visit=1, ccd=1)
    alone = Butler(tmp_path / "h5")
    (ref,) = alone.put(np.zeros((2, 2)), "calexp", visit=1, ccd=2)
    assert ref.path.endswith(".h5")
    assert np.array_equal(np.asarray(alone.get("calexp", visit=1, ccd=2)), np.zeros((2, 2)))


def test_a_failed_put_leaves_butler_yaml_alone(tmp_path: Path) -> None:
    DataRepository.create(tmp_path / "in", policy=POLICY)
    butler = Butler(inputs=[tmp_path / "in"], outputs=[tmp_path / "out"])
    assert not (tmp_path / "out").exists()  # created at the first write, not by opening
    butler.define("icExp", genre="exposure")  # define records at once: it is asked for
    config = (tmp_path / "out" / "butler.yaml").read_bytes()
    assert b"icExp" in config
    with pytest.raises(TypeError):
        butler.put(object(), "icExp", visit=1, ccd=1)
    with pytest.raises(TypeError):
        butler.put(object(), "calexp", visit=1, ccd=1)  # a type the output does not hold
    assert (tmp_path / "out" / "butler.yaml").read_bytes() == config


def test_a_new_template_moves_the_previous_version_aside(tmp_path: Path) -> None:
    repo = DataRepository.create(tmp_path / "r", policy=POLICY)
    Butler(repo.path).put(np.ones(3), "calexp", visit=1, ccd=1)
    config = repo.path / "butler.yaml"
    config.write_text(config.read_text().replace("-c{ccd:03d}.fits", "-ccd{ccd:03d}.fits"))
    butler = Butler(repo.path)
    (ref,) = butler.put(np.zeros(3), "calexp", visit=1, ccd=1)
    assert ref.path.endswith("calexp-ccd001.fits")
    assert not (repo.path / "calexp/v0000001/calexp-c001.fits").exists()
    assert np.array_equal(np.asarray(butler.get("calexp", visit=1, ccd=1, version=1)), np.ones(3))


def test_put_refuses_version_and_label(tmp_path: Path) -> None:
    repo = DataRepository.create(tmp_path / "r", policy=POLICY)
    with pytest.raises(InvalidDataIdError, match="versions are assigned by the butler"):
        Butler(repo.path).put(np.ones(1), "calexp", visit=1, ccd=1, version=3)


def test_versions_of_a_removed_dataset(tmp_path: Path) -> None:
    repo = DataRepository.create(tmp_path / "r", policy=POLICY)
    butler = Butler(repo.path)
    butler.put(np.ones(1), "calexp", visit=1, ccd=1)
    butler.remove("calexp", visit=1, ccd=1)
    assert not butler.exists("calexp", visit=1, ccd=1)
    assert [ref.version for ref in butler.versions("calexp", visit=1, ccd=1)] == [1]


def test_one_repository_under_two_spellings_is_one_repository(tmp_path: Path) -> None:
    DataRepository.create(tmp_path / "raw", policy=POLICY)
    (tmp_path / "sub").mkdir()
    with pytest.raises(ConfigError, match="both an input and an output"):
        Butler(inputs=[tmp_path / "raw"], outputs=[tmp_path / "sub" / ".." / "raw"])


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (
            {
                "genres": {"g": {**GENRE, "template": "v{visit:07d}/c{ccd:03d}.fits"}},
                "datasetTypes": {"a": {"genre": "g"}, "b": {"genre": "g"}},
            },
            "would share the files",
        ),
        (
            {"genres": {"g": {**GENRE, "keys": {"visit": "int", "version": "int"}}}},
            "reserved",
        ),
    ],
)
def test_policies_that_would_lose_data_are_refused(policy: dict[str, object], message: str) -> None:
    from butler.policy import Policy

    with pytest.raises(ConfigError, match=message):
        Policy.from_mapping(policy, "test")


def test_an_input_keeps_its_label_when_reached_as_a_parent(tmp_path: Path) -> None:
    DataRepository.create(tmp_path / "in2", policy=POLICY)
    Butler(tmp_path / "in2").put(np.ones(2), "calexp", visit=1, ccd=1)
    butler = Butler(
        inputs=[{"path": tmp_path / "in2", "label": "second"}], outputs=[tmp_path / "fresh"]
    )
    assert [label for label, _, _ in butler.repositories] == ["fresh", "second"]
    assert butler.exists("calexp", visit=1, ccd=1, repositoryLabel="second")


def test_ingest_to_one_output(tmp_path: Path) -> None:
    from astropy.io import fits

    image = tmp_path / "image.fits"
    fits.PrimaryHDU(np.ones((2, 2))).writeto(image)
    DataRepository.create(tmp_path / "a", policy=POLICY)
    butler = Butler(outputs=[tmp_path / "a", tmp_path / "b"])
    (ref,) = butler.ingest(image, "calexp", visit=1, ccd=1, outputs=["b"])
    assert ref.repository == "b"
    assert not Butler(tmp_path / "a").exists("calexp", visit=1, ccd=1)
    with pytest.raises(LookupError, match="no output is labelled"):
        butler.ingest(image, "calexp", visit=1, ccd=2, outputs=["c"])
