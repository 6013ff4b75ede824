"""butlerfs.worker: blocking calls in threads, and reads that spare the thread when they can.

The Reader answers from the page cache without a worker thread; a file system that cannot
tell what is cached (RWF_NOWAIT unsupported, like /proc) goes to a worker at once.  (Reads
of pages on their way from a disk are exercised by the mount tests that drop pages from
the cache: tests/butlerfs/test_versions.py.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, TypeVarTuple

import trio

from butlerfs.worker import Reader, Worker

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class CountingWorker(Worker):
    """A Worker that counts the calls it runs in threads."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def run(self, function: Callable[[*Ts], T], *args: *Ts) -> T:
        self.calls += 1
        return await super().run(function, *args)


def test_cached_pages_are_read_without_a_thread(tmp_path: Path) -> None:
    path = tmp_path / "data"
    data = os.urandom(3 * 4096 + 100)
    path.write_bytes(data)  # just written: in the page cache
    worker = CountingWorker()
    reader = Reader(worker)
    fd = os.open(path, os.O_RDONLY)
    try:

        async def reads() -> list[bytes]:
            return [
                bytes(await reader.read(fd, 4096, 4096, len(data))),
                bytes(await reader.read(fd, 8192, 3 * 4096, len(data))),  # past the end
                bytes(await reader.read(fd, 10, len(data), len(data))),  # at the end
            ]

        found = trio.run(reads)
    finally:
        os.close(fd)
    assert found == [data[4096:8192], data[3 * 4096 :], b""]
    assert worker.calls == 0


def test_a_file_system_that_cannot_tell_is_read_in_a_thread() -> None:
    worker = CountingWorker()
    reader = Reader(worker)
    fd = os.open("/proc/self/status", os.O_RDONLY)  # RWF_NOWAIT: EOPNOTSUPP
    try:
        found = trio.run(reader.read, fd, 5, 0, 1 << 20)
    finally:
        os.close(fd)
    assert bytes(found) == b"Name:"
    assert worker.calls == 1
