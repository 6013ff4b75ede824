"""Whole-repository maintenance: rebuild the registry, verify the files, repair them.

    reindex(path)    registry.sqlite3 again from .butler/records and the files
    verify(source)   every file of every version hashed against the registry (read-only)
    repair(source)   half-done puts settled, bad files restored from good copies elsewhere

These are the only operations allowed to scan a repository; nothing on the
get/put/mount path calls them.  ``butler reindex|verify|repair`` are thin fronts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from butler.registry import Commit, Row, canonical_data_id
from butler.repository import (
    CONFIG_NAME,
    INTERNAL,
    REGISTRY_NAME,
    DataRepository,
    fsync_directory,
)
from butler.resolver import Member
from butler.transaction import (
    commit_of,
    load_journal,
    new_txid,
    recover_locked,
    roll_forward,
    write_durably,
)

if TYPE_CHECKING:
    from butler.butler import Butler

Progress = Callable[[int, int], None]


@dataclass
class ReindexReport:
    records: int = 0
    removals: int = 0
    adopted: list[str] = field(default_factory=list)  # files found at template paths, unrecorded
    ignored: list[str] = field(default_factory=list)  # files matching no template


def reindex(path: str | os.PathLike[str], progress: Progress | None = None) -> ReindexReport:
    """Rebuild ``registry.sqlite3`` from ``.butler/records`` and the files.

    Every version, checksum and provenance record comes back from the records.  A
    file at a template path with no record (copied in by hand) is adopted as a new
    version with a fresh record; files matching no template are reported, untouched.
    """
    repo = DataRepository(path)
    report = ReindexReport()
    records_dir = repo.internal / "records"
    with repo.lock():
        registry = repo.registry
        registry.clear()
        names = sorted(os.listdir(records_dir))
        batch: list[Commit] = []
        recorded: set[str] = set()
        for done, name in enumerate(names, 1):
            record = json.loads((records_dir / name).read_text(encoding="utf-8"))
            if record.get("removed"):
                registry.insert_many(batch)
                batch = []
                registry.mark_removed(record["dataset_type"], canonical_data_id(record["data_id"]))
                report.removals += 1
            else:
                batch.append(commit_of(record))
                recorded.update(entry["path"] for entry in record["files"])
                report.records += 1
            if len(batch) >= 5000:
                registry.insert_many(batch)
                batch = []
            if progress is not None:
                progress(done, len(names))
        registry.insert_many(batch)
        _adopt_unrecorded(repo, recorded, report)
        registry.sync()
    return report


def _adopt_unrecorded(repo: DataRepository, recorded: set[str], report: ReindexReport) -> None:
    skip = {CONFIG_NAME, INTERNAL, REGISTRY_NAME}
    for directory, subdirs, files in os.walk(repo.path):
        relative_dir = os.path.relpath(directory, repo.path)
        if relative_dir == ".":
            subdirs[:] = [d for d in subdirs if d not in skip and not d.startswith(".")]
            relative_dir = ""
        for name in files:
            relative = os.path.join(relative_dir, name) if relative_dir else name
            if relative in recorded or name in skip or name.startswith(REGISTRY_NAME):
                continue
            if _adopt(repo, relative):
                report.adopted.append(relative)
            else:
                report.ignored.append(relative)


def _adopt(repo: DataRepository, relative: str) -> bool:
    for name, definition in repo.policy.dataset_types.items():
        for index, location in enumerate(definition.locations):
            parsed = location.template.parse(relative)
            if parsed is None or parsed[0] not in (None, name):
                continue
            data = (repo.path / relative).read_bytes()
            data_id = parsed[1]
            version = repo.registry.max_version(name, canonical_data_id(data_id)) + 1
            txid = new_txid()
            record = {
                "txid": txid,
                "participants": [str(repo.path)],
                "dataset_type": name,
                "data_id": data_id,
                "version": version,
                "previous": None,
                "committed": (repo.path / relative).stat().st_mtime,
                "files": [
                    {
                        "location": index,
                        "primary": location is definition.primary,
                        "path": relative,
                        "staging": "",
                        "storage": location.storage,
                        "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                    }
                ],
                "provenance": {"adopted": "found at its template path by butler reindex"},
            }
            write_durably(
                Path(repo.internal) / "records" / f"{txid}.json", json.dumps(record).encode()
            )
            repo.registry.insert(commit_of(record))
            return True
    return False


# -- verify ------------------------------------------------------------------------------

# Problem kinds: what verify can find, and what repair does about each.
MISSING = "missing"  # a recorded file is gone: repair copies it from a good copy elsewhere
CORRUPT = "corrupt"  # its sha256 differs from the record: repair copies a good copy over it
UNREADABLE = "unreadable"  # reading it failed (EIO, EACCES): repair copies a good copy over it
UNRECORDED = "unrecorded"  # no plain-text record: repair rewrites it from the registry
UNSETTLED = "unsettled"  # a dead put's journal: repair rolls it forward or back
DISAGREE = "disagree"  # outputs hold different datasets: reported, never changed

HASH_CHUNK = 1 << 20  # large reads: hashing speed is the disk's, not Python's


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
class _Scan:
    report: VerifyReport
    good: dict[str, Path]  # sha256 -> a file verified to have it
    rows: dict[Problem, tuple[Member, Row]]  # the registry row behind each file problem


def verify(
    source: Butler | str | os.PathLike[str],
    *,
    command_line_policy: Mapping[str, object] | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Check every file of every version in every repository of ``source``.

    ``source`` is a Butler, a repository or an aggregator file.  Each file is hashed and
    compared with the registry; each version needs its plain-text record; a journal left
    by a dead writer is reported; outputs of an aggregator must agree on the datasets of
    the types they accept.  Nothing is changed.
    """
    with _opened(source, command_line_policy) as butler:
        return _scan(_members(butler), progress).report


