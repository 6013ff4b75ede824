"""Per-user views, with real users: a view mounted by a user is that user's alone; the user
writes to their own output and never to the shared inputs (SPEC §8, docs/admin-guide.md).

The layout: ``shared/raw`` and ``shared/calib`` belong to root and are read-only to
everyone else; the owner's output ``owner/work`` is created by the owner's daemon at
the first mount and accepts only calexp.  The owner mounts with the installed
``/usr/local/bin/butlerfs`` (``runuser``), as a user would.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.mount.conftest import (
    PROJECT_ROOT,
    Installation,
    MountEntry,
    User,
    build_shared,
    force_unmount,
    mount_entry,
    run,
    sha256,
    wait_mounted,
    wait_no_daemon,
    wait_unmounted,
    world_readable_directory,
    write_view,
)

pytestmark = pytest.mark.mount

RAW = "raw/v0000001/raw-v0000001-c000.fits"
CALEXP = "calexp/v0000001/calexp-v0000001-c000.fits"


@dataclass(frozen=True)
class World:
    base: Path
    shared: Path
    owner: User
    other: User
    view: Path
    output: Path
    mountpoint: Path

    def new_mountpoint(self, name: str) -> Path:
        """A directory the owner may mount on, in a directory everyone may enter."""
        path = self.base / name
        path.mkdir()
        os.chown(path, self.owner.uid, self.owner.gid)
        return path


def tree_digest(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``root``: (mode, owner, sha256).  SQLite's -wal and -shm are left
    out: readers may touch them."""
    digest = {}
    for path in sorted(root.rglob("*")):
        if path.name.endswith(("-wal", "-shm")):
            continue
        info = path.lstat()
        content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        digest[str(path.relative_to(root))] = (info.st_mode, info.st_uid, content)
    return digest


@pytest.fixture(scope="module")
def world(
    installation: Installation, users: tuple[User, User], fuse_for_users: None
) -> Iterator[World]:
    owner, other = users
    base = world_readable_directory("butlerfs-users-")
    try:
        shared = base / "shared"
        build_shared(shared)
        home = base / "owner"
        home.mkdir(mode=0o700)
        os.chown(home, owner.uid, owner.gid)
        views = base / "views"
        views.mkdir(mode=0o755)
        view = views / "owner.yaml"
        write_view(view, shared, home / "work")
        mountpoint = base / "mnt"
        mountpoint.mkdir(mode=0o755)
        os.chown(mountpoint, owner.uid, owner.gid)
        yield World(base, shared, owner, other, view, home / "work", mountpoint)
    finally:
        for path in base.iterdir():
            force_unmount(path)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_before(world: World) -> dict[str, tuple[int, int, str]]:
    return tree_digest(world.shared)


@contextlib.contextmanager
def mounted_as(user: User, view: Path, mountpoint: Path, *options: str) -> Iterator[MountEntry]:
    """``butlerfs mount VIEW MNT [-o ...]`` as ``user``; ``butlerfs umount`` after."""
    extra = ["-o", ",".join(options)] if options else []
    result = user.run("/usr/local/bin/butlerfs", "mount", view, mountpoint, *extra)
    try:
        assert result.returncode == 0, f"mount as {user.name} failed: {result.stderr}"
        # The command returns only once the mount is live: no waiting.
        entry = mount_entry(mountpoint)
        assert entry is not None, "butlerfs mount returned before the mount was live"
        yield entry
        result = user.run("/usr/local/bin/butlerfs", "umount", mountpoint)
        assert result.returncode == 0, f"umount as {user.name} failed: {result.stderr}"
        wait_unmounted(mountpoint)
        wait_no_daemon(mountpoint)
    finally:
        force_unmount(mountpoint)


@pytest.fixture(scope="module")
def owner_mount(
    world: World, shared_before: dict[str, tuple[int, int, str]]
) -> Iterator[MountEntry]:
    with mounted_as(world.owner, world.view, world.mountpoint) as entry:
        yield entry


# -- the default: the mounting user alone ------------------------------------------------


def test_the_mount_belongs_to_the_user(world: World, owner_mount: MountEntry) -> None:
    assert owner_mount.user_id == world.owner.uid
    assert "default_permissions" in owner_mount.options
    assert "allow_other" not in owner_mount.options


def test_the_user_lists_and_reads_shared_inputs(world: World, owner_mount: MountEntry) -> None:
    owner = world.owner
    assert owner.attempt("list", world.mountpoint) == "ok"
    assert owner.attempt("read", world.mountpoint / RAW) == sha256(world.shared / "raw" / RAW)


def test_a_write_lands_in_the_users_own_output(world: World, owner_mount: MountEntry) -> None:
    owner, target = world.owner, world.mountpoint / CALEXP
    assert owner.attempt("makedirs", target.parent) == "ok"
    assert owner.attempt("copy", world.shared / "raw" / RAW, target) == "ok"
    stored = world.output / CALEXP
    assert sha256(stored) == sha256(world.shared / "raw" / RAW)
    assert stored.stat().st_uid == owner.uid
    assert owner.attempt("read", target) == sha256(stored)


