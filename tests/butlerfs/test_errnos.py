"""Errors say why, through the mount (SPEC §8, issues 7 and 8): a full output is ENOSPC
to ``cp`` (not EIO), the daemon out of file descriptors is EMFILE, a name that is not
UTF-8 is EINVAL; each is logged with its reason, and none leaves a traceback."""

from __future__ import annotations

import copy
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from butler import Butler, DataRepository
from tests.butler.conftest import STANDARD_POLICY, exposure_path, make_image
from tests.butlerfs.conftest import CALEXP_3_2, Layout, Mount, MountFactory

pytestmark = pytest.mark.mount


def require_root() -> None:
    if os.geteuid() == 0:
        return
    if os.environ.get("CI") == "true":
        pytest.fail("these tests mount a small tmpfs and need root under CI")
    pytest.skip("needs root to mount a small tmpfs")


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs in tmp_path, unmounted at the end (lazily, if still in use)."""
    require_root()
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_second_output_is_enospc_to_cp(
    tmp_path: Path, small_filesystem: Path, start_mount: MountFactory
) -> None:
    for path in (tmp_path / "big", small_filesystem / "full"):
        DataRepository.create(path, policy=copy.deepcopy(STANDARD_POLICY))
    aggregator = tmp_path / "aggregator.yaml"
    aggregator.write_text(
        "butler: 1\n"
        "outputs:\n"
        f"  - {{path: {tmp_path / 'big'}, label: big}}\n"
        f"  - {{path: {small_filesystem / 'full'}, label: full}}\n"
    )
    mount = start_mount(str(aggregator))
    target = exposure_path("calexp", 1, 1)
    mount.path(target).parent.mkdir(parents=True)
    make_image(1, shape=(1024, 1024)).writeto(tmp_path / "image.fits")  # 4 MB
    result = subprocess.run(
        ["cp", str(tmp_path / "image.fits"), str(mount.path(target))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "No space left on device" in result.stderr, result.stderr
    # All or nothing: the output with room did not get it either.
    with Butler(aggregator) as butler:
        assert not butler.exists("calexp", visit=1, ccd=1)
    log = mount.path(".butler/log").read_text()
    assert f"/{target} ENOSPC" in log, log
    mount.unmount()


def test_a_name_that_is_not_utf8_is_einval(mounted: Mount, layout: Layout) -> None:
    directory = os.fsencode(mounted.path(CALEXP_3_2).parent)
    bad = directory + b"/calexp-\xff\xfe.fits"
    with pytest.raises(OSError) as caught:
        os.open(bad, os.O_WRONLY | os.O_CREAT, 0o644)
    assert caught.value.errno == errno.EINVAL
    with pytest.raises(OSError) as caught:
        os.stat(bad)
    assert caught.value.errno == errno.EINVAL
    with pytest.raises(OSError) as caught:
        os.mkdir(directory + b"/\xff")
    assert caught.value.errno == errno.EINVAL
    log = mounted.path(".butler/log").read_text()
    assert "not valid UTF-8" in log and "EINVAL" in log
    # (no traceback: the fixture fails the test on any ERROR or Traceback in the log)


def test_the_daemon_out_of_descriptors_is_emfile(
    layout: Layout, start_mount: MountFactory, tmp_path: Path
) -> None:
    """Each open dataset the daemon serves holds a descriptor in it: with its limit reached,
    an open is EMFILE, and so is a close whose commit needs one (not "Invalid argument").
    (With passthrough the opens of one version share a backing id and hold no descriptor:
    tests/butlerfs/test_passthrough.py.)"""
    if shutil.which("prlimit") is None:
        pytest.fail("prlimit (util-linux) is needed to start the daemon with a low limit")
    mount = start_mount(
        str(layout.aggregator), "-o", "passthrough=off", wrapper=["prlimit", "--nofile=256:256"]
    )
    data = (layout.out1 / CALEXP_3_2).read_bytes()
    target = mount.path(exposure_path("calexp", 3, 6))
    writing = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(writing, data)
    held: list[int] = []
    try:
        with pytest.raises(OSError) as caught:
            for _ in range(1000):
                held.append(os.open(mount.path(CALEXP_3_2), os.O_RDONLY))
        assert caught.value.errno == errno.EMFILE
        with pytest.raises(OSError) as caught:
            os.close(writing)
        assert caught.value.errno == errno.EMFILE
    finally:
        for fd in held:
            os.close(fd)
    log = mount.path(".butler/log").read_text()
    assert "EMFILE" in log
    assert "EINVAL" not in log
    # With descriptors free again, the same file is put.
    (tmp_path / "image.fits").write_bytes(data)
    assert subprocess.run(["cp", str(tmp_path / "image.fits"), str(target)]).returncode == 0
    assert target.read_bytes() == data