def all_rows(repo: DataRepository) -> list[Row]:
    """Every file of every version (removed ones too) the registry of ``repo`` records."""
    return repo.registry.all_files()


@contextlib.contextmanager
def _opened(
    source: Butler | str | os.PathLike[str], command_line_policy: Mapping[str, object] | None
) -> Iterator[Butler]:
    from butler.butler import Butler  # late: butler imports the whole library

    if isinstance(source, Butler):
        yield source
        return
    with Butler(source, command_line_policy=command_line_policy) as butler:
        yield butler


def _members(butler: Butler) -> list[Member]:
    """Every repository once: search order (outputs are repaired, the rest only read)."""
    members: dict[Path, Member] = {}
    for member in butler.resolver.search + butler.resolver.outputs:
        members.setdefault(member.repo.path, member)
    return list(members.values())


def _scan(members: list[Member], progress: Progress | None) -> _Scan:
    scan = _Scan(VerifyReport(), {}, {})
    listing: list[tuple[Member, Row]] = []
    for member in members:
        scan.report.repositories.append((member.label, str(member.repo.path)))
        scan.report.problems.extend(_unsettled(member))
        rows = all_rows(member.repo)
        scan.report.problems.extend(_unrecorded(member, rows, scan))
        listing.extend((member, row) for row in rows)
    for done, (member, row) in enumerate(listing, 1):
        found = _check_file(member, row, scan)
        if found is not None:
            scan.report.problems.append(found[0])
            scan.rows[found[0]] = (member, found[1])
        if progress is not None:
            progress(done, len(listing))
    scan.report.problems.extend(_disagreements(members, listing))
    return scan


def _check_file(member: Member, row: Row, scan: _Scan) -> tuple[Problem, Row] | None:
    """None if the file is good, else the problem and the (freshest) row it concerns."""
    repo = member.repo
    error: OSError | None = None
    for attempt in range(2):
        path = repo.file_of(row)
        try:
            digest, size = hash_file(path)
        except OSError as exc:
            digest, size, error = "", 0, exc
        else:
            error = None
            if digest == row.sha256:
                scan.report.files += 1
                scan.report.bytes += size
                scan.good.setdefault(digest, path)
                return None
        if attempt == 0:
            # A put may have made this version old since the registry was read: ask again.
            fresh = [
                each
                for each in repo.registry.lookup(row.dataset_type, row.data_id, row.version)
                if each.location == row.location
            ]
            if not fresh or repo.file_of(fresh[0]) == path:
                break
            row = fresh[0]
    what = f"{_describe(row, repo)} in {member.label}"
    if isinstance(error, FileNotFoundError):
        kind, message = MISSING, f"{what}: {path} is missing"
    elif error is not None:
        kind, message = UNREADABLE, f"{what}: cannot read {path} ({error.strerror or error})"
    else:
        kind = CORRUPT
        message = (
            f"{what}: {path} has sha256 {digest[:16]}…, the registry records {row.sha256[:16]}…"
        )
    return _problem(kind, member, f"{message}; run 'butler repair' to restore it", row, path), row


