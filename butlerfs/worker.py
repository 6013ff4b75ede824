"""Blocking calls (SQLite, disk) in worker threads, so the trio loop never stalls.

(And the two disk calls that can tell, without waiting, that they would not block:
:func:`open_cached` and :func:`read_cached`, which spare a hot open or read the hop.)

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

import ctypes
import errno
import os
import sqlite3
import sys
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

_SYS_OPENAT2 = 437  # the same number on every Linux architecture (new syscalls share it)
_RESOLVE_CACHED = 0x20
_AT_FDCWD = -100


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


class _CachedOpen:
    def __init__(self) -> None:
        self.enabled = sys.platform.startswith("linux")
        self._syscall: Callable[..., int] | None = None
        self._how = _OpenHow(os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, 0, _RESOLVE_CACHED)

    def __call__(self, path: str) -> int | None:
        if self._syscall is None:
            if not self.enabled:
                return None
            try:
                function = ctypes.CDLL(None, use_errno=True).syscall
            except (OSError, AttributeError):
                self.enabled = False
                return None
            function.restype = ctypes.c_long
            function.argtypes = (
                ctypes.c_long,
                ctypes.c_int,
                ctypes.c_char_p,
                ctypes.c_void_p,
                ctypes.c_size_t,
            )
            self._syscall = function
        fd = self._syscall(
            _SYS_OPENAT2,
            _AT_FDCWD,
            os.fsencode(path),
            ctypes.addressof(self._how),
            ctypes.sizeof(self._how),
        )
        if fd >= 0:
            return fd
        number = ctypes.get_errno()
        if number == errno.ENOENT:  # the kernel's cache knows the name is absent
            raise FileNotFoundError(number, os.strerror(number), path)
        if number in (errno.ENOSYS, errno.EINVAL, errno.E2BIG, errno.EPERM):
            self.enabled = False  # no openat2, or no RESOLVE_CACHED (Linux < 5.12), or seccomp
            self._syscall = None
        return None  # EAGAIN: not all cached; any other error: the worker says it properly


#: ``open_cached(path)``: an O_RDONLY fd if the kernel has every component of ``path`` in
#: its caches; FileNotFoundError if its caches know that ``path`` does not exist (a
#: negative entry); else None (the caller opens it in a worker thread).
open_cached = _CachedOpen()


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
