"""Steps a put (butler.transaction) and a removal (butler.removal) share: the journals
written in every output side by side, the errors that say what failed where and what
to do, and settling when due.

Partial-failure policy, stated once: a failure before the commit point leaves no
output changed (no file, no row, no butler.yaml change) and raises with the errno
that says why (:func:`error_before_commit`); after it, only a crash or a lost disk stops apply, and
the next open (or ``butler repair``) completes it in every output (:func:`not_applied`).
"""

from __future__ import annotations

import concurrent.futures
import errno
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from butler import faults, layout
from butler.durable import fsync_directory, write_new
from butler.errors import (
    ButlerError,
    RegistryDamagedError,
    RepositoryError,
    TransactionError,
    reason_of,
)
from butler.journal import PutEntry, encode, with_inline
from butler.prepare import Prepared
from butler.repository import DataRepository

T = TypeVar("T")


def settle_if_due(repos: Sequence[DataRepository]) -> None:
    for repo in repos:
        if repo.settlement.due():
            try:
                repo.settlement.settle()
            except (ButlerError, OSError) as exc:  # not fatal: the journals stay
                repo.problems.append(f"settling failed: {exc}")


def not_applied(
    what: str, failures: list[tuple[DataRepository, BaseException]]
) -> TransactionError:
    where = "; ".join(f"{repo.label}: {reason_of(exc)}" for repo, exc in failures)
    return TransactionError(
        f"{what} is committed but not yet applied in {where}; it completes when the "
        "repository is next opened, or run 'butler repair'",
        errno=errno_of(failures[0][1]),
    )


class Failure(Exception):
    """A step failed in one output."""

    def __init__(self, error: BaseException, repo: DataRepository) -> None:
        super().__init__(str(error))
        self.error = error
        self.repo = repo


def write_journals(items: Sequence[Prepared]) -> None:
    """Each item's journal, durably: the outputs side by side (one thread each), in each
    its journals written and fsynced one after the other (after the first, an fsync finds
    little left to flush), then its journal directory fsynced once."""
    by_repo: dict[Path, list[Prepared]] = {}
    for item in items:
        by_repo.setdefault(item.repo.path, []).append(item)

    def write(group: list[Prepared]) -> None:
        root = group[0].repo.root
        for item in group:
            entry, payloads = item.entry, list[bytes]()
            if isinstance(entry, PutEntry) and item.inline:
                entry, payloads = with_inline(entry, item.inline)
            write_new(root, layout.journal(entry.txid), encode(entry, payloads), sync=True)
            faults.crash_point("journal")
        fsync_directory(root, layout.JOURNAL)

    groups = list(by_repo.values())
    failure = first_failure(each(write, groups), [group[0].repo for group in groups])
    if failure is not None:
        for item in items:
            item.repo.root.unlink(layout.journal(item.entry.txid))
        raise Failure(*failure)


def errno_of(exc: BaseException) -> int:
    number = getattr(exc, "errno", None)
    return number if isinstance(number, int) else errno.EIO


def error_before_commit(exc: BaseException, repo: DataRepository, doing: str) -> BaseException:
    """The error to raise for a failure in ``repo`` before the commit point (nothing was
    changed anywhere)."""
    if isinstance(exc, ButlerError) and (
        not isinstance(exc, RepositoryError | TransactionError)
        or isinstance(exc, RegistryDamagedError)
    ):
        return exc  # its own message says what to do (exists, a link, a lost registry)
    advice = {
        errno.ENOSPC: "free space on that disk, then retry",
        errno.EDQUOT: "free space within your quota, then retry",
        errno.EROFS: "that filesystem is read-only; remount it read-write, then retry",
        errno.EACCES: "make it writable for this user, then retry",
        errno.EPERM: "clear what forbids it (an immutable flag, ownership), then retry",
        errno.EMFILE: "too many open files in this process; close some, then retry",
    }
    number = errno_of(exc)
    return TransactionError(
        f"{doing} in output {repo.label} ({repo.path}): {reason_of(exc)}; no output was "
        f"changed; {advice.get(number, 'fix the output, then retry')}",
        errno=number,
    )


# -- running one step in every output at once --------------------------------------------

_pool: concurrent.futures.ThreadPoolExecutor | None = None


def each(
    function: Callable[[T], object], items: Iterable[T], concurrently: bool = True
) -> list[object]:
    """``function`` over ``items`` (concurrently: fsync releases the GIL; the first item
    runs in this thread); each result or the exception it raised."""
    items = list(items)
    if len(items) < 2 or not concurrently or faults.enabled():  # crash tests: fixed order
        return [call(function, item) for item in items]
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="butler-put")
    futures = [_pool.submit(call, function, item) for item in items[1:]]
    first = call(function, items[0])
    return [first, *(future.result() for future in futures)]


def call(function: Callable[[T], object], item: T) -> object:
    try:
        return function(item)
    except BaseException as exc:
        return exc


def first_failure(
    results: Sequence[object], repos: Sequence[DataRepository]
) -> tuple[BaseException, DataRepository] | None:
    """The first exception among ``results`` and the repository it came from."""
    for result, repo in zip(results, repos, strict=True):
        if isinstance(result, BaseException):
            return result, repo
    return None
