"""What an admin does, for real: install, mount by type and by fstab, users, systemd's steps.

``installation`` runs ``mount/install.sh`` once per session into a world-readable
prefix under /tmp, so that users created by the tests can run the installed
``butlerfs``; it puts the system files (/usr/local/bin, /sbin, /etc) back as they
were at teardown, after checking that ``mount/uninstall.sh`` removed its own.
``users`` creates two users with useradd and removes them with userdel -r.
``fuse_for_users`` opens /dev/fuse to users (mode 0666, as udev does on a normal
system) and restores its mode.  Every mount is looked up in /proc/self/mounts:
``os.path.ismount`` cannot see a mount that refuses root, which is the point of
a per-user view.

These tests need root.  Without it, or without FUSE, they skip, except under
CI=true, where they fail: CI runs as root on a machine with FUSE.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.system import User, new_user, remove_user

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MOUNT_DIR = PROJECT_ROOT / "mount"
CI = os.environ.get("CI") == "true"

MOUNT_DEADLINE = 30.0  # seconds: a cold start imports astropy and opens every registry
EXIT_DEADLINE = 15.0
INSTALL_TIMEOUT = 600.0  # the first install may compile pyfuse3 and download wheels

#: Where install.sh writes outside its prefix; put back as found at the end of the session.
SYSTEM_PATHS = (
    Path("/usr/local/bin/butler"),
    Path("/usr/local/bin/butlerfs"),
    Path("/sbin/mount.fuse.butlerfs"),
    Path("/sbin/mount.butlerfs"),
    Path("/etc/systemd/system/butlerfs@.service"),
    Path("/usr/local/share/doc/butlerfs"),
    Path("/etc/butlerfs"),
)


def unavailable(reason: str) -> None:
    """Skip, or fail under CI, where root and FUSE are promised."""
    if CI:
        pytest.fail(f"expected under CI: {reason}")
    pytest.skip(reason)


def require_root() -> None:
    if os.geteuid() != 0:
        unavailable("installing, mounting for other users and useradd need root")


def require_fuse() -> None:
    require_root()
    for path in ("/dev/fuse", "/bin/fusermount3", "/sbin/mount.fuse3"):
        if not os.path.exists(path):
            unavailable(f"{path} is missing (install fuse3)")


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``condition`` until true; fail after ``seconds`` naming ``what``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.02)


def run(*argv: str | Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``argv`` from / (a Python started in the checkout would import the checkout)."""
    return subprocess.run(
        [str(arg) for arg in argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd="/",
    )


def world_readable_directory(prefix: str) -> Path:
    """A fresh directory under /tmp that every user can enter (mkdtemp makes 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


# -- mounts --------------------------------------------------------------------


@dataclass(frozen=True)
class MountEntry:
    source: str
    target: str
    fs_type: str
    options: frozenset[str]

    @property
    def user_id(self) -> int:
        for option in self.options:
            if option.startswith("user_id="):
                return int(option.removeprefix("user_id="))
        raise AssertionError(f"no user_id in {sorted(self.options)}")


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def mount_entry(mountpoint: Path) -> MountEntry | None:
    """The (last) mount on ``mountpoint``, from /proc/self/mounts; None if there is none."""
    found = None
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as mounts:
        for line in mounts:
            source, target, fs_type, options = line.split()[:4]
            if _unescape(target) == str(mountpoint):
                found = MountEntry(
                    _unescape(source), _unescape(target), fs_type, frozenset(options.split(","))
                )
    return found


def wait_mounted(mountpoint: Path, seconds: float = MOUNT_DEADLINE) -> MountEntry:
    wait_for(lambda: mount_entry(mountpoint) is not None, seconds, f"a mount on {mountpoint}")
    entry = mount_entry(mountpoint)
    assert entry is not None
    assert entry.fs_type == "fuse.butlerfs", entry
    return entry


def wait_unmounted(mountpoint: Path, seconds: float = EXIT_DEADLINE) -> None:
    wait_for(lambda: mount_entry(mountpoint) is None, seconds, f"{mountpoint} to be unmounted")


def daemon_pids(mountpoint: Path) -> list[int]:
    """Processes whose command line names ``mountpoint``: the daemons serving it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.fsencode(mountpoint) in argv and any(b"butlerfs" in arg for arg in argv):
            found.append(int(entry.name))
    return found


def wait_no_daemon(mountpoint: Path, seconds: float = EXIT_DEADLINE) -> None:
    wait_for(lambda: not daemon_pids(mountpoint), seconds, f"the daemon of {mountpoint} to exit")


def force_unmount(mountpoint: Path) -> None:
    """Last resort at teardown: no mount and no daemon may outlive a test."""
    if mount_entry(mountpoint) is not None:
        run("fusermount3", "-uz", mountpoint)
    for pid in daemon_pids(mountpoint):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- the installation ----------------------------------------------------------


@dataclass(frozen=True)
class Installation:
    prefix: Path
    output: str  # what install.sh printed

    @property
    def venv(self) -> Path:
        return self.prefix / "venv"

    butlerfs = Path("/usr/local/bin/butlerfs")
    butler = Path("/usr/local/bin/butler")


@dataclass(frozen=True)
class _Saved:
    path: Path
    copy: Path | None  # a copy of what was there (None: nothing was there)


def _save(path: Path, into: Path) -> _Saved:
    if not os.path.lexists(path):
        return _Saved(path, None)
    keep = into / str(len(list(into.iterdir())))
    if path.is_symlink() or not path.is_dir():
        shutil.copy2(path, keep, follow_symlinks=False)
    else:
        shutil.copytree(path, keep, symlinks=True)
    return _Saved(path, keep)


def _restore(saved: _Saved) -> None:
    path = saved.path
    if os.path.lexists(path):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if saved.copy is not None:
        os.replace(saved.copy, path)


def install(prefix: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    script = MOUNT_DIR / "install.sh"
    return run("bash", script, "--prefix", prefix, *extra, timeout=INSTALL_TIMEOUT)


@pytest.fixture(scope="session")
def installation() -> Iterator[Installation]:
    """``mount/install.sh --prefix /tmp/butlerfs-prefix-XXXX --passthrough``, once per
    session (passthrough's build is cached in the checkout by ``make setup``)."""
    require_root()
    prefix_parent = world_readable_directory("butlerfs-prefix-")
    saved_dir = Path(tempfile.mkdtemp(prefix="butlerfs-saved-"))
    saved = [_save(path, saved_dir) for path in SYSTEM_PATHS]
    prefix = prefix_parent / "opt"
    try:
        result = install(prefix, "--passthrough")
        assert result.returncode == 0, f"install.sh failed:\n{result.stdout}\n{result.stderr}"
        yield Installation(prefix, result.stdout)
        result = run("bash", MOUNT_DIR / "uninstall.sh", "--prefix", prefix)
        assert result.returncode == 0, f"uninstall.sh failed:\n{result.stdout}\n{result.stderr}"
        left = [p for p in (*SYSTEM_PATHS[:6], prefix) if os.path.lexists(p)]
        assert not left, f"uninstall.sh left {left}:\n{result.stdout}"
    finally:
        for item in saved:
            _restore(item)
        shutil.rmtree(saved_dir, ignore_errors=True)
        shutil.rmtree(prefix_parent, ignore_errors=True)


def build_samples(root: Path, visits: tuple[int, ...], ccds: int) -> Path:
    """butler.demo's repositories (inputs raw, calib) under ``root``; returns the aggregator.

    In another process, as an admin would have made them earlier: a Butler left open in
    this one would keep owner locks in the repositories while the tests run.
    """
    script = (
        "import sys; from pathlib import Path; from butler.demo import build_samples; "
        f"build_samples(Path(sys.argv[1]), visits={visits!r}, ccds={ccds})"
    )
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    subprocess.run([sys.executable, "-c", script, root], check=True, env=env, cwd="/")
    return root / "demo.yaml"


@pytest.fixture(scope="session")
def samples() -> Iterator[Path]:
    """butler.demo's repositories, world-readable; returns their aggregator file."""
    root = world_readable_directory("butlerfs-samples-")
    try:
        yield build_samples(root, visits=(903334,), ccds=2)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- shared inputs and views -----------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_view(path: Path, shared: Path, output: Path) -> None:
    path.write_text(
        "butler: 1\n"
        "inputs:\n"
        f"  - {{path: {shared}/raw, label: raw}}\n"
        f"  - {{path: {shared}/calib, label: calib}}\n"
        "outputs:\n"
        f"  - {{path: {output}, label: work, mode: rw, datasetTypes: [calexp]}}\n"
    )
    path.chmod(0o644)


def build_shared(root: Path) -> None:
    """Sample input repositories owned by root: readable, not writable, by others."""
    build_samples(root, visits=(1,), ccds=2)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


# -- users ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def users() -> Iterator[tuple[User, User]]:
    """Two fresh users, (owner, other); removed with their homes at the end."""
    require_root()
    if shutil.which("useradd") is None or shutil.which("runuser") is None:
        unavailable("useradd and runuser are needed to mount as another user")
    made: list[User] = []
    try:
        made.append(new_user("a"))
        made.append(new_user("b"))
        yield made[0], made[1]
    finally:
        for user in made:
            remove_user(user)


@pytest.fixture(scope="session")
def fuse_for_users() -> Iterator[None]:
    """/dev/fuse open to every user (0666, what udev sets on a normal machine), restored after."""
    require_fuse()
    original = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    try:
        os.chmod("/dev/fuse", 0o666)
        yield
    finally:
        os.chmod("/dev/fuse", original)


FUSE_CONF = Path("/etc/fuse.conf")


@pytest.fixture
def user_allow_other() -> Iterator[None]:
    """``user_allow_other`` in /etc/fuse.conf for one test; the file is restored after."""
    require_fuse()
    original = FUSE_CONF.read_bytes() if FUSE_CONF.exists() else None
    try:
        text = original.decode() if original is not None else ""
        FUSE_CONF.write_text(text.rstrip("\n") + "\nuser_allow_other\n")
        yield
    finally:
        if original is None:
            FUSE_CONF.unlink(missing_ok=True)
        else:
            FUSE_CONF.write_bytes(original)


@pytest.fixture
def no_user_allow_other() -> Iterator[None]:
    """/etc/fuse.conf without ``user_allow_other`` for one test; restored after."""
    original = FUSE_CONF.read_bytes() if FUSE_CONF.exists() else None
    try:
        if original is not None:
            lines = original.decode().splitlines(keepends=True)
            FUSE_CONF.write_text("".join(x for x in lines if x.strip() != "user_allow_other"))
        yield
    finally:
        if original is not None:
            FUSE_CONF.write_bytes(original)
