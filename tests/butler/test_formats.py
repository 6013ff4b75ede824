"""Storage formats: round trips, refusals, file checks and the registry."""

from __future__ import annotations

import datetime
import gc
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from butler.errors import ConfigError, FormatError, UnknownFormatError
from butler.formats import (
    StorageFormat,
    format_for_extension,
    get_format,
    known_formats,
    python_type_name,
    register_format,
)
from butler.formats.base import check_start

REPO = Path(__file__).resolve().parents[2]
BUILT_IN = ("fits", "fits-table", "yaml", "json", "npy", "hdf5")


def write(tmp_path: Path, storage_format: StorageFormat, obj: object) -> str:
    path = tmp_path / f"dataset{storage_format.extension}"
    path.write_bytes(storage_format.serialize(obj))
    return str(path)


def round_trip(tmp_path: Path, name: str, obj: object, python: str | None = None) -> object:
    storage_format = get_format(name)
    path = write(tmp_path, storage_format, obj)
    storage_format.check(path)
    result = storage_format.read(path, python)
    gc.collect()  # an unclosed file would raise its ResourceWarning here, as an error
    return result


def image() -> np.ndarray:
    return np.arange(60, dtype=np.float32).reshape(6, 10) / 7


def table() -> Table:
    return Table(
        {"id": [1, 2, 3], "name": ["a", "bb", "ccc"], "flux": [1.5, np.nan, -2.0]},
        meta={"ORIGIN": "test"},
    )


PLAIN = {
    "name": "calexp",
    "visits": [1, 2, 3],
    "nested": {"ratio": 0.25, "on": True, "off": None, "empty": [], "unicode": "é ∂"},
    "looks like a date": "2024-01-01",
}


# --- registry ---


def test_known_formats_are_the_built_in_ones_in_order() -> None:
    assert known_formats()[: len(BUILT_IN)] == BUILT_IN


@pytest.mark.parametrize("name", BUILT_IN)
def test_get_format_is_cached_and_is_a_storage_format(name: str) -> None:
    storage_format = get_format(name)
    assert storage_format is get_format(name)
    assert isinstance(storage_format, StorageFormat)
    assert storage_format.name == name
    assert storage_format.extension.startswith(".")
    assert storage_format.default_python in storage_format.python_types


def test_unknown_format_lists_known_names() -> None:
    with pytest.raises(UnknownFormatError) as caught:
        get_format("nope")
    assert isinstance(caught.value, ValueError)
    for name in BUILT_IN:
        assert name in str(caught.value)


def test_import_is_lazy() -> None:
    code = (
        "import butler.formats, sys\n"
        "heavy = {'astropy', 'numpy', 'h5py'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "butler.formats.format_for_extension('.fits')\n"
        "butler.formats.known_formats()\n"
        "assert 'numpy' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_hdf5_without_h5py_says_how_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['h5py'] = None  # as if it were not installed\n"
        "from butler.errors import FormatError\n"
        "from butler.formats import get_format\n"
        "for attempt in range(2):\n"
        "    try:\n"
        "        get_format('hdf5')\n"
        "    except FormatError as error:\n"
        "        assert \"pip install 'butlerfs[hdf5]'\" in str(error), error\n"
        "    else:\n"
        "        raise AssertionError('no FormatError')\n"
        "get_format('npy')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.parametrize(
    ("extension", "name"),
    [
        (".fits", "fits"),
        (".FITS", "fits"),
        (".yaml", "yaml"),
        (".yml", "yaml"),
        (".json", "json"),
        (".npy", "npy"),
        (".h5", "hdf5"),
        ("h5", "hdf5"),
        (".txt", None),
    ],
)
def test_format_for_extension(extension: str, name: str | None) -> None:
    assert format_for_extension(extension) == name


