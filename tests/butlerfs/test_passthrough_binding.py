"""The patched pyfuse3 (tools/build-passthrough.sh, docs/passthrough.md) on real mounts.

Each test mounts a one-file read-only file system written below (``DAEMON``), run
as a subprocess with the venv's Python. Its ``open`` registers the backing file
with ``pyfuse3.passthrough_open`` and returns ``FileInfo(backing_id=...)``; it
counts every ``read`` call, every backing id it registers and releases, and every
flush with the closing process's ``/proc/<pid>/stat``, in a JSON file that the
tests poll. A passthrough read is one that the kernel served without calling
``read``: the count staying at zero is the proof.

Needs the patched build (``pyfuse3.BUTLERFS_PATCH``) and root (passthrough needs
CAP_SYS_ADMIN; the non-root case runs the daemon as ``nobody``). Outside CI a
missing piece skips; under CI=true it fails.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyfuse3
import pytest

from tests.butlerfs.conftest import require_fuse, wait_for

pytestmark = pytest.mark.mount

NOBODY = 65534
DEADLINE = 20.0
PF_EXITING = 0x4  # include/linux/sched.h: the task is exiting (flags, field 9 of /proc/PID/stat)
IN_CI = os.environ.get("CI") == "true"

DAEMON = r"""
import errno, json, os, signal, stat, sys

import pyfuse3
import trio

FILE_INODE = pyfuse3.ROOT_INODE + 1
NAME = b"data.bin"


def proc_stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError as e:
        return {"error": e.errno}
    fields = text[text.rindex(")") + 2 :].split()
    return {"state": fields[0], "flags": int(fields[6])}


class OneFile(pyfuse3.Operations):
    flush_with_context = True

    def __init__(self, backing, stats_path, mode):
        super().__init__()
        self.enable_passthrough = mode in ("passthrough", "writeback")
        self.enable_writeback_cache = mode == "writeback"
        self.backing = backing
        self.size = os.stat(backing).st_size
        self.stats_path = stats_path
        self.next_fh = 1
        self.read_fds = {}  # fh -> fd, for opens served through read()
        self.passthrough_fhs = set()
        self.backing_id = 0  # the inode's backing id while passthrough opens use it
        self.stats = {
            "granted": None, "opens": 0, "passthrough_opens": 0, "open_errors": [],
            "reads": 0, "releases": 0, "ids_opened": [], "ids_closed": [],
            "ids_unknown_after_close": 0, "live_ids": 0, "flushes": [], "exited": False,
            "unmounted_itself": None,
        }

    def save(self):
        self.stats["live_ids"] = 1 if self.backing_id else 0
        tmp = self.stats_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.stats, f)
        os.replace(tmp, self.stats_path)

    def init(self):
        self.stats["granted"] = pyfuse3.passthrough_enabled()
        self.save()

    async def getattr(self, inode, ctx=None):
        entry = pyfuse3.EntryAttributes()
        if inode == pyfuse3.ROOT_INODE:
            entry.st_mode = stat.S_IFDIR | 0o755
            entry.st_nlink = 2
        elif inode == FILE_INODE:
            entry.st_mode = stat.S_IFREG | 0o444
            entry.st_nlink = 1
            entry.st_size = self.size
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        entry.st_ino = inode
        entry.st_uid, entry.st_gid = os.getuid(), os.getgid()
        entry.st_blksize = 4096
        entry.st_blocks = (entry.st_size + 511) // 512
        entry.entry_timeout = entry.attr_timeout = 1
        return entry

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode != pyfuse3.ROOT_INODE or name != NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(FILE_INODE)

    async def opendir(self, inode, ctx):
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh, start_id, token):
        if start_id == 0:
            pyfuse3.readdir_reply(token, NAME, await self.getattr(FILE_INODE), 1)

    async def releasedir(self, fh):
        pass

    async def open(self, inode, flags, ctx):
        if inode != FILE_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        fh = self.next_fh
        self.next_fh += 1
        self.stats["opens"] += 1
        try:
            if pyfuse3.passthrough_enabled():
                if not self.backing_id:  # one backing id per inode, shared by its opens
                    fd = os.open(self.backing, os.O_RDONLY)
                    try:
                        self.backing_id = pyfuse3.passthrough_open(fd)
                    finally:
                        os.close(fd)  # the kernel keeps its own reference
                    self.stats["ids_opened"].append(self.backing_id)
                self.passthrough_fhs.add(fh)
                self.stats["passthrough_opens"] += 1
                return pyfuse3.FileInfo(fh=fh, backing_id=self.backing_id)
        except OSError as e:
            self.stats["open_errors"].append(e.errno)  # served through read() below
        finally:
            self.save()
        self.read_fds[fh] = os.open(self.backing, os.O_RDONLY)
        return pyfuse3.FileInfo(fh=fh, keep_cache=False)

    async def read(self, fh, off, size):
        self.stats["reads"] += 1
        self.save()
        return os.pread(self.read_fds[fh], size, off)

    async def flush(self, fh, ctx=None):
        self.stats["flushes"].append({"fh": fh, "pid": ctx.pid, "uid": ctx.uid,
                                      "stat": proc_stat(ctx.pid)})
        self.save()

    async def release(self, fh):
        self.stats["releases"] += 1
        if fh in self.passthrough_fhs:
            self.passthrough_fhs.remove(fh)
            if not self.passthrough_fhs:
                backing_id, self.backing_id = self.backing_id, 0
                pyfuse3.passthrough_close(backing_id)
                self.stats["ids_closed"].append(backing_id)
                try:  # the kernel must no longer know the id
                    pyfuse3.passthrough_close(backing_id)
                except OSError as e:
                    if e.errno == errno.ENOENT:
                        self.stats["ids_unknown_after_close"] += 1
        else:
            os.close(self.read_fds.pop(fh))
        self.save()


