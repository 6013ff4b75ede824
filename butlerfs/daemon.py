"""One mount's life: open the Butler, mount, serve until unmounted or signalled, clean up.

    SIGTERM, SIGINT   unmount cleanly (FUSE session ends, mount removed, scratch deleted)
    SIGHUP            reopen the source (repositories, policies) and drop every kernel cache
    fusermount3 -u    the session ends; the same clean-up follows

:func:`serve` calls ``ready()`` once the mount answers a ``stat``, so whoever
waits for it (the parent of a daemonizing ``butlerfs mount``) returns only
when the mount works.  Errors before that are :class:`StartupError`: one line.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import resource
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from butler import Butler
from butler.aggregator import MemberItem
from butler.errors import ButlerError, ConfigError
from butler.layout import CONFIG
from butler.view import View
from butlerfs import systemd
from butlerfs.access import Access
from butlerfs.attributes import Owner
from butlerfs.handles import HandleTable
from butlerfs.inodes import InodeTable
from butlerfs.live import Invalidator, watch_changes
from butlerfs.logbook import Logbook
from butlerfs.operations import Operations
from butlerfs.passthrough import Passthrough
from butlerfs.scratch import ScratchArea
from butlerfs.tree import Settings, Tree
from butlerfs.worker import Worker

log = logging.getLogger("butlerfs")

_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
FS_TYPE = "fuse.butlerfs"


class StartupError(Exception):
    """The mount could not start; the message is the one line the user sees."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class MountConfig:
    mountpoint: str
    source: str | None = None
    inputs: tuple[MemberItem, ...] = ()
    outputs: tuple[MemberItem, ...] = ()
    policy: dict[str, object] = field(default_factory=dict)  # from --policy and -o policy.*
    fuse_options: frozenset[str] = frozenset()
    read_only: bool = False
    allowed_uids: frozenset[int] | None = None  # None: whoever the kernel lets in
    private_root: bool = False  # root directory 0700 (allow_other without allow_users)
    xattr: str = "notsup"  # -o xattr=MODE (butlerfs.options.XATTR_MODES)
    show_meta: bool = False  # -o showmeta
    autodefine: bool = False  # -o autodefine
    log_file: str | None = None  # where the log goes, shown in .butler/status
    passthrough: str = "auto"  # -o passthrough=MODE (butlerfs.passthrough.MODES)

    @property
    def fsname(self) -> str:
        return self.source or "butlerfs"


def open_butler(config: MountConfig) -> Butler:
    policy = config.policy or None
    if config.source is not None:
        if config.inputs or config.outputs:
            raise StartupError("give either SOURCE or --input/--output, not both", 2)
        return Butler(config.source, command_line_policy=policy)
    return Butler(
        inputs=list(config.inputs), outputs=list(config.outputs), command_line_policy=policy
    )


def open_view(config: MountConfig) -> View:
    return View(open_butler(config))


def check_mountpoint(mountpoint: str, view: View) -> None:
    """Refuse a mountpoint that is taken, or would hide a repository from the daemon itself."""
    if not os.path.isdir(mountpoint):
        raise StartupError(
            f"mountpoint {mountpoint} is not a directory (if a dead mount is there, "
            f"run 'fusermount3 -u {mountpoint}')"
        )
    if mounted_type(os.path.abspath(mountpoint)) == FS_TYPE:
        raise StartupError(
            f"{mountpoint} is already a butlerfs mount; unmount it first "
            f"('butlerfs umount {mountpoint}')"
        )
    target = os.path.realpath(mountpoint)
    for label, path in view.repository_paths():
        repo = os.path.realpath(path)
        if target == repo or target.startswith(repo + os.sep):
            raise StartupError(
                f"mountpoint {mountpoint} is inside repository {label} ({repo}); "
                "mount somewhere outside every repository",
                2,
            )
        if repo.startswith(target.rstrip(os.sep) + os.sep):
            raise StartupError(
                f"mountpoint {mountpoint} would hide repository {label} ({repo}) "
                "from the daemon; mount somewhere outside every repository",
                2,
            )


