"""The journal of a put or a removal, and the plain-text record it becomes.

A *journal* (``.butler/journal/<txid>.json``) is what each participating output
holds between prepare and settle; the transaction is committed exactly when
every participant holds its journal.  Settling turns it into the *record*
(``.butler/records/<txid>.json``): the same header, without payload bytes.
Records are the repository's plain-text history: versions, checksums and
provenance, from which ``butler reindex`` rebuilds the registry.

On disk an entry is one line of JSON (the header), a newline, then the
payloads of the files the header marks ``inline`` (small puts carry their
bytes in the journal: one durable write instead of two).  An entry that does
not end its header with a newline, does not parse, lacks a field, or is
shorter than its payloads is *torn*: a crash cut it (or damage did), and
:func:`decode` raises :class:`TornEntryError`.

Records written before this module (round 1) are plain JSON objects; they
decode too.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from butler.errors import RepositoryError

DataId = dict[str, int | str]


def new_txid() -> str:
    """A new transaction id: the time first (fixed width), so that records sort in commit
    order for a rebuild, then 48 random bits (``random``: reseeded in a forked child, and
    no system call per put as ``uuid4`` makes)."""
    return f"{time.time_ns():016x}-{random.getrandbits(48):012x}"


class TornEntryError(RepositoryError):
    """A journal or record that a crash or damage cut short."""


@dataclass(frozen=True)
class FileRecord:
    """One file of a dataset version: where it goes and what it holds."""

    location: int  # index of the location in the dataset type's definition
    primary: bool  # the file get() reads
    path: str  # the template path, relative to the repository
    storage: str
    size: int
    sha256: str
    staged: str = ""  # its name in .butler/staging/ while the put is under way
    inline: int = -1  # offset of its bytes after the header, or -1 (staged only)


@dataclass(frozen=True)
class PutEntry:
    """One version of one dataset put to one output."""

    txid: str
    dataset_type: str
    data_id: DataId
    version: int
    committed: float
    files: tuple[FileRecord, ...]
    participants: tuple[str, ...]  # every output's absolute path, this one included
    provenance: Mapping[str, object] = field(default_factory=dict)
    #: Template paths of the previous version that this one does not reuse (its
    #: template changed): applying removes them from the tree (their versions stay).
    stale_paths: tuple[str, ...] = ()
    #: A staged ``butler.yaml`` to rename into place when applying ("" if unchanged):
    #: a dataset type copied into the output at its first put.
    config_staged: str = ""


@dataclass(frozen=True)
class RemovalEntry:
    """The current version of one dataset removed from one output."""

    txid: str
    dataset_type: str
    data_id: DataId
    version: int  # the version removed (it stays readable under .butler/versions/)
    committed: float
    paths: tuple[str, ...]  # its template paths, which leave the tree
    participants: tuple[str, ...]


Entry = PutEntry | RemovalEntry


def encode(entry: Entry, payloads: Sequence[bytes] = ()) -> bytes:
    """The entry's bytes: the header line, then ``payloads`` (in the order of the files
    whose ``inline`` offsets they fill; see :func:`with_inline`)."""
    header = json.dumps(_to_json(entry), separators=(",", ":"), ensure_ascii=False)
    return b"".join([header.encode(), b"\n", *payloads])


def with_inline(entry: PutEntry, payloads: Mapping[int, bytes]) -> tuple[PutEntry, list[bytes]]:
    """``entry`` with the files numbered in ``payloads`` marked inline, and the bytes in order."""
    files = []
    ordered = []
    offset = 0
    for index, record in enumerate(entry.files):
        data = payloads.get(index)
        if data is None:
            files.append(record)
            continue
        files.append(replace(record, inline=offset))
        ordered.append(data)
        offset += len(data)
    return replace(entry, files=tuple(files)), ordered


def decode(data: bytes, source: str = "journal", *, record: bool = False) -> Entry:
    """The entry in ``data``; TornEntryError if it is cut short or malformed.

    A ``record`` keeps only the header (settling cut its payload off), so its inline
    offsets announce nothing to check."""
    header, newline, _ = data.partition(b"\n")
    if newline:
        try:
            value = json.loads(header)
        except ValueError:
            value = None
    else:
        # A round-1 record is one JSON object, perhaps without a final newline.
        try:
            value = json.loads(data)
        except ValueError:
            value = None
    if not isinstance(value, dict):
        raise TornEntryError(f"{source} is cut short or not a butler journal/record")
    try:
        entry = _from_json(value)
    except (KeyError, TypeError, ValueError) as exc:
        raise TornEntryError(f"{source} lacks or mistypes a field ({exc})") from None
    if isinstance(entry, PutEntry) and not record:
        end = len(header) + 1
        for file in entry.files:
            if file.inline >= 0 and end + file.inline + file.size > len(data):
                raise TornEntryError(f"{source} is shorter than the payload it announces")
    return entry


def header_size(data: bytes) -> int:
    """Bytes up to and including the header's newline (what a record keeps)."""
    return data.index(b"\n") + 1