def mounted(mountpoint):
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == mountpoint for line in mounts)


async def serve(terminated):
    async def on_sigterm():
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                terminated.append(True)
                pyfuse3.terminate()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_sigterm)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main():
    mountpoint, backing, stats_path, mode, extra = sys.argv[1:6]
    operations = OneFile(backing, stats_path, mode)
    options = set(pyfuse3.default_options) | {"fsname=passthrough-test"}
    options |= set(filter(None, extra.split(",")))
    pyfuse3.init(operations, mountpoint, options)
    terminated = []
    try:
        trio.run(serve, terminated)
    except BaseException:
        pyfuse3.close(unmount=True)
        raise
    # Unmounted from outside, or SIGTERM: then unmount here (libfuse runs
    # fusermount3 --unmount for a daemon that is not root).
    pyfuse3.close(unmount=bool(terminated))
    if terminated:
        operations.stats["unmounted_itself"] = not mounted(mountpoint)
    operations.stats["exited"] = True
    operations.save()


main()
"""


def require_patched_pyfuse3() -> None:
    if getattr(pyfuse3, "BUTLERFS_PATCH", 0) >= 1:
        return
    problem = (
        f"pyfuse3 {pyfuse3.__version__} is not the patched build "
        "(tools/build-passthrough.sh; see docs/passthrough.md)"
    )
    if IN_CI:
        pytest.fail(problem)
    pytest.skip(problem)


def require_root() -> None:
    if os.getuid() == 0:
        return
    if IN_CI:
        pytest.fail("passthrough tests run as root under CI (CAP_SYS_ADMIN, another user)")
    pytest.skip("needs root: passthrough needs CAP_SYS_ADMIN")


def mount_entry(mountpoint: Path, mounts: str = "/proc/self/mounts") -> list[str] | None:
    """The fields of ``mountpoint``'s line in ``mounts``, whoever may access the mount."""
    try:
        with open(mounts) as lines:
            for line in lines:
                fields = line.split()
                if fields[1] == str(mountpoint):
                    return fields
    except FileNotFoundError:  # /proc/PID/mounts of a process that is gone
        pass
    return None


