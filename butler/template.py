"""Path templates: data ID to relative path for ``put``, and path to data ID for the mount.

A path matches only if rendering its data ID gives the same path again, so a dataset never has
two names (``v123`` is no alias of ``v0000123``).  Data ID values are untrusted."""

from __future__ import annotations

import functools
import numbers
import re
import string
from collections.abc import Callable, Mapping
from reprlib import repr as _short_repr
from typing import NoReturn

from butler.errors import ConfigError, InvalidDataIdError
from butler.suggest import did_you_mean

DataIdValue = int | str
DataId = dict[str, DataIdValue]
KEY_TYPES: dict[str, type] = {"int": int, "str": str}

DATASET_TYPE = "datasetType"  # the built-in field every template may use
MAX_COMPONENT_BYTES = 255  # NAME_MAX on Linux and macOS: a longer name cannot be created
MAX_PATH_BYTES = 4095  # PATH_MAX less its NUL: no longer relative path can be opened
# Registries store int values as signed 64-bit integers (SQLite INTEGER, PostgreSQL BIGINT):
# a value outside fails only once it is written, after the put's point of no return.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# ASCII only (int() also takes "١٢", " 12", "1_2"); longer never fits a component anyway.
_DECIMAL = re.compile(r"-?[0-9]{1,254}")
# Category Cc is exactly U+0000-U+001F and U+007F-U+009F; lone surrogates cannot be encoded.
_UNSAFE = "/\x00-\x1f\x7f-\x9f\ud800-\udfff"
_FORBIDDEN_CHAR = re.compile(f"[{_UNSAFE}]")
_STR_PATTERN = f"[^{_UNSAFE}.\\-][^{_UNSAFE}]*?"  # unsafe fails in the regex: it backtracks
_INT_SPEC = re.compile(r"(0?)([0-9]*)(d?)")
_STR_SPECS = ("", "s")
_Part = tuple[str, str | None, str]  # (literal before, field, spec); field None ends a component
_Groups = tuple[tuple[str, Callable[[str], DataIdValue]], ...]  # per regex group: (field, convert)


def _quote(value: object) -> str:
    """A short repr for a message: hostile values can be huge, or fail to print at all."""
    if isinstance(value, int) and value.bit_length() > 256:  # repr() refuses > 4300 digits
        return f"<an int of {value.bit_length()} bits>"
    try:
        return _short_repr(value)
    except Exception:  # a str() limit inside a container, or a __repr__ that raises
        return f"<a {type(value).__name__}>"


def _too_long(text: str) -> bool:
    # A character is at most 4 UTF-8 bytes, so short names skip the encode.
    return len(text) * 4 > MAX_COMPONENT_BYTES and len(text.encode()) > MAX_COMPONENT_BYTES


def _bad_component(name: str) -> bool:
    return not name or name[0] in ".-" or _too_long(name)


def int_width(spec: str) -> int:
    """The width of a valid int spec ('07d' -> 7), capped: a huge one never reaches int()."""
    match = _INT_SPEC.fullmatch(spec)
    digits = match.group(2).lstrip("0") if match else ""
    return int(digits or 0) if len(digits) <= 4 else 10**4


def _int_pattern(spec: str) -> str:
    """Match only what format() writes, so a wrong split fails inside the regex and backtracks."""
    plain, width = "0|-?[1-9][0-9]*", int_width(spec)
    if spec[:1] not in ("", "0", "d"):
        return f" *(?:{plain})"  # a width without the 0 flag pads with spaces
    if width < 2:
        return plain
    # Zero padding to the width (the sign counts), or more digits without leading zeros.
    n = width - 1
    return f"[0-9]{{{n + 1}}}|[1-9][0-9]{{{n + 1},}}|-(?:[0-9]{{{n}}}|[1-9][0-9]{{{n},}})"


