"""The ``user.butler.*`` extended attributes of a dataset file (SPEC §8).

All but ``provenance`` come from the DatasetRef the lookup already has;
``provenance`` reads the repository's record, so it is computed only when asked.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Awaitable, Callable

from butler import DatasetRef

PREFIX = b"user.butler."
NAMES = tuple(
    PREFIX + name
    for name in (b"dataset_type", b"data_id", b"repository", b"version", b"sha256", b"provenance")
)


#: For the one test every getxattr makes first: ``ls -l`` asks ``security.selinux`` and
#: ``system.posix_acl_access`` of every file it lists (butlerfs.operations answers those).
OURS = frozenset(NAMES)


async def value(
    name: bytes, ref: DatasetRef, provenance: Callable[[DatasetRef], Awaitable[dict[str, object]]]
) -> bytes:
    if name == PREFIX + b"provenance":
        return json.dumps(await provenance(ref), sort_keys=True, default=str).encode()
    plain: dict[bytes, str] = {
        PREFIX + b"dataset_type": ref.dataset_type,
        PREFIX + b"repository": ref.repository,
        PREFIX + b"version": str(ref.version),
        PREFIX + b"sha256": ref.sha256,
    }
    if name == PREFIX + b"data_id":
        return json.dumps(dict(ref.data_id)).encode()
    if name in plain:
        return plain[name].encode()
    raise OSError(errno.ENODATA, f"no extended attribute {name!r}")
