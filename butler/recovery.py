"""Finishing what dead writers left: one decision per journal, and the actions taken.

A journal found while holding the repository's write lock belongs to a writer
that is dead, or to one that applied it and has not settled yet (a live writer
holds the lock from prepare to apply).  :func:`decide` says what to do with it:

    SETTLE       its txid is in the registry: applied here, only settling is left
    COMMIT       every participant holds its journal or its record: roll forward
    ABORT        some participant holds neither: the put never reached its commit
                 point, and never will (its writer is dead): roll back
    TORN         the journal here is cut short: it was never prepared here, so
                 (as for a missing one) the put rolls back everywhere
    UNREACHABLE  a participant cannot be read (unmounted, moved): leave it; the
                 dataset stays invisible here until ``butler repair`` settles it

Why it is safe: each participant's state for a transaction is *absent*,
*prepared* (journal) or *applied* (record, or registry row).  COMMIT only moves
prepared → applied when no participant is absent, ABORT only prepared → absent
when one is; once every participant is prepared none can become absent (only
the dead writer could have left one unprepared), and once one is absent none
can become prepared.  So every participant reaches the same outcome, whichever
process recovers it first.

:func:`recover` acts on every journal and on staged files of dead writers, and
returns the :class:`Action` list; opening (the resolver, for outputs) and
``butler repair`` both call it.  It never raises for one bad journal: what it
cannot do is an action of kind ``failed`` (and a line in ``repo.problems``).
"""

from __future__ import annotations

import enum
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from butler import layout
from butler.apply import apply_put, apply_removal, commit
from butler.errors import ButlerError, reason_of
from butler.journal import Entry, PutEntry, RemovalEntry, TornEntryError, decode
from butler.locks import sweep_owner_files
from butler.registry import canonical_data_id
from butler.repository import DataRepository
from butler.settle import flushes_of, settle

log = logging.getLogger("butler.recovery")


class Decision(enum.Enum):
    SETTLE = "settle"
    COMMIT = "commit"
    ABORT = "abort"
    TORN = "torn"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class Action:
    """One thing recovery (or repair) did, or could not do."""

    kind: str  # "settled", "rolled forward", "rolled back", "removed", "left", "failed"
    repository: str  # label
    message: str
    txid: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "repository": self.repository, "message": self.message}


@dataclass(frozen=True)
class Pending:
    """A journal recovery left in place (UNREACHABLE): put's version is taken."""

    entry: Entry


def read_entry(repo: DataRepository, relative: str) -> tuple[Entry, bytes]:
    fd = repo.root.open(relative)
    try:
        with os.fdopen(fd, "rb", closefd=False) as stream:
            data = stream.read()
    finally:
        os.close(fd)
    return decode(data, str(repo.root.absolute(relative))), data


def participant_state(participant: str, txid: str) -> str | None:
    """ "prepared", "applied" or "absent" for another output; None if it cannot be read.

    Read by name from the participant's path (the journal names it): another output
    is another user's tree only in setups where that user is trusted with our puts.
    """
    internal = Path(participant) / layout.INTERNAL
    if not internal.is_dir():
        return None
    # The journal first, then the record: settling renames one into the other (whole,
    # payload and all: it is cut from the record only after), so a journal gone before
    # we look is a record by the time we look for that.
    try:
        decode((Path(participant) / layout.journal(txid)).read_bytes())
    except FileNotFoundError:
        pass
    except TornEntryError:
        return "absent"  # cut short while being written: never prepared (as it decides)
    except OSError:
        return None
    else:
        return "prepared"
    if (Path(participant) / layout.record(txid)).is_file():
        return "applied"  # (a torn record is still one: the put was applied there)
    return "absent"


def decide(repo: DataRepository, entry: Entry) -> Decision:
    """What to do with ``entry``, a journal found in ``repo`` under its lock."""
    if repo.registry.has_transaction(entry.txid):
        return Decision.SETTLE
    for participant in entry.participants:
        if Path(participant) == repo.path:
            continue
        state = participant_state(participant, entry.txid)
        if state is None:
            return Decision.UNREACHABLE
        if state == "absent":
            return Decision.ABORT
    return Decision.COMMIT


def recover(repo: DataRepository) -> list[Action]:
    """Settle, roll forward or back every journal of a dead writer in ``repo``, and remove
    dead writers' staged files.  Takes the lock.  Never raises for one bad entry."""
    if not os.access(repo.internal, os.W_OK):
        return []  # a shared input we cannot write: its owner's next open recovers it
    try:
        names = repo.root.listdir(layout.JOURNAL)
        staged = repo.root.listdir(layout.STAGING)
    except FileNotFoundError:
        return []
    if not names and not staged:
        return []
    with repo.locks.repository():
        actions, pending = recover_locked(repo)
        actions += remove_orphans(repo, {p.entry.txid for p in pending})
    return actions


