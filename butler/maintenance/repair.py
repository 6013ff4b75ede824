"""``butler repair``: bring the outputs of a source back to a state ``verify`` finds clean.

1. Opening every output runs the normal recovery of half-done puts (its actions
   are reported).
2. A put whose journal names an unreachable participant is settled: rolled
   forward if some reachable participant holds its record (it was applied
   there) or every reachable participant holds its journal; rolled back if a
   reachable participant holds neither (the put never reached its commit point,
   and a participant coming back decides the same).
3. A missing, corrupt or unreadable version file is replaced by a verified copy
   with the same sha256 from any repository (copied into staging, fsynced,
   checked, renamed); a template path is linked again to its version's file.
4. A missing or torn record is copied from another repository that holds the
   same transaction's record (with its provenance); only when none does is it
   written again from the registry, and the action says the provenance is lost.
5. Staged files, probes and temporaries of dead writers are removed.

Only outputs (or the repository itself) are changed: a problem in an input is
reported with the command to repair it directly.  Disagreements between outputs,
stray files and links are reported, never resolved: repair does not choose
which output is right, and does not delete what it did not make.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from butler import layout, recovery
from butler.durable import copy_into, fsync_directory, write_new
from butler.errors import ButlerError, reason_of
from butler.journal import FileRecord, PutEntry, TornEntryError, decode, encode
from butler.maintenance.common import Progress, describe, members, opened, read_file
from butler.maintenance.verify import (
    CORRUPT,
    DISAGREE,
    LEFTOVER,
    MISSING,
    TORN,
    UNREADABLE,
    UNRECORDED,
    UNSETTLED,
    Problem,
    Scan,
    VerifyReport,
    scan,
)
from butler.recovery import Action
from butler.registry import Row
from butler.repository import DataRepository
from butler.resolver import Member
from butler.settle import flushes_of, settle

if TYPE_CHECKING:
    from butler.butler import Butler


@dataclass
class RepairReport:
    actions: list[Action] = field(default_factory=list)
    unresolved: list[Problem] = field(default_factory=list)  # each message says why
    scanned: VerifyReport = field(default_factory=VerifyReport)

    @property
    def ok(self) -> bool:
        return not self.unresolved

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "actions": [action.as_dict() for action in self.actions],
            "unresolved": [problem.as_dict() for problem in self.unresolved],
            "files": self.scanned.files,
            "repositories": self.scanned.as_dict()["repositories"],
        }


class _Unrepairable(Exception):
    """Why one problem was left as it is."""


def repair(
    source: Butler | str | os.PathLike[str],
    *,
    command_line_policy: Mapping[str, object] | None = None,
    progress: Progress | None = None,
) -> RepairReport:
    """Repair every output of ``source`` (a Butler, a repository or an aggregator file)."""
    report = RepairReport()
    with opened(source, command_line_policy) as butler:
        report.actions.extend(
            action
            for action in butler.resolver.recovered
            if action.kind not in ("settled", "left")  # "left" ones are settled below
        )
        found = members(butler)
        for member in found:
            if member.is_output:
                report.actions.extend(_settle_unreachable(member))
                member.repo.problems.clear()  # what recovery left is looked at again below
        result = scan(found, progress)
        report.scanned = result.report
        by_path = {str(member.repo.path): member for member in found}
        for problem in result.report.problems:
            member = by_path[problem.repository_path]
            try:
                report.actions.append(_repair_one(problem, member, result, found))
            except _Unrepairable as exc:
                report.unresolved.append(replace(problem, message=f"{problem.message}: {exc}"))
            except (OSError, ButlerError) as exc:
                reason = f"repair failed: {reason_of(exc)}"
                report.unresolved.append(replace(problem, message=f"{problem.message}: {reason}"))
    return report


def _repair_one(problem: Problem, member: Member, result: Scan, found: list[Member]) -> Action:
    if problem.kind == DISAGREE:
        raise _Unrepairable("not repaired: repair never chooses between outputs")
    if not member.is_output:
        raise _Unrepairable(
            f"not repaired: {member.label} is an input here; run 'butler repair "
            f"{member.repo.path}' on it directly"
        )
    if problem.kind == LEFTOVER:
        member.repo.root.unlink(os.path.relpath(problem.path, member.repo.path))
        return Action("removed", member.label, f"{problem.path} (left by a dead writer)")
    if problem.kind in (UNRECORDED, TORN):
        return _restore_record(member, problem, result, found)
    if problem.kind in (MISSING, CORRUPT, UNREADABLE):
        row = result.rows.get(problem)
        if row is None:
            raise _Unrepairable("not repaired: no registry row names it")
        return _restore_file(member, row[1], problem, result)
    if problem.kind == UNSETTLED:
        return _finish_from_copies(member, problem, result)
    raise _Unrepairable("not repaired: fix it as the message says")


# -- files ---------------------------------------------------------------------------------


def _restore_file(member: Member, row: Row, problem: Problem, result: Scan) -> Action:
    repo = member.repo
    source = result.good.get(row.sha256)
    if source is None:
        raise _Unrepairable(
            f"no repository holds a good copy (sha256 {row.sha256[:16]}…); put the dataset again"
        )
    version_file = layout.version_file(row.version, row.path)
    with repo.locks.repository():
        relative = os.path.relpath(problem.path, repo.path)
        if relative == version_file:
            _copy_in(repo, source, version_file, row.sha256)
        # The template path shows the current version: one more name of its file.
        if row.current and not row.removed:
            temporary = _sibling(row.path, f".butler-apply.{uuid.uuid4().hex}")
            repo.root.link(version_file, temporary)
            repo.root.rename(temporary, row.path)
            fsync_directory(repo.root, row.path.rpartition("/")[0])
    return Action("restored", member.label, f"{problem.path} ({describe(row, repo)}) from {source}")


def _copy_in(repo: DataRepository, source: Path, relative: str, sha256: str) -> None:
    """Copy ``source`` durably over ``relative`` (staged, fsynced, checked, renamed)."""
    staged = layout.staged(f"repair-{uuid.uuid4().hex}")
    fd = repo.root.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with open(source, "rb") as stream:
            digest, _ = copy_into(stream, fd)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        if digest != sha256:
            raise _Unrepairable(f"the copy from {source} changed while it was read")
        with repo.root.directory(relative.rpartition("/")[0], create=True):
            pass
        repo.root.rename(staged, relative)
        fsync_directory(repo.root, relative.rpartition("/")[0])
    finally:
        if fd >= 0:
            os.close(fd)
        repo.root.unlink(staged)


def _sibling(path: str, name: str) -> str:
    directory = path.rpartition("/")[0]
    return f"{directory}/{name}" if directory else name


# -- committed puts whose bytes are gone here ---------------------------------------------


def _finish_from_copies(member: Member, problem: Problem, result: Scan) -> Action:
    """A committed put this output could not apply (its staged bytes are gone): stage a
    verified copy of each file from any repository holding it, then recover again."""
    repo = member.repo
    try:
        entry = decode(read_file(repo, layout.journal(problem.txid)))
    except (OSError, ButlerError):
        raise _Unrepairable("not repaired: its journal cannot be read") from None
    if not isinstance(entry, PutEntry):
        raise _Unrepairable("not repaired: settling it failed (see the actions)")
    with repo.locks.repository():
        for record in entry.files:
            staged = layout.staged(record.staged)
            if not record.staged or repo.root.exists(staged):
                continue
            source = result.good.get(record.sha256)
            if source is None:
                raise _Unrepairable(
                    f"no repository holds a good copy of {record.path} (sha256 "
                    f"{record.sha256[:16]}…); put the dataset again"
                )
            _copy_in(repo, source, staged, record.sha256)
    actions = recovery.recover(repo)
    if repo.root.exists(layout.journal(entry.txid)):
        reasons = "; ".join(a.message for a in actions if a.txid == entry.txid)
        raise _Unrepairable(f"not repaired: {reasons or 'recovery left it'}")
    return Action(
        "rolled forward",
        member.label,
        f"put {entry.txid} of {entry.dataset_type} {entry.data_id} finished from copies",
        entry.txid,
    )


# -- records --------------------------------------------------------------------------------


def _restore_record(member: Member, problem: Problem, result: Scan, found: list[Member]) -> Action:
    repo = member.repo
    txid = problem.txid
    for other in found:
        if other.repo.path == repo.path:
            continue
        try:
            data = read_file(other.repo, layout.record(txid))
            entry = decode(data, record=True)
        except (OSError, TornEntryError, ButlerError):
            continue
        if entry.txid != txid:
            continue
        _write_record(repo, txid, data)
        return Action(
            "recorded",
            member.label,
            f"record {txid} copied from {other.label}, with its provenance",
            txid,
        )
    row = result.rows.get(problem)
    rows = repo.registry.lookup(row[1].dataset_type, row[1].data_id, row[1].version) if row else []
    if not rows:
        raise _Unrepairable("no other repository holds this record and the registry lacks it")
    first = rows[0]
    entry = PutEntry(
        first.txid,
        first.dataset_type,
        _data_id(first),
        first.version,
        first.committed,
        tuple(
            FileRecord(each.location, index == 0, each.path, each.storage, each.size, each.sha256)
            for index, each in enumerate(rows)
        ),
        (str(repo.path),),
        {
            "restored": "rewritten from the registry by butler repair; the original provenance "
            "was lost"
        },
    )
    _write_record(repo, txid, encode(entry))
    return Action(
        "recorded",
        member.label,
        f"record {txid} for {describe(first, repo)} written from the registry (no other "
        "output had it: its provenance is lost)",
        txid,
    )


def _data_id(row: Row) -> dict[str, int | str]:
    value = json.loads(row.data_id)
    assert isinstance(value, dict)
    return value


def _write_record(repo: DataRepository, txid: str, data: bytes) -> None:
    relative = layout.record(txid)
    with repo.locks.repository():
        staged = layout.staged(f"repair-{uuid.uuid4().hex}")
        write_new(repo.root, staged, data, sync=True)
        try:
            repo.root.rename(staged, relative)
        finally:
            repo.root.unlink(staged)
        fsync_directory(repo.root, layout.RECORDS)


# -- journals naming unreachable participants ----------------------------------------------


def _settle_unreachable(member: Member) -> list[Action]:
    """Roll forward or back every journal recovery left (a participant unreachable)."""
    repo = member.repo
    actions: list[Action] = []
    with repo.locks.repository():
        done, pending = recovery.recover_locked(repo)
        actions += [action for action in done if action.kind not in ("settled", "left")]
        for item in pending:
            entry = item.entry
            what = f"{entry.txid} of {entry.dataset_type} {entry.data_id}"
            try:
                if _forward(repo, entry.txid, entry.participants):
                    data = read_file(repo, layout.journal(entry.txid))
                    recovery.roll_forward(repo, entry, data)
                    settle(repo.root, repo.registry, {entry.txid: flushes_of(entry)})
                    actions.append(Action("rolled forward", member.label, f"{what} finished"))
                else:
                    recovery.roll_back(repo, entry)
                    actions.append(Action("rolled back", member.label, f"{what} undone"))
            except (OSError, ButlerError) as exc:
                actions.append(
                    Action("failed", member.label, f"settling {what} failed: {reason_of(exc)}")
                )
    return actions


def _forward(repo: DataRepository, txid: str, participants: tuple[str, ...]) -> bool:
    """The decision of step 2 for one journal."""
    missing_somewhere = False
    for participant in participants:
        if Path(participant) == repo.path:
            continue
        state = recovery.participant_state(participant, txid)
        if state == "applied":
            return True
        if state == "absent":
            missing_somewhere = True
    return not missing_somewhere


__all__ = ["RepairReport", "repair"]
