"""An open file serves exactly one version, whole, from open to close (SPEC §8, issue 7).

A file's inode names the version it shows, so a held descriptor or memory map keeps
its version (bytes and size) while new versions land; a new open sees the newest
version within a second; ``.versions/<path>/vN`` serves exactly version N; and
readers racing several writing processes only ever read one version's bytes, whole.
New versions are put by the library in other processes, as a pipeline would.
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import json
import mmap
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from butler import Butler, DataRepository
from tests.butler.conftest import STANDARD_POLICY, settle
from tests.butlerfs.conftest import MountFactory, environment, wait_for

pytestmark = pytest.mark.mount

INFO = "visitInfo/visitInfo-v{:07d}.yaml"
LIVE_DEADLINE = 1.0  # SPEC §8: a new version shows within one second


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    DataRepository.create(root, policy=copy.deepcopy(STANDARD_POLICY))
    with Butler(root) as butler:
        for visit in (1, 2):
            butler.put({"version": 1, "pad": "a" * 5000}, "visitInfo", visit=visit)
    settle()
    return root


def put_elsewhere(root: Path, payload: dict[str, object], visit: int) -> None:
    """A put by another process (the library, as a pipeline would)."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from butler import Butler
        with Butler({str(root)!r}) as butler:
            butler.put(json.load(sys.stdin), "visitInfo", visit={visit})
        """
    )
    subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(payload).encode(),
        check=True,
        env=environment(),
    )


def versions(root: Path, visit: int) -> dict[int, str]:
    """Version number → sha256 of every version of visitInfo ``visit``."""
    with Butler(root) as butler:
        return {ref.version: ref.sha256 for ref in butler.versions("visitInfo", visit=visit)}


def version_bytes(root: Path, visit: int, version: int) -> bytes:
    with Butler(root) as butler:
        ref = butler.versions("visitInfo", visit=visit)[version - 1]
        assert ref.version == version
        return Path(ref.path).read_bytes()


# statx(2) with AT_STATX_FORCE_SYNC: the kernel asks the daemon (FUSE getattr) instead of
# answering from its attribute cache, so the daemon's answer for an inode is what is seen.
_AT_EMPTY_PATH = 0x1000
_AT_STATX_FORCE_SYNC = 0x2000
_STATX_BASIC_STATS = 0x7FF
_libc = ctypes.CDLL(None, use_errno=True)


def forced_stat(fd: int) -> tuple[int, int]:
    """(inode, size) of an open file, as the daemon answers now."""
    buffer = ctypes.create_string_buffer(256)
    flags = _AT_EMPTY_PATH | _AT_STATX_FORCE_SYNC
    if _libc.statx(fd, b"", flags, _STATX_BASIC_STATS, buffer) != 0:
        raise OSError(ctypes.get_errno(), "statx")
    inode, size = struct.unpack_from("=QQ", buffer.raw, 32)  # stx_ino, stx_size
    return inode, size


def test_held_files_and_maps_keep_their_version(
    repo: Path, start_mount: MountFactory, read_path: str
) -> None:
    mount = start_mount(str(repo), reads=read_path)
    path = mount.path(INFO.format(1))
    first = version_bytes(repo, 1, 1)
    with open(path, "rb") as held:
        inode = os.fstat(held.fileno()).st_ino
        mapped = mmap.mmap(held.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            assert bytes(mapped) == first
            assert held.read(100) == first[:100]  # partly read, then versions land
            # A longer version 2 and a shorter version 3, put by another process.
            put_elsewhere(repo, {"version": 2, "pad": "b" * 300_000}, 1)
            put_elsewhere(repo, {"version": 3}, 1)
            landed = time.monotonic()
            third = version_bytes(repo, 1, 3)
            # A new open sees the newest version within a second.
            wait_for(lambda: path.read_bytes() == third, LIVE_DEADLINE, "version 3 at the path")
            assert time.monotonic() - landed < LIVE_DEADLINE + 0.5
            assert path.stat().st_size == len(third)
            assert path.stat().st_ino != inode
            # The held descriptor still reads version 1, whole, and says its size.
            assert held.read() == first[100:]
            held.seek(0)
            assert held.read() == first
            assert os.fstat(held.fileno()).st_size == len(first)
            assert forced_stat(held.fileno()) == (inode, len(first))
            assert os.getxattr(held.fileno(), "user.butler.version") == b"1"
            # The map too: not the newer versions' pages.
            assert bytes(mapped) == first
            # A second open of the held file (through /proc) is the same version.
            again = Path(f"/proc/self/fd/{held.fileno()}").read_bytes()
            assert again == first
        finally:
            mapped.close()
    # Every version under .versions/, exactly.
    for number, digest in versions(repo, 1).items():
        data = mount.path(f".versions/{INFO.format(1)}/v{number}.yaml").read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, number


def test_a_map_keeps_its_version_while_the_path_is_overwritten_through_the_mount(
    repo: Path, start_mount: MountFactory, tmp_path: Path, read_path: str
) -> None:
    mount = start_mount(str(repo), reads=read_path)
    path = mount.path(INFO.format(2))
    first = version_bytes(repo, 2, 1)
    with open(path, "rb") as held:
        mapped = mmap.mmap(held.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            assert bytes(mapped) == first
            # cp over it: opens the dataset (the same inode) for writing, truncates, writes.
            newer = b"version: 2\n" + b"# " + b"z" * len(first) + b"\n"
            (tmp_path / "newer.yaml").write_bytes(newer)
            copied = subprocess.run(["cp", str(tmp_path / "newer.yaml"), str(path)], check=False)
            assert copied.returncode == 0
            assert path.read_bytes() == newer
            assert bytes(mapped) == first
            held.seek(0)
            assert held.read() == first
        finally:
            mapped.close()


def test_a_new_version_shows_within_a_second_each_time(
    repo: Path, start_mount: MountFactory, read_path: str
) -> None:
    mount = start_mount(str(repo), reads=read_path)
    path = mount.path(INFO.format(2))
    for number in range(2, 6):
        assert path.read_bytes()  # cached by the kernel, pages and all
        put_elsewhere(repo, {"version": number, "pad": "c" * (number * 7000)}, 2)
        expected = version_bytes(repo, 2, number)
        wait_for(lambda e=expected: path.read_bytes() == e, LIVE_DEADLINE, f"version {number}")  # type: ignore[misc]


# -- many writers, many readers --------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import random, sys
    from butler import Butler
    root, writer, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(writer)
    with Butler(root) as butler:
        for seq in range(count):
            # Sizes from 100 bytes to 300 kB: a read cut to another version's size, or a
            # mix of two, is never a version's bytes.
            pad = chr(97 + writer) * rng.randrange(100, 300_000)
            butler.put({"writer": writer, "seq": seq, "pad": pad}, "visitInfo", visit=1 + seq % 2)
    """
)

