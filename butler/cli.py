"""The ``butler`` command line (SPEC §7): a thin front over ``Butler`` and ``maintenance``.

    butler [--debug] [--policy KEY=VALUE]... COMMAND ARGS...

Each command is one small function; every error ends as one line on stderr,
``butler: <message>``, and exit status 1 (2 for a usage error, from argparse).
``--debug`` adds the traceback.

Startup time matters (``butler --help`` should feel instant), so this module imports
only the standard library and ``butler.errors`` at the top; each command imports the
parts of the library it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from butler.errors import ButlerError

if TYPE_CHECKING:
    from butler.butler import Butler
    from butler.maintenance import Problem
    from butler.policy import Location
    from butler.resolver import DatasetRef

PROG = "butler"
COPY_CHUNK = 1 << 20


class CommandError(Exception):
    """A failure the command line itself detects; its message is the whole report."""


# -- entry point -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    first = top.parse_args(arguments)
    command = COMMANDS[first.command]
    parser = _command_parser(first.command, command)
    args = parser.parse_intermixed_args(first.arguments)
    args.parser = parser
    args.debug = first.debug or args.debug
    args.assignments = first.policy + args.policy_after
    _log_warnings_to_stderr()
    try:
        return command.run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `butler query ... | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        if args.debug:
            import traceback

            traceback.print_exc()
        print(f"{PROG}: {_one_line(describe_error(exc, first.command))}", file=sys.stderr)
        return 1


def describe_error(exc: BaseException, command: str) -> str:
    """One line saying what went wrong (ButlerError messages already say what to do)."""
    if isinstance(exc, ButlerError | CommandError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        if exc.filename2:
            where += f" -> {exc.filename2}"
        return f"{command} failed: {exc.strerror or exc}{where}"
    return (
        f"internal error in '{command}' ({type(exc).__name__}: {exc}); "
        "rerun with --debug for the traceback and report it"
    )


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "failed"


def _log_warnings_to_stderr() -> None:
    """The library logs recovery of crashed puts; show it as ``butler: warning: ...``."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: warning: %(message)s"))
    logger = logging.getLogger("butler")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)


# -- parsers ---------------------------------------------------------------------------------


class Command:
    """One subcommand: its one-line summary, its arguments and what it runs."""

    def __init__(
        self,
        summary: str,
        arguments: Callable[[argparse.ArgumentParser], None],
        run: Callable[[argparse.Namespace], int],
        *,
        policy_option: bool = True,
        example: str = "",
    ) -> None:
        self.summary = summary
        self.arguments = arguments
        self.run = run
        self.policy_option = policy_option
        self.example = example


def _top_parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {name.ljust(width)}  {c.summary}" for name, c in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The data butler: datasets by type and data ID in repositories.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"commands:\n{listing}\n\n'{PROG} COMMAND -h' describes one command.  "
        "Data IDs are given as key=value (visit=903334 ccd=22); also version=N and "
        "repositoryLabel=L where a dataset is read.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    _add_policy_option(parser, "policy")
    parser.add_argument(
        "command", metavar="COMMAND", choices=list(COMMANDS), help="one of the commands below"
    )
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _add_policy_option(parser: argparse.ArgumentParser, dest: str) -> None:
    parser.add_argument(
        "--policy",
        metavar="KEY=VALUE",
        dest=dest,
        action="append",
        default=[],
        help="override a policy setting, later wins (e.g. on_exists=error, "
        "datasetTypes.calexp.storage=hdf5); repeatable",
    )


def _command_parser(name: str, command: Command) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} {name}",
        description=command.summary,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"example:\n  {command.example}" if command.example else None,
    )
    command.arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    if command.policy_option:
        _add_policy_option(parser, "policy_after")
    else:
        parser.set_defaults(policy_after=[])
    return parser


def _source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", metavar="REPO_OR_AGG", help="a repository or an aggregator file (.yaml)"
    )


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def _data_id_arguments(parser: argparse.ArgumentParser) -> None:
    _source(parser)
    parser.add_argument("dataset_type", metavar="DATASETTYPE")
    parser.add_argument("pairs", metavar="key=value", nargs="*", help="the data ID")


# -- helpers ---------------------------------------------------------------------------------


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


def _is_pair(item: str) -> bool:
    key, sep, _ = item.partition("=")
    return bool(sep) and key.isidentifier() and not os.path.exists(item)


