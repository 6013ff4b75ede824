"""Removal of a dataset's current version from every output that holds it, all or
nothing: the put's protocol (butler.transaction) with a removal journal, whose apply
takes the file off its template path (the version keeps its name) and marks it
removed in the registry."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence

from butler import faults
from butler.apply import apply_removal, commit
from butler.journal import RemovalEntry, new_txid
from butler.prepare import Locked, discard, prepare_removal
from butler.registry import canonical_data_id
from butler.repository import DataRepository
from butler.steps import Failure, error_before_commit, not_applied, settle_if_due, write_journals


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
        repo = ordered[0]
        try:
            for repo in ordered:  # a lock that cannot be taken fails like any step here
                stack.enter_context(repo.locks.repository())
                stack.enter_context(repo.root.keeping_directories())
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
            failed = error_before_commit(exc, repo, f"{what} failed while preparing")
            if failed is exc:
                raise
            raise failed from exc
        if not prepared:
            return []
        try:
            write_journals(prepared)
        except Failure as failure:
            discard(prepared, [])
            raise error_before_commit(
                failure.error, failure.repo, f"{what} failed"
            ) from failure.error
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
            raise not_applied(what, failures)
    settle_if_due(ordered)
    return [item.repo for item in prepared]
