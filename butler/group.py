"""Group commit: puts from many threads, committed a batch at a time.

A put's cost is dominated by its flushes, paid while it holds its outputs' locks.
When several threads put to the same outputs at once (a pipeline's workers, the
mount daemon's closes, ``butler put`` of many files), one of them, the
*leader*, takes every request waiting and commits them together: one lock
round, one registry transaction per output, the journals flushed side by side.
The others wait for their result.  A lone put is a batch of one and waits for
nothing.  The batch's code (:func:`butler.transaction.put`) keeps each put all
or nothing on its own: one that fails in prepare is undone alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Request(Protocol):
    done: bool


R = TypeVar("R", bound=Request)

#: Requests one leader commits together, at most: larger batches hold the locks longer
#: (readers of the registry never wait for them; writers in other processes do).
MOST = 64


class GroupCommit(Generic[R]):
    """Requests from many threads, run ``MOST`` at a time by one of them."""

    def __init__(self, run: Callable[[list[R]], None]) -> None:
        self._run = run
        self._queue: list[R] = []
        self._leading = False
        self._condition = threading.Condition()

    def submit(self, request: R) -> None:
        """Return once ``request`` is done (its batch ran in this thread or another)."""
        self.submit_all([request])

    def submit_all(self, requests: list[R]) -> None:
        """Return once every request is done."""
        with self._condition:
            self._queue.extend(requests)
            while not all(request.done for request in requests):
                if self._leading:
                    self._condition.wait()
                    continue
                self._leading = True
                batch, self._queue = self._queue[:MOST], self._queue[MOST:]
                self._condition.release()
                try:
                    self._run(batch)
                finally:
                    self._condition.acquire()
                    self._leading = False
                    self._condition.notify_all()