def hash_file(path: Path) -> tuple[str, int]:
    """(sha256 hex digest, size) of a file, read in large chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as stream:
        while chunk := stream.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _unrecorded(member: Member, rows: list[Row], scan: _Scan) -> list[Problem]:
    internal = member.repo.internal
    problems = []
    seen: set[str] = set()
    for row in rows:
        if row.txid in seen:
            continue
        seen.add(row.txid)
        name = f"{row.txid}.json"
        if (internal / "records" / name).exists() or (internal / "journal" / name).exists():
            continue  # a journal: a put being applied right now
        problem = _problem(
            UNRECORDED,
            member,
            f"{_describe(row, member.repo)} in {member.label} has no record "
            f".butler/records/{name}: "
            "'butler reindex' would lose it and its provenance is gone; run 'butler repair' "
            "to write the record again from the registry",
            row,
            member.repo.file_of(row),
        )
        problems.append(problem)
        scan.rows[problem] = (member, row)
    return problems


def _unsettled(member: Member) -> list[Problem]:
    problems = []
    for path, journal in _journals(member.repo):
        unreachable = [
            str(p)
            for p in journal.get("participants", [])  # type: ignore[attr-defined]
            if not (Path(p) / INTERNAL).is_dir()
        ]
        data_id = journal.get("data_id")
        problems.append(
            Problem(
                UNSETTLED,
                member.label,
                str(member.repo.path),
                f"put {journal.get('txid')} of {journal.get('dataset_type')} {data_id} in "
                f"{member.label} is half done (journal {path.name}); participant(s) "
                f"{', '.join(unreachable) or 'none'} cannot be reached; mount them, or run "
                "'butler repair' to settle it",
                str(journal.get("dataset_type", "")),
                canonical_data_id(data_id) if isinstance(data_id, dict) else "",
                int(journal.get("version", 0)),  # type: ignore[call-overload]
                str(path),
            )
        )
    return problems


def _journals(repo: DataRepository, locked: bool = False) -> list[tuple[Path, dict[str, object]]]:
    """Journals of dead writers: a live writer holds the lock while it has journals."""
    journal_dir = repo.internal / "journal"
    lock: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if not locked and os.access(repo.internal, os.W_OK):  # a read-only input cannot lock
        lock = repo.lock()
    with lock:
        names = sorted(os.listdir(journal_dir)) if journal_dir.is_dir() else []
        found = [(journal_dir / name, read_journal(journal_dir / name)) for name in names]
    # An applied put's journal only waits to be settled into a record: not half done.
    return [
        (path, journal)
        for path, journal in found
        if journal is not None and not repo.registry.has_transaction(str(journal["txid"]))
    ]


read_journal = load_journal


def _disagreements(members: list[Member], listing: list[tuple[Member, Row]]) -> list[Problem]:
    """Datasets that outputs accepting their type do not all hold, or hold differently."""
    outputs = [member for member in members if member.is_output]
    if len(outputs) < 2:
        return []
    Key = tuple[str, str, int]
    held: dict[Path, dict[Key, dict[str, str]]] = {m.repo.path: {} for m in outputs}
    for member, row in listing:
        if member.is_output:
            files = held[member.repo.path].setdefault(
                (row.dataset_type, row.data_id, row.version), {}
            )
            files[row.storage] = row.sha256
    keys = sorted({key for by_key in held.values() for key in by_key})
    problems = []
    for key in keys:
        dataset_type, data_id, version = key
        accepting = [m for m in outputs if m.accepts(dataset_type)]
        holders = [m for m in accepting if key in held[m.repo.path]]
        if not holders:
            continue
        data_id_text = _data_id_text(data_id, holders[0].repo, dataset_type)
        what = f"{dataset_type} {data_id_text} version {version}"
        first = holders[0]
        for member in accepting:
            theirs = held[member.repo.path].get(key)
            if theirs is None:
                message = (
                    f"outputs disagree: {what} is in {', '.join(m.label for m in holders)} "
                    f"but not in {member.label}"
                )
            elif any(
                theirs[s] != sha for s, sha in held[first.repo.path][key].items() if s in theirs
            ):
                message = (
                    f"outputs disagree: {what} differs between {first.label} and {member.label}"
                )
            else:
                continue
            problems.append(
                Problem(
                    DISAGREE,
                    member.label,
                    str(member.repo.path),
                    f"{message}; put it again through the aggregator (repair never chooses)",
                    dataset_type,
                    data_id,
                    version,
                )
            )
    return problems


def _problem(kind: str, member: Member, message: str, row: Row, path: Path) -> Problem:
    return Problem(
        kind,
        member.label,
        str(member.repo.path),
        message,
        row.dataset_type,
        row.data_id,
        row.version,
        str(path),
        row.sha256,
    )


def _describe(row: Row, repo: DataRepository) -> str:
    data_id = _data_id_text(row.data_id, repo, row.dataset_type)
    return f"{row.dataset_type} {data_id} version {row.version}"


def _data_id_text(data_id: str, repo: DataRepository, dataset_type: str) -> str:
    """``visit=1 ccd=2``: keys in the genre's order, as a user writes them."""
    values = json.loads(data_id)
    definition = repo.policy.dataset_types.get(dataset_type)
    order = list(definition.keys) if definition is not None else []
    keys = sorted(values, key=lambda key: order.index(key) if key in order else len(order))
    return " ".join(f"{key}={values[key]}" for key in keys)


