"""Acceptance scenarios 1–17 of ACCEPTANCE.md, black-box.

Only the public API of SPEC.md §6, the ``butler`` command line and the files on disk
are used; the library's internals are never touched.  Each test builds small real
repositories under ``tmp_path`` with the standard policy of ``conftest.py``.
"""

from __future__ import annotations

import datetime as dt
import errno
import getpass
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import h5py
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

import butler
from butler import Butler, DatasetRef
from butler.errors import (
    AmbiguousDataIdError,
    ButlerError,
    DatasetExistsError,
    DatasetNotFoundError,
    InvalidDataIdError,
    UnknownDatasetTypeError,
    UnknownLabelError,
)
from tests.butler.conftest import (
    MakeRepo,
    assert_same_image,
    butler_command,
    drop_registry,
    exposure_path,
    image_array,
    make_image,
    ref_key,
    registry_exists,
    registry_name,
    settle,
    sha256_of,
    subprocess_env,
    tree_bytes,
    visible_digests,
)

CALEXP_1_1 = exposure_path("calexp", 1, 1)

# Every scenario with SQLite, PostgreSQL and mixed registries (ACCEPTANCE 29).
pytestmark = pytest.mark.engines("sqlite", "postgresql", "mixed")


def by_repository(refs: list[DatasetRef]) -> dict[str, DatasetRef]:
    """Refs keyed by repository label; each label at most once."""
    result = {ref.repository: ref for ref in refs}
    assert len(result) == len(refs), f"two refs for one repository: {refs}"
    return result


def relative(ref: DatasetRef, root: Path) -> str:
    """Where a ref's file lies inside ``root``, as a POSIX relative path."""
    return Path(ref.path).resolve().relative_to(root.resolve()).as_posix()


def uri_path(uri: str) -> Path:
    """The file a ``uri()`` names; a plain path and a ``file://`` URL are both accepted."""
    if uri.startswith("file:"):
        return Path(unquote(urlparse(uri).path))
    return Path(uri)


def assert_ref_matches_file(ref: DatasetRef) -> None:
    """The ref's file exists, is complete, and has the recorded size and checksum."""
    path = Path(ref.path)
    assert path.is_absolute(), f"ref.path is not absolute: {ref.path}"
    assert path.is_file(), f"no file at {ref.path}"
    assert path.stat().st_size == ref.size
    assert sha256_of(path) == ref.sha256


def catalog(seed: int) -> Table:
    return Table({"id": np.arange(5, dtype=np.int64) + seed, "flux": np.linspace(1.0, 2.0, 5)})


def registry_rows(b: Butler) -> set[tuple[object, ...]]:
    """Everything ``query()`` lists, in a comparable form."""
    return {ref_key(ref) for ref in b.query()}


# --- 1 -------------------------------------------------------------------------------------


def test_01_fan_out_put(make_repo: MakeRepo) -> None:
    a, b = make_repo("A"), make_repo("B")
    image = make_image(1)

    refs = Butler(outputs=[a, b]).put(image, "calexp", visit=1, ccd=1)

    assert len(refs) == 2, "put returns one ref per output"
    refs_by_label = by_repository(refs)
    assert set(refs_by_label) == {"A", "B"}
    for label, root in (("A", a), ("B", b)):
        ref = refs_by_label[label]
        assert ref.dataset_type == "calexp"
        assert ref.data_id == {"visit": 1, "ccd": 1}
        assert ref.version == 1
        assert relative(ref, root) == CALEXP_1_1
        assert (root / CALEXP_1_1).is_file()
        assert_ref_matches_file(ref)
        alone = Butler(root)
        assert_same_image(alone.get("calexp", visit=1, ccd=1), image)
        assert (
            uri_path(alone.uri("calexp", visit=1, ccd=1)).resolve() == (root / CALEXP_1_1).resolve()
        )
    # Serialized once: both outputs hold the very same bytes.
    assert refs_by_label["A"].sha256 == refs_by_label["B"].sha256


# --- 2 -------------------------------------------------------------------------------------


