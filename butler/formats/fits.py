"""FITS files: images (``fits``) and tables (``fits-table``).

The only module of the butler that imports astropy.  Files are always read
whole (``memmap=False``) and closed before `read` returns: a memory map or a
lazily loaded HDU would keep the file open after the call, which leaks file
handles and keeps a deleted or replaced file alive behind the caller's back.

The butler opens each file itself and hands astropy the open stream, so the
file is closed even when astropy fails half-way through ``fits.open`` (it would
leak its own file object when one of its warnings is raised as an error).

astropy reports some damage only with a warning ("File may have been
truncated"): `read` refuses a file shorter than its headers announce and lets
other warnings reach the caller; `check` records every warning as a problem.

astropy is imported when a file is first read or written, not with this module:
`check` first reads the headers itself (`fits_layout`), which settles a plain
file of images without astropy (a one-file ``butler put`` would otherwise spend
most of its time importing it), and asks astropy only about everything else.
"""

from __future__ import annotations

import io
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from butler.errors import FormatError
from butler.formats import fits_layout
from butler.formats.base import (
    StorageFormat,
    bad_file,
    choose_python,
    require_signature,
    wrong_object,
)

#: Every FITS file begins with its primary header's first card: keyword SIMPLE padded to
#: eight columns, then the value indicator "=" (FITS standard 4.0, section 4.4.1.1).
SIGNATURE = b"SIMPLE  ="

if TYPE_CHECKING:
    import numpy.typing as npt
    from astropy.io import fits

# File-system errors say the path is wrong, not the file: they pass through unchanged.
_ACCESS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)

# Keywords that describe the FITS layout of the data rather than the data; they mean nothing
# next to an HDF5 dataset (BZERO/BSCALE are already applied to the data astropy returns).
_STRUCTURAL_KEYWORDS = frozenset(
    {"SIMPLE", "XTENSION", "BITPIX", "EXTEND", "PCOUNT", "GCOUNT", "BZERO", "BSCALE", "BLANK"}
    | {"CHECKSUM", "DATASUM"}
)

# astropy's advice for a file without a SIMPLE card names a Python argument of its own
# open(); the butler opens the file, so the advice means nothing to its users.
_ASTROPY_ADVICE = re.compile(r"\s*If this is really a FITS file, try with \w+=True\.?")


def _extension_hdus() -> tuple[type, ...]:
    from astropy.io import fits

    return (fits.ImageHDU, fits.CompImageHDU, fits.BinTableHDU, fits.TableHDU)


def _table_hdus() -> tuple[type, ...]:
    from astropy.io import fits

    return (fits.BinTableHDU, fits.TableHDU)


class FitsFormat:
    """A FITS file of any HDUs, usually an image: an `HDUList` or the data of its first HDU."""

    name = "fits"
    extension = ".fits"
    default_python = "astropy.io.fits.HDUList"
    python_types = ("astropy.io.fits.HDUList", "numpy.ndarray")
    signature = SIGNATURE

    def check_start(self, first: bytes) -> None:
        require_signature(self, SIGNATURE, first)

    def serialize(self, obj: object) -> bytes:
        return _write(self._as_hdu_list(obj))

    def read(self, path: str, python: str | None = None) -> object:
        python = choose_python(self, python)
        with _opened(self, path) as hdus:
            for hdu in hdus:
                hdu.data  # noqa: B018 - loads the data while the file is still open
            if python == "astropy.io.fits.HDUList":
                return hdus
            return _first_data(self, path, hdus)

    def check(self, path: str) -> None:
        verdict = fits_layout.judge(path)
        if verdict.problem is not None:
            raise bad_file(self, path, verdict.problem)
        if not verdict.valid:  # not plainly a file of images: astropy decides
            _check(self, path, need_table=False)

    def _as_hdu_list(self, obj: object) -> fits.HDUList:
        import numpy as np
        from astropy.io import fits

        if isinstance(obj, fits.HDUList):
            return obj
        if isinstance(obj, fits.PrimaryHDU):
            return fits.HDUList([obj])
        if isinstance(obj, _extension_hdus()):
            return fits.HDUList([fits.PrimaryHDU(), obj])
        if isinstance(obj, np.ndarray):
            if isinstance(obj, np.ma.MaskedArray):
                raise FormatError(
                    "the fits format cannot write a masked array: FITS images have no mask; "
                    "write array.filled(value), or the mask as a second image in an HDUList"
                )
            if obj.dtype.names is not None or obj.dtype.hasobject:
                raise FormatError(
                    f"the fits format writes numeric images, not arrays of dtype {obj.dtype}; "
                    "use the fits-table format for a structured array"
                )
            return fits.HDUList([fits.PrimaryHDU(obj)])
        raise wrong_object(
            self,
            obj,
            "an astropy.io.fits HDUList, PrimaryHDU, ImageHDU (or other extension HDU) "
            "or a numpy.ndarray",
        )


