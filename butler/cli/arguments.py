"""Arguments several commands share, and opening the Butler they name."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from butler.butler import Butler


def add_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", metavar="REPO_OR_AGG", help="a repository or an aggregator file (.yaml)"
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def add_registry_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--registry", metavar="URL", help=what)
    parser.add_argument(
        "--schema",
        help="the PostgreSQL schema of the registry (default: butler_<label>, numbered if taken)",
    )


def add_data_id_arguments(parser: argparse.ArgumentParser) -> None:
    add_source(parser)
    parser.add_argument("dataset_type", metavar="DATASETTYPE")
    parser.add_argument("pairs", metavar="key=value", nargs="*", help="the data ID")


def add_policy_option(parser: argparse.ArgumentParser, dest: str) -> None:
    parser.add_argument(
        "--policy",
        metavar="KEY=VALUE",
        dest=dest,
        action="append",
        default=[],
        help="override a policy setting, later wins (e.g. on_exists=error, "
        "datasetTypes.calexp.storage=hdf5); repeatable",
    )


def parse_pairs(parser: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, str]:
    """``["visit=1", "ccd=2"]`` as a data ID; values stay strings (the library coerces)."""
    result: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            parser.error(f"{item!r} is not key=value (e.g. visit=903334)")
        if key in result:
            parser.error(f"data ID key {key!r} is given twice")
        result[key] = value
    return result


def is_pair(item: str) -> bool:
    """``key=value`` rather than a file name (a file that exists is a file, = or not)."""
    key, sep, _ = item.partition("=")
    return bool(sep) and key.isidentifier() and not os.path.exists(item)


@contextmanager
def open_butler(args: argparse.Namespace) -> Iterator[Butler]:
    """The Butler of ``args.source`` with the ``--policy`` overrides of the command line."""
    from butler.butler import Butler
    from butler.policy import assignments_to_policy

    policy = assignments_to_policy(args.assignments) or None
    with Butler(args.source, command_line_policy=policy) as butler:
        yield butler
