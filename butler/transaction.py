"""The all-or-nothing duplicated put, and its recovery.  The protocol, in short
(docs/design.md has the argument for why it is safe):

1. **Stage** (no lock): every payload is written to ``.butler/staging/<txid>.<n>``
   in every output and fsynced.  Any failure (a full disk, an exception) removes
   what was staged; nothing is visible, nothing is recorded.
2. **Prepare** (all outputs locked, in path order): each output gets
   ``.butler/journal/<txid>.json``, naming every participant, its version, files
   and provenance; written to a temporary name, fsynced, renamed, directory
   fsynced.  A failure here removes the journals written so far.
3. **Commit point**: the transaction is committed exactly when every
   participant holds its journal.  From here on it only rolls forward.
4. **Apply** in each output: the file at the template path (the previous
   version) is hard-linked under ``.butler/versions/v<N-1>/``; the staged file is
   renamed onto the template path; the directory is fsynced; the registry row is
   committed; the journal is renamed to ``.butler/records/<txid>.json``, where it
   stays as the plain-text record of versions, checksums and provenance.

Recovery runs when a repository is opened and before every commit, under the
repository's lock (so any journal it sees belongs to a dead writer): a journal
whose participants all hold the journal or its record is applied; one with a
participant holding neither is rolled back; one with an unreachable participant
is left for ``butler repair`` and stays invisible meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from butler.errors import ButlerError, DatasetExistsError, TransactionError
from butler.registry import Commit, FileEntry, canonical_data_id
from butler.repository import DataRepository, fsync_directory

log = logging.getLogger("butler.transaction")

# A staged file with no journal is either a put in its stage phase or a leftover
# of a crash during staging.  After this long it can only be a leftover.
STALE_STAGING_SECONDS = 3600.0


@dataclass(frozen=True)
class Payload:
    """The bytes of one dataset in one storage format, serialized once for all outputs."""

    data: bytes
    sha256: str

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class PlannedFile:
    location: int
    primary: bool
    path: str  # relative to the repository
    storage: str


@dataclass(frozen=True)
class Target:
    """One output's share of a put: the files it receives."""

    repo: DataRepository
    files: tuple[PlannedFile, ...]
    on_exists: str


def new_txid() -> str:
    # Time first (fixed width) so that records sort in commit order for a rebuild.
    return f"{time.time_ns():016x}-{uuid.uuid4().hex[:12]}"


def put(
    targets: Sequence[Target],
    dataset_type: str,
    data_id: Mapping[str, int | str],
    payloads: Mapping[str, Payload],
    provenance: Mapping[str, object],
) -> list[Commit]:
    """Write one dataset to every target, all or nothing.  Returns one Commit per target."""
    txid = new_txid()
    staged: list[Path] = []
    try:
        for target in targets:
            for index, planned in enumerate(target.files):
                staging = target.repo.internal / "staging" / f"{txid}.{index}"
                _write_durably(staging, payloads[planned.storage].data)
                staged.append(staging)
    except OSError as exc:
        _remove_all(staged)
        raise TransactionError(
            f"put of {dataset_type} {dict(data_id)} failed while writing ({exc}); no output "
            "was changed; free space or fix the output, then retry"
        ) from exc
    except BaseException:
        _remove_all(staged)
        raise

    participants = [str(target.repo.path) for target in targets]
    with _locked(sorted({target.repo.path: target.repo for target in targets}.items())):
        journals: list[Path] = []
        plans: list[dict[str, object]] = []
        try:
            committed = time.time()
            for target in targets:
                recover_locked(target.repo)
                plan = _plan(target, txid, dataset_type, data_id, payloads, provenance)
                plan["participants"] = participants
                plan["committed"] = committed
                plans.append(plan)
            for target, plan in zip(targets, plans, strict=True):
                journals.append(_write_journal(target.repo, txid, plan))
        except BaseException as exc:
            _remove_all(journals)
            _remove_all(staged)
            if isinstance(exc, OSError) and not isinstance(exc, ButlerError):
                raise TransactionError(
                    f"put of {dataset_type} {dict(data_id)} failed while preparing ({exc}); "
                    "no output was changed; fix the output, then retry"
                ) from exc
            raise
        # Commit point passed: every participant holds its journal.
        failures = []
        for target, plan in zip(targets, plans, strict=True):
            try:
                apply_journal(target.repo, plan)
            except OSError as exc:  # rolled forward at the next open or by 'butler repair'
                failures.append(f"{target.repo.label}: {exc}")
        if failures:
            raise TransactionError(
                f"put of {dataset_type} {dict(data_id)} is committed but not yet applied in "
                f"{'; '.join(failures)}; it completes when the repository is next opened, "
                "or run 'butler repair'"
            )
    return [_commit_of(plan) for plan in plans]