class FitsTableFormat:
    """A table in the first table HDU of a FITS file, read as an astropy `Table`."""

    name = "fits-table"
    extension = ".fits"
    default_python = "astropy.table.Table"
    python_types = ("astropy.table.Table",)
    signature = SIGNATURE

    def check_start(self, first: bytes) -> None:
        require_signature(self, SIGNATURE, first)

    def serialize(self, obj: object) -> bytes:
        import numpy as np
        from astropy.io import fits
        from astropy.table import Table

        if isinstance(obj, Table):
            table = obj
        elif isinstance(obj, np.ndarray) and obj.dtype.names is not None:
            table = Table(obj, copy=False)
        else:
            raise wrong_object(self, obj, "an astropy.table.Table or a numpy structured array")
        try:
            # Bytes, not str: FITS stores ASCII bytes, so this skips a conversion of every string.
            hdu = fits.table_to_hdu(table, character_as_bytes=True)
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise FormatError(f"the fits-table format cannot write this table: {error}") from error
        return _write(fits.HDUList([fits.PrimaryHDU(), hdu]))

    def read(self, path: str, python: str | None = None) -> object:
        from astropy.table import Table

        choose_python(self, python)
        # str columns come back as str, as they were put; NaN stays NaN, not masked, for the
        # same reason (mask_invalid=False), and it saves a pass over every float column.
        with _opened(self, path, character_as_bytes=False) as hdus:
            index = _first_table_index(hdus)
            if index is None:
                raise bad_file(self, path, "it has no table HDU")
            return Table.read(hdus, hdu=index, mask_invalid=False)

    def check(self, path: str) -> None:
        _check(self, path, need_table=True)


def image_and_cards(obj: object) -> tuple[npt.NDArray[Any], list[tuple[str, object]]] | None:
    """The data of the first HDU with data and its header cards, if ``obj`` is an HDU(List).

    For the hdf5 format, which must not import astropy itself.  ``None`` if ``obj`` is
    not an astropy HDU or HDUList.  COMMENT and HISTORY cards are joined by newlines;
    structural keywords and cards without a simple value are left out.
    """
    if "astropy.io.fits" not in sys.modules:  # then obj cannot be one of its HDUs
        return None
    import numpy as np
    from astropy.io import fits

    if isinstance(obj, fits.HDUList):
        hdus = list(obj)
    elif isinstance(obj, (fits.PrimaryHDU, *_extension_hdus())):
        hdus = [obj]
    else:
        return None
    for hdu in hdus:
        if hdu.data is None:
            continue
        data = np.asarray(hdu.data) if hdu.is_image else _table_array(hdu.data)
        return data, _cards(hdu.header)
    raise FormatError("this HDUList has no HDU with data, so there is nothing to write")


def table_array(obj: object) -> npt.NDArray[Any] | None:
    """An astropy `Table` as a numpy structured array, or ``None`` if ``obj`` is no Table."""
    if "astropy.table" not in sys.modules:  # then obj cannot be a Table
        return None
    import numpy as np
    from astropy.table import Table

    if not isinstance(obj, Table):
        return None
    array = obj.as_array()
    if isinstance(array, np.ma.MaskedArray):
        if np.any(array.mask):
            raise FormatError(
                "this table has masked values, which the hdf5 format does not store; "
                "fill them first with table.filled(), or use the fits-table format"
            )
        array = array.data
    return np.asarray(array)


