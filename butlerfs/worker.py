"""Blocking calls (SQLite, disk) in worker threads, so the trio loop never stalls.

(And :func:`read_cached`, a read that can tell, without waiting, that it would not block,
and :class:`Reader`, which waits for pages on their way from the disk without a thread:
they spare a read the hop.  The hot open's equivalent is the library's
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

import errno
import os
import sqlite3
import time
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
    found = _read_nowait(fd, size, offset, file_size)
    return found if isinstance(found, memoryview) else None


class _Unsupported:
    """The file system cannot tell what is cached (RWF_NOWAIT: EOPNOTSUPP)."""


UNSUPPORTED = _Unsupported()


def _read_nowait(
    fd: int, size: int, offset: int, file_size: int
) -> memoryview | _Unsupported | None:
    wanted = min(size, file_size - offset)
    if wanted <= 0:
        return memoryview(b"")
    buffer = bytearray(wanted)
    try:
        got = os.preadv(fd, (buffer,), offset, os.RWF_NOWAIT)
    except OSError as exc:  # EAGAIN: not (all) cached yet
        return UNSUPPORTED if exc.errno == errno.EOPNOTSUPP else None
    if got != wanted:
        return None  # partly cached (or the file changed): the worker reads it all
    return memoryview(buffer)


#: How long a read of pages the kernel is fetching waits for them on the trio thread,
#: polling with RWF_NOWAIT between other requests, before it goes to a worker thread.
#: A local disk answers a 4 KiB read in ~0.1 ms; the hop costs ~0.05-0.15 ms more.
READ_SPIN_SECONDS = 0.0005
#: After this many reads in a row that the disk did not answer within the spin, reads go
#: straight to a worker (a slow disk: spinning would only burn CPU) for READ_SPIN_REST.
READ_SPIN_MISSES = 8
READ_SPIN_REST = 1024


class Reader:
    """Reads of committed files for the daemon's ``read``: from the page cache at once;
    else the first RWF_NOWAIT attempt has started the disk read (the kernel's readahead
    runs even when the call returns EAGAIN), so the trio thread polls for the pages while
    serving other requests, for up to :data:`READ_SPIN_SECONDS`; a disk slower than that
    gets a worker thread, as before.  Nothing here ever blocks the trio thread."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._misses = 0
        self._resting = 0

    async def read(self, fd: int, size: int, offset: int, file_size: int) -> bytes | memoryview:
        found = _read_nowait(fd, size, offset, file_size)
        if isinstance(found, memoryview):
            return found
        if found is UNSUPPORTED:
            pass  # nothing to poll with: a worker reads it
        elif self._resting:
            self._resting -= 1
        else:
            deadline = time.perf_counter() + READ_SPIN_SECONDS
            while True:
                await trio.sleep(0)  # other requests go on meanwhile
                data = read_cached(fd, size, offset, file_size)
                if data is not None:
                    self._misses = 0
                    return data
                if time.perf_counter() > deadline:
                    break
            self._misses += 1
            if self._misses >= READ_SPIN_MISSES:
                self._misses = 0
                self._resting = READ_SPIN_REST
        return await self.worker.run(os.pread, fd, size, offset)
