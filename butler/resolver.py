"""The resolver: the one place that answers "where is this dataset?".

It owns the members of an aggregator (outputs and inputs, opened), the search
order, the effective policy, and the routing of puts.  Both front ends ask it:
``Butler`` for datasets by type and data ID, the mount (through
:mod:`butler.view`) for paths.

Search order (SPEC §6): readable outputs (``rw``) in the order given, then the
inputs in order, each followed by its parents depth-first; each repository
once.  The effective policy takes each genre and dataset type from the first
repository in search order that defines it (then write-only outputs), and the
aggregator's policy and the command line are merged over that.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from butler import layout, recovery
from butler.aggregator import AggregatorSpec, MemberSpec
from butler.errors import (
    AmbiguousDataIdError,
    ButlerError,
    ConfigError,
    DatasetNotFoundError,
    Hint,
    RepositoryError,
    reason_of,
)
from butler.ordering import dataset_key
from butler.policy import DatasetTypeDef, Policy, merge
from butler.prepare import Definition
from butler.registry import Row, canonical_data_id
from butler.repository import DataRepository, is_repository
from butler.suggest import unknown_label_error
from butler.template import DataId, coerce_data_id


@dataclass(frozen=True)
class DatasetRef:
    """One file of one dataset version in one repository."""

    dataset_type: str
    data_id: DataId
    repository: str  # label
    version: int
    path: str  # absolute path of the file
    size: int
    sha256: str
    storage: str
    committed: float  # commit time, seconds since the epoch
    txid: str
    repository_path: str
    relative_path: str  # the template path inside the repository

    @property
    def version_path(self) -> str:
        """The version's own name, which never changes (``.butler/versions/v<N>/...``)."""
        return os.path.join(
            self.repository_path, layout.version_file(self.version, self.relative_path)
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "dataset_type": self.dataset_type,
            "data_id": dict(self.data_id),
            "repository": self.repository,
            "version": self.version,
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
        }


@dataclass
class Member:
    """A repository as the aggregator uses it.

    An output whose directory does not exist yet has no repository until the first
    write into it (``ensure``): reading it finds nothing, and a typo in a read-only
    command never grows a tree (SPEC §6).
    """

    _repo: DataRepository | None
    label: str
    mode: str  # "r" for inputs and parents, "w" or "rw" for outputs
    dataset_types: frozenset[str] | None = None
    storage: dict[str, str] = field(default_factory=dict)
    path: Path = Path()
    #: Makes the repository of an output that does not exist yet (None once it does).
    _create: Callable[[], DataRepository] | None = None
    #: The policy such an output will be created with.
    initial_policy: Policy | None = None

    @property
    def own_policy(self) -> Policy | None:
        """The policy in this repository's butler.yaml (or the one it will be made with)."""
        return self._repo.policy if self._repo is not None else self.initial_policy

    def __post_init__(self) -> None:
        if self._repo is not None:
            self.path = self._repo.path

    @property
    def repo(self) -> DataRepository:
        if self._repo is None:
            raise RepositoryError(
                f"output {self.label} ({self.path}) does not exist yet: it is created at the "
                "first write into it",
                errno=errno.ENOENT,
            )
        return self._repo

    @property
    def exists(self) -> bool:
        return self._repo is not None

    def ensure(self) -> DataRepository:
        """The repository, created now if this output did not exist yet."""
        if self._repo is None:
            assert self._create is not None
            self._repo = self._create()
            self._create = None
        return self._repo

    @property
    def is_output(self) -> bool:
        return "w" in self.mode

    def accepts(self, dataset_type: str) -> bool:
        return self.dataset_types is None or dataset_type in self.dataset_types


