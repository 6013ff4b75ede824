"""Near-miss names: "did you mean calexp?" for a mistyped dataset type, genre, label,
storage format or command.

Standard library only, and difflib is imported when a name is missing, not before:
every front end (library, command line, mount) phrases its errors with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from butler.errors import UnknownLabelError

# difflib's ratio: 0.6 is its own default and catches one or two wrong, missing or
# swapped letters in names of 4+ letters ("calxep", "calexpp", "exposre") without
# pairing names that merely share a few letters ("raw" and "src" score 0).
CUTOFF = 0.6
MOST = 3  # more than three suggestions is a list, and the messages list the names anyway


def close_matches(name: str, known: Iterable[str]) -> list[str]:
    """The known names closest to ``name``, best first; a match ignoring case comes first."""
    if not isinstance(name, str) or len(name) > 255:  # hostile input: no suggestion
        return []
    candidates = [str(each) for each in known if each != name]
    folded = [each for each in candidates if each.casefold() == name.casefold()]
    if folded:
        return folded[:MOST]
    import difflib

    return difflib.get_close_matches(name, candidates, n=MOST, cutoff=CUTOFF)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``"did you mean calexp?"`` (or ``"calexp or calexpBackground?"``), or ``""``."""
    matches = close_matches(name, known)
    if not matches:
        return ""
    if len(matches) == 1:
        return f"did you mean {matches[0]}?"
    return f"did you mean {', '.join(matches[:-1])} or {matches[-1]}?"


def unknown_label_error(
    label: str, readable: Sequence[str], write_only: Sequence[str]
) -> UnknownLabelError:
    """``repositoryLabel=label`` picks no repository that is read: a write-only output or a typo."""
    known = ", ".join(readable)
    if label in write_only:
        return UnknownLabelError(
            f"repository {label!r} is a write-only output (mode w): it is never read, so "
            "repositoryLabel cannot pick it; give it mode rw to read from it, or pick one of "
            f"the repositories read: {known}"
        )
    suggestion = did_you_mean(label, readable)
    return UnknownLabelError(
        f"no repository is labelled {label!r}"
        + (f"; {suggestion}" if suggestion else "")
        + f" (known labels: {known})"
    )