class ShoutFormat:
    """A plug-in format for the registry test: text stored upper-case."""

    name = "shout"
    extension = ".txt"
    default_python = "str"
    python_types = ("str",)

    def serialize(self, obj: object) -> bytes:
        if not isinstance(obj, str):
            raise FormatError("the shout format writes str")
        return obj.upper().encode()

    def read(self, path: str, python: str | None = None) -> object:
        return Path(path).read_text()

    def check(self, path: str) -> None:
        if not Path(path).read_text().isupper():
            raise FormatError(f"{path} is not shouting")


def test_register_format_of_a_plug_in(tmp_path: Path) -> None:
    register_format("shout", f"{__name__}:ShoutFormat")
    register_format("shout", f"{__name__}:ShoutFormat")  # the same again is harmless
    assert "shout" in known_formats()
    shout = get_format("shout")
    assert isinstance(shout, ShoutFormat)
    path = write(tmp_path, shout, "quiet")
    assert shout.read(path) == "QUIET"


def test_register_format_refuses_replacing_and_bad_targets() -> None:
    with pytest.raises(ConfigError, match="already registered"):
        register_format("fits", f"{__name__}:ShoutFormat")
    with pytest.raises(ConfigError, match=r"package\.module:ClassName"):
        register_format("shout-bad", "no_colon_here")
    with pytest.raises(ConfigError, match="name"):
        register_format("Bad Name", f"{__name__}:ShoutFormat")


def test_broken_registration_fails_on_first_use() -> None:
    register_format("missing-module", "no_such_module_anywhere:Format")
    with pytest.raises(ConfigError, match="cannot be imported"):
        get_format("missing-module")
    register_format("not-a-format", f"{__name__}:Path")
    with pytest.raises(ConfigError, match="not a storage format"):
        get_format("not-a-format")


def test_python_type_name_uses_the_exported_name() -> None:
    assert python_type_name({}) == "dict"
    assert python_type_name(np.zeros(1)) == "numpy.ndarray"
    assert python_type_name(fits.HDUList()) == "astropy.io.fits.HDUList"
    assert python_type_name(Table()) == "astropy.table.Table"
    assert python_type_name(ShoutFormat()) == f"{__name__}.ShoutFormat"


# --- round trips ---


def test_fits_array_round_trip(tmp_path: Path) -> None:
    data = image()
    result = round_trip(tmp_path, "fits", data, "numpy.ndarray")
    assert isinstance(result, np.ndarray)
    assert result.dtype == np.float32 and result.dtype.isnative
    np.testing.assert_array_equal(result, data)
    np.testing.assert_array_equal(data, image())  # serialize left the array as it was


def test_fits_hdulist_round_trip(tmp_path: Path) -> None:
    header = fits.Header({"OBJECT": "M31", "EXPTIME": 30.0})
    header["HISTORY"] = "made by a test"
    hdus = fits.HDUList(
        [fits.PrimaryHDU(header=header), fits.ImageHDU(image(), name="SCI"), fits.ImageHDU()]
    )
    result = round_trip(tmp_path, "fits", hdus)
    assert isinstance(result, fits.HDUList)
    assert python_type_name(result) == "astropy.io.fits.HDUList"
    assert len(result) == 3
    assert result[0].header["OBJECT"] == "M31"
    np.testing.assert_array_equal(result["SCI"].data, image())
    # Nothing is left open: the result can be written elsewhere after the source is gone.
    Path(tmp_path / "dataset.fits").unlink()
    result.writeto(tmp_path / "copy.fits")
    copy = get_format("fits").read(str(tmp_path / "copy.fits"), "numpy.ndarray")
    assert isinstance(copy, np.ndarray) and copy.shape == (6, 10)


@pytest.mark.parametrize(
    "wrap",
    [fits.PrimaryHDU, lambda data: fits.ImageHDU(data, name="SCI")],
    ids=["PrimaryHDU", "ImageHDU"],
)
def test_fits_single_hdu_round_trip(tmp_path: Path, wrap: object) -> None:
    assert callable(wrap)
    result = round_trip(tmp_path, "fits", wrap(image()), "numpy.ndarray")
    np.testing.assert_array_equal(result, image())


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32", "int64", "float64"])
def test_fits_array_dtypes(tmp_path: Path, dtype: str) -> None:
    data = np.arange(12).reshape(3, 4).astype(dtype)
    result = round_trip(tmp_path, "fits", data, "numpy.ndarray")
    assert isinstance(result, np.ndarray)
    assert result.dtype == data.dtype
    np.testing.assert_array_equal(result, data)


