"""ACCEPTANCE 23 (live) and 24 (unmount), and the command line: daemonizing, the fstab
form, --input/--output, --policy, SIGHUP, and one-line start-up errors."""

from __future__ import annotations

import copy
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from butler import Butler, DataRepository
from butlerfs.scratch import MEMORY_DRAFT_MOST
from tests.butler.conftest import STANDARD_POLICY, exposure_path, make_image, settle
from tests.butlerfs.conftest import (
    CALEXP_1_1,
    CALEXP_3_2,
    Layout,
    Mount,
    MountFactory,
    environment,
    require_fuse,
    run_butlerfs,
    scratch_files,
    wait_for,
)

pytestmark = pytest.mark.mount

LIVE_DEADLINE = 1.0  # SPEC §8: changes through the library show within one second


def put_in_another_process(aggregator: Path, seed: int, visit: int, ccd: int) -> None:
    script = textwrap.dedent(
        f"""
        from butler import Butler
        from tests.butler.conftest import make_image
        with Butler({str(aggregator)!r}) as butler:
            butler.put(make_image({seed}), "calexp", visit={visit}, ccd={ccd})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, env=environment())


def test_a_put_elsewhere_appears_within_a_second(mounted: Mount, layout: Layout) -> None:
    new = mounted.path(exposure_path("calexp", 3, 5))
    old = mounted.path(CALEXP_3_2)
    # Warm the kernel's caches: the directory, the entries, the attributes, the pages.
    assert sorted(os.listdir(new.parent)) == [old.name]
    old_bytes = old.read_bytes()
    old_size = old.stat().st_size
    put_in_another_process(layout.aggregator, 35, 3, 5)
    started = time.monotonic()
    wait_for(lambda: new.name in os.listdir(new.parent), LIVE_DEADLINE, "the new dataset")
    assert new.read_bytes() == (layout.out1 / exposure_path("calexp", 3, 5)).read_bytes()
    # A new version of a path the kernel has cached must show too.
    big = make_image(36, shape=(64, 64))
    script = f"""
from butler import Butler
from astropy.io import fits
import numpy as np
with Butler({str(layout.aggregator)!r}) as butler:
    butler.put(fits.HDUList([fits.PrimaryHDU(np.ones((64, 64), dtype=np.float32))]),
               "calexp", visit=3, ccd=2)
"""
    subprocess.run([sys.executable, "-c", script], check=True, env=environment())
    started = time.monotonic()
    wait_for(lambda: old.stat().st_size != old_size, LIVE_DEADLINE, "the new version's size")
    assert old.read_bytes() != old_bytes
    assert old.read_bytes() == (layout.out1 / CALEXP_3_2).read_bytes()
    assert time.monotonic() - started < LIVE_DEADLINE
    del big


def test_sigterm_unmounts_cleanly(mounted: Mount, layout: Layout) -> None:
    # Larger than a draft kept in memory: it has a scratch file.
    (mounted.path(CALEXP_3_2).parent / ".unfinished").write_bytes(bytes(MEMORY_DRAFT_MOST + 1))
    assert scratch_files(layout)  # the scratch directory exists while mounted
    mounted.terminate(signal.SIGTERM)
    assert scratch_files(layout) == []
    assert not (layout.out1 / ".butler" / "scratch" / "unfinished").exists()


def test_sigint_unmounts_cleanly(mounted: Mount, layout: Layout) -> None:
    mounted.terminate(signal.SIGINT)
    assert scratch_files(layout) == []


def test_umount_leaves_no_process_mount_or_scratch(mounted: Mount, layout: Layout) -> None:
    (mounted.path(CALEXP_3_2).parent / ".unfinished").write_bytes(bytes(MEMORY_DRAFT_MOST + 1))
    assert scratch_files(layout)
    mounted.unmount()
    assert scratch_files(layout) == []


def test_mount_daemonizes_once_the_mount_works(layout: Layout, tmp_path: Path) -> None:
    require_fuse()
    mountpoint = tmp_path / "daemonized"
    mountpoint.mkdir()
    result = run_butlerfs("mount", str(layout.aggregator), str(mountpoint))
    try:
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert os.path.ismount(mountpoint)  # at once: mount returned only when it worked
        pid = json.loads((mountpoint / ".butler/status").read_text())["mount"]["pid"]
        assert os.path.exists(f"/proc/{pid}")
        assert (mountpoint / CALEXP_3_2).is_file()
        unmounted = run_butlerfs("umount", str(mountpoint))
        assert unmounted.returncode == 0, unmounted.stderr
        assert not os.path.ismount(mountpoint)
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)
        assert scratch_files(layout) == []
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], check=False)


def _zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"


def test_fstab_form_with_mount_options(layout: Layout, start_mount: MountFactory) -> None:
    mount = start_mount(
        str(layout.aggregator), "-o", "noauto,nofail,_netdev,x-systemd.automount,ro"
    )
    with open("/proc/self/mounts") as mounts:
        line = next(line for line in mounts if f" {mount.mountpoint} " in line)
    source, _, fs_type, flags, *_ = line.split()
    assert (source, fs_type) == (str(layout.aggregator), "fuse.butlerfs")
    assert "ro" in flags.split(",")
    with pytest.raises(OSError) as caught:
        os.open(mount.path(exposure_path("calexp", 3, 8)), os.O_WRONLY | os.O_CREAT, 0o644)
    assert caught.value.errno == errno.EROFS
    assert stat.S_IMODE(mount.path(CALEXP_3_2).stat().st_mode) == 0o444
    assert stat.S_IMODE(mount.path("calexp").stat().st_mode) == 0o555


def test_a_second_mount_on_the_same_mountpoint_is_refused(mounted: Mount, layout: Layout) -> None:
    result = run_butlerfs("mount", str(layout.aggregator), str(mounted.mountpoint), "-f")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "already a butlerfs mount" in result.stderr
    assert mounted.path(CALEXP_3_2).is_file()


def test_fstab_form_as_mount_fuse_calls_it(layout: Layout, tmp_path: Path) -> None:
    """``butlerfs SOURCE MOUNTPOINT -o OPTS``, daemonizing, as mount.fuse3 runs it."""
    require_fuse()
    mountpoint = tmp_path / "fstab"
    mountpoint.mkdir()
    result = run_butlerfs(str(layout.aggregator), str(mountpoint), "-o", "rw,nosuid,nodev")
    try:
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(mountpoint)
        assert run_butlerfs("umount", str(mountpoint)).returncode == 0
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], check=False)


def test_inputs_and_outputs_on_the_command_line(
    layout: Layout, start_mount: MountFactory, tmp_path: Path
) -> None:
    fresh = tmp_path / "fresh"
    mount = start_mount(
        "--input",
        f"{layout.in2}:second",
        "--input",
        str(layout.in1),
        "--output",
        str(fresh),
        "-o",
        "autodefine",
    )
    # in2 comes first now: its calexp 1/1 wins.
    assert mount.path(CALEXP_1_1).read_bytes() == (layout.in2 / CALEXP_1_1).read_bytes()
    # (The label "second" is not checked: the library lists in2 first as a parent of the new
    # output, under its own label; reported to the butler/ owners.)
    assert {"in1", "fresh"} <= set(os.listdir(mount.path(".repos")))
    target = exposure_path("raw", 4, 1)
    mount.path(target).parent.mkdir(parents=True)
    make_image(41).writeto(mount.path(target))
    assert (fresh / target).is_file()
    # Read back through the mount: the output the mount created is one it reads from.
    assert mount.path(target).read_bytes() == (fresh / target).read_bytes()
    # A new dataset type, written by path (-o autodefine): defined from the one genre whose
    # template fits.
    coadd = exposure_path("deepCoadd", 4, 1)
    mount.path(coadd).parent.mkdir(parents=True)
    make_image(42).writeto(mount.path(coadd))
    with Butler(fresh) as butler:
        assert butler.exists("deepCoadd", visit=4, ccd=1)
    assert os.getxattr(mount.path(coadd), "user.butler.dataset_type") == b"deepCoadd"


def test_policy_on_the_command_line(layout: Layout, start_mount: MountFactory) -> None:
    mount = start_mount(str(layout.aggregator), "--policy", "on_exists=error")
    fd = os.open(mount.path(CALEXP_3_2), os.O_WRONLY | os.O_TRUNC)
    os.write(fd, mount.path(f".versions/{CALEXP_3_2}/v1.fits").read_bytes())
    with pytest.raises(OSError) as caught:
        os.close(fd)
    assert caught.value.errno == errno.EEXIST


def test_sighup_reloads_the_source(layout: Layout, start_mount: MountFactory) -> None:
    mount = start_mount(str(layout.aggregator))
    extra = layout.root / "in3"
    DataRepository.create(extra, policy=copy.deepcopy(STANDARD_POLICY))
    with Butler(extra) as butler:
        butler.put(make_image(40), "calexp", visit=40, ccd=1)
    settle()
    added = mount.path(exposure_path("calexp", 40, 1))
    assert not added.exists()
    text = layout.aggregator.read_text().replace(
        "outputs:\n", "  - {path: in3, label: in3}\noutputs:\n"
    )
    layout.aggregator.write_text(text)
    assert mount.process is not None
    mount.process.send_signal(signal.SIGHUP)
    wait_for(added.exists, 5.0, "the reload")
    assert added.read_bytes() == (extra / exposure_path("calexp", 40, 1)).read_bytes()
    assert "in3" in os.listdir(mount.path(".repos"))


def test_mountpoint_inside_a_repository_is_refused(layout: Layout) -> None:
    inside = layout.out1 / "mnt"
    inside.mkdir()
    result = run_butlerfs("mount", str(layout.aggregator), str(inside), "-f")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "inside repository out1" in result.stderr
    assert not os.path.ismount(inside)


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (["mount", "{root}/missing.yaml", "{mnt}", "-f"], 1, "neither a repository"),
        (["mount", "{aggregator}", "{root}/no-such-dir", "-f"], 1, "is not a directory"),
        (["mount", "{aggregator}", "{mnt}", "-o", "bogus", "-f"], 2, "unknown mount option"),
        (["mount", "{mnt}"], 2, "give SOURCE"),
    ],
)
def test_startup_errors_are_one_line(
    layout: Layout, tmp_path: Path, arguments: list[str], code: int, message: str
) -> None:
    mountpoint = tmp_path / "unused"
    mountpoint.mkdir()
    names = {"root": layout.root, "aggregator": layout.aggregator, "mnt": mountpoint}
    result = run_butlerfs(*(a.format(**names) for a in arguments))
    assert result.returncode == code, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert not os.path.ismount(mountpoint)


def test_help_on_every_command() -> None:
    for command in ([], ["mount"], ["umount"]):
        result = run_butlerfs(*command, "-h")
        assert result.returncode == 0
        assert "usage: butlerfs" in result.stdout


def test_console_script_is_installed() -> None:
    assert shutil.which("butlerfs", path=os.path.dirname(sys.executable)) is not None
