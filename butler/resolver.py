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

import json
import posixpath
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from butler.aggregator import AggregatorSpec, MemberSpec
from butler.errors import (
    AmbiguousDataIdError,
    ConfigError,
    DatasetNotFoundError,
    RepositoryError,
    UnknownLabelError,
)
from butler.policy import DatasetTypeDef, Policy, merge
from butler.registry import Row, canonical_data_id
from butler.repository import DataRepository, is_repository
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
    """A repository as the aggregator uses it."""

    repo: DataRepository
    label: str
    mode: str  # "r" for inputs and parents, "w" or "rw" for outputs
    dataset_types: frozenset[str] | None = None
    storage: dict[str, str] = field(default_factory=dict)

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
        paths = [m.repo.path for m in self.outputs]
        if len(set(paths)) != len(paths):
            raise ConfigError(f"{spec.source}: the same repository is listed twice as an output")
        self.search = self._expand([m for m in self.outputs if "r" in m.mode] + self.inputs)
        for output in self.outputs:
            if output.repo.path in {m.repo.path for m in self.inputs}:
                raise ConfigError(
                    f"{spec.source}: {output.repo.path} is both an input and an output; "
                    "list it once, as an output with mode rw"
                )
        self.by_label: dict[str, Member] = {}
        for member in self.search:
            self.by_label.setdefault(member.label, member)
        self._output_types: dict[tuple[str, str], DatasetTypeDef] = {}
        self._pending_records: dict[tuple[str, str], tuple[Member, DatasetTypeDef]] = {}
        self.refresh_policy()

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
        elif item.path.exists() and (not item.path.is_dir() or any(item.path.iterdir())):
            raise RepositoryError(
                f"output {item.path} exists but is not a butler repository; "
                "give a new path or an existing repository"
            )
        else:
            repo = DataRepository.create(
                item.path,
                label=item.label,
                policy=policy,
                parents=[m.repo.path for m in self.inputs],
            )
        member = Member(repo, item.label or repo.label, item.mode, item.dataset_types)
        member.storage = dict(item.storage)
        return member

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
        writers = [m for m in self.outputs if m not in self.search]
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
            known = ", ".join(m.label for m in self.search)
            raise UnknownLabelError(f"no repository is labelled {label!r}; known labels: {known}")
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
                listed = "; ".join(f"{row.data_id} in {m.label}" for m, row in matches[:20])
                raise AmbiguousDataIdError(
                    f"{dataset_type} {dict(coerced)} matches {len(matches)} datasets: {listed}; "
                    "add keys to pick one",
                    [self.ref(m, row) for m, row in matches],
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
        return DatasetNotFoundError(
            f"no dataset {what} in the repositories searched: {searched}; check the data ID "
            "with query()"
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
        return [found[key] for key in sorted(found)]

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
        """How ``member`` stores ``dataset_type``: its own definition, else the effective
        one, under the member's ``storage:`` routing.  A definition the output does not
        hold yet is recorded in it after the first successful put (``record_pending``),
        so that a failed put changes nothing, not even butler.yaml."""
        cache_key = (member.label, dataset_type)
        cached = self._output_types.get(cache_key)
        if cached is not None:
            return cached
        member.repo.reload_config_if_changed()
        definition, unrecorded = self.stored_definition(member, dataset_type)
        if unrecorded:
            self._pending_records[cache_key] = (member, definition)
        self._output_types[cache_key] = definition
        return definition

    def stored_definition(self, member: Member, dataset_type: str) -> tuple[DatasetTypeDef, bool]:
        """How ``member`` stores ``dataset_type``, recording nothing: its own definition,
        else the effective one, under its ``storage:`` routing.  The flag says whether
        that differs from what its butler.yaml holds (a put records it; opened alone, the
        output then goes on storing the type as routed)."""
        own = member.repo.policy.dataset_types.get(dataset_type)
        definition = own if own is not None else self.definition(dataset_type)
        storage = member.storage.get(dataset_type)
        if storage is not None and any(loc.storage != storage for loc in definition.locations):
            return definition.with_storage(storage), True
        return definition, own is None

    def record_pending(self, dataset_type: str) -> None:
        """Record, in each output, the definition a successful put of this type used."""
        for member in self.outputs:
            pending = self._pending_records.pop((member.label, dataset_type), None)
            if pending is not None:
                self.record_definition(member, pending[1], replace=True)

    def record_definition(
        self, member: Member, definition: DatasetTypeDef, replace: bool = False
    ) -> None:
        """Copy a dataset type (and its genre if needed) into an output's butler.yaml."""
        repo = member.repo
        if definition.genre not in repo.policy.genres:
            genres = self.policy.raw.get("genres")
            assert isinstance(genres, dict)
            repo.add_genre(definition.genre, genres[definition.genre])
        repo.add_dataset_type(definition, replace=replace)
        self._output_types.pop((member.label, definition.name), None)

    def on_exists(self, member: Member) -> str:
        explicit = self.overrides.get("on_exists")
        return str(explicit) if explicit is not None else member.repo.policy.on_exists


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