def test_02_first_input_wins(make_repo: MakeRepo) -> None:
    a, b = make_repo("A"), make_repo("B")
    Butler(a).put(make_image(10), "calexp", visit=1, ccd=1)
    Butler(b).put(make_image(20), "calexp", {"visit": 1, "ccd": 1})
    Butler(b).put(make_image(21), "calexp", visit=2, ccd=1)

    assert_same_image(Butler(inputs=[a, b]).get("calexp", visit=1, ccd=1), make_image(10))
    assert_same_image(Butler(inputs=[b, a]).get("calexp", visit=1, ccd=1), make_image(20))
    # Only B has it, yet it is found behind A.
    assert_same_image(Butler(inputs=[a, b]).get("calexp", visit=2, ccd=1), make_image(21))


# --- 3 -------------------------------------------------------------------------------------


def test_03_masking(make_repo: MakeRepo, tmp_path: Path) -> None:
    a = make_repo("A")
    Butler(a).put(make_image(3), "calexp", visit=1, ccd=1)
    before = tree_bytes(a)

    b = Butler(inputs=[a], outputs=[{"path": str(tmp_path / "B"), "mode": "rw"}])
    with b.get("calexp", visit=1, ccd=1) as original:
        original[0].data = original[0].data * 2 + 1
        b.put(original, "calexp", visit=1, ccd=1)

    expected = image_array(3) * 2 + 1
    assert_same_image(b.get("calexp", visit=1, ccd=1), expected)
    assert_same_image(Butler(tmp_path / "B").get("calexp", visit=1, ccd=1), expected)
    assert_same_image(Butler(a).get("calexp", visit=1, ccd=1), make_image(3))
    del b
    assert tree_bytes(a) == before, "the input A changed"


# --- 4 -------------------------------------------------------------------------------------


def test_04_output_becomes_input(make_repo: MakeRepo, tmp_path: Path) -> None:
    a = make_repo("site/A")
    Butler(a).put(make_image(4), "calexp", visit=1, ccd=1)
    b = tmp_path / "site" / "B"
    assert not b.exists()

    Butler(inputs=[a], outputs=[b]).put(catalog(4), "src", visit=1, ccd=1)

    alone = Butler(b)
    assert_same_image(alone.get("calexp", visit=1, ccd=1), make_image(4))
    assert list(alone.get("src", visit=1, ccd=1)["id"]) == list(catalog(4)["id"])
    del alone
    settle()

    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(a, moved / "A")
    shutil.move(b, moved / "B")
    assert not (tmp_path / "site" / "A").exists()

    alone = Butler(moved / "B")
    assert_same_image(alone.get("calexp", visit=1, ccd=1), make_image(4))
    expected = (moved / "A" / CALEXP_1_1).resolve()
    assert uri_path(alone.uri("calexp", visit=1, ccd=1)).resolve() == expected
    assert list(alone.get("src", visit=1, ccd=1)["id"]) == list(catalog(4)["id"])


# --- 5 -------------------------------------------------------------------------------------


def test_05_depth_first_parents(make_repo: MakeRepo) -> None:
    a1, a2 = make_repo("A1"), make_repo("A2")
    b = make_repo("B", parents=(a1, a2))
    c = make_repo("C")
    Butler(a1).put(make_image(51), "calexp", visit=1, ccd=1)
    Butler(a2).put(make_image(52), "calexp", visit=1, ccd=1)
    Butler(a2).put(make_image(520), "calexp", visit=2, ccd=1)
    Butler(c).put(make_image(53), "calexp", visit=1, ccd=1)
    Butler(c).put(make_image(530), "calexp", visit=2, ccd=1)

    b_then_c = Butler(inputs=[b, c])
    assert [label for label, _, _ in b_then_c.repositories] == ["B", "A1", "A2", "C"]
    assert_same_image(b_then_c.get("calexp", visit=1, ccd=1), make_image(51))
    assert_same_image(b_then_c.get("calexp", visit=2, ccd=1), make_image(520))

    c_then_b = Butler(inputs=[c, b])
    assert [label for label, _, _ in c_then_b.repositories] == ["C", "B", "A1", "A2"]
    assert_same_image(c_then_b.get("calexp", visit=1, ccd=1), make_image(53))
    assert_same_image(c_then_b.get("calexp", visit=2, ccd=1), make_image(530))


# --- 6 -------------------------------------------------------------------------------------


