"""Policy: genres, dataset types and their locations, merged from three levels.

A policy is the ``policy:`` mapping of ``butler.yaml`` (SPEC §3).  Levels merge
by a deep dictionary merge, later wins: repository < aggregator file or
``Butler(policy=)`` < command line.  Lists (``locations``, ``keys`` orders) are
replaced whole, never concatenated, so an override always means what it says.

A dataset type without ``locations`` gets one ``rw`` location built from its
own ``template``/``storage``/``python`` falling back to its genre's.  With
``locations`` those are used as written (each may omit ``storage``/``python``,
inheriting the dataset type's, then the genre's).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from butler import formats, yamlio
from butler.config import check_plain, describe, fail
from butler.errors import ConfigError, Hint, UnknownDatasetTypeError, UnknownFormatError
from butler.overlap import Shape, first_meeting, meeting, path_shape, template_shape
from butler.suggest import did_you_mean
from butler.template import KEY_TYPES, Template, validate_dataset_type_name

MODES = ("r", "w", "rw")
RESERVED_KEYS = ("version", "repositoryLabel")
ON_EXISTS = ("version", "error")
_GENRE_FIELDS = {"keys", "template", "storage", "python"}
_TYPE_FIELDS = {"genre", "template", "storage", "python", "locations"}
_LOCATION_FIELDS = {"template", "storage", "python", "mode"}
#: A repository's own files beside its datasets (repository.py, registry.py): no template
#: may render these names (``.butler/`` cannot: no component may start with '.').
RESERVED_NAMES = (
    "butler.yaml",
    "registry.sqlite3",
    "registry.sqlite3-wal",
    "registry.sqlite3-shm",
    "registry.sqlite3-journal",
)
_RESERVED_SHAPES = tuple(
    path_shape(f"the repository's own file {name}", None, name) for name in RESERVED_NAMES
)


@dataclass(frozen=True)
class Location:
    """Where and how one dataset type is stored in one repository."""

    template: Template
    storage: str
    python: str | None
    mode: str

    @property
    def readable(self) -> bool:
        return "r" in self.mode

    @property
    def writable(self) -> bool:
        return "w" in self.mode


@dataclass(frozen=True)
class DatasetTypeDef:
    """A dataset type as one policy sees it: its genre's keys and its locations."""

    name: str
    genre: str
    keys: dict[str, type]
    locations: tuple[Location, ...]
    #: The mapping as written in ``datasetTypes:``, copied into an output at its first put.
    raw: dict[str, object] = field(compare=False)

    @property
    def primary(self) -> Location:
        """The location ``get`` reads: the first readable one."""
        for location in self.locations:
            if location.readable:
                return location
        raise ConfigError(
            f"dataset type {self.name!r} has no readable location; "
            "give one of its locations mode 'r' or 'rw'"
        )

    def with_storage(self, storage: str) -> DatasetTypeDef:
        """The same type stored as ``storage`` in every location (an output's ``storage:`` map).

        The template's extension follows the format (``.fits`` becomes ``.h5``), so a
        file's name keeps saying what it holds.
        """
        extension = formats.get_format(storage).extension
        changed = []
        for location in self.locations:
            text = location.template.text
            root, old_extension = posixpath.splitext(text)
            if old_extension and "}" not in old_extension:
                text = root + extension
            changed.append(Location(Template(text, self.keys), storage, None, location.mode))
        raw: dict[str, object] = {
            "genre": self.genre,
            "locations": [
                {"template": loc.template.text, "storage": loc.storage, "mode": loc.mode}
                for loc in changed
            ],
        }
        return DatasetTypeDef(self.name, self.genre, self.keys, tuple(changed), raw)


@dataclass(frozen=True)
class Genre:
    name: str
    keys: dict[str, type]
    template: str
    storage: str
    python: str | None


