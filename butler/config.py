"""Configuration files, read with bounds and checked against their schema before any use.

A repository's ``butler.yaml`` (format.md):

    butler: 1             int, required: the format version (only 1 is read)
    label: work           str, optional: a safe name; it is a directory of the mount
    parents: [../raw]     list of paths, optional, relative to the repository
    policy: {...}         mapping, optional: checked by butler.policy

Nothing else may be at the top.  Every refusal is one line naming the file, the key, what
was found and what is expected.  The helpers here (``expect_*``, ``check_label``,
``check_plain``) serve the aggregator file and the policy too, so all three speak alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from reprlib import Repr
from typing import BinaryIO, NoReturn

from butler import yamlio
from butler.errors import ConfigError, RepositoryError

FORMAT_VERSION = 1
CONFIG_KEYS = ("butler", "label", "parents", "policy", "registry", "schema")
#: A butler.yaml of 10,000 dataset types is about 3 MB; more is not a configuration
#: (and a file that never ends, a device behind a symlink, must not be read whole).
MAX_CONFIG_BYTES = 16 * 2**20
#: The deepest honest configuration (policy/datasetTypes/x/locations/0/template) is 7
#: levels; code that walks a policy recurses, so far deeper nesting is refused unread.
MAX_CONFIG_DEPTH = 32
MAX_NAME_BYTES = 255  # a label is a directory name in the mount

_short = Repr()
_short.maxstring = _short.maxother = 60
_PLAIN_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class RepositoryConfig:
    """A checked ``butler.yaml``; ``raw`` is the mapping as read."""

    source: str
    label: str | None
    parents: tuple[str, ...]
    policy: dict[str, object]
    raw: dict[str, object] = field(compare=False)

    def parent_paths(self, base: Path) -> list[Path]:
        """The parents as absolute paths, symlinks resolved."""
        paths = []
        for index, parent in enumerate(self.parents):
            try:
                paths.append((base / parent).resolve())
            except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
                fail(self.source, f"parents[{index}]", parent, "a path that resolves", str(exc))
        return paths


def describe(value: object) -> str:
    """A short repr for messages: a hostile value may be huge or fail to print."""
    if isinstance(value, int) and value.bit_length() > 256:
        return f"<an int of {value.bit_length()} bits>"
    try:
        return _short.repr(value)
    except Exception:
        return f"<a {type(value).__name__}>"


def fail(source: str, key: str, value: object, expected: str, why: str = "") -> NoReturn:
    """ConfigError: ``<source>: <key> is <value> (<type>); expected <expected>``."""
    found = "missing (or null)" if value is None else f"{describe(value)} ({kind_of(value)})"
    raise ConfigError(f"{source}: {key} is {found}{f': {why}' if why else ''}; expected {expected}")


def kind_of(value: object) -> str:
    names = {dict: "a mapping", list: "a list", str: "a str", bool: "a bool", int: "an int"}
    if value is None:
        return "null"
    return names.get(type(value), f"a {type(value).__name__}")


def expect_mapping(
    value: object, source: str, key: str, what: str = "a mapping"
) -> dict[str, object]:
    """A mapping with str keys (None counts as empty), as a new dict."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        fail(source, key, value, what)
    for name in value:
        if not isinstance(name, str):
            fail(
                source, f"a key of {key}", name, "a str (quote it: YAML reads on, no, 1 as others)"
            )
    return dict(value)


def expect_str(value: object, source: str, key: str, what: str = "a str") -> str:
    if not isinstance(value, str):
        fail(source, key, value, what)
    if "\x00" in value:
        fail(source, key, value, what, "it contains a NUL character")
    return value


def expect_path(value: object, source: str, key: str) -> str:
    text = expect_str(value, source, key, "a path (a non-empty str without NUL)")
    if not text:
        fail(source, key, value, "a path (a non-empty str without NUL)")
    return text


def expect_list(value: object, source: str, key: str, what: str = "a list") -> list[object]:
    if value is None:
        return []
    if not isinstance(value, list):
        fail(source, key, value, what)
    return value


def check_label(value: object, source: str, key: str = "label") -> str:
    """A label names a directory of the mount (``.repos/<label>``): a safe single name."""
    what = "a name without '/' or control characters, not '.' or '..', up to 255 bytes"
    text = expect_str(value, source, key, what)
    if (
        text in ("", ".", "..")
        or "/" in text
        or any(
            ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or 0xD800 <= ord(ch) <= 0xDFFF for ch in text
        )
        or len(text.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES
    ):
        fail(source, key, value, what)
    return text


def check_unknown_keys(
    data: Mapping[str, object], allowed: tuple[str, ...], source: str, where: str
) -> None:
    unknown = [key for key in data if key not in allowed]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {describe(unknown)} {where}; allowed: {', '.join(allowed)}"
        )


