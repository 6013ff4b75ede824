"""Aggregator repositories: which repositories a Butler reads and writes, and how.

An aggregator is either a YAML file (SPEC §3) or the ``inputs=``/``outputs=``
arguments of ``Butler``; both become a list of :class:`MemberSpec`.  A member
that is itself an aggregator file is expanded in place: as an input it
contributes its whole search order (read-only); as an output, its outputs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from butler import formats
from butler.config import (
    check_label,
    check_plain,
    check_unknown_keys,
    describe,
    expect_list,
    expect_mapping,
    expect_path,
    fail,
    kind_of,
    read_config_file,
)
from butler.errors import ConfigError
from butler.template import validate_dataset_type_name

INPUT_MODES = ("r",)
OUTPUT_MODES = ("w", "rw")
_ITEM_FIELDS = ("path", "label", "mode", "datasetTypes", "storage")
_FILE_FIELDS = ("butler", "inputs", "outputs", "policy")
#: Aggregator files may name aggregator files; more than this many in one load is a loop
#: by another name (A names B twice, B names C twice, ...: 2**depth loads).
MAX_NESTED_FILES = 64

MemberItem = str | os.PathLike[str] | Mapping[str, object]


@dataclass(frozen=True)
class MemberSpec:
    """One member as configured, before its repository is opened."""

    path: Path
    mode: str
    label: str | None = None
    dataset_types: frozenset[str] | None = None
    storage: dict[str, str] = field(default_factory=dict)

    @property
    def is_output(self) -> bool:
        return "w" in self.mode


@dataclass(frozen=True)
class AggregatorSpec:
    inputs: list[MemberSpec]
    outputs: list[MemberSpec]
    policy: dict[str, object]
    source: str


def is_aggregator_file(path: Path) -> bool:
    return path.is_file() and path.suffix in (".yaml", ".yml")


def load_aggregator(path: str | os.PathLike[str]) -> AggregatorSpec:
    """Read an aggregator file; relative paths are relative to the file."""
    return _load(Path(path).expanduser().absolute(), _Loading())


class _Loading:
    """The files being read (to refuse one that names itself) and how many were read."""

    def __init__(self) -> None:
        self.chain: list[Path] = []
        self.count = 0


def _load(file: Path, loading: _Loading) -> AggregatorSpec:
    key = _resolved(file, str(file), "path")
    if key in loading.chain:
        cycle = " -> ".join(str(p) for p in [*loading.chain[loading.chain.index(key) :], key])
        raise ConfigError(
            f"{loading.chain[-1]}: aggregator files name each other in a loop ({cycle}); "
            "remove the member that names an enclosing file"
        )
    loading.count += 1
    if loading.count > MAX_NESTED_FILES:
        raise ConfigError(
            f"{file}: more than {MAX_NESTED_FILES} aggregator files are named, directly or "
            "through each other; name the repositories themselves"
        )
    data = read_config_file(file, "aggregator file")
    source = str(file)
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: an aggregator file is a mapping starting with 'butler: 1' "
            f"and listing inputs and outputs, not {kind_of(data)}"
        )
    version = data.get("butler")
    if type(version) is not int or version != 1:
        fail(source, "butler", version, "the int 1 (the format version)")
    for name in data:
        if not isinstance(name, str):
            fail(source, "a top-level key", name, f"one of {', '.join(_FILE_FIELDS)}")
    check_unknown_keys(data, _FILE_FIELDS, source, "at the top")
    policy = expect_mapping(data.get("policy"), source, "policy", "a mapping (a policy)")
    loading.chain.append(key)
    try:
        return _build(
            expect_list(data.get("inputs"), source, "inputs", "a list of repositories"),
            expect_list(data.get("outputs"), source, "outputs", "a list of repositories"),
            policy,
            base=file.parent,
            source=source,
            loading=loading,
        )
    finally:
        loading.chain.pop()


def build_spec(
    inputs: Sequence[MemberItem],
    outputs: Sequence[MemberItem],
    policy: Mapping[str, object] | None,
    *,
    base: Path | None = None,
    source: str = "Butler()",
) -> AggregatorSpec:
    """Normalise input and output items, expanding nested aggregator files."""
    return _build(inputs, outputs, policy, base=base, source=source, loading=_Loading())


def _build(
    inputs: Sequence[object],
    outputs: Sequence[object],
    policy: Mapping[str, object] | None,
    *,
    base: Path | None,
    source: str,
    loading: _Loading,
) -> AggregatorSpec:
    base = base or Path.cwd()
    check_plain(policy, source, "policy")  # merged and hashed later: no cycles, no depth
    if policy is not None and not isinstance(policy, Mapping):
        fail(source, "policy", policy, "a mapping (a policy)")
    spec_inputs: list[MemberSpec] = []
    spec_outputs: list[MemberSpec] = []
    for index, item in enumerate(inputs):
        member = _member(item, "r", INPUT_MODES, f"inputs[{index}]", base, source)
        if is_aggregator_file(member.path):
            nested = _load(member.path, loading)
            readable = [m for m in nested.outputs if m.mode == "rw"] + nested.inputs
            spec_inputs.extend(
                MemberSpec(m.path, "r", m.label, m.dataset_types, {}) for m in readable
            )
        else:
            spec_inputs.append(member)
    for index, item in enumerate(outputs):
        member = _member(item, "rw", OUTPUT_MODES, f"outputs[{index}]", base, source)
        if is_aggregator_file(member.path):
            spec_outputs.extend(_load(member.path, loading).outputs)
        else:
            spec_outputs.append(member)
    return AggregatorSpec(spec_inputs, spec_outputs, dict(policy or {}), source)


def _resolved(path: Path, source: str, key: str) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        fail(source, key, str(path), "a path that resolves", str(exc))


def _member(
    item: object,
    default_mode: str,
    modes: tuple[str, ...],
    where: str,
    base: Path,
    source: str,
) -> MemberSpec:
    role = "input" if where.startswith("inputs") else "output"
    if isinstance(item, str | os.PathLike):
        try:
            item = {"path": os.fspath(item)}
        except TypeError:  # a PathLike whose __fspath__ returns bytes or worse
            fail(source, where, item, "a path or a mapping with 'path'")
    if not isinstance(item, Mapping) or "path" not in item:
        raise ConfigError(
            f"{source}: {where}: an {role} is a path or a mapping with 'path', not {describe(item)}"
        )
    for name in item:
        if not isinstance(name, str):
            fail(source, f"a key of {where}", name, f"one of {', '.join(_ITEM_FIELDS)}")
    path = item["path"]
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    text = expect_path(path, source, f"{where}.path")
    unknown = [name for name in item if name not in _ITEM_FIELDS]
    if unknown:
        raise ConfigError(
            f"{source}: {role} {text} has unknown field(s) {sorted(unknown)}; "
            f"allowed: {sorted(_ITEM_FIELDS)}"
        )
    mode = item.get("mode", default_mode)
    if not isinstance(mode, str) or mode not in modes:
        fix = "list it under outputs" if role == "input" else "list it under inputs"
        raise ConfigError(
            f"{source}: {role} {text} has mode {describe(mode)}, but an {role} may only be "
            f"{' or '.join(repr(m) for m in modes)}; {fix} if that is what you mean"
        )
    label = item.get("label")
    if label is not None:
        label = check_label(label, source, f"{where}.label")
    return MemberSpec(
        path=_resolved(base / os.path.expanduser(text), source, f"{where}.path"),
        mode=mode,
        label=label,
        dataset_types=_dataset_types(item.get("datasetTypes"), text, source, where),
        storage=_storage(item.get("storage"), text, source, where),
    )


def _dataset_types(value: object, path: str, source: str, where: str) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ConfigError(f"{source}: datasetTypes of {path} must be a list of names")
    for index, name in enumerate(value):
        try:
            validate_dataset_type_name(name)
        except ValueError as exc:
            raise ConfigError(f"{source}: {where}.datasetTypes[{index}]: {exc}") from None
    return frozenset(value)


def _storage(value: object, path: str, source: str, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: storage of {path} must map dataset types to formats")
    storage = expect_mapping(value, source, f"{where}.storage")
    known = formats.known_formats()
    for name, storage_format in storage.items():
        if not isinstance(storage_format, str) or storage_format not in known:
            fail(source, f"{where}.storage.{name}", storage_format, f"one of {', '.join(known)}")
    return {name: str(storage_format) for name, storage_format in storage.items()}
