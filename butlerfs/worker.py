"""Blocking calls (SQLite, disk) in worker threads, so the trio loop never stalls.

Every FUSE request is a trio task; one slow registry query must not hold up
the ``read`` of another process.  The capacity limit bounds the threads (and
so the SQLite connections, one per thread) however many requests arrive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

import trio

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: Enough to overlap disk and SQLite waits of a busy mount; more would only add connections.
DEFAULT_THREADS = 16


class Worker:
    def __init__(self, threads: int = DEFAULT_THREADS) -> None:
        self._limiter = trio.CapacityLimiter(threads)

    async def run(self, function: Callable[[*Ts], T], *args: *Ts) -> T:
        """``function(*args)`` in a worker thread; its exception is raised here."""
        return await trio.to_thread.run_sync(function, *args, limiter=self._limiter)
