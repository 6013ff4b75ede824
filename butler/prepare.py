"""Everything before a put's commit point in one output: staging and prepare.

*Staging* (no lock held) writes a payload into the output's
``.butler/staging/``.  *Prepare* (the output locked) makes or checks everything
applying will need, so that a foreseeable failure (a directory or a link in the
way, a read-only or immutable directory, another mount, no inode, no space, an
unwritable or lost registry) happens here, where undoing changes nothing:

- the version is assigned in the registry's write transaction, the rows
  inserted (uncommitted), ``.butler/reserve`` allocated;
- template and version directories are made (never through a link) and an
  unnamed file is created in each (``O_TMPFILE``: it fails as apply's link or
  rename would, and a crash leaves nothing); each must be on the staging
  directory's mount;
- no directory, link or special file at the template path, no immutable file to
  replace, nothing already at the version's own name;
- a ``butler.yaml`` the put must change is written as a staged file.

:func:`discard` undoes all of it.  docs/design.md has the protocol.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from butler import layout
from butler.apply import ensure_reserve
from butler.confine import write_denied
from butler.durable import COPY_CHUNK, write_all, write_new
from butler.errors import DatasetExistsError, RegistryDamagedError, TransactionError
from butler.journal import Entry, FileRecord, PutEntry, RemovalEntry
from butler.policy import DatasetTypeDef
from butler.recovery import recover_locked
from butler.registry import RegistryWriter, canonical_data_id
from butler.repository import DataRepository

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
class Prepared:
    repo: DataRepository
    entry: PutEntry | RemovalEntry
    writer: RegistryWriter
    inline: dict[int, bytes] = field(default_factory=dict)
    made: list[str] = field(default_factory=list)  # directories made: removed if undone


def stage(repo: DataRepository, name: str, payload: Payload) -> None:
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


def entry_for(
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


@dataclass
class Locked:
    """One output, locked for a batch of puts: what every put's prepare there shares."""

    repo: DataRepository
    writer: RegistryWriter
    left: Sequence[Entry]  # journals recovery left (a participant unreachable)
    mount: str  # the staging directory's mount id
    #: Directories proven writable in this batch (the lock is held: they stay so).
    proven: set[str] = field(default_factory=set)

    def probe(self, directory: str, made: list[str]) -> None:
        """``probe_directory``, once per batch for a directory that was there already (one
        this put makes may be removed again if the put is undone)."""
        if directory not in self.proven:
            before = len(made)
            probe_directory(self.repo, directory, made, self.mount)
            if len(made) == before:
                self.proven.add(directory)

    @classmethod
    def open(cls, stack: contextlib.ExitStack, repo: DataRepository) -> Locked:
        """After taking the lock: recover, check, open the write transaction."""
        repo.check_registry()  # a lost registry is rebuilt by reindex, never started afresh
        _, pending = recover_locked(repo, settle_applied=False)
        ensure_reserve(repo.root)
        writer = stack.enter_context(repo.registry.writer())
        return cls(repo, writer, [p.entry for p in pending], staging_mount(repo))


