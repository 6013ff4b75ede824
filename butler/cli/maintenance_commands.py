"""``butler verify``, ``repair`` and ``reindex``: whole repositories, checked and mended."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from butler.cli.arguments import add_json_option, add_registry_options, add_source
from butler.cli.messages import plural
from butler.cli.output import print_json, size_text

if TYPE_CHECKING:
    from butler.maintenance import Problem


def report_arguments(parser: argparse.ArgumentParser) -> None:
    add_source(parser)
    add_json_option(parser)


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
        print_json(report.as_dict())
    else:
        for problem in report.problems:
            print(_problem_line(problem))
        found = plural(len(report.problems), "problem") if report.problems else "no problems"
        print(
            f"verified {plural(report.files, 'file')}, {size_text(report.bytes)}, in "
            f"{plural(len(report.repositories), 'repository', 'repositories')}: {found}"
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
        print_json(report.as_dict())
    else:
        for action in report.actions:
            print(f"{action.kind}: {action.repository}: {action.message}")
        for problem in report.unresolved:
            print(f"not repaired: {_problem_line(problem)}")
        left = (
            f"{plural(len(report.unresolved), 'problem')} left"
            if report.unresolved
            else ("all clean")
        )
        print(f"repair: {plural(len(report.actions), 'action')}, {left}")
    return 0 if report.ok else 1


def reindex_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repo", metavar="REPO")
    add_registry_options(
        parser,
        "move the registry to this engine: postgresql://HOST/DATABASE "
        "(a new schema there) or 'sqlite'; stop writers and mounts first",
    )
    add_json_option(parser)


def run_reindex(args: argparse.Namespace) -> int:
    import dataclasses

    from butler.maintenance import reindex
    from butler.progress import ProgressBar

    with ProgressBar("reindex") as bar:
        report = reindex(args.repo, progress=bar, registry=args.registry, schema=args.schema)
    if args.json:
        print_json(dataclasses.asdict(report))
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
        f"reindexed {args.repo}: {plural(report.records, 'record')}, "
        f"{plural(report.removals, 'removal')}, {len(report.adopted)} adopted, "
        f"{len(report.ignored)} ignored"
    )
    return 0
