"""What went wrong, where users and admins can see it: ``MOUNT/.butler/log`` and the log file.

An errno cannot say why ``cp`` failed, so every refusal and error is logged with
its reason (butlerfs.errors).  Two places show those lines without ``-f``:

- :class:`Logbook`, a logging handler that keeps the most recent refusals and
  errors, one line each, for the file ``MOUNT/.butler/log`` (readable by whoever
  may read the mount)::

      2026-11-20T10:31:02Z create /raw/v0000009/raw-v0000009-c001.fits EROFS: no output
      accepts raw, only read-only inputs hold it; add an output for it to the aggregator

  (one line in the file; wrapped here)

- the log file of a background daemon (:func:`default_log_file`, or ``-o log=FILE``),
  which has every line the daemon logs; syslog gets them too.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

#: Lines ``.butler/log`` keeps: the last few hundred refusals are what a user looks for.
RECENT_LINES = 500

#: FUSE requests by the system call a user made.
_CALLS = {"flush": "close", "setattr": "truncate", "lookup": "stat", "getxattr": "getfattr"}


@dataclass(frozen=True)
class Refusal:
    """What a refused request was, attached to its log record (``extra={"refusal": ...}``)."""

    operation: str
    path: str | None  # the mount path, when the request named one
    errno_name: str  # EROFS, ENOSPC, ...
    reason: str


class Logbook(logging.Handler):
    """The recent refusals and errors (WARNING and above), one line each."""

    def __init__(self, lines: int = RECENT_LINES) -> None:
        super().__init__(logging.WARNING)
        self._lines: collections.deque[str] = collections.deque(maxlen=lines)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(line_of(record))
        except Exception:  # a broken record must not break the request that logged it
            self.handleError(record)

    def text(self) -> bytes:
        return "".join(line + "\n" for line in list(self._lines)).encode()


def line_of(record: logging.LogRecord) -> str:
    """``TIME OPERATION /PATH ERRNO: reason`` for a refusal; ``TIME LEVEL message`` else."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
    refusal = getattr(record, "refusal", None)
    if isinstance(refusal, Refusal):
        reason = refusal.reason
        where = ""
        if refusal.path is not None:
            where = f" /{refusal.path}"
            for said in (f"/{refusal.path}: ", f"{refusal.path}: "):  # said once is enough
                reason = reason.removeprefix(said)
        operation = _CALLS.get(refusal.operation, refusal.operation)
        text = f"{when} {operation}{where} {refusal.errno_name}: {reason}"
    else:
        text = f"{when} {record.levelname} {record.getMessage()}"
        if record.exc_info:
            text += " (the traceback is in the daemon's log)"
    return " ".join(text.split())  # one line, whatever the message held


def default_log_file(mountpoint: str) -> Path:
    """Where a background daemon logs when ``-o log=FILE`` is not given.

    ``$XDG_STATE_HOME/butlerfs/`` (``~/.local/state/butlerfs/``) for a user;
    ``/var/log/butlerfs/`` for root, unless ``XDG_STATE_HOME`` is set.  The file is
    named after the mountpoint, as systemd names mount units: ``/home/alice/data``
    logs to ``home-alice-data.log``.
    """
    state = os.environ.get("XDG_STATE_HOME")
    if state and os.path.isabs(state):
        directory = Path(state) / "butlerfs"
    elif os.geteuid() == 0:
        directory = Path("/var/log/butlerfs")
    else:
        directory = Path.home() / ".local" / "state" / "butlerfs"
    return directory / f"{mount_name(mountpoint)}.log"


def mount_name(mountpoint: str) -> str:
    """``/home/alice/data`` → ``home-alice-data``; anything odd becomes ``_``."""
    parts = [part for part in os.path.abspath(mountpoint).split("/") if part]
    name = "-".join(re.sub(r"[^A-Za-z0-9._]", "_", part) for part in parts)
    return name or "root"