def test_a_type_only_the_shared_input_holds_is_read_only(
    world: World, owner_mount: MountEntry
) -> None:
    owner, source = world.owner, world.shared / "raw" / RAW
    union = world.mountpoint / "raw/v0000001/raw-v0000001-c005.fits"
    alone = world.mountpoint / ".repos/raw/raw/v0000001/raw-v0000001-c006.fits"
    assert owner.attempt("copy", source, union) == "EROFS"
    # .repos/raw is shown read-only (0555): with default_permissions the kernel refuses
    # the create itself, with the errno of any read-only directory.
    assert owner.attempt("copy", source, alone) == "EACCES"


def test_the_shared_input_is_unchanged(
    world: World, owner_mount: MountEntry, shared_before: dict[str, tuple[int, int, str]]
) -> None:
    """After reads, a write to the user's output and refused writes: byte for byte the same."""
    owner = world.owner
    owner.attempt("copy", world.shared / "raw" / RAW, world.mountpoint / RAW)
    owner.attempt("makedirs", world.mountpoint / ".repos/raw/calexp/v0000002")
    assert tree_digest(world.shared) == shared_before


def test_another_user_cannot_even_look(world: World, owner_mount: MountEntry) -> None:
    other = world.other
    assert other.attempt("stat", world.mountpoint) == "EACCES"
    assert other.attempt("list", world.mountpoint) == "EACCES"
    assert other.attempt("read", world.mountpoint / RAW) == "EACCES"
    assert other.attempt("copy", world.shared / "raw" / RAW, world.mountpoint / CALEXP) == "EACCES"


def test_root_is_refused_too(world: World, owner_mount: MountEntry) -> None:
    """FUSE's rule without allow_other: nobody but the mounting user, not even root."""
    with pytest.raises(PermissionError):
        os.stat(world.mountpoint)


def test_an_fstab_line_with_setuid_mounts_as_the_user(world: World) -> None:
    """``setuid=USER`` (mount.fuse3): root mounts at boot, the daemon runs as the user."""
    mountpoint = world.new_mountpoint("mnt-fstab")
    fstab = world.base / "fstab"
    fstab.write_text(
        f"{world.view} {mountpoint} fuse.butlerfs setuid={world.owner.name},nofail,_netdev 0 0\n"
    )
    try:
        result = run("mount", "--fstab", fstab, mountpoint)
        assert result.returncode == 0, result.stderr
        entry = wait_mounted(mountpoint)
        assert entry.user_id == world.owner.uid
        assert world.owner.attempt("read", mountpoint / RAW) == sha256(world.shared / "raw" / RAW)
        assert world.other.attempt("stat", mountpoint) == "EACCES"
        result = run("umount", mountpoint)
        assert result.returncode == 0, result.stderr
        wait_unmounted(mountpoint)
        wait_no_daemon(mountpoint)
    finally:
        force_unmount(mountpoint)


# -- allow_other ------------------------------------------------------------------------


def test_allow_other_needs_user_allow_other(world: World, no_user_allow_other: None) -> None:
    mountpoint = world.new_mountpoint("mnt-refused")
    try:
        result = world.owner.run(
            "/usr/local/bin/butlerfs", "mount", world.view, mountpoint, "-o", "allow_other"
        )
        assert result.returncode != 0
        assert "user_allow_other" in result.stderr
        assert mount_entry(mountpoint) is None
        wait_no_daemon(mountpoint)
    finally:
        force_unmount(mountpoint)


def test_allow_other_lets_root_in_and_keeps_writes_the_owners(
    world: World, user_allow_other: None
) -> None:
    mountpoint = world.new_mountpoint("mnt-allow-other")
    with mounted_as(world.owner, world.view, mountpoint, "allow_other") as entry:
        assert {"allow_other", "default_permissions"} <= entry.options
        assert sha256(mountpoint / RAW) == sha256(world.shared / "raw" / RAW)  # root reads
        # default_permissions: the kernel checks the modes the daemon reports, and every
        # directory belongs to the owner, so no one else can create anything in it.
        new = mountpoint / "calexp/v0000001/calexp-v0000001-c001.fits"
        assert world.other.attempt("copy", world.shared / "raw" / RAW, new) == "EACCES"


def test_allow_other_still_refuses_unlisted_users(world: World, user_allow_other: None) -> None:
    mountpoint = world.new_mountpoint("mnt-uid-check")
    with mounted_as(world.owner, world.view, mountpoint, "allow_other"):
        assert world.other.attempt("stat", mountpoint / "raw") == "EACCES"
        assert world.other.attempt("read", mountpoint / RAW) == "EACCES"


