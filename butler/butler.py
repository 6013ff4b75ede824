"""``Butler``: get and put datasets by type and data ID (SPEC §6).

A thin front over the resolver (where things are) and the transaction module
(how a put reaches every output, all or nothing).  Partial-failure policy of
the duplicated put, stated once: a put either reaches every accepting output or
none; see butler/transaction.py.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import getpass
import hashlib
import json
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

from butler import formats, transaction
from butler.aggregator import MemberItem, build_spec, is_aggregator_file, load_aggregator
from butler.errors import (
    ButlerError,
    ConfigError,
    DatasetNotFoundError,
    FormatError,
    InvalidDataIdError,
    NoOutputError,
    RepositoryError,
    UnknownLabelError,
)
from butler.policy import DatasetTypeDef, merge
from butler.registry import Commit, Row
from butler.repository import is_repository
from butler.resolver import DatasetRef, Member, Resolver
from butler.template import (
    DataId,
    as_data_id,
    coerce_data_id,
    coerce_version,
    validate_dataset_type_name,
)
from butler.transaction import Payload, PlannedFile, Target
from butler.transaction import put as transactional_put

RESERVED_KEYS = ("repositoryLabel", "version")


def software_version() -> str:
    from butler import __version__

    return f"butlerfs {__version__}"


class Butler:
    """Datasets by type and data ID over an aggregator of repositories.

    ``Butler(path)`` opens a repository read-write, or an aggregator YAML file;
    ``Butler(inputs=[...], outputs=[...], policy=...)`` builds one in place.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | None = None,
        *,
        inputs: Sequence[MemberItem] = (),
        outputs: Sequence[MemberItem] = (),
        policy: Mapping[str, object] | None = None,
        command_line_policy: Mapping[str, object] | None = None,
    ) -> None:
        if source is not None:
            if inputs or outputs:
                raise ConfigError("give either a source or inputs/outputs, not both")
            path = Path(source).expanduser().resolve()
            if is_repository(path):
                spec = build_spec([], [{"path": str(path), "mode": "rw"}], policy)
            elif is_aggregator_file(path):
                spec = load_aggregator(path)
                spec = dataclasses.replace(spec, policy=merge(spec.policy, policy))
            else:
                raise RepositoryError(
                    f"{path} is neither a repository (no butler.yaml) nor an aggregator file "
                    "(.yaml); create a repository with 'butler create' first"
                )
        else:
            if not inputs and not outputs:
                raise ConfigError("a Butler needs a source, or at least one input or output")
            spec = build_spec(inputs, outputs, policy)
        self.resolver = Resolver(spec, command_line_policy)

    # -- introspection -------------------------------------------------------

    @property
    def repositories(self) -> list[tuple[str, str, str]]:
        """(label, path, mode) of every repository: search order, then write-only outputs."""
        members = self.resolver.search + [m for m in self.resolver.outputs if m.mode == "w"]
        return [(m.label, str(m.repo.path), m.mode) for m in members]

    def close(self) -> None:
        """Settle this process's applied puts and close the registries."""
        transaction.settle_all()
        for member in self.resolver.search + self.resolver.outputs:
            member.repo.close()

    def __enter__(self) -> Butler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reads ---------------------------------------------------------------

    def get(
        self, datasetType: str, dataId: Mapping[str, object] | None = None, **keys: object
    ) -> object:
        member, row = self._find(datasetType, dataId, keys)
        try:
            return formats.get_format(row.storage).read(
                str(member.repo.file_of(row)), self.resolver.python_type(member, row)
            )
        except FileNotFoundError:
            raise DatasetNotFoundError(
                f"{datasetType} is recorded in {member.label} but its file "
                f"{member.repo.file_of(row)} is missing; run 'butler verify' and "
                "'butler repair' on the repository"
            ) from None

    def exists(
        self, datasetType: str, dataId: Mapping[str, object] | None = None, **keys: object
    ) -> bool:
        """True if at least one dataset matches (a partial data ID may match several)."""
        data_id, version, label = _split(dataId, keys)
        definition = self.resolver.definition(datasetType)
        coerced = coerce_data_id(data_id, definition.keys, partial=True)
        if len(coerced) < len(definition.keys) and version is None:
            return bool(self.resolver.query_rows([datasetType], coerced, label))
        try:
            self.resolver.find(datasetType, coerced, version=version, label=label)
        except LookupError:
            return False
        return True

    def uri(
        self, datasetType: str, dataId: Mapping[str, object] | None = None, **keys: object
    ) -> str:
        member, row = self._find(datasetType, dataId, keys)
        return self.resolver.ref(member, row).path

    def definition(self, datasetType: str) -> DatasetTypeDef:
        """The effective definition of a dataset type (genre, keys, locations)."""
        return self.resolver.definition(datasetType)

    def ref(
        self, datasetType: str, dataId: Mapping[str, object] | None = None, **keys: object
    ) -> DatasetRef:
        """The DatasetRef of what ``get`` would read."""
        member, row = self._find(datasetType, dataId, keys)
        return self.resolver.ref(member, row)

    def query(
        self,
        datasetType: str | None = None,
        dataId: Mapping[str, object] | None = None,
        *,
        genre: str | None = None,
        **keys: object,
    ) -> list[DatasetRef]:
        """Current datasets matching a (partial) data ID, by dataset type or genre."""
        data_id, _, label = _split(dataId, keys)
        policy = self.resolver.policy
        if datasetType is not None:
            types: list[str] | None = [datasetType]
            key_types = policy.dataset_type(datasetType).keys
        elif genre is not None:
            key_types = policy.genre(genre).keys
            types = [n for n, d in policy.dataset_types.items() if d.genre == genre]
        else:
            types = None
            # No type to go by: a key that is an int in any genre is compared as an int.
            key_types = {}
            for each in policy.genres.values():
                for key, kind in each.keys.items():
                    if key_types.get(key) is not int:
                        key_types[key] = kind
        coerced = coerce_data_id(data_id, key_types, partial=True)
        rows = self.resolver.query_rows(types, coerced, label)
        return [self.resolver.ref(member, row) for member, row in rows]

    def versions(
        self, datasetType: str, dataId: Mapping[str, object] | None = None, **keys: object
    ) -> list[DatasetRef]:
        data_id, _, label = _split(dataId, keys)
        definition = self.resolver.definition(datasetType)
        coerced = coerce_data_id(data_id, definition.keys, partial=True)
        if len(coerced) < len(definition.keys):  # partial: resolve it to one dataset first
            member, row = self.resolver.find(datasetType, coerced, label=label)
            coerced = self.resolver.ref(member, row).data_id
        return self.resolver.versions(datasetType, coerced, label)

    def provenance(self, ref: DatasetRef) -> dict[str, object]:
        internal = Path(ref.repository_path) / ".butler"
        record_path = internal / "records" / f"{ref.txid}.json"
        try:
            try:
                record = json.loads(record_path.read_text(encoding="utf-8"))
            except FileNotFoundError:  # applied, its journal not yet settled into a record
                record = json.loads((internal / "journal" / f"{ref.txid}.json").read_text())
        except FileNotFoundError:
            raise RepositoryError(
                f"no provenance record {record_path} for {ref.dataset_type} {ref.data_id}; "
                "run 'butler verify' on the repository"
            ) from None
        provenance = dict(record["provenance"])
        provenance.update(version=record["version"], committed=record["committed"])
        return provenance

    def _find(
        self, dataset_type: str, data_id: Mapping[str, object] | None, keys: Mapping[str, object]
    ) -> tuple[Member, Row]:
        plain, version, label = _split(data_id, keys)
        return self.resolver.find(dataset_type, plain, version=version, label=label)

    # -- writes --------------------------------------------------------------

    def put(
        self,
        obj: object,
        datasetType: str,
        dataId: Mapping[str, object] | None = None,
        *,
        provenance: Mapping[str, object] | None = None,
        **keys: object,
    ) -> list[DatasetRef]:
        """Write ``obj`` to every accepting output, all or nothing; one ref per output."""
        return self._put(datasetType, dataId, keys, provenance, obj=obj)

    def ingest(
        self,
        file: str | os.PathLike[str],
        datasetType: str,
        dataId: Mapping[str, object] | None = None,
        *,
        provenance: Mapping[str, object] | None = None,
        outputs: Sequence[str] | None = None,
        **keys: object,
    ) -> list[DatasetRef]:
        """Put an existing file's bytes (checked by its format) as a dataset.

        ``outputs`` narrows the put to the outputs with those labels (the mount's
        ``.repos/<label>/`` writes); by default every accepting output gets it.
        """
        return self._put(datasetType, dataId, keys, provenance, file=Path(file), only=outputs)

    def _put(
        self,
        dataset_type: str,
        data_id: Mapping[str, object] | None,
        keys: Mapping[str, object],
        provenance: Mapping[str, object] | None,
        *,
        obj: object = None,
        file: Path | None = None,
        only: Sequence[str] | None = None,
    ) -> list[DatasetRef]:
        plain, version, label = _split(data_id, keys)
        if version is not None or label is not None:
            raise InvalidDataIdError(
                "put takes no version or repositoryLabel: versions are assigned by the "
                "butler and writes go to every accepting output; remove them from the data ID"
            )
        definition = self.resolver.definition(dataset_type)
        coerced = coerce_data_id(plain, definition.keys)
        if only is not None:
            unknown = set(only) - {m.label for m in self.resolver.outputs}
            if unknown:
                raise UnknownLabelError(
                    f"no output is labelled {sorted(unknown)}; outputs: "
                    f"{[m.label for m in self.resolver.outputs]}"
                )
        plans = []
        for member, stored in self.resolver.writers(dataset_type):
            if only is None or member.label in only:
                plans.append((member, _planned_files(stored, dataset_type, coerced)))
        if not any(files for _, files in plans):
            raise NoOutputError(
                f"no output accepts {dataset_type}: outputs are "
                f"{[m.label for m in self.resolver.outputs] or 'none'}; add an output whose "
                "datasetTypes includes it"
            )
        storages = {planned.storage for _, files in plans for planned in files}
        payloads = (
            _payloads_from_object(obj, storages)
            if file is None
            else _payloads_from_file(file, storages)
        )
        targets = [
            Target(member.repo, files, self.resolver.on_exists(member))
            for member, files in plans
            if files
        ]
        commits = transactional_put(
            targets, dataset_type, coerced, payloads, self._provenance(provenance)
        )
        self.resolver.record_pending(dataset_type)
        members = [member for member, files in plans if files]
        return [
            _ref_of(self.resolver, member, commit)
            for member, commit in zip(members, commits, strict=True)
        ]

    def remove(
        self,
        datasetType: str,
        dataId: Mapping[str, object] | None = None,
        *,
        outputs: Sequence[str] | None = None,
        **keys: object,
    ) -> list[str]:
        """Hide a dataset's current version in every output holding it; labels of those.

        Older versions stay readable (``versions()``); an input's copy, if any, shows
        again.  Inputs are never changed.  ``outputs`` narrows the remove to the outputs
        with those labels (the mount's ``.repos/<label>/`` removes), as in ``ingest``.
        """
        plain, _, _ = _split(dataId, keys)
        definition = self.resolver.definition(datasetType)
        coerced = coerce_data_id(plain, definition.keys)
        members = self.resolver.outputs
        if outputs is not None:
            unknown = set(outputs) - {m.label for m in members}
            if unknown:
                raise UnknownLabelError(
                    f"no output is labelled {sorted(unknown)}; outputs: "
                    f"{[m.label for m in members]}"
                )
            members = [m for m in members if m.label in outputs]
        removed = [
            member.label
            for member in members
            if transaction.remove(member.repo, datasetType, coerced)
        ]
        if not removed:
            where = "no output" if outputs is None else f"none of the outputs {sorted(outputs)}"
            raise DatasetNotFoundError(
                f"{where} holds {datasetType} {coerced}; inputs are never changed"
            )
        return removed

    def define(self, name: str, genre: str, **overrides: object) -> DatasetTypeDef:
        """A new dataset type of ``genre``, recorded in every output (no code needed)."""
        validate_dataset_type_name(name)
        definition = self.resolver.policy.define(name, genre, overrides)
        for member in self.resolver.outputs:
            self.resolver.record_definition(member, definition)
        self.resolver.overrides.setdefault("datasetTypes", {})
        types = self.resolver.overrides["datasetTypes"]
        assert isinstance(types, dict)
        if not self.resolver.outputs or name not in self.resolver.policy.dataset_types:
            types[name] = definition.raw
        self.resolver.refresh_policy()
        return self.resolver.definition(name)

    def _provenance(self, caller: Mapping[str, object] | None) -> dict[str, object]:
        user, host = _who()
        return {
            "time": datetime.datetime.now(datetime.UTC).isoformat(),
            "user": user,
            "host": host,
            "software": software_version(),
            "inputs": [{"label": m.label, "path": str(m.repo.path)} for m in self.resolver.inputs],
            "outputs": [
                {"label": m.label, "path": str(m.repo.path), "mode": m.mode}
                for m in self.resolver.outputs
            ],
            "policy": self.resolver.policy.digest(),
            "caller": json.loads(json.dumps(dict(caller or {}), default=_jsonable)),
        }