def prepare_put(
    locked: Locked,
    target: Target,
    entry: PutEntry,
    payloads: Mapping[str, Payload],
) -> Prepared:
    """Everything before the commit point in one output (its lock held): afterwards only
    a crash or a lost disk can stop the put from applying here."""
    repo, writer = locked.repo, locked.writer
    key = canonical_data_id(entry.data_id)
    current = writer.current(entry.dataset_type, key)
    if current and target.on_exists == "error":
        raise DatasetExistsError(
            f"{entry.dataset_type} {entry.data_id} already exists in {repo.label} and its "
            "policy says on_exists: error; remove it first or set on_exists: version"
        )
    taken = [
        pending.version
        for pending in locked.left
        if pending.dataset_type == entry.dataset_type and pending.data_id == entry.data_id
    ]
    version = max([writer.max_version(entry.dataset_type, key), *taken]) + 1
    made: list[str] = []
    config_staged = ""
    # No other dataset type of this output may own these paths (templates that collide).
    repo.policy.check_path_owner(entry.dataset_type, [record.path for record in entry.files])
    try:
        for record in entry.files:
            kept = layout.version_file(version, record.path)
            if repo.root.exists(kept):
                raise RegistryDamagedError(
                    f"version {version} of {entry.dataset_type} {entry.data_id} already "
                    f"exists ({repo.root.absolute(kept)}) but the registry of {repo.label} "
                    "does not know it: the registry is behind the records; run 'butler "
                    f"reindex {repo.path}'",
                    errno=errno.EEXIST,
                )
            check_replaceable(repo, record.path)
            locked.probe(record.path.rpartition("/")[0], made)
            locked.probe(kept.rpartition("/")[0], made)
        paths = {record.path for record in entry.files}
        stale = tuple(sorted({row.path for row in current} - paths))
        for path in stale:
            check_replaceable(repo, path)
        if target.definitions:
            config = repo.config_with(target.definitions)
            if config is not None:
                config_staged = layout.staged_name(entry.txid, repo.locks.owner(), len(entry.files))
                repo.stage_config(config, config_staged)
        entry = replace(entry, version=version, stale_paths=stale, config_staged=config_staged)
        writer.add(entry, fresh=True)  # proves the rows fit (a writable registry, a page)
    except BaseException:
        if config_staged:
            repo.root.unlink(layout.staged(config_staged))
        remove_directories(repo, made)
        raise
    inline = {
        index: payloads[record.storage].data
        for index, record in enumerate(entry.files)
        if record.size <= INLINE_LIMIT and payloads[record.storage].data is not None
    }
    return Prepared(repo, entry, writer, inline, made)  # type: ignore[arg-type]


def prepare_removal(locked: Locked, entry: RemovalEntry) -> Prepared:
    """Prepare (the output locked) taking ``entry``'s files off their template paths."""
    for path in entry.paths:
        check_replaceable(locked.repo, path)
        probe_directory(locked.repo, path.rpartition("/")[0], mount=locked.mount)
    locked.writer.remove(entry)  # proves the registry can record it
    return Prepared(locked.repo, entry, locked.writer)


def check_replaceable(repo: DataRepository, path: str) -> None:
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


def probe_directory(
    repo: DataRepository, directory: str, made: list[str] | None = None, mount: str = ""
) -> None:
    """Make ``directory`` (never through a link) and prove that apply can make an entry in
    it: writable to this process (not read-only, not immutable, permitted: what apply's
    link or rename needs), and on ``mount``, the staging directory's mount (a rename
    cannot cross mounts, bind mounts included).  No inode is needed after the commit
    point (apply only links and renames), and a directory entry that needs a block gets
    the reserve's."""
    with repo.root.directory(directory, create=True, made=made) as fd:
        number = write_denied(fd)
        if number == 0 and mount and repo.root.mount_of(fd) != mount:
            number = errno.EXDEV
        if number:
            why = (
                "is another mount than the repository's .butler (a bind mount?)"
                if number == errno.EXDEV
                else os.strerror(number)
            )
            raise OSError(number, why, repo.root.absolute(directory))


def staging_mount(repo: DataRepository) -> str:
    """The mount id of the repository's staging directory (where renames start from)."""
    with repo.root.directory(layout.STAGING) as fd:
        return repo.root.mount_of(fd)


def discard(
    prepared: Sequence[Prepared], staged: Sequence[tuple[DataRepository, str, object]]
) -> None:
    """Undo a put before its commit point: journals, staged files and configs go."""
    paths = [(item.repo, layout.journal(item.entry.txid)) for item in prepared]
    for item in prepared:
        if isinstance(item.entry, PutEntry) and item.entry.config_staged:
            paths.append((item.repo, layout.staged(item.entry.config_staged)))
    paths += [(repo, layout.staged(name)) for repo, name, _ in staged]
    unlink_all(paths)
    for item in prepared:
        remove_directories(item.repo, item.made)


def remove_directories(repo: DataRepository, made: Sequence[str]) -> None:
    """Directories a prepare made, deepest first (those still empty)."""
    for directory in reversed(made):
        repo.root.rmdir(directory)


def unlink_all(paths: Iterable[tuple[DataRepository, str]]) -> None:
    for repo, relative in paths:
        with contextlib.suppress(OSError):
            repo.root.unlink(relative)