@contextmanager
def _butler(args: argparse.Namespace) -> Iterator[Butler]:
    from butler.butler import Butler
    from butler.policy import assignments_to_policy

    policy = assignments_to_policy(args.assignments) or None
    with Butler(args.source, command_line_policy=policy) as butler:
        yield butler


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


def _print_json(value: object) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _data_id_text(data_id: Mapping[str, object]) -> str:
    return " ".join(f"{key}={value}" for key, value in data_id.items())


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> None:
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


def _timestamp(seconds: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")


def _size_text(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _is_current(ref: DatasetRef) -> bool:
    """At its template path (current), or kept under .butler/versions/ (older or removed)."""
    return ref.path == os.path.join(ref.repository_path, ref.relative_path)


# -- commands --------------------------------------------------------------------------------


def _create_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repo", metavar="REPO", help="the directory to create (new or empty)")
    parser.add_argument("--label", help="the repository's label (default: its directory name)")
    parser.add_argument(
        "--policy",
        metavar="FILE",
        dest="policy_file",
        help="a YAML file holding the policy mapping (or a butler.yaml with a 'policy:' key)",
    )
    parser.add_argument(
        "--parent",
        metavar="REPO",
        dest="parents",
        action="append",
        default=[],
        help="a parent repository, read after this one; repeatable, depth-first order",
    )
    _registry_options(
        parser,
        "keep the registry in PostgreSQL (postgresql://HOST/DATABASE; "
        "credentials through ~/.pgpass or PGSERVICE, never here) or "
        "'sqlite' (the default, unless BUTLER_REGISTRY says otherwise)",
    )


def _registry_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--registry", metavar="URL", help=what)
    parser.add_argument(
        "--schema",
        help="the PostgreSQL schema of the registry (default: butler_<label>, numbered if taken)",
    )


def run_create(args: argparse.Namespace) -> int:
    from butler.policy import assignments_to_policy, merge
    from butler.repository import DataRepository, is_repository

    policy = _read_policy_file(args.policy_file) if args.policy_file else {}
    policy = merge(policy, assignments_to_policy(args.assignments))
    for parent in args.parents:
        if not is_repository(parent):
            raise CommandError(
                f"parent {parent} is not a butler repository; create it first or fix the path"
            )
    repo = DataRepository.create(
        args.repo,
        label=args.label,
        policy=policy,
        parents=args.parents,
        registry=args.registry,
        schema=args.schema,
    )
    repo.close()
    print(f"created repository {repo.label} at {repo.path} (registry: {repo.registry_name()})")
    return 0


def _read_policy_file(path: str) -> dict[str, object]:
    from butler import yamlio
    from butler.errors import ConfigError

    try:
        data = yamlio.load_file(path)
    except OSError as exc:
        raise CommandError(f"cannot read policy file {path}: {exc.strerror}") from None
    except yamlio.YAMLError as exc:
        raise ConfigError(f"policy file {path} is not valid YAML ({exc}); fix it") from None
    if isinstance(data, dict) and "policy" in data:
        data = data["policy"]
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"policy file {path} must hold a mapping (genres, datasetTypes, on_exists) "
            "or a butler.yaml-like mapping with a 'policy:' key"
        )
    return {str(key): value for key, value in data.items()}


def _define_arguments(parser: argparse.ArgumentParser) -> None:
    _source(parser)
    parser.add_argument("name", metavar="NAME", help="the new dataset type")
    parser.add_argument("--genre", required=True, help="the genre it belongs to")
    parser.add_argument("--template", help="its path template (default: the genre's)")
    parser.add_argument("--storage", help="its storage format (default: the genre's)")


def run_define(args: argparse.Namespace) -> int:
    from butler.errors import ConfigError, NoOutputError

    overrides = {
        key: value
        for key, value in (("template", args.template), ("storage", args.storage))
        if value is not None
    }
    with _butler(args) as butler:
        outputs = [label for label, _, mode in butler.repositories if "w" in mode]
        if not outputs:
            raise NoOutputError(
                f"{args.source} has no output to record {args.name} in; "
                "define it in a repository or an aggregator with an output"
            )
        existing = butler.resolver.policy.dataset_types.get(args.name)
        if existing is not None:
            if existing.genre == args.genre and not overrides:
                print(f"{args.name} is already defined (genre {existing.genre}); nothing to do")
                return 0
            raise ConfigError(
                f"dataset type {args.name!r} is already defined (genre {existing.genre}); "
                "choose another name"
            )
        butler.define(args.name, genre=args.genre, **overrides)
    print(f"defined {args.name} (genre {args.genre}) in {', '.join(outputs)}")
    return 0


def _put_arguments(parser: argparse.ArgumentParser) -> None:
    _source(parser)
    parser.add_argument("dataset_type", metavar="DATASETTYPE")
    parser.add_argument("file", metavar="FILE", help="the file to ingest (checked by its format)")
    parser.add_argument(
        "items",
        metavar="FILE|key=value",
        nargs="*",
        help="the data ID; with several files, each file's data ID is read from its path "
        "by the dataset type's template, and key=value pairs apply to every file",
    )
    _json_option(parser)


def run_put(args: argparse.Namespace) -> int:
    from butler.progress import ProgressBar

    pairs = parse_pairs(args.parser, [item for item in args.items if _is_pair(item)])
    files = [args.file, *(item for item in args.items if not _is_pair(item))]
    refs: list[DatasetRef] = []
    with _butler(args) as butler:
        jobs = _put_jobs(butler, args.dataset_type, files, pairs)
        with ProgressBar("put") as bar:
            for done, (file, data_id) in enumerate(jobs, 1):
                try:
                    made = butler.ingest(file, args.dataset_type, data_id)
                except Exception as exc:
                    if done == 1:
                        raise
                    raise CommandError(
                        f"{file}: {describe_error(exc, 'put')} ({done - 1} of {len(jobs)} "
                        "files were put before it; the others were not)"
                    ) from exc
                refs.extend(made)
                if len(jobs) > 1:
                    bar(done, len(jobs))
    if args.json:
        _print_json([ref_dict(ref) for ref in refs])
    else:
        for ref in refs:
            print(
                f"put {ref.dataset_type} {_data_id_text(ref.data_id)} version {ref.version} "
                f"in {ref.repository} ({ref.size} bytes)"
            )
    return 0


def _put_jobs(
    butler: Butler, dataset_type: str, files: list[str], pairs: dict[str, str]
) -> list[tuple[str, dict[str, object]]]:
    """(file, data ID) for each file, all checked before anything is written."""
    from butler.registry import canonical_data_id
    from butler.template import coerce_data_id

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
                    f"{templates}); put it alone with its data ID: {example}"
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


def _get_arguments(parser: argparse.ArgumentParser) -> None:
    _data_id_arguments(parser)
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        required=True,
        help="where to copy the file (a directory keeps its name; '-' is stdout)",
    )
    _json_option(parser)


