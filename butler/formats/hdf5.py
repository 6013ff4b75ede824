"""HDF5 files through h5py, the optional ``[hdf5]`` extra: an export format for arrays.

What is written, kept modest on purpose:

- a numpy array: dataset ``data``;
- an astropy HDUList or HDU: the data of its first HDU with data as dataset ``data``,
  with that HDU's header cards as attributes of the dataset;
- an astropy Table: a compound dataset ``table``.

HDF5 has no fixed-width Unicode type, so str values are stored UTF-8 encoded and
read back as bytes.  Reading returns the ``data`` dataset, else ``table``, else the
first dataset in the file.
"""

from __future__ import annotations

import itertools
import sys
from typing import Any

import numpy as np
import numpy.typing as npt

from butler.errors import FormatError
from butler.formats.base import bad_file, choose_python, require_signature, wrong_object

try:
    import h5py
except ImportError as error:  # raised by get_format("hdf5"), so only users of hdf5 need h5py
    raise FormatError(
        "the hdf5 format needs h5py: install the hdf5 extra: pip install 'butlerfs[hdf5]'"
    ) from error

#: The HDF5 superblock's signature.  HDF5 allows a "user block" before the superblock
#: (which then starts at 512, 1024, ...); h5py writes none, and a file with one is
#: refused at its first write: this format's files begin with the signature.
SIGNATURE = b"\x89HDF\r\n\x1a\n"

_ACCESS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)

# In-memory files still carry a name, and HDF5 refuses two open files of the same name.
_file_numbers = itertools.count()


class Hdf5Format:
    """Arrays, images with their header, and tables as an HDF5 file."""

    name = "hdf5"
    extension = ".h5"
    default_python = "numpy.ndarray"
    python_types = ("numpy.ndarray",)
    signature = SIGNATURE

    def check_start(self, first: bytes) -> None:
        require_signature(self, SIGNATURE, first)

    def serialize(self, obj: object) -> bytes:
        dataset_name, array, attributes = self._parts(obj)
        if array.dtype.hasobject:
            raise FormatError(
                f"the hdf5 format cannot write an array of dtype {array.dtype}: "
                "convert it to a fixed-size dtype first"
            )
        name = f"butler-serialize-{next(_file_numbers)}.h5"
        with h5py.File(name, "w", driver="core", backing_store=False) as file:
            try:
                dataset = file.create_dataset(dataset_name, data=_encode_text(array))
                for key, value in attributes:
                    dataset.attrs[key] = value
            except (TypeError, ValueError) as error:
                raise FormatError(f"the hdf5 format cannot write this object: {error}") from error
            file.flush()
            return bytes(file.id.get_file_image())

    def read(self, path: str, python: str | None = None) -> object:
        choose_python(self, python)
        try:
            with h5py.File(path, "r") as file:
                dataset = _main_dataset(file)
                if dataset is None:
                    raise bad_file(self, path, "it holds no dataset")
                return np.asarray(dataset[()])
        except _ACCESS_ERRORS:
            raise
        except OSError as error:
            raise bad_file(self, path, str(error)) from error

    def check(self, path: str) -> None:
        try:
            with h5py.File(path, "r") as file:
                file.visit(lambda name: None)  # reads every object header
        except _ACCESS_ERRORS:
            raise
        except OSError as error:
            raise bad_file(self, path, str(error)) from error

    def _parts(self, obj: object) -> tuple[str, npt.NDArray[Any], list[tuple[str, object]]]:
        if isinstance(obj, np.ndarray):
            if isinstance(obj, np.ma.MaskedArray):
                raise FormatError(
                    "the hdf5 format cannot write a masked array; write array.filled(value)"
                )
            return "data", np.asarray(obj), []
        # Only fits.py imports astropy; an astropy object means astropy is imported already.
        if "astropy" in sys.modules:
            from butler.formats import fits

            image = fits.image_and_cards(obj)
            if image is not None:
                return "data", image[0], image[1]
            table = fits.table_array(obj)
            if table is not None:
                return "table", table, []
        raise wrong_object(
            self, obj, "a numpy.ndarray, an astropy.io.fits HDUList or HDU, or an astropy Table"
        )


def _main_dataset(file: h5py.File) -> h5py.Dataset | None:
    for name in ("data", "table"):
        if isinstance(file.get(name), h5py.Dataset):
            return file[name]
    first: h5py.Dataset | None = file.visititems(
        lambda name, item: item if isinstance(item, h5py.Dataset) else None
    )
    return first


def _encode_text(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``array`` with every str field as UTF-8 bytes, which HDF5 can store; else unchanged."""
    if array.dtype.names is None:
        return np.char.encode(array, "utf-8") if array.dtype.kind == "U" else array
    if not any(array.dtype[name].base.kind == "U" for name in array.dtype.names):
        return array
    columns = {name: _encode_text(array[name]) for name in array.dtype.names}
    dtype = np.dtype([(name, col.dtype, col.shape[array.ndim :]) for name, col in columns.items()])
    encoded = np.empty(array.shape, dtype)
    for name, column in columns.items():
        encoded[name] = column
    return encoded
