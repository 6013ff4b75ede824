"""Readiness for ``Type=notify``: butlerfs.systemd speaks sd_notify, and the daemon in the
foreground sends READY=1 only once its mount is live."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from butlerfs import systemd
from tests.mount.conftest import (
    MOUNT_DEADLINE,
    PROJECT_ROOT,
    build_samples,
    force_unmount,
    mount_entry,
    require_fuse,
    wait_unmounted,
)

READY_AFTER_MOUNT = 5.0  # seconds from a live mount to READY=1: generous for a loaded machine


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound where NOTIFY_SOCKET will point (a filesystem path)."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield sock, str(path)


@pytest.fixture
def abstract_listener() -> Iterator[tuple[socket.socket, str]]:
    """The same in the abstract namespace, written ``@name`` as systemd does."""
    name = f"butlerfs-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        yield sock, "@" + name


def receive(sock: socket.socket, seconds: float = 2.0) -> bytes:
    sock.settimeout(seconds)
    return sock.recv(4096)


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    systemd.notify_ready()  # no error, no effect


def test_ready_reaches_a_socket_path(
    monkeypatch: pytest.MonkeyPatch, listener: tuple[socket.socket, str]
) -> None:
    sock, address = listener
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    systemd.notify_ready()
    assert receive(sock) == b"READY=1"


def test_ready_reaches_an_abstract_socket(
    monkeypatch: pytest.MonkeyPatch, abstract_listener: tuple[socket.socket, str]
) -> None:
    sock, address = abstract_listener
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    systemd.notify_ready()
    assert receive(sock) == b"READY=1"


def test_several_assignments_are_one_datagram(
    monkeypatch: pytest.MonkeyPatch, listener: tuple[socket.socket, str]
) -> None:
    sock, address = listener
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert systemd.notify("STATUS=serving", "READY=1") is True
    assert receive(sock) == b"STATUS=serving\nREADY=1"
    systemd.notify_stopping()
    assert receive(sock) == b"STOPPING=1"


def test_a_dead_socket_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    with caplog.at_level(logging.WARNING, logger="butlerfs"):
        systemd.notify_ready()
    assert "cannot notify systemd" in caplog.text


def test_an_unknown_address_family_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    with caplog.at_level(logging.WARNING, logger="butlerfs"):
        assert systemd.notify("READY=1") is False
    assert "not a unix socket" in caplog.text


@pytest.mark.mount
def test_the_daemon_is_ready_only_once_mounted(
    tmp_path: Path, abstract_listener: tuple[socket.socket, str]
) -> None:
    """What Type=notify relies on: READY=1 arrives, and the mount is already there."""
    require_fuse()
    aggregator = build_samples(tmp_path / "repos", visits=(1,), ccds=1)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    sock, address = abstract_listener
    env = dict(os.environ, NOTIFY_SOCKET=address, PYTHONPATH=str(PROJECT_ROOT))
    log = tmp_path / "daemon.log"
    with open(log, "wb") as output:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "butlerfs", "mount", aggregator, mountpoint, "-f"],
            stdout=output,
            stderr=output,
            env=env,
        )
    try:
        sock.settimeout(0.1)
        deadline = time.monotonic() + MOUNT_DEADLINE
        message = b""
        while not message:
            assert daemon.poll() is None, f"the daemon exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no READY=1:\n{log.read_text()}"
            if mount_entry(mountpoint) is not None:
                # Live: READY=1 is due now, not at the end of the deadline.
                deadline = min(deadline, time.monotonic() + READY_AFTER_MOUNT)
            try:
                message = sock.recv(4096)
            except TimeoutError:
                continue
        assert mount_entry(mountpoint) is not None, "READY=1 came before the mount was live"
        assert b"READY=1" in message.split(b"\n")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(MOUNT_DEADLINE) == 0, log.read_text()
        assert receive(sock) == b"STOPPING=1"
        wait_unmounted(mountpoint)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        force_unmount(mountpoint)