class Policy:
    """A validated policy.  Build with :meth:`from_mapping`; ``raw`` is what was validated."""

    def __init__(
        self, raw: dict[str, object], genres: dict[str, Genre], types: dict[str, DatasetTypeDef]
    ) -> None:
        self.raw = raw
        self.genres = genres
        self.dataset_types = types
        on_exists = raw.get("on_exists", "version")
        self.on_exists = str(on_exists)
        self._shapes: dict[str | None, list[Shape]] | None = None
        self.source = "policy"  # where it was read, for messages: set by from_mapping

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object] | None, source: str) -> Policy:
        """Validate ``raw``; every problem is a ConfigError naming ``source`` and the fix."""
        check_plain(raw, source, "policy")  # before any walk: no cycle, no huge depth
        if raw is not None and not isinstance(raw, Mapping):
            fail(source, "policy", raw, "a mapping (genres, datasetTypes, on_exists)")
        data = dict(copy.deepcopy(raw or {}))
        _check_fields(data, {"on_exists", "genres", "datasetTypes"}, "policy", source)
        if data.get("on_exists", "version") not in ON_EXISTS:
            raise ConfigError(
                f"{source}: on_exists is {describe(data.get('on_exists'))}; use one of {ON_EXISTS}"
            )
        genres = {
            name: _build_genre(name, spec, source)
            for name, spec in _mapping(data.get("genres"), "genres", source).items()
        }
        types = {
            name: _build_type(name, spec, genres, source)
            for name, spec in _mapping(data.get("datasetTypes"), "datasetTypes", source).items()
        }
        _check_no_shared_files(types.values(), source)
        policy = cls(data, genres, types)
        policy.source = source
        return policy

    def dataset_type(self, name: str) -> DatasetTypeDef:
        definition = self.dataset_types.get(name) if isinstance(name, str) else None
        if definition is None:
            known = ", ".join(sorted(self.dataset_types)) or "none"
            raise UnknownDatasetTypeError(
                _unknown("dataset type", describe(name), self.dataset_types)
                + f" (defined: {known})",
                hint=Hint("define", {"name": _short(name)}),
            )
        return definition

    def genre(self, name: str) -> Genre:
        genre = self.genres.get(name) if isinstance(name, str) else None
        if genre is None:
            known = ", ".join(sorted(self.genres)) or "none"
            raise ConfigError(
                _unknown("genre", describe(name), self.genres) + f" (known: {known}); "
                "add it under policy.genres"
            )
        return genre

    def define(self, name: str, genre: str, overrides: Mapping[str, object]) -> DatasetTypeDef:
        """Build (without recording) a new dataset type of ``genre``."""
        spec: dict[str, object] = {"genre": genre, **overrides}
        check_plain(spec, "define", f"dataset type {name!r}")
        definition = _build_type(name, spec, self.genres, "define")
        others = [d for d in self.dataset_types.values() if d.name != name]
        _check_no_shared_files([*others, definition], "define")
        return definition

    def check_path_owner(self, dataset_type: str, paths: Sequence[str]) -> None:
        """Refuse to write ``paths`` for ``dataset_type`` if another type could own them.

        The put calls this with the paths it rendered, against the policy of the output it
        writes to (that output's own butler.yaml): a path that a location of any *other*
        dataset type there could also render, or that would be a file where the other
        needs a directory (or the reverse), or one of the repository's own files, or a path
        rendered twice, raises ConfigError naming both dataset types.  Nothing is written.
        """
        seen: set[str] = set()
        shapes = self._shape_index()
        for path in paths:
            if path in seen:
                raise ConfigError(
                    f"{self.source}: two locations of dataset type {dataset_type!r} render "
                    f"the same path {path!r}; give its locations templates (or storages) "
                    "that differ"
                )
            seen.add(path)
            mine = path_shape(f"dataset type {dataset_type!r}", dataset_type, path)
            key = mine.first_literal
            for other in shapes.get(key, []) + shapes.get(None, []):
                if other.dataset_type == dataset_type:
                    continue
                how = meeting(mine, other)
                if how is not None:
                    raise ConfigError(
                        f"{self.source}: cannot write {path!r} for dataset type "
                        f"{dataset_type!r}: {other.owner} "
                        f"can own it too ({how}); give one of them a template the other "
                        "cannot render"
                    )

    def _shape_index(self) -> dict[str | None, list[Shape]]:
        if self._shapes is None:
            index: dict[str | None, list[Shape]] = {}
            for shape in [*_RESERVED_SHAPES, *_shapes(self.dataset_types.values())]:
                index.setdefault(shape.first_literal, []).append(shape)
            self._shapes = index
        return self._shapes

    def digest(self) -> str:
        """A stable hash of the policy, recorded in provenance."""
        text = json.dumps(self.raw, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def merge(*levels: Mapping[str, object] | None) -> dict[str, object]:
    """Deep-merge policy mappings, later wins; lists and scalars are replaced whole."""
    result: dict[str, object] = {}
    for level in levels:
        if level:
            _merge_into(result, level)
    return result


def _merge_into(target: dict[str, object], override: Mapping[str, object]) -> None:
    for key, value in override.items():
        existing = target.get(key)
        if isinstance(existing, dict) and isinstance(value, Mapping):
            _merge_into(existing, value)
        elif isinstance(value, Mapping):
            target[key] = _merge_fresh(value)
        else:
            target[key] = copy.deepcopy(value)


def _merge_fresh(value: Mapping[str, object]) -> dict[str, object]:
    fresh: dict[str, object] = {}
    _merge_into(fresh, value)
    return fresh


def assignments_to_policy(assignments: Iterable[str]) -> dict[str, object]:
    """``["on_exists=error", "datasetTypes.calexp.storage=hdf5"]`` as a policy mapping.

    Values are read as YAML scalars, so ``5`` is an int and ``[a, b]`` a list.
    """
    result: dict[str, object] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key:
            raise ConfigError(f"--policy {assignment!r} is not KEY=VALUE; e.g. on_exists=error")
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--policy {assignment!r} conflicts with an earlier setting")
            node = child
        try:
            node[leaf] = yamlio.loads(text) if text else ""
        except yamlio.YAMLError:  # e.g. an unquoted template "{visit}.fits": a string
            node[leaf] = text
    return result


def _shapes(definitions: Iterable[DatasetTypeDef]) -> list[Shape]:
    return [
        template_shape(f"dataset type {d.name!r} location {index}", d.name, location.template)
        for d in definitions
        for index, location in enumerate(d.locations)
    ]


def _check_no_shared_files(definitions: Iterable[DatasetTypeDef], source: str) -> None:
    """No two locations (of two dataset types, or of one) may ever render the same file.

    Nor may a file of one be a directory of another, or a repository's own file.  The
    check is over the templates' languages (butler/overlap.py): sound, so a policy it
    passes never shares a path; a pair it refuses comes with an example path.
    """
    found = first_meeting([*_RESERVED_SHAPES, *_shapes(definitions)])
    if found is not None:
        first, second, how = found
        fix = (
            "give one of them a template the other cannot render"
            if first.dataset_type is not None
            else f"rename {second.owner.rsplit(' location', 1)[0]} or change its template"
        )
        raise ConfigError(
            f"{source}: {first.owner} and {second.owner} would share the files: {how}; {fix} "
            "(e.g. start it with '{datasetType}/')"
        )


def _mapping(value: object, what: str, source: str) -> dict[str, object]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: {what} must be a mapping, not {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):  # YAML reads on, no, 1 as bool and int
            fail(source, f"a name in {what}", key, "a str (quote it)")
    return dict(value)


def _text(spec: Mapping[str, object], name: str, where: str, source: str, default: object) -> str:
    """A field that must be a str (a template), default ``default``."""
    value = spec.get(name, default)
    if not isinstance(value, str):
        fail(source, f"{where} {name}", value, "a str")
    return value


def _python(value: object, where: str, source: str) -> str | None:
    if value is not None and not isinstance(value, str):
        fail(source, f"{where} python", value, "a dotted type name such as 'numpy.ndarray'")
    return value


def _check_fields(spec: Mapping[str, object], allowed: set[str], what: str, source: str) -> None:
    unknown = set(spec) - allowed
    if unknown:
        raise ConfigError(
            f"{source}: {what} has unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
        )


def _short(name: object) -> str:
    """A name for a hint: hostile names can be huge; messages stay one short line."""
    text = str(name)
    return text if len(text) <= 64 else text[:60] + "…"


def _unknown(what: str, described: str, known: Iterable[str]) -> str:
    """``unknown genre 'exposre'; did you mean exposure?`` (``described``: the name as
    ``config.describe`` shows a value, quoted and bounded)."""
    suggestion = did_you_mean(described.strip("'\""), known)
    return f"unknown {what} {described}" + (f"; {suggestion}" if suggestion else "")


def _check_storage(storage: object, what: str, source: str) -> str:
    if not isinstance(storage, str) or storage not in formats.known_formats():
        suggestion = did_you_mean(str(storage), formats.known_formats())
        raise UnknownFormatError(
            f"{source}: {what} uses unknown storage format {describe(storage)}"
            + (f"; {suggestion}" if suggestion else "")
            + f" (known: {', '.join(formats.known_formats())})"
        )
    return storage


def _build_genre(name: str, spec: object, source: str) -> Genre:
    where = f"genre {name!r}"
    spec = _mapping(spec, where, source)
    _check_fields(spec, _GENRE_FIELDS, where, source)
    for required in ("keys", "template", "storage"):
        if required not in spec:
            raise ConfigError(f"{source}: {where} needs {required!r}")
    keys: dict[str, type] = {}
    for key, type_name in _mapping(spec["keys"], f"{where} keys", source).items():
        if key in RESERVED_KEYS:
            raise ConfigError(
                f"{source}: {where} key {key!r} is reserved (data IDs use it to pick a "
                f"version or repository); rename the key"
            )
        if not isinstance(type_name, str) or type_name not in KEY_TYPES:
            raise ConfigError(
                f"{source}: {where} key {key!r} has type {describe(type_name)}; use one of "
                f"{sorted(KEY_TYPES)}"
            )
        keys[key] = KEY_TYPES[type_name]
    template = _text(spec, "template", where, source, None)
    _template(template, keys, where, source)
    storage = _check_storage(spec["storage"], where, source)
    return Genre(name, keys, template, storage, _python(spec.get("python"), where, source))


def _template(text: str, keys: dict[str, type], where: str, source: str) -> Template:
    try:
        return _compiled(text, tuple(keys.items()))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {where}: {exc}") from None


@functools.lru_cache(maxsize=4096)
def _compiled(text: str, keys: tuple[tuple[str, type], ...]) -> Template:
    """Templates are values: a genre's template, shared by its many dataset types (and
    read again at every refresh of a policy), is compiled once."""
    return Template(text, dict(keys))


def _build_type(
    name: str, spec: object, genres: Mapping[str, Genre], source: str
) -> DatasetTypeDef:
    where = f"dataset type {name!r}"
    try:
        validate_dataset_type_name(name)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    spec = _mapping(spec, where, source)
    _check_fields(spec, _TYPE_FIELDS, where, source)
    genre_name = spec.get("genre")
    if not isinstance(genre_name, str) or genre_name not in genres:
        known = ", ".join(sorted(genres)) or "none"
        suggestion = did_you_mean(str(genre_name), genres)
        raise ConfigError(
            f"{source}: {where} has unknown genre {describe(genre_name)}"
            + (f"; {suggestion}" if suggestion else "")
            + f" (known: {known}); add the genre under policy.genres or pick a known one"
        )
    genre = genres[genre_name]
    storage = spec.get("storage", genre.storage)
    if not isinstance(storage, str):  # an unknown name is reported with the location
        fail(source, f"{where} storage", storage, f"one of {', '.join(formats.known_formats())}")
    # A python type belongs to a storage format: changing one without the other keeps
    # the format's default rather than a type it cannot read as.
    python = spec.get("python", genre.python if storage == genre.storage else None)
    _python(python, where, source)
    entries = spec.get("locations")
    if entries is None:
        entries = [{"template": _text(spec, "template", where, source, genre.template)}]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: {where} locations must be a non-empty list")
    locations = []
    for index, entry in enumerate(entries):
        lwhere = f"{where} location {index}"
        entry = _mapping(entry, lwhere, source)
        _check_fields(entry, _LOCATION_FIELDS, lwhere, source)
        mode = entry.get("mode", "rw")
        if not isinstance(mode, str) or mode not in MODES:
            raise ConfigError(f"{source}: {lwhere} has mode {describe(mode)}; use one of {MODES}")
        text = _text(entry, "template", lwhere, source, genre.template)
        template = _template(text, genre.keys, lwhere, source)
        lstorage = _check_storage(entry.get("storage", storage), lwhere, source)
        lpython = _python(
            entry.get("python", python if lstorage == storage else None), lwhere, source
        )
        locations.append(Location(template, lstorage, lpython, mode))
    definition = DatasetTypeDef(name, genre.name, genre.keys, tuple(locations), dict(spec))
    definition.primary  # noqa: B018 - validates that some location is readable
    return definition
