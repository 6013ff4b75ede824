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
import fcntl
import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from butler import faults, layout
from butler.apply import apply_put, apply_removal, ensure_reserve, with_reserve
from butler.durable import COPY_CHUNK, fsync_directory, write_all, write_new
from butler.errors import (
    ButlerError,
    DatasetExistsError,
    RegistryDamagedError,
    RepositoryError,
    TransactionError,
    reason_of,
)
from butler.journal import (
    DataId,
    FileRecord,
    PutEntry,
    RemovalEntry,
    encode,
    new_txid,
    with_inline,
)
from butler.policy import DatasetTypeDef
from butler.recovery import recover_locked
from butler.registry import RegistryWriter, canonical_data_id
from butler.repository import DataRepository

T = TypeVar("T")

#: Payloads up to this size travel inside the journal: one durable write per output
#: instead of two (the staged copy is then written without fsync, and settled later).
INLINE_LIMIT = 128 * 1024

_FS_IOC_GETFLAGS = 0x80086601
_FS_IMMUTABLE_FL, _FS_APPEND_FL = 0x10, 0x20


@dataclass(frozen=True)
class Payload:
    """The bytes of one dataset in one storage format, made once for all outputs:
    in memory (``data``), or a file streamed into each output (``source``)."""

    size: int
    sha256: str
    data: bytes | None = None
    source: Path | None = None


@dataclass(frozen=True)
class PlannedFile:
    location: int
    primary: bool
    path: str  # relative to the repository
    storage: str


#: A dataset type an output must record in its butler.yaml with this put:
#: (definition, its genre's raw spec, replace an existing definition).
Definition = tuple[DatasetTypeDef, Mapping[str, object] | None, bool]


@dataclass(frozen=True)
class Target:
    """One output's share of a put: the files it receives."""

    repo: DataRepository
    files: tuple[PlannedFile, ...]
    on_exists: str
    definitions: tuple[Definition, ...] = ()


@dataclass
class _Prepared:
    repo: DataRepository
    entry: PutEntry | RemovalEntry
    writer: RegistryWriter
    inline: dict[int, bytes] = field(default_factory=dict)


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
    failure = _first_failure(
        _each(lambda item: _stage(item[0], item[1], payloads[item[2].storage]), staged)
    )
    if failure is None:  # a large staged file's name must survive too: recovery reads it
        large = {
            repo.path: repo for repo, _, p in staged if payloads[p.storage].size > INLINE_LIMIT
        }
        failure = _first_failure(
            _each(lambda repo: fsync_directory(repo.root, layout.STAGING), large.values())
        )
    if failure is not None:
        _unlink_all((repo, layout.staged(name)) for repo, name, _ in staged)
        raise _failed(failure, f"put of {what} failed while writing")
    faults.crash_point("staged")

    participants = tuple(str(target.repo.path) for target in targets)
    with contextlib.ExitStack() as stack:
        prepared: list[_Prepared] = []
        try:
            # Inside the try: a lock that cannot be taken (a registry server gone) is a
            # failure before the commit point too, and the staged files go.
            for repo in sorted(
                {t.repo.path: t.repo for t in targets}.values(), key=lambda r: r.path
            ):
                stack.enter_context(repo.locks.repository())
            committed = time.time()
            for target in targets:
                entry = _entry(target, txid, dataset_type, data_id, payloads, provenance)
                entry = replace(entry, participants=participants, committed=committed)
                prepared.append(prepare_put(stack, target, entry, payloads))
        except BaseException as exc:
            _discard(prepared, staged)
            if isinstance(exc, Exception):
                raise _failed(exc, f"put of {what} failed while preparing") from exc
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
                for path in entry.paths:
                    _check_replaceable(repo, path)
                    _probe_directory(repo, path.rpartition("/")[0], None)
                ensure_reserve(repo.root)
                writer.remove(entry)
                prepared.append(_Prepared(repo, entry, writer))
        except BaseException as exc:
            if isinstance(exc, Exception):
                raise _failed(exc, f"{what} failed while preparing") from exc
            raise
        if not prepared:
            return []
        _commit_point(prepared, [], what)
        return [p.repo for p in _apply_all(prepared, what)]


# -- the steps ---------------------------------------------------------------------