def _plan(
    target: Target,
    txid: str,
    dataset_type: str,
    data_id: Mapping[str, int | str],
    payloads: Mapping[str, Payload],
    provenance: Mapping[str, object],
) -> dict[str, object]:
    registry = target.repo.registry
    key = canonical_data_id(data_id)
    current = registry.lookup(dataset_type, key)
    if current and target.on_exists == "error":
        raise DatasetExistsError(
            f"{dataset_type} {dict(data_id)} already exists in {target.repo.label} and its "
            "policy says on_exists: error; remove it first or set on_exists: version"
        )
    version = registry.max_version(dataset_type, key) + 1
    return {
        "txid": txid,
        "dataset_type": dataset_type,
        "data_id": dict(data_id),
        "version": version,
        "previous": current[0].version if current else None,
        "files": [
            {
                "location": planned.location,
                "primary": planned.primary,
                "path": planned.path,
                "staging": f"{txid}.{index}",
                "storage": planned.storage,
                "size": payloads[planned.storage].size,
                "sha256": payloads[planned.storage].sha256,
            }
            for index, planned in enumerate(target.files)
        ],
        "provenance": dict(provenance),
    }


def _commit_of(journal: Mapping[str, object]) -> Commit:
    files = journal["files"]
    assert isinstance(files, list)
    data_id = journal["data_id"]
    assert isinstance(data_id, dict)
    return Commit(
        txid=str(journal["txid"]),
        dataset_type=str(journal["dataset_type"]),
        data_id=data_id,
        version=int(journal["version"]),  # type: ignore[call-overload]
        committed=float(journal["committed"]),  # type: ignore[arg-type]
        files=tuple(
            FileEntry(
                int(entry["location"]),
                bool(entry["primary"]),
                str(entry["path"]),
                str(entry["storage"]),
                int(entry["size"]),
                str(entry["sha256"]),
            )
            for entry in files
        ),
    )


def apply_journal(repo: DataRepository, journal: Mapping[str, object]) -> None:
    """Roll one prepared put forward in ``repo``.  Idempotent: safe to repeat after a crash."""
    commit = _commit_of(journal)
    staging_dir = repo.internal / "staging"
    previous = journal.get("previous")
    touched: set[Path] = set()
    for entry in journal["files"]:  # type: ignore[attr-defined]
        final = repo.path / entry["path"]
        staged = staging_dir / entry["staging"]
        if not staged.exists():
            continue  # already renamed into place before a crash
        if previous is not None and final.exists():
            keep = repo.internal / "versions" / f"v{previous}" / entry["path"]
            keep.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.link(final, keep)
            touched.add(keep.parent)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, final)
        touched.add(final.parent)
    for directory in touched:
        fsync_directory(directory)
    repo.registry.insert(commit)
    journal_path = repo.internal / "journal" / f"{commit.txid}.json"
    if journal_path.exists():
        os.replace(journal_path, repo.internal / "records" / f"{commit.txid}.json")


def recover(repo: DataRepository) -> None:
    """Finish or roll back puts left by dead writers (called when a repository opens)."""
    journal_dir = repo.internal / "journal"
    staging_dir = repo.internal / "staging"
    try:
        pending = os.listdir(journal_dir)
        staging = os.listdir(staging_dir)
    except FileNotFoundError:
        return
    if not pending and not staging:
        return
    with repo.lock():
        recover_locked(repo)


