"""Applying a committed put or removal in one output: the steps after the commit point.

Every step is idempotent, so the same code rolls forward a put whose writer
died at any instant (recovery) and finishes a live one.  Applying a put:

1. gives each file its version's immutable name, ``.butler/versions/v<N>/<path>``
   (a hard link to the staged file; written from the journal's payload if the
   staged file is gone and the name is not there yet);
2. renames the staged file onto its template path, if this is the newest
   version (plain tools see the current version there);
3. removes template paths of the previous version that this one no longer
   uses (its template changed), and installs a staged ``butler.yaml``;
4. records the rows in the registry (the caller commits them).

Nothing is recorded that was not verified: a name reused from an earlier
attempt is checked against the journal's size and sha256 first.  Everything
that could fail for a foreseeable reason (a missing or unwritable directory, a
link in the way, a full disk for a directory entry or a registry page) was
checked or made before the commit point (:func:`butler.transaction.prepare_put`);
what remains is a crash or a lost disk.  A directory entry or a registry page
that still finds the disk full gets the space kept in ``.butler/reserve``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Sequence
from typing import TypeVar

from butler import faults, layout
from butler.confine import Root
from butler.durable import hash_fd, write_new
from butler.errors import RepositoryError, TransactionError
from butler.journal import FileRecord, PutEntry, RemovalEntry, inline_bytes
from butler.registry import RegistryWriter
from butler.repository import DataRepository

T = TypeVar("T")

RESERVE_BYTES = 1 << 20  # a registry transaction and a few directory blocks, with room
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class ApplyError(TransactionError):
    """A committed entry could not be applied here (its data is gone: a lost disk)."""


def ensure_reserve(root: Root) -> None:
    """Keep ``.butler/reserve`` allocated, or refuse the put now (before its commit point)."""
    try:
        found = root.lstat(layout.RESERVE)
        if stat.S_ISREG(found.st_mode) and found.st_blocks * 512 >= RESERVE_BYTES:
            return
    except FileNotFoundError:
        pass
    fd = root.open(layout.RESERVE, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, RESERVE_BYTES)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        os.pwrite(fd, bytes(RESERVE_BYTES), 0)  # no fallocate here: allocate by writing
    finally:
        os.close(fd)


def with_reserve(root: Root, step: Callable[[], T]) -> T:
    """Run ``step``; if the disk is full, release the reserve and run it once more."""
    try:
        return step()
    except OSError as exc:
        if exc.errno not in _NO_SPACE:
            raise
        number = exc.errno
    except RepositoryError as exc:
        if exc.errno not in _NO_SPACE:
            raise
        number = exc.errno
    root.unlink(layout.RESERVE)  # the next prepare allocates it again, or refuses
    try:
        return step()
    except OSError as exc:
        if exc.errno == number:
            exc.strerror = f"{exc.strerror} (even after releasing the repository's reserve)"
        raise


def commit(
    repo: DataRepository, writer: RegistryWriter, entries: Sequence[PutEntry | RemovalEntry]
) -> None:
    """Commit ``writer`` (holding the rows of ``entries``).  If the disk is full, SQLite
    may have rolled the transaction back: release the reserve and record them again."""
    try:
        writer.commit()
        return
    except RepositoryError as exc:
        if exc.errno not in _NO_SPACE:
            raise
    repo.root.unlink(layout.RESERVE)
    with repo.registry.writer() as again:
        for entry in entries:
            if isinstance(entry, RemovalEntry):
                again.remove(entry)
            else:
                again.add(entry)
        again.commit()


def apply_put(
    repo: DataRepository,
    entry: PutEntry,
    writer: RegistryWriter,
    *,
    newest: bool,
    journal_bytes: bytes | None = None,
    live: bool = False,
) -> None:
    """Roll ``entry`` forward in ``repo`` and add its rows to ``writer`` (not committed).

    ``newest``: no later version of the dataset is recorded, so this one takes the
    template path.  ``journal_bytes``: the journal (for inline payloads), when applying
    from recovery.  ``live``: the put that prepared it, in the same process and the same
    registry transaction, applies it now (its rows are in ``writer`` already, and its
    staged files are where it put them: the first attempt of each step needs no look).
    """
    root = repo.root
    for record in entry.files:
        if not (live and _link_staged(root, entry, record)):
            _place_version(root, entry, record, journal_bytes)
        faults.crash_point("linked")
    reused = {record.path for record in entry.files}
    for record in entry.files:
        staged = layout.staged(record.staged) if record.staged else ""
        if newest:
            _take_template_path(root, entry, record, staged)
        elif staged:
            root.unlink(staged)
    if newest:
        for stale in set(entry.stale_paths) - reused:
            root.unlink(stale)
    faults.crash_point("renamed")
    if entry.config_staged and root.exists(layout.staged(entry.config_staged)):
        repo.install_config(entry.config_staged)
    if not live:
        with_reserve(root, lambda: writer.add(entry))


def _link_staged(root: Root, entry: PutEntry, record: FileRecord) -> bool:
    """The live put's first attempt: link the staged file at its version's name.  False
    if that name exists or the staged file does not (the careful path looks then)."""
    if not record.staged:
        return False
    target = layout.version_file(entry.version, record.path)
    try:
        with_reserve(root, lambda: root.link(layout.staged(record.staged), target))
    except (FileExistsError, FileNotFoundError):
        return False
    return True


def apply_removal(repo: DataRepository, entry: RemovalEntry, writer: RegistryWriter) -> None:
    """Take a removed version's files off their template paths; mark it in ``writer``."""
    root = repo.root
    for path in entry.paths:
        version_file = layout.version_file(entry.version, path)
        current = _lstat(root, path)
        kept = _lstat(root, version_file)
        # Only that version's file leaves: a newer one put meanwhile stays.
        if current is not None and (kept is None or _same(current, kept)):
            root.unlink(path)
    faults.crash_point("renamed")
    with_reserve(root, lambda: writer.remove(entry))


