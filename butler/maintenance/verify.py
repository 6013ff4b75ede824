"""``butler verify``: every inconsistency that can be seen, changing nothing.

Per repository: the registry (missing, empty or damaged beside records), the
records (torn; in the registry but without a record; recorded but not in the
registry), every version's file under ``.butler/versions/`` hashed against the
registry, the current version at its template path, files no record names (at
template paths and in the internals), symbolic links anywhere in the tree,
journals of dead writers, staged files and probes left behind, and what
recovery could not finish.  Across an aggregator's outputs: datasets they do
not all hold, or hold at other versions, removed in one only, or with other
bytes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from butler import layout
from butler.errors import ButlerError, RepositoryError, UnsafePathError, reason_of
from butler.journal import PutEntry, TornEntryError
from butler.maintenance.common import (
    Progress,
    data_id_text,
    describe,
    hash_relative,
    members,
    opened,
    read_entry,
    record_names,
)
from butler.recovery import participant_state
from butler.registry import Row
from butler.repository import DataRepository
from butler.resolver import Member

if TYPE_CHECKING:
    from butler.butler import Butler

# Problem kinds: what verify can find (repair.py says what it does about each).
MISSING = "missing"  # a recorded file is gone
CORRUPT = "corrupt"  # its sha256 differs from the record
UNREADABLE = "unreadable"  # reading it failed (EIO, EACCES)
UNRECORDED = "unrecorded"  # in the registry without a record
TORN = "torn"  # a record cut short
UNINDEXED = "unindexed"  # a record the registry does not hold: the registry is behind
REGISTRY = "registry"  # the registry is missing, empty beside records, or damaged
UNSETTLED = "unsettled"  # a dead writer's journal
LEFTOVER = "leftover"  # a staged file, probe or temporary of a dead writer
STRAY = "stray"  # a file at a template path or in the internals that no record names
UNSAFE = "unsafe"  # a symbolic link or special file inside the repository's tree
RECOVERY = "recovery"  # something recovery could not finish when the repository opened
DISAGREE = "disagree"  # outputs hold different datasets


@dataclass(frozen=True)
class Problem:
    """One thing ``verify`` found wrong; ``message`` says what and what to do."""

    kind: str
    repository: str  # label
    repository_path: str
    message: str
    dataset_type: str = ""
    data_id: str = ""  # canonical JSON (registry.canonical_data_id); "" if not about a dataset
    version: int = 0
    path: str = ""  # absolute path of the file concerned
    sha256: str = ""  # the checksum the registry records for it
    txid: str = ""

    def as_dict(self) -> dict[str, object]:
        """For JSON: the data ID as a mapping, and null for what does not apply."""
        values = {key: value or None for key, value in dataclasses.asdict(self).items()}
        return {**values, "data_id": json.loads(self.data_id) if self.data_id else None}


@dataclass
class VerifyReport:
    repositories: list[tuple[str, str]] = field(default_factory=list)  # (label, path)
    files: int = 0  # files hashed
    bytes: int = 0  # bytes hashed
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "repositories": [{"label": label, "path": path} for label, path in self.repositories],
            "files": self.files,
            "bytes": self.bytes,
            "problems": [problem.as_dict() for problem in self.problems],
        }


@dataclass
class Scan:
    """What a verification found, with what repair needs to act on it."""

    report: VerifyReport
    good: dict[str, Path] = field(default_factory=dict)  # sha256 -> a verified file
    rows: dict[Problem, tuple[Member, Row]] = field(default_factory=dict)


def verify(
    source: Butler | str | os.PathLike[str],
    *,
    command_line_policy: Mapping[str, object] | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Check every file of every version in every repository of ``source``.

    ``source`` is a Butler, a repository or an aggregator file.  Nothing is changed.
    """
    with opened(source, command_line_policy) as butler:
        return scan(members(butler), progress).report