def test_06_labels(make_repo: MakeRepo) -> None:
    alpha = make_repo("alpha")
    beta = make_repo("beta-dir", label="beta")
    Butler(alpha).put(make_image(61), "calexp", visit=1, ccd=1)
    Butler(beta).put(make_image(62), "calexp", visit=1, ccd=1)

    b = Butler(inputs=[alpha, beta])
    assert [(label, mode) for label, _, mode in b.repositories] == [("alpha", "r"), ("beta", "r")]
    assert [Path(path).resolve() for _, path, _ in b.repositories] == [
        alpha.resolve(),
        beta.resolve(),
    ]
    assert_same_image(b.get("calexp", visit=1, ccd=1), make_image(61))
    assert_same_image(b.get("calexp", visit=1, ccd=1, repositoryLabel="beta"), make_image(62))
    assert_same_image(
        b.get("calexp", {"visit": 1, "ccd": 1, "repositoryLabel": "alpha"}), make_image(61)
    )

    with pytest.raises(UnknownLabelError) as caught:
        b.get("calexp", visit=1, ccd=1, repositoryLabel="gamma")
    assert isinstance(caught.value, LookupError)
    message = str(caught.value)
    assert "gamma" in message
    assert "alpha" in message and "beta" in message, message


# --- 7 -------------------------------------------------------------------------------------


def test_07_modes_refused_when_built(make_repo: MakeRepo, tmp_path: Path) -> None:
    alpha = make_repo("alpha")
    before = tree_bytes(alpha)

    with pytest.raises(ButlerError) as caught:
        Butler(inputs=[{"path": str(alpha), "mode": "w"}])
    assert "alpha" in str(caught.value), str(caught.value)

    never = tmp_path / "never"
    with pytest.raises(ButlerError) as caught:
        Butler(inputs=[alpha], outputs=[{"path": str(never), "mode": "r"}])
    assert "never" in str(caught.value), str(caught.value)
    assert not never.exists(), "a refused Butler created its output"
    assert tree_bytes(alpha) == before


def test_07_nothing_written_to_inputs(make_repo: MakeRepo, tmp_path: Path) -> None:
    alpha = make_repo("alpha")
    seed = Butler(alpha)
    seed.put(make_image(71), "calexp", visit=1, ccd=1)
    seed.put({"exptime": 30.0}, "visitInfo", visit=1)
    del seed
    before = tree_bytes(alpha)
    assert CALEXP_1_1 in before and "butler.yaml" in before and registry_name(alpha) in before

    b = Butler(inputs=[alpha], outputs=[tmp_path / "work"])
    b.put(make_image(72), "calexp", visit=1, ccd=1)  # masks the input's dataset
    b.put(make_image(73), "calexp", visit=1, ccd=1)  # a second version
    b.put(catalog(7), "src", visit=1, ccd=1)
    b.put({"exptime": 15.0}, "visitInfo", visit=1)
    b.define("icExp", genre="exposure")
    b.put(make_image(74), "icExp", visit=1, ccd=1)
    assert_same_image(b.get("calexp", visit=1, ccd=1), make_image(73))
    del b

    assert tree_bytes(alpha) == before, "an input was written to"


# --- 8 -------------------------------------------------------------------------------------


def test_08_routing(make_repo: MakeRepo) -> None:
    a, b = make_repo("A"), make_repo("B")
    butler_ab = Butler(
        outputs=[
            {"path": str(a), "datasetTypes": ["calexp"]},
            {"path": str(b), "storage": {"calexp": "hdf5"}},
        ]
    )
    image = image_array(8)

    refs = by_repository(butler_ab.put(image, "calexp", visit=1, ccd=1))
    assert set(refs) == {"A", "B"}
    assert relative(refs["A"], a) == CALEXP_1_1
    assert relative(refs["B"], b) == exposure_path("calexp", 1, 1, ".h5")
    for ref in refs.values():
        assert_ref_matches_file(ref)
    with fits.open(refs["A"].path) as hdus:
        np.testing.assert_array_equal(hdus[0].data, image)
    with h5py.File(refs["B"].path, "r"):
        pass  # a real HDF5 file
    assert not (b / CALEXP_1_1).exists(), "B also got a FITS file"
    assert_same_image(Butler(a).get("calexp", visit=1, ccd=1), image)
    assert_same_image(Butler(b).get("calexp", visit=1, ccd=1), image)

    src_refs = butler_ab.put(catalog(8), "src", visit=1, ccd=1)
    assert [ref.repository for ref in src_refs] == ["B"]
    assert Butler(b).exists("src", visit=1, ccd=1)
    assert not Butler(a).exists("src", visit=1, ccd=1)
    assert not (a / "src").exists()


# --- 9 -------------------------------------------------------------------------------------