READER = textwrap.dedent(
    """
    import hashlib, json, os, random, select, sys
    mount, kind = sys.argv[1], sys.argv[2]
    paths = [os.path.join(mount, "visitInfo", f"visitInfo-v{v:07d}.yaml") for v in (1, 2)]
    rng = random.Random(kind)
    seen = []
    # Until the test closes our stdin (and at least 30 reads): read whole files, record.
    while len(seen) < 30 or not select.select([sys.stdin], [], [], 0)[0]:
        visit = rng.choice((1, 2))
        if kind == "union":
            with open(paths[visit - 1], "rb") as file:
                size = os.fstat(file.fileno()).st_size
                if rng.random() < 0.5:  # pages from the daemon, not the kernel's cache
                    os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                data = file.read()
            seen.append([visit, None, size, len(data), hashlib.sha256(data).hexdigest()])
        else:
            directory = os.path.join(mount, ".versions", "visitInfo",
                                     f"visitInfo-v{visit:07d}.yaml")
            name = rng.choice(sorted(os.listdir(directory)))
            with open(os.path.join(directory, name), "rb") as file:
                size = os.fstat(file.fileno()).st_size
                data = file.read()
            number = int(name[1:].partition(".")[0])
            seen.append([visit, number, size, len(data), hashlib.sha256(data).hexdigest()])
    json.dump(seen, sys.stdout)
    """
)


def test_readers_see_one_whole_version_while_writers_put(
    repo: Path, start_mount: MountFactory, read_path: str
) -> None:
    mount = start_mount(str(repo), reads=read_path)
    env = environment()
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", READER, str(mount.mountpoint), kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        for kind in ("union", "union", "versions")
    ]
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(repo), str(writer), "12"], env=env)
        for writer in range(3)
    ]
    try:
        for writer in writers:
            assert writer.wait(120) == 0
    finally:
        results = []
        for reader in readers:
            out, _ = reader.communicate(timeout=60)  # closing stdin stops it
            assert reader.returncode == 0
            results.append(json.loads(out))
    known = {visit: versions(repo, visit) for visit in (1, 2)}
    assert sum(len(v) for v in known.values()) == 2 + 3 * 12
    digests = {visit: set(found.values()) for visit, found in known.items()}
    union_reads = versions_reads = 0
    for seen in results:
        for visit, number, size, length, digest in seen:
            what = f"visitInfo {visit} (v{number or '?'}): open showed {size}, read {length}"
            assert size == length, f"{what}: not the size its open showed"
            if number is None:
                union_reads += 1
                assert digest in digests[visit], f"{what}: no version's bytes"
            else:
                versions_reads += 1
                assert digest == known[visit][number], f"{what}: not version {number}'s bytes"
    assert union_reads >= 60 and versions_reads >= 30, (union_reads, versions_reads)
