"""The all-or-nothing duplicated put, and removal, across outputs.

A put of one dataset to outputs O1…On (docs/design.md has the safety argument):

1. **Stage** (no lock): each payload is written to ``.butler/staging/<txid>.<owner>.<n>``
   in every output; large ones are fsynced there, small ones travel in the journal.
2. **Prepare** (every output locked, in path order): recover dead writers' journals;
   open the registry's write transaction; assign the version; check or make
   everything applying needs — template and version directories (never through a
   link), a directory entry in each (a probe link), no directory or link where the
   file goes, no immutable file to replace, the registry rows inserted (uncommitted),
   space kept in ``.butler/reserve``, a staged ``butler.yaml`` if the output must
   record the dataset type.  Any failure here changes nothing.
3. **Commit point**: each output's journal is written durably (file and directory
   fsync).  The put is committed exactly when every output holds its journal.
4. **Apply** each output (:mod:`butler.apply`) and commit its registry rows: the put
   is visible.  Its journal stays until settled (:mod:`butler.settle`).

A removal follows the same steps with a removal journal; its apply takes the
file off its template path (the version keeps its name) and marks it removed.

Partial-failure policy, stated once: a failure before the commit point leaves no
output changed (no file, no row, no butler.yaml change) and raises with the
errno that says why; after it, only a crash or a lost disk stops apply, and the
next open (or ``butler repair``) completes it in every output.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TypeVar

from butler import faults, layout
from butler.apply import apply_put, apply_removal, commit
from butler.durable import fsync_directory, write_new
from butler.errors import (
    ButlerError,
    RegistryDamagedError,
    RepositoryError,
    TransactionError,
    reason_of,
)
from butler.journal import PutEntry, RemovalEntry, encode, new_txid, with_inline
from butler.prepare import (
    INLINE_LIMIT,
    Definition,
    Payload,
    PlannedFile,
    Prepared,
    Target,
    discard,
    entry_for,
    prepare_put,
    prepare_removal,
    stage,
    unlink_all,
)
from butler.recovery import recover_locked
from butler.registry import canonical_data_id
from butler.repository import DataRepository

T = TypeVar("T")


def put(
    targets: Sequence[Target],
    dataset_type: str,
    data_id: Mapping[str, int | str],
    payloads: Mapping[str, Payload],
    provenance: Mapping[str, object],
) -> list[PutEntry]:
    """Write one dataset to every target, all or nothing.  One entry per target, in order."""
    txid = new_txid()
    what = f"{dataset_type} {dict(data_id)}"
    staged = [
        (target.repo, layout.staged_name(txid, target.repo.locks.owner(), index), planned)
        for target in targets
        for index, planned in enumerate(target.files)
    ]
    # Small payloads are written without fsync: a thread hop would cost more than it saves.
    flushed = any(payloads[p.storage].size > INLINE_LIMIT for _, _, p in staged)
    results = _each(
        lambda item: stage(item[0], item[1], payloads[item[2].storage]), staged, flushed
    )
    failure = _first_failure(results, [repo for repo, _, _ in staged])
    if failure is None:  # a large staged file's name must survive too: recovery reads it
        large = list(
            {repo.path: repo for repo, _, p in staged if payloads[p.storage].size > INLINE_LIMIT}
            .values()
        )  # fmt: skip
        results = _each(lambda repo: fsync_directory(repo.root, layout.STAGING), large)
        failure = _first_failure(results, large)
    if failure is not None:
        unlink_all((repo, layout.staged(name)) for repo, name, _ in staged)
        raise _failed(*failure, f"put of {what} failed while writing")
    faults.crash_point("staged")

    participants = tuple(str(target.repo.path) for target in targets)
    with contextlib.ExitStack() as stack:
        for repo in sorted({t.repo.path: t.repo for t in targets}.values(), key=lambda r: r.path):
            stack.enter_context(repo.locks.repository())
        committed = time.time()
        prepared: list[Prepared] = []
        try:
            for target in targets:
                entry = entry_for(target, txid, dataset_type, data_id, payloads, provenance)
                entry = replace(entry, participants=participants, committed=committed)
                try:
                    prepared.append(prepare_put(stack, target, entry, payloads))
                except Exception as exc:
                    failed = _failed(exc, target.repo, f"put of {what} failed while preparing")
                    if failed is exc:
                        raise
                    raise failed from exc
        except BaseException:
            discard(prepared, staged)
            raise
        _commit_point(prepared, staged, what)
        return [p.entry for p in _apply_all(prepared, what)]  # type: ignore[misc]


def remove(
    repos: Sequence[DataRepository], dataset_type: str, data_id: Mapping[str, int | str]
) -> list[DataRepository]:
    """Remove the current version of a dataset from every repository in ``repos`` that
    holds it, all or nothing.  Returns those it was removed from (maybe none)."""
    txid = new_txid()
    key = canonical_data_id(data_id)
    what = f"removal of {dataset_type} {dict(data_id)}"
    with contextlib.ExitStack() as stack:
        for repo in sorted({r.path: r for r in repos}.values(), key=lambda r: r.path):
            stack.enter_context(repo.locks.repository())
        holding = []
        repo = repos[0]
        try:
            for repo in repos:
                recover_locked(repo)
                writer = stack.enter_context(repo.registry.writer())
                rows = writer.current(dataset_type, key)
                if rows:
                    holding.append((repo, writer, rows))
            participants = tuple(str(repo.path) for repo, _, _ in holding)
            prepared = []
            committed = time.time()
            for repo, writer, rows in holding:
                entry = RemovalEntry(
                    txid,
                    dataset_type,
                    dict(data_id),
                    rows[0].version,
                    committed,
                    tuple(row.path for row in rows),
                    participants,
                )
                prepared.append(prepare_removal(repo, writer, entry))
        except Exception as exc:
            failed = _failed(exc, repo, f"{what} failed while preparing")
            if failed is exc:
                raise
            raise failed from exc
        if not prepared:
            return []
        _commit_point(prepared, [], what)
        return [p.repo for p in _apply_all(prepared, what)]


# -- the steps ---------------------------------------------------------------------


def _commit_point(
    prepared: Sequence[Prepared], staged: Sequence[tuple[DataRepository, str, object]], what: str
) -> None:
    """Write every journal durably; on failure undo everything (nothing is committed)."""

    def write(item: Prepared) -> None:
        entry, payloads = item.entry, list[bytes]()
        if isinstance(entry, PutEntry) and item.inline:
            entry, payloads = with_inline(entry, item.inline)
        relative = layout.journal(entry.txid)
        write_new(item.repo.root, relative, encode(entry, payloads), sync=True)
        try:
            fsync_directory(item.repo.root, layout.JOURNAL)
        except BaseException:
            item.repo.root.unlink(relative)
            raise
        faults.crash_point("journal")

    failure = _first_failure(_each(write, prepared), [item.repo for item in prepared])
    if failure is not None:
        discard(prepared, staged)
        raise _failed(*failure, f"{what} failed while preparing")
    faults.crash_point("prepared")


def _apply_all(prepared: Sequence[Prepared], what: str) -> list[Prepared]:
    """Apply in every output; a failure here leaves the journal for recovery to finish."""

    def apply(item: Prepared) -> None:
        if isinstance(item.entry, RemovalEntry):
            apply_removal(item.repo, item.entry, item.writer)
        else:
            apply_put(item.repo, item.entry, item.writer, newest=True)
        commit(item.repo, item.writer, item.entry)
        faults.crash_point("applied")

    results = _each(apply, prepared, concurrently=False)  # no flush: quick in one thread
    failures = []
    for item, result in zip(prepared, results, strict=True):
        if isinstance(result, BaseException):
            failures.append((item, result))
            continue
        item.repo.settlement.note(item.entry)
        if item.repo.settlement.due():
            try:
                item.repo.settlement.settle()
            except (ButlerError, OSError) as exc:  # not fatal: the journals stay
                item.repo.problems.append(f"settling failed: {exc}")
    if failures:
        where = "; ".join(f"{item.repo.label}: {reason_of(exc)}" for item, exc in failures)
        raise TransactionError(
            f"{what} is committed but not yet applied in {where}; it completes when the "
            "repository is next opened, or run 'butler repair'",
            errno=_errno_of(failures[0][1]),
        )
    return list(prepared)


def _errno_of(exc: BaseException) -> int:
    number = getattr(exc, "errno", None)
    return number if isinstance(number, int) else errno.EIO


def _failed(exc: BaseException, repo: DataRepository, doing: str) -> BaseException:
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
    number = _errno_of(exc)
    return TransactionError(
        f"{doing} in output {repo.label} ({repo.path}): {reason_of(exc)}; no output was "
        f"changed; {advice.get(number, 'fix the output, then retry')}",
        errno=number,
    )


# -- running one step in every output at once --------------------------------------------

_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _each(
    function: Callable[[T], object], items: Iterable[T], concurrently: bool = True
) -> list[object]:
    """``function`` over ``items`` (concurrently: fsync releases the GIL; the first item
    runs in this thread); each result or the exception it raised."""
    items = list(items)
    if len(items) < 2 or not concurrently or faults.enabled():  # crash tests: fixed order
        return [_call(function, item) for item in items]
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="butler-put")
    futures = [_pool.submit(_call, function, item) for item in items[1:]]
    first = _call(function, items[0])
    return [first, *(future.result() for future in futures)]


def _call(function: Callable[[T], object], item: T) -> object:
    try:
        return function(item)
    except BaseException as exc:
        return exc


def _first_failure(
    results: Sequence[object], repos: Sequence[DataRepository]
) -> tuple[BaseException, DataRepository] | None:
    """The first exception among ``results`` and the repository it came from."""
    for result, repo in zip(results, repos, strict=True):
        if isinstance(result, BaseException):
            return result, repo
    return None


__all__ = ["INLINE_LIMIT", "Definition", "Payload", "PlannedFile", "Target", "put", "remove"]
