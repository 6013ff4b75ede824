"""The all-or-nothing duplicated put across outputs, committed in groups.

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

A removal follows the same steps with a removal journal (:mod:`butler.removal`).
What the two share, and the partial-failure policy, is in :mod:`butler.steps`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from butler import faults, layout
from butler.apply import apply_put, commit
from butler.durable import fsync_directory
from butler.errors import (
    ButlerError,
    TransactionError,
)
from butler.group import GroupCommit
from butler.journal import PutEntry, new_txid
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
    stage,
    unlink_all,
)
from butler.repository import DataRepository
from butler.steps import (
    Failure,
    each,
    error_before_commit,
    first_failure,
    not_applied,
    settle_if_due,
    write_journals,
)

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
    results = each(lambda item: stage(item[0], item[1], payloads[item[2].storage]), staged, flushed)
    failure = first_failure(results, [repo for repo, _, _ in staged])
    if failure is None:  # a large staged file's name must survive too: recovery reads it
        large = list(
            {repo.path: repo for repo, _, p in staged if payloads[p.storage].size > INLINE_LIMIT}
            .values()
        )  # fmt: skip
        results = each(lambda repo: fsync_directory(repo.root, layout.STAGING), large)
        failure = first_failure(results, large)
    if failure is not None:
        unlink_all((repo, layout.staged(name)) for repo, name, _ in staged)
        raise error_before_commit(*failure, f"{request.what} failed while writing")
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
                    request.fail(
                        error_before_commit(exc, repo, f"{request.what} failed while preparing")
                    )
                return
            live = _prepare(batch, locked)
            if live:
                _commit_point(live)
                _apply(repos, locked, live)
    finally:
        for request in batch:
            if not request.done:  # an unexpected error: it says what it is
                request.fail(TransactionError(f"{request.what} failed; see the log"))
        settle_if_due(repos)


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
            failed = error_before_commit(exc, target.repo, f"{request.what} failed while preparing")
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
        write_journals(items)
    except Failure as failure:
        for request, prepared in live:
            discard(prepared, request.staged)
            request.fail(error_before_commit(failure.error, failure.repo, f"{request.what} failed"))
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
            request.fail(not_applied(request.what, failed))
        else:
            request.entries = [item.entry for item in prepared]  # type: ignore[misc]
            request.done = True


__all__ = ["INLINE_LIMIT", "Definition", "Payload", "PlannedFile", "Target", "put", "put_many"]