def validate_dataset_type_name(name: str) -> str:
    """Dataset type names become path components and identifiers, so keep them plain."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise InvalidDataIdError(
            f"invalid dataset type name {_quote(name)}: it must match ^[A-Za-z][A-Za-z0-9_]*$; "
            "choose a name like 'calexp' or 'deep_coadd'"
        )
    return name


def coerce_value(key: str, value: object, key_type: type) -> DataIdValue:
    """Turn an untrusted value into the key's type, refusing anything unsafe in a path."""
    if key_type is int:
        return _in_range(key, _as_int(key, value))
    if key_type is not str or not isinstance(value, str):
        raise InvalidDataIdError(
            f"data ID key {key!r} expects a str, got {_quote(value)} ({type(value).__name__})"
        )
    text = str.__str__(value)  # a str subclass could lie in __str__; keep the real characters
    if not text:
        problem = "it is empty"
    elif _FORBIDDEN_CHAR.search(text):
        problem = "it contains '/', NUL or a control character"
    elif text[0] in ".-":
        problem = f"it starts with {text[0]!r} (no '.', '..', hidden or option-like names)"
    elif _too_long(text):
        problem = f"it is longer than {MAX_COMPONENT_BYTES} bytes in UTF-8"
    else:
        return text
    raise InvalidDataIdError(
        f"data ID key {key!r} has unsafe value {_quote(text)}: {problem}; values become path "
        "components, so pass a plain name"
    )


def _as_int(key: str, value: object) -> int:
    if type(value) is int:
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)  # numpy integers
    if isinstance(value, str) and _DECIMAL.fullmatch(value):
        return int(value)
    raise InvalidDataIdError(
        f"data ID key {key!r} expects an int, got {_quote(value)} ({type(value).__name__}); "
        "pass an integer or a short decimal string such as '12' or '-3'"
    )


def _in_range(key: str, value: int, low: int = INT_MIN) -> int:
    if low <= value <= INT_MAX:
        return value
    why = "versions count from 1" if low == 1 else "registries store signed 64-bit integers"
    raise InvalidDataIdError(
        f"data ID key {key!r} is {_quote(value)}, outside {low}..{INT_MAX}; {why}, so pass "
        "a value in that range"
    )


def _parsed_int(key: str, text: str) -> int:
    """An int field read back from a path: in the registry's range, else no match."""
    return _in_range(key, int(text))  # the regex admits only digits (and padding spaces)


def coerce_version(value: object) -> int:
    """A ``version=`` from a data ID: a positive int (or decimal string) a registry can hold."""
    return _in_range("version", _as_int("version", value), low=1)


def as_data_id(data_id: object) -> dict[str, object]:
    """A caller's data ID as a fresh dict (None is empty); anything but a mapping is refused."""
    if data_id is None:
        return {}
    if not isinstance(data_id, Mapping):
        raise InvalidDataIdError(
            f"a data ID is a mapping of key to value, not {_quote(data_id)} "
            f"({type(data_id).__name__}); pass e.g. {{'visit': 12}} or keywords"
        )
    return dict(data_id)


def coerce_data_id(
    data_id: Mapping[str, object], keys: Mapping[str, type], *, partial: bool = False
) -> DataId:
    """Check a whole data ID at once, so a mistyped key is reported rather than ignored."""
    data_id = as_data_id(data_id)
    for key in data_id:
        if key not in keys:
            suggestion = did_you_mean(key, keys)
            raise InvalidDataIdError(
                f"unknown data ID key {_quote(key)}"
                + (f"; {suggestion}" if suggestion else "")
                + f" (valid keys: {', '.join(keys) or 'none'})"
            )
    result = {key: coerce_value(key, data_id[key], keys[key]) for key in keys if key in data_id}
    if not partial and len(result) < len(keys):
        missing = [key for key in keys if key not in result]
        raise InvalidDataIdError(
            f"data ID {_quote(dict(data_id))} is missing key{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)}; give every key"
        )
    return result


