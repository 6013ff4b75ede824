"""``butler create``, ``butler define`` and ``butler types``: repositories and dataset types."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from butler.cli.arguments import add_json_option, add_registry_options, add_source, open_butler
from butler.cli.messages import CommandError
from butler.cli.output import print_json, print_table

if TYPE_CHECKING:
    from butler.butler import Butler
    from butler.policy import DatasetTypeDef, Genre


def create_arguments(parser: argparse.ArgumentParser) -> None:
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
    add_registry_options(
        parser,
        "keep the registry in PostgreSQL (postgresql://HOST/DATABASE; "
        "credentials through ~/.pgpass or PGSERVICE, never here) or "
        "'sqlite' (the default, unless BUTLER_REGISTRY says otherwise)",
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


def define_arguments(parser: argparse.ArgumentParser) -> None:
    add_source(parser)
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
    with open_butler(args) as butler:
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


def types_arguments(parser: argparse.ArgumentParser) -> None:
    add_source(parser)
    add_json_option(parser)


@dataclass(frozen=True)
class LocationInfo:
    template: str
    storage: str
    python: str | None
    mode: str


@dataclass(frozen=True)
class TypeInfo:
    """One dataset type as ``butler types`` shows it."""

    name: str
    genre: str
    keys: dict[str, str]
    repository: str | None  # the label of the repository whose definition is used
    overridden_by: list[str]  # the aggregator file and/or --policy, if they change it
    locations: list[LocationInfo]


@dataclass(frozen=True)
class GenreInfo:
    name: str
    keys: dict[str, str]
    template: str
    storage: str
    python: str | None


def run_types(args: argparse.Namespace) -> int:
    with open_butler(args) as butler:
        policy = butler.resolver.policy
        types = [
            _type_info(butler, policy.dataset_types[name], args)
            for name in sorted(policy.dataset_types)
        ]
        genres = [_genre_info(policy.genres[name]) for name in sorted(policy.genres)]
    if args.json:
        print_json(
            {
                "dataset_types": [dataclasses.asdict(info) for info in types],
                "genres": [dataclasses.asdict(info) for info in genres],
            }
        )
        return 0
    rows = []
    for info in types:
        where = ", ".join(filter(None, [info.repository, *info.overridden_by])) or "-"
        first = [info.name, info.genre, _keys_text(info.keys), where]
        for index, location in enumerate(info.locations):
            lead = first if index == 0 else [""] * len(first)
            rows.append(
                [*lead, location.mode, location.storage, location.python or "-", location.template]
            )
    headers = ["DATASET TYPE", "GENRE", "KEYS", "DEFINED IN", "MODE", "STORAGE", "PYTHON"]
    print_table([*headers, "TEMPLATE"], rows, set())
    print()
    print_table(
        ["GENRE", "KEYS", "STORAGE", "PYTHON", "TEMPLATE"],
        [[g.name, _keys_text(g.keys), g.storage, g.python or "-", g.template] for g in genres],
        set(),
    )
    return 0


def _type_info(butler: Butler, definition: DatasetTypeDef, args: argparse.Namespace) -> TypeInfo:
    from butler.policy import assignments_to_policy

    resolver = butler.resolver
    # The effective policy takes a type whole from the first repository in search order
    # that defines it, then from write-only outputs (docs/design.md, "The resolver").
    members = resolver.search + [m for m in resolver.outputs if m not in resolver.search]
    repository = next(
        (m.label for m in members if definition.name in m.repo.policy.dataset_types), None
    )
    overridden_by = []
    aggregator_types = (resolver.spec.policy or {}).get("datasetTypes") or {}
    if isinstance(aggregator_types, dict) and definition.name in aggregator_types:
        overridden_by.append(os.path.basename(resolver.spec.source))
    command_line_types = assignments_to_policy(args.assignments).get("datasetTypes") or {}
    if isinstance(command_line_types, dict) and definition.name in command_line_types:
        overridden_by.append("--policy")
    return TypeInfo(
        name=definition.name,
        genre=definition.genre,
        keys={key: kind.__name__ for key, kind in definition.keys.items()},
        repository=repository,
        overridden_by=overridden_by,
        locations=[
            LocationInfo(
                location.template.text,
                location.storage,
                location.python or _default_python(location.storage),
                location.mode,
            )
            for location in definition.locations
        ],
    )


def _genre_info(genre: Genre) -> GenreInfo:
    return GenreInfo(
        name=genre.name,
        keys={key: kind.__name__ for key, kind in genre.keys.items()},
        template=genre.template,
        storage=genre.storage,
        python=genre.python or _default_python(genre.storage),
    )


def _default_python(storage: str) -> str | None:
    """What ``get`` returns for a location that names no python type: the format's default."""
    from butler import formats
    from butler.errors import ButlerError

    try:
        return formats.get_format(storage).default_python
    except ButlerError:  # e.g. hdf5 without h5py: the table still lists the type
        return None


def _keys_text(keys: dict[str, str]) -> str:
    return " ".join(f"{key}:{kind}" for key, kind in keys.items())