def test_09_several_locations(make_repo: MakeRepo, policy: dict[str, Any]) -> None:
    fits_template = "{datasetType}/v{visit:07d}/{datasetType}-v{visit:07d}-c{ccd:03d}.fits"
    npy_template = "npy/{datasetType}/v{visit:07d}-c{ccd:03d}.npy"
    policy["datasetTypes"]["calexp"] = {
        "genre": "exposure",
        "locations": [
            {"template": fits_template, "storage": "fits", "mode": "rw"},
            {"template": npy_template, "storage": "npy", "mode": "w"},
        ],
    }
    a = make_repo("A", policy=policy)
    b = Butler(a)
    image = image_array(9)

    b.put(image, "calexp", visit=1, ccd=1)

    fits_file = a / CALEXP_1_1
    npy_file = a / "npy/calexp/v0000001-c001.npy"
    assert fits_file.is_file() and npy_file.is_file()
    np.testing.assert_array_equal(np.load(npy_file, allow_pickle=False), image)
    got = b.get("calexp", visit=1, ccd=1)
    assert isinstance(got, fits.HDUList), f"get read the npy location: {type(got)}"
    assert_same_image(got, image)
    assert uri_path(b.uri("calexp", visit=1, ccd=1)).resolve() == fits_file.resolve()


# --- 10 ------------------------------------------------------------------------------------


def test_10_genres(make_repo: MakeRepo) -> None:
    a = make_repo("A")
    b = Butler(a)

    b.define("icExp", genre="exposure")
    b.put(make_image(101), "icExp", visit=5, ccd=1)
    b.put(make_image(102), "calexp", visit=5, ccd=1)
    b.put(make_image(103), "raw", visit=5, ccd=2)
    b.put(make_image(104), "calexp", visit=6, ccd=1)
    b.put(catalog(10), "src", visit=5, ccd=1)

    assert_same_image(b.get("icExp", visit=5, ccd=1), make_image(101))
    assert (a / exposure_path("icExp", 5, 1)).is_file()
    found = {
        (ref.dataset_type, ref.data_id["visit"], ref.data_id["ccd"])
        for ref in b.query(genre="exposure", visit=5)
    }
    assert found == {("icExp", 5, 1), ("calexp", 5, 1), ("raw", 5, 2)}
    del b

    # The definition was recorded in the repository: it needs nothing else to be read.
    assert_same_image(Butler(a).get("icExp", visit=5, ccd=1), make_image(101))


# --- 11 ------------------------------------------------------------------------------------


def test_11_partial_data_ids(make_repo: MakeRepo, tmp_path: Path) -> None:
    alpha = make_repo("alpha")
    Butler(alpha).put(make_image(111), "calexp", visit=7, ccd=1)
    b = Butler(inputs=[alpha], outputs=[{"path": str(tmp_path / "beta"), "mode": "rw"}])
    b.put(make_image(112), "calexp", visit=7, ccd=2)
    b.put(make_image(113), "calexp", visit=8, ccd=3)

    assert_same_image(b.get("calexp", visit=8), make_image(113))
    assert {ref.data_id["ccd"] for ref in b.query("calexp", visit=7)} == {1, 2}

    with pytest.raises(AmbiguousDataIdError) as caught:
        b.get("calexp", visit=7)
    message = str(caught.value)
    for ccd in (1, 2):
        assert re.search(rf"ccd\D{{0,4}}0*{ccd}\b", message), f"ccd={ccd} not listed: {message}"

    for partial in ({"visit": 99}, {"visit": 99, "ccd": 1}):
        with pytest.raises(DatasetNotFoundError) as caught:
            b.get("calexp", partial)
        message = str(caught.value)
        assert "alpha" in message and "beta" in message, message


# --- 12 ------------------------------------------------------------------------------------


def test_12_versions(make_repo: MakeRepo) -> None:
    a = make_repo("A")
    b = Butler(a)

    [first] = b.put(make_image(121), "calexp", visit=1, ccd=1)
    [second] = b.put(make_image(122), "calexp", visit=1, ccd=1)

    assert (first.version, second.version) == (1, 2)
    assert first.sha256 != second.sha256
    assert_ref_matches_file(second)
    assert_same_image(b.get("calexp", visit=1, ccd=1), make_image(122))
    assert_same_image(b.get("calexp", visit=1, ccd=1, version=1), make_image(121))
    assert_same_image(b.get("calexp", {"visit": 1, "ccd": 1, "version": 2}), make_image(122))
    listed = b.versions("calexp", visit=1, ccd=1)
    assert sorted((ref.version, ref.sha256) for ref in listed) == [
        (1, first.sha256),
        (2, second.sha256),
    ]
    # Where an old version lives is the library's choice; versions() must say where.
    for ref in listed:
        assert_ref_matches_file(ref)
    del b
    assert_same_image(Butler(a).get("calexp", visit=1, ccd=1, version=1), make_image(121))


