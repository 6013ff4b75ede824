"""Why a file is being closed: is the task that closes it exiting, and was it killed?

The kernel closes a process's files when it exits, and FUSE turns each close into
a ``flush``, which commits a draft (butlerfs.writes).  A process killed by a
signal in the middle of writing (``cp`` killed with SIGKILL, a job killed by
its batch system) must not have its half-written file put: the flush of a
killed writer discards the draft.  A process that exits normally without
closing its files still commits, as on any filesystem.

The kernel shows an exiting task's state in ``/proc/<pid>/stat`` while it closes
its files (proc(5)):

- field 9, ``flags``: ``PF_EXITING`` (0x4) is set from the start of the exit,
  before the files are closed; ``PF_SIGNALED`` (0x400) when the task died of a
  fatal signal;
- field 52, ``exit_code``: the status ``waitpid`` will report, set before the
  files are closed: the signal number in its low 7 bits when killed, the exit
  status shifted left by 8 otherwise.  Shown only to a reader allowed to trace
  the task (the same user, or root); others read 0.

A close is also not the last one when the closing process still has the file
open through another descriptor — ``dup``, or numpy's ``tofile``, which writes
through a duplicate it then closes: :func:`holds_for_writing` tells, from
``/proc/<pid>/fdinfo`` (``flags`` and ``ino`` of each descriptor), so that the
draft is committed at the close of the last descriptor, not of the first.

The exit code decides when it can be read: in a multithreaded process that
calls ``exit()``, the other threads are ended by an internal SIGKILL and carry
``PF_SIGNALED`` although the process exits normally, and any of them may be
the one that closes the files last.  ``PF_SIGNALED`` decides only when the exit
code is hidden from the daemon (another user's process under ``allow_other``).
"""

from __future__ import annotations

import enum
import os

PF_EXITING = 0x4
PF_SIGNALED = 0x400

_FLAGS = 9 - 3  # fields counted after the ")" that ends the command name, from field 3
_EXIT_CODE = 52 - 3


class Exit(enum.Enum):
    RUNNING = "running"  # an ordinary close
    EXITING = "exiting"  # a normal exit, the kernel closing what it left open
    KILLED = "killed"  # ended by a signal: what it was writing is not finished
    UNKNOWN = "unknown"  # gone, or /proc cannot tell: treated as an ordinary close


def exit_of(pid: int) -> Exit:
    """How task ``pid`` (a thread id is fine) stands, from ``/proc/<pid>/stat``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            text = file.read()
        fields = text[text.rindex(b")") + 2 :].split()
        flags = int(fields[_FLAGS])
        code = int(fields[_EXIT_CODE]) if len(fields) > _EXIT_CODE else 0
    except (OSError, ValueError, IndexError):
        return Exit.UNKNOWN
    if not flags & PF_EXITING:
        return Exit.RUNNING
    if code & 0x7F:
        return Exit.KILLED
    if code or _sees_exit_code(pid):
        return Exit.EXITING
    return Exit.KILLED if flags & PF_SIGNALED else Exit.EXITING


def _sees_exit_code(pid: int) -> bool:
    """May this process read task ``pid``'s exit code (root, or the same user)?"""
    if os.geteuid() == 0:
        return True
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.geteuid()
    except OSError:
        return False


def holds_for_writing(pid: int, inode: int, most: int | None = None) -> bool | None:
    """Has task ``pid``'s process a descriptor open for writing on inode ``inode``?

    Reads ``/proc/<pid>/fdinfo/*`` (one small read per descriptor; nothing here asks
    the mount itself, so it cannot wait for the daemon).  False when it cannot tell;
    None when the process has more than ``most`` descriptors (the caller then asks
    again in a worker thread, without ``most``).
    """
    directory = f"/proc/{pid}/fdinfo"
    try:
        descriptors = os.listdir(directory)
    except OSError:
        return False
    if most is not None and len(descriptors) > most:
        return None
    wanted = f"ino:\t{inode}\n"
    for descriptor in descriptors:
        try:
            with open(f"{directory}/{descriptor}", encoding="ascii", errors="replace") as file:
                info = file.read()
        except OSError:
            continue  # closed meanwhile
        if wanted not in info:
            continue
        flags = next((line for line in info.splitlines() if line.startswith("flags:")), "")
        if int(flags.partition(":")[2].strip() or "0", 8) & os.O_ACCMODE != os.O_RDONLY:
            return True
    return False