class Resolver:
    def __init__(self, spec: AggregatorSpec, command_line_policy: Mapping[str, object] | None):
        self.spec = spec
        self.overrides = merge(spec.policy, command_line_policy)
        self.inputs = [self._open_input(item) for item in spec.inputs]
        input_policy = _first_wins([m.repo.policy.raw for m in self._expand(self.inputs)])
        self.outputs = [
            self._open_output(item, merge(input_policy, spec.policy)) for item in spec.outputs
        ]
        paths = [m.path for m in self.outputs]
        if len(set(paths)) != len(paths):
            raise ConfigError(f"{spec.source}: the same repository is listed twice as an output")
        for output in self.outputs:
            if output.path in {m.repo.path for m in self.inputs}:
                raise ConfigError(
                    f"{spec.source}: {output.path} is both an input and an output; "
                    "list it once, as an output with mode rw"
                )
        self._output_types: dict[tuple[str, str], DatasetTypeDef] = {}
        self._search_members()  # validates the effective policy before anything is touched
        #: What recovery did when the outputs were opened (``butler repair`` reports it).
        self.recovered: list[recovery.Action] = []
        policies = [output.repo.policy for output in self.outputs if output.exists]
        for output in self.outputs:
            if output.exists:
                self.recovered += self._prepare_output(output.repo)
        # A put recovery finished may have recorded a dataset type in its output.
        if policies != [output.repo.policy for output in self.outputs if output.exists]:
            self._search_members()

    def _search_members(self) -> None:
        """Search order and labels (again after an output is created)."""
        readable = [m for m in self.outputs if "r" in m.mode and m.exists]
        self.search = self._expand(readable + self.inputs)
        self.by_label: dict[str, Member] = {}
        for member in self.search:
            self.by_label.setdefault(member.label, member)
        self.refresh_policy()

    @staticmethod
    def _prepare_output(repo: DataRepository) -> list[recovery.Action]:
        """Before writing an output: what dead writers left is finished.  Nothing here
        raises: a registry that is missing, empty beside records or damaged leaves the
        output open (verify reports it, reads and writes say to run 'butler reindex'),
        and recovery never raises for one bad journal."""
        try:
            repo.check_registry()
        except RepositoryError:
            return []  # recovery needs the registry: 'butler reindex' runs it afterwards
        try:
            return recovery.recover(repo)
        except (ButlerError, OSError) as exc:  # its internals are damaged (a planted link?)
            repo.problems.append(f"recovery could not run: {reason_of(exc)}")
            return []

    # -- construction --------------------------------------------------------

    def _open_input(self, item: MemberSpec) -> Member:
        if not is_repository(item.path):
            raise RepositoryError(
                f"input {item.path} is not a butler repository; check the path "
                "(inputs are never created)"
            )
        repo = DataRepository(item.path)
        return Member(repo, item.label or repo.label, "r", item.dataset_types, dict(item.storage))

    def _open_output(self, item: MemberSpec, policy: Mapping[str, object]) -> Member:
        if is_repository(item.path):
            repo = DataRepository(item.path)
            return Member(repo, item.label or repo.label, item.mode, item.dataset_types,
                          dict(item.storage))  # fmt: skip
        if item.path.exists() and (not item.path.is_dir() or any(item.path.iterdir())):
            raise RepositoryError(
                f"output {item.path} exists but is not a butler repository; "
                "give a new path or an existing repository"
            )

        def create() -> DataRepository:
            if not item.path.parent.is_dir():
                raise RepositoryError(
                    f"output {item.path} cannot be created: its parent directory "
                    f"{item.path.parent} does not exist (a typo?); create it first, or fix "
                    "the path",
                    errno=errno.ENOENT,
                )
            return DataRepository.create(
                item.path,
                label=item.label,
                policy=policy,
                parents=[m.repo.path for m in self.inputs],
            )

        label = item.label or item.path.name
        initial = Policy.from_mapping(policy, f"policy for new output {item.path}")
        return Member(None, label, item.mode, item.dataset_types, dict(item.storage),
                      item.path, create, initial)  # fmt: skip

    def ensure_output(self, member: Member) -> DataRepository:
        """``member``'s repository, created at this first write if it did not exist."""
        if member.exists:
            return member.repo
        repo = member.ensure()
        self._search_members()
        return repo

    def _expand(self, members: list[Member]) -> list[Member]:
        """Members in search order with their parents depth-first, each repository once."""
        seen: set[Path] = set()
        order: list[Member] = []
        # A repository listed explicitly keeps the label it was given there, even when it
        # is first reached as another's parent.
        explicit = {m.repo.path: m for m in self.inputs}

        def visit(member: Member) -> None:
            if member.repo.path in seen:
                return
            seen.add(member.repo.path)
            order.append(member)
            for parent in member.repo.parents:
                if not is_repository(parent):
                    raise RepositoryError(
                        f"repository {member.label} names parent {parent}, which is not a "
                        "repository; fix 'parents' in its butler.yaml"
                    )
                if parent in explicit:
                    visit(explicit[parent])
                    continue
                repo = DataRepository(parent)
                visit(Member(repo, repo.label, "r"))

        for member in members:
            visit(member)
        return order

    def refresh_policy(self) -> None:
        """Rebuild the effective policy (after a define, or a butler.yaml changed on disk)."""
        writers = [m for m in self.outputs if m not in self.search and m.exists]
        raws = [m.repo.policy.raw for m in self.search + writers]
        self.policy = Policy.from_mapping(
            merge(_first_wins(raws), self.overrides), f"{self.spec.source} (effective policy)"
        )
        self._output_types.clear()

    # -- questions -----------------------------------------------------------

    def members_for(self, label: str | None) -> list[Member]:
        if label is None:
            return self.search
        member = self.by_label.get(label)
        if member is None:
            write_only = [m.label for m in self.outputs if m.mode == "w"]
            raise unknown_label_error(label, [m.label for m in self.search], write_only)
        return [member]

    def definition(self, dataset_type: str) -> DatasetTypeDef:
        return self.policy.dataset_type(dataset_type)

    def find(
        self,
        dataset_type: str,
        data_id: Mapping[str, object],
        *,
        version: int | None = None,
        label: str | None = None,
    ) -> tuple[Member, Row]:
        """The dataset ``get`` would read; raises when there is none or several."""
        definition = self.definition(dataset_type)
        coerced = coerce_data_id(data_id, definition.keys, partial=True)
        members = self.members_for(label)
        if len(coerced) < len(definition.keys):
            matches = self.query_rows([dataset_type], coerced, label)
            if len(matches) > 1:
                refs = [self.ref(m, row) for m, row in matches]
                listed = "; ".join(f"{ref.data_id} in {ref.repository}" for ref in refs[:20])
                raise AmbiguousDataIdError(
                    f"{dataset_type} {dict(coerced)} matches {len(matches)} datasets: {listed}; "
                    "add keys to pick one",
                    list(refs),
                )
            if not matches:
                raise self._not_found(dataset_type, coerced, members, version)
            coerced = _loads_data_id(matches[0][1].data_id)
        key = canonical_data_id(coerced)
        for member in members:
            rows = member.repo.registry.lookup(dataset_type, key, version)
            if rows:
                return member, rows[0]
        raise self._not_found(dataset_type, coerced, members, version)

    def _not_found(
        self,
        dataset_type: str,
        data_id: Mapping[str, object],
        members: list[Member],
        version: int | None,
    ) -> DatasetNotFoundError:
        searched = ", ".join(m.label for m in members)
        what = f"{dataset_type} {dict(data_id)}" + (f" version {version}" if version else "")
        where = "the repository searched" if len(members) == 1 else "the repositories searched"
        return DatasetNotFoundError(
            f"no dataset {what} in {where}: {searched}",
            hint=Hint("query", {"dataset_type": dataset_type}),
        )

    def query_rows(
        self,
        dataset_types: list[str] | None,
        keys: Mapping[str, int | str],
        label: str | None = None,
    ) -> list[tuple[Member, Row]]:
        """Current datasets matching ``keys``; the first repository in search order wins."""
        found: dict[tuple[str, str], tuple[Member, Row]] = {}
        for member in self.members_for(label):
            for row in member.repo.registry.query(dataset_types, keys):
                found.setdefault((row.dataset_type, row.data_id), (member, row))
        return sorted(
            found.values(),
            key=lambda item: dataset_key(
                self.policy, item[1].dataset_type, _loads_data_id(item[1].data_id)
            ),
        )

    def versions(self, dataset_type: str, data_id: DataId, label: str | None) -> list[DatasetRef]:
        key = canonical_data_id(data_id)
        for member in self.members_for(label):
            rows = member.repo.registry.versions(dataset_type, key)
            if rows:
                return [self.ref(member, row) for row in rows]
        raise self._not_found(dataset_type, data_id, self.members_for(label), None)

    # -- one directory of the union (butler.view; added for the mount) -------------

    def list_union(
        self,
        directory: str,
        *,
        include_removed: bool = False,
        start: str = "",
        limit: int = -1,
        keep: Callable[[Member, Row], bool] | None = None,
    ) -> tuple[list[tuple[str, tuple[Member, Row] | None]], str | None]:
        """The names directly inside ``directory`` across the search order, sorted, each
        with the (member, row) of the first repository in search order holding a file of
        that name (of the files ``keep`` accepts), or None for a directory; a repository's
        subdirectory shadows its own file of the same name.

        With ``start`` and ``limit``, each repository is read from ``start`` on, at most
        ``limit`` names of each kind (the registry's (directory, name) index); the result
        is then complete only up to the second value returned, the smallest last name of
        a repository that filled its window (None: to the end).
        """
        names: dict[str, tuple[Member, Row] | None] = {}
        last: str | None = None

        def window_end(found: list[str]) -> None:
            nonlocal last
            if 0 < limit <= len(found):
                last = found[-1] if last is None else min(last, found[-1])

        for member in self.search:
            subdirs, rows = member.repo.registry.list_directory(
                directory,
                primary_only=True,
                include_removed=include_removed,
                start=start,
                limit=limit,
            )
            window_end(subdirs)
            window_end([posixpath.basename(row.path) for row in rows])
            for name in subdirs:
                names.setdefault(name, None)
            for row in rows:
                if keep is not None and not keep(member, row):
                    continue
                names.setdefault(posixpath.basename(row.path), (member, row))
        return [(name, names[name]) for name in sorted(names)], last

    # -- refs --------------------------------------------------------------------

    def ref(self, member: Member, row: Row) -> DatasetRef:
        path = str(member.repo.file_of(row))
        repo = member.repo
        data_id = _loads_data_id(row.data_id)
        definition = self.policy.dataset_types.get(row.dataset_type)
        if definition is not None and len(definition.keys) == len(data_id):
            data_id = {key: data_id[key] for key in definition.keys if key in data_id} or data_id
        return DatasetRef(
            dataset_type=row.dataset_type,
            data_id=data_id,
            repository=member.label,
            version=row.version,
            path=path,
            size=row.size,
            sha256=row.sha256,
            storage=row.storage,
            committed=row.committed,
            txid=row.txid,
            repository_path=str(repo.path),
            relative_path=row.path,
        )

    def python_type(self, member: Member, row: Row) -> str | None:
        """What ``get`` returns for this file: its location's python type, if any."""
        definition = member.repo.policy.dataset_types.get(row.dataset_type)
        if definition is not None and row.location < len(definition.locations):
            location = definition.locations[row.location]
            if location.storage == row.storage:
                return location.python
        effective = self.policy.dataset_types.get(row.dataset_type)
        if effective is not None and effective.primary.storage == row.storage:
            return effective.primary.python
        return None

    # -- writes --------------------------------------------------------------

    def writers(self, dataset_type: str) -> Iterator[tuple[Member, DatasetTypeDef]]:
        """Each output accepting ``dataset_type`` with the definition it stores it by."""
        for member in self.outputs:
            if member.accepts(dataset_type):
                yield member, self.output_definition(member, dataset_type)

    def output_definition(self, member: Member, dataset_type: str) -> DatasetTypeDef:
        """How ``member`` stores ``dataset_type`` (``stored_definition``), cached."""
        cache_key = (member.label, dataset_type)
        cached = self._output_types.get(cache_key)
        if cached is not None:
            return cached
        if member.exists:
            member.repo.reload_config_if_changed()
        definition = self.stored_definition(member, dataset_type)[0]
        self._output_types[cache_key] = definition
        return definition

    def stored_definition(self, member: Member, dataset_type: str) -> tuple[DatasetTypeDef, bool]:
        """How ``member`` stores ``dataset_type``, recording nothing: its own definition,
        else the effective one, under its ``storage:`` routing.  The flag says whether
        that differs from what its butler.yaml holds (a put records it, with the put
        itself; opened alone, the output then goes on storing the type as routed)."""
        policy = member.own_policy
        own = policy.dataset_types.get(dataset_type) if policy is not None else None
        definition = own if own is not None else self.definition(dataset_type)
        storage = member.storage.get(dataset_type)
        if storage is not None and any(loc.storage != storage for loc in definition.locations):
            return definition.with_storage(storage), True
        return definition, own is None

    def to_record(self, member: Member, definition: DatasetTypeDef) -> tuple[Definition, ...]:
        """What a put of ``definition``'s type must record in ``member``'s butler.yaml
        (nothing if it holds it already): recorded with the put, never after it."""
        if not self.stored_definition(member, definition.name)[1]:
            return ()
        return ((definition, self._genre_spec(definition.genre), True),)

    def _genre_spec(self, genre: str) -> Mapping[str, object] | None:
        genres = self.policy.raw.get("genres")
        spec = genres.get(genre) if isinstance(genres, dict) else None
        return spec if isinstance(spec, Mapping) else None

    def record_definition(self, member: Member, definition: DatasetTypeDef) -> None:
        """Copy a dataset type (and its genre if needed) into an output's butler.yaml now."""
        repo = self.ensure_output(member)
        with repo.locks.repository():
            config = repo.config_with([(definition, self._genre_spec(definition.genre), False)])
            if config is not None:
                repo.write_config(config)
        self.forget_definitions(definition.name)

    def add_definition(self, name: str, raw: Mapping[str, object]) -> None:
        """A dataset type defined through this resolver (``Butler.define``) but recorded in
        no repository (no output holds it): part of the effective policy from now on."""
        types = self.overrides.setdefault("datasetTypes", {})
        assert isinstance(types, dict)
        types[name] = dict(raw)
        self.refresh_policy()

    def forget_definitions(self, name: str) -> None:
        for key in [key for key in self._output_types if key[1] == name]:
            del self._output_types[key]

    def on_exists(self, member: Member) -> str:
        explicit = self.overrides.get("on_exists")
        if explicit is not None:
            return str(explicit)
        return member.repo.policy.on_exists if member.exists else self.policy.on_exists


def _first_wins(raws: list[dict[str, object]]) -> dict[str, object]:
    """Combine repository policies: each genre and dataset type from the first that has it."""
    combined: dict[str, dict[str, object]] = {"genres": {}, "datasetTypes": {}}
    for raw in raws:
        for section in ("genres", "datasetTypes"):
            entries = raw.get(section) or {}
            assert isinstance(entries, dict)
            for name, value in entries.items():
                combined[section].setdefault(name, value)
    return dict(combined)


def _loads_data_id(text: str) -> DataId:
    value = json.loads(text)
    assert isinstance(value, dict)
    return value
