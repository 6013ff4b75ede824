"""The all-or-nothing duplicated put, and its recovery.  The protocol, in short
(docs/design.md has the argument for why it is safe):

1. **Stage** (no lock): every payload is written to ``.butler/staging/<txid>.<owner>.<n>``
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

import atexit
import concurrent.futures
import contextlib
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from butler.errors import ButlerError, DatasetExistsError, TransactionError
from butler.registry import Commit, FileEntry, canonical_data_id
from butler.repository import DataRepository, fsync_directory

log = logging.getLogger("butler.transaction")
T = TypeVar("T")

# Staged files are named <txid>.<owner>.<n>.  The owner is a process that holds
# .butler/staging/owner-<owner>.lock locked for as long as it lives, so a staged
# file with no journal whose owner's lock can be taken is a crash's leftover.
_owners: dict[Path, tuple[int, str, int]] = {}
_owners_lock = threading.Lock()


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
    """Write one dataset to every target, all or nothing.  Returns one Commit per target.

    Each phase runs for all outputs at once in worker threads: the time of a put is
    that of its slowest output, not the sum (fsync releases the GIL).
    """
    txid = new_txid()
    what = f"{dataset_type} {dict(data_id)}"
    staged = [
        (
            target.repo.internal / "staging" / f"{txid}.{_owner(target.repo)}.{index}",
            payloads[planned.storage].data,
        )
        for target in targets
        for index, planned in enumerate(target.files)
    ]
    failure = _first_failure(_each(lambda item: write_durably(*item), staged))
    if failure is None:  # the names must survive too: recovery rolls forward from them
        staging_dirs = list({target.repo.internal / "staging" for target in targets})
        failure = _first_failure(_each(fsync_directory, staging_dirs))
    if failure is not None:
        _remove_all([path for path, _ in staged])
        if isinstance(failure, OSError):
            raise TransactionError(
                f"put of {what} failed while writing ({failure}); no output was changed; "
                "free space or fix the output, then retry"
            ) from failure
        raise failure
    _crash_point("staged")

    participants = [str(target.repo.path) for target in targets]
    with _locked(sorted({target.repo.path: target.repo for target in targets}.items())):
        committed = time.time()
        try:
            plans = []
            for target in targets:
                recover_locked(target.repo)
                plan = _plan(target, txid, dataset_type, data_id, payloads, provenance)
                plans.append({**plan, "participants": participants, "committed": committed})
        except BaseException:
            _remove_all([path for path, _ in staged])
            raise
        journals = [t.repo.internal / "journal" / f"{txid}.json" for t in targets]
        failure = _first_failure(
            _each(lambda item: _write_journal(*item), zip(journals, plans, strict=True))
        )
        if failure is not None:
            _remove_all(journals + [path for path, _ in staged])
            if isinstance(failure, OSError) and not isinstance(failure, ButlerError):
                raise TransactionError(
                    f"put of {what} failed while preparing ({failure}); no output was "
                    "changed; fix the output, then retry"
                ) from failure
            raise failure
        # Commit point passed: every participant holds its journal.  Only forward now.
        _crash_point("prepared")
        results = _each(
            lambda item: apply_journal(*item), zip([t.repo for t in targets], plans, strict=True)
        )
        failures = [
            f"{target.repo.label}: {result}"
            for target, result in zip(targets, results, strict=True)
            if isinstance(result, BaseException)
        ]
        applied = [
            (target.repo, plan)
            for target, plan, result in zip(targets, plans, results, strict=True)
            if not isinstance(result, BaseException)
        ]
        for repo, plan in applied:
            _note_unsettled(repo, txid, _journal_dirs(repo, plan))
        for repo, result in zip(
            [repo for repo, _ in applied],
            _each(_settle_if_due, [repo for repo, _ in applied]),
            strict=True,
        ):
            if isinstance(result, BaseException):  # not fatal: the journals stay, settled later
                log.warning("%s: could not settle puts now: %s", repo.label, result)
        if failures:
            raise TransactionError(
                f"put of {what} is committed but not yet applied in {'; '.join(failures)}; "
                "it completes when the repository is next opened, or run 'butler repair'"
            )
    return [commit_of(plan) for plan in plans]


# Fault injection for the recovery tests: the process dies at the named step, as in a
# crash.  Read once at import; production never sets it.
_CRASH_AT = os.environ.get("BUTLER_TEST_CRASH_AT")


def _crash_point(step: str) -> None:
    """Die here if BUTLER_TEST_CRASH_AT is ``step`` or ``step#n`` (the n-th time here)."""
    global _crash_count
    if _CRASH_AT is None:
        return
    name, _, nth = _CRASH_AT.partition("#")
    if name == step:
        _crash_count += 1
        if _crash_count >= int(nth or 1):
            os._exit(70)


