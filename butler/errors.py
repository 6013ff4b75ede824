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
    ├── UnsafePathError(PermissionError)     a symbolic link (or other non-file) where the
    │                                        butler must find its own file or directory
    ├── FormatError(TypeError)               an object or file the format cannot handle
    ├── RepositoryError(OSError)             not a repository, unknown format version, I/O
    │   └── RegistryDamagedError             registry missing, empty or behind the records
    └── TransactionError(OSError)            a put or removal failed (the message says
                                             whether anything was changed)

Every error has an ``errno``: what a filesystem front end answers with.  It is
the instance's own when one was given (``TransactionError("...",
errno=errno.ENOSPC)``, or ``RepositoryError(errno.ENOSPC, "full")`` in the
OSError style), else the class's ``default_errno``.
"""

from __future__ import annotations

import errno as _errno
from typing import ClassVar


class ButlerError(Exception):
    """Root of every error raised by the butler."""

    #: The errno a filesystem front end answers with, unless the instance has its own.
    default_errno: ClassVar[int] = _errno.EIO
    #: Always set on an instance (never a class attribute: for the OSError subclasses a
    #: class value would hide the instance's own, as ``OSError(ENOSPC, "full")`` sets it).
    errno: int | None

    def __init__(self, *args: object, errno: int | None = None) -> None:
        super().__init__(*args)
        if errno is not None:
            self.errno = errno
        elif not isinstance(getattr(self, "errno", None), int):
            self.errno = type(self).default_errno


class ConfigError(ButlerError, ValueError):
    default_errno = _errno.EINVAL


class UnknownFormatError(ConfigError):
    pass


class InvalidDataIdError(ButlerError, ValueError):
    default_errno = _errno.EACCES


class UnknownDatasetTypeError(ButlerError, LookupError):
    default_errno = _errno.ENOENT


class UnknownLabelError(ButlerError, LookupError):
    default_errno = _errno.ENOENT


class DatasetNotFoundError(ButlerError, LookupError):
    default_errno = _errno.ENOENT


class AmbiguousDataIdError(ButlerError, LookupError):
    default_errno = _errno.ENOENT

    def __init__(self, message: str, candidates: list[object] | None = None) -> None:
        super().__init__(message)
        self.candidates = candidates or []


class DatasetExistsError(ButlerError, FileExistsError):
    default_errno = _errno.EEXIST


class NoOutputError(ButlerError, PermissionError):
    default_errno = _errno.EROFS


class ReadOnlyError(ButlerError, PermissionError):
    default_errno = _errno.EROFS


class UnsafePathError(ButlerError, PermissionError):
    default_errno = _errno.EACCES


class FormatError(ButlerError, TypeError):
    default_errno = _errno.EINVAL


class RepositoryError(ButlerError, OSError):
    default_errno = _errno.EIO


class RegistryDamagedError(RepositoryError):
    pass


class TransactionError(ButlerError, OSError):
    default_errno = _errno.EIO


def os_error_text(exc: OSError) -> str:
    """``strerror (file)`` of an OSError, without Python's ``[Errno n]`` prefix."""
    text = exc.strerror or str(exc)
    return f"{text} ({exc.filename})" if exc.filename else text


def reason_of(exc: BaseException) -> str:
    """What went wrong, in one phrase: an OSError's text, or a ButlerError's message."""
    if isinstance(exc, OSError) and not isinstance(exc, ButlerError):
        return os_error_text(exc)
    return str(exc)
