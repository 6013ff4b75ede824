"""Readiness for systemd: tell a ``Type=notify`` unit that the mount is live.

The protocol (sd_notify(3)) is one datagram of newline-separated ``KEY=VALUE``
assignments sent to the ``AF_UNIX`` socket that systemd names in
``$NOTIFY_SOCKET``: a filesystem path, or a name in the abstract namespace
written with a leading ``@`` (a NUL byte on the wire).  It is small enough to
speak directly, which spares the daemon a dependency on libsystemd.

Without ``$NOTIFY_SOCKET`` (started by hand, by ``mount``, or by a unit that is
not ``Type=notify``) every call does nothing.  A failure to send is logged and
swallowed: the mount already works, and systemd, which is the only one
listening, notices a missing READY=1 by itself (``TimeoutStartSec=``).

``mount/butlerfs@.service`` sets ``NotifyAccess=main``: systemd accepts the
message only from the unit's main process, so call these from the daemon that
``ExecStart=`` started (any thread), never from a forked child.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("butlerfs")

ENVIRONMENT_VARIABLE = "NOTIFY_SOCKET"


def notify(*assignments: str) -> bool:
    """Send ``KEY=VALUE`` assignments to systemd; True if a message was sent."""
    address = os.environ.get(ENVIRONMENT_VARIABLE, "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        # systemd 254+ may also name an AF_VSOCK address ("vsock:CID:PORT"); a
        # mount daemon never runs inside such a VM guest, so it is not spoken here.
        log.warning("%s=%s is not a unix socket; readiness not sent", ENVIRONMENT_VARIABLE, address)
        return False
    message = "\n".join(assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", os.environ[ENVIRONMENT_VARIABLE], exc)
        return False
    return True


def notify_ready() -> None:
    """Tell systemd the service is up.  Call it once the mountpoint is a live mount."""
    notify("READY=1")


def notify_stopping() -> None:
    """Tell systemd a clean shutdown (unmount) has begun."""
    notify("STOPPING=1")
