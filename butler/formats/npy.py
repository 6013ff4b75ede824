"""numpy arrays as ``.npy`` files, never pickled.

Arrays of Python objects are refused on write and on read: storing them needs
pickle, and loading a pickle runs code from the file.
"""

from __future__ import annotations

import io
import os
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

from butler.errors import FormatError
from butler.formats.base import bad_file, choose_python, require_signature, wrong_object

#: Every .npy file begins with this (numpy.lib.format: "\x93NUMPY", then the version).
SIGNATURE = b"\x93NUMPY"


class NpyFormat:
    """One numpy array of a fixed-size dtype (numbers, booleans, strings, records)."""

    name = "npy"
    extension = ".npy"
    default_python = "numpy.ndarray"
    python_types = ("numpy.ndarray",)
    signature = SIGNATURE

    def check_start(self, first: bytes) -> None:
        require_signature(self, SIGNATURE, first)

    def serialize(self, obj: object) -> bytes:
        if not isinstance(obj, np.ndarray):
            raise wrong_object(self, obj, "a numpy.ndarray")
        if isinstance(obj, np.ma.MaskedArray):
            raise FormatError(
                "the npy format cannot write a masked array: .npy has no mask; write "
                "array.filled(value), or the data and the mask as two datasets"
            )
        if obj.dtype.hasobject:
            raise FormatError(
                f"the npy format cannot write an array of dtype {obj.dtype}: Python objects "
                "need pickle, which the butler never uses; convert to a fixed-size dtype"
            )
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(obj), allow_pickle=False)
        return buffer.getvalue()

    def read(self, path: str, python: str | None = None) -> object:
        choose_python(self, python)
        with open(path, "rb") as stream:
            self._read_header(path, stream)  # names the problem better than read_array does
            stream.seek(0)
            try:
                return npy_format.read_array(stream, allow_pickle=False)
            except ValueError as error:
                raise bad_file(self, path, str(error)) from error

    def check(self, path: str) -> None:
        with open(path, "rb") as stream:
            self._read_header(path, stream)

    def _read_header(self, path: str, stream: IO[bytes]) -> None:
        """Check the header and that the file holds all the data it announces."""
        try:
            version = npy_format.read_magic(stream)
            if version == (1, 0):
                shape, _, dtype = npy_format.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, _, dtype = npy_format.read_array_header_2_0(stream)
            else:  # 3.0 (UTF-8 field names) has no public header reader: read it all
                stream.seek(0)
                npy_format.read_array(stream, allow_pickle=False)
                return
        except ValueError as error:
            raise bad_file(self, path, str(error)) from error
        if dtype.hasobject:
            raise bad_file(
                self, path, f"its dtype {dtype} holds Python objects, which need pickle to load"
            )
        needed = stream.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        size = os.fstat(stream.fileno()).st_size
        if size < needed:
            raise bad_file(self, path, f"it is {size} bytes long but its array needs {needed}")