_crash_count = 0
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _each(function: Callable[[T], object], items: Iterable[T]) -> list[object]:
    """``function`` over ``items``, concurrently; each result or the exception it raised."""
    items = list(items)
    if len(items) < 2 or _CRASH_AT is not None:  # crash tests need a fixed order
        return [_call(function, item) for item in items]
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="butler-put")
    futures = [_pool.submit(_call, function, item) for item in items]
    return [future.result() for future in futures]


def _call(function: Callable[[T], object], item: T) -> object:
    try:
        return function(item)
    except BaseException as exc:
        return exc


def _first_failure(results: Iterable[object]) -> BaseException | None:
    return next((r for r in results if isinstance(r, BaseException)), None)


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
        "previous_files": [row.path for row in current],
        "files": [
            {
                "location": planned.location,
                "primary": planned.primary,
                "path": planned.path,
                "staging": f"{txid}.{_owner(target.repo)}.{index}",
                "storage": planned.storage,
                "size": payloads[planned.storage].size,
                "sha256": payloads[planned.storage].sha256,
            }
            for index, planned in enumerate(target.files)
        ],
        "provenance": dict(provenance),
    }


def commit_of(journal: Mapping[str, object]) -> Commit:
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
    commit = commit_of(journal)
    staging_dir = repo.internal / "staging"
    previous = journal.get("previous")
    entries = _entries(journal)
    pending = [entry for entry in entries if (staging_dir / entry["staging"]).exists()]
    old_paths = [str(p) for p in journal.get("previous_files") or ()]  # type: ignore[attr-defined]
    touched: set[Path] = set()
    if pending and previous is not None:
        # The previous version gets its second name before anything replaces or hides it.
        for old in old_paths:
            if (repo.path / old).exists():
                keep = repo.internal / "versions" / f"v{previous}" / old
                keep.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):
                    os.link(repo.path / old, keep)
                touched.add(keep.parent)
    for entry in pending:
        final = repo.path / entry["path"]
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging_dir / entry["staging"], final)
        touched.add(final.parent)
    if pending:
        # A previous version stored at another path (its template changed) leaves it.
        for old in set(old_paths) - {entry["path"] for entry in entries}:
            (repo.path / old).unlink(missing_ok=True)
    _crash_point("renamed")
    repo.registry.insert(commit)
    _crash_point("applied")


def roll_forward(repo: DataRepository, journal: Mapping[str, object]) -> None:
    """Apply a committed put left by another writer and settle it at once."""
    apply_journal(repo, journal)
    _settle(repo, {str(journal["txid"]): _journal_dirs(repo, journal)})


# -- settling ----------------------------------------------------------------
#
# An applied put is visible but its renames and registry row are not yet known to
# be on disk (no directory fsync, SQLite synchronous=NORMAL): its journal stays, so a
# crash rolls it forward again.  Settling makes them durable (fsync the directories
# and the registry's WAL) and only then turns the journal into the record.  Puts
# settle in batches: the flushes are paid once per batch, not once per put.

