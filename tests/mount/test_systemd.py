"""mount/butlerfs@.service and mount/butlerfs-example.mount: systemd accepts them, and the
service's steps, run the way systemd runs them, do what the unit promises.

PID 1 is not systemd in the test container, so ``systemctl start`` cannot run a unit.
``systemd-analyze verify`` checks the files offline; :class:`ServiceSteps` replays what
systemd does for ``butlerfs@USER.service``: ExecStartPre, ExecStart as the user (setuid,
setgid, supplementary groups, then exec, as ``User=`` does) with ``$NOTIFY_SOCKET``,
waiting for READY=1, ExecStop, the main process's exit, ExecStopPost.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.mount.conftest import (
    EXIT_DEADLINE,
    MOUNT_DEADLINE,
    MOUNT_DIR,
    Installation,
    User,
    build_shared,
    force_unmount,
    mount_entry,
    run,
    sha256,
    unavailable,
    world_readable_directory,
    write_view,
)

SERVICE = MOUNT_DIR / "butlerfs@.service"
MOUNT_EXAMPLE = MOUNT_DIR / "butlerfs-example.mount"
RAW = "raw/v0000001/raw-v0000001-c000.fits"
CALEXP = "calexp/v0000001/calexp-v0000001-c000.fits"

#: What systemd-analyze says when it cannot work at all in a container (no systemd as PID 1,
#: no D-Bus): only then may the check be skipped, CI or not.
CONTAINER_LIMITS = ("System has not been booted with systemd", "Failed to connect to bus")

#: Options that put the service in a mount namespace of its own (the mount would be
#: invisible outside) or forbid the setuid fusermount3 that users need to mount.
FORBIDDEN = (
    "PrivateTmp",
    "PrivateMounts",
    "PrivateDevices",
    "ProtectSystem",
    "ProtectHome",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "TemporaryFileSystem",
    "BindPaths",
    "NoNewPrivileges",
    "SystemCallFilter",
    "RestrictSUIDSGID",
    "CapabilityBoundingSet",
)


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections → keys → values in order (a key such as ExecStartPre may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def verify(path: Path) -> None:
    """``systemd-analyze verify``: no error and no warning either."""
    if shutil.which("systemd-analyze") is None:
        unavailable("systemd-analyze is missing (Debian's systemd package has it)")
    result = run("systemd-analyze", "verify", "--man=no", path)
    if result.returncode != 0 and any(limit in result.stderr for limit in CONTAINER_LIMITS):
        pytest.skip(f"systemd-analyze cannot run in this container: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", f"systemd-analyze warns:\n{result.stderr}"


def test_the_service_unit_verifies(installation: Installation) -> None:
    """After install.sh, the unit's commands exist, so systemd has nothing to say."""
    verify(Path("/etc/systemd/system/butlerfs@.service"))


def test_the_mount_unit_example_verifies(tmp_path: Path) -> None:
    where = parse_unit(MOUNT_EXAMPLE)["Mount"]["Where"][0]
    name = run("systemd-escape", "--path", "--suffix=mount", where).stdout.strip()
    assert name == "srv-butler-alice.mount", "the example's comment names this file"
    unit = tmp_path / name  # systemd insists that the name matches Where=
    shutil.copy(MOUNT_EXAMPLE, unit)
    verify(unit)


