"""Every error the butler raises.

Each class derives from ``ButlerError`` and from the built-in exception a
caller would naturally catch, so ``except LookupError`` works as well as
``except ButlerError``.  Messages say what was wrong and what to do.

    ButlerError(Exception)
    ├── ConfigError(ValueError)              bad butler.yaml, aggregator file or policy
    │   └── UnknownFormatError               storage format not registered
    ├── InvalidDataIdError(ValueError)       hostile, mistyped or missing data ID values
    ├── UnknownDatasetTypeError(LookupError) dataset type defined nowhere in the search path
    ├── UnknownLabelError(LookupError)       repositoryLabel names no repository
    ├── DatasetNotFoundError(LookupError)    nothing matches (names what was searched)
    ├── AmbiguousDataIdError(LookupError)    a partial data ID matches several datasets
    ├── DatasetExistsError(FileExistsError)  on_exists: error and the data ID is taken
    ├── NoOutputError(PermissionError)       no writable output accepts the dataset type
    ├── ReadOnlyError(PermissionError)       an attempt to change an input
    ├── FormatError(TypeError)               an object or file the format cannot handle
    ├── RepositoryError(OSError)             not a repository, unknown format version, I/O
    └── TransactionError(OSError)            a put failed; nothing was changed (see message)
"""

from __future__ import annotations

import errno as _errno


class ButlerError(Exception):
    """Root of every error raised by the butler."""

    #: The errno a filesystem front end should answer with.
    errno: int = _errno.EIO


class ConfigError(ButlerError, ValueError):
    errno = _errno.EINVAL


class UnknownFormatError(ConfigError):
    pass


class InvalidDataIdError(ButlerError, ValueError):
    errno = _errno.EACCES


class UnknownDatasetTypeError(ButlerError, LookupError):
    errno = _errno.ENOENT


class UnknownLabelError(ButlerError, LookupError):
    errno = _errno.ENOENT


class DatasetNotFoundError(ButlerError, LookupError):
    errno = _errno.ENOENT


class AmbiguousDataIdError(ButlerError, LookupError):
    errno = _errno.ENOENT

    def __init__(self, message: str, candidates: list[object] | None = None) -> None:
        super().__init__(message)
        self.candidates = candidates or []


class DatasetExistsError(ButlerError, FileExistsError):
    errno = _errno.EEXIST


class NoOutputError(ButlerError, PermissionError):
    errno = _errno.EROFS


class ReadOnlyError(ButlerError, PermissionError):
    errno = _errno.EROFS


class FormatError(ButlerError, TypeError):
    errno = _errno.EINVAL


class RepositoryError(ButlerError, OSError):
    errno = _errno.EIO


class TransactionError(ButlerError, OSError):
    errno = _errno.EIO
