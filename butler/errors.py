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

A message names what was wrong in terms every interface shares (dataset types,
data IDs, repositories, policy keys).  What to do next often depends on the
interface: a Python caller calls ``Butler.define``, a shell user runs ``butler
define``.  Such advice travels as a `Hint`, an action with its values; ``str()``
phrases it for Python (`LIBRARY_HINTS`) and the command line phrases it its own
way (``butler/cli/messages.py``).  Raise ``ButlerError(problem, hint=Hint(...))``
rather than writing a Python call or a command into the message.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class Hint:
    """What to do next, as an action (a key of `LIBRARY_HINTS`) and the values it names."""

    action: str
    values: Mapping[str, str] = field(default_factory=dict)


#: How the library phrases each hint; every front end has a table with the same keys.
LIBRARY_HINTS: Mapping[str, str] = {
    "create": "create it with DataRepository.create({path!r}) (or 'butler create' in a shell)",
    "define": "define it first, e.g. Butler.define({name!r}, genre=...)",
    "query": "list what there is with Butler.query({dataset_type!r}, ...)",
    "register_format": (
        "fix the name, or register the format with "
        "butler.formats.register_format(name, 'package.module:ClassName')"
    ),
}


class ButlerError(Exception):
    """Root of every error raised by the butler.

    ``str(error)`` is the problem and, if the error carries a `Hint`, the library's
    phrasing of it; ``error.problem`` is the problem alone, for a front end to add its own.
    """

    #: The errno a filesystem front end answers with, unless the instance has its own.
    default_errno: ClassVar[int] = _errno.EIO
    #: Always set on an instance (never a class attribute: for the OSError subclasses a
    #: class value would hide the instance's own, as ``OSError(ENOSPC, "full")`` sets it).
    errno: int | None

    def __init__(self, *args: object, errno: int | None = None, hint: Hint | None = None) -> None:
        super().__init__(*args)
        if errno is not None:
            self.errno = errno
        elif not isinstance(getattr(self, "errno", None), int):
            self.errno = type(self).default_errno
        self.hint = hint

    @property
    def problem(self) -> str:
        """The message without the hint."""
        return super().__str__()

    def phrased(self, hints: Mapping[str, str]) -> str:
        """The problem followed by the hint, phrased by ``hints`` (an interface's table)."""
        if self.hint is None:
            return self.problem
        return f"{self.problem}; {hints[self.hint.action].format_map(self.hint.values)}"

    def __str__(self) -> str:
        return self.phrased(LIBRARY_HINTS)


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

    def __init__(
        self, message: str, candidates: list[object] | None = None, *, hint: Hint | None = None
    ) -> None:
        super().__init__(message, hint=hint)
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