def test_fits_array_of_a_table_only_file(tmp_path: Path) -> None:
    path = write(tmp_path, get_format("fits-table"), table())
    result = get_format("fits").read(path, "numpy.ndarray")
    assert isinstance(result, np.ndarray)
    assert list(result["id"]) == [1, 2, 3]


def test_fits_table_round_trip(tmp_path: Path) -> None:
    result = round_trip(tmp_path, "fits-table", table())
    assert isinstance(result, Table)
    assert result.colnames == ["id", "name", "flux"]
    assert list(result["id"]) == [1, 2, 3]
    assert list(result["name"]) == ["a", "bb", "ccc"]
    assert result["name"].dtype.kind == "U"
    assert math.isnan(result["flux"][1])  # NaN stays a value, not a mask
    assert result.meta["ORIGIN"] == "test"


def test_fits_table_from_structured_array(tmp_path: Path) -> None:
    array = np.array([(1, 2.5), (2, 3.5)], dtype=[("a", "i4"), ("b", "f8")])
    result = round_trip(tmp_path, "fits-table", array, "astropy.table.Table")
    assert isinstance(result, Table)
    assert list(result["b"]) == [2.5, 3.5]


@pytest.mark.parametrize("name", ["yaml", "json"])
@pytest.mark.parametrize("obj", [PLAIN, [1, "two", {"three": 3.0}], {}])
def test_plain_round_trip(tmp_path: Path, name: str, obj: object) -> None:
    assert round_trip(tmp_path, name, obj, python_type_name(obj)) == obj
    if isinstance(obj, dict):
        assert round_trip(tmp_path, name, obj) == obj  # dict is the default


def test_yaml_keeps_dates_and_special_floats(tmp_path: Path) -> None:
    obj = {"day": datetime.date(2024, 1, 2), 3: [math.inf], "nan": math.nan}
    result = round_trip(tmp_path, "yaml", obj)
    assert isinstance(result, dict)
    assert result["day"] == datetime.date(2024, 1, 2)
    assert result[3] == [math.inf]
    assert math.isnan(result["nan"])


@pytest.mark.parametrize(
    "data",
    [
        np.arange(10, dtype=np.int16),
        np.ones((3, 4, 5), dtype=np.complex64),
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.array([(1, b"x"), (2, b"yy")], dtype=[("a", "<i8"), ("s", "S2")]),
        np.array(["unicode", "é"]),
        np.array(3.5),
    ],
    ids=["int16", "complex", "fortran", "structured", "str", "scalar"],
)
def test_npy_round_trip(tmp_path: Path, data: np.ndarray) -> None:
    result = round_trip(tmp_path, "npy", data, "numpy.ndarray")
    assert isinstance(result, np.ndarray)
    assert result.dtype == data.dtype
    np.testing.assert_array_equal(result, data)


def test_hdf5_array_round_trip(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    result = round_trip(tmp_path, "hdf5", data)
    assert isinstance(result, np.ndarray)
    assert result.dtype == data.dtype
    np.testing.assert_array_equal(result, data)


def test_hdf5_hdulist_keeps_header_cards(tmp_path: Path) -> None:
    import h5py

    hdus = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image(), name="SCI")])
    hdus[1].header["EXPTIME"] = 30.0
    hdus[1].header["COMMENT"] = "first"
    hdus[1].header["COMMENT"] = "second"
    result = round_trip(tmp_path, "hdf5", hdus, "numpy.ndarray")
    np.testing.assert_array_equal(result, image())
    with h5py.File(tmp_path / "dataset.h5", "r") as file:
        attributes = dict(file["data"].attrs)
    assert attributes["EXTNAME"] == "SCI"
    assert attributes["EXPTIME"] == 30.0
    assert attributes["COMMENT"] == "first\nsecond"
    assert "BITPIX" not in attributes and "NAXIS1" not in attributes