def test_the_service_is_a_foreground_notify_daemon_of_the_user() -> None:
    service = parse_unit(SERVICE)["Service"]
    assert service["User"] == ["%i"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["Restart"] == ["on-failure"]
    start = shlex.split(service["ExecStart"][0])
    assert start[1:3] == ["mount", "/etc/butlerfs/views/%i.yaml"]
    assert "-f" in start
    assert service["ExecStartPre"][0].startswith("-/bin/fusermount3 -uz ")
    assert service["ExecStop"][0].startswith("-/bin/fusermount3 -u ")
    assert not set(FORBIDDEN) & set(service), "the service must stay in the host's mounts"


# -- the service's steps, as systemd runs them -----------------------------------------------


@dataclass
class ServiceSteps:
    """``butlerfs@USER.service`` without systemd: one step of the unit per method."""

    user: User
    log: Path
    shared: Path
    service: dict[str, list[str]] = field(default_factory=lambda: parse_unit(SERVICE)["Service"])
    notify: socket.socket | None = None
    notify_address: str = ""
    main: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.notify_address = f"@butlerfs-test-{secrets.token_hex(6)}"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # Abstract: like systemd's own socket, any process may send to it.
        self.notify.bind("\0" + self.notify_address[1:])

    def expand(self, text: str) -> str:
        return text.replace("%i", self.user.name)

    @property
    def mountpoint(self) -> Path:
        """ExecStart's MOUNTPOINT: butlerfs mount VIEW MOUNTPOINT -f."""
        return Path(self.expand(shlex.split(self.service["ExecStart"][0])[3]))

    def environment(self) -> dict[str, str]:
        """What systemd gives a service with User=: a fixed PATH, the user's identity."""
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": f"/home/{self.user.name}",
            "USER": self.user.name,
            "LOGNAME": self.user.name,
            "NOTIFY_SOCKET": self.notify_address,
            "LANG": "C.UTF-8",
        }
        for assignment in self.service.get("Environment", []):
            key, _, value = assignment.partition("=")
            env[key] = value
        return env

    def command(self, line: str) -> tuple[str, list[str]]:
        """An Exec line: its prefixes ("-": failure ignored, "+": as root) and argv."""
        text = self.expand(line)
        prefixes = ""
        while text[0] in "-+@:!":
            prefixes, text = prefixes + text[0], text[1:]
        argv = shlex.split(text)
        if "+" not in prefixes:
            user = self.user
            ids = [f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups"]
            argv = ["setpriv", *ids, "--", *argv]
        return prefixes, argv

    def run_all(self, key: str) -> None:
        for line in self.service.get(key, []):
            prefixes, argv = self.command(line)
            result = subprocess.run(
                argv, env=self.environment(), capture_output=True, text=True, check=False, cwd="/"
            )
            if "-" not in prefixes:
                assert result.returncode == 0, f"{key}={line}: {result.stderr}"

    def start(self) -> None:
        """ExecStartPre, ExecStart; then wait for READY=1."""
        self.run_all("ExecStartPre")
        _, argv = self.command(self.service["ExecStart"][0])
        with open(self.log, "ab") as log:
            self.main = subprocess.Popen(
                argv, env=self.environment(), stdout=log, stderr=log, cwd="/"
            )
        self.wait_ready()

    def wait_ready(self) -> None:
        assert self.notify is not None and self.main is not None
        self.notify.settimeout(0.1)
        deadline = time.monotonic() + MOUNT_DEADLINE
        while True:
            assert self.main.poll() is None, f"the daemon exited:\n{self.log.read_text()}"
            assert time.monotonic() < deadline, f"no READY=1:\n{self.log.read_text()}"
            try:
                message = self.notify.recv(4096)
            except TimeoutError:
                continue
            if b"READY=1" in message.split(b"\n"):
                break
        entry = mount_entry(self.mountpoint)
        assert entry is not None, "READY=1 before the mount was live"
        assert entry.user_id == self.user.uid

    def crash(self) -> None:
        """SIGKILL, the way an OOM kill or a bug ends the daemon: no unmount."""
        assert self.main is not None
        self.main.send_signal(signal.SIGKILL)
        self.main.wait(EXIT_DEADLINE)

    def stop(self) -> int:
        """ExecStop, the main process's exit, ExecStopPost; the main process's exit code."""
        assert self.main is not None
        self.run_all("ExecStop")
        try:
            code = self.main.wait(float(self.service["TimeoutStopSec"][0].removesuffix("s")))
        except subprocess.TimeoutExpired:
            self.main.terminate()  # what systemd does next
            code = self.main.wait(EXIT_DEADLINE)
        self.run_all("ExecStopPost")
        return code

    def cleanup(self) -> None:
        if self.main is not None and self.main.poll() is None:
            self.main.kill()
            self.main.wait()
        force_unmount(self.mountpoint)
        with contextlib.suppress(OSError):
            self.mountpoint.rmdir()
            self.mountpoint.parent.rmdir()  # only if no one else uses /run/butlerfs
        if self.notify is not None:
            self.notify.close()


@pytest.fixture
def service(
    installation: Installation, users: tuple[User, User], fuse_for_users: None, tmp_path: Path
) -> Iterator[ServiceSteps]:
    """butlerfs@OWNER with a view in /etc/butlerfs/views/OWNER.yaml over root's shared inputs."""
    owner = users[0]
    base = world_readable_directory("butlerfs-service-")
    view = Path("/etc/butlerfs/views") / f"{owner.name}.yaml"
    steps = ServiceSteps(owner, tmp_path / "daemon.log", base / "shared")
    try:
        build_shared(base / "shared")
        home = base / "owner"
        home.mkdir(mode=0o700)
        os.chown(home, owner.uid, owner.gid)
        write_view(view, base / "shared", home / "work")
        yield steps
        print(f"---- daemon log ----\n{steps.log.read_text() if steps.log.exists() else ''}")
    finally:
        steps.cleanup()
        view.unlink(missing_ok=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.mount
def test_the_service_serves_the_users_view(service: ServiceSteps) -> None:
    owner, mountpoint = service.user, service.mountpoint
    service.start()
    assert stat.S_IMODE(os.stat(mountpoint.parent).st_mode) == 0o755
    assert owner.attempt("read", mountpoint / RAW) == sha256(service.shared / "raw" / RAW)
    # A clean stop: the daemon exits 0, so Restart=on-failure leaves it stopped.
    assert service.stop() == 0
    assert mount_entry(mountpoint) is None
    assert not mountpoint.exists()


@pytest.mark.mount
def test_the_service_recovers_from_a_crashed_daemon(service: ServiceSteps) -> None:
    """After a crash the mount is dead (ENOTCONN); systemd's restart brings it back, and
    nothing written before the crash is lost."""
    owner, mountpoint = service.user, service.mountpoint
    raw = service.shared / "raw" / RAW
    service.start()
    assert owner.attempt("makedirs", (mountpoint / CALEXP).parent) == "ok"
    assert owner.attempt("copy", raw, mountpoint / CALEXP) == "ok"

    service.crash()
    assert owner.attempt("list", mountpoint) == "ENOTCONN"
    # Restart=on-failure: systemd stops the unit (ExecStop, ExecStopPost), then starts it.
    service.stop()
    service.start()
    assert owner.attempt("read", mountpoint / CALEXP) == sha256(raw)

    # A dead mount that no stop step cleaned (the daemon killed outside systemd's watch):
    # ExecStartPre detaches it before ExecStart mounts again.
    service.crash()
    service.start()
    assert owner.attempt("read", mountpoint / CALEXP) == sha256(raw)
    assert service.stop() == 0
