"""Reads of committed datasets through FUSE passthrough, and without it, on real mounts.

With passthrough (the default where it works: the patched pyfuse3, a kernel that grants
it, a daemon with CAP_SYS_ADMIN) a dataset opened for reading is read by the kernel from
its version's file: the daemon's ``read`` handler is never called, and it holds no
descriptor of the file.  Without it (``-o passthrough=off``, or a daemon without the
capability) the daemon serves every read, as before.  Both must give the library's bytes.

What the daemon counts is in ``.butler/status`` (``mount``): ``passthrough`` (``on`` or
``off: <reason>``), ``passthrough_opens``, ``backing_ids`` (registered and not yet
released), ``reads_served`` (read requests the daemon answered).
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from butler import Butler
from butlerfs import passthrough
from tests.butlerfs.conftest import (
    CALEXP_1_1,
    CALEXP_3_2,
    EXIT_DEADLINE,
    MOUNT_DEADLINE,
    RAW_1_1,
    RAW_2_1,
    VISIT_INFO_1,
    Layout,
    Mount,
    MountFactory,
    environment,
    mount_status,
    wait_for,
)

pytestmark = pytest.mark.mount

DATASETS = {  # mount path → (dataset type, data ID)
    CALEXP_1_1: ("calexp", {"visit": 1, "ccd": 1}),
    CALEXP_3_2: ("calexp", {"visit": 3, "ccd": 2}),
    RAW_1_1: ("raw", {"visit": 1, "ccd": 1}),
    RAW_2_1: ("raw", {"visit": 2, "ccd": 1}),
    VISIT_INFO_1: ("visitInfo", {"visit": 1}),
}
FITS = [path for path in DATASETS if path.endswith(".fits")]


def library_bytes(butler: Butler, path: str) -> bytes:
    """The bytes of the version the library's ``get`` reads for ``path``."""
    dataset_type, data_id = DATASETS[path]
    return Path(butler.uri(dataset_type, data_id)).read_bytes()


