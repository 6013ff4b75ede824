"""Storage formats, registered by name and imported on first use.

    get_format("fits").serialize(hdulist)  -> bytes of a FITS file
    get_format("yaml").read(path, "dict")  -> the dict stored in a YAML file

Built in: ``fits`` and ``fits-table`` (`fits.py`, the only module that imports
astropy), ``yaml`` and ``json`` (`plain.py`), ``npy`` (`npy.py`) and ``hdf5``
(`hdf5.py`, needs the ``[hdf5]`` extra).  A format module is imported by the first
`get_format` that names it, so importing this package imports no numpy, astropy or
h5py: the command line and the mount start fast.
"""

from __future__ import annotations

import importlib
import re
import threading

from butler.errors import ConfigError, Hint, UnknownFormatError
from butler.formats.base import StorageFormat, python_type_name

__all__ = [
    "StorageFormat",
    "format_for_extension",
    "get_format",
    "known_formats",
    "python_type_name",
    "register_format",
]

# name -> "package.module:ClassName"; insertion order is the order known_formats() reports.
_targets: dict[str, str] = {
    "fits": "butler.formats.fits:FitsFormat",
    "fits-table": "butler.formats.fits:FitsTableFormat",
    "yaml": "butler.formats.plain:YamlFormat",
    "json": "butler.formats.plain:JsonFormat",
    "npy": "butler.formats.npy:NpyFormat",
    "hdf5": "butler.formats.hdf5:Hdf5Format",
}

# A static table rather than asking each format, so that guessing a format from a file
# name imports nothing.  ".fits" means the image format: a table must be asked for by name.
_EXTENSIONS: dict[str, str] = {
    ".fits": "fits",
    ".fit": "fits",
    ".fts": "fits",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".npy": "npy",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
}

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*\Z")
_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*\Z")

_instances: dict[str, StorageFormat] = {}
# The mount calls get_format from worker threads; one lock keeps each format a single instance.
_lock = threading.RLock()  # re-entrant: a format may ask for another while created


def known_formats() -> tuple[str, ...]:
    """The names of every registered format, built-in ones first."""
    return tuple(_targets)


def register_format(name: str, target: str) -> None:
    """Register a format class under ``name``; ``target`` is ``"package.module:ClassName"``.

    Nothing is imported until `get_format` first asks for ``name``.  Registering the
    same target again does nothing; giving a registered name a different target raises
    `ConfigError`, so a plug-in cannot silently replace a built-in format.
    """
    if not _NAME.match(name):
        raise ConfigError(
            f"invalid storage format name {name!r}: use lower-case letters, digits, "
            "'-', '_' and '.', starting with a letter or digit"
        )
    if not _TARGET.match(target):
        raise ConfigError(
            f"invalid target {target!r} for storage format {name!r}: "
            "write it as 'package.module:ClassName'"
        )
    with _lock:
        current = _targets.get(name)
        if current is not None and current != target:
            raise ConfigError(
                f"storage format {name!r} is already registered as {current!r}; "
                f"choose another name for {target!r}"
            )
        _targets[name] = target


def get_format(name: str) -> StorageFormat:
    """The format registered as ``name``, imported and created on first use, then cached."""
    with _lock:
        instance = _instances.get(name)
        if instance is None:
            instance = _instances[name] = _create(name)
        return instance


def format_for_extension(extension: str) -> str | None:
    """The format that a file name extension (``".fits"``) suggests, or ``None``."""
    extension = extension.lower()
    if not extension.startswith("."):
        extension = "." + extension
    return _EXTENSIONS.get(extension)


def _create(name: str) -> StorageFormat:
    target = _targets.get(name)
    if target is None:
        from butler.suggest import did_you_mean

        suggestion = did_you_mean(name, _targets)
        raise UnknownFormatError(
            f"unknown storage format {name!r}"
            + (f"; {suggestion}" if suggestion else "")
            + f" (known formats: {', '.join(_targets)})",
            hint=Hint("register_format"),
        )
    module_name, class_name = target.split(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(
            f"storage format {name!r} is registered as {target!r}, which cannot be "
            f"imported ({error}); install the package that provides it or fix the target"
        ) from error
    instance = cls()
    if not isinstance(instance, StorageFormat):
        raise ConfigError(
            f"storage format {name!r}: {target} is not a storage format; it needs the "
            "attributes name, extension, default_python, python_types and the methods "
            "serialize, read and check (see butler.formats.StorageFormat)"
        )
    return instance