@functools.cache
def _who() -> tuple[str, str]:
    """(user, host) of this process, for provenance: looked up once, not per put."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return user, socket.gethostname()


def _split(
    data_id: Mapping[str, object] | None, keys: Mapping[str, object]
) -> tuple[dict[str, object], int | None, str | None]:
    """Merge dataId and keywords; take out ``version`` and ``repositoryLabel``."""
    merged = as_data_id(data_id)  # a mapping, else InvalidDataIdError
    merged.update(keys)
    version = merged.pop("version", None)
    label = merged.pop("repositoryLabel", None)
    if version is not None:
        version = coerce_version(version)  # a positive int a registry can hold, else refused
    return merged, version, None if label is None else str(label)


def _planned_files(
    definition: DatasetTypeDef, dataset_type: str, data_id: DataId
) -> tuple[PlannedFile, ...]:
    primary = definition.primary
    return tuple(
        PlannedFile(
            index,
            location is primary,
            location.template.render(dataset_type, data_id),
            location.storage,
        )
        for index, location in enumerate(definition.locations)
        if location.writable
    )


def _payloads_from_object(obj: object, storages: set[str]) -> dict[str, Payload]:
    payloads = {}
    for storage in sorted(storages):
        try:
            data = formats.get_format(storage).serialize(obj)
        except ButlerError:
            raise
        except Exception as exc:  # a plug-in writer's own failure: nothing was written yet
            raise FormatError(
                f"the {storage!r} format could not write {type(obj).__name__}: {exc}; "
                "nothing was written; fix the object or the format, then retry"
            ) from exc
        payloads[storage] = Payload(data, hashlib.sha256(data).hexdigest())
    return payloads


def _payloads_from_file(file: Path, storages: set[str]) -> dict[str, Payload]:
    native = formats.format_for_extension(file.suffix)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise FormatError(f"cannot read {file}: {exc.strerror}") from None
    payloads = {}
    obj: object = None
    for storage in sorted(storages):
        format_ = formats.get_format(storage)
        if storage == native or (native is None and len(storages) == 1):
            format_.check(os.fspath(file))
            payloads[storage] = Payload(data, hashlib.sha256(data).hexdigest())
            continue
        if obj is None:
            if native is None:
                raise FormatError(
                    f"cannot tell the format of {file} from its extension; "
                    f"name it with one of the known extensions"
                )
            obj = formats.get_format(native).read(os.fspath(file), None)
        converted = format_.serialize(obj)
        payloads[storage] = Payload(converted, hashlib.sha256(converted).hexdigest())
    return payloads


def _ref_of(resolver: Resolver, member: Member, commit: Commit) -> DatasetRef:
    primary = next((f for f in commit.files if f.primary), commit.files[0])
    return DatasetRef(
        dataset_type=commit.dataset_type,
        data_id=dict(commit.data_id),
        repository=member.label,
        version=commit.version,
        path=os.path.join(member.repo.path, primary.path),
        size=primary.size,
        sha256=primary.sha256,
        storage=primary.storage,
        committed=commit.committed,
        txid=commit.txid,
        repository_path=str(member.repo.path),
        relative_path=primary.path,
    )


def _jsonable(value: object) -> object:
    if isinstance(value, DatasetRef):
        return value.as_dict()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise FormatError(
        f"provenance value {value!r} of type {type(value).__name__} is not JSON; "
        "pass strings, numbers, lists, dicts or DatasetRefs"
    )