def test_12_on_exists_error(make_repo: MakeRepo, policy: dict[str, Any]) -> None:
    policy["on_exists"] = "error"
    a = make_repo("A", policy=policy)
    b = Butler(a)
    b.put(make_image(123), "calexp", visit=1, ccd=1)
    before = visible_digests(a)

    with pytest.raises(DatasetExistsError):
        b.put(make_image(124), "calexp", visit=1, ccd=1)

    assert visible_digests(a) == before
    assert [ref.version for ref in b.versions("calexp", visit=1, ccd=1)] == [1]
    assert_same_image(b.get("calexp", visit=1, ccd=1), make_image(123))


# --- 13 ------------------------------------------------------------------------------------


def as_datetime(value: object) -> dt.datetime:
    """A provenance time: an ISO 8601 string, a datetime, or seconds since the epoch."""
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    assert isinstance(value, str), f"unexpected provenance time {value!r}"
    return dt.datetime.fromisoformat(value)


def test_13_provenance(make_repo: MakeRepo, tmp_path: Path) -> None:
    alpha = make_repo("alpha")
    [made_from] = Butler(alpha).put(make_image(131), "calexp", visit=1, ccd=1)
    b = Butler(inputs=[alpha], outputs=[tmp_path / "beta"])
    caller = {
        "task": "measure",
        "config": {"threshold": 5.0, "bands": ["g", "r"]},
        "made_from": [{"datasetType": "calexp", "visit": 1, "ccd": 1, "sha256": made_from.sha256}],
    }
    started = dt.datetime.now(dt.UTC)

    [ref] = b.put(catalog(13), "src", visit=1, ccd=1, provenance=caller)

    record = b.provenance(ref)
    for key in ("time", "user", "host", "software", "inputs", "outputs", "caller"):
        assert key in record, f"provenance lacks {key!r}: {record}"
    when = as_datetime(record["time"])
    if when.tzinfo is None:  # local time: only the day can be checked without a zone
        assert abs(when - dt.datetime.now()) < dt.timedelta(days=1)
    else:
        assert started - dt.timedelta(seconds=5) <= when <= dt.datetime.now(dt.UTC)
    assert record["user"] == getpass.getuser()
    assert record["host"] in {socket.gethostname(), socket.getfqdn()}
    assert isinstance(record["software"], str) and re.search(r"\d", record["software"])
    inputs, outputs = str(record["inputs"]), str(record["outputs"])
    assert "alpha" in inputs and str(alpha.resolve()) in inputs, inputs
    assert "beta" in outputs and str((tmp_path / "beta").resolve()) in outputs, outputs
    assert record["caller"] == caller
    del b

    # The record lives in the output: the repository alone answers the same.
    alone = Butler(tmp_path / "beta")
    [listed] = alone.query("src", visit=1, ccd=1)
    assert alone.provenance(listed) == record


# --- 14 ------------------------------------------------------------------------------------

