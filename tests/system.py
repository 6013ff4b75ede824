"""Real pieces of the machine for tests that need them: users, tmpfs mounts, bind mounts,
file flags.  Each is made inside the test's own directories and undone at the end.

These need root.  Without it they skip, except under CI=true, where they fail: CI
runs as root.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import secrets
import signal
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

CI = os.environ.get("CI") == "true"

_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x10


def unavailable(reason: str) -> None:
    """Skip, or fail under CI, where root and FUSE are promised."""
    if CI:
        pytest.fail(f"expected under CI: {reason}")
    pytest.skip(reason)


def require_root() -> None:
    if os.geteuid() != 0:
        unavailable("this test needs root (mounts, users, file flags)")


def run(*argv: str | Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=False
    )


# -- users ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int

    def run(self, *argv: str | Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``argv`` as this user (runuser: no password, no login shell needed)."""
        return run("runuser", "-u", self.name, "--", *argv, timeout=timeout)

    def attempt(self, operation: str, *paths: Path) -> str:
        """``operation`` on ``paths`` as this user: "ok", or the errno's name (EACCES, ...)."""
        result = self.run("/usr/bin/python3", "-c", _ATTEMPT, operation, *paths)
        assert result.returncode == 0, f"probe failed: {result.stderr}"
        answer: str = json.loads(result.stdout)
        return answer

    def own(self, path: Path) -> None:
        """Give ``path`` and everything below it to this user."""
        for each in [path, *path.rglob("*")]:
            os.lchown(each, self.uid, self.gid)


# Run by /usr/bin/python3 (any user may run it), so it imports nothing of the project.
_ATTEMPT = r"""
import errno, hashlib, json, os, sys
operation, paths = sys.argv[1], sys.argv[2:]
def act():
    if operation == "stat":
        os.stat(paths[0])
    elif operation == "list":
        os.listdir(paths[0])
    elif operation == "read":
        with open(paths[0], "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    elif operation == "copy":
        with open(paths[0], "rb") as source:
            data = source.read()
        with open(paths[1], "wb") as target:
            target.write(data)
    elif operation == "makedirs":
        os.makedirs(paths[0], exist_ok=True)
    else:
        raise SystemExit("unknown operation " + operation)
    return "ok"
try:
    answer = act()
except OSError as exc:
    answer = errno.errorcode.get(exc.errno, str(exc.errno))
print(json.dumps(answer))
"""


def new_user(tag: str) -> User:
    name = f"bfs{secrets.token_hex(3)}{tag}"
    result = run("useradd", "--create-home", "--user-group", "--shell", "/bin/sh", name)
    assert result.returncode == 0, f"useradd {name}: {result.stderr}"
    entry = pwd.getpwnam(name)
    return User(name, entry.pw_uid, entry.pw_gid)


def remove_user(user: User) -> None:
    # Only processes this session started run as a user it created.
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == user.uid:
                    os.kill(int(entry.name), signal.SIGKILL)
    run("userdel", "--remove", user.name)


# -- mounts ----------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "4m", inodes: int | None = None) -> Iterator[Path]:
    """A small tmpfs mounted at ``path`` (made), unmounted (lazily, if busy) at the end."""
    require_root()
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
    result = run("mount", "-t", "tmpfs", "-o", options, "tmpfs", path)
    if result.returncode != 0:
        unavailable(f"cannot mount a tmpfs: {result.stderr.strip()}")
    try:
        yield path
    finally:
        if run("umount", path).returncode != 0:
            run("umount", "-l", path)


@contextlib.contextmanager
def read_only_bind(path: Path) -> Iterator[Path]:
    """``path`` bind-mounted on itself, read-only, until the end."""
    require_root()
    result = run("mount", "--bind", path, path)
    if result.returncode != 0:
        unavailable(f"cannot bind-mount: {result.stderr.strip()}")
    try:
        result = run("mount", "-o", "remount,bind,ro", path)
        assert result.returncode == 0, result.stderr
        yield path
    finally:
        if run("umount", path).returncode != 0:
            run("umount", "-l", path)


def fill(directory: Path, *, inodes: bool = False) -> None:
    """Fill the filesystem of ``directory``: its blocks (one growing file), or its inodes
    (empty files until ENOSPC)."""
    if inodes:
        filler = directory / ".inodes"
        filler.mkdir()
        number = 0
        with contextlib.suppress(OSError):
            while True:
                (filler / str(number)).touch()
                number += 1
        return
    fd = os.open(directory / ".filler", os.O_WRONLY | os.O_CREAT, 0o600)
    block = bytes(1 << 16)
    try:
        while block:
            try:
                os.write(fd, block)
            except OSError:
                block = block[: len(block) // 2]
    finally:
        os.close(fd)


# -- file flags -------------------------------------------------------------------------------


def set_immutable(path: Path, on: bool) -> None:
    """``chattr +i`` / ``chattr -i`` (root only; the filesystem must support it)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        flags = struct.unpack("=i", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8))[:4])[0]
        flags = flags | FS_IMMUTABLE_FL if on else flags & ~FS_IMMUTABLE_FL
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("=i", flags) + bytes(4))
    finally:
        os.close(fd)
