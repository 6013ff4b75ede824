"""Exceptions → errno, in one table, applied once around every FUSE handler.

pyfuse3 lets a handler raise only ``FUSEError``; anything else would end the
session.  So every handler of :class:`butlerfs.operations.Operations` is
wrapped by :func:`translated`, and the handlers themselves raise what is
natural where the problem is found:

    pyfuse3.FUSEError          passed through unchanged
    butler.errors.ButlerError  its ``errno`` (EROFS, EACCES, ENOENT, ...); but when the
                               library's answer is a generic EIO or EINVAL and the
                               failure came from the system (an OSError in its
                               cause chain) with an errno that says why (ENOSPC,
                               EDQUOT, EMFILE, ...), that errno
    OSError                    its own errno (EIO when it has none)
    sqlite3.Error              a registry's answer: SQLITE_FULL is ENOSPC, READONLY
                               EROFS, PERM EACCES, NOMEM ENOMEM; any other EIO, with
                               SQLite's reason (not a bug: no traceback)
    anything else              EIO, and the traceback is logged: a bug in the daemon

A *refusal* (a write the mount will not do: EROFS, EACCES, EINVAL, ...) is
logged as one line with the reason, because the errno alone cannot tell a
user why ``cp`` failed; the line also goes to ``MOUNT/.butler/log``
(butlerfs.logbook), with the path the request was about (:data:`REQUEST_PATH`,
set by the handlers).  Answers that are part of normal operation (ENOENT for a
probe, ENODATA for an unknown xattr, EXDEV that makes ``mv`` copy) are logged
only at debug level.
"""

from __future__ import annotations

import contextvars
import errno
import functools
import inspect
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import pyfuse3

from butler.errors import ButlerError
from butlerfs.logbook import Refusal

log = logging.getLogger("butlerfs")

P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound=type)

#: Errnos that are ordinary answers, not refusals worth a log line at the default level.
ORDINARY = frozenset(
    {
        errno.ENOENT,
        errno.ENODATA,
        errno.EEXIST,
        errno.ENOTEMPTY,
        errno.EXDEV,
        errno.ENOTSUP,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.ESTALE,
        errno.ERANGE,
    }
)

#: Handlers that answer no client request: pyfuse3 forbids them to raise at all.
_SILENT = frozenset({"forget"})

#: Errnos of the system that say why better than the library's generic EIO or EINVAL
#: (a full disk is ENOSPC to ``cp``, not "Input/output error").
SYSTEM_CAUSES = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
        errno.EFBIG,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
    }
)
_GENERIC = frozenset({errno.EIO, errno.EINVAL})

#: SQLite's primary result codes (``sqlite3.Error.sqlite_errorname``) that say why.
SQLITE_ERRNOS = {
    "SQLITE_FULL": errno.ENOSPC,
    "SQLITE_READONLY": errno.EROFS,
    "SQLITE_PERM": errno.EACCES,
    "SQLITE_NOMEM": errno.ENOMEM,
}

#: Failures that are answers, not bugs: logged with their reason, never a traceback.
EXPECTED = (ButlerError, OSError, sqlite3.Error)

#: The mount path the current request is about, for the log line of its refusal.
REQUEST_PATH: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "butlerfs_request_path", default=None
)


