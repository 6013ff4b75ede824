"""``Butler``: get and put datasets by type and data ID (SPEC §6).

A thin front over the resolver (where things are) and the transaction module
(how a put reaches every output, all or nothing).  Partial-failure policy of
the duplicated put, stated once: a put either reaches every accepting output or
none; see butler/transaction.py.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import functools
import getpass
import hashlib
import json
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

from butler import formats, layout, removal, transaction
from butler.aggregator import MemberItem, build_spec, is_aggregator_file, load_aggregator
from butler.confine import fd_path
from butler.durable import hash_fd
from butler.errors import (
    ButlerError,
    ConfigError,
    DatasetNotFoundError,
    FormatError,
    Hint,
    InvalidDataIdError,
    NoOutputError,
    RepositoryError,
    UnknownLabelError,
)
from butler.journal import Entry, PutEntry, decode
from butler.policy import DatasetTypeDef, merge
from butler.prepare import INLINE_LIMIT, Payload, PlannedFile, Target
from butler.registry import Row
from butler.repository import DataRepository, is_repository
from butler.resolver import DatasetRef, Member, Resolver
from butler.template import (
    DataId,
    as_data_id,
    coerce_data_id,
    coerce_version,
    validate_dataset_type_name,
)

RESERVED_KEYS = ("repositoryLabel", "version")


@dataclasses.dataclass(frozen=True)
class _PlannedPut:
    """A put checked and serialized: its outputs, and the arguments of transaction.put."""

    members: list[Member]
    put: tuple[list[Target], str, DataId, dict[str, Payload], dict[str, object]]


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
            if not isinstance(source, str | os.PathLike) or "\x00" in os.fspath(source):
                raise ConfigError(
                    f"Butler source must be the path of a repository or an aggregator file, "
                    f"not {type(source).__name__} {str(source)[:80]!r}"
                )
            path = Path(source).expanduser().resolve()
            if is_repository(path):
                spec = build_spec([], [{"path": str(path), "mode": "rw"}], policy, source=str(path))
            elif is_aggregator_file(path):
                spec = load_aggregator(path)
                spec = dataclasses.replace(spec, policy=merge(spec.policy, policy))
            else:
                raise RepositoryError(
                    f"{path} is neither a repository (no butler.yaml) nor an aggregator file "
                    "(.yaml)",
                    hint=Hint("create", {"path": str(path)}),
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
        resolver = self.resolver
        readable = [m for m in resolver.outputs if "r" in m.mode]
        members = readable + [m for m in resolver.search if m not in readable]
        members += [m for m in resolver.outputs if m not in members]
        return [(m.label, str(m.path), m.mode) for m in members]

    def close(self) -> None:
        """Settle what this Butler applied and close the registries."""
        for member in self.resolver.search + self.resolver.outputs:
            if member.exists:
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
        fd = open_version(member, row)
        try:
            # Read through the open descriptor: exactly this version, whatever is put
            # meanwhile, and no path lookup a planted link could redirect.
            return formats.get_format(row.storage).read(
                fd_path(fd), self.resolver.python_type(member, row)
            )
        finally:
            os.close(fd)

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
        repo = self._repository_of(ref)
        entry = read_record(repo, ref.txid)
        if not isinstance(entry, PutEntry):
            raise RepositoryError(
                f"record {ref.txid} in {repo.path} is not a put; run 'butler verify' on it"
            )
        provenance = dict(entry.provenance)
        provenance.update(version=entry.version, committed=entry.committed)
        return provenance

    def _repository_of(self, ref: DatasetRef) -> DataRepository:
        for member in self.resolver.search + self.resolver.outputs:
            if member.exists and str(member.repo.path) == ref.repository_path:
                return member.repo
        return DataRepository(ref.repository_path)

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
        plan = self._plan(datasetType, dataId, keys, provenance, obj=obj)
        return self._refs(plan, transaction.put(*plan.put))

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
        plan = self._plan(datasetType, dataId, keys, provenance, file=Path(file), only=outputs)
        return self._refs(plan, transaction.put(*plan.put))

    def ingest_many(
        self,
        items: Sequence[tuple[str | os.PathLike[str], str, Mapping[str, object]]],
        *,
        provenance: Mapping[str, object] | None = None,
    ) -> list[list[DatasetRef] | ButlerError]:
        """Put many files, ``(file, datasetType, dataId)`` each, committed together (one
        lock round and one registry transaction per output for up to 64 of them).  Each
        stays all or nothing on its own: the result is its refs, or the error that kept
        it out (the others are not affected)."""
        results: list[list[DatasetRef] | ButlerError] = []
        planned: list[tuple[int, _PlannedPut]] = []
        for index, (file, dataset_type, data_id) in enumerate(items):
            try:
                planned.append(
                    (index, self._plan(dataset_type, data_id, {}, provenance, file=Path(file)))
                )
            except ButlerError as exc:
                results.append(exc)
                continue
            results.append([])
        outcomes = transaction.put_many([plan.put for _, plan in planned])
        for (index, plan), outcome in zip(planned, outcomes, strict=True):
            results[index] = (
                outcome if isinstance(outcome, ButlerError) else self._refs(plan, outcome)
            )
        return results

    def _plan(
        self,
        dataset_type: str,
        data_id: Mapping[str, object] | None,
        keys: Mapping[str, object],
        provenance: Mapping[str, object] | None,
        *,
        obj: object = None,
        file: Path | None = None,
        only: Sequence[str] | None = None,
    ) -> _PlannedPut:
        """Everything a put needs before the transaction: checked, routed, serialized."""
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
                files = _planned_files(stored, dataset_type, coerced)
                if files:
                    plans.append((member, stored, files))
        if not plans:
            raise NoOutputError(
                f"no output accepts {dataset_type}: outputs are "
                f"{[m.label for m in self.resolver.outputs] or 'none'}; add an output whose "
                "datasetTypes includes it"
            )
        storages = {planned.storage for _, _, files in plans for planned in files}
        payloads = (
            _payloads_from_object(obj, storages)
            if file is None
            else _payloads_from_file(file, storages)
        )
        targets = [
            Target(
                self.resolver.ensure_output(member),
                files,
                self.resolver.on_exists(member),
                self.resolver.to_record(member, stored),
            )
            for member, stored, files in plans
        ]
        put = (targets, dataset_type, coerced, payloads, self._provenance(provenance))
        return _PlannedPut([member for member, _, _ in plans], put)

    def _refs(self, plan: _PlannedPut, entries: Sequence[PutEntry]) -> list[DatasetRef]:
        if any(target.definitions for target in plan.put[0]):
            self.resolver.forget_definitions(plan.put[1])
        return [_ref_of(member, entry) for member, entry in zip(plan.members, entries, strict=True)]

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
        repos = [member.repo for member in members if member.exists]
        done = {repo.path for repo in removal.remove(repos, datasetType, coerced)}
        removed = [member.label for member in members if member.exists and member.path in done]
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
        self.resolver.refresh_policy()
        if name not in self.resolver.policy.dataset_types:  # no output: this Butler only
            self.resolver.add_definition(name, definition.raw)
        return self.resolver.definition(name)

    def _provenance(self, caller: Mapping[str, object] | None) -> dict[str, object]:
        user, host = _who()
        return {
            "time": datetime.datetime.now(datetime.UTC).isoformat(),
            "user": user,
            "host": host,
            "software": software_version(),
            "inputs": [{"label": m.label, "path": str(m.path)} for m in self.resolver.inputs],
            "outputs": [
                {"label": m.label, "path": str(m.path), "mode": m.mode}
                for m in self.resolver.outputs
            ],
            "policy": self.resolver.policy.digest(),
            "caller": _caller_provenance(caller),
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
        payloads[storage] = Payload(len(data), hashlib.sha256(data).hexdigest(), data=data)
    return payloads


def _payloads_from_file(file: Path, storages: set[str]) -> dict[str, Payload]:
    """The file itself for its own format (streamed into each output, never held in
    memory), converted through its Python object for any other."""
    native = formats.format_for_extension(file.suffix)
    payloads = {}
    obj: object = None
    for storage in sorted(storages):
        format_ = formats.get_format(storage)
        if storage == native or (native is None and len(storages) == 1):
            digest, size = _hash_file(file)  # first: a missing file is one clear error
            format_.check(os.fspath(file))
            small = size <= INLINE_LIMIT
            data = file.read_bytes() if small else None
            if data is not None and len(data) != size:
                raise FormatError(f"{file} changed while it was being put; retry")
            payloads[storage] = Payload(size, digest, data=data, source=None if small else file)
            continue
        if obj is None:
            if native is None:
                raise FormatError(
                    f"cannot tell the format of {file} from its extension; "
                    f"name it with one of the known extensions"
                )
            obj = formats.get_format(native).read(os.fspath(file), None)
        converted = format_.serialize(obj)
        payloads[storage] = Payload(
            len(converted), hashlib.sha256(converted).hexdigest(), data=converted
        )
    return payloads


def _hash_file(file: Path) -> tuple[str, int]:
    try:
        fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise FormatError(
            f"cannot read {file}: {exc.strerror}; give the path of a readable file",
            errno=exc.errno,
        ) from None
    try:
        return hash_fd(fd)
    finally:
        os.close(fd)


def _ref_of(member: Member, entry: PutEntry) -> DatasetRef:
    primary = next((f for f in entry.files if f.primary), entry.files[0])
    return DatasetRef(
        dataset_type=entry.dataset_type,
        data_id=dict(entry.data_id),
        repository=member.label,
        version=entry.version,
        path=str(member.path / primary.path),
        size=primary.size,
        sha256=primary.sha256,
        storage=primary.storage,
        committed=entry.committed,
        txid=entry.txid,
        repository_path=str(member.path),
        relative_path=primary.path,
    )


def open_version(member: Member, row: Row) -> int:
    """An fd on exactly the version ``row`` names (confined to its repository)."""
    try:
        return member.repo.open_file(row)
    except FileNotFoundError:
        raise DatasetNotFoundError(
            f"{row.dataset_type} version {row.version} is recorded in {member.label} but "
            f"its file {member.repo.file_of(row)} is missing; run 'butler verify' and "
            "'butler repair' on the repository",
            errno=errno.EIO,
        ) from None


def read_record(repo: DataRepository, txid: str) -> Entry:
    """The record of ``txid`` in ``repo`` (or its journal, while it is not settled)."""
    for relative in (layout.record(txid), layout.journal(txid)):
        try:
            fd = repo.root.open(relative)
        except FileNotFoundError:
            continue
        try:
            with os.fdopen(fd, "rb", closefd=False) as stream:
                return decode(
                    stream.read(),
                    str(repo.root.absolute(relative)),
                    record=relative == layout.record(txid),
                )
        finally:
            os.close(fd)
    raise RepositoryError(
        f"no record of transaction {txid} in {repo.path}; run 'butler verify' on the repository",
        errno=errno.ENOENT,
    )


def _caller_provenance(caller: Mapping[str, object] | None) -> object:
    """The caller's ``provenance=``, as JSON (a FormatError if it cannot be one)."""
    if caller is not None and not isinstance(caller, Mapping):
        raise FormatError(
            f"provenance must be a mapping (a dict), not {type(caller).__name__}; "
            "pass provenance={'key': value, ...}"
        )
    try:
        return json.loads(json.dumps(dict(caller or {}), default=_jsonable))
    except (ValueError, TypeError, RecursionError) as exc:
        raise FormatError(
            f"provenance cannot be recorded as JSON ({exc}); pass plain strings, numbers, "
            "lists, dicts or DatasetRefs, without cycles"
        ) from None


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