SETTLE_BATCH = 32  # journals awaiting settlement per repository, at most
SETTLE_SECONDS = 1.0  # and none waits longer than this once another put comes
_unsettled: dict[Path, dict[str, set[Path]]] = {}
_unsettled_since: dict[Path, float] = {}
_unsettled_lock = threading.Lock()
_repositories: dict[Path, DataRepository] = {}


def _journal_dirs(repo: DataRepository, journal: Mapping[str, object]) -> set[Path]:
    """The directories whose entries applying ``journal`` changed."""
    previous = journal.get("previous")
    old_paths = [str(p) for p in journal.get("previous_files") or ()]  # type: ignore[attr-defined]
    dirs = {(repo.path / entry["path"]).parent for entry in _entries(journal)}
    dirs.update((repo.path / old).parent for old in old_paths)
    if previous is not None:
        versions = repo.internal / "versions" / f"v{previous}"
        dirs.update((versions / old).parent for old in old_paths)
    return dirs


def _note_unsettled(repo: DataRepository, txid: str, dirs: set[Path]) -> None:
    with _unsettled_lock:
        _repositories[repo.internal] = repo
        _unsettled.setdefault(repo.internal, {})[txid] = dirs
        _unsettled_since.setdefault(repo.internal, time.monotonic())


def _settle_if_due(repo: DataRepository) -> None:
    """Settle this process's applied puts in ``repo`` if enough wait or one waited long."""
    with _unsettled_lock:
        waiting = _unsettled.get(repo.internal, {})
        since = _unsettled_since.get(repo.internal, time.monotonic())
        due = len(waiting) >= SETTLE_BATCH or time.monotonic() - since >= SETTLE_SECONDS
    if due:
        settle_pending(repo)


def settle_pending(repo: DataRepository) -> None:
    """Settle every put this process applied in ``repo``; the caller holds its lock."""
    with _unsettled_lock:
        waiting = _unsettled.pop(repo.internal, {})
        _unsettled_since.pop(repo.internal, None)
    if waiting:
        _settle(repo, waiting)


def settle_all() -> None:
    """Settle this process's applied puts everywhere (at exit, and on Butler.close)."""
    with _unsettled_lock:
        internals = list(_unsettled)
    for internal in internals:
        repo = _repositories.get(internal)
        if repo is None or not internal.is_dir():
            # Moved or deleted meanwhile: its journals went with it, and the next open
            # settles them wherever it is now.
            with _unsettled_lock:
                _unsettled.pop(internal, None)
                _unsettled_since.pop(internal, None)
            continue
        try:
            with repo.lock():
                settle_pending(repo)
        except OSError as exc:  # the journals stay; the next open settles them
            log.warning("%s: could not settle applied puts now: %s", repo.label, exc)


def _settle(repo: DataRepository, journals: Mapping[str, set[Path]]) -> None:
    directories = set().union(*journals.values())
    for directory in directories:
        if directory.is_dir():
            fsync_directory(directory)
    repo.registry.sync()
    _crash_point("settled")
    for txid in journals:
        with contextlib.suppress(FileNotFoundError):  # another process settled it
            os.replace(
                repo.internal / "journal" / f"{txid}.json",
                repo.internal / "records" / f"{txid}.json",
            )


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
    if not os.access(repo.internal, os.W_OK):
        return  # a shared input we cannot write: its owner's next open recovers it
    with repo.lock():
        live = recover_locked(repo)
        _remove_orphans(repo, live)


