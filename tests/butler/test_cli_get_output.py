"""``butler get -o PATH`` replaces only a regular file; it writes into FIFOs, character
devices and stdout, and refuses directories.  Every special file here is made in tmp_path
(never the machine's own /dev/null)."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import tty
from pathlib import Path

import pytest

from butler import Butler
from tests.butler.conftest import MakeRepo, butler_command, exposure_path, subprocess_env
from tests.butler.test_cli import assert_one_line_error, butler, butler_json, fits_file, flip_byte


@pytest.fixture
def stored(tmp_path: Path, make_repo: MakeRepo) -> tuple[Path, bytes]:
    """Repository A holding calexp visit=1 ccd=1; the bytes of that dataset."""
    repo = make_repo("A")
    image = fits_file(tmp_path / "in" / "image.fits", 7)
    with Butler(repo) as library:
        library.ingest(image, "calexp", visit=1, ccd=1)
    return repo, image.read_bytes()


def get(repo: Path, output: str | Path, status: int = 0) -> subprocess.CompletedProcess[str]:
    return butler("get", repo, "calexp", "visit=1", "ccd=1", "-o", output, status=status)


def test_a_new_file(tmp_path: Path, stored: tuple[Path, bytes]) -> None:
    repo, data = stored
    out = tmp_path / "out.fits"
    done = get(repo, out)
    assert out.read_bytes() == data
    assert done.stdout.startswith(f"wrote {out}: calexp visit=1 ccd=1 version 1 from A")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A", "in", "out.fits"]  # no temporary


def test_a_regular_file_is_replaced_keeping_mode_and_owner(
    tmp_path: Path, stored: tuple[Path, bytes]
) -> None:
    repo, data = stored
    out = tmp_path / "out.fits"
    out.write_bytes(b"old contents")
    out.chmod(0o600)
    owner = (os.getuid() or 1234, os.getgid() or 1234)  # as root, someone else's file
    if os.geteuid() == 0:
        os.chown(out, *owner)
    get(repo, out)
    assert out.read_bytes() == data
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert (out.stat().st_uid, out.stat().st_gid) == owner


def test_through_a_symbolic_link_its_target_is_replaced(
    tmp_path: Path, stored: tuple[Path, bytes]
) -> None:
    repo, data = stored
    target = tmp_path / "real.fits"
    target.write_bytes(b"old")
    link = tmp_path / "link.fits"
    link.symlink_to(target)
    get(repo, link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == data


@pytest.mark.parametrize("through_link", [False, True])
def test_a_directory_is_refused(
    tmp_path: Path, stored: tuple[Path, bytes], through_link: bool
) -> None:
    repo, _ = stored
    directory = tmp_path / "dir"
    directory.mkdir()
    output = directory
    if through_link:
        output = tmp_path / "dirlink"
        output.symlink_to(directory)
    done = get(repo, output, status=1)
    assert_one_line_error(
        done, f"-o {output} is a directory", exposure_path("calexp", 1, 1).split("/")[-1]
    )
    assert list(directory.iterdir()) == []
    assert output.is_symlink() == through_link


def test_a_dangling_link_is_refused(tmp_path: Path, stored: tuple[Path, bytes]) -> None:
    repo, _ = stored
    link = tmp_path / "dangling.fits"
    link.symlink_to(tmp_path / "nowhere" / "x.fits")
    assert_one_line_error(get(repo, link, status=1), "symbolic link", "does not exist")
    assert link.is_symlink()


def test_a_fifo_is_written_into_not_replaced(tmp_path: Path, stored: tuple[Path, bytes]) -> None:
    repo, data = stored
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = tmp_path / "received"
    with received.open("wb") as sink:
        reader = subprocess.Popen(["cat", str(fifo)], stdout=sink)
        try:
            done = get(repo, fifo)
        finally:
            try:  # cat ends when butler closes the FIFO; blocked, it never opened it
                reader.wait(timeout=10)
            except subprocess.TimeoutExpired:
                reader.kill()
                reader.wait()
    assert reader.returncode == 0
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert received.read_bytes() == data
    assert done.stdout.startswith(f"wrote {fifo}: calexp")


def test_nothing_reaches_a_fifo_from_a_corrupt_file(
    tmp_path: Path, stored: tuple[Path, bytes]
) -> None:
    repo, _ = stored
    flip_byte(repo / exposure_path("calexp", 1, 1))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    # A reader that never blocks: if butler opened the FIFO and wrote, it would see bytes.
    descriptor = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        done = get(repo, fifo, status=1)
        assert os.read(descriptor, 65536) == b""
    finally:
        os.close(descriptor)
    assert_one_line_error(done, "corrupt", "nothing was written")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_a_character_device_node_is_written_into_not_replaced(
    tmp_path: Path, stored: tuple[Path, bytes]
) -> None:
    """A node of the null device (1:3) made in tmp_path; as root only root can make one, so
    without root the test uses a terminal's device, which any user owns."""
    repo, _ = stored
    if os.geteuid() == 0:
        device = tmp_path / "null"
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        try:
            get(repo, device)
            assert stat.S_ISCHR(device.lstat().st_mode)
            assert device.lstat().st_rdev == os.makedev(1, 3)
        finally:
            device.unlink()
    else:
        test_a_terminal_receives_the_bytes(tmp_path, stored)


def test_a_terminal_receives_the_bytes(tmp_path: Path, stored: tuple[Path, bytes]) -> None:
    """A pseudo-terminal's device (/dev/pts/N) is a character device: written into."""
    repo, data = stored
    controller, terminal = os.openpty()
    try:
        tty.setraw(terminal)  # no newline translation: the bytes arrive as written
        name = os.ttyname(terminal)
        received = bytearray()

        def drain() -> None:
            while len(received) < len(data):
                received.extend(os.read(controller, 65536))

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        get(repo, name)
        reader.join(timeout=60)
        assert bytes(received) == data
        assert stat.S_ISCHR(os.stat(name).st_mode)
    finally:
        os.close(terminal)
        os.close(controller)


@pytest.mark.parametrize("output", ["-", "/dev/stdout"])
def test_stdout_through_a_pipe(stored: tuple[Path, bytes], output: str) -> None:
    repo, data = stored
    done = subprocess.run(
        butler_command("get", str(repo), "calexp", "visit=1", "ccd=1", "-o", output),
        env=subprocess_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == data  # the bytes alone: no "wrote ..." line
    assert done.stderr == b""


def test_json_and_stdout_do_not_mix(stored: tuple[Path, bytes]) -> None:
    repo, _ = stored
    done = butler(
        "get", repo, "calexp", "visit=1", "ccd=1", "-o", "/dev/stdout", "--json", status=2
    )
    assert "both write to stdout" in done.stderr


def test_json_describes_the_copy(tmp_path: Path, stored: tuple[Path, bytes]) -> None:
    repo, data = stored
    out = tmp_path / "out.fits"
    described = butler_json("get", repo, "calexp", "visit=1", "ccd=1", "-o", out)
    assert described["data_id"] == {"visit": 1, "ccd": 1} and described["size"] == len(data)