def _stage(repo: DataRepository, name: str, payload: Payload) -> None:
    """Write one payload into ``repo``'s staging directory (fsynced if it is large)."""
    relative = layout.staged(name)
    sync = payload.size > INLINE_LIMIT
    if payload.data is not None:
        write_new(repo.root, relative, payload.data, sync=sync)
        return
    assert payload.source is not None
    fd = repo.root.open(relative, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with open(payload.source, "rb") as source:
            copied = _copy(source.fileno(), fd, payload.size)
        if copied != payload.size:
            raise TransactionError(
                f"{payload.source} changed size while it was being put; retry",
                errno=errno.EAGAIN,
            )
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        repo.root.unlink(relative)
        raise
    os.close(fd)


def _copy(source: int, destination: int, size: int) -> int:
    """Copy ``size`` bytes (in the kernel when it can: copy_file_range)."""
    done = 0
    try:
        while done < size:
            copied = os.copy_file_range(source, destination, size - done)
            if copied == 0:
                break
            done += copied
        return done
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    while chunk := os.pread(source, COPY_CHUNK, done):
        write_all(destination, chunk)
        done += len(chunk)
    return done


def _entry(
    target: Target,
    txid: str,
    dataset_type: str,
    data_id: Mapping[str, int | str],
    payloads: Mapping[str, Payload],
    provenance: Mapping[str, object],
) -> PutEntry:
    owner = target.repo.locks.owner()
    files = tuple(
        FileRecord(
            location=planned.location,
            primary=planned.primary,
            path=planned.path,
            storage=planned.storage,
            size=payloads[planned.storage].size,
            sha256=payloads[planned.storage].sha256,
            staged=layout.staged_name(txid, owner, index),
        )
        for index, planned in enumerate(target.files)
    )
    return PutEntry(txid, dataset_type, dict(data_id), 0, 0.0, files, (), dict(provenance))


def prepare_put(
    stack: contextlib.ExitStack,
    target: Target,
    entry: PutEntry,
    payloads: Mapping[str, Payload],
) -> _Prepared:
    """Everything before the commit point in one output (its lock held): afterwards only
    a crash or a lost disk can stop the put from applying here."""
    repo = target.repo
    _, left = recover_locked(repo)
    ensure_reserve(repo.root)
    writer = stack.enter_context(repo.registry.writer())
    key = canonical_data_id(entry.data_id)
    current = writer.current(entry.dataset_type, key)
    if current and target.on_exists == "error":
        raise DatasetExistsError(
            f"{entry.dataset_type} {entry.data_id} already exists in {repo.label} and its "
            "policy says on_exists: error; remove it first or set on_exists: version"
        )
    taken = [
        p.entry.version
        for p in left
        if p.entry.dataset_type == entry.dataset_type and p.entry.data_id == entry.data_id
    ]
    version = max([writer.max_version(entry.dataset_type, key), *taken]) + 1
    for record in entry.files:
        kept = layout.version_file(version, record.path)
        if repo.root.exists(kept):
            raise RegistryDamagedError(
                f"version {version} of {entry.dataset_type} {entry.data_id} already exists "
                f"({repo.root.absolute(kept)}) but the registry of {repo.label} does not "
                f"know it: the registry is behind the records; run 'butler reindex "
                f"{repo.path}'",
                errno=errno.EEXIST,
            )
        _check_replaceable(repo, record.path)
        _probe_directory(repo, record.path.rpartition("/")[0], record.staged)
        _probe_directory(repo, kept.rpartition("/")[0], record.staged)
    paths = {record.path for record in entry.files}
    stale = tuple(sorted({row.path for row in current} - paths))
    for path in stale:
        _check_replaceable(repo, path)
    config_staged = ""
    if target.definitions:
        config = repo.config_with(target.definitions)
        if config is not None:
            config_staged = layout.staged_name(entry.txid, repo.locks.owner(), len(entry.files))
            repo.stage_config(config, config_staged)
    entry = replace(entry, version=version, stale_paths=stale, config_staged=config_staged)
    try:
        writer.add(entry)  # proves the rows fit (a writable registry, a page on the disk)
    except BaseException:
        if config_staged:
            repo.root.unlink(layout.staged(config_staged))
        raise
    inline = {
        index: payloads[record.storage].data
        for index, record in enumerate(entry.files)
        if record.size <= INLINE_LIMIT and payloads[record.storage].data is not None
    }
    return _Prepared(repo, entry, writer, inline)  # type: ignore[arg-type]


def _check_replaceable(repo: DataRepository, path: str) -> None:
    """No directory, link or special file at ``path``; no immutable file to replace."""
    found = repo.root.check_regular(path)
    if found is None:
        return
    fd = repo.root.open(path)
    try:
        flags = struct.unpack("=i", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8))[:4])[0]
    except OSError:
        return  # a filesystem without these flags
    finally:
        os.close(fd)
    if flags & (_FS_IMMUTABLE_FL | _FS_APPEND_FL):
        raise TransactionError(
            f"{repo.root.absolute(path)} is immutable or append-only (chattr); clear the "
            "flag with 'chattr -i -a' to let the butler replace it",
            errno=errno.EPERM,
        )


