"""A one-line progress bar on stderr, drawn only when stderr is a terminal.

    with ProgressBar("verify") as bar:
        maintenance.verify(source, progress=bar)   # bar(done, total) after each step

Standard library only and nothing imported at the top that the command line would not
import anyway, so ``butler --help`` stays fast.  Piped or redirected, it prints nothing:
a log file should not fill with carriage returns.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

REDRAW_SECONDS = 0.1  # ten frames a second reads as smooth and costs nothing
BAR_WIDTH = 30


class ProgressBar:
    """A ``Progress`` callback, ``bar(done, total)``, that draws ``label [####....] done/total``."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.enabled = _is_terminal(self.stream)
        self._drawn_at = 0.0
        self._width = 0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self._drawn_at < REDRAW_SECONDS:
            return
        self._drawn_at = now
        filled = BAR_WIDTH * done // total if total > 0 else BAR_WIDTH
        percent = 100 * done // total if total > 0 else 100
        line = (
            f"{self.label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total} {percent}%"
        )
        self._width = max(self._width, len(line))
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()

    def close(self) -> None:
        """Erase the bar, so whatever is printed next starts on a clean line."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False