def _place_version(
    root: Root, entry: PutEntry, record: FileRecord, journal_bytes: bytes | None
) -> None:
    """Make ``.butler/versions/v<N>/<path>`` hold this file's bytes (verified)."""
    target = layout.version_file(entry.version, record.path)
    existing = _lstat(root, target)
    if existing is not None:
        if _verified(root, target, record):
            return
        if journal_bytes is None and not record.staged:
            raise ApplyError(
                f"{root.absolute(target)} does not hold the bytes its journal records",
                errno=errno.EIO,
            )
        root.unlink(target)  # a damaged copy: made again below from a verified source
    staged = layout.staged(record.staged) if record.staged else ""
    if staged and _lstat(root, staged) is not None:
        if journal_bytes is not None and not _verified(root, staged, record):
            raise ApplyError(
                f"staged file {root.absolute(staged)} does not hold the bytes its journal "
                "records; the put cannot be applied here",
                errno=errno.EIO,
            )
        with_reserve(root, lambda: root.link(staged, target))
        return
    if journal_bytes is not None and record.inline >= 0:
        data = inline_bytes(journal_bytes, record)
        with_reserve(root, lambda: write_new(root, target, data, sync=False))
        return
    raise ApplyError(
        f"the bytes of {entry.dataset_type} {entry.data_id} version {entry.version} "
        f"({record.path}) are gone from {root.path} (no staged file, no copy in the "
        "journal); run 'butler repair' to copy them from another output",
        errno=errno.EIO,
    )


def _take_template_path(root: Root, entry: PutEntry, record: FileRecord, staged: str) -> None:
    """Put the version's file at its template path (one rename: readers of the tree see
    the old file or the new one)."""
    target = layout.version_file(entry.version, record.path)
    if staged:
        try:
            with_reserve(root, lambda: root.rename(staged, record.path))
            return
        except FileNotFoundError:
            pass  # renamed already, or gone: look below
    current = _lstat(root, record.path)
    kept = _lstat(root, target)
    if kept is None or (current is not None and _same(current, kept)):
        return  # renamed already (a crash after the rename)
    # The staged name is gone but the template path holds another file: link the
    # version's file beside it and rename it over (recovery only).
    temporary = f"{record.path.rpartition('/')[0]}/.butler-apply.{entry.txid}".lstrip("/")
    root.unlink(temporary)
    with_reserve(root, lambda: root.link(target, temporary))
    root.rename(temporary, record.path)


def _verified(root: Root, relative: str, record: FileRecord) -> bool:
    try:
        fd = root.open(relative)
    except OSError:
        return False
    try:
        if os.fstat(fd).st_size != record.size:
            return False
        return hash_fd(fd)[0] == record.sha256
    finally:
        os.close(fd)


def _lstat(root: Root, relative: str) -> os.stat_result | None:
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        return root.lstat(relative)
    return None


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
