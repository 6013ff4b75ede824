"""The ``butlerfs`` command (SPEC §7).

    butlerfs mount [SOURCE] MOUNTPOINT [-o OPT,...] [-f] [-d] [--input P[:L]]... [--output P[:L]]...
    butlerfs umount MOUNTPOINT
    butlerfs SOURCE MOUNTPOINT -o OPTS          the form mount.fuse3 (fstab) runs

Without ``-f`` the command forks, and the parent exits 0 only once the child's
mount answers (or prints the child's one-line error and exits non-zero), so
``mount``, systemd and scripts can rely on the mount the moment it returns.
``-d`` logs every request and stays in the foreground (as with FUSE's own -d).

Exit codes: 0 success; 1 the mount could not start or unmount; 2 usage or
configuration errors (including a mountpoint inside a repository).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import logging.handlers
import os
import pwd
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from butler.aggregator import MemberItem
from butler.errors import ButlerError, ConfigError
from butler.policy import assignments_to_policy
from butlerfs import __version__, daemon, options, systemd
from butlerfs.daemon import FS_TYPE, MountConfig, StartupError, mounted_type
from butlerfs.logbook import default_log_file

log = logging.getLogger("butlerfs")

COMMANDS = ("mount", "umount")
UMOUNT_WAIT_SECONDS = 10.0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] not in (*COMMANDS, "-h", "--help", "--version"):
        arguments.insert(0, "mount")  # butlerfs SOURCE MOUNTPOINT -o OPTS (mount.fuse3)
    parser, commands = _parser()
    if arguments and arguments[0] in commands:
        # Intermixed: options may come between SOURCE and MOUNTPOINT (and after both).
        parsed = commands[arguments[0]].parse_intermixed_args(arguments[1:])
    else:
        parsed = parser.parse_args(arguments)
    try:
        code: int = parsed.run(parsed)
    except StartupError as exc:
        print(f"butlerfs: {exc}", file=sys.stderr)
        return exc.exit_code
    except ConfigError as exc:
        print(f"butlerfs: {exc}", file=sys.stderr)
        return 2
    return code


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="butlerfs", description="Mount an aggregator of butler repositories (FUSE)."
    )
    parser.add_argument("--version", action="version", version=f"butlerfs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    mount = commands.add_parser(
        "mount",
        help="mount SOURCE (an aggregator file or a repository) on MOUNTPOINT",
        description="Mount SOURCE (an aggregator YAML file or a repository) on MOUNTPOINT, "
        "or an aggregator built from --input/--output.",
    )
    mount.add_argument("paths", nargs="+", metavar="[SOURCE] MOUNTPOINT")
    mount.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPT[,OPT...]",
        help="mount options: ro, rw, allow_other, fsname=, policy.KEY=VALUE, showmeta, "
        "autodefine, log=FILE, xattr=notsup|nosys, passthrough=auto|off, ... (fstab options "
        "such as noauto, nofail, _netdev, x-systemd.* are accepted and ignored)",
    )
    mount.add_argument("-f", dest="foreground", action="store_true", help="stay in the foreground")
    mount.add_argument("-d", dest="debug", action="store_true", help="debug logging (implies -f)")
    mount.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="PATH[:LABEL]",
        help="an input repository, in search order (repeatable)",
    )
    mount.add_argument(
        "--output",
        action="append",
        default=[],
        metavar="PATH[:LABEL]",
        help="an output repository, created if missing (repeatable)",
    )
    mount.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="policy override, e.g. on_exists=error (repeatable)",
    )
    mount.set_defaults(run=_mount)
    umount = commands.add_parser(
        "umount", help="unmount MOUNTPOINT", description="Unmount a butlerfs mount."
    )
    umount.add_argument("mountpoint", metavar="MOUNTPOINT")
    umount.set_defaults(run=_umount)
    return parser, {"mount": mount, "umount": umount}


# -- mount ---------------------------------------------------------------------


def _mount(parsed: argparse.Namespace) -> int:
    config = _config(parsed)
    foreground = parsed.foreground or parsed.debug
    _log_to_stderr(parsed.debug)
    if foreground:
        # systemd's Type=notify units run -f: READY=1 once the mount answers.  The log
        # goes to stderr (the journal, under systemd), and to -o log=FILE if given.
        if config.log_file is not None:
            _log_to_file(config.log_file, also=True)
        else:
            config = dataclasses.replace(config, log_file="stderr")
        daemon.serve(config, ready=systemd.notify_ready)
        return 0
    # A background daemon logs to a file (and syslog): opened here, before the fork, so
    # that a log that cannot be written is said at once, and where it is can be printed.
    explicit = config.log_file
    where = explicit or str(default_log_file(config.mountpoint))
    try:
        _log_to_file(where, also=False)
    except OSError as exc:
        if explicit is not None:
            raise ConfigError(
                f"cannot write the log file {where}: {exc.strerror}; give another with -o log=FILE"
            ) from None
        print(
            f"butlerfs: cannot write the log file {where} ({exc.strerror}): logging to "
            "syslog only; give a log file with -o log=FILE",
            file=sys.stderr,
        )
        where = "syslog"
    config = dataclasses.replace(config, log_file=where)
    code = _daemonize(config)
    if code == 0:
        print(f"butlerfs: mounted {config.fsname} on {config.mountpoint}; log: {where}")
    return code


def _config(parsed: argparse.Namespace) -> MountConfig:
    paths: list[str] = parsed.paths
    if len(paths) > 2:
        raise ConfigError(f"too many paths {paths}: give [SOURCE] MOUNTPOINT")
    source = os.path.abspath(paths[0]) if len(paths) == 2 else None
    if source is None and not (parsed.input or parsed.output):
        raise ConfigError("give SOURCE (an aggregator file or a repository) or --input/--output")
    mount_options = options.parse(parsed.options, source or "butlerfs")
    try:
        policy = assignments_to_policy([*parsed.policy, *mount_options.policy])
    except ButlerError as exc:
        raise ConfigError(str(exc)) from None
    return MountConfig(
        allowed_uids=_allowed_uids(mount_options),
        private_root=mount_options.allow_other and not mount_options.allow_users,
        mountpoint=paths[-1],
        source=source,
        inputs=tuple(_member(text) for text in parsed.input),
        outputs=tuple(_member(text) for text in parsed.output),
        policy=policy,
        fuse_options=mount_options.fuse,
        read_only=mount_options.read_only,
        xattr=mount_options.xattr,
        show_meta=mount_options.show_meta,
        autodefine=mount_options.autodefine,
        passthrough=mount_options.passthrough,
        log_file=None
        if mount_options.log_file is None
        else os.path.abspath(mount_options.log_file),
    )


def _allowed_uids(mount_options: options.MountOptions) -> frozenset[int] | None:
    """With allow_other: the owner, root and allow_users; None: the kernel decides alone."""
    if not mount_options.allow_other:
        return None
    uids = {os.getuid(), 0}
    for name in mount_options.allow_users:
        if name.isdigit():
            uids.add(int(name))
            continue
        try:
            uids.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            raise ConfigError(f"allow_users: no user {name!r} on this host") from None
    return frozenset(uids)


def _member(text: str) -> MemberItem:
    """``PATH[:LABEL]``; a colon followed by something with a slash is part of the path."""
    path, sep, label = text.rpartition(":")
    if sep and path and label and "/" not in label:
        return {"path": os.path.abspath(path), "label": label}
    return {"path": os.path.abspath(text)}


def _daemonize(config: MountConfig) -> int:
    """Fork; the parent waits for the child's mount to answer, then exits."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read().decode(errors="replace")
        if message == "ok":
            return 0
        number, _, text = message.partition(" ")
        if not number.isdigit():
            number, text = "1", "the daemon died before the mount was ready; run with -f to see why"
        print(f"butlerfs: {text}", file=sys.stderr)
        return int(number)
    os.close(read_end)
    os.setsid()
    _redirect(0, os.O_RDONLY)
    _redirect(1, os.O_WRONLY)

    def ready() -> None:
        _log_to_syslog()  # in addition to the log file
        _redirect(2, os.O_WRONLY)
        os.write(write_end, b"ok")
        os.close(write_end)

    code = 0
    try:
        daemon.serve(config, ready)
    except StartupError as exc:
        os.write(write_end, f"{exc.exit_code} {exc}".encode())
        code = exc.exit_code
    except BaseException:
        log.exception("the daemon failed")
        code = 1
    os._exit(code)


