"""``butler put``, ``get``, ``query``, ``versions`` and ``provenance``: datasets."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from butler.cli.arguments import (
    add_data_id_arguments,
    add_json_option,
    add_source,
    is_pair,
    open_butler,
    parse_pairs,
)
from butler.cli.messages import PROG, CommandError, describe_error, plural
from butler.cli.output import (
    data_id_text,
    is_current,
    print_json,
    print_table,
    ref_dict,
    timestamp,
)

if TYPE_CHECKING:
    from butler.butler import Butler
    from butler.policy import Location
    from butler.resolver import DatasetRef


# -- put -------------------------------------------------------------------------------------


#: Files one ``butler put`` commits together (a group commit's batch).
_CHUNK = 64


def put_arguments(parser: argparse.ArgumentParser) -> None:
    add_source(parser)
    parser.add_argument("dataset_type", metavar="DATASETTYPE")
    parser.add_argument("file", metavar="FILE", help="the file to ingest (checked by its format)")
    parser.add_argument(
        "items",
        metavar="FILE|key=value",
        nargs="*",
        help="the data ID; with several files, each file's data ID is read from its path "
        "by the dataset type's template, and key=value pairs apply to every file",
    )
    add_json_option(parser)


def run_put(args: argparse.Namespace) -> int:
    from butler.progress import ProgressBar

    pairs = parse_pairs(args.parser, [item for item in args.items if is_pair(item)])
    files = [args.file, *(item for item in args.items if not is_pair(item))]
    refs: list[DatasetRef] = []
    with open_butler(args) as butler:
        jobs = _put_jobs(butler, args.source, args.dataset_type, files, pairs)
        with ProgressBar("put") as bar:
            if len(jobs) == 1:
                file, data_id = jobs[0]
                refs.extend(butler.ingest(file, args.dataset_type, data_id))
            else:
                # Committed together (butler.group): one lock round per chunk of files.
                failed: list[tuple[str, Exception]] = []
                for start in range(0, len(jobs), _CHUNK):
                    chunk = jobs[start : start + _CHUNK]
                    items = [(file, args.dataset_type, data_id) for file, data_id in chunk]
                    for (file, _), result in zip(chunk, butler.ingest_many(items), strict=True):
                        if isinstance(result, Exception):
                            failed.append((file, result))
                        else:
                            refs.extend(result)
                    bar(min(start + _CHUNK, len(jobs)), len(jobs))
                if failed:
                    file, exc = failed[0]
                    raise CommandError(
                        f"{file}: {describe_error(exc, 'put', args.source)} "
                        f"({plural(len(failed), 'file')} of {len(jobs)} not put, each all or "
                        f"nothing; the other {len(jobs) - len(failed)} were put)"
                    ) from exc
    if args.json:
        print_json([ref_dict(ref) for ref in refs])
    else:
        for ref in refs:
            print(
                f"put {ref.dataset_type} {data_id_text(ref.data_id)} version {ref.version} "
                f"in {ref.repository} ({plural(ref.size, 'byte')})"
            )
    return 0


def _put_jobs(
    butler: Butler, source: str, dataset_type: str, files: list[str], pairs: dict[str, str]
) -> list[tuple[str, dict[str, object]]]:
    """(file, data ID) for each file, all checked before anything is written."""
    from butler.registry import canonical_data_id
    from butler.template import coerce_data_id

    reserved = [key for key in ("version", "repositoryLabel") if key in pairs]
    if reserved:
        raise CommandError(
            f"put takes no {' or '.join(f'{key}=' for key in reserved)}: versions are "
            "numbered by the butler and a put goes to every output that accepts the type; "
            "leave them out"
        )
    definition = butler.definition(dataset_type)
    example = " ".join(f"{key}=..." for key in definition.keys)
    jobs: list[tuple[str, dict[str, object]]] = []
    seen: dict[str, str] = {}
    for file in files:
        if not os.path.isfile(file):
            raise CommandError(f"{file} is not a file; give the path of the file to put")
        if len(files) == 1 and pairs:
            data_id: dict[str, object] = dict(pairs)
        else:
            parsed = _data_id_from_path(definition.locations, dataset_type, file)
            if parsed is None:
                templates = ", ".join(repr(loc.template.text) for loc in definition.locations)
                raise CommandError(
                    f"cannot read a data ID from the path {file} ({dataset_type} template "
                    f"{templates}); put it alone with its data ID: {example} "
                    f"('{PROG} types {source}' shows the templates)"
                )
            data_id = {**parsed, **pairs}
        key = canonical_data_id(coerce_data_id(data_id, definition.keys))
        if key in seen:
            raise CommandError(f"{seen[key]} and {file} have the same data ID {key}")
        seen[key] = file
        jobs.append((file, data_id))
    return jobs


def _data_id_from_path(
    locations: Sequence[Location], dataset_type: str, file: str
) -> dict[str, object] | None:
    """The data ID a location's template reads from the last components of ``file``."""
    parts = Path(file).absolute().parts
    for location in locations:
        depth = location.template.depth
        if len(parts) <= depth:
            continue
        parsed = location.template.parse("/".join(parts[-depth:]))
        if parsed is not None and parsed[0] in (None, dataset_type):
            return dict(parsed[1])
    return None