def check_plain(value: object, source: str, key: str, max_depth: int = MAX_CONFIG_DEPTH) -> None:
    """Plain data only (mappings with str keys, lists, scalars), not too deep, no cycles.

    For a policy or aggregator given from Python: what YAML cannot hold would otherwise
    fail deep inside a merge or a hash as a raw RecursionError or TypeError.
    """
    stack: list[tuple[object, int, str, bool]] = [(value, 1, key, False)]
    open_ids: set[int] = set()  # containers on the current path: meeting one is a cycle
    checked: dict[int, int] = {}  # container -> depth it was checked at (shared ones)
    while stack:
        item, depth, where, leaving = stack.pop()
        if leaving:
            open_ids.discard(id(item))
            checked[id(item)] = depth
            continue
        if depth > max_depth:
            fail(source, where, item, f"at most {max_depth} levels of nesting")
        if isinstance(item, _PLAIN_SCALARS):
            continue
        if id(item) in open_ids:
            fail(source, where, item, "data that does not contain itself")
        if checked.get(id(item), 0) >= depth:  # checked as deep before: nothing new
            continue
        if isinstance(item, Mapping):
            children = []
            for name, child in item.items():
                if not isinstance(name, str):
                    fail(source, f"a key of {where}", name, "a str")
                children.append((child, f"{where}.{name}"))
        elif isinstance(item, list | tuple):
            children = [(child, f"{where}[{index}]") for index, child in enumerate(item)]
        else:
            fail(source, where, item, "plain data: a mapping, list, str, number, bool or null")
        open_ids.add(id(item))
        stack.append((item, depth, where, True))
        stack.extend((child, depth + 1, name, False) for child, name in children)


def read_config_file(path: Path, what: str, stream: BinaryIO | None = None) -> object:
    """Read and parse a configuration file (from ``stream`` if given, open on it); every
    failure is a one-line ConfigError."""
    try:
        if stream is not None:
            return yamlio.load_stream(
                stream, max_bytes=MAX_CONFIG_BYTES, max_depth=MAX_CONFIG_DEPTH
            )
        return yamlio.load_file(path, max_bytes=MAX_CONFIG_BYTES, max_depth=MAX_CONFIG_DEPTH)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except yamlio.YAMLError as exc:
        raise ConfigError(
            f"{path}: not valid YAML ({yamlio.one_line(exc)}); fix the file"
        ) from None


def load_repository_config(path: Path, stream: BinaryIO | None = None) -> RepositoryConfig:
    """Read ``butler.yaml`` at ``path`` (or from ``stream``, open on it) and check it
    (ConfigError, RepositoryError)."""
    data = read_config_file(path, "repository configuration", stream)
    return parse_repository_config(data, str(path))


def parse_repository_config(data: object, source: str) -> RepositoryConfig:
    """Check a ``butler.yaml`` mapping: each problem names ``source``, the key and the fix."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: must be a mapping with 'butler: 1' at the top, not {kind_of(data)}"
        )
    version = data.get("butler")
    if isinstance(version, bool) or (version is not None and not isinstance(version, int)):
        fail(source, "butler", version, f"the format version, the int {FORMAT_VERSION}")
    if version != FORMAT_VERSION:
        raise RepositoryError(
            f"{source}: format version {describe(version)} is not supported (this butler "
            f"reads version {FORMAT_VERSION}); upgrade butlerfs or use a matching version"
        )
    for key in data:
        if not isinstance(key, str):
            fail(source, "a top-level key", key, f"one of {', '.join(CONFIG_KEYS)}")
    check_unknown_keys(data, CONFIG_KEYS, source, "at the top")
    label = data.get("label")
    for key in ("registry", "schema"):  # checked in full by butler.postgres when used
        if data.get(key) is not None and not isinstance(data.get(key), str):
            fail(source, key, data.get(key), "a string (registry: postgresql://HOST/DB)")
    parents = expect_list(data.get("parents"), source, "parents", "a list of paths")
    policy = expect_mapping(
        data.get("policy"), source, "policy", "a mapping (genres, datasetTypes, on_exists)"
    )
    return RepositoryConfig(
        source=source,
        label=None if label is None else check_label(label, source),
        parents=tuple(expect_path(p, source, f"parents[{i}]") for i, p in enumerate(parents)),
        policy=policy,
        raw=data,
    )