def scan(found: list[Member], progress: Progress | None) -> Scan:
    result = Scan(VerifyReport())
    listing: list[tuple[Member, Row]] = []
    for member in found:
        repo = member.repo
        result.report.repositories.append((member.label, str(repo.path)))
        problem = _registry_problem(member)
        if problem is not None:
            result.report.problems.append(problem)
            continue
        rows = repo.registry.all_files()
        try:
            result.report.problems.extend(_history(member, rows, result))
        except UnsafePathError:
            pass  # a link in .butler/: the walk of the tree below reports it
        except (ButlerError, OSError) as exc:
            message = f"{member.label}: cannot read its records and journals: {reason_of(exc)}"
            result.report.problems.append(_problem(RECOVERY, member, message))
        result.report.problems.extend(_tree(member, rows))
        listing.extend((member, row) for row in rows)
    for done, (member, row) in enumerate(listing, 1):
        result.report.problems.extend(_check_version(member, row, result))
        if progress is not None:
            progress(done, len(listing))
    result.report.problems.extend(_disagreements(found, listing))
    return result


def _problem(kind: str, member: Member, message: str, **fields: object) -> Problem:
    return Problem(kind, member.label, str(member.repo.path), message, **fields)  # type: ignore[arg-type]


def _registry_problem(member: Member) -> Problem | None:
    try:
        member.repo.check_registry()
    except RepositoryError as exc:
        return _problem(REGISTRY, member, f"{member.label}: {exc}")
    return None


# -- records, journals and the registry ---------------------------------------------------


def _history(member: Member, rows: list[Row], scan: Scan) -> list[Problem]:
    """Records, journals and the registry against each other."""
    repo = member.repo
    problems = [_problem(RECOVERY, member, f"{member.label}: {text}") for text in repo.problems]
    known = repo.registry.transactions()
    recorded: set[str] = set()
    for txid in record_names(repo):
        relative = layout.record(txid)
        try:
            read_entry(repo, relative)
        except TornEntryError:
            problems.append(
                _problem(
                    TORN,
                    member,
                    f"record {txid} in {member.label} is cut short or damaged; run 'butler "
                    "repair' to copy it from another output (or write it again from the "
                    "registry)",
                    path=str(repo.root.absolute(relative)),
                    txid=txid,
                )
            )
        recorded.add(txid)
    journals = set()
    for name in repo.root.listdir(layout.JOURNAL):
        journal_txid = layout.txid_of(name)
        if journal_txid is None:
            continue
        journals.add(journal_txid)
        if journal_txid not in known:  # else applied, waiting to settle
            problems.append(_unsettled(member, journal_txid))
    for txid in sorted(recorded - known - journals):
        problems.append(
            _problem(
                UNINDEXED,
                member,
                f"record {txid} in {member.label} is not in its registry: the registry is "
                f"behind its records; run 'butler reindex {repo.path}'",
                txid=txid,
            )
        )
    seen: set[str] = set()
    for row in rows:
        if row.txid in seen or row.txid in recorded or row.txid in journals:
            continue
        seen.add(row.txid)
        problem = _problem(
            UNRECORDED,
            member,
            f"{describe(row, repo)} in {member.label} has no record "
            f"{layout.record(row.txid)}: 'butler reindex' would lose it; run 'butler "
            "repair' to copy the record from another output (or write it from the registry)",
            dataset_type=row.dataset_type,
            data_id=row.data_id,
            version=row.version,
            txid=row.txid,
        )
        problems.append(problem)
        scan.rows[problem] = (member, row)
    return problems


def _unsettled(member: Member, txid: str) -> Problem:
    repo = member.repo
    relative = layout.journal(txid)
    try:
        entry = read_entry(repo, relative)
    except (TornEntryError, OSError):
        return _problem(
            UNSETTLED,
            member,
            f"journal {txid} in {member.label} is cut short (a writer died writing it); run "
            "'butler repair' to roll it back",
            path=str(repo.root.absolute(relative)),
            txid=txid,
        )
    unreachable = [
        p for p in entry.participants if Path(p) != repo.path and participant_state(p, txid) is None
    ]
    kind = "put" if isinstance(entry, PutEntry) else "removal"
    return _problem(
        UNSETTLED,
        member,
        f"{kind} {txid} of {entry.dataset_type} {entry.data_id} in {member.label} is half "
        f"done; participant(s) {', '.join(unreachable) or 'none'} cannot be reached; mount "
        "them, or run 'butler repair' to settle it",
        dataset_type=entry.dataset_type,
        version=entry.version,
        path=str(repo.root.absolute(relative)),
        txid=txid,
    )