def run_get(args: argparse.Namespace) -> int:
    pairs = parse_pairs(args.parser, args.pairs)
    if args.json and args.output == "-":
        args.parser.error("--json and -o - both write to stdout; give -o a file")
    with _butler(args) as butler:
        ref = butler.ref(args.dataset_type, pairs)
    output = args.output
    if output != "-" and os.path.isdir(output):
        output = os.path.join(output, os.path.basename(ref.relative_path))
    copy_checked(ref, output)
    if args.json:
        _print_json(ref_dict(ref))
    elif output != "-":
        print(
            f"wrote {output}: {ref.dataset_type} {_data_id_text(ref.data_id)} version "
            f"{ref.version} from {ref.repository} ({ref.size} bytes)"
        )
    return 0


def copy_checked(ref: DatasetRef, output: str) -> None:
    """Copy the file of ``ref`` to ``output`` ('-': stdout) byte for byte, checksum checked.

    The copy goes to a temporary name beside ``output`` and replaces it only if its
    sha256 is the recorded one, so nobody sees half a file or a corrupt one there.
    """
    import hashlib

    from butler.errors import RepositoryError

    digest = hashlib.sha256()
    temporary = ""
    try:
        with open(ref.path, "rb") as reader:
            if output == "-":
                writer = sys.stdout.buffer
            else:
                directory, name = os.path.split(os.path.abspath(output))
                temporary = os.path.join(directory, f".{name}.butler-{os.getpid()}")
                writer = open(temporary, "wb")  # noqa: SIM115 - closed below
            try:
                while chunk := reader.read(COPY_CHUNK):
                    digest.update(chunk)
                    writer.write(chunk)
            finally:
                if temporary:
                    writer.close()
                else:
                    writer.flush()
        if digest.hexdigest() != ref.sha256:
            raise RepositoryError(
                f"{ref.path} is corrupt (sha256 {digest.hexdigest()[:16]}…, the registry "
                f"records {ref.sha256[:16]}…); {'nothing was written; ' if temporary else ''}"
                f"run 'butler repair {ref.repository_path}'"
            )
        if temporary:
            os.replace(temporary, output)
            temporary = ""
    except OSError as exc:
        if isinstance(exc, ButlerError):
            raise
        failed = "read " + ref.path if exc.filename == ref.path else "write " + output
        raise CommandError(f"cannot {failed}: {exc.strerror or exc}") from None
    finally:
        if temporary:
            Path(temporary).unlink(missing_ok=True)