class Template:
    """A compiled path template: everything a call needs is prepared here, once."""

    def __init__(self, text: str, keys: Mapping[str, type]) -> None:
        self.text = text
        if not isinstance(text, str):
            self._fail(f"is a {type(text).__name__}; write the template as a string")
        if len(text) > MAX_PATH_BYTES:
            self._fail(f"is longer than {MAX_PATH_BYTES} characters, the longest path there is")
        self.keys: dict[str, type] = dict(keys)
        for key, key_type in self.keys.items():
            if not _NAME.fullmatch(key) or key == DATASET_TYPE or key_type not in (int, str):
                self._fail(
                    f"has key {key!r} of type {key_type!r}; key names are letters, digits and '_' "
                    f"(not {DATASET_TYPE}) and key types are int or str"
                )
        parts = self._split()
        #: Per component, its (literal before, field, spec) parts; a field None ends it.
        self.parts: tuple[tuple[_Part, ...], ...] = tuple(map(tuple, parts))
        self._check_lengths()
        self._regex, self._groups = self._compile(parts)
        self._by_component = tuple(self._compile([component]) for component in parts)
        self._fields = tuple({field for field, _ in groups} for _, groups in self._by_component)
        fields = {field for field, _ in self._groups}
        for key in self.keys:
            if key not in fields:
                self._fail(
                    f"does not use key {key}; every data ID key must appear in the path so "
                    "the path maps back to one data ID"
                )
        self.uses_dataset_type = DATASET_TYPE in fields
        self.components = tuple(text.split("/"))  # fields and specs were checked to hold no '/'
        self.depth = len(parts)

    def _fail(self, problem: str) -> NoReturn:
        text = self.text if isinstance(self.text, str) else ""
        shown = repr(text) if len(text) <= 200 else repr(text[:200]) + "..."
        raise ConfigError(f"template {shown} {problem}")

    def _check_lengths(self) -> None:
        """Refuse a template no data ID can render: a component or path over the limits."""
        total = 0
        for index, component in enumerate(self.parts):
            shortest = sum(
                len(literal.encode()) + self._shortest_field(field, spec)
                for literal, field, spec in component
            )
            if shortest > MAX_COMPONENT_BYTES:
                self._fail(
                    f"renders component {index + 1} in at least {shortest} bytes, but a file "
                    f"or directory name holds at most {MAX_COMPONENT_BYTES}; shorten it"
                )
            total += shortest + 1
        if total - 1 > MAX_PATH_BYTES:
            self._fail(f"renders paths of at least {total - 1} bytes; shorten it")

    def _shortest_field(self, field: str | None, spec: str) -> int:
        if field is None:
            return 0
        if self.keys.get(field) is int:
            return max(int_width(spec), 1)
        return 1

    def _split(self) -> list[list[_Part]]:
        """Split into components of parts, checking every field and component on the way."""
        try:
            parsed = list(string.Formatter().parse(self.text))
        except ValueError as exc:
            self._fail(f"is not valid format syntax ({exc}); write fields as {{key:spec}}")
        components: list[list[_Part]] = [[]]
        literal = ""  # since the last field: the parser also splits literals at '{{' and '}}'
        for text, field, spec, conversion in parsed:
            first, *rest = text.split("/")
            literal += first
            for piece in rest:
                components[-1].append((literal, None, ""))
                components.append([])
                literal = piece
            if field is None:
                continue
            self._check_field(field, spec or "", conversion)
            if not literal and components[-1]:
                self._fail(
                    f"puts fields {components[-1][-1][1]} and {field} side by side, so a "
                    "path cannot be split back into values; put a literal such as '-' between"
                )
            components[-1].append((literal, field, spec or ""))
            literal = ""
        components[-1].append((literal, None, ""))
        for component in components:
            prefix = component[0][0]
            if len(component) == 1 and not prefix:
                self._fail("has an empty component; write a relative path like 'a/{key}.fits'")
            if prefix[:1] in (".", "-"):
                self._fail(f"starts a component with {prefix[0]!r}; remove that character")
            if any(_FORBIDDEN_CHAR.search(literal) for literal, _, _ in component):
                self._fail("contains a control character; remove it")
        return components

    def _check_field(self, field: str, spec: str, conversion: str | None) -> None:
        if conversion is not None:
            self._fail(f"uses conversion !{conversion} on {field}; remove it")
        if field in self.keys or field == DATASET_TYPE:
            is_int = self.keys.get(field) is int
            if not (_INT_SPEC.fullmatch(spec) if is_int else spec in _STR_SPECS):
                allowed = "'', 'd' or a width like '07d'" if is_int else "no spec or 's'"
                self._fail(f"gives {field} format spec {_quote(spec)}; use {allowed}")
            if is_int and int_width(spec) > MAX_COMPONENT_BYTES:
                self._fail(
                    f"gives {field} the width {_quote(spec)}; a width is at most "
                    f"{MAX_COMPONENT_BYTES} (a file name holds at most {MAX_COMPONENT_BYTES} "
                    "bytes), e.g. '07d'"
                )
        elif "." in field or "[" in field:
            self._fail(f"uses attribute or index access in {{{field}}}; use a plain key name")
        else:
            valid = ", ".join([DATASET_TYPE, *self.keys])
            self._fail(f"uses unknown field {{{field}}}; valid fields are: {valid}")

    def _compile(self, components: list[list[_Part]]) -> tuple[re.Pattern[str], _Groups]:
        """A field repeated with the same spec must repeat the same text: a backreference."""
        seen: dict[tuple[str, str], str] = {}
        groups: list[tuple[str, Callable[[str], DataIdValue]]] = []
        pieces = []
        for component in components:
            piece = []
            for literal, field, spec in component:
                piece.append(re.escape(literal))
                if field is None:
                    continue
                if (field, spec) in seen:
                    piece.append(f"(?P={seen[field, spec]})")
                    continue
                name = seen[field, spec] = f"g{len(groups)}"
                convert: Callable[[str], DataIdValue] = str
                if field == DATASET_TYPE:  # the pattern admits only valid names
                    body = "[A-Za-z][A-Za-z0-9_]*?"
                elif self.keys[field] is int:
                    convert, body = functools.partial(_parsed_int, field), _int_pattern(spec)
                else:  # the coercion still checks the length
                    body = _STR_PATTERN
                    convert = functools.partial(coerce_value, field, key_type=str)
                groups.append((field, convert))
                piece.append(f"(?P<{name}>{body})")
            pieces.append("".join(piece))
        return re.compile("/".join(pieces)), tuple(groups)

    def _values(self, groups: _Groups, texts: tuple[str, ...], values: DataId) -> bool:
        """Add coerced matches to values; False if one is invalid or contradicts another."""
        for (field, convert), text in zip(groups, texts, strict=True):
            try:
                value = convert(text)
            except (ValueError, InvalidDataIdError):
                return False
            if values.setdefault(field, value) != value:
                return False
        return True

    def _checked(self, path: str, fields: tuple[set[str], ...]) -> str:
        for index, name in enumerate(path.split("/")):
            if _bad_component(name):
                used = ", ".join(sorted(fields[index]))
                raise InvalidDataIdError(
                    f"path component {_quote(name)} is empty, starts with '.' or '-' or is over "
                    f"255 bytes; check data ID key(s) {used} (no negative int may start it)"
                )
        return path

    def render(self, dataset_type: str, data_id: Mapping[str, object]) -> str:
        """Validate untrusted input first: the result is a path to write."""
        validate_dataset_type_name(dataset_type)
        values = coerce_data_id(data_id, self.keys)
        path = self.text.format_map({**values, DATASET_TYPE: dataset_type})
        return self._checked(path, self._fields)

    def render_component(self, index: int, dataset_type: str, data_id: Mapping[str, object]) -> str:
        """Render one directory level, which needs only the keys that level uses."""
        validate_dataset_type_name(dataset_type)
        values = {**coerce_data_id(data_id, self.keys, partial=True), DATASET_TYPE: dataset_type}
        missing = [field for field in self._fields[index] if field not in values]
        if missing:
            raise InvalidDataIdError(
                f"component {index} of template {self.text!r} needs data ID key(s) "
                f"{', '.join(sorted(missing))}; add them to the data ID"
            )
        name = self.components[index].format_map(values)
        return self._checked(name, (self._fields[index],))

    def parse(self, path: str) -> tuple[str | None, DataId] | None:
        """Return None rather than raise: most paths a mount sees belong to other templates."""
        match = self._regex.fullmatch(path)
        values: DataId = {}
        if match is None or not self._values(self._groups, match.groups(), values):
            return None
        if self.text.format_map(values) != path or any(map(_bad_component, path.split("/"))):
            return None
        return self._result(values)

    def parse_directory(self, directory: str) -> tuple[str | None, DataId] | None:
        """Parse the first levels of a path, so a mount can list directories lazily."""
        names = directory.split("/") if directory else []
        if len(names) >= self.depth:
            return None
        values: DataId = {}
        for index, name in enumerate(names):
            regex, groups = self._by_component[index]
            match = regex.fullmatch(name)
            if match is None or not self._values(groups, match.groups(), values):
                return None
            if self.components[index].format_map(values) != name or _bad_component(name):
                return None
        return self._result(values)

    def _result(self, values: DataId) -> tuple[str | None, DataId]:
        dataset_type = values.get(DATASET_TYPE)
        data_id = {key: values[key] for key in self.keys if key in values}
        return (None if dataset_type is None else str(dataset_type)), data_id

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Template):
            return NotImplemented
        return self.text == other.text and self.keys == other.keys

    def __hash__(self) -> int:
        return hash((self.text, frozenset(self.keys.items())))

    def __repr__(self) -> str:
        return f"Template({self.text!r})"