# -- the tree -------------------------------------------------------------------------------


def _tree(member: Member, rows: list[Row]) -> list[Problem]:
    """Links, special files, files no record names, and dead writers' leftovers."""
    repo = member.repo
    current = {row.path for row in rows if row.current and not row.removed}
    versions = {layout.version_file(row.version, row.path) for row in rows}
    problems: list[Problem] = []
    for relative, kind in _walk(repo, ""):
        name = relative.rpartition("/")[2]
        top = relative.partition("/")[0]
        if top in layout.RESERVED_TOP and "/" not in relative:
            continue
        if top == layout.INTERNAL:
            problems.extend(_internal_entry(member, relative, kind, versions))
            continue
        if kind == "link":
            problems.append(_unsafe(member, relative, "a symbolic link"))
        elif kind == "special":
            problems.append(_unsafe(member, relative, "a special file"))
        elif name.startswith((".butler-probe.", ".butler-apply.")):
            problems.append(_leftover(member, relative))
        elif kind == "file" and relative not in current:
            problems.append(
                _problem(
                    STRAY,
                    member,
                    f"{repo.root.absolute(relative)} is in {member.label} but no record names "
                    "it; 'butler reindex' adopts it if it matches a template, or remove it",
                    path=str(repo.root.absolute(relative)),
                )
            )
    return problems


def _internal_entry(member: Member, relative: str, kind: str, versions: set[str]) -> list[Problem]:
    repo = member.repo
    if kind in ("link", "special"):
        return [
            _unsafe(member, relative, "a symbolic link" if kind == "link" else "a special file")
        ]
    if relative.startswith(layout.VERSIONS + "/"):
        if kind == "file" and relative not in versions:
            return [
                _problem(
                    STRAY,
                    member,
                    f"{repo.root.absolute(relative)} is a version no record names; remove it "
                    "(or run 'butler reindex' if records are missing)",
                    path=str(repo.root.absolute(relative)),
                )
            ]
        return []
    if relative.startswith(layout.STAGING + "/") and kind == "file":
        name = relative.rpartition("/")[2]
        owner = layout.owner_of_staged(name)
        dead_staged = owner is not None and not repo.locks.owner_alive(owner[1])
        journal = owner is not None and repo.root.exists(layout.journal(owner[0]))
        if (dead_staged and not journal) or name.startswith("repair-"):
            return [_leftover(member, relative)]
    return []


def _walk(repo: DataRepository, directory: str) -> list[tuple[str, str]]:
    """(relative path, kind) of everything below ``directory``, never following links;
    kind is "dir", "file", "link" or "special".  Scratch (the mount's) is skipped."""
    found: list[tuple[str, str]] = []
    stack = [directory]
    while stack:
        current = stack.pop()
        try:
            names = repo.root.listdir(current)
        except (OSError, ButlerError):
            continue
        for name in names:
            relative = f"{current}/{name}" if current else name
            if relative in (layout.SCRATCH, layout.LOCK, layout.RESERVE, layout.DAMAGED):
                continue
            try:
                mode = repo.root.lstat(relative).st_mode
            except OSError:
                continue
            if stat.S_ISLNK(mode):
                found.append((relative, "link"))
            elif stat.S_ISDIR(mode):
                found.append((relative, "dir"))
                stack.append(relative)
            elif stat.S_ISREG(mode):
                found.append((relative, "file"))
            else:
                found.append((relative, "special"))
    return found


def _unsafe(member: Member, relative: str, what: str) -> Problem:
    path = member.repo.root.absolute(relative)
    return _problem(
        UNSAFE,
        member,
        f"{path} is {what} inside {member.label}; the butler never follows links in a "
        "repository: remove it",
        path=str(path),
    )


def _leftover(member: Member, relative: str) -> Problem:
    path = member.repo.root.absolute(relative)
    return _problem(
        LEFTOVER,
        member,
        f"{path} was left by a writer that died; run 'butler repair' to remove it",
        path=str(path),
    )


