"""mount/install.sh and uninstall.sh, and mounting the way an admin does:
``mount -t fuse.butlerfs``, ``mount -t butlerfs``, an fstab line, ``umount``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.mount.conftest import (
    MOUNT_DIR,
    Installation,
    force_unmount,
    install,
    mount_entry,
    run,
    sha256,
    wait_mounted,
    wait_no_daemon,
    wait_unmounted,
    world_readable_directory,
)

RAW = "raw/v0903334/raw-v0903334-c001.fits"


def test_install_puts_every_piece_in_place(installation: Installation) -> None:
    prefix = installation.prefix
    python = installation.venv / "bin" / "python"
    result = run(python, "-c", "import sys, butlerfs; print(sys.base_prefix, butlerfs.__file__)")
    base, module = result.stdout.split()
    assert base == "/usr", "the venv must come from Debian's python3, which every user can run"
    assert module.startswith(f"{installation.venv}/"), "installed, not editable into the checkout"
    for name in ("butler", "butlerfs"):
        link = Path("/usr/local/bin") / name
        assert os.readlink(link) == f"{prefix}/venv/bin/{name}"
    helper = Path("/sbin/mount.fuse.butlerfs")
    assert os.access(helper, os.X_OK)
    assert f"PATH={prefix}/venv/bin:" in helper.read_text()
    assert os.readlink("/sbin/mount.butlerfs") == "mount.fuse.butlerfs"
    unit = Path("/etc/systemd/system/butlerfs@.service")
    assert unit.read_bytes() == (MOUNT_DIR / "butlerfs@.service").read_bytes()
    assert Path("/etc/butlerfs/views").is_dir()
    assert Path("/usr/local/share/doc/butlerfs/admin-guide.md").is_file()
    examples = prefix / "share/butlerfs/examples"
    assert (examples / "views/alice.yaml").is_file()
    assert (examples / "fstab.example").is_file()
    for step in ("virtual environment", "installed butlerfs", "mount helper", "butlerfs@.service"):
        assert step in installation.output


def test_install_builds_passthrough_for_root_mounts(installation: Installation) -> None:
    """--passthrough: the installed daemon can hand datasets to the kernel."""
    python = installation.venv / "bin" / "python"
    result = run(python, "-c", "import pyfuse3; print(getattr(pyfuse3, 'BUTLERFS_PATCH', 0))")
    assert result.stdout.strip() == "1", f"{result.stdout}{result.stderr}{installation.output}"


def test_installed_commands_run_for_any_user(installation: Installation) -> None:
    for command in (["butlerfs", "--version"], ["butler", "--help"]):
        result = run("runuser", "-u", "nobody", "--", f"/usr/local/bin/{command[0]}", *command[1:])
        assert result.returncode == 0, f"{command} as nobody: {result.stderr}"


def test_install_again_changes_nothing_else(installation: Installation) -> None:
    helper = Path("/sbin/mount.fuse.butlerfs").read_bytes()
    result = install(installation.prefix)
    assert result.returncode == 0, result.stderr
    assert "reusing the virtual environment" in result.stdout
    assert Path("/sbin/mount.fuse.butlerfs").read_bytes() == helper
    assert os.readlink("/usr/local/bin/butlerfs") == f"{installation.venv}/bin/butlerfs"


def test_install_refuses_a_prefix_it_did_not_make(installation: Installation) -> None:
    foreign = world_readable_directory("butlerfs-foreign-")
    (foreign / "precious").write_text("not ours")
    try:
        result = install(foreign)
        assert result.returncode != 0
        assert "was not made by this script" in result.stderr
        assert (foreign / "precious").read_text() == "not ours"
    finally:
        (foreign / "precious").unlink()
        foreign.rmdir()


def test_uninstall_removes_only_its_own(installation: Installation) -> None:
    """With another prefix, nothing of this installation is touched."""
    foreign = world_readable_directory("butlerfs-foreign-")
    try:
        result = run("bash", MOUNT_DIR / "uninstall.sh", "--prefix", foreign)
        assert result.returncode == 0, result.stderr
        assert foreign.is_dir()
        assert os.readlink("/usr/local/bin/butlerfs") == f"{installation.venv}/bin/butlerfs"
        assert "kept /usr/local/bin/butlerfs" in result.stdout
        for shared in (
            "/sbin/mount.fuse.butlerfs",
            "/sbin/mount.butlerfs",
            "/etc/systemd/system/butlerfs@.service",
            "/usr/local/share/doc/butlerfs/admin-guide.md",
            "/etc/butlerfs/views",
        ):
            assert os.path.exists(shared), f"uninstalling another prefix removed {shared}"
    finally:
        foreign.rmdir()


# -- mounting as an admin does ---------------------------------------------------------


def check_mount(mountpoint: Path, samples: Path) -> None:
    """Mounted by root through the helper: the view is there, reads are the files' bytes."""
    entry = wait_mounted(mountpoint)  # mount(8) returns once live: no wait in practice
    assert entry.source == str(samples)
    assert entry.user_id == 0
    assert {"nosuid", "nodev"} <= entry.options, "the helper mounts nosuid,nodev"
    assert {"raw", "bias", "src"} <= set(os.listdir(mountpoint))
    assert sha256(mountpoint / RAW) == sha256(samples.parent / "raw" / RAW)