# -- repair ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """One thing ``repair`` did."""

    kind: str  # "recovered", "rolled forward", "rolled back", "restored", "recorded"
    repository: str
    message: str

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "repository": self.repository, "message": self.message}


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


def repair(
    source: Butler | str | os.PathLike[str],
    *,
    command_line_policy: Mapping[str, object] | None = None,
    progress: Progress | None = None,
) -> RepairReport:
    """Bring the outputs of ``source`` back to a state ``verify`` finds clean.

    1. Opening every repository runs the normal recovery of half-done puts.
    2. A put whose journal names an unreachable participant is settled: rolled forward
       if some reachable participant holds its record (it was applied there) or every
       reachable participant holds its journal (the data is complete here; verify
       reports the gap if the missing one returns without it); rolled back if a
       reachable participant holds neither (the put never reached its commit point,
       and a participant coming back will decide the same).
    3. A missing, corrupt or unreadable file is replaced by a verified copy with the
       same sha256 from any repository: copied into staging, fsynced, checked, renamed.
    4. A missing plain-text record is written again from the registry.

    Only outputs (or the repository itself) are changed: a problem in an input is
    reported with the command to repair it directly.  Disagreements between outputs
    are reported, never resolved: repair does not choose which output is right.
    """
    report = RepairReport()
    with _recovery_logged(report.actions), _opened(source, command_line_policy) as butler:
        members = _members(butler)
        for member in members:
            if member.is_output:
                report.actions.extend(_settle(member))
        scan = _scan(members, progress)
        report.scanned = scan.report
        by_path = {str(member.repo.path): member for member in members}
        for problem in scan.report.problems:
            member = by_path[problem.repository_path]
            try:
                action = _repair_one(problem, member, scan.rows.get(problem), scan)
            except _Unrepairable as exc:
                report.unresolved.append(replace(problem, message=f"{problem.message}: {exc}"))
            except OSError as exc:
                reason = f"repair failed: {exc.strerror or exc} ({exc.filename or problem.path})"
                report.unresolved.append(replace(problem, message=f"{problem.message}: {reason}"))
            else:
                report.actions.append(action)
    return report


class _Unrepairable(Exception):
    """Why one problem was left as it is."""


def _repair_one(
    problem: Problem, member: Member, found: tuple[Member, Row] | None, scan: _Scan
) -> Action:
    if problem.kind == DISAGREE:
        raise _Unrepairable("not repaired: repair never chooses between outputs")
    if not member.is_output:
        raise _Unrepairable(
            f"not repaired: {member.label} is an input here; run 'butler repair "
            f"{member.repo.path}' on it directly"
        )
    if problem.kind == UNSETTLED or found is None:
        raise _Unrepairable("not repaired: settling it failed (see the actions)")
    row = found[1]
    if problem.kind == UNRECORDED:
        return _rewrite_record(member, row)
    source = scan.good.get(row.sha256)
    if source is None:
        raise _Unrepairable(
            f"no repository holds a good copy (sha256 {row.sha256[:16]}…); put the dataset again"
        )
    return _restore(member, row, source)


