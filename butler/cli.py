"""The ``butler`` command line (SPEC §7).  Minimal for now: ``reindex``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from butler.errors import ButlerError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="butler", description="the data butler")
    commands = parser.add_subparsers(dest="command", required=True)
    reindex = commands.add_parser("reindex", help="rebuild a repository's registry from disk")
    reindex.add_argument("repo")
    args = parser.parse_args(argv)
    try:
        from butler.maintenance import reindex as run_reindex

        report = run_reindex(args.repo)
        print(f"reindexed {args.repo}: {report.records} records, {len(report.adopted)} adopted")
    except ButlerError as exc:
        print(f"butler: {exc}", file=sys.stderr)
        return 1
    return 0