class Daemon:
    """The test daemon, as root or as another user.

    As another user it runs in a private mount namespace where /dev/fuse is a
    0666 node of our own, bound over the real one, as udev makes it on an ordinary
    machine (here it is 0600): libfuse opens /dev/fuse itself, and only the mount(2)
    falls back to the setuid fusermount3. The namespace, its mounts and that node
    vanish with the daemon; nothing outside changes. Commands that must see the
    mount enter the namespace with ``nsenter`` (``self.run``).
    """

    def __init__(self, root: Path, mode: str, user: int | None, options: str) -> None:
        self.root = root
        self.mountpoint = root / "mnt"
        self.backing = root / "backing.bin"
        self.stats_path = root / "stats.json"
        self.log_path = root / "daemon.log"
        self.mode = mode
        self.user = user
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def file(self) -> Path:
        return self.mountpoint / "data.bin"

    def start(self) -> Daemon:
        script = self.root / "onefile.py"
        script.write_text(DAEMON)
        self.mountpoint.mkdir()
        command = [sys.executable, str(script), str(self.mountpoint), str(self.backing)]
        command += [str(self.stats_path), self.mode, self.options]
        if self.user is not None:
            for path in (self.root, self.mountpoint, self.backing, script):
                os.chown(path, self.user, self.user)
            device = self.root / "fuse"
            os.mknod(device, 0o666 | stat.S_IFCHR, os.stat("/dev/fuse").st_rdev)
            device.chmod(0o666)  # past the umask
            command = [
                "unshare", "--mount", "--propagation", "private", "--",
                "sh", "-ec", 'mount --bind "$0" /dev/fuse; exec "$@"', str(device),
                *self.as_user(), *command,
            ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._ready_or_dead, DEADLINE, f"the test daemon to mount {self.mountpoint}")
        if self.process.poll() is not None:
            pytest.fail(f"the test daemon exited with {self.process.returncode}:\n{self.log()}")
        return self

    @property
    def mounts(self) -> str:
        """The mount table that shows this daemon's mount."""
        if self.user is None or self.process is None:
            return "/proc/self/mounts"
        return f"/proc/{self.process.pid}/mounts"  # unshare, sh and setpriv exec: one pid

    def mount_entry(self) -> list[str] | None:
        return mount_entry(self.mountpoint, self.mounts)

    def run(self, *command: str) -> subprocess.CompletedProcess[bytes]:
        """``command`` where the mount is seen, as the daemon's user."""
        if self.user is None:
            return subprocess.run(command, capture_output=True, check=True)
        assert self.process is not None
        enter = ["nsenter", f"--target={self.process.pid}", "--mount", "--"]
        return subprocess.run([*enter, *self.as_user(), *command], capture_output=True, check=True)

    def as_user(self) -> list[str]:
        """A command prefix that drops root for the daemon's user (and all capabilities)."""
        return ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--clear-groups", "--"]

    def _ready_or_dead(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            return True
        return self.mount_entry() is not None and self.stats_path.exists()

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.stats_path.read_text())
        return result

    def wait_stats(self, condition: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        wait_for(lambda: condition(self.stats()), DEADLINE, what)
        return self.stats()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _umount(self, *flags: str) -> None:
        assert self.process is not None
        enter = [] if self.user is None else ["nsenter", f"--target={self.process.pid}", "--mount"]
        subprocess.run([*enter, "umount", *flags, str(self.mountpoint)], check=not flags)

    def terminate(self) -> None:
        """SIGTERM: the daemon unmounts and exits by itself (``stop`` then checks it)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the test daemon did not exit on SIGTERM:\n{self.log()}")

    def stop(self) -> None:
        """Unmount, and check that the daemon exited cleanly and released every id."""
        assert self.process is not None
        if self.process.poll() is None and self.mount_entry() is not None:
            self._umount()
        try:
            code = self.process.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"the test daemon did not exit within {DEADLINE} s:\n{self.log()}")
        assert code == 0, f"the test daemon exited with {code}:\n{self.log()}"
        assert "Traceback" not in self.log(), self.log()
        final = self.stats()
        assert final["exited"]
        assert final["live_ids"] == 0
        assert sorted(final["ids_opened"]) == sorted(final["ids_closed"])

    def cleanup(self) -> None:
        if self.process is not None and self.mount_entry() is not None:
            self._umount("-l")
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


DaemonFactory = Callable[..., Daemon]


@pytest.fixture
def start_daemon() -> Iterator[DaemonFactory]:
    """``start_daemon(mode, user=None, options="")``: a mounted test daemon, stopped at teardown.

    ``mode``: "passthrough" (enable_passthrough), "read" (not requested) or
    "writeback" (requested together with the writeback cache, which the kernel
    does not grant together). ``options``: more mount options, comma-separated.
    """
    require_fuse()
    require_patched_pyfuse3()
    require_root()
    started: list[Daemon] = []

    def start(mode: str, user: int | None = None, options: str = "") -> Daemon:
        # Not tmp_path: another user must reach it (tmp_path is private to root).
        root = Path(tempfile.mkdtemp(prefix="butlerfs-passthrough-"))
        root.chmod(0o755)
        daemon = Daemon(root, mode, user, options)
        started.append(daemon)
        daemon.backing.write_bytes(BACKING_CONTENT)
        return daemon.start()

    yield start
    try:
        for daemon in started:
            print(f"---- daemon log {daemon.log_path} ----\n{daemon.log()}")
            daemon.stop()
    finally:
        for daemon in started:
            daemon.cleanup()
            if mount_entry(daemon.mountpoint) is None:  # never delete through a mount
                shutil.rmtree(daemon.root)


# Not a multiple of the page size, so the last page is partial.
BACKING_CONTENT = bytes(range(256)) * 4099 + b"tail"


def require_granted(daemon: Daemon) -> dict[str, Any]:
    stats = daemon.stats()
    if not stats["granted"]:
        message = (
            "the kernel did not grant FUSE passthrough (Linux >= 6.9 with CONFIG_FUSE_PASSTHROUGH)"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return stats


def test_reads_go_to_the_backing_file_without_the_daemon(start_daemon: DaemonFactory) -> None:
    daemon = start_daemon("passthrough")
    require_granted(daemon)
    assert daemon.file.read_bytes() == BACKING_CONTENT
    cat = subprocess.run(["cat", str(daemon.file)], capture_output=True, check=True)
    assert cat.stdout == BACKING_CONTENT
    with open(daemon.file, "rb") as f:
        f.seek(1000)
        assert f.read(5000) == BACKING_CONTENT[1000:6000]
    stats = daemon.stats()
    assert stats["open_errors"] == []
    assert stats["passthrough_opens"] == stats["opens"] == 3
    assert stats["reads"] == 0, "the daemon's read() was called: the reads were not passed through"


def test_mmap_reads_the_backing_file(start_daemon: DaemonFactory) -> None:
    daemon = start_daemon("passthrough")
    require_granted(daemon)
    with open(daemon.file, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        assert len(mapped) == len(BACKING_CONTENT)
        assert mapped[:] == BACKING_CONTENT
        assert mapped[-4:] == b"tail"
    assert daemon.stats()["reads"] == 0


def test_every_backing_id_is_released(start_daemon: DaemonFactory) -> None:
    daemon = start_daemon("passthrough")
    require_granted(daemon)
    cycles = 100
    for cycle in range(cycles):
        with open(daemon.file, "rb") as first:
            if cycle % 4 == 0:  # a second open of the inode shares its backing id
                with open(daemon.file, "rb") as second:
                    assert second.read(7) == BACKING_CONTENT[:7]
            first.seek(cycle)
            assert first.read(3) == BACKING_CONTENT[cycle : cycle + 3]
    opens = cycles + cycles // 4
    stats = daemon.wait_stats(
        lambda s: s["releases"] == opens and s["live_ids"] == 0,
        f"{opens} releases and no backing id left",
    )
    assert stats["passthrough_opens"] == opens
    assert stats["reads"] == 0
    assert len(stats["ids_opened"]) >= 1
    assert sorted(stats["ids_opened"]) == sorted(stats["ids_closed"])
    # A second passthrough_close of each id got ENOENT: the kernel dropped every one.
    assert stats["ids_unknown_after_close"] == len(stats["ids_closed"])


def test_flush_gets_the_pid_of_the_closing_process(start_daemon: DaemonFactory) -> None:
    daemon = start_daemon("passthrough")
    cat = subprocess.Popen(["cat", str(daemon.file)], stdout=subprocess.DEVNULL)
    assert cat.wait(DEADLINE) == 0
    stats = daemon.wait_stats(
        lambda s: any(f["pid"] == cat.pid for f in s["flushes"]), f"a flush from cat ({cat.pid})"
    )
    flush = next(f for f in stats["flushes"] if f["pid"] == cat.pid)
    assert flush["uid"] == 0
    assert not flush["stat"]["flags"] & PF_EXITING  # an ordinary close


def test_flush_of_a_killed_process_shows_it_exiting(start_daemon: DaemonFactory) -> None:
    """What the mount daemon relies on to tell a killed writer from a normal close."""
    daemon = start_daemon("passthrough")
    hold = "import sys; f = open(sys.argv[1], 'rb'); print(1, flush=True); sys.stdin.read()"
    with subprocess.Popen(
        [sys.executable, "-c", hold, str(daemon.file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"1\n"  # the file is open
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(DEADLINE) == -signal.SIGKILL
    stats = daemon.wait_stats(
        lambda s: any(f["pid"] == holder.pid for f in s["flushes"]),
        f"a flush from the killed process {holder.pid}",
    )
    flush = next(f for f in stats["flushes"] if f["pid"] == holder.pid)
    assert flush["stat"]["flags"] & PF_EXITING, flush


@pytest.mark.parametrize("mode", ["read", "writeback"])
def test_without_the_capability_files_are_served_through_read(
    start_daemon: DaemonFactory, mode: str
) -> None:
    daemon = start_daemon(mode)
    stats = daemon.stats()
    assert stats["granted"] is False
    assert daemon.file.read_bytes() == BACKING_CONTENT
    with open(daemon.file, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        assert mapped[-4:] == b"tail"
    stats = daemon.stats()
    assert stats["passthrough_opens"] == 0
    assert stats["reads"] > 0
    assert stats["ids_opened"] == []
    if mode == "writeback":  # the patched pyfuse3 says why it did not ask
        assert "together with the writeback cache" in daemon.log()


def test_a_daemon_without_cap_sys_admin_falls_back_to_read(start_daemon: DaemonFactory) -> None:
    """A non-root daemon: mounted by the system's setuid fusermount3 (3.14) on behalf
    of libfuse 3.17; the kernel negotiates passthrough but refuses backing files
    (EPERM) to a daemon without CAP_SYS_ADMIN, and the daemon serves reads itself."""
    daemon = start_daemon("passthrough", user=NOBODY)
    entry = daemon.mount_entry()
    assert entry is not None
    assert entry[0] == "passthrough-test" and entry[2] == "fuse", entry
    assert f"user_id={NOBODY}" in entry[3], entry  # fusermount3 mounted it for nobody
    assert daemon.run("cat", str(daemon.file)).stdout == BACKING_CONTENT
    stats = require_granted(daemon)
    assert stats["open_errors"] and set(stats["open_errors"]) == {errno.EPERM}
    assert stats["passthrough_opens"] == 0
    assert stats["reads"] > 0
    # On SIGTERM the daemon unmounts itself: libfuse 3.17 runs the system's
    # fusermount3 --unmount --quiet --lazy, which 3.14 understands.
    daemon.terminate()
    assert daemon.stats()["unmounted_itself"] is True
