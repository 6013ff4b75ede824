"""Shared fixtures for the butler tests: a standard policy, repositories in tmp_path, images.

Everything here goes through the public API of SPEC.md §6 and the files on disk; nothing
reaches into the library's internals.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from astropy.io import fits

from butler import DataRepository, DatasetRef
from tests.conftest import Engine

PROJECT_ROOT = Path(__file__).resolve().parents[2]

EXPOSURE_TEMPLATE = "{datasetType}/v{visit:07d}/{datasetType}-v{visit:07d}-c{ccd:03d}.fits"
CATALOG_TEMPLATE = "{datasetType}/v{visit:07d}/{datasetType}-c{ccd:03d}.fits"
METADATA_TEMPLATE = "{datasetType}/{datasetType}-v{visit:07d}.yaml"

STANDARD_POLICY: dict[str, object] = {
    "genres": {
        "exposure": {
            "keys": {"visit": "int", "ccd": "int"},
            "template": EXPOSURE_TEMPLATE,
            "storage": "fits",
            "python": "astropy.io.fits.HDUList",
        },
        "catalog": {
            "keys": {"visit": "int", "ccd": "int"},
            "template": CATALOG_TEMPLATE,
            "storage": "fits-table",
            "python": "astropy.table.Table",
        },
        "metadata": {
            "keys": {"visit": "int"},
            "template": METADATA_TEMPLATE,
            "storage": "yaml",
            "python": "dict",
        },
    },
    "datasetTypes": {
        "raw": {"genre": "exposure"},
        "calexp": {"genre": "exposure"},
        "src": {"genre": "catalog"},
        "visitInfo": {"genre": "metadata"},
    },
}


#: One small dataset type for the write-path tests (crash, kill, concurrency): "note",
#: YAML, one key, template note/note-v<visit>.yaml.
NOTE_POLICY: dict[str, object] = {
    "genres": {
        "meta": {
            "keys": {"visit": "int"},
            "template": "{datasetType}/{datasetType}-v{visit:07d}.yaml",
            "storage": "yaml",
        }
    },
    "datasetTypes": {"note": {"genre": "meta"}},
}


def exposure_path(dataset_type: str, visit: int, ccd: int, extension: str = ".fits") -> str:
    """The relative path EXPOSURE_TEMPLATE gives, with the extension of the storage format."""
    return f"{dataset_type}/v{visit:07d}/{dataset_type}-v{visit:07d}-c{ccd:03d}{extension}"


@pytest.fixture
def policy() -> dict[str, Any]:
    """A fresh copy of the standard policy, free to modify in one test."""
    return copy.deepcopy(STANDARD_POLICY)


MakeRepo = Callable[..., Path]


@pytest.fixture
def make_repo(tmp_path: Path, engine: Engine) -> MakeRepo:
    """``make_repo("A", policy=..., label=..., parents=...)`` creates tmp_path/A and returns it.

    ``name`` may contain slashes (``"site/A"``); the parent directories are made first.
    Its registry is the ``engine``'s (tests/conftest.py): SQLite unless the test module
    is marked ``engines``.
    """
    made = 0

    def make(
        name: str,
        policy: dict[str, Any] | None = None,
        label: str | None = None,
        parents: tuple[Path, ...] = (),
    ) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        chosen = copy.deepcopy(STANDARD_POLICY) if policy is None else policy
        nonlocal made
        registry = engine.registry(made)
        made += 1
        DataRepository.create(path, label=label, policy=chosen, parents=parents, registry=registry)
        settle()
        assert (path / "butler.yaml").is_file(), (
            f"DataRepository.create wrote no {path}/butler.yaml"
        )
        return path

    return make


def settle() -> None:
    """Collect dropped Butlers, so their SQLite connections close and checkpoint.

    Tests compare bytes on disk; a connection kept alive only by a reference cycle would
    otherwise hold a write-ahead log that a later checkpoint folds into the main file.
    """
    gc.collect()


def image_array(seed: int, shape: tuple[int, int] = (16, 20)) -> np.ndarray:
    """A float32 image whose every pixel says which seed made it.

    The concurrent-writer test repeats this formula inside its worker processes.
    """
    return (np.arange(shape[0] * shape[1], dtype=np.float32).reshape(shape) + seed * 1000.0).astype(
        np.float32
    )


def make_image(seed: int, shape: tuple[int, int] = (16, 20)) -> fits.HDUList:
    """A one-HDU FITS image with ``image_array(seed)`` as pixels."""
    header = fits.Header()
    header["SEED"] = (seed, "which test image this is")
    return fits.HDUList([fits.PrimaryHDU(data=image_array(seed, shape), header=header)])


def pixels(obj: object) -> np.ndarray:
    """The image data of what ``get`` returned, copied; an HDUList is closed afterwards."""
    if isinstance(obj, fits.HDUList):
        try:
            for hdu in obj:
                if hdu.data is not None:
                    return np.array(hdu.data, copy=True)
            raise AssertionError(f"the HDUList has no HDU with data: {obj!r}")
        finally:
            obj.close()
    if isinstance(obj, fits.PrimaryHDU | fits.ImageHDU):
        return np.array(obj.data, copy=True)
    if isinstance(obj, np.ndarray):
        return np.array(obj, copy=True)
    raise AssertionError(f"expected an image (HDUList, ImageHDU or ndarray), got {type(obj)!r}")


def assert_same_image(obj: object, expected: object) -> None:
    """Same shape and the same pixel values (byte order may differ: FITS is big-endian)."""
    got, want = pixels(obj), pixels(expected)
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    np.testing.assert_array_equal(got, want)


def sha256_of(path: str | os.PathLike[str]) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _is_internal(relative: Path) -> bool:
    return relative.parts[0] == ".butler"


def postgres_registry(root: Path) -> tuple[str, str] | None:
    """(URL, schema) of a repository whose registry is in PostgreSQL, else None."""
    config = yaml.safe_load((root / "butler.yaml").read_text())
    url = config.get("registry")
    if not url or url == "sqlite":
        return None
    return str(url), str(config["schema"])


def registry_name(root: Path) -> str:
    """The key under which :func:`tree_bytes` holds the registry's content."""
    return "registry.sqlite3" if postgres_registry(root) is None else "registry (postgresql)"