def _write(hdus: fits.HDUList) -> bytes:
    # Native-endian data is byte-swapped in place while it is written and swapped back
    # after: that avoids copying a large image, but the object must not change meanwhile.
    from astropy.io import fits

    buffer = io.BytesIO()
    try:
        hdus.writeto(buffer, output_verify="exception")
    except (fits.VerifyError, ValueError, TypeError, KeyError) as error:
        raise FormatError(f"cannot write this object as FITS: {error}") from error
    return buffer.getvalue()


# warnings.catch_warnings swaps process-wide state and is not thread-safe: one check at a time.
_check_lock = threading.Lock()


@contextmanager
def _opened(
    storage_format: StorageFormat, path: str, *, character_as_bytes: bool = True
) -> Iterator[fits.HDUList]:
    """The whole file, read and closed when the block ends; damage becomes a `FormatError`."""
    from astropy.io import fits

    with open(path, "rb") as stream:
        try:
            with fits.open(
                stream, memmap=False, lazy_load_hdus=False, character_as_bytes=character_as_bytes
            ) as hdus:
                _require_complete(storage_format, path, hdus)
                yield hdus
        except (*_ACCESS_ERRORS, FormatError):
            raise
        # astropy raises many kinds of error (and, if the caller asks, warnings) for a
        # damaged file; each means the same here.
        except Exception as error:
            problem = _ASTROPY_ADVICE.sub("", str(error))
            raise bad_file(storage_format, path, problem) from error


def _check(storage_format: StorageFormat, path: str, *, need_table: bool) -> None:
    from astropy.io import fits

    problems: list[str] = []
    with _check_lock, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _opened(storage_format, path) as hdus:
            try:
                hdus.verify("exception")
            except fits.VerifyError as error:
                problems.append(str(error))
            if need_table and _first_table_index(hdus) is None:
                problems.append("it has no table HDU")
    problems.extend(_ASTROPY_ADVICE.sub("", str(warning.message)) for warning in caught)
    if problems:
        raise bad_file(storage_format, path, "; ".join(problems))


def _require_complete(storage_format: StorageFormat, path: str, hdus: fits.HDUList) -> None:
    """Refuse a truncated file, which astropy only warns about (and then reads as garbage)."""
    needed = max(
        (info["datLoc"] + info["datSpan"] for info in map(hdus.fileinfo, range(len(hdus)))),
        default=0,
    )
    size = os.path.getsize(path)
    if size < needed:
        raise bad_file(storage_format, path, f"it is {size} bytes long but its HDUs need {needed}")


def _first_data(storage_format: StorageFormat, path: str, hdus: fits.HDUList) -> npt.NDArray[Any]:
    import numpy as np

    for hdu in hdus:
        if hdu.data is None:
            continue
        data = np.asarray(hdu.data) if hdu.is_image else _table_array(hdu.data)
        # FITS is big-endian; hand numpy users native order, as any array they make has.
        # The array was just read and nobody else holds it, so swap it where it lies:
        # a converting copy takes twice the memory and is many times slower.
        if not data.dtype.isnative:
            native = data.dtype.newbyteorder("=")
            if data.flags.writeable:
                data = data.byteswap(inplace=True).view(native)
            else:
                data = data.astype(native)
        return data
    raise bad_file(storage_format, path, "no HDU has data, so there is no array to return")


def _first_table_index(hdus: fits.HDUList) -> int | None:
    table_hdus = _table_hdus()
    for index, hdu in enumerate(hdus):
        if isinstance(hdu, table_hdus):
            return index
    return None


def _table_array(data: object) -> npt.NDArray[Any]:
    # Through a Table, which applies TSCAL/TZERO and decodes FITS booleans and strings.
    import numpy as np
    from astropy.table import Table

    return np.asarray(Table(data).as_array())


def _cards(header: fits.Header) -> list[tuple[str, object]]:
    cards: list[tuple[str, object]] = []
    notes: dict[str, list[str]] = {"COMMENT": [], "HISTORY": []}
    for card in header.cards:
        keyword, value = card.keyword, card.value
        if keyword in notes:
            notes[keyword].append(str(value))
        elif _is_descriptive(keyword) and isinstance(value, (str, int, float, bool)):
            cards.append((keyword, value))
    cards.extend((keyword, "\n".join(lines)) for keyword, lines in notes.items() if lines)
    return cards


def _is_descriptive(keyword: str) -> bool:
    return bool(keyword) and keyword not in _STRUCTURAL_KEYWORDS and not keyword.startswith("NAXIS")
