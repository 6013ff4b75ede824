"""Fault injection for the crash tests: die at a named step of the write protocol.

``BUTLER_TEST_CRASH_AT=<step>`` (or ``<step>#<n>``, the n-th time the step is
reached) makes the process ``os._exit(70)`` there, as a crash would: no
``finally``, no ``atexit``, nothing flushed.  It is read once at import;
production never sets it.  The steps, in protocol order: ``staged``,
``journal`` (after each output's journal), ``prepared`` (the commit point),
``renamed``, ``applied``, ``settled``.  Random-instant kills (``kill -9``
from outside) need no hook.
"""

from __future__ import annotations

import os

_CRASH_AT = os.environ.get("BUTLER_TEST_CRASH_AT")
_count = 0


def enabled() -> bool:
    return _CRASH_AT is not None


def crash_point(step: str) -> None:
    """Die here if BUTLER_TEST_CRASH_AT is ``step`` or ``step#n`` (the n-th time here)."""
    global _count
    if _CRASH_AT is None:
        return
    name, _, nth = _CRASH_AT.partition("#")
    if name == step:
        _count += 1
        if _count >= int(nth or 1):
            os._exit(70)