# -- get -------------------------------------------------------------------------------------


def get_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_id_arguments(parser)
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        required=True,
        help="the file to write ('-' is stdout); a FIFO or character device is written "
        "into, a regular file replaced whole once the bytes are checked",
    )
    add_json_option(parser)


def run_get(args: argparse.Namespace) -> int:
    from butler.cli.destination import destination, write_checked

    pairs = parse_pairs(args.parser, args.pairs)
    with open_butler(args) as butler:
        ref = butler.ref(args.dataset_type, pairs)
    target = destination(args.output, os.path.basename(ref.relative_path))
    if args.json and target.is_stdout:
        args.parser.error(f"--json and -o {args.output} both write to stdout; give -o a file")
    write_checked(ref, target)
    if args.json:
        print_json(ref_dict(ref))
    elif target.descriptor is None:
        print(
            f"wrote {args.output}: {ref.dataset_type} {data_id_text(ref.data_id)} version "
            f"{ref.version} from {ref.repository} ({plural(ref.size, 'byte')})"
        )
    return 0


# -- query, versions, provenance -------------------------------------------------------------


def query_arguments(parser: argparse.ArgumentParser) -> None:
    add_source(parser)
    parser.add_argument(
        "terms",
        metavar="[DATASETTYPE] [key=value]",
        nargs="*",
        help="a dataset type and a (partial) data ID",
    )
    parser.add_argument("--genre", help="every dataset type of this genre")
    add_json_option(parser)


def run_query(args: argparse.Namespace) -> int:
    terms = list(args.terms)
    dataset_type = terms.pop(0) if terms and "=" not in terms[0] else None
    pairs = parse_pairs(args.parser, terms)
    with open_butler(args) as butler:
        refs = butler.query(dataset_type, pairs, genre=args.genre)
    if args.json:
        print_json([ref_dict(ref) for ref in refs])
    elif not refs:
        print(f"{PROG}: no datasets match", file=sys.stderr)
    else:
        rows = [
            [
                ref.dataset_type,
                data_id_text(ref.data_id),
                ref.repository,
                str(ref.version),
                str(ref.size),
            ]
            for ref in refs
        ]
        print_table(["DATASET TYPE", "DATA ID", "REPOSITORY", "VERSION", "SIZE"], rows, {3, 4})
    return 0


def versions_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_id_arguments(parser)
    add_json_option(parser)


def run_versions(args: argparse.Namespace) -> int:
    pairs = parse_pairs(args.parser, args.pairs)
    with open_butler(args) as butler:
        refs = butler.versions(args.dataset_type, pairs)
    if args.json:
        print_json([{**ref_dict(ref), "current": is_current(ref)} for ref in refs])
        return 0
    if refs:
        print(f"{refs[0].dataset_type} {data_id_text(refs[0].data_id)} in {refs[0].repository}")
    rows = [
        [
            str(ref.version),
            timestamp(ref.committed),
            str(ref.size),
            ref.sha256[:16],
            "current" if is_current(ref) else "kept",
        ]
        for ref in refs
    ]
    print_table(["VERSION", "COMMITTED", "SIZE", "SHA256", "STATE"], rows, {0, 2})
    return 0


def provenance_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_id_arguments(parser)
    parser.add_argument("--version", type=int, help="this version (default: the latest)")
    add_json_option(parser)


def run_provenance(args: argparse.Namespace) -> int:
    pairs: dict[str, object] = dict(parse_pairs(args.parser, args.pairs))
    if args.version is not None:
        pairs["version"] = args.version
    with open_butler(args) as butler:
        ref = butler.ref(args.dataset_type, pairs)
        provenance = butler.provenance(ref)
    if args.json:
        print_json({"dataset": ref_dict(ref), "provenance": provenance})
        return 0
    print(
        f"{ref.dataset_type} {data_id_text(ref.data_id)} version {ref.version} "
        f"in {ref.repository} ({ref.path})"
    )
    for key, value in provenance.items():
        if key == "committed" and isinstance(value, int | float):
            value = timestamp(value)
        text = value if isinstance(value, str | int | float) else json.dumps(value, default=str)
        print(f"  {key}: {text}")
    return 0
