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

    #: The errno a filesystem front end should answer with.
    errno: int = _errno.EIO

    def __init__(self, *args: object, hint: Hint | None = None) -> None:
        super().__init__(*args)
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

    def __init__(
        self, message: str, candidates: list[object] | None = None, *, hint: Hint | None = None
    ) -> None:
        super().__init__(message, hint=hint)
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
