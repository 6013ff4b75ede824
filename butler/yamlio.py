"""The one module that imports yaml: safe loading and dumping, C-accelerated when available."""

from __future__ import annotations

from pathlib import Path

import yaml

try:
    _Loader: type = yaml.CSafeLoader
    _Dumper: type = yaml.CSafeDumper
except AttributeError:  # libyaml missing: the pure-Python classes behave the same, slower
    _Loader = yaml.SafeLoader
    _Dumper = yaml.SafeDumper

YAMLError = yaml.YAMLError


def loads(text: str | bytes) -> object:
    """Parse YAML text with the safe loader (no Python objects are ever constructed)."""
    return yaml.load(text, Loader=_Loader)


def dumps(data: object) -> str:
    """Serialize plain data (dict, list, str, int, float, bool, None) as block YAML."""
    return str(yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False))


def load_file(path: str | Path) -> object:
    with open(path, "rb") as stream:
        return loads(stream.read())