# -- files ------------------------------------------------------------------------------------


def _check_version(member: Member, row: Row, scan: Scan) -> list[Problem]:
    """A version's own file, and (current) its template path."""
    repo = member.repo
    relative = layout.version_file(row.version, row.path)
    problem = _check_file(member, row, relative, scan)
    if problem is not None:
        scan.rows[problem] = (member, row)
        return [problem]
    if not (row.current and not row.removed):
        return []
    try:
        at_template = repo.root.lstat(row.path)
        kept = repo.root.lstat(relative)
    except OSError:
        at_template = None
        kept = None
    if (
        at_template is not None
        and kept is not None
        and (at_template.st_dev, at_template.st_ino) == (kept.st_dev, kept.st_ino)
    ):
        return []
    problem = _check_file(member, row, row.path, scan, count=False)
    if problem is not None:
        scan.rows[problem] = (member, row)
        return [problem]
    return []


def _check_file(
    member: Member, row: Row, relative: str, scan: Scan, count: bool = True
) -> Problem | None:
    repo = member.repo
    path = repo.root.absolute(relative)
    try:
        digest, size = hash_relative(repo, relative)
    except FileNotFoundError:
        kind, what = MISSING, f"{path} is missing"
    except OSError as exc:
        kind, what = UNREADABLE, f"cannot read {path} ({reason_of(exc)})"
    except ButlerError as exc:  # a link in the way
        kind, what = UNSAFE, str(exc)
    else:
        if digest == row.sha256:
            if count:
                scan.report.files += 1
                scan.report.bytes += size
            scan.good.setdefault(digest, Path(path))
            return None
        kind = CORRUPT
        what = f"{path} has sha256 {digest[:16]}…, the registry records {row.sha256[:16]}…"
    return _problem(
        kind,
        member,
        f"{describe(row, repo)} in {member.label}: {what}; run 'butler repair' to restore it",
        dataset_type=row.dataset_type,
        data_id=row.data_id,
        version=row.version,
        path=str(path),
        sha256=row.sha256,
        txid=row.txid,
    )


# -- outputs against each other ------------------------------------------------------------


def _disagreements(found: list[Member], listing: list[tuple[Member, Row]]) -> list[Problem]:
    """Datasets that outputs accepting their type do not all hold, or hold differently:
    another version, removed in one only, other bytes."""
    outputs = [member for member in found if member.is_output]
    if len(outputs) < 2:
        return []
    Key = tuple[str, str, int]
    held: dict[Path, dict[Key, tuple[bool, dict[str, str]]]] = {m.repo.path: {} for m in outputs}
    for member, row in listing:
        if member.repo.path in held:
            _removed, files = held[member.repo.path].setdefault(
                (row.dataset_type, row.data_id, row.version), (row.removed, {})
            )
            files[row.storage] = row.sha256
    problems = []
    for key in sorted({key for by_key in held.values() for key in by_key}):
        dataset_type, data_id, version = key
        accepting = [m for m in outputs if m.accepts(dataset_type)]
        holders = [m for m in accepting if key in held[m.repo.path]]
        if not holders:
            continue
        first = holders[0]
        first_removed, first_files = held[first.repo.path][key]
        what = f"{dataset_type} {data_id_text(data_id, first.repo, dataset_type)} v{version}"
        for member in accepting:
            theirs = held[member.repo.path].get(key)
            if theirs is None:
                holding = ", ".join(m.label for m in holders)
                message = f"outputs disagree: {what} is in {holding} but not in {member.label}"
            elif theirs[0] != first_removed:
                message = (
                    f"outputs disagree: {what} is removed in "
                    f"{member.label if theirs[0] else first.label} only"
                )
            elif any(theirs[1][s] != sha for s, sha in first_files.items() if s in theirs[1]):
                message = (
                    f"outputs disagree: {what} differs between {first.label} and {member.label}"
                )
            else:
                continue
            problems.append(
                _problem(
                    DISAGREE,
                    member,
                    f"{message}; put it again through the aggregator (repair never chooses)",
                    dataset_type=dataset_type,
                    data_id=data_id,
                    version=version,
                )
            )
    return problems