BAD_INPUTS = [
    pytest.param("filterInfo", {"band": "../x"}, InvalidDataIdError, ("band", "../x"), id="dotdot"),
    pytest.param("filterInfo", {"band": "a/b"}, InvalidDataIdError, ("band", "a/b"), id="slash"),
    pytest.param("filterInfo", {"band": ""}, InvalidDataIdError, ("band",), id="empty"),
    pytest.param("filterInfo", {"band": "\x00"}, InvalidDataIdError, ("band",), id="nul"),
    pytest.param("filterInfo", {"band": "r\x00i"}, InvalidDataIdError, ("band",), id="nul-inside"),
    pytest.param("filterInfo", {"band": ".."}, InvalidDataIdError, ("band",), id="parent"),
    pytest.param("filterInfo", {"band": "."}, InvalidDataIdError, ("band",), id="dot"),
    pytest.param(
        "filterInfo", {"band": ".hidden"}, InvalidDataIdError, ("band",), id="leading-dot"
    ),
    pytest.param("filterInfo", {"band": "-rf"}, InvalidDataIdError, ("band",), id="leading-dash"),
    pytest.param("filterInfo", {"band": "a\tb"}, InvalidDataIdError, ("band",), id="control"),
    pytest.param("filterInfo", {"band": "x" * 256}, InvalidDataIdError, ("band",), id="too-long"),
    pytest.param(
        "calexp", {"visit": "abc", "ccd": 1}, InvalidDataIdError, ("visit", "int"), id="str-for-int"
    ),
    pytest.param(
        "calexp", {"visit": 1.5, "ccd": 1}, InvalidDataIdError, ("visit", "int"), id="float-for-int"
    ),
    pytest.param("calexp", {"visit": 1}, InvalidDataIdError, ("ccd",), id="missing-key"),
    pytest.param(
        "noSuchType",
        {"visit": 1, "ccd": 1},
        UnknownDatasetTypeError,
        ("noSuchType",),
        id="unknown-dataset-type",
    ),
]


@pytest.mark.parametrize(("dataset_type", "data_id", "error", "named"), BAD_INPUTS)
def test_14_bad_input_nothing_written(
    make_repo: MakeRepo,
    policy: dict[str, Any],
    dataset_type: str,
    data_id: dict[str, object],
    error: type[ButlerError],
    named: tuple[str, ...],
) -> None:
    policy["genres"]["bandpass"] = {
        "keys": {"band": "str"},
        "template": "{datasetType}/{band}/{datasetType}-{band}.yaml",
        "storage": "yaml",
        "python": "dict",
    }
    policy["datasetTypes"]["filterInfo"] = {"genre": "bandpass"}
    a = make_repo("A", policy=policy)
    b = Butler(outputs=[a])
    b.put({"lambda": 620.0}, "filterInfo", band="r")
    b.put(make_image(14), "calexp", visit=1, ccd=1)
    files_before, rows_before = visible_digests(a), registry_rows(b)
    obj = {"lambda": 1.0} if dataset_type == "filterInfo" else make_image(140)

    with pytest.raises(ButlerError) as caught:
        b.put(obj, dataset_type, data_id)

    assert isinstance(caught.value, error), f"{type(caught.value).__name__}: {caught.value}"
    message = str(caught.value)
    for word in named:
        assert word in message, f"{word!r} not named in: {message}"
    assert visible_digests(a) == files_before, "a file was written"
    assert registry_rows(b) == rows_before, "a registry row was added"
    del b
    assert registry_rows(Butler(a)) == rows_before


# --- 15 ------------------------------------------------------------------------------------


class ExplodingFormat:
    """A storage format whose writer fails with an I/O error while ``armed``.

    Otherwise it writes ``.npy`` bytes, so a retry after the fault clears can succeed.
    """

    armed = False
    name = "exploding"
    extension = ".boom"
    default_python = "numpy.ndarray"
    python_types = ("numpy.ndarray",)

    def serialize(self, obj: object) -> bytes:
        if ExplodingFormat.armed:
            raise OSError(errno.EIO, "simulated failure of the exploding format's writer")
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(obj), allow_pickle=False)
        return buffer.getvalue()

    def read(self, path: str, python: str | None = None) -> object:
        return np.load(path, allow_pickle=False)

    def check(self, path: str) -> None:
        np.load(path, allow_pickle=False)


@pytest.fixture
def exploding() -> Iterator[type[ExplodingFormat]]:
    from butler.formats import register_format

    register_format("exploding", f"{__name__}:{ExplodingFormat.__qualname__}")
    ExplodingFormat.armed = True
    try:
        yield ExplodingFormat
    finally:
        ExplodingFormat.armed = False


def assert_all_or_nothing(
    outputs: list[Path], before: dict[Path, tuple[dict[str, str], set[tuple[object, ...]]]]
) -> None:
    """No output has the calexp, nor any new file or registry row."""
    for root in outputs:
        alone = Butler(root)
        assert not alone.exists("calexp", visit=1, ccd=1), f"{root.name} has the dataset"
        assert visible_digests(root) == before[root][0], f"{root.name} gained a file"
        assert registry_rows(alone) == before[root][1], f"{root.name} gained a registry row"


