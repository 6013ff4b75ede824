"""The mount as users expect it (SPEC §8, issue 10): reasons visible without ``-f``
(``MOUNT/.butler/log``, a log file for a background daemon, ``butlerfs mount`` saying
where it is), no silent definitions (``-o autodefine``), and a root that lists the
union only, so ``find`` and ``du`` count each dataset once."""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from butler import Butler, DataRepository
from butlerfs.logbook import mount_name
from tests.butler.conftest import STANDARD_POLICY, exposure_path, make_image, settle
from tests.butlerfs.conftest import (
    Layout,
    Mount,
    MountFactory,
    butlerfs_command,
    environment,
    require_fuse,
    wait_for,
)

pytestmark = pytest.mark.mount

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (\S+) (/\S+) ([A-Z]+): (.+)$")


def refuse_raw(mount: Mount, tmp_path: Path) -> str:
    """Write where only inputs could hold it: EROFS.  Returns the path."""
    target = exposure_path("raw", 9, 1)
    mount.path(target).parent.mkdir(parents=True, exist_ok=True)
    make_image(9).writeto(tmp_path / "raw.fits")
    result = subprocess.run(
        ["cp", str(tmp_path / "raw.fits"), str(mount.path(target))], capture_output=True
    )
    assert result.returncode != 0
    return target


# -- .butler/log ------------------------------------------------------------------------------


def test_butler_log_shows_each_refusal_on_one_line(mounted: Mount, tmp_path: Path) -> None:
    log_file = mounted.path(".butler/log")
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o444
    assert log_file.read_text() == ""
    target = refuse_raw(mounted, tmp_path)
    lines = log_file.read_text().splitlines()
    assert lines, "the refusal is not in .butler/log"
    for line in lines:
        found = LINE.match(line)
        assert found is not None, line
        operation, path, name, reason = found.groups()
        assert (operation, path, name) == ("create", f"/{target}", "EROFS")
        assert "no output accepts raw" in reason and "add an output" in reason  # what to do
    # The size a stat shows is what a read returns (the file is made when read).
    assert len(log_file.read_bytes()) == log_file.stat().st_size


def test_butler_log_is_listed_but_the_namespaces_are_not(mounted: Mount) -> None:
    assert sorted(os.listdir(mounted.mountpoint)) == ["calexp", "raw", "visitInfo"]
    assert sorted(os.listdir(mounted.path(".butler"))) == ["log", "status"]
    for name in (".repos", ".versions", ".butler"):
        assert mounted.path(name).is_dir()  # reached by name


# -- the union only, once ---------------------------------------------------------------------


