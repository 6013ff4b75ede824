"""Kill-safe writes (SPEC §8, issue 7): a writer killed by a signal puts nothing; a writer
that exits without closing still puts; a daemon killed under ``cp`` loses no committed
data and leaves no partial dataset; bytes that cannot begin the format's file fail at
the first ``write()``.

Processes are sequenced with pipes and polled with deadlines, never with sleeps: a
writer tells the test when its part is written (or the test watches the draft's size
through the mount), then it is killed.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from butler import Butler
from butlerfs.exits import Exit, exit_of
from tests.butler.conftest import exposure_path, make_image
from tests.butlerfs.conftest import (
    Layout,
    Mount,
    MountFactory,
    environment,
    mount_status,
    scratch_files,
    wait_for,
)

pytestmark = pytest.mark.mount

DEADLINE = 10.0


def big_image(path: Path) -> bytes:
    """A FITS image of about 4 MB: cp copies it in many writes."""
    make_image(60, shape=(1024, 1024)).writeto(path)
    return path.read_bytes()


def exists(layout: Layout, dataset_type: str, visit: int, ccd: int) -> bool:
    with layout.butler() as butler:
        return butler.exists(dataset_type, visit=visit, ccd=ccd)


def drafts_left(layout: Layout) -> list[Path]:
    return [path for path in scratch_files(layout) if path.is_file()]


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "source.fits"
    os.mkfifo(path)
    yield path


def cp_from_fifo(fifo: Path, target: Path, part: bytes) -> tuple[subprocess.Popen[bytes], int]:
    """``cp FIFO TARGET`` fed ``part``; returns once the mount holds that much of the draft
    (cp then waits for more).  The caller holds the returned write end of the FIFO."""
    cp = subprocess.Popen(["cp", str(fifo), str(target)], stderr=subprocess.PIPE)
    pipe = os.open(fifo, os.O_WRONLY)  # returns once cp has opened the FIFO to read
    os.write(pipe, part)
    wait_for(
        lambda: target.exists() and target.stat().st_size >= len(part),
        DEADLINE,
        "cp to write the first part",
    )
    return cp, pipe


def test_cp_killed_mid_file_puts_nothing(
    mounted: Mount, layout: Layout, fifo: Path, tmp_path: Path
) -> None:
    whole = big_image(tmp_path / "image.fits")
    target = mounted.path(exposure_path("calexp", 5, 1))
    target.parent.mkdir(parents=True)
    cp, pipe = cp_from_fifo(fifo, target, whole[: 256 * 1024])
    try:
        assert mount_status(mounted)["drafts"] == 1  # the draft exists while cp writes
        cp.send_signal(signal.SIGKILL)
        assert cp.wait(DEADLINE) == -signal.SIGKILL
    finally:
        os.close(pipe)
        assert cp.stderr is not None
        cp.stderr.close()
    # The kernel closed cp's file as it died: its flush is answered before cp is reaped.
    assert not target.exists()
    assert not exists(layout, "calexp", 5, 1)
    wait_for(lambda: mount_status(mounted)["drafts"] == 0, DEADLINE, "the draft dropped")
    assert not drafts_left(layout)
    assert "killed by a signal" in mounted.path(".butler/log").read_text()
    # The same path is written whole afterwards, as usual.
    (tmp_path / "again.fits").write_bytes(whole)
    result = subprocess.run(["cp", str(tmp_path / "again.fits"), str(target)], check=False)
    assert result.returncode == 0
    assert target.read_bytes() == whole


KILLED_WRITER = textwrap.dedent(
    """
    import os, sys
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, sys.stdin.buffer.read(int(sys.argv[2])))
    print("written", flush=True)
    sys.stdin.read()  # until killed
    """
)


def test_a_killed_writer_of_a_valid_prefix_puts_nothing(mounted: Mount, layout: Layout) -> None:
    """A YAML list cut at a line is valid YAML: only the kill tells it is unfinished."""
    target = mounted.path("visitInfo/visitInfo-v0000006.yaml")
    part = b"- first\n- second\n"
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(target), str(len(part))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=environment(),
    )
    assert writer.stdin is not None and writer.stdout is not None
    writer.stdin.write(part)
    writer.stdin.flush()
    assert writer.stdout.readline() == b"written\n"
    writer.send_signal(signal.SIGKILL)
    assert writer.wait(DEADLINE) == -signal.SIGKILL
    writer.stdin.close()
    writer.stdout.close()
    assert not target.exists()
    with layout.butler() as butler:
        assert not butler.exists("visitInfo", visit=6)
    wait_for(lambda: mount_status(mounted)["drafts"] == 0, DEADLINE, "the draft dropped")
    assert not drafts_left(layout)


def test_a_writer_exiting_without_close_still_puts(mounted: Mount, layout: Layout) -> None:
    target = mounted.path("visitInfo/visitInfo-v0000007.yaml")
    script = textwrap.dedent(
        f"""
        import os
        fd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"exposureTime: 7.0\\n")
        os._exit(0)  # no close: the kernel closes it, and that is a normal close
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, env=environment())
    with layout.butler() as butler:
        assert butler.get("visitInfo", visit=7) == {"exposureTime": 7.0}
    assert target.read_bytes() == b"exposureTime: 7.0\n"