def _probe_directory(repo: DataRepository, directory: str, staged: str | None) -> None:
    """Make ``directory`` (never through a link) and prove an entry can be made in it:
    a link of the staged file, removed at once (it fails as apply's rename would: a
    read-only or immutable directory, another mount, no permission, no space)."""
    with repo.root.directory(directory, create=True) as fd:
        if staged is None:
            if not os.access(".", os.W_OK, dir_fd=fd, effective_ids=True):
                raise PermissionError(errno.EACCES, "directory not writable", directory)
            return
        probe = f".butler-probe.{staged}"
        with repo.root.directory(layout.STAGING) as staging:
            os.link(staged, probe, src_dir_fd=staging, dst_dir_fd=fd, follow_symlinks=False)
        os.unlink(probe, dir_fd=fd)


def _commit_point(
    prepared: Sequence[_Prepared], staged: Sequence[tuple[DataRepository, str, object]], what: str
) -> None:
    """Write every journal durably; on failure undo everything (nothing is committed)."""

    def write(item: _Prepared) -> None:
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

    failure = _first_failure(_each(write, prepared))
    if failure is not None:
        _discard(prepared, staged)
        raise _failed(failure, f"{what} failed while preparing")
    faults.crash_point("prepared")


def _apply_all(prepared: Sequence[_Prepared], what: str) -> list[_Prepared]:
    """Apply in every output; a failure here leaves the journal for recovery to finish."""

    def apply(item: _Prepared) -> None:
        if isinstance(item.entry, RemovalEntry):
            apply_removal(item.repo, item.entry, item.writer)
        else:
            apply_put(item.repo, item.entry, item.writer, newest=True)
        with_reserve(item.repo.root, item.writer.commit)
        faults.crash_point("applied")

    results = _each(apply, prepared)
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


def _discard(
    prepared: Sequence[_Prepared], staged: Sequence[tuple[DataRepository, str, object]]
) -> None:
    """Undo a put before its commit point: journals, staged files and configs go."""
    paths = [(item.repo, layout.journal(item.entry.txid)) for item in prepared]
    for item in prepared:
        if isinstance(item.entry, PutEntry) and item.entry.config_staged:
            paths.append((item.repo, layout.staged(item.entry.config_staged)))
    paths += [(repo, layout.staged(name)) for repo, name, _ in staged]
    _unlink_all(paths)


def _unlink_all(paths: Iterable[tuple[DataRepository, str]]) -> None:
    for repo, relative in paths:
        with contextlib.suppress(OSError):
            repo.root.unlink(relative)


def _errno_of(exc: BaseException) -> int:
    number = getattr(exc, "errno", None)
    return number if isinstance(number, int) else errno.EIO


def _failed(exc: BaseException, doing: str) -> BaseException:
    """The error to raise for a failure before the commit point (nothing was changed)."""
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
        f"{doing} ({reason_of(exc)}); no output was changed; "
        f"{advice.get(number, 'fix the output, then retry')}",
        errno=number,
    )


# -- running one step in every output at once --------------------------------------------

_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _each(function: Callable[[T], object], items: Iterable[T]) -> list[object]:
    """``function`` over ``items``, concurrently (fsync releases the GIL); each result or
    the exception it raised."""
    items = list(items)
    if len(items) < 2 or faults.enabled():  # crash tests need a fixed order
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


__all__ = ["INLINE_LIMIT", "DataId", "Payload", "PlannedFile", "Target", "put", "remove"]