def test_find_and_du_count_each_dataset_once(mounted: Mount, layout: Layout) -> None:
    with layout.butler() as butler:
        refs = [ref for name in ("raw", "calexp", "visitInfo") for ref in butler.query(name)]
    files = {ref.relative_path: ref.size for ref in refs}
    directories = {str(Path(path).parent) for path in files}
    directories |= {str(Path(path).parent.parent) for path in files} - {"."}
    found = subprocess.run(
        ["find", str(mounted.mountpoint)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert len(found) == 1 + len(directories) + len(files)  # the root, then the union
    du = subprocess.run(
        ["du", "-s", "-B1", str(mounted.mountpoint)], capture_output=True, text=True, check=True
    )
    blocks = sum(-(-size // 512) * 512 for size in files.values())
    assert int(du.stdout.split()[0]) == blocks


def test_showmeta_lists_the_namespaces_in_the_root(
    layout: Layout, start_mount: MountFactory
) -> None:
    mount = start_mount(str(layout.aggregator), "-o", "showmeta")
    assert sorted(os.listdir(mount.mountpoint)) == [
        ".butler",
        ".repos",
        ".versions",
        "calexp",
        "raw",
        "visitInfo",
    ]


# -- log files --------------------------------------------------------------------------------


def test_a_background_daemon_logs_to_a_file_and_says_where(layout: Layout, tmp_path: Path) -> None:
    require_fuse()
    mountpoint = tmp_path / "background"
    mountpoint.mkdir()
    env = environment()
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    result = subprocess.run(
        butlerfs_command("mount", str(layout.aggregator), str(mountpoint)),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    expected = tmp_path / "state" / "butlerfs" / f"{mount_name(str(mountpoint))}.log"
    try:
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert f"log: {expected}" in result.stdout
        assert stat.S_IMODE(expected.stat().st_mode) == 0o600
        status = json.loads((mountpoint / ".butler/status").read_text())
        assert status["mount"]["log"] == str(expected)
        target = refuse_raw(Mount(mountpoint, expected), tmp_path)
        wait_for(lambda: target in expected.read_text(), 5.0, "the refusal in the log file")
        assert "mounted" in expected.read_text()
    finally:
        unmounted = subprocess.run(
            butlerfs_command("umount", str(mountpoint)), env=env, capture_output=True, check=False
        )
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], check=False)
    assert unmounted.returncode == 0


def test_log_option_in_the_foreground(
    layout: Layout, start_mount: MountFactory, tmp_path: Path
) -> None:
    log_file = tmp_path / "logs" / "mount.log"
    mount = start_mount(str(layout.aggregator), "-o", f"log={log_file}")
    target = refuse_raw(mount, tmp_path)
    assert target in log_file.read_text()  # besides stderr
    assert json.loads(mount.path(".butler/status").read_text())["mount"]["log"] == str(log_file)


def test_an_unwritable_log_file_is_refused_at_once(layout: Layout, tmp_path: Path) -> None:
    require_fuse()
    mountpoint = tmp_path / "unused"
    mountpoint.mkdir()
    (tmp_path / "file").write_text("not a directory")
    result = subprocess.run(
        butlerfs_command(
            "mount", str(layout.aggregator), str(mountpoint), "-o", f"log={tmp_path}/file/x.log"
        ),
        capture_output=True,
        text=True,
        env=environment(),
        check=False,
    )
    assert result.returncode == 2
    assert "cannot write the log file" in result.stderr and result.stderr.count("\n") == 1
    assert not os.path.ismount(mountpoint)


# -- no silent definitions ----------------------------------------------------------------------


@pytest.fixture
def alone(tmp_path: Path) -> Path:
    """One repository, read-write: it accepts every dataset type."""
    root = tmp_path / "alone"
    DataRepository.create(root, policy=copy.deepcopy(STANDARD_POLICY))
    with Butler(root) as butler:
        butler.put(make_image(1), "calexp", visit=1, ccd=1)
    settle()
    return root


def test_a_new_dataset_type_is_refused_with_how_to_define_it(
    alone: Path, start_mount: MountFactory, tmp_path: Path
) -> None:
    mount = start_mount(str(alone))
    target = mount.path(exposure_path("calexpp", 1, 1))  # a typo of calexp
    target.parent.mkdir(parents=True)  # a genre's template directory
    make_image(2).writeto(tmp_path / "image.fits")
    with pytest.raises(OSError) as caught:
        os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
    assert caught.value.errno == errno.EACCES
    log = mount.path(".butler/log").read_text()
    assert "calexpp is not a defined dataset type (did you mean calexp?)" in log
    command = re.search(r"butler define (\S+) calexpp --genre exposure", log)
    assert command is not None, log
    assert command.group(1) == str(alone)
    # Do what the log says; the mount takes the definition within a second.
    subprocess.run(
        [*butlerfs_command()[:1], "-m", "butler", *shlex.split(command.group(0))[1:]],
        check=True,
        env=environment(),
        capture_output=True,
    )

    def written() -> bool:
        result = subprocess.run(["cp", str(tmp_path / "image.fits"), str(target)], check=False)
        return result.returncode == 0

    wait_for(written, 2.0, "the write once calexpp is defined")
    with Butler(alone) as butler:
        assert butler.exists("calexpp", visit=1, ccd=1)


def test_autodefine_defines_by_path(alone: Path, start_mount: MountFactory) -> None:
    mount = start_mount(str(alone), "-o", "autodefine")
    target = mount.path(exposure_path("deepCoadd", 1, 1))
    target.parent.mkdir(parents=True)
    make_image(3).writeto(target)
    with Butler(alone) as butler:
        assert butler.exists("deepCoadd", visit=1, ccd=1)
    assert json.loads(mount.path(".butler/status").read_text())["mount"]["autodefine"] is True
