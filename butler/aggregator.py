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

from butler import yamlio
from butler.errors import ConfigError

INPUT_MODES = ("r",)
OUTPUT_MODES = ("w", "rw")
_ITEM_FIELDS = {"path", "label", "mode", "datasetTypes", "storage"}

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
    file = Path(path).expanduser().absolute()
    try:
        data = yamlio.loads(file.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read aggregator file {file}: {exc.strerror}") from None
    except yamlio.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML ({exc}); fix the file") from None
    if not isinstance(data, dict) or data.get("butler") != 1:
        raise ConfigError(
            f"{file}: an aggregator file is a mapping starting with 'butler: 1' "
            "and listing inputs and outputs"
        )
    unknown = set(data) - {"butler", "inputs", "outputs", "policy"}
    if unknown:
        raise ConfigError(
            f"{file}: unknown field(s) {sorted(unknown)}; allowed: inputs, outputs, policy"
        )
    policy = data.get("policy") or {}
    if not isinstance(policy, dict):
        raise ConfigError(f"{file}: policy must be a mapping")
    return build_spec(
        _list(data.get("inputs"), "inputs", file),
        _list(data.get("outputs"), "outputs", file),
        policy,
        base=file.parent,
        source=str(file),
    )


def build_spec(
    inputs: Sequence[MemberItem],
    outputs: Sequence[MemberItem],
    policy: Mapping[str, object] | None,
    *,
    base: Path | None = None,
    source: str = "Butler()",
) -> AggregatorSpec:
    """Normalise input and output items, expanding nested aggregator files."""
    base = base or Path.cwd()
    spec_inputs: list[MemberSpec] = []
    spec_outputs: list[MemberSpec] = []
    for item in inputs:
        member = _member(item, "r", INPUT_MODES, "input", base, source)
        if is_aggregator_file(member.path):
            nested = load_aggregator(member.path)
            readable = [m for m in nested.outputs if m.mode == "rw"] + nested.inputs
            spec_inputs.extend(
                MemberSpec(m.path, "r", m.label, m.dataset_types, {}) for m in readable
            )
        else:
            spec_inputs.append(member)
    for item in outputs:
        member = _member(item, "rw", OUTPUT_MODES, "output", base, source)
        if is_aggregator_file(member.path):
            spec_outputs.extend(load_aggregator(member.path).outputs)
        else:
            spec_outputs.append(member)
    return AggregatorSpec(spec_inputs, spec_outputs, dict(policy or {}), source)


def _list(value: object, what: str, file: Path) -> list[MemberItem]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{file}: {what} must be a list")
    return value


def _member(
    item: MemberItem,
    default_mode: str,
    modes: tuple[str, ...],
    role: str,
    base: Path,
    source: str,
) -> MemberSpec:
    if isinstance(item, str | os.PathLike):
        item = {"path": os.fspath(item)}
    if not isinstance(item, Mapping) or "path" not in item:
        raise ConfigError(f"{source}: an {role} is a path or a mapping with 'path', not {item!r}")
    unknown = set(item) - _ITEM_FIELDS
    if unknown:
        raise ConfigError(
            f"{source}: {role} {item['path']} has unknown field(s) {sorted(unknown)}; "
            f"allowed: {sorted(_ITEM_FIELDS)}"
        )
    mode = str(item.get("mode", default_mode))
    if mode not in modes:
        fix = "list it under outputs" if role == "input" else "list it under inputs"
        raise ConfigError(
            f"{source}: {role} {item['path']} has mode {mode!r}, but an {role} may only be "
            f"{' or '.join(repr(m) for m in modes)}; {fix} if that is what you mean"
        )
    types = item.get("datasetTypes")
    if types is not None and (
        not isinstance(types, list) or not all(isinstance(t, str) for t in types)
    ):
        raise ConfigError(f"{source}: datasetTypes of {item['path']} must be a list of names")
    storage = item.get("storage") or {}
    if not isinstance(storage, Mapping):
        raise ConfigError(f"{source}: storage of {item['path']} must map dataset types to formats")
    label = item.get("label")
    path = Path(os.path.expanduser(str(item["path"])))
    return MemberSpec(
        path=(base / path).resolve() if not path.is_absolute() else path.resolve(),
        mode=mode,
        label=None if label is None else str(label),
        dataset_types=None if types is None else frozenset(types),
        storage={str(k): str(v) for k, v in storage.items()},
    )