def test_a_threaded_writer_exiting_without_close_still_puts(mounted: Mount, layout: Layout) -> None:
    """exit() of a multithreaded process ends its other threads with an internal SIGKILL;
    whichever thread closes the file last, that is a normal exit, not a kill."""
    for visit in (8, 9, 10):
        target = mounted.path(f"visitInfo/visitInfo-v{visit:07d}.yaml")
        script = textwrap.dedent(
            f"""
            import os, threading
            fd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"visit: {visit}\\n")
            started = threading.Barrier(5)
            for _ in range(4):
                threading.Thread(target=lambda: (started.wait(), threading.Event().wait()),
                                 daemon=True).start()
            started.wait()
            os._exit(0)
            """
        )
        subprocess.run([sys.executable, "-c", script], check=True, env=environment())
        with layout.butler() as butler:
            assert butler.get("visitInfo", visit=visit) == {"visit": visit}


def test_the_daemon_killed_under_cp_loses_nothing_committed(
    layout: Layout, start_mount: MountFactory, fifo: Path, tmp_path: Path
) -> None:
    mount = start_mount(str(layout.aggregator))
    committed = exposure_path("calexp", 5, 2)
    mount.path(committed).parent.mkdir(parents=True)
    done = big_image(tmp_path / "done.fits")
    (tmp_path / "first.fits").write_bytes(done)
    assert (
        subprocess.run(["cp", str(tmp_path / "first.fits"), str(mount.path(committed))]).returncode
        == 0
    )
    # A second cp is half-way when the daemon dies.
    target = mount.path(exposure_path("calexp", 5, 3))
    cp, pipe = cp_from_fifo(fifo, target, done[: 512 * 1024])
    assert mount.process is not None
    mount.process.send_signal(signal.SIGKILL)
    assert mount.process.wait(DEADLINE) == -signal.SIGKILL
    try:
        os.write(pipe, done[512 * 1024 :])  # cp's next write fails: the mount is gone
    except BrokenPipeError:
        pass
    finally:
        os.close(pipe)
    assert cp.wait(DEADLINE) != 0
    assert cp.stderr is not None
    assert b"Transport endpoint is not connected" in cp.stderr.read()
    cp.stderr.close()
    subprocess.run(["fusermount3", "-uz", str(mount.mountpoint)], check=True)
    # Every put that returned is there, whole, in both outputs; the interrupted one nowhere.
    for output in layout.outputs:
        with Butler(output) as alone:
            refs = alone.query("calexp", visit=5)
            assert [ref.data_id["ccd"] for ref in refs] == [2], output
            assert Path(refs[0].path).read_bytes() == done
    # The next mount removes the dead daemon's drafts; the outputs verify clean.
    again = start_mount(str(layout.aggregator), mountpoint=tmp_path / "again")
    assert again.path(committed).read_bytes() == done
    assert not again.path(exposure_path("calexp", 5, 3)).exists()
    again.unmount()
    assert drafts_left(layout) == []
    for output in layout.outputs:
        verify = subprocess.run(
            [sys.executable, "-m", "butler", "verify", str(output)],
            capture_output=True,
            text=True,
            env=environment(),
            check=False,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr


# -- the first bytes --------------------------------------------------------------------------


def test_bytes_that_cannot_begin_the_format_fail_at_the_first_write(
    mounted: Mount, layout: Layout, tmp_path: Path
) -> None:
    target = mounted.path(exposure_path("calexp", 3, 8))
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with pytest.raises(OSError) as caught:
            os.write(fd, b"this is not a FITS file")
        assert caught.value.errno == errno.EINVAL
    finally:
        os.close(fd)  # nothing was written: nothing to put, no error
    assert not exists(layout, "calexp", 3, 8)
    log = mounted.path(".butler/log").read_text()
    assert "do not begin like a fits file" in log and "EINVAL" in log
    # cp sees it at once, as "Invalid argument".
    (tmp_path / "notes.fits").write_text("plain text, named .fits\n")
    result = subprocess.run(
        ["cp", str(tmp_path / "notes.fits"), str(target)], capture_output=True, text=True
    )
    assert result.returncode != 0 and "Invalid argument" in result.stderr
    # YAML is text: NUL bytes cannot begin it.
    with pytest.raises(OSError) as caught:
        mounted.path("visitInfo/visitInfo-v0000009.yaml").write_bytes(b"\x00\x01\x02")
    assert caught.value.errno == errno.EINVAL
    # A first write shorter than the signature is checked as far as it goes.
    whole = make_image(38)
    whole.writeto(tmp_path / "split.fits")
    data = (tmp_path / "split.fits").read_bytes()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, data[:4])
    os.write(fd, data[4:])
    os.close(fd)
    assert target.read_bytes() == data


def test_exit_of_a_running_process() -> None:
    assert exit_of(os.getpid()) is Exit.RUNNING
    assert exit_of(2**22 + 12345) is Exit.UNKNOWN  # above pid_max: no such task
