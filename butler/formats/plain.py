"""Plain data (dicts and lists of strings, numbers, booleans and None) as YAML or JSON.

Only plain data is written, checked before anything is serialized: a format that
wrote arbitrary objects would need pickle or YAML's Python tags, and loading
those runs code.  Types are compared exactly, not with ``isinstance``: a numpy
float or an ``OrderedDict`` would otherwise come back as something else, or
not be written at all by YAML's safe dumper.  The error says where the first
offending value sits, so it can be converted.
"""

from __future__ import annotations

import codecs
import datetime
import json
import re
from dataclasses import dataclass

from butler import yamlio
from butler.errors import FormatError
from butler.formats.base import (
    StorageFormat,
    bad_file,
    choose_python,
    python_type_name,
    wrong_object,
)

_CONTAINERS: dict[str, type] = {"dict": dict, "list": list}
_JSON_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class _PlainRules:
    """What one format accepts as plain data."""

    scalars: tuple[type, ...]
    keys: tuple[type, ...]
    described: str


_YAML_RULES = _PlainRules(
    scalars=(*_JSON_SCALARS, datetime.date, datetime.datetime),
    keys=_JSON_SCALARS,
    described="dict, list, str, int, float, bool, None, datetime.date and datetime.datetime",
)
_JSON_RULES = _PlainRules(
    scalars=_JSON_SCALARS,
    keys=(str,),
    described="dict with str keys, list, str, int, float, bool and None",
)


# What cannot begin a document of these formats, checked on the first bytes written (the
# mount refuses such a write at once).  Both are text: UTF-8 (a byte-order mark allowed),
# without NUL or other control characters than tab, newline and carriage return.  JSON
# holds a dict or a list here, so its first character that is not blank is "{" or "[".
_UTF8_BOM = codecs.BOM_UTF8
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_JSON_BLANK = " \t\n\r"


def _start_text(storage_format: StorageFormat, first: bytes) -> str:
    """The first bytes as text, or `FormatError` if they cannot begin a UTF-8 text file."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        text = decoder.decode(first.removeprefix(_UTF8_BOM), final=False)
    except UnicodeDecodeError as error:
        raise FormatError(
            f"the bytes do not begin like a {storage_format.name} file: they are not "
            f"UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    control = _CONTROL.search(text)
    if control is not None:
        raise FormatError(
            f"the bytes do not begin like a {storage_format.name} file: they hold the "
            f"control character {control.group()!r}, which a text file does not"
        )
    return text


class YamlFormat:
    """A dict or list of plain data as block YAML (through `butler.yamlio`, safe loader only)."""

    name = "yaml"
    extension = ".yaml"
    default_python = "dict"
    python_types = ("dict", "list")
    signature = None  # YAML begins many ways; check_start refuses what is not text

    def check_start(self, first: bytes) -> None:
        _start_text(self, first)

    def serialize(self, obj: object) -> bytes:
        _require_plain(self, obj, _YAML_RULES)
        return yamlio.dumps(obj).encode("utf-8")

    def read(self, path: str, python: str | None = None) -> object:
        return _as_container(self, path, choose_python(self, python), self._parse(path))

    def check(self, path: str) -> None:
        _as_container(self, path, None, self._parse(path))

    def _parse(self, path: str) -> object:
        with open(path, "rb") as stream:
            text = stream.read()
        try:
            return yamlio.loads(text)
        except yamlio.YAMLError as error:
            raise bad_file(self, path, f"it does not parse ({error})") from error


class JsonFormat:
    """A dict or list of plain data as indented JSON, keys in their original order."""

    name = "json"
    extension = ".json"
    default_python = "dict"
    python_types = ("dict", "list")
    signature = None  # blanks may come first; check_start looks past them

    def check_start(self, first: bytes) -> None:
        text = _start_text(self, first).lstrip(_JSON_BLANK)
        if text and text[0] not in "{[":
            raise FormatError(
                f"the bytes do not begin like a json file of a dict or a list: the first "
                f"character is {text[0]!r}, not '{{' or '['"
            )

    def serialize(self, obj: object) -> bytes:
        _require_plain(self, obj, _JSON_RULES)
        try:
            text = json.dumps(obj, sort_keys=False, indent=2, allow_nan=False, ensure_ascii=False)
        except ValueError as error:
            raise FormatError(
                f"the json format cannot write this object: {error}; JSON has no NaN or "
                "Infinity, so write None instead or use the yaml format"
            ) from error
        return (text + "\n").encode("utf-8")

    def read(self, path: str, python: str | None = None) -> object:
        return _as_container(self, path, choose_python(self, python), self._parse(path))

    def check(self, path: str) -> None:
        _as_container(self, path, None, self._parse(path))

    def _parse(self, path: str) -> object:
        with open(path, "rb") as stream:
            text = stream.read()
        try:
            return json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
            raise bad_file(self, path, f"it does not parse ({error})") from error


def _reject_constant(constant: str) -> object:
    raise ValueError(f"{constant} is not valid JSON")


def _as_container(
    storage_format: StorageFormat, path: str, python: str | None, data: object
) -> object:
    """``data`` if it is the container ``python`` names (either container if ``None``)."""
    actual = python_type_name(data)
    if actual not in _CONTAINERS:
        raise bad_file(storage_format, path, f"it holds a {actual}, not a dict or a list")
    if python is not None and actual != python:
        raise FormatError(
            f"{path} holds a {actual}, not a {python}; read it as {actual}, "
            f"or fix the python type of the dataset"
        )
    return data


def _require_plain(storage_format: StorageFormat, obj: object, rules: _PlainRules) -> None:
    if type(obj) not in (dict, list):
        raise wrong_object(storage_format, obj, "a dict or a list of plain data")
    try:
        _check_plain(storage_format, obj, "", rules, set())
    except RecursionError as error:
        raise FormatError(
            f"the {storage_format.name} format cannot write this object: it is nested too deeply"
        ) from error


def _check_plain(
    storage_format: StorageFormat,
    value: object,
    where: str,
    rules: _PlainRules,
    ancestors: set[int],
) -> None:
    kind = type(value)
    if kind in rules.scalars:
        return
    if kind is not dict and kind is not list:
        raise FormatError(
            f"the {storage_format.name} format writes only plain data ({rules.described}); "
            f"the value at {where or 'the top'} is a {python_type_name(value)}: convert it "
            "first (float(x), x.tolist(), list(t), dict(d), str(x))"
        )
    if id(value) in ancestors:
        raise FormatError(
            f"the {storage_format.name} format cannot write this object: "
            f"the value at {where or 'the top'} contains itself"
        )
    ancestors.add(id(value))
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) not in rules.keys:
                raise FormatError(
                    f"the {storage_format.name} format cannot write the key {key!r} "
                    f"({python_type_name(key)}) at {where or 'the top'}; "
                    f"keys must be {' or '.join(k.__name__ for k in rules.keys)}"
                )
            _check_plain(storage_format, item, f"{where}[{key!r}]", rules, ancestors)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_plain(storage_format, item, f"{where}[{index}]", rules, ancestors)
    ancestors.remove(id(value))
