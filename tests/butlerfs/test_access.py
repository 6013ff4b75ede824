"""allow_other with checks on the requesting uid (SPEC §8), on a real mount.

Runs a second user's commands with ``subprocess`` as ``nobody``; needs root to do so.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.butlerfs.conftest import CALEXP_3_2, Layout, MountFactory

pytestmark = pytest.mark.mount

NOBODY = 65534


@pytest.fixture
def public_mountpoint() -> Iterator[Path]:
    """A mountpoint another user can reach (tmp_path is private to root)."""
    if os.getuid() != 0:
        pytest.skip("needs root to run commands as another user")
    directory = Path(tempfile.mkdtemp(prefix="butlerfs-access-"))
    directory.chmod(0o755)
    yield directory / "mnt"
    # Never rmtree: were the mount still there, that would delete datasets through it.
    for path in (directory / "mnt", directory):
        if path.exists() and not os.path.ismount(path):
            path.rmdir()


def as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        check=False,
    )


def test_allow_other_lets_only_owner_and_root_in(
    public_mountpoint: Path, layout: Layout, start_mount: MountFactory
) -> None:
    mount = start_mount(str(layout.aggregator), "-o", "allow_other", mountpoint=public_mountpoint)
    assert stat.S_IMODE(mount.mountpoint.stat().st_mode) == 0o700
    assert mount.path(CALEXP_3_2).read_bytes()  # root reads
    result = as_nobody("cat", str(mount.path(CALEXP_3_2)))
    assert result.returncode != 0 and "Permission denied" in result.stderr


def test_allow_users_lets_a_listed_user_read_but_not_write(
    public_mountpoint: Path, layout: Layout, start_mount: MountFactory
) -> None:
    mount = start_mount(
        str(layout.aggregator), "-o", "allow_other,allow_users=nobody", mountpoint=public_mountpoint
    )
    result = subprocess.run(
        ["cat", str(mount.path(CALEXP_3_2))], capture_output=True, user=NOBODY, check=False
    )
    assert result.returncode == 0
    assert result.stdout == mount.path(CALEXP_3_2).read_bytes()
    new = mount.path(CALEXP_3_2).with_name("calexp-v0000003-c009.fits")
    copy = as_nobody("cp", str(mount.path(CALEXP_3_2)), str(new))
    assert copy.returncode != 0 and "Permission denied" in copy.stderr


def test_an_unlisted_user_is_refused_by_the_daemon(
    public_mountpoint: Path, layout: Layout, start_mount: MountFactory
) -> None:
    mount = start_mount(
        str(layout.aggregator), "-o", "allow_other,allow_users=0", mountpoint=public_mountpoint
    )
    assert stat.S_IMODE(mount.mountpoint.stat().st_mode) == 0o755  # open to the listed...
    result = as_nobody("ls", str(mount.path("calexp")))
    assert result.returncode != 0 and "Permission denied" in result.stderr  # ...not to others
    assert f"uid {NOBODY} may not use this mount" in mount.log()