def recover_locked(
    repo: DataRepository, *, settle_applied: bool = True
) -> tuple[list[Action], list[Pending]]:
    """:func:`recover` for the journals, the caller holding the lock.  Returns the
    actions and the journals left in place (their versions are taken).

    Without ``settle_applied`` (a put, before assigning its version), applied journals
    are left to their writers' batches (or the next open) and remembered, so that the
    next put does not read them again: settling other processes' puts at every put
    would cost every writer every other writer's flushes.  Dead writers' unapplied
    journals are always finished: they decide the next version.
    """
    actions: list[Action] = []
    pending: list[Pending] = []
    settlement = repo.settlement
    applied: dict[str, Entry] = {}
    names = set(repo.root.listdir(layout.JOURNAL))
    skip = settlement.names() | settlement.seen_applied(names)
    for name in sorted(names - skip):
        txid = layout.txid_of(name)
        if txid is None or settlement.is_mine(txid):
            continue  # not a journal, or applied by this process: settled with its batch
        relative = layout.journal(txid)
        try:
            entry, data = read_entry(repo, relative)
        except TornEntryError:
            actions.append(_roll_back_torn(repo, txid))
            continue
        except FileNotFoundError:
            continue  # settled by another process meanwhile
        except OSError as exc:
            actions.append(_failed(repo, txid, f"cannot read journal {name}", exc))
            continue
        try:
            decision = decide(repo, entry)
            if decision is Decision.SETTLE:
                if settle_applied:
                    applied[txid] = entry
                else:
                    settlement.saw_applied(name)
                continue
            if decision is Decision.COMMIT:
                roll_forward(repo, entry, data)
                applied[txid] = entry
                actions.append(_action(repo, "rolled forward", entry, "finished"))
            elif decision is Decision.ABORT:
                roll_back(repo, entry)
                actions.append(_action(repo, "rolled back", entry, "undone"))
            else:
                pending.append(Pending(entry))
                message = (
                    f"{_what(entry)} names a participant that cannot be reached; it stays "
                    "invisible here until 'butler repair' settles it"
                )
                actions.append(Action("left", repo.label, message, txid))
        except (ButlerError, OSError) as exc:
            actions.append(_failed(repo, txid, f"cannot finish {_what(entry)}", exc))
    if applied:
        settle(repo.root, repo.registry, {txid: flushes_of(e) for txid, e in applied.items()})
        actions += [_action(repo, "settled", e, "settled") for e in applied.values()]
    for action in actions:
        if action.kind != "settled":
            log.warning("%s: %s", action.repository, action.message)
    return actions, pending


def roll_forward(repo: DataRepository, entry: Entry, data: bytes) -> None:
    with repo.registry.writer() as writer:
        if isinstance(entry, RemovalEntry):
            apply_removal(repo, entry, writer)
        else:
            newest = writer.max_version(entry.dataset_type, canonical_data_id(entry.data_id))
            apply_put(repo, entry, writer, newest=newest < entry.version, journal_bytes=data)
        commit(repo, writer, [entry])


def roll_back(repo: DataRepository, entry: Entry) -> None:
    if isinstance(entry, PutEntry):
        for record in entry.files:
            if record.staged:
                repo.root.unlink(layout.staged(record.staged))
        if entry.config_staged:
            repo.root.unlink(layout.staged(entry.config_staged))
    repo.root.unlink(layout.journal(entry.txid))


def _roll_back_torn(repo: DataRepository, txid: str) -> Action:
    """A journal cut short: never prepared here.  Its staged files go with it."""
    for name in repo.root.listdir(layout.STAGING):
        if name.startswith(txid + "."):
            repo.root.unlink(layout.staged(name))
    repo.root.unlink(layout.journal(txid))
    return Action("rolled back", repo.label, f"put {txid} (journal cut short) undone", txid)


def remove_orphans(repo: DataRepository, keep: set[str]) -> list[Action]:
    """Remove staged files of dead writers that never prepared (no journal)."""
    # Staged names first: a writer makes its owner file before it stages anything, so
    # each owner of a name listed here is seen by the sweep that follows.  (The other
    # order removed the staged files of a writer that started between the two listings.)
    staged = repo.root.listdir(layout.STAGING)
    alive = sweep_owner_files(repo.root, repo.locks)
    journals = {layout.txid_of(name) for name in repo.root.listdir(layout.JOURNAL)}
    removed = 0
    for name in staged:
        owner = layout.owner_of_staged(name)
        if owner is None:
            continue
        txid, tag = owner
        if txid in keep or txid in journals or tag in alive:
            continue
        repo.root.unlink(layout.staged(name))
        removed += 1
    if not removed:
        return []
    message = f"removed {removed} staged file(s) of dead writers"
    return [Action("removed", repo.label, message)]


def _what(entry: Entry) -> str:
    kind = "removal" if isinstance(entry, RemovalEntry) else "put"
    return f"{kind} {entry.txid} of {entry.dataset_type} {entry.data_id} v{entry.version}"


def _action(repo: DataRepository, kind: str, entry: Entry, done: str) -> Action:
    return Action(kind, repo.label, f"{_what(entry)} left by a dead writer: {done}", entry.txid)


def _failed(repo: DataRepository, txid: str, what: str, exc: BaseException) -> Action:
    message = f"{what}: {reason_of(exc)}; run 'butler verify' and 'butler repair' on {repo.path}"
    repo.problems.append(message)
    return Action("failed", repo.label, message, txid)