def _redirect(fd: int, flags: int) -> None:
    null = os.open(os.devnull, flags)
    os.dup2(null, fd)
    os.close(null)


_FORMAT = "%(asctime)s butlerfs[%(process)d] %(levelname)s %(message)s"


def _log_to_stderr(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def _log_to_file(path: str, *, also: bool) -> None:
    """Log to the file ``path`` (created 0600, its directory 0700 if missing), besides
    the handlers there are (``also``) or instead of them.  Rotation-safe: the file is
    reopened when logrotate moves it."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600))
    handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    if also:
        root.addHandler(handler)
    else:
        root.handlers[:] = [handler]


def _log_to_syslog() -> None:
    """A daemon has no terminal: besides its log file, its log goes to syslog (journald),
    if there is one."""
    root = logging.getLogger()
    root.handlers[:] = [
        h
        for h in root.handlers
        if not isinstance(h, logging.StreamHandler) or isinstance(h, logging.FileHandler)
    ]
    try:
        handler = logging.handlers.SysLogHandler("/dev/log")
    except OSError:
        return
    handler.ident = f"butlerfs[{os.getpid()}]: "
    root.addHandler(handler)


# -- umount --------------------------------------------------------------------


def _umount(parsed: argparse.Namespace) -> int:
    mountpoint = os.path.abspath(parsed.mountpoint)
    fs_type = mounted_type(mountpoint)
    if fs_type is None:
        print(f"butlerfs: {mountpoint} is not mounted", file=sys.stderr)
        return 1
    if fs_type != FS_TYPE:
        print(f"butlerfs: {mountpoint} is a {fs_type} mount, not butlerfs", file=sys.stderr)
        return 1
    pid = _daemon_pid(mountpoint)
    result = subprocess.run(
        ["fusermount3", "-u", mountpoint], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        reason = result.stderr.strip() or f"fusermount3 exited {result.returncode}"
        print(f"butlerfs: cannot unmount {mountpoint}: {reason}", file=sys.stderr)
        return 1
    if pid is not None and not _wait_exit(pid, UMOUNT_WAIT_SECONDS):
        print(f"butlerfs: unmounted, but daemon {pid} is still running", file=sys.stderr)
        return 1
    return 0


def _daemon_pid(mountpoint: str) -> int | None:
    """The serving daemon's pid, from .butler/status; None if it does not answer in 2 s."""
    found: list[int] = []

    def read() -> None:
        try:
            status = json.loads(Path(mountpoint, ".butler", "status").read_text())
            found.append(int(status["mount"]["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass

    # A hung daemon must not hang umount too: the read is abandoned after the timeout.
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(2.0)
    return found[0] if found else None


def _wait_exit(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (FileNotFoundError, IndexError):
            return True
        if state in ("Z", "X"):  # exited; only its parent has yet to reap it
            return True
        time.sleep(0.05)
    return False