def inline_bytes(data: bytes, record: FileRecord) -> bytes:
    start = header_size(data) + record.inline
    return data[start : start + record.size]


def as_record(entry: Entry) -> Entry:
    """What a settled entry keeps: no staged names, no inline offsets."""
    if isinstance(entry, RemovalEntry):
        return entry
    files = tuple(replace(record, staged="", inline=-1) for record in entry.files)
    return replace(entry, files=files, config_staged="")


# -- JSON ------------------------------------------------------------------------------


def _to_json(entry: Entry) -> dict[str, object]:
    common: dict[str, object] = {
        "txid": entry.txid,
        "dataset_type": entry.dataset_type,
        "data_id": dict(entry.data_id),
        "version": entry.version,
        "committed": entry.committed,
        "participants": list(entry.participants),
    }
    if isinstance(entry, RemovalEntry):
        return {"kind": "remove", **common, "paths": list(entry.paths)}
    files: list[dict[str, object]] = []
    for record in entry.files:
        item: dict[str, object] = {
            "location": record.location,
            "primary": record.primary,
            "path": record.path,
            "storage": record.storage,
            "size": record.size,
            "sha256": record.sha256,
        }
        if record.staged:
            item["staged"] = record.staged
        if record.inline >= 0:
            item["inline"] = record.inline
        files.append(item)
    value: dict[str, object] = {"kind": "put", **common, "files": files}
    value["provenance"] = dict(entry.provenance)
    if entry.stale_paths:
        value["stale_paths"] = list(entry.stale_paths)
    if entry.config_staged:
        value["config_staged"] = entry.config_staged
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: object) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _data_id(value: object) -> DataId:
    if not isinstance(value, dict):
        raise TypeError("data_id must be a mapping")
    result: DataId = {}
    for key, item in value.items():
        if not isinstance(key, str) or type(item) not in (int, str):
            raise TypeError("data_id values must be integers or strings")
        result[key] = item
    return result


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TypeError("expected a list")
    return tuple(_str(item) for item in value)


def _file(value: object) -> FileRecord:
    if not isinstance(value, dict):
        raise TypeError("a file must be a mapping")
    return FileRecord(
        location=_int(value["location"]),
        primary=bool(value["primary"]),
        path=_str(value["path"]),
        storage=_str(value["storage"]),
        size=_int(value["size"]),
        sha256=_str(value["sha256"]),
        staged=_str(value.get("staged", value.get("staging", ""))),  # round 1: "staging"
        inline=_int(value.get("inline", -1)),
    )


def _from_json(value: dict[str, object]) -> Entry:
    kind = value.get("kind", "remove" if value.get("removed") else "put")
    txid = _str(value["txid"])
    dataset_type = _str(value["dataset_type"])
    data_id = _data_id(value["data_id"])
    version = _int(value["version"])
    committed = _float(value["committed"])
    participants = _strings(value.get("participants", []))
    if kind == "remove":
        return RemovalEntry(
            txid,
            dataset_type,
            data_id,
            version,
            committed,
            _strings(value.get("paths", [])),
            participants,
        )
    if kind != "put":
        raise ValueError(f"unknown kind {kind!r}")
    files = value["files"]
    if not isinstance(files, list) or not files:
        raise TypeError("files must be a non-empty list")
    provenance = value.get("provenance", {})
    if not isinstance(provenance, dict):
        raise TypeError("provenance must be a mapping")
    return PutEntry(
        txid,
        dataset_type,
        data_id,
        version,
        committed,
        tuple(_file(item) for item in files),
        participants,
        provenance,
        _strings(value.get("stale_paths", value.get("previous_files", []))),
        _str(value.get("config_staged", "")),
    )