def drop_registry(root: Path) -> None:
    """Lose the registry: delete registry.sqlite3*, or drop the PostgreSQL schema."""
    found = postgres_registry(root)
    if found is None:
        for registry_file in root.glob("registry.sqlite3*"):
            registry_file.unlink()
        return
    from tests.pg import drop_schema

    drop_schema(*found)


def registry_exists(root: Path) -> bool:
    found = postgres_registry(root)
    if found is None:
        return (root / "registry.sqlite3").is_file()
    from tests.pg import schema_exists

    return schema_exists(*found)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: what "byte-for-byte unchanged" compares.

    Left out, because they carry no data: ``.butler/`` (locks, staging), SQLite's
    shared-memory index (``-shm``) and an empty write-ahead log, which SQLite may create
    for a mere reader.  A non-empty ``-wal`` is kept: it holds writes.  A registry in
    PostgreSQL is included as the dump of its schema's rows, under ``registry_name``.
    """
    settle()
    result: dict[str, bytes] = {}
    found = postgres_registry(root)
    if found is not None:
        from tests.pg import dump_schema

        result[registry_name(root)] = dump_schema(*found)
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if not path.is_file() or _is_internal(relative) or path.name.endswith("-shm"):
            continue
        if path.name.endswith("-wal") and path.stat().st_size == 0:
            continue
        result[relative.as_posix()] = path.read_bytes()
    return result


def visible_digests(root: Path) -> dict[str, str]:
    """Dataset files, ``butler.yaml`` and any plain-text records, by relative path → sha256.

    Leaves out ``.butler/`` and the SQLite files (``registry.sqlite3*``): a failed
    transaction may leave a log there; the registry is compared through ``query()``.
    """
    settle()
    result: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if not path.is_file() or _is_internal(relative) or path.name.startswith("registry.sqlite3"):
            continue
        result[relative.as_posix()] = sha256_of(path)
    return result


def ref_key(ref: DatasetRef) -> tuple[object, ...]:
    """What identifies a DatasetRef's content, independent of where the repository lives."""
    data_id = tuple(sorted((str(key), value) for key, value in ref.data_id.items()))
    return (ref.dataset_type, data_id, ref.version, ref.sha256, ref.size)


def subprocess_env() -> dict[str, str]:
    """The environment for a child Python: it imports ``butler`` from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def butler_command(*args: str) -> list[str]:
    """The ``butler`` command line, run by this interpreter from this checkout."""
    return [sys.executable, "-m", "butler", *args]