def test_allow_users_lets_a_listed_user_read_but_not_write(
    world: World, user_allow_other: None
) -> None:
    mountpoint = world.new_mountpoint("mnt-allow-users")
    options = ("allow_other", f"allow_users={world.other.name}")
    with mounted_as(world.owner, world.view, mountpoint, *options):
        other = world.other
        assert other.attempt("read", mountpoint / RAW) == sha256(world.shared / "raw" / RAW)
        new = mountpoint / "calexp/v0000001/calexp-v0000001-c001.fits"
        assert other.attempt("copy", world.shared / "raw" / RAW, new) == "EACCES"


# -- what waits on the library ----------------------------------------------------------


def test_a_shared_input_without_a_live_writer_is_readable(world: World) -> None:
    """The everyday case: nobody else has the shared registries open."""
    fresh = world.base / "fresh"
    build_shared(fresh)
    view = world.base / "views" / "fresh.yaml"
    write_view(view, fresh, world.base / "owner" / "fresh-work")
    mountpoint = world.new_mountpoint("mnt-fresh")
    with mounted_as(world.owner, view, mountpoint):
        assert world.owner.attempt("read", mountpoint / RAW) == sha256(fresh / "raw" / RAW)


# An admin's process that has put into a repository and is still running.
_WRITER = """
import sys
import numpy as np
from butler import Butler
butler = Butler(sys.argv[1])
butler.put(np.zeros((4, 4), dtype=np.float32), "bias", ccd=9)
print("put", flush=True)
sys.stdin.read()
"""


def test_a_shared_input_being_written_can_still_be_read(world: World) -> None:
    busy = world.base / "busy"
    build_shared(busy)
    view = world.base / "views" / "busy.yaml"
    write_view(view, busy, world.base / "owner" / "busy-work")
    mountpoint = world.new_mountpoint("mnt-busy")
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    command = [sys.executable, "-c", _WRITER, str(busy / "calib")]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    ) as writer:
        assert writer.stdout is not None and writer.stdin is not None
        try:
            assert writer.stdout.readline() == b"put\n"
            with mounted_as(world.owner, view, mountpoint):
                assert world.owner.attempt("read", mountpoint / RAW) == sha256(busy / "raw" / RAW)
        finally:
            writer.stdin.close()


# -- a link planted by another user (issue 8, item 1) --------------------------------------


def test_a_link_planted_in_a_users_own_input_never_reads_anothers_file(
    world: World, user_allow_other: None
) -> None:
    """The other user owns an input of the owner's view and plants a link where a
    dataset's version should be, pointing at a 0600 file of the owner's.  The owner's
    daemon can read that file; it must never do so on the other user's behalf (nor on
    the owner's): the link is refused, and the secret never comes out."""
    from butler import Butler, DataRepository

    theirs = world.base / "theirs"
    DataRepository.create(theirs, label="theirs", policy=_policy_of(world.shared / "raw")).close()
    with Butler(theirs) as butler:
        butler.ingest(world.shared / "raw" / RAW, "raw", visit=7, ccd=0)
    for path in [theirs, *theirs.rglob("*")]:
        os.lchown(path, world.other.uid, world.other.gid)
    secret = world.base / "owner" / "secret.fits"
    secret.write_bytes(b"SIMPLE  = the owner's secret")
    os.chown(secret, world.owner.uid, world.owner.gid)
    secret.chmod(0o600)
    planted = theirs / ".butler" / "versions" / "v1" / "raw" / "v0000007" / "raw-v0000007-c000.fits"
    # As the other user, in their own repository: replace the version's file by a link.
    done = world.other.run("/bin/sh", "-c", f"rm -f {planted} && ln -s {secret} {planted}")
    assert done.returncode == 0, done.stderr
    view = world.base / "views" / "with-theirs.yaml"
    view.write_text(
        "butler: 1\n"
        f"inputs: [{{path: {theirs}, label: theirs}}, {{path: {world.shared}/raw, label: raw}}]\n"
    )
    view.chmod(0o644)
    mountpoint = world.new_mountpoint("mnt-planted")
    options = ("allow_other", f"allow_users={world.other.name}")
    with mounted_as(world.owner, view, mountpoint, *options):
        path = mountpoint / "raw" / "v0000007" / "raw-v0000007-c000.fits"
        for user in (world.other, world.owner):
            answer = user.attempt("read", path)
            assert answer in ("ELOOP", "EIO", "EACCES", "ENOENT"), f"{user.name} read {answer}"
            assert answer != hashlib.sha256(secret.read_bytes()).hexdigest()
        log = (mountpoint / ".butler" / "log").read_text()
        assert "link" in log, log


def _policy_of(repo: Path) -> dict[str, object]:
    from butler import DataRepository

    policy = DataRepository(repo).policy.raw
    return dict(policy)