def _restore(member: Member, row: Row, source: Path) -> Action:
    repo = member.repo
    with repo.lock():
        # The registry may have moved on since the scan (a new version): ask it again.
        fresh = [
            each
            for each in repo.registry.lookup(row.dataset_type, row.data_id, row.version)
            if each.location == row.location and each.sha256 == row.sha256
        ]
        if not fresh:
            raise _Unrepairable("not repaired: the registry changed meanwhile; run it again")
        destination = repo.file_of(fresh[0])
        with contextlib.suppress(OSError):
            if hash_file(destination)[0] == row.sha256:
                return Action("restored", member.label, f"{destination} was already good")
        # Named unlike a put's staged files; we hold the lock, so no recovery removes it.
        staging = repo.internal / "staging" / f"repair-{uuid.uuid4().hex}"
        try:
            copied = _copy_durably(source, staging)
            if copied != row.sha256:
                raise _Unrepairable(f"the copy from {source} changed while it was read")
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, destination)
        finally:
            staging.unlink(missing_ok=True)
        fsync_directory(destination.parent)
    return Action(
        "restored", member.label, f"{destination} ({_describe(row, repo)}) copied from {source}"
    )


def _copy_durably(source: Path, destination: Path) -> str:
    """Copy ``source`` to a new file ``destination``, fsynced; the sha256 of what was copied."""
    digest = hashlib.sha256()
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with open(source, "rb") as stream:
            while chunk := stream.read(HASH_CHUNK):
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return digest.hexdigest()


def _rewrite_record(member: Member, row: Row) -> Action:
    repo = member.repo
    with repo.lock():
        rows = repo.registry.lookup(row.dataset_type, row.data_id, row.version)
        record = {
            "txid": row.txid,
            "participants": [str(repo.path)],
            "dataset_type": row.dataset_type,
            "data_id": json.loads(row.data_id),
            "version": row.version,
            "previous": None,
            "committed": row.committed,
            "files": [
                {
                    "location": each.location,
                    "primary": index == 0,  # lookup lists the primary file first
                    "path": each.path,
                    "staging": "",
                    "storage": each.storage,
                    "size": each.size,
                    "sha256": each.sha256,
                }
                for index, each in enumerate(rows)
            ],
            "provenance": {"restored": "rewritten from the registry by butler repair"},
        }
        path = repo.internal / "records" / f"{row.txid}.json"
        if not path.exists():
            write_durably(path, json.dumps(record).encode())
            fsync_directory(path.parent)
    return Action("recorded", member.label, f"wrote {path} for {_describe(row, repo)}")


def _settle(member: Member) -> list[Action]:
    """Roll forward or back every journal whose put named an unreachable participant."""
    repo = member.repo
    actions = []
    with repo.lock():
        recover_locked(repo)  # the decidable ones first (a writer may have died since)
        for path, journal in _journals(repo, locked=True):
            txid = str(journal["txid"])
            what = f"put {txid} of {journal['dataset_type']} {journal['data_id']}"
            try:
                if _settle_forward(repo, journal):
                    roll_forward(repo, journal)
                    actions.append(Action("rolled forward", member.label, f"{what} finished"))
                else:
                    for entry in journal["files"]:  # type: ignore[attr-defined]
                        (repo.internal / "staging" / entry["staging"]).unlink(missing_ok=True)
                    path.unlink()
                    actions.append(Action("rolled back", member.label, f"{what} undone"))
            except OSError as exc:  # left in place: the scan reports it as unsettled
                failure = f"settling {what} failed: {exc.strerror or exc}"
                actions.append(Action("failed", member.label, failure))
    return actions


def _settle_forward(repo: DataRepository, journal: Mapping[str, object]) -> bool:
    """The decision of ``repair`` step 2 for one journal."""
    txid = journal["txid"]
    missing_somewhere = False
    for participant in journal["participants"]:  # type: ignore[attr-defined]
        internal = Path(participant) / INTERNAL
        if Path(participant) == repo.path or not internal.is_dir():
            continue
        if (internal / "records" / f"{txid}.json").exists():
            return True
        if read_journal(internal / "journal" / f"{txid}.json") is None:
            missing_somewhere = True
    return not missing_somewhere


class _RecoveryLog(logging.Handler):
    """Turns the recovery the library logs while repair opens repositories into actions."""

    def __init__(self, actions: list[Action]) -> None:
        super().__init__(logging.WARNING)
        self.actions = actions

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "rolling" in str(record.msg):  # the others are the journals _settle handles
            label = message.split(":", 1)[0]
            self.actions.append(Action("recovered", label, message))


@contextlib.contextmanager
def _recovery_logged(actions: list[Action]) -> Iterator[None]:
    logger = logging.getLogger("butler.transaction")
    handler = _RecoveryLog(actions)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False  # reported as actions instead
    try:
        yield
    finally:
        logger.propagate = propagate
        logger.removeHandler(handler)
