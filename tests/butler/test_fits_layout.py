"""``butler.formats.fits_layout``: the FITS check without astropy agrees with astropy's.

Its contract: "valid" only where astropy's full check passes, "invalid" only where it
fails; anything else is "unsure" and astropy decides.  Compared here on files astropy
writes and on damaged copies of them: cut short, bytes flipped, cards rewritten.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from butler.errors import FormatError
from butler.formats import fits as fits_format
from butler.formats import fits_layout, get_format
from tests.butler.conftest import PROJECT_ROOT


def astropy_accepts(path: Path) -> bool:
    """The full check, as before fits_layout existed: astropy opens and verifies the file."""
    try:
        fits_format._check(get_format("fits"), str(path), need_table=False)
    except FormatError:
        return False
    return True


def written(path: Path, hdus: fits.HDUList, checksum: bool = False) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a BLANK astropy itself warns about
        hdus.writeto(path, checksum=checksum)
    return path


def header_with_everything() -> fits.Header:
    header = fits.Header()
    header["OBJECT"] = ("M31 'core'", "a string with quotes")
    header["EXPTIME"] = (30.5, "seconds")
    header["TINY"] = 1.5e-300
    header["GAIN"] = -2
    header["FLAG"] = True
    header["EMPTY"] = ""
    header["COMMENT"] = "a comment card"
    header["HISTORY"] = "reduced by a test"
    header.append(("", "a blank-keyword card"))
    return header


def good_files(directory: Path) -> list[Path]:
    """Files astropy writes that the check should settle alone (plain images)."""
    made = []
    for dtype in ("uint8", "int16", "int32", "int64", "float32", "float64", "uint16"):
        data = (np.arange(60).reshape(6, 10) % 7).astype(dtype)
        made.append(written(directory / f"{dtype}.fits", fits.HDUList([fits.PrimaryHDU(data)])))
    made.append(written(directory / "empty.fits", fits.HDUList([fits.PrimaryHDU()])))
    made.append(
        written(
            directory / "cube.fits",
            fits.HDUList(
                [fits.PrimaryHDU(np.zeros((3, 4, 5), np.float32), header_with_everything())]
            ),
        )
    )
    made.append(
        written(
            directory / "extensions.fits",
            fits.HDUList(
                [
                    fits.PrimaryHDU(header=header_with_everything()),
                    fits.ImageHDU(np.ones((7, 9), np.float32), name="SCI"),
                    fits.ImageHDU(np.zeros((7, 9), np.int16), name="DQ"),
                    fits.ImageHDU(),
                ]
            ),
        )
    )
    made.append(
        written(
            directory / "checksum.fits",
            fits.HDUList([fits.PrimaryHDU(np.ones((5, 5), np.int32))]),
            checksum=True,
        )
    )
    blank = fits.PrimaryHDU(np.ones((4, 4), np.int16))
    blank.header["BLANK"] = -32768
    made.append(written(directory / "blank.fits", fits.HDUList([blank])))
    return made


def other_files(directory: Path) -> list[Path]:
    """Files outside the strict rules: astropy must decide them."""
    table = fits.table_to_hdu(Table({"id": np.arange(5), "flux": np.ones(5)}))
    made = [written(directory / "table.fits", fits.HDUList([fits.PrimaryHDU(), table]))]
    long = fits.Header()
    long["LONGSTR"] = "x" * 200  # a CONTINUE card
    made.append(written(directory / "long.fits", fits.HDUList([fits.PrimaryHDU(header=long)])))
    float_blank = fits.PrimaryHDU(np.ones((4, 4), np.float32))
    float_blank.header["BLANK"] = 0  # astropy warns: BLANK means nothing for floats
    made.append(written(directory / "float-blank.fits", fits.HDUList([float_blank])))
    return made


def damaged(good: Path, directory: Path) -> list[Path]:
    """Copies of ``good`` cut short, padded, flipped and with cards rewritten."""
    data = good.read_bytes()
    variants: dict[str, bytes] = {}
    for cut in sorted({1, 7, 80, 2879, 2880, 2881, len(data) // 2, len(data) - 1}):
        if cut < len(data):
            variants[f"cut{cut}"] = data[:cut]
    variants["zeros-after"] = data + b"\0" * 2880
    variants["spaces-after"] = data + b" " * 2880
    variants["garbage-after"] = data + b"not fits" * 360
    for offset in (0, 9, 29, 85, 95, 109, 170, 250, 2870):
        for byte in (b"\0", b"\xff", b"'", b"=", b"a", b"/", b" "):
            changed = bytearray(data)
            changed[offset : offset + 1] = byte
            variants[f"byte{offset}-{byte.hex()}"] = bytes(changed)
    cards = {
        "bitpix-float": "BITPIX  =                 16.0",
        "bitpix-bad": "BITPIX  =                   12",
        "naxis-negative": "NAXIS   =                   -1",
        "naxis-string": "NAXIS   = '2'",
        "simple-free": "SIMPLE  = T",
        "simple-false": "SIMPLE  =                    F",
        "lowercase": "simple  =                    T",
        "no-equals": "SIMPLE                       T",
    }
    for name, card in cards.items():
        keyword = card[:8].upper()
        index = next(i for i in range(0, 2880, 80) if data[i : i + 8].decode() == keyword)
        changed = bytearray(data)
        changed[index : index + 80] = card.ljust(80).encode()
        variants[name] = bytes(changed)
    made = []
    for name, content in variants.items():
        path = directory / f"{good.stem}-{name}.fits"
        path.write_bytes(content)
        made.append(path)
    return made


def test_good_images_are_valid_without_astropy(tmp_path: Path) -> None:
    for path in good_files(tmp_path):
        assert fits_layout.judge(str(path)) == fits_layout.VALID, path.name
        assert astropy_accepts(path), path.name


def test_other_files_are_left_to_astropy(tmp_path: Path) -> None:
    for path in other_files(tmp_path):
        assert fits_layout.judge(str(path)) == fits_layout.UNSURE, path.name


def test_never_valid_where_astropy_refuses_never_invalid_where_it_accepts(tmp_path: Path) -> None:
    counts = {"valid": 0, "invalid": 0, "unsure": 0, "astropy refuses": 0}
    (tmp_path / "good").mkdir()
    for good in good_files(tmp_path / "good"):
        for path in damaged(good, tmp_path):
            verdict = fits_layout.judge(str(path))
            accepted = astropy_accepts(path)
            counts["astropy refuses"] += not accepted
            if verdict.valid:
                counts["valid"] += 1
                assert accepted, f"{path.name}: valid here, but astropy refuses it"
            elif verdict.problem is not None:
                counts["invalid"] += 1
                assert not accepted, f"{path.name}: {verdict.problem}, but astropy accepts it"
            else:
                counts["unsure"] += 1
    # The comparison means something only if every verdict occurred many times.
    assert min(counts.values()) >= 50, counts


@pytest.fixture(scope="module")
def extension_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    directory = tmp_path_factory.mktemp("hypothesis")
    return next(p for p in good_files(directory) if p.name == "extensions.fits").read_bytes()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(flips=st.lists(st.tuples(st.integers(0, 3 * 2880 - 1), st.integers(0, 255)), max_size=3))
def test_random_damage_to_headers(
    tmp_path: Path, extension_file: bytes, flips: list[tuple[int, int]]
) -> None:
    content = bytearray(extension_file)
    for offset, value in flips:
        content[offset] = value
    path = tmp_path / "random.fits"
    path.write_bytes(bytes(content))
    verdict = fits_layout.judge(str(path))
    if verdict.sure:
        assert verdict.valid == astropy_accepts(path), (flips, verdict)


def test_not_fits_at_all_is_refused_in_the_butlers_words(tmp_path: Path) -> None:
    path = tmp_path / "notes.fits"
    path.write_text("these are my notes, not an image\n" * 100)
    for action in (get_format("fits").check, get_format("fits").read):
        with pytest.raises(FormatError) as caught:
            action(str(path))
        message = str(caught.value)
        assert "not a valid fits file" in message and str(path) in message
        assert "ignore_missing_simple" not in message and "try with" not in message


def test_a_truncated_image_is_refused_with_both_sizes(tmp_path: Path) -> None:
    path = written(tmp_path / "image.fits", fits.HDUList([fits.PrimaryHDU(np.ones((40, 40)))]))
    whole = path.read_bytes()
    path.write_bytes(whole[:-2880])
    with pytest.raises(FormatError, match=f"{len(whole) - 2880} bytes long .* need {len(whole)}"):
        get_format("fits").check(str(path))


def test_checking_an_image_imports_no_astropy(tmp_path: Path) -> None:
    good = good_files(tmp_path)
    code = (
        "import sys\n"
        "from butler.formats import get_format\n"
        f"for path in {[str(p) for p in good]!r}:\n"
        "    get_format('fits').check(path)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('astropy', 'numpy'))\n"
        "assert not heavy, heavy[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True)
