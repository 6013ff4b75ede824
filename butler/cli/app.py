"""``main()``: the parsers, the table of commands, and one line on stderr for any error.

Every error ends as one line on stderr, ``butler: <message>``, and exit status 1
(2 for a usage error, from argparse).  ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from butler.cli import dataset_commands, maintenance_commands, repository_commands
from butler.cli.arguments import add_policy_option
from butler.cli.messages import PROG, describe_error, one_line


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


COMMANDS: dict[str, Command] = {
    "create": Command(
        "create a data repository",
        repository_commands.create_arguments,
        repository_commands.run_create,
        policy_option=False,
        example="butler create ~/work --policy policy.yaml --parent /data/raw",
    ),
    "define": Command(
        "define a new dataset type of a genre in the outputs",
        repository_commands.define_arguments,
        repository_commands.run_define,
        example="butler define ~/work icExp --genre exposure",
    ),
    "types": Command(
        "list the dataset types: genre, keys, templates, storage, python type, where defined",
        repository_commands.types_arguments,
        repository_commands.run_types,
        example="butler types agg.yaml --json",
    ),
    "put": Command(
        "ingest a file (or several) as a dataset in every output",
        dataset_commands.put_arguments,
        dataset_commands.run_put,
        example="butler put ~/work calexp image.fits visit=903334 ccd=22",
    ),
    "get": Command(
        "copy the file of a dataset",
        dataset_commands.get_arguments,
        dataset_commands.run_get,
        example="butler get ~/work calexp visit=903334 ccd=22 -o image.fits",
    ),
    "query": Command(
        "list datasets matching a dataset type or genre and a partial data ID",
        dataset_commands.query_arguments,
        dataset_commands.run_query,
        example="butler query agg.yaml calexp visit=903334 --json",
    ),
    "versions": Command(
        "list every version of a dataset",
        dataset_commands.versions_arguments,
        dataset_commands.run_versions,
        example="butler versions ~/work calexp visit=903334 ccd=22",
    ),
    "provenance": Command(
        "show how a dataset version was made",
        dataset_commands.provenance_arguments,
        dataset_commands.run_provenance,
        example="butler provenance ~/work calexp visit=903334 ccd=22 --version 1",
    ),
    "verify": Command(
        "check every dataset file against its checksum; exit 1 if anything is wrong",
        maintenance_commands.report_arguments,
        maintenance_commands.run_verify,
        example="butler verify agg.yaml --json",
    ),
    "repair": Command(
        "settle half-done puts and restore bad files from good copies in other outputs",
        maintenance_commands.report_arguments,
        maintenance_commands.run_repair,
        example="butler repair agg.yaml",
    ),
    "reindex": Command(
        "rebuild a repository's registry from its records and files",
        maintenance_commands.reindex_arguments,
        maintenance_commands.run_reindex,
        policy_option=False,
        example="butler reindex ~/work",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    first = top.parse_args(arguments)
    if first.command not in COMMANDS:
        from butler.suggest import did_you_mean

        suggestion = did_you_mean(first.command, COMMANDS)
        top.error(
            f"unknown command {first.command!r}; "
            + (f"{suggestion} " if suggestion else "")
            + f"('{PROG} --help' lists the commands)"
        )
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
        source = getattr(args, "source", None) or getattr(args, "repo", None)
        message = describe_error(exc, first.command, source)
        print(f"{PROG}: {one_line(message)}", file=sys.stderr)
        return 1


def _log_warnings_to_stderr() -> None:
    """The library logs recovery of crashed puts; show it as ``butler: warning: ...``."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: warning: %(message)s"))
    logger = logging.getLogger("butler")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)


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
    add_policy_option(parser, "policy")
    # No choices=: an unknown command gets "did you mean" (main) rather than argparse's list.
    parser.add_argument("command", metavar="COMMAND", help="one of the commands below")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


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
        add_policy_option(parser, "policy_after")
    else:
        parser.set_defaults(policy_after=[])
    return parser