def test_15_all_or_nothing_format_writer_raises(
    make_repo: MakeRepo, exploding: type[ExplodingFormat]
) -> None:
    a, b = make_repo("A"), make_repo("B")
    Butler(b).put({"exptime": 1.0}, "visitInfo", visit=1)
    before = {root: (visible_digests(root), registry_rows(Butler(root))) for root in (a, b)}
    both = Butler(outputs=[a, {"path": str(b), "storage": {"calexp": "exploding"}}])
    image = image_array(15)

    with pytest.raises(ButlerError):
        both.put(image, "calexp", visit=1, ccd=1)
    assert_all_or_nothing([a, b], before)

    exploding.armed = False
    refs = by_repository(both.put(image, "calexp", visit=1, ccd=1))
    assert relative(refs["A"], a) == CALEXP_1_1
    assert relative(refs["B"], b) == exposure_path("calexp", 1, 1, ".boom")
    assert_same_image(Butler(a).get("calexp", visit=1, ccd=1), image)
    assert_same_image(Butler(b).get("calexp", visit=1, ccd=1), image)


def mount_small_tmpfs(mountpoint: Path, size: str) -> None:
    """Mount a tmpfs of ``size``; skip where that is impossible, but fail under CI."""
    reason = None
    if os.geteuid() != 0:
        reason = "mounting a small tmpfs needs root"
    else:
        command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            reason = f"{' '.join(command)} failed: {done.stderr.strip()}"
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the disk-full scenario: {reason}")
    pytest.skip(reason)


def unmount(mountpoint: Path) -> None:
    settle()  # close the registries of dropped Butlers, or umount reports "busy"
    if subprocess.run(["umount", str(mountpoint)], check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)
    assert not os.path.ismount(mountpoint)