def recover_locked(repo: DataRepository) -> None:
    """``recover`` for a caller that already holds ``repo.lock()``."""
    journal_dir = repo.internal / "journal"
    names = os.listdir(journal_dir)
    live: set[str] = set()
    for name in sorted(names):
        path = journal_dir / name
        if not name.endswith(".json"):
            path.unlink(missing_ok=True)  # a journal never finished: its put never prepared
            continue
        journal = json.loads(path.read_text(encoding="utf-8"))
        txid = str(journal["txid"])
        decision = _decide(repo, journal)
        if decision == "commit":
            log.warning("%s: rolling forward put %s left by a dead writer", repo.label, txid)
            apply_journal(repo, journal)
        elif decision == "abort":
            log.warning("%s: rolling back put %s left by a dead writer", repo.label, txid)
            for entry in journal["files"]:
                (repo.internal / "staging" / entry["staging"]).unlink(missing_ok=True)
            path.unlink()
        else:
            live.add(txid)
            log.warning(
                "%s: put %s names a participant that cannot be reached; it stays invisible "
                "until 'butler repair' settles it",
                repo.label,
                txid,
            )
    _remove_stale_staging(repo, live)


def _decide(repo: DataRepository, journal: Mapping[str, object]) -> str:
    txid = journal["txid"]
    for participant in journal["participants"]:  # type: ignore[attr-defined]
        other = Path(participant)
        if other == repo.path:
            continue
        internal = other / ".butler"
        if not internal.is_dir():
            return "unknown"
        if not (
            (internal / "journal" / f"{txid}.json").exists()
            or (internal / "records" / f"{txid}.json").exists()
        ):
            return "abort"
    return "commit"


def _remove_stale_staging(repo: DataRepository, keep: set[str]) -> None:
    staging_dir = repo.internal / "staging"
    horizon = time.time() - STALE_STAGING_SECONDS
    for name in os.listdir(staging_dir):
        if name.split(".")[0] in keep:
            continue
        path = staging_dir / name
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < horizon:
                path.unlink()


def _write_journal(repo: DataRepository, txid: str, journal: Mapping[str, object]) -> Path:
    journal_dir = repo.internal / "journal"
    final = journal_dir / f"{txid}.json"
    _write_durably(journal_dir / f"{txid}.json.tmp", json.dumps(journal).encode())
    os.rename(journal_dir / f"{txid}.json.tmp", final)
    fsync_directory(journal_dir)
    return final


def _write_durably(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _remove_all(paths: Sequence[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def _locked(repos: Sequence[tuple[Path, DataRepository]]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for _, repo in repos:
            stack.enter_context(repo.lock())
        yield


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def remove(repo: DataRepository, dataset_type: str, data_id: Mapping[str, int | str]) -> bool:
    """Hide the current version of a dataset in ``repo``; older versions stay readable.

    The file leaves its template path for ``.butler/versions/v<N>/`` (so plain tools
    agree with the registry) and a plain-text removal record is kept for rebuilds.
    Returns False if ``repo`` holds no current version.
    """
    key = canonical_data_id(data_id)
    with repo.lock():
        rows = repo.registry.lookup(dataset_type, key)
        if not rows:
            return False
        version = rows[0].version
        # Order matters for a crash at any point: first a second name under versions/
        # (harmless), then the record and the registry, last the template path goes.
        touched: set[Path] = set()
        for row in rows:
            keep = repo.internal / "versions" / f"v{version}" / row.path
            keep.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError, FileNotFoundError):
                os.link(repo.path / row.path, keep)
            touched.add(keep.parent)
        for directory in touched:
            fsync_directory(directory)
        txid = new_txid()
        record = {
            "txid": txid,
            "removed": True,
            "dataset_type": dataset_type,
            "data_id": dict(data_id),
            "version": version,
            "committed": time.time(),
        }
        _write_durably(repo.internal / "records" / f"{txid}.json", json.dumps(record).encode())
        repo.registry.mark_removed(dataset_type, key)
        for row in rows:
            (repo.path / row.path).unlink(missing_ok=True)
    return True
