"""What the commands print: aligned tables, JSON for scripts, sizes and times."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from butler.resolver import DatasetRef


def print_json(value: object) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> None:
    """Columns two spaces apart; the columns in ``right`` (numbers) aligned right."""
    widths = [
        max([len(header), *(len(row[i]) for row in rows)]) for i, header in enumerate(headers)
    ]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        )
        return "  ".join(padded).rstrip()

    print(line(headers))
    for row in rows:
        print(line(row))


def data_id_text(data_id: Mapping[str, object]) -> str:
    """``visit=1 ccd=2``: a data ID as it is typed on the command line."""
    return " ".join(f"{key}={value}" for key, value in data_id.items())


def ref_dict(ref: DatasetRef) -> dict[str, object]:
    """``DatasetRef.as_dict()`` and what a script needs besides."""
    return {
        **ref.as_dict(),
        "storage": ref.storage,
        "committed": ref.committed,
        "txid": ref.txid,
        "repository_path": ref.repository_path,
        "relative_path": ref.relative_path,
    }


def is_current(ref: DatasetRef) -> bool:
    """At its template path (current), or kept under .butler/versions/ (older or removed)."""
    return ref.path == os.path.join(ref.repository_path, ref.relative_path)


def timestamp(seconds: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")


def size_text(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
