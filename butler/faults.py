"""Fault injection for the crash tests: die at a named step of the write protocol.

``BUTLER_TEST_CRASH_AT=<step>`` (or ``<step>#<n>``, the n-th time the step is
reached) makes the process ``os._exit(70)`` there, as a crash would: no
``finally``, no ``atexit``, nothing flushed.  It is read once at import;
production never sets it.  The steps, in protocol order: ``staged``,
``journal`` (after each output's journal), ``prepared`` (the commit point),
``renamed``, ``applied``, ``settled``.  Random-instant kills (``kill -9``
from outside) need no hook.

``BUTLER_TEST_FILL_AT=<step>`` with ``BUTLER_TEST_FILL_PATH=<file>`` fills the
disk holding that file at the step (a real full disk: the file grows until the
filesystem says ENOSPC), for the tests of what a full disk after the commit
point does.
"""

from __future__ import annotations

import os

_CRASH_AT = os.environ.get("BUTLER_TEST_CRASH_AT")
_FILL_AT = os.environ.get("BUTLER_TEST_FILL_AT")
_FILL_PATH = os.environ.get("BUTLER_TEST_FILL_PATH")
_count = 0


def enabled() -> bool:
    return _CRASH_AT is not None or _FILL_AT is not None


def crash_point(step: str) -> None:
    """Die here if BUTLER_TEST_CRASH_AT is ``step`` or ``step#n`` (the n-th time here)."""
    global _count
    if step == _FILL_AT and _FILL_PATH:
        _fill(_FILL_PATH)
    if _CRASH_AT is None:
        return
    name, _, nth = _CRASH_AT.partition("#")
    if name == step:
        _count += 1
        if _count >= int(nth or 1):
            os._exit(70)


def _fill(path: str) -> None:
    """Grow ``path`` until its filesystem is full (then leave it so)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    block = bytes(1 << 16)
    try:
        while True:
            try:
                os.write(fd, block)
            except OSError:
                if len(block) == 1:
                    break
                block = block[: len(block) // 2]
    finally:
        os.close(fd)
