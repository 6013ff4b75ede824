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
from dataclasses import dataclass, field, replace
from pathlib import Path
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
from butler.group import GroupCommit
from butler.journal import PutEntry, RemovalEntry, encode, new_txid, with_inline
from butler.prepare import (
    INLINE_LIMIT,
    Definition,
    Locked,
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
from butler.registry import canonical_data_id
from butler.repository import DataRepository

T = TypeVar("T")


@dataclass(eq=False)
class _Put:
    """One put in a group commit: its staged payloads, then its outcome."""

    targets: Sequence[Target]
    dataset_type: str
    data_id: Mapping[str, int | str]
    payloads: Mapping[str, Payload]
    provenance: Mapping[str, object]
    txid: str
    staged: list[tuple[DataRepository, str, PlannedFile]]
    done: bool = False
    entries: list[PutEntry] = field(default_factory=list)
    error: BaseException | None = None

    @property
    def what(self) -> str:
        return f"put of {self.dataset_type} {dict(self.data_id)}"

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done = True


def put(
    targets: Sequence[Target],
    dataset_type: str,
    data_id: Mapping[str, int | str],
    payloads: Mapping[str, Payload],
    provenance: Mapping[str, object],
) -> list[PutEntry]:
    """Write one dataset to every target, all or nothing.  One entry per target, in order.

    Puts to the same outputs from several threads at once are committed together
    (:mod:`butler.group`); each stays all or nothing on its own.
    """
    request = _stage(targets, dataset_type, data_id, payloads, provenance)
    _group_of(_repositories(targets)).submit(request)
    if request.error is not None:
        raise request.error
    return request.entries


def put_many(
    puts: Sequence[
        tuple[
            Sequence[Target],
            str,
            Mapping[str, int | str],
            Mapping[str, Payload],
            Mapping[str, object],
        ]
    ],
) -> list[list[PutEntry] | ButlerError]:
    """Many puts (the arguments of :func:`put` each), committed in batches; each stays all
    or nothing on its own.  One result per put: its entries, or the error that kept it out."""
    requests: list[_Put | None] = []
    results: list[list[PutEntry] | ButlerError] = []
    for spec in puts:
        try:
            requests.append(_stage(*spec))
            results.append([])
        except ButlerError as exc:
            requests.append(None)
            results.append(exc)
    by_outputs: dict[tuple[str, ...], list[_Put]] = {}
    for request in requests:
        if request is not None:
            key = tuple(str(repo.path) for repo in _repositories(request.targets))
            by_outputs.setdefault(key, []).append(request)
    for batch in by_outputs.values():
        _group_of(_repositories(batch[0].targets)).submit_all(batch)
    for index, request in enumerate(requests):
        if request is None:
            continue
        if request.error is None:
            results[index] = request.entries
        elif isinstance(request.error, ButlerError):
            results[index] = request.error
        else:
            raise request.error
    return results


def _group_of(repos: Sequence[DataRepository]) -> GroupCommit[_Put]:
    """The group commit of puts to exactly ``repos`` (kept by the first of them)."""
    first = repos[0]
    key = tuple(str(repo.path) for repo in repos)
    with first.groups_lock:
        group = first.groups.get(key)
        if group is None:
            group = first.groups[key] = GroupCommit(lambda batch: _commit(repos, batch))
    return group


def _repositories(targets: Sequence[Target]) -> list[DataRepository]:
    """The outputs of a put, once each, in path order (the order they are locked in, so
    two puts to overlapping outputs cannot deadlock)."""
    return sorted({t.repo.path: t.repo for t in targets}.values(), key=lambda r: r.path)


def _stage(
    targets: Sequence[Target],
    dataset_type: str,
    data_id: Mapping[str, int | str],
    payloads: Mapping[str, Payload],
    provenance: Mapping[str, object],
) -> _Put:
    """Write the payloads into every output's staging directory (no lock held)."""
    txid = new_txid()
    staged = [
        (target.repo, layout.staged_name(txid, target.repo.locks.owner(), index), planned)
        for target in targets
        for index, planned in enumerate(target.files)
    ]
    request = _Put(targets, dataset_type, data_id, payloads, provenance, txid, staged)
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
        raise _failed(*failure, f"{request.what} failed while writing")
    faults.crash_point("staged")
    return request


def _commit(repos: Sequence[DataRepository], batch: list[_Put]) -> None:
    """Commit a batch of puts to ``repos``: one lock round and one registry transaction
    per output, every journal written side by side.  Each put is prepared inside a
    savepoint, so one that fails is undone alone; every request ends done."""
    try:
        with contextlib.ExitStack() as stack:
            locked: dict[Path, Locked] = {}
            # Every lock first, then every registry writer.  A lock that cannot be taken
            # (a registry server gone) fails the batch before the commit point, like any
            # other failure there: the staged files go.
            repo = repos[0]
            try:
                for repo in repos:
                    stack.enter_context(repo.locks.repository())
                    stack.enter_context(repo.root.keeping_directories())
                for repo in repos:
                    locked[repo.path] = Locked.open(stack, repo)
            except Exception as exc:
                for request in batch:
                    discard([], request.staged)
                    request.fail(_failed(exc, repo, f"{request.what} failed while preparing"))
                return
            live = _prepare(batch, locked)
            if live:
                _commit_point(live)
                _apply(repos, locked, live)
    finally:
        for request in batch:
            if not request.done:  # an unexpected error: it says what it is
                request.fail(TransactionError(f"{request.what} failed; see the log"))
        _settle_if_due(repos)


def _prepare(batch: list[_Put], locked: Mapping[Path, Locked]) -> list[tuple[_Put, list[Prepared]]]:
    """Prepare each put of the batch (in its own savepoints); the ones that can commit."""
    committed = time.time()
    live = []
    for request in batch:
        prepared: list[Prepared] = []
        participants = tuple(str(target.repo.path) for target in request.targets)
        target = request.targets[0]
        try:
            with contextlib.ExitStack() as savepoints:
                if len(batch) > 1:  # alone, a failure rolls the whole transaction back
                    for each in locked.values():
                        savepoints.enter_context(each.writer.savepoint())
                for target in request.targets:
                    entry = entry_for(
                        target,
                        request.txid,
                        request.dataset_type,
                        request.data_id,
                        request.payloads,
                        request.provenance,
                    )
                    entry = replace(entry, participants=participants, committed=committed)
                    prepared.append(
                        prepare_put(locked[target.repo.path], target, entry, request.payloads)
                    )
        except Exception as exc:
            discard(prepared, request.staged)
            failed = _failed(exc, target.repo, f"{request.what} failed while preparing")
            if failed is not exc:
                failed.__cause__ = exc
            request.fail(failed)
            continue
        live.append((request, prepared))
    return live


def _commit_point(live: list[tuple[_Put, list[Prepared]]]) -> None:
    """Write every journal of the batch durably; if one cannot be, the whole batch is
    undone (its registry rows are rolled back with the transaction)."""
    items = [item for _, prepared in live for item in prepared]
    try:
        _write_journals(items)
    except _Failure as failure:
        for request, prepared in live:
            discard(prepared, request.staged)
            request.fail(_failed(failure.error, failure.repo, f"{request.what} failed"))
        raise failure.error from None
    faults.crash_point("prepared")


def _apply(
    repos: Sequence[DataRepository],
    locked: Mapping[Path, Locked],
    live: list[tuple[_Put, list[Prepared]]],
) -> None:
    """Apply every put of the batch, then commit each output's registry transaction.  A
    failure here leaves the journal for recovery to finish."""
    failures: dict[int, list[tuple[DataRepository, BaseException]]] = {}
    broken: dict[Path, BaseException] = {}  # outputs where some put could not apply
    for _, prepared in live:
        for item in prepared:
            try:
                assert isinstance(item.entry, PutEntry)
                apply_put(item.repo, item.entry, item.writer, newest=True, live=True)
                faults.crash_point("applied")
            except Exception as exc:
                broken.setdefault(item.repo.path, exc)
    for repo in repos:
        entries = [item.entry for _, prepared in live for item in prepared if item.repo is repo]
        error = broken.get(repo.path)
        if error is None:
            try:
                commit(repo, locked[repo.path].writer, entries)
            except Exception as exc:
                error = exc
        if error is not None:
            # Not one row of this output is committed (the transaction rolls back): every
            # put of the batch here is committed but not applied, and recovery finishes
            # each from its journal (applying is idempotent).
            for request, prepared in live:
                if any(item.repo is repo for item in prepared):
                    failures.setdefault(id(request), []).append((repo, error))
            continue
        for entry in entries:
            repo.settlement.note(entry)
    for request, prepared in live:
        failed = failures.get(id(request))
        if failed:
            request.fail(_not_applied(request.what, failed))
        else:
            request.entries = [item.entry for item in prepared]  # type: ignore[misc]
            request.done = True


def _settle_if_due(repos: Sequence[DataRepository]) -> None:
    for repo in repos:
        if repo.settlement.due():
            try:
                repo.settlement.settle()
            except (ButlerError, OSError) as exc:  # not fatal: the journals stay
                repo.problems.append(f"settling failed: {exc}")


def _not_applied(
    what: str, failures: list[tuple[DataRepository, BaseException]]
) -> TransactionError:
    where = "; ".join(f"{repo.label}: {reason_of(exc)}" for repo, exc in failures)
    return TransactionError(
        f"{what} is committed but not yet applied in {where}; it completes when the "
        "repository is next opened, or run 'butler repair'",
        errno=_errno_of(failures[0][1]),
    )


def remove(
    repos: Sequence[DataRepository], dataset_type: str, data_id: Mapping[str, int | str]
) -> list[DataRepository]:
    """Remove the current version of a dataset from every repository in ``repos`` that
    holds it, all or nothing.  Returns those it was removed from (maybe none)."""
    txid = new_txid()
    key = canonical_data_id(data_id)
    what = f"removal of {dataset_type} {dict(data_id)}"
    ordered = sorted({r.path: r for r in repos}.values(), key=lambda r: r.path)
    with contextlib.ExitStack() as stack:
        for repo in ordered:
            stack.enter_context(repo.locks.repository())
            stack.enter_context(repo.root.keeping_directories())
        repo = ordered[0]
        try:
            locked = {}
            holding = []
            for repo in ordered:
                locked[repo.path] = Locked.open(stack, repo)
                rows = locked[repo.path].writer.current(dataset_type, key)
                if rows:
                    holding.append((repo, rows))
            participants = tuple(str(each.path) for each, _ in holding)
            committed = time.time()
            prepared = []
            for repo, rows in holding:
                entry = RemovalEntry(
                    txid,
                    dataset_type,
                    dict(data_id),
                    rows[0].version,
                    committed,
                    tuple(row.path for row in rows),
                    participants,
                )
                prepared.append(prepare_removal(locked[repo.path], entry))
        except Exception as exc:
            failed = _failed(exc, repo, f"{what} failed while preparing")
            if failed is exc:
                raise
            raise failed from exc
        if not prepared:
            return []
        try:
            _write_journals(prepared)
        except _Failure as failure:
            discard(prepared, [])
            raise _failed(failure.error, failure.repo, f"{what} failed") from failure.error
        faults.crash_point("prepared")
        failures: list[tuple[DataRepository, BaseException]] = []
        for item in prepared:
            try:
                assert isinstance(item.entry, RemovalEntry)
                apply_removal(item.repo, item.entry, item.writer)
                commit(item.repo, item.writer, [item.entry])
                item.repo.settlement.note(item.entry)
            except Exception as exc:
                failures.append((item.repo, exc))
        if failures:
            raise _not_applied(what, failures)
    _settle_if_due(ordered)
    return [item.repo for item in prepared]


# -- the steps ---------------------------------------------------------------------


class _Failure(Exception):
    """A step failed in one output."""

    def __init__(self, error: BaseException, repo: DataRepository) -> None:
        super().__init__(str(error))
        self.error = error
        self.repo = repo


def _write_journals(items: Sequence[Prepared]) -> None:
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
    failure = _first_failure(_each(write, groups), [group[0].repo for group in groups])
    if failure is not None:
        for item in items:
            item.repo.root.unlink(layout.journal(item.entry.txid))
        raise _Failure(*failure)


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
