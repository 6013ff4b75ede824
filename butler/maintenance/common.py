"""What reindex, verify and repair share: opening a source, reading records, hashing."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from butler import layout
from butler.durable import hash_fd
from butler.journal import Entry, decode
from butler.registry import Row
from butler.repository import DataRepository
from butler.resolver import Member

if TYPE_CHECKING:
    from butler.butler import Butler

Progress = Callable[[int, int], None]


@contextlib.contextmanager
def opened(
    source: Butler | str | os.PathLike[str], command_line_policy: Mapping[str, object] | None
) -> Iterator[Butler]:
    from butler.butler import Butler  # late: butler imports the whole library

    if isinstance(source, Butler):
        yield source
        return
    with Butler(source, command_line_policy=command_line_policy) as butler:
        yield butler


def members(butler: Butler) -> list[Member]:
    """Every existing repository once: search order, then write-only outputs."""
    found: dict[Path, Member] = {}
    for member in butler.resolver.search + butler.resolver.outputs:
        if member.exists:
            found.setdefault(member.repo.path, member)
    return list(found.values())


def read_file(repo: DataRepository, relative: str) -> bytes:
    fd = repo.root.open(relative)
    try:
        with os.fdopen(fd, "rb", closefd=False) as stream:
            return stream.read()
    finally:
        os.close(fd)


def read_entry(repo: DataRepository, relative: str) -> Entry:
    """A record or journal (TornEntryError if cut short)."""
    record = relative.startswith(layout.RECORDS + "/")
    return decode(read_file(repo, relative), str(repo.root.absolute(relative)), record=record)


def hash_relative(repo: DataRepository, relative: str) -> tuple[str, int]:
    """(sha256, size) of a file in ``repo``, opened without following links."""
    fd = repo.root.open(relative)
    try:
        return hash_fd(fd)
    finally:
        os.close(fd)


def hash_file(path: Path) -> tuple[str, int]:
    """(sha256, size) of a file anywhere (a good copy found by verify)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return hash_fd(fd)
    finally:
        os.close(fd)


def record_names(repo: DataRepository) -> list[str]:
    """Txids of the records, in commit order (txids begin with the time)."""
    try:
        names = repo.root.listdir(layout.RECORDS)
    except FileNotFoundError:
        return []
    return sorted(txid for txid in map(layout.txid_of, names) if txid)


def data_id_text(data_id: str | Mapping[str, object], repo: DataRepository, type_: str) -> str:
    """``visit=1 ccd=2``: keys in the genre's order, as a user writes them."""
    values = json.loads(data_id) if isinstance(data_id, str) else dict(data_id)
    definition = repo.policy.dataset_types.get(type_)
    order = list(definition.keys) if definition is not None else []
    keys = sorted(values, key=lambda key: order.index(key) if key in order else len(order))
    return " ".join(f"{key}={values[key]}" for key in keys)


def describe(row: Row, repo: DataRepository) -> str:
    return f"{row.dataset_type} {data_id_text(row.data_id, repo, row.dataset_type)} v{row.version}"