def errno_of(exc: BaseException) -> int:
    """The errno a FUSE client should see for ``exc`` (the table of the module docstring)."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    if isinstance(exc, ButlerError):
        number = exc.errno or errno.EIO  # per instance; None: the library could not tell
        if number in _GENERIC:
            cause = _system_cause(exc)
            if cause is not None:
                return cause
        return number
    if isinstance(exc, OSError):
        return exc.errno or errno.EIO
    if isinstance(exc, sqlite3.Error):
        return _sqlite_errno(exc) or errno.EIO
    return errno.EIO


def _sqlite_errno(exc: sqlite3.Error) -> int | None:
    """The errno for SQLite's result code (an extended one, SQLITE_READONLY_DBMOVED, by its
    primary code), if it says why."""
    name = getattr(exc, "sqlite_errorname", None) or ""
    return SQLITE_ERRNOS.get("_".join(name.split("_")[:2]))


def _system_cause(exc: BaseException) -> int | None:
    """The errno of the first system failure in ``exc``'s cause chain, if it says why."""
    seen: set[int] = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and not isinstance(cause, ButlerError):
            return cause.errno if cause.errno in SYSTEM_CAUSES else None
        if isinstance(cause, sqlite3.Error):
            return _sqlite_errno(cause)
        cause = cause.__cause__ or cause.__context__
    return None


#: What to do, for the system's errors that reach a client as they are.
ADVICE = {
    errno.ENOSPC: "free space where the outputs are, then write it again",
    errno.EDQUOT: "the outputs' owner is over quota: free space or raise the quota",
    errno.EMFILE: "the daemon has too many files open: close some (or raise its limit, "
    "LimitNOFILE= or ulimit -n, and mount again), then retry",
    errno.ENFILE: "the system has too many files open: close some, then retry",
    errno.ENOMEM: "the daemon is out of memory: retry when there is more",
}


def reason_of(exc: BaseException) -> str:
    """The human reason: a ButlerError's message, an OSError's strerror and file name (and
    what to do, for the system's errors that say it)."""
    if isinstance(exc, OSError) and not isinstance(exc, ButlerError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        advice = ADVICE.get(exc.errno or 0)
        return f"{where}{exc.strerror}" + (f"; {advice}" if advice else "")
    return str(exc)


def refusal(number: int, message: str) -> OSError:
    """An OSError the daemon raises itself, e.g. ``refusal(errno.EROFS, "...why...")``."""
    return OSError(number, message)


def _answer(operation: str, exc: Exception) -> int:
    number = errno_of(exc)
    name = errno.errorcode.get(number, str(number))
    if not isinstance(exc, EXPECTED):
        refusal = Refusal(operation, REQUEST_PATH.get(), name, "internal error: a bug")
        log.error(
            "%s failed with an unexpected error (answered EIO)",
            operation,
            exc_info=exc,
            extra={"refusal": refusal},
        )
    elif number in ORDINARY:
        log.debug("%s: %s: %s", operation, name, reason_of(exc))
    else:
        reason = reason_of(exc)
        refusal = Refusal(operation, REQUEST_PATH.get(), name, reason)
        log.warning(
            "refused %s: %s (%s): %s",
            operation,
            name,
            os.strerror(number),
            reason,
            extra={"refusal": refusal},
        )
    return number


def translate(operation: str, handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """``handler`` raising only FUSEError, with the errno of the table above."""

    @functools.wraps(handler)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        token = REQUEST_PATH.set(None)
        failure = None
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            failure = pyfuse3.FUSEError(_answer(operation, exc))
        finally:
            REQUEST_PATH.reset(token)
        # Raised outside the except block: the answer keeps no reference to the failure,
        # its traceback or their frames (which may hold a whole payload).
        assert failure is not None
        raise failure

    return guarded


def _silenced(
    operation: str, handler: Callable[P, Awaitable[None]]
) -> Callable[P, Awaitable[None]]:
    @functools.wraps(handler)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            await handler(*args, **kwargs)
        except Exception as exc:
            log.error("%s failed (ignored: no request to answer)", operation, exc_info=exc)

    return guarded


def translated(cls: C) -> C:
    """Class decorator: wrap every pyfuse3 handler ``cls`` defines, so none can be missed."""
    for name, member in list(vars(cls).items()):
        base = getattr(pyfuse3.Operations, name, None)
        if base is None or not inspect.iscoroutinefunction(base):
            continue
        wrap = _silenced if name in _SILENT else translate
        setattr(cls, name, wrap(name, member))
    return cls