def test_hdf5_table_round_trip(tmp_path: Path) -> None:
    result = round_trip(tmp_path, "hdf5", table())
    assert isinstance(result, np.ndarray)
    assert result.dtype.names == ("id", "name", "flux")
    assert list(result["id"]) == [1, 2, 3]
    assert list(result["name"]) == [b"a", b"bb", b"ccc"]  # HDF5 stores text as UTF-8 bytes


# --- determinism ---


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("yaml", lambda: dict(PLAIN)),
        ("json", lambda: dict(PLAIN)),
        ("npy", image),
        ("fits", image),
        ("fits-table", table),
        ("hdf5", image),
    ],
)
def test_serialize_is_deterministic(name: str, make: object) -> None:
    assert callable(make)
    storage_format = get_format(name)
    assert storage_format.serialize(make()) == storage_format.serialize(make())


# --- refusals ---


@pytest.mark.parametrize(
    ("name", "obj"),
    [
        ("fits", {"not": "an image"}),
        ("fits", np.array([1, None], dtype=object)),
        ("fits", np.zeros(2, dtype=[("a", "i4")])),
        ("fits", np.ma.masked_array([1.0, 2.0], mask=[True, False])),
        ("fits-table", image()),
        ("fits-table", [1, 2]),
        ("yaml", "a string is not a dict or list"),
        ("yaml", {"array": np.zeros(2)}),
        ("yaml", {"numpy float": [np.float64(1.0)]}),
        ("yaml", {"tuple": (1, 2)}),
        ("yaml", {"set": {1, 2}}),
        ("yaml", {(1, 2): "tuple key"}),
        ("json", {1: "int key"}),
        ("json", {"nan": math.nan}),
        ("json", {"day": datetime.date(2024, 1, 2)}),
        ("json", ShoutFormat()),
        ("npy", [1, 2, 3]),
        ("npy", np.array([1, "a"], dtype=object)),
        ("npy", np.ma.masked_array([1.0], mask=[True])),
        ("hdf5", {"a": 1}),
        ("hdf5", np.array([{}, []], dtype=object)),
    ],
)
def test_wrong_objects_raise_format_error(name: str, obj: object) -> None:
    with pytest.raises(FormatError) as caught:
        get_format(name).serialize(obj)
    assert isinstance(caught.value, TypeError)
    assert name in str(caught.value) or "FITS" in str(caught.value)


def test_wrong_object_names_the_accepted_types() -> None:
    with pytest.raises(FormatError, match=r"cannot write a dict; it writes .*HDUList"):
        get_format("fits").serialize({})


@pytest.mark.parametrize("name", ["yaml", "json"])
def test_plain_refuses_cycles(name: str) -> None:
    looped: list[object] = [1]
    looped.append(looped)
    with pytest.raises(FormatError, match="contains itself"):
        get_format(name).serialize({"loop": looped})


def test_plain_error_says_where() -> None:
    with pytest.raises(FormatError, match=r"\['a'\]\[1\] is a numpy.int64"):
        get_format("yaml").serialize({"a": [1, np.int64(2)]})


@pytest.mark.parametrize("name", BUILT_IN)
def test_unsupported_python_lists_the_types(tmp_path: Path, name: str) -> None:
    storage_format = get_format(name)
    with pytest.raises(FormatError) as caught:
        storage_format.read(str(tmp_path / "never-opened"), "pandas.DataFrame")
    for python in storage_format.python_types:
        assert python in str(caught.value)


@pytest.mark.parametrize("name", ["yaml", "json"])
def test_plain_read_as_the_other_container(tmp_path: Path, name: str) -> None:
    storage_format = get_format(name)
    path = write(tmp_path, storage_format, [1, 2])
    with pytest.raises(FormatError, match="holds a list, not a dict"):
        storage_format.read(path, "dict")
    assert storage_format.read(path, "list") == [1, 2]


