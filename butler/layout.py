"""Where everything of one repository is: every name under ``REPO/`` the butler owns.

    REPO/butler.yaml                     format version, label, parents, policy
    REPO/registry.sqlite3                the index (a cache of the records)
    REPO/<template path>                 the current version of each dataset, for plain tools
    REPO/.butler/lock                    held while writing (SQLite-registered repositories)
    REPO/.butler/staging/                payloads being put; owner-<tag>.lock per writer
    REPO/.butler/journal/<txid>.json     a put or removal between prepare and settle
    REPO/.butler/records/<txid>.json     the plain-text record of every put and removal
    REPO/.butler/versions/v<N>/<path>    every committed version, under its own name
    REPO/.butler/reserve                 space kept free so a committed put can always apply
    REPO/.butler/scratch/                the mount's drafts (never read by the library)
    REPO/.butler/damaged/                registries that did not open, kept by reindex

Paths here are *relative to the repository root* (``str``): the confined file
operations (:mod:`butler.confine`) resolve them beneath the root and never
through a symbolic link.  Nothing else spells these names.
"""

from __future__ import annotations

import posixpath
import re

CONFIG = "butler.yaml"
REGISTRY = "registry.sqlite3"
INTERNAL = ".butler"

LOCK = f"{INTERNAL}/lock"
STAGING = f"{INTERNAL}/staging"
JOURNAL = f"{INTERNAL}/journal"
RECORDS = f"{INTERNAL}/records"
VERSIONS = f"{INTERNAL}/versions"
RESERVE = f"{INTERNAL}/reserve"
SCRATCH = f"{INTERNAL}/scratch"
DAMAGED = f"{INTERNAL}/damaged"  # registries reindex found damaged, kept for the admin

#: The directories ``DataRepository.create`` makes (and the opening of an older
#: repository adds when missing).
DIRECTORIES = (STAGING, JOURNAL, RECORDS, VERSIONS)

#: Names at the top of a repository that are never datasets.
RESERVED_TOP = frozenset({CONFIG, INTERNAL, REGISTRY, f"{REGISTRY}-wal", f"{REGISTRY}-shm"})

_TXID = re.compile(r"[0-9a-f]{16}-[0-9a-f]{12}")
_VERSION_DIR = re.compile(r"v([1-9][0-9]*)")


def journal(txid: str) -> str:
    return f"{JOURNAL}/{txid}.json"


def record(txid: str) -> str:
    return f"{RECORDS}/{txid}.json"


def version_file(version: int, path: str) -> str:
    """Version ``version`` of the dataset file at template path ``path``."""
    return f"{VERSIONS}/v{version}/{path}"


def staged(name: str) -> str:
    return f"{STAGING}/{name}"


def staged_name(txid: str, owner: str, index: int) -> str:
    """A staged payload: the put's txid, the writer's owner tag, the file's index."""
    return f"{txid}.{owner}.{index}"


def owner_lock(tag: str) -> str:
    return f"{STAGING}/owner-{tag}.lock"


def owner_of_staged(name: str) -> tuple[str, str] | None:
    """(txid, owner tag) of a staged file's name, or None if it is not one."""
    txid, _, rest = name.partition(".")
    owner = rest.rpartition(".")[0]
    if not _TXID.fullmatch(txid) or not owner:
        return None
    return txid, owner


def txid_of(name: str) -> str | None:
    """The txid of a journal or record file name, or None."""
    stem, extension = posixpath.splitext(name)
    return stem if extension == ".json" and _TXID.fullmatch(stem) else None


def is_txid(text: str) -> bool:
    return _TXID.fullmatch(text) is not None


def parse_version_dir(name: str) -> int | None:
    match = _VERSION_DIR.fullmatch(name)
    return int(match.group(1)) if match else None
