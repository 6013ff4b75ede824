"""Every error as one line in the command line's terms.

The library's errors name what was wrong; what to do next travels as a `Hint`
(butler/errors.py), phrased here for a shell user: ``butler define work icExp
--genre GENRE``, not ``Butler.define('icExp', genre=...)``.  Data IDs the library
prints as Python dicts (``{'visit': 1, 'ccd': 2}``) read as the command line
writes them (``visit=1 ccd=2``).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

from butler.errors import ButlerError

PROG = "butler"

#: The command line's phrasing of every hint; the keys are those of ``LIBRARY_HINTS``.
#: ``{source}`` is the REPO_OR_AGG the user typed.
COMMAND_LINE_HINTS: Mapping[str, str] = {
    "create": "create a repository there with 'butler create {path}', or fix the path",
    "define": "define it first: butler define {source} {name} --genre GENRE "
    "('butler types {source}' lists the dataset types and genres)",
    "query": "list what there is with 'butler query {source} {dataset_type}'",
    "register_format": "fix the name (a new format is registered in Python: see docs/policy.md)",
}


class CommandError(Exception):
    """A failure the command line itself detects; its message is the whole report."""


def describe_error(exc: BaseException, command: str, source: str | None = None) -> str:
    """One line saying what went wrong and what to do, in the command line's terms."""
    if isinstance(exc, ButlerError):
        return _as_pairs(_phrased(exc, source))
    if isinstance(exc, CommandError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        if exc.filename2:
            where += f" -> {exc.filename2}"
        return f"{command} failed: {exc.strerror or exc}{where}"
    return (
        f"internal error in '{command}' ({type(exc).__name__}: {exc}); "
        "rerun with --debug for the traceback and report it"
    )


def one_line(text: str) -> str:
    return " ".join(text.split()) or "failed"


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``1 file``, ``2 files``; ``1 repository``, ``3 repositories``."""
    if count == 1:
        return f"1 {singular}"
    return f"{count} {plural_form or singular + 's'}"


def _phrased(exc: ButlerError, source: str | None) -> str:
    if exc.hint is None:
        return exc.problem
    values = {"source": shlex.quote(source) if source else "REPO_OR_AGG", **exc.hint.values}
    if "path" in values:
        values["path"] = shlex.quote(values["path"])
    return f"{exc.problem}; {COMMAND_LINE_HINTS[exc.hint.action].format_map(values)}"


# A data ID as the library prints it: a dict of identifier keys and int or plain str values.
_VALUE = r"(?:-?\d+|'[^'\\]*')"
_DATA_ID = re.compile(rf"\{{'[A-Za-z_]\w*': {_VALUE}(?:, '[A-Za-z_]\w*': {_VALUE})*\}}")
_PAIR = re.compile(rf"'([A-Za-z_]\w*)': ({_VALUE})")


def _as_pairs(message: str) -> str:
    """``{'visit': 1, 'ccd': '2'}`` as ``visit=1 ccd=2``: how data IDs are typed here."""

    def pairs(match: re.Match[str]) -> str:
        words = []
        for key, value in _PAIR.findall(match.group(0)):
            text = value[1:-1] if value.startswith("'") else value
            words.append(f"{key}={shlex.quote(text)}")
        return " ".join(words)

    return _DATA_ID.sub(pairs, message)