def read_every_way(path: Path) -> bytes:
    """The file read whole, in pieces from an offset, and through a memory map; all equal."""
    whole = path.read_bytes()
    with open(path, "rb") as file:
        file.seek(len(whole) // 3)
        pieces = file.read(1000) + file.read()
        assert pieces == whole[len(whole) // 3 :]
        if whole:
            with mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ) as mapped:
                assert mapped[:] == whole
    return whole


def descriptors_on(pid: int, file: Path) -> int:
    """How many descriptors process ``pid`` holds on ``file`` (by device and inode)."""
    wanted = os.stat(file)
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            found = os.stat(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        count += (found.st_dev, found.st_ino) == (wanted.st_dev, wanted.st_ino)
    return count


def test_bytes_are_the_librarys_through_both_read_paths(
    layout: Layout, start_mount: MountFactory, read_path: str
) -> None:
    mount = start_mount(str(layout.aggregator), "-o", "ro", reads=read_path)
    with layout.butler() as butler:
        for path in DATASETS:
            assert read_every_way(mount.path(path)) == library_bytes(butler, path), path
        for path in FITS:  # astropy maps the file (memmap=True), as pipelines do
            dataset_type, data_id = DATASETS[path]
            expected = butler.get(dataset_type, data_id)  # an HDUList
            with fits.open(mount.path(path), memmap=True) as hdus:
                assert np.array_equal(hdus[0].data, expected[0].data), path
                del hdus[0].data  # the map closes with the file
    status = mount_status(mount)
    if read_path == "passthrough":
        assert status["passthrough"] == "on"
        assert status["reads_served"] == 0, "the daemon served reads: not passed through"
        assert status["passthrough_opens"] >= 2 * len(DATASETS)
    else:
        assert status["passthrough"] == "off: mounted with -o passthrough=off"
        assert status["reads_served"] > 0
        assert status["passthrough_opens"] == status["backing_ids_registered"] == 0
    assert "FUSE passthrough: " in mount.log()


def test_a_passthrough_open_leaves_the_file_to_the_kernel(
    layout: Layout, start_mount: MountFactory, read_path: str
) -> None:
    """The daemon holds no descriptor of a file open through passthrough; it does of one
    it serves itself (which shows that the check sees them)."""
    mount = start_mount(str(layout.aggregator), reads=read_path)
    assert mount.process is not None
    daemon = mount.process.pid
    with layout.butler() as butler:
        version_file = Path(butler.uri("calexp", visit=1, ccd=1))
    with open(mount.path(CALEXP_1_1), "rb") as first, open(mount.path(CALEXP_1_1), "rb") as second:
        assert first.read(80) == second.read(80) == version_file.read_bytes()[:80]
        held = descriptors_on(daemon, version_file)
        status = mount_status(mount)
        if read_path == "passthrough":
            assert held == 0
            assert status["backing_ids"] == 1  # one per inode, shared by its two opens
        else:
            assert held == 2
            assert status["backing_ids"] == 0
    wait_for(lambda: descriptors_on(daemon, version_file) == 0, 10, "the daemon's descriptors")
    wait_for(lambda: mount_status(mount)["backing_ids"] == 0, 10, "the backing id released")


def test_backing_ids_are_released_with_the_last_open(
    layout: Layout, start_mount: MountFactory
) -> None:
    mount = start_mount(str(layout.aggregator), reads="passthrough")
    paths = [mount.path(path) for path in DATASETS]
    expected = {path: path.read_bytes() for path in paths}
    opens = len(paths)
    for cycle in range(150):
        path = paths[cycle % len(paths)]
        with open(path, "rb") as file:
            opens += 1
            if cycle % 3 == 0:  # a second open of the same inode shares its backing id
                with open(path, "rb") as again:
                    opens += 1
                    assert again.read() == expected[path]
            if cycle % 5 == 0:  # and opens of other inodes have their own
                with open(paths[(cycle + 1) % len(paths)], "rb") as other:
                    opens += 1
                    assert other.read(10) == expected[paths[(cycle + 1) % len(paths)]][:10]
            if cycle % 7 == 0:
                with mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ) as mapped:
                    assert mapped[:] == expected[path]
            file.seek(cycle)
            assert file.read(3) == expected[path][cycle : cycle + 3]
    # FUSE sends a release after close() returns: wait for the last one.
    wait_for(lambda: mount_status(mount)["backing_ids"] == 0, 10, "every backing id released")
    status = mount_status(mount)
    assert status["passthrough_opens"] == opens
    assert status["backing_ids_registered"] >= len(paths)
    assert status["reads_served"] == 0
    assert status["passthrough_fallbacks"] == 0


def test_many_opens_of_one_version_cost_the_daemon_no_descriptors(
    layout: Layout, start_mount: MountFactory
) -> None:
    """With passthrough, opens of one version share its backing id: a daemon limited to 256
    descriptors serves 1,000 of them (without, it runs out: test_errnos.py)."""
    mount = start_mount(
        str(layout.aggregator), wrapper=["prlimit", "--nofile=256:256"], reads="passthrough"
    )
    path = mount.path(CALEXP_3_2)
    expected = path.read_bytes()
    held = []
    try:
        for _ in range(1000):
            held.append(os.open(path, os.O_RDONLY))
        assert os.pread(held[-1], len(expected), 0) == expected
        assert mount_status(mount)["backing_ids"] == 1
    finally:
        for fd in held:
            os.close(fd)
    wait_for(lambda: mount_status(mount)["backing_ids"] == 0, 10, "the backing id released")


def test_writing_where_a_reader_holds_the_version_through_passthrough(
    layout: Layout, start_mount: MountFactory, tmp_path: Path
) -> None:
    """Every open of an inode open through passthrough must be one too, and a draft must
    never be: a writer opening the path is sent to the draft's own inode (ESTALE, which the
    kernel answers by looking the path up again).  The reader keeps its version."""
    mount = start_mount(str(layout.aggregator), reads="passthrough")
    path = mount.path(VISIT_INFO_1)
    with open(path, "rb") as held:
        first = held.read()
        held.seek(0)
        newer = b"exposureTime: 15.0\n"  # shorter: nothing of the old version may remain
        (tmp_path / "newer.yaml").write_bytes(newer)
        assert subprocess.run(["cp", str(tmp_path / "newer.yaml"), str(path)]).returncode == 0
        assert path.read_bytes() == newer
        assert held.read() == first
        with open(path, "r+b") as writer:  # read-write, written in place: the same
            writer.write(b"exposureTime: 16.0\n")
        assert path.read_bytes() == b"exposureTime: 16.0\n"
    # A descriptor of the held file cannot be looked up again: that reopen is refused.
    with open(path, "rb") as held:
        with pytest.raises(OSError) as caught:
            open(f"/proc/self/fd/{held.fileno()}", "wb").close()
        assert caught.value.errno == 116  # ESTALE
    status = mount_status(mount)
    assert status["reads_served"] == 0
    assert status["passthrough_fallbacks"] == 0
    # The draft made for the refused writer is dropped when nobody claims it.
    wait_for(
        lambda: path.read_bytes() == b"exposureTime: 16.0\n" and not _drafts(mount),
        30,
        "the unclaimed draft dropped",
    )


def _drafts(mount: Mount) -> list[str]:
    scratch = mount_status(mount)["scratch"]
    return os.listdir(scratch) if scratch and os.path.isdir(scratch) else []


# -- the decision, without a mount ------------------------------------------------------------


def test_without_the_patched_pyfuse3_the_daemon_serves_reads(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A stock pyfuse3 (no BUTLERFS_PATCH): passthrough is not asked for, no open is
    counted, and the reason is said once; none of the patched API is called."""
    monkeypatch.setattr(passthrough, "PATCHED", False)
    decision = passthrough.Passthrough("auto")
    assert not decision.requested and not decision.tracking
    with caplog.at_level(logging.INFO, logger="butlerfs"):
        decision.start([])
    assert not decision.on
    assert decision.state == f"off: {passthrough.NOT_PATCHED}"
    assert [r.getMessage() for r in caplog.records] == [
        f"FUSE passthrough: off: {passthrough.NOT_PATCHED}; files are served through the daemon"
    ]
    assert decision.status()["passthrough"].startswith("off: pyfuse3 ")


def test_turned_off_by_the_option() -> None:
    decision = passthrough.Passthrough("off")
    decision.start([])
    assert not decision.requested and not decision.tracking
    assert decision.state == "off: mounted with -o passthrough=off"


# -- a daemon without CAP_SYS_ADMIN -----------------------------------------------------------


class UserNamespaceMount:
    """``butlerfs mount`` as root of a new user namespace: it may mount FUSE there (in its
    own mount namespace), but has no CAP_SYS_ADMIN where the kernel checks it for backing
    files, like a per-user mount.  The mount is reached through /proc/PID/root."""

    def __init__(self, source: Path, mountpoint: Path, log: Path) -> None:
        self.mountpoint = mountpoint
        self.log_path = log
        mountpoint.mkdir()
        command = [
            "unshare", "--user", "--map-root-user", "--mount", "--propagation", "private", "--",
            sys.executable, "-m", "butlerfs", "mount", str(source), str(mountpoint), "-f",
        ]  # fmt: skip
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=environment()
            )

    def path(self, relative: str) -> Path:
        return Path(f"/proc/{self.process.pid}/root") / self.mountpoint.relative_to("/") / relative

    def mounted(self) -> bool:
        try:
            with open(f"/proc/{self.process.pid}/mounts") as mounts:
                return any(line.split()[1] == str(self.mountpoint) for line in mounts)
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def namespaced(layout: Layout, tmp_path: Path) -> Iterator[UserNamespaceMount]:
    if os.getuid() != 0 and os.environ.get("CI") != "true":
        pytest.skip("needs root to give the daemon a user namespace of its own")
    mount = UserNamespaceMount(layout.aggregator, tmp_path / "mnt-userns", tmp_path / "userns.log")
    try:
        wait_for(
            lambda: mount.mounted() or mount.process.poll() is not None,
            MOUNT_DEADLINE,
            "the daemon in a user namespace to mount",
        )
        if not mount.mounted():
            pytest.fail(f"the daemon exited with {mount.process.poll()}:\n{mount.log()}")
        yield mount
        mount.process.send_signal(signal.SIGTERM)
        assert mount.process.wait(EXIT_DEADLINE) == 0, mount.log()
    finally:
        print(f"---- daemon log ----\n{mount.log()}")
        if mount.process.poll() is None:
            mount.process.kill()
            mount.process.wait()


def test_a_daemon_without_cap_sys_admin_serves_reads_itself(
    namespaced: UserNamespaceMount, layout: Layout
) -> None:
    with layout.butler() as butler:
        for path in DATASETS:
            assert read_every_way(namespaced.path(path)) == library_bytes(butler, path), path
    found = mount_status(namespaced)
    assert found["passthrough"].startswith("off: the daemon lacks CAP_SYS_ADMIN"), found
    assert found["reads_served"] > 0
    assert found["passthrough_opens"] == found["backing_ids"] == 0
    said = [line for line in namespaced.log().splitlines() if "FUSE passthrough" in line]
    assert len(said) == 1 and "lacks CAP_SYS_ADMIN" in said[0], said
