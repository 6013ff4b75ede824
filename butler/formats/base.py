"""The contract every storage format keeps, and small helpers the built-in formats share.

A format turns one kind of Python object into the bytes of one file and back.
It is a small class with four attributes and three methods (`StorageFormat`);
nothing inherits from a base class, so a plug-in format needs no import from here.

Optionally, a format says how its files begin, so that bytes which cannot be
its file are refused at the first write (the mount fails that ``write()`` with
EINVAL) rather than at the end: an attribute ``signature`` (the bytes every file
begins with, or None) and a method ``check_start(first_bytes)`` raising
`FormatError`.  `check_start` below asks either; a format with neither accepts
any start.

This module imports neither numpy nor astropy: `import butler.formats` must stay cheap.
"""

from __future__ import annotations

import sys
from typing import Protocol, runtime_checkable

from butler.errors import FormatError


@runtime_checkable
class StorageFormat(Protocol):
    """One file format: how an object becomes the bytes of a file, and how a file is read back.

    Implementations raise only `FormatError` for objects or files they cannot handle;
    `OSError` from the file system (a missing file, no permission) passes through unchanged.
    """

    # Read-only properties, so that a plain class attribute implements them:
    # ``python_types = ("dict", "list")`` would not match a settable ``tuple[str, ...]``.

    @property
    def name(self) -> str:
        """The registered name, e.g. ``"fits"``."""
        ...

    @property
    def extension(self) -> str:
        """The file name extension, with its dot, e.g. ``".fits"``."""
        ...

    @property
    def default_python(self) -> str:
        """The dotted Python type `read` returns when none is asked for."""
        ...

    @property
    def python_types(self) -> tuple[str, ...]:
        """Every dotted Python type `read` can return."""
        ...

    def serialize(self, obj: object) -> bytes:
        """The object as the exact bytes of a file.

        Called once per put; the same bytes are then written to every output, so the
        result must not depend on where it is written.  An object of a type this format
        does not write raises `FormatError` naming the types it does write.
        """
        ...

    def read(self, path: str, python: str | None = None) -> object:
        """Read a file of this format as the dotted Python type ``python``.

        ``None`` means `default_python`; a type not in `python_types` raises `FormatError`.
        The returned object holds no open file (no memory map, no lazily read parts).
        """
        ...

    def check(self, path: str) -> None:
        """Raise `FormatError` if the file is not a valid file of this format.

        The message names the file, what is wrong with it and what to do.
        """
        ...


def check_start(storage_format: StorageFormat, first: bytes) -> None:
    """Raise `FormatError` if ``first``, the first bytes written, cannot begin a file of
    ``storage_format`` (its ``check_start``, else its ``signature``; else anything goes).

    ``first`` may be shorter than the format's signature (a short first write): then it
    must be the signature's beginning.
    """
    custom = getattr(storage_format, "check_start", None)
    if callable(custom):
        custom(first)
        return
    signature = getattr(storage_format, "signature", None)
    if isinstance(signature, bytes):
        require_signature(storage_format, signature, first)


def require_signature(storage_format: StorageFormat, signature: bytes, first: bytes) -> None:
    """`FormatError` unless ``first`` begins with ``signature`` (or is its beginning)."""
    shown = first[: len(signature)]
    if not (first.startswith(signature) or signature.startswith(first)):
        raise FormatError(
            f"the bytes do not begin like a {storage_format.name} file (one begins with "
            f"{signature!r}; these begin with {shown!r})"
        )


def python_type_name(obj: object) -> str:
    """The dotted name of ``type(obj)``, as short as its package exports it.

    ``numpy.ndarray``, ``dict``, ``astropy.io.fits.HDUList`` (not the defining module
    ``astropy.io.fits.hdu.hdulist``), ``astropy.table.Table``.  Only modules that are
    already imported are consulted, so this never imports anything.
    """
    cls = type(obj)
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    parts = module.split(".")
    for end in range(1, len(parts)):
        package = sys.modules.get(".".join(parts[:end]))
        if package is not None and getattr(package, cls.__name__, None) is cls:
            return f"{package.__name__}.{cls.__qualname__}"
    return f"{module}.{cls.__qualname__}"


def choose_python(storage_format: StorageFormat, python: str | None) -> str:
    """The Python type `read` should return: ``python``, or the format's default if ``None``."""
    if python is None:
        return storage_format.default_python
    if python not in storage_format.python_types:
        raise FormatError(
            f"the {storage_format.name} format cannot read a file as {python}; "
            f"it reads as: {', '.join(storage_format.python_types)}"
        )
    return python


def wrong_object(storage_format: StorageFormat, obj: object, writes: str) -> FormatError:
    """The error for an object of a type the format does not write."""
    return FormatError(
        f"the {storage_format.name} format cannot write a {python_type_name(obj)}; "
        f"it writes {writes}"
    )


def bad_file(storage_format: StorageFormat, path: str, problem: str) -> FormatError:
    """The error for a file that is not a valid file of the format."""
    return FormatError(
        f"{path} is not a valid {storage_format.name} file: {problem}; "
        f"check that the file is complete and really is {storage_format.name}, "
        "or choose the format that matches it"
    )