def _query_arguments(parser: argparse.ArgumentParser) -> None:
    _source(parser)
    parser.add_argument(
        "terms",
        metavar="[DATASETTYPE] [key=value]",
        nargs="*",
        help="a dataset type and a (partial) data ID",
    )
    parser.add_argument("--genre", help="every dataset type of this genre")
    _json_option(parser)


def run_query(args: argparse.Namespace) -> int:
    terms = list(args.terms)
    dataset_type = terms.pop(0) if terms and "=" not in terms[0] else None
    pairs = parse_pairs(args.parser, terms)
    with _butler(args) as butler:
        refs = butler.query(dataset_type, pairs, genre=args.genre)
    if args.json:
        _print_json([ref_dict(ref) for ref in refs])
    elif not refs:
        print(f"{PROG}: no datasets match", file=sys.stderr)
    else:
        rows = [
            [
                ref.dataset_type,
                _data_id_text(ref.data_id),
                ref.repository,
                str(ref.version),
                str(ref.size),
            ]
            for ref in refs
        ]
        _print_table(["DATASET TYPE", "DATA ID", "REPOSITORY", "VERSION", "SIZE"], rows, {3, 4})
    return 0


def _versions_arguments(parser: argparse.ArgumentParser) -> None:
    _data_id_arguments(parser)
    _json_option(parser)


def run_versions(args: argparse.Namespace) -> int:
    pairs = parse_pairs(args.parser, args.pairs)
    with _butler(args) as butler:
        refs = butler.versions(args.dataset_type, pairs)
    if args.json:
        _print_json([{**ref_dict(ref), "current": _is_current(ref)} for ref in refs])
        return 0
    if refs:
        print(f"{refs[0].dataset_type} {_data_id_text(refs[0].data_id)} in {refs[0].repository}")
    rows = [
        [
            str(ref.version),
            _timestamp(ref.committed),
            str(ref.size),
            ref.sha256[:16],
            "current" if _is_current(ref) else "kept",
        ]
        for ref in refs
    ]
    _print_table(["VERSION", "COMMITTED", "SIZE", "SHA256", "STATE"], rows, {0, 2})
    return 0


def _provenance_arguments(parser: argparse.ArgumentParser) -> None:
    _data_id_arguments(parser)
    parser.add_argument("--version", type=int, help="this version (default: the latest)")
    _json_option(parser)


def run_provenance(args: argparse.Namespace) -> int:
    pairs: dict[str, object] = dict(parse_pairs(args.parser, args.pairs))
    if args.version is not None:
        pairs["version"] = args.version
    with _butler(args) as butler:
        ref = butler.ref(args.dataset_type, pairs)
        provenance = butler.provenance(ref)
    if args.json:
        _print_json({"dataset": ref_dict(ref), "provenance": provenance})
        return 0
    print(
        f"{ref.dataset_type} {_data_id_text(ref.data_id)} version {ref.version} "
        f"in {ref.repository} ({ref.path})"
    )
    for key, value in provenance.items():
        if key == "committed" and isinstance(value, int | float):
            value = _timestamp(value)
        text = value if isinstance(value, str | int | float) else json.dumps(value, default=str)
        print(f"  {key}: {text}")
    return 0


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    _source(parser)
    _json_option(parser)


def _problem_line(problem: Problem) -> str:
    return f"{problem.kind}: {problem.message}"