def recover_locked(repo: DataRepository) -> set[str]:
    """Settle the journals of dead writers; the caller holds ``repo.lock()``.

    Returns the transactions left pending (a participant could not be reached).
    """
    journal_dir = repo.internal / "journal"
    names = os.listdir(journal_dir)
    live: set[str] = set()
    with _unsettled_lock:
        mine = set(_unsettled.get(repo.internal, ()))
    for name in sorted(names):
        if name.partition(".")[0] in mine:
            continue  # applied by this process, settled with its batch
        path = journal_dir / name
        journal = load_journal(path)
        if journal is None:  # cut short by a crash: that put never prepared here
            txid = name.partition(".")[0]
            for staged in staging_dir_entries(repo, txid):
                staged.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            continue
        txid = str(journal["txid"])
        if repo.registry.has_transaction(txid):  # applied, waiting to settle: settle it
            _settle(repo, {txid: _journal_dirs(repo, journal)})
            continue
        decision = _decide(repo, journal)
        if decision == "commit":
            log.warning("%s: rolling forward put %s left by a dead writer", repo.label, txid)
            roll_forward(repo, journal)
        elif decision == "abort":
            log.warning("%s: rolling back put %s left by a dead writer", repo.label, txid)
            for entry in _entries(journal):
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
    return live


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
            load_journal(internal / "journal" / f"{txid}.json") is not None
            or (internal / "records" / f"{txid}.json").exists()
        ):
            return "abort"
    return "commit"


def _entries(journal: Mapping[str, object]) -> list[dict[str, str]]:
    files = journal["files"]
    assert isinstance(files, list)
    return files


def load_journal(path: Path) -> dict[str, object] | None:
    """A journal, or None if it is missing or was cut short (so never prepared)."""
    try:
        journal = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    return journal if isinstance(journal, dict) and "txid" in journal else None


def staging_dir_entries(repo: DataRepository, txid: str) -> list[Path]:
    staging_dir = repo.internal / "staging"
    return [staging_dir / name for name in os.listdir(staging_dir) if name.startswith(txid + ".")]


def _owner(repo: DataRepository) -> str:
    """This process's owner tag in ``repo``, taking its lock on first use."""
    with _owners_lock:
        known = _owners.get(repo.internal)
        if known is not None and known[0] == os.getpid():
            return known[1]
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        fd = os.open(repo.internal / "staging" / f"owner-{tag}.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        _owners[repo.internal] = (os.getpid(), tag, fd)
        return tag


def _release_owners() -> None:
    for internal, (pid, tag, fd) in list(_owners.items()):
        if pid == os.getpid():
            (internal / "staging" / f"owner-{tag}.lock").unlink(missing_ok=True)
            os.close(fd)


atexit.register(_release_owners)
atexit.register(lambda: settle_all())  # registered last, so it runs first


def _owner_alive(repo: DataRepository, tag: str) -> bool:
    try:
        fd = os.open(repo.internal / "staging" / f"owner-{tag}.lock", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _remove_orphans(repo: DataRepository, keep: set[str]) -> None:
    """Remove staged files of dead processes that never prepared (no journal)."""
    staging_dir = repo.internal / "staging"
    alive: dict[str, bool] = {}
    for name in os.listdir(staging_dir):
        if name.startswith("owner-"):
            tag = name[len("owner-") : -len(".lock")]
            if not alive.setdefault(tag, _owner_alive(repo, tag)):
                (staging_dir / name).unlink(missing_ok=True)
            continue
        txid, _, rest = name.partition(".")
        tag = rest.partition(".")[0]
        if txid in keep or alive.setdefault(tag, _owner_alive(repo, tag)):
            continue
        (staging_dir / name).unlink(missing_ok=True)


def _write_journal(final: Path, journal: Mapping[str, object]) -> None:
    # Written in place: a journal cut short by a crash does not parse, and recovery
    # treats it as "not prepared", exactly like a missing one.
    write_durably(final, json.dumps(journal).encode())
    fsync_directory(final.parent)
    _crash_point("journal")


def write_durably(path: Path, data: bytes) -> None:
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
        write_durably(repo.internal / "records" / f"{txid}.json", json.dumps(record).encode())
        repo.registry.mark_removed(dataset_type, key)
        repo.registry.sync()
        for row in rows:
            (repo.path / row.path).unlink(missing_ok=True)
    return True