def unmount(mountpoint: Path) -> None:
    result = run("umount", mountpoint)
    assert result.returncode == 0, result.stderr
    wait_unmounted(mountpoint)
    wait_no_daemon(mountpoint)


@pytest.mark.mount
@pytest.mark.parametrize("fs_type", ["fuse.butlerfs", "butlerfs"])
def test_mount_by_type(installation: Installation, samples: Path, fs_type: str) -> None:
    """``mount -t fuse.butlerfs SOURCE MNT -o ...`` returns once the mount is live."""
    base = world_readable_directory("butlerfs-mnt-")
    mountpoint = base / "a view"  # a space: the helper and mount.fuse3 must quote it
    mountpoint.mkdir()
    try:
        options = "ro,nofail,_netdev,noauto,x-systemd.automount"
        result = run("mount", "-t", fs_type, samples, mountpoint, "-o", options)
        assert result.returncode == 0, result.stderr
        # No waiting: mount(8) returned, so the mount must already answer.
        entry = mount_entry(mountpoint)
        assert entry is not None, "mount returned before the mount was live"
        assert "ro" in entry.options
        check_mount(mountpoint, samples)
        # Mounted by root with the --passthrough installation: the kernel reads the files.
        status = json.loads((mountpoint / ".butler" / "status").read_text())
        assert status["mount"]["passthrough"] == "on", status["mount"]
        unmount(mountpoint)
    finally:
        force_unmount(mountpoint)
        mountpoint.rmdir()
        base.rmdir()


@pytest.mark.mount
def test_fstab_line(installation: Installation, samples: Path) -> None:
    """``mount MNT`` with the line in fstab (here an alternative one, ``mount --fstab``)."""
    base = world_readable_directory("butlerfs-mnt-")
    mountpoint = base / "view"
    mountpoint.mkdir()
    fstab = base / "fstab"
    options = "rw,noauto,nofail,_netdev,x-systemd.requires=network-online.target"
    fstab.write_text(f"# butlerfs\n{samples}  {mountpoint}  fuse.butlerfs  {options}  0  0\n")
    try:
        result = run("mount", "--fstab", fstab, mountpoint)
        assert result.returncode == 0, result.stderr
        check_mount(mountpoint, samples)
        unmount(mountpoint)
    finally:
        force_unmount(mountpoint)
        mountpoint.rmdir()
        fstab.unlink()
        base.rmdir()


@pytest.mark.mount
def test_mount_failure_is_one_line_and_leaves_nothing(installation: Installation) -> None:
    base = world_readable_directory("butlerfs-mnt-")
    mountpoint = base / "view"
    mountpoint.mkdir()
    missing = base / "no-such-view.yaml"
    try:
        result = run("mount", "-t", "fuse.butlerfs", missing, mountpoint)
        assert result.returncode != 0
        assert str(missing) in result.stderr
        assert "Traceback" not in result.stderr
        assert mount_entry(mountpoint) is None
        wait_no_daemon(mountpoint)
    finally:
        force_unmount(mountpoint)
        mountpoint.rmdir()
        base.rmdir()


@pytest.mark.mount
def test_uninstall_refuses_while_its_daemons_serve(
    installation: Installation, samples: Path
) -> None:
    base = world_readable_directory("butlerfs-mnt-")
    mountpoint = base / "view"
    mountpoint.mkdir()
    try:
        result = run("mount", "-t", "fuse.butlerfs", samples, mountpoint, "-o", "ro")
        assert result.returncode == 0, result.stderr
        result = run("bash", MOUNT_DIR / "uninstall.sh", "--prefix", installation.prefix)
        assert result.returncode != 0
        assert "processes of this installation are running" in result.stderr
        assert os.path.lexists("/usr/local/bin/butlerfs")
        unmount(mountpoint)
    finally:
        force_unmount(mountpoint)
        mountpoint.rmdir()
        base.rmdir()