def serve(config: MountConfig, ready: Callable[[], None]) -> None:
    """Mount and serve until unmounted or signalled; StartupError if it cannot start."""
    try:
        view = open_view(config)
    except ConfigError as exc:  # a bad butler.yaml or aggregator file: exit status 2
        raise StartupError(f"cannot open {config.fsname}: {exc}", 2) from None
    except (ButlerError, OSError) as exc:
        raise StartupError(f"cannot open {config.fsname}: {exc}") from None
    check_mountpoint(config.mountpoint, view)
    _raise_file_limit()
    try:
        # A read-write mount keeps its drafts in its first output: made now if new.
        area = None if config.read_only else view.write_area()
    except (ButlerError, OSError) as exc:
        raise StartupError(f"cannot create the first output: {exc}") from None
    scratch = ScratchArea.for_output(area)
    for stale in scratch.remove_stale():
        log.info("removed the scratch directory %s of a dead mount", stale)
    inodes = InodeTable()
    invalidator = Invalidator(inodes)
    settings = Settings(
        os.path.abspath(config.mountpoint),
        config.fsname,
        config.read_only,
        config.private_root,
        show_meta=config.show_meta,
        autodefine=config.autodefine,
        log_file=config.log_file,
    )
    logbook = Logbook()
    logging.getLogger().addHandler(logbook)  # the library's warnings too
    tree = Tree(
        view,
        lambda: open_view(config),
        Worker(),
        scratch,
        settings,
        invalidator.changed,
        logbook,
    )
    owner = Owner(os.getuid(), os.getgid())
    passthrough = Passthrough(config.passthrough)
    operations = Operations(
        tree,
        inodes,
        HandleTable(),
        owner,
        Access(config.allowed_uids),
        config.xattr,
        passthrough,
    )
    # Signals wait (blocked) until the trio loop can take them: a SIGTERM between mount
    # and loop must still unmount cleanly.
    signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED_SIGNALS)
    with _stderr_captured() as libfuse_said:
        try:
            pyfuse3.init(operations, config.mountpoint, set(config.fuse_options))
        except RuntimeError as exc:
            failed: RuntimeError | None = exc
        else:
            failed = None
    if failed is not None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED_SIGNALS)
        reason = " ".join(libfuse_said()) or str(failed)
        raise StartupError(f"cannot mount on {config.mountpoint}: {reason}")
    _tune_garbage_collector()
    try:
        failure = trio.run(_serve, config, tree, invalidator, passthrough, ready)
    finally:
        systemd.notify_stopping()
        pyfuse3.close(unmount=True)
        scratch.remove()
        tree.butler.close()
        logging.getLogger().removeHandler(logbook)
        log.info("unmounted %s", config.mountpoint)
    if failure is not None:
        raise failure


def _probe_files(view: View) -> list[Path]:
    """Files on the repositories' file systems to try passthrough with (their config)."""
    return [path / CONFIG for _, path in view.repository_paths()]


def _raise_file_limit() -> None:
    """Every open dataset holds a descriptor in the daemon: raise the soft limit of open
    files to the hard one (often 1024 → 524288), so that it is not the first to run out;
    if it still does, the client sees EMFILE (butlerfs.errors)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


#: gc.set_threshold for the daemon: a young collection every 50,000 allocations instead
#: of 700, and full ones rarely.
GC_THRESHOLDS = (50_000, 20, 100)


def _tune_garbage_collector() -> None:
    """The entry caches hold a few hundred thousand objects, none of them in a cycle.

    With the default thresholds a ``find`` over 10^5 datasets spent a sixth of the
    daemon's time in full collections that traverse them all and free nothing (the
    cached entries go by reference counting when evicted).  What is loaded at start-up
    (the library, astropy, numpy) is frozen out of collections for good.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@contextlib.contextmanager
def _stderr_captured() -> Iterator[Callable[[], list[str]]]:
    """libfuse prints its reasons to fd 2; catch them for the one-line error instead."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        lines: list[str] = []
        try:
            yield lambda: lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines.extend(capture.read().decode(errors="replace").split("\n"))
            lines[:] = [line.strip() for line in lines if line.strip()]


def mounted_type(mountpoint: str) -> str | None:
    """The filesystem type mounted at ``mountpoint`` (the last mount there wins)."""
    found = None
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and _unescape(fields[1]) == mountpoint:
                found = fields[2]
    return found


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


async def _serve(
    config: MountConfig,
    tree: Tree,
    invalidator: Invalidator,
    passthrough: Passthrough,
    ready: Callable[[], None],
) -> StartupError | None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_fuse_main, nursery.cancel_scope)
        await nursery.start(_signals, tree, invalidator)
        nursery.start_soon(invalidator.run)
        nursery.start_soon(watch_changes, tree, invalidator)
        # The mount is live once it answers: only then may `mount` return.
        try:
            await trio.to_thread.run_sync(os.stat, config.mountpoint)
        except OSError as exc:
            nursery.cancel_scope.cancel()
            return StartupError(f"the mount on {config.mountpoint} does not answer: {exc}")
        # The kernel has answered INIT: whether passthrough was granted is known now.
        passthrough.start(_probe_files(tree.view))
        ready()
        log.info("mounted %s on %s", config.fsname, config.mountpoint)
    return None


async def _fuse_main(scope: trio.CancelScope) -> None:
    await pyfuse3.main()
    scope.cancel()  # unmounted from outside (fusermount3 -u): stop the other tasks


async def _signals(
    tree: Tree,
    invalidator: Invalidator,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(*_HANDLED_SIGNALS) as received:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED_SIGNALS)
        task_status.started()
        async for number in received:
            if number == signal.SIGHUP:
                await _reload(tree, invalidator)
                continue
            log.info("%s: unmounting", signal.Signals(number).name)
            pyfuse3.terminate()
            return


async def _reload(tree: Tree, invalidator: Invalidator) -> None:
    try:
        await tree.reload()
    except (ButlerError, OSError) as exc:
        log.error("SIGHUP: reloading failed, keeping the previous configuration: %s", exc)
        return
    except Exception as exc:  # a library bug must not end the mount either
        log.error(
            "SIGHUP: reloading failed (internal error %s: %s), keeping the previous configuration",
            type(exc).__name__,
            exc,
        )
        return
    invalidator.everything()
    log.info("SIGHUP: reloaded the repositories and policies")