def test_fits_table_needs_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, get_format("fits"), image())
    with pytest.raises(FormatError, match="no table HDU"):
        get_format("fits-table").check(path)
    with pytest.raises(FormatError, match="no table HDU"):
        get_format("fits-table").read(path)
    get_format("fits").check(path)


# --- damaged files ---

SAMPLES: dict[str, object] = {
    "fits": image(),
    "fits-table": table(),
    "yaml": PLAIN,
    "json": PLAIN,
    "npy": np.arange(1000.0),
    "hdf5": np.arange(1000.0),
}


@pytest.mark.parametrize("name", BUILT_IN)
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_check_and_read_reject_damaged_files(tmp_path: Path, name: str, damage: str) -> None:
    storage_format = get_format(name)
    good = storage_format.serialize(SAMPLES[name])
    content = {
        "truncated": good[: len(good) * 2 // 3],
        "garbage": b"\x00\xffnot a file of any kind: {[\n\t" * 40,
        "empty": b"",
    }[damage]
    path = tmp_path / f"damaged{storage_format.extension}"
    path.write_bytes(content)
    with pytest.raises(FormatError) as caught:
        storage_format.check(str(path))
    assert str(path) in str(caught.value)
    assert f"not a valid {name} file" in str(caught.value)
    with pytest.raises(FormatError):
        storage_format.read(str(path))
    gc.collect()


def test_fits_check_rejects_an_invalid_header(tmp_path: Path) -> None:
    path = tmp_path / "bad.fits"
    card = "SIMPLE  =                    T".ljust(80) + "BITPIX  = notanumber".ljust(80)
    path.write_bytes((card + "END".ljust(80)).ljust(2880).encode())
    with pytest.raises(FormatError, match="not a valid fits file"):
        get_format("fits").check(str(path))


def test_npy_check_refuses_pickled_arrays(tmp_path: Path) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FormatError, match="pickle"):
        get_format("npy").check(str(path))
    with pytest.raises(FormatError, match="pickle"):
        get_format("npy").read(str(path))


@pytest.mark.parametrize("name", BUILT_IN)
def test_missing_file_is_an_os_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(FileNotFoundError):
        get_format(name).check(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        get_format(name).read(str(tmp_path / "missing"))


# --- size ---


def test_large_fits_image(tmp_path: Path) -> None:
    data = np.ones((4096, 4096), dtype=np.float32)  # 64 MiB
    data[0, 0] = 2.0
    result = round_trip(tmp_path, "fits", data, "numpy.ndarray")
    assert isinstance(result, np.ndarray)
    assert result.shape == data.shape and result[0, 0] == 2.0 and result[-1, -1] == 1.0
    assert data[0, 0] == 2.0 and data.dtype.isnative


# -- how a file begins (the mount checks the first bytes written) ---------------------------


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_written_file_passes_its_start_check(name: str) -> None:
    """Whatever serialize writes begins as check_start expects, cut anywhere."""
    storage_format = get_format(name)
    data = storage_format.serialize(SAMPLES[name])
    for cut in (0, 1, 4, 9, 64, len(data)):
        check_start(storage_format, data[:cut])


@pytest.mark.parametrize(
    ("name", "first"),
    [
        ("fits", b"plain text\n"),
        ("fits-table", b"\x89HDF\r\n"),
        ("npy", b"SIMPLE  ="),
        ("hdf5", b"\x93NUMPY"),
        ("yaml", b"\x00\x00\x00"),
        ("yaml", b"\xff\xfe\x00"),
        ("json", b'  "just a string"'),
        ("json", b"42"),
    ],
)
def test_bytes_that_cannot_begin_a_file_are_refused(name: str, first: bytes) -> None:
    with pytest.raises(FormatError, match=f"do not begin like a {name}"):
        check_start(get_format(name), first)


def test_a_format_without_a_start_check_accepts_any_start() -> None:
    class Plain:
        name = "plain"

    check_start(Plain(), b"\x00anything")  # type: ignore[arg-type]