def run_verify(args: argparse.Namespace) -> int:
    from butler.maintenance import verify
    from butler.policy import assignments_to_policy
    from butler.progress import ProgressBar

    policy = assignments_to_policy(args.assignments) or None
    with ProgressBar("verify") as bar:
        report = verify(args.source, command_line_policy=policy, progress=bar)
    if args.json:
        _print_json(report.as_dict())
    else:
        for problem in report.problems:
            print(_problem_line(problem))
        found = f"{len(report.problems)} problem(s)" if report.problems else "no problems"
        print(
            f"verified {report.files} file(s), {_size_text(report.bytes)}, in "
            f"{len(report.repositories)} repositories: {found}"
        )
    return 0 if report.ok else 1


def run_repair(args: argparse.Namespace) -> int:
    from butler.maintenance import repair
    from butler.policy import assignments_to_policy
    from butler.progress import ProgressBar

    policy = assignments_to_policy(args.assignments) or None
    with ProgressBar("repair") as bar:
        report = repair(args.source, command_line_policy=policy, progress=bar)
    if args.json:
        _print_json(report.as_dict())
    else:
        for action in report.actions:
            print(f"{action.kind}: {action.repository}: {action.message}")
        for problem in report.unresolved:
            print(f"not repaired: {_problem_line(problem)}")
        left = f"{len(report.unresolved)} problem(s) left" if report.unresolved else "all clean"
        print(f"repair: {len(report.actions)} action(s), {left}")
    return 0 if report.ok else 1


def _reindex_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repo", metavar="REPO")
    _registry_options(
        parser,
        "move the registry to this engine: postgresql://HOST/DATABASE "
        "(a new schema there) or 'sqlite'; stop writers and mounts first",
    )
    _json_option(parser)


def run_reindex(args: argparse.Namespace) -> int:
    import dataclasses

    from butler.maintenance import reindex
    from butler.progress import ProgressBar

    with ProgressBar("reindex") as bar:
        report = reindex(args.repo, progress=bar, registry=args.registry, schema=args.schema)
    if args.json:
        _print_json(dataclasses.asdict(report))
        return 0
    for path in report.adopted:
        print(f"adopted: {path}")
    for path in report.ignored:
        print(f"ignored (matches no template): {path}")
    if report.moved_to:
        print(f"moved the registry to {report.moved_to}")
    if report.left_behind:
        print(f"the old registry: {report.left_behind}")
    print(
        f"reindexed {args.repo}: {report.records} records, {report.removals} removals, "
        f"{len(report.adopted)} adopted, {len(report.ignored)} ignored"
    )
    return 0


COMMANDS: dict[str, Command] = {
    "create": Command(
        "create a data repository",
        _create_arguments,
        run_create,
        policy_option=False,
        example="butler create ~/work --policy policy.yaml --parent /data/raw",
    ),
    "define": Command(
        "define a new dataset type of a genre in the outputs",
        _define_arguments,
        run_define,
        example="butler define ~/work icExp --genre exposure",
    ),
    "put": Command(
        "ingest a file (or several) as a dataset in every output",
        _put_arguments,
        run_put,
        example="butler put ~/work calexp image.fits visit=903334 ccd=22",
    ),
    "get": Command(
        "copy the file of a dataset",
        _get_arguments,
        run_get,
        example="butler get ~/work calexp visit=903334 ccd=22 -o image.fits",
    ),
    "query": Command(
        "list datasets matching a dataset type or genre and a partial data ID",
        _query_arguments,
        run_query,
        example="butler query agg.yaml calexp visit=903334 --json",
    ),
    "versions": Command(
        "list every version of a dataset",
        _versions_arguments,
        run_versions,
        example="butler versions ~/work calexp visit=903334 ccd=22",
    ),
    "provenance": Command(
        "show how a dataset version was made",
        _provenance_arguments,
        run_provenance,
        example="butler provenance ~/work calexp visit=903334 ccd=22 --version 1",
    ),
    "verify": Command(
        "check every dataset file against its checksum; exit 1 if anything is wrong",
        _report_arguments,
        run_verify,
        example="butler verify agg.yaml --json",
    ),
    "repair": Command(
        "settle half-done puts and restore bad files from good copies in other outputs",
        _report_arguments,
        run_repair,
        example="butler repair agg.yaml",
    ),
    "reindex": Command(
        "rebuild a repository's registry from its records and files",
        _reindex_arguments,
        run_reindex,
        policy_option=False,
        example="butler reindex ~/work",
    ),
}