def test_15_all_or_nothing_disk_full(make_repo: MakeRepo, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    mount_small_tmpfs(small, "2m")
    try:
        fill_the_small_disk(make_repo("A"), make_repo("small/B"))
    finally:
        unmount(small)


def fill_the_small_disk(a: Path, b: Path) -> None:
    before = {root: (visible_digests(root), registry_rows(Butler(root))) for root in (a, b)}
    both = Butler(outputs=[a, b])
    too_big = np.random.default_rng(15).random((700, 500))  # 2.8 MB of float64 > 2 MiB

    with pytest.raises(ButlerError) as caught:
        both.put(too_big, "calexp", visit=1, ccd=1)
    assert isinstance(caught.value, OSError), f"{type(caught.value).__name__}: {caught.value}"
    assert_all_or_nothing([a, b], before)

    small_image = image_array(151)
    refs = by_repository(both.put(small_image, "calexp", visit=1, ccd=1))
    assert set(refs) == {"A", "B"}
    for root in (a, b):
        assert_same_image(Butler(root).get("calexp", visit=1, ccd=1), small_image)


# --- 16 ------------------------------------------------------------------------------------


def snapshot_contents(root: Path) -> dict[str, object]:
    """Every dataset, version, checksum and provenance record, as the API reports them."""
    b = Butler(root)
    listed = sorted(b.query(), key=ref_key)
    versions: dict[tuple[object, ...], list[tuple[object, ...]]] = {}
    provenance: dict[tuple[object, ...], dict[str, object]] = {}
    files: dict[tuple[object, ...], str] = {}
    for ref in listed:
        data_id_key = (ref.dataset_type, tuple(sorted(ref.data_id.items())))
        all_versions = b.versions(ref.dataset_type, ref.data_id)
        versions[data_id_key] = sorted(ref_key(version) for version in all_versions)
        for version in all_versions:
            provenance[ref_key(version)] = b.provenance(version)
            files[ref_key(version)] = relative(version, root)
            assert_ref_matches_file(version)
    return {
        "query": [ref_key(ref) for ref in listed],
        "versions": versions,
        "provenance": provenance,
        "files": files,
    }


def test_16_standalone_and_rebuildable(make_repo: MakeRepo, tmp_path: Path) -> None:
    original = make_repo("original")
    b = Butler(original)
    b.put(make_image(161), "calexp", visit=1, ccd=1, provenance={"step": "first"})
    b.put(make_image(162), "calexp", visit=1, ccd=1, provenance={"step": "second"})
    b.put(make_image(163), "raw", visit=2, ccd=3)
    b.put(catalog(16), "src", visit=1, ccd=1)
    b.put({"exptime": 30.0, "filter": "r"}, "visitInfo", visit=1)
    b.define("icExp", genre="exposure")
    b.put(make_image(164), "icExp", visit=1, ccd=1)
    del b
    settle()

    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    before = snapshot_contents(original)
    shutil.rmtree(original)

    assert snapshot_contents(copy) == before
    assert_same_image(Butler(copy).get("calexp", visit=1, ccd=1, version=1), make_image(161))
    settle()

    drop_registry(copy)
    done = subprocess.run(
        butler_command("reindex", str(copy)),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"butler reindex failed:\n{done.stdout}\n{done.stderr}"
    assert registry_exists(copy)

    assert snapshot_contents(copy) == before
    rebuilt = Butler(copy)
    assert [ref.version for ref in rebuilt.versions("calexp", visit=1, ccd=1)] == [1, 2]
    assert_same_image(rebuilt.get("calexp", visit=1, ccd=1), make_image(162))
    assert_same_image(rebuilt.get("calexp", visit=1, ccd=1, version=1), make_image(161))
    assert_same_image(rebuilt.get("icExp", visit=1, ccd=1), make_image(164))
    assert rebuilt.get("visitInfo", visit=1) == {"exptime": 30.0, "filter": "r"}


# --- 17 ------------------------------------------------------------------------------------

WORKERS = 4
DATASETS_PER_WORKER = 25

# One writer: builds its Butler, says it is ready, waits for "go", then puts its datasets.
# The pixel formula is conftest.image_array's, repeated so the child needs no test code.
WRITER = r"""
import sys, time
from pathlib import Path
import numpy as np
from butler import Butler

worker, count, rendezvous, *outputs = sys.argv[1:]
worker, count, rendezvous = int(worker), int(count), Path(rendezvous)
b = Butler(outputs=outputs)
(rendezvous / f"ready-{worker}").touch()
deadline = time.monotonic() + 120
while not (rendezvous / "go").exists():
    if time.monotonic() > deadline:
        sys.exit(f"writer {worker} was never told to go")
    time.sleep(0.002)
for ccd in range(count):
    seed = worker * 100 + ccd
    pixels = (np.arange(16 * 20, dtype=np.float32).reshape(16, 20) + seed * 1000.0)
    b.put(pixels.astype(np.float32), "calexp", visit=worker, ccd=ccd)
"""


def wait_for(condition: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def test_17_concurrent_writers(make_repo: MakeRepo, tmp_path: Path) -> None:
    a, b = make_repo("A"), make_repo("B")
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                str(worker),
                str(DATASETS_PER_WORKER),
                str(rendezvous),
                str(a),
                str(b),
            ],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in range(1, WORKERS + 1)
    ]
    try:
        wait_for(
            lambda: (
                len(list(rendezvous.glob("ready-*"))) == WORKERS
                or any(w.poll() is not None for w in writers)
            ),
            "every writer to be ready",
            timeout=120,
        )
        (rendezvous / "go").touch()
        for writer in writers:
            out, err = writer.communicate(timeout=600)
            assert writer.returncode == 0, f"a writer failed:\n{out}\n{err}"
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.communicate()

    expected = {
        (worker, ccd) for worker in range(1, WORKERS + 1) for ccd in range(DATASETS_PER_WORKER)
    }
    for root in (a, b):
        alone = Butler(root)
        refs = alone.query("calexp")
        assert sorted((r.data_id["visit"], r.data_id["ccd"]) for r in refs) == sorted(expected)
        for ref in refs:
            assert ref.version == 1
            assert_ref_matches_file(ref)
            visit, ccd = ref.data_id["visit"], ref.data_id["ccd"]
            assert_same_image(
                alone.get("calexp", visit=visit, ccd=ccd), image_array(visit * 100 + ccd)
            )
    together = Butler(inputs=[a, b])
    assert len(together.query("calexp", visit=1)) >= DATASETS_PER_WORKER


def test_package_exports_every_error() -> None:
    """SPEC §6: the errors are importable from ``butler`` itself too."""
    for name in (
        "ButlerError",
        "ConfigError",
        "InvalidDataIdError",
        "UnknownDatasetTypeError",
        "UnknownLabelError",
        "DatasetNotFoundError",
        "AmbiguousDataIdError",
        "DatasetExistsError",
        "NoOutputError",
        "ReadOnlyError",
        "FormatError",
        "RepositoryError",
        "TransactionError",
    ):
        assert getattr(butler, name) is getattr(butler.errors, name)
