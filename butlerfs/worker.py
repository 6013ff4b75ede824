"""Blocking calls (SQLite, disk) in worker threads, so the trio loop never stalls.

(And :func:`read_cached`, a read that can tell, without waiting, that it would not block:
it spares a hot read the hop.  The hot open's equivalent is the library's
``Root.open_cached``.)

Every FUSE request is a trio task; one slow registry query must not hold up
the ``read`` of another process.  The capacity limit bounds the threads (and
so the SQLite connections, one per thread) however many requests arrive.

An expected failure (a ButlerError, an OSError, a registry's sqlite3.Error: a
refused put, a full disk)
leaves the thread without its traceback.  The traceback's frames hold the
failed call's locals — a put's whole payload among them — and trio's thread
machinery keeps the exception in reference cycles that the daemon's rare
garbage collections (butlerfs.daemon) would free only much later: three
refused 1.5 GB writes once kept 4.6 GB.  The message says what failed; a bug
(any other exception) keeps its traceback for the log.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

import trio

from butler.errors import ButlerError

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: Enough to overlap disk and SQLite waits of a busy mount; more would only add connections.
DEFAULT_THREADS = 16


class Worker:
    def __init__(self, threads: int = DEFAULT_THREADS) -> None:
        self._limiter = trio.CapacityLimiter(threads)

    async def run(self, function: Callable[[*Ts], T], *args: *Ts) -> T:
        """``function(*args)`` in a worker thread; its exception is raised here (an expected
        one without its traceback)."""
        return await trio.to_thread.run_sync(_called, function, *args, limiter=self._limiter)


def _called(function: Callable[[*Ts], T], *args: *Ts) -> T:
    try:
        return function(*args)
    except (ButlerError, OSError, sqlite3.Error) as exc:
        drop_tracebacks(exc)
        raise


def drop_tracebacks(exc: BaseException) -> None:
    """Cut ``exc`` and the exceptions it chains from their frames (and what they hold)."""
    seen: set[int] = set()
    waiting: list[BaseException | None] = [exc]
    while waiting:
        current = waiting.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        waiting += (current.__cause__, current.__context__)


# -- answered at once when they cannot block -----------------------------------
#
# A thread hop costs about 100 µs under FUSE load, three times a request's own round
# trip.  Opening a file whose path the kernel has cached and reading pages already in
# the page cache never wait for the disk, and the kernel can tell: openat2 with
# RESOLVE_CACHED and preadv with RWF_NOWAIT fail with EAGAIN instead of blocking.
# Then (and on kernels without them) the caller goes to a worker thread as before.


def read_cached(fd: int, size: int, offset: int, file_size: int) -> memoryview | None:
    """``size`` bytes at ``offset`` if all are in the page cache (or end the file), else None."""
    wanted = min(size, file_size - offset)
    if wanted <= 0:
        return memoryview(b"")
    buffer = bytearray(wanted)
    try:
        got = os.preadv(fd, (buffer,), offset, os.RWF_NOWAIT)
    except OSError:  # EAGAIN: not cached; EOPNOTSUPP: the filesystem cannot tell
        return None
    if got != wanted:
        return None  # partly cached (or the file changed): the worker reads it all
    return memoryview(buffer)
