"""The journal and record format (butler.journal): round trips, torn entries, round-1 records."""

from __future__ import annotations

import json

import pytest

from butler.journal import (
    FileRecord,
    PutEntry,
    RemovalEntry,
    TornEntryError,
    decode,
    encode,
    header_size,
    inline_bytes,
    new_txid,
    with_inline,
)

PUT = PutEntry(
    txid="18ed06a6b271c82c-db7cc576a35f",
    dataset_type="calexp",
    data_id={"visit": 1, "ccd": 1},
    version=3,
    committed=1796099139.5,
    files=(
        FileRecord(0, True, "calexp/c001.fits", "fits", 5, "a" * 64, staged="x.0"),
        FileRecord(1, False, "npy/c001.npy", "npy", 3, "b" * 64, staged="x.1"),
    ),
    participants=("/a", "/b"),
    provenance={"user": "me", "caller": {"run": [1, 2]}},
    stale_paths=("calexp/old.fits",),
    config_staged="x.2",
)
REMOVAL = RemovalEntry(
    "18ed06a6b6509488-56aa1dbf84ce", "visitInfo", {"visit": 2}, 1, 5.0, ("v/2.yaml",), ("/a",)
)


def test_entries_round_trip() -> None:
    for entry in (PUT, REMOVAL):
        assert decode(encode(entry)) == entry


def test_inline_payloads_follow_the_header() -> None:
    entry, payloads = with_inline(PUT, {0: b"FITS!", 1: b"npy"})
    data = encode(entry, payloads)
    decoded = decode(data)
    assert isinstance(decoded, PutEntry)
    assert [inline_bytes(data, record) for record in decoded.files] == [b"FITS!", b"npy"]
    # A record keeps the header only: its offsets announce nothing any more.
    record = data[: header_size(data)]
    assert decode(record, record=True) == decoded
    with pytest.raises(TornEntryError, match="shorter than the payload"):
        decode(record)  # as a journal, the payload is missing: torn


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # cut inside the header
        lambda data: data[: header_size(data) - 1],  # the newline lost
        lambda data: b"",
        lambda data: b"\x00" * 40,
        lambda data: data.replace(b'"version":3', b'"version":"3"'),  # mistyped
        lambda data: data.replace(b'"txid"', b'"tixd"'),  # a field missing
        lambda data: b"[1, 2]\n",
    ],
)
def test_a_torn_entry_is_detected(damage: object) -> None:
    entry, payloads = with_inline(PUT, {0: b"FITS!"})
    data = encode(entry, payloads)
    with pytest.raises(TornEntryError):
        decode(damage(data))  # type: ignore[operator]


def test_round_1_records_still_decode() -> None:
    put = {
        "txid": PUT.txid,
        "dataset_type": "calexp",
        "data_id": {"visit": 1, "ccd": 1},
        "version": 2,
        "previous": 1,
        "previous_files": ["calexp/c001.fits"],
        "files": [
            {
                "location": 0,
                "primary": True,
                "path": "calexp/c001.fits",
                "staging": "s.0",
                "storage": "fits",
                "size": 5,
                "sha256": "a" * 64,
            }
        ],
        "provenance": {},
        "participants": ["/a"],
        "committed": 1.0,
    }
    entry = decode(json.dumps(put).encode())
    assert isinstance(entry, PutEntry) and entry.files[0].staged == "s.0"
    removal = {**put, "removed": True}
    assert isinstance(decode(json.dumps(removal).encode(), record=True), RemovalEntry)


def test_txids_sort_by_time() -> None:
    first, second = new_txid(), new_txid()
    assert first < second and len(first) == 29
