"""Where ``butler get -o PATH`` writes, and how, so that it never destroys what is at PATH.

    -o -, /dev/stdout, /dev/stderr, /dev/fd/N   that descriptor of this process, directly
    a FIFO or a character device               opened and written into (never created,
                                                replaced or truncated)
    a regular file, or nothing yet              a temporary beside it, renamed over it only
                                                if the bytes match the recorded checksum;
                                                through a symbolic link, the link's target
    a directory (or a link to one), a block     refused with a message
    device, a socket, a dangling link

Renaming a temporary over a path replaces whatever the path names: run as root, ``-o
/dev/null`` would make /dev/null a regular file, and ``-o`` a FIFO would destroy the FIFO.
So only a regular file is ever replaced.  Bytes that go straight into a stream cannot be
taken back, so the file is checked against its checksum before the first byte is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from butler.cli.messages import CommandError

if TYPE_CHECKING:
    from butler.resolver import DatasetRef

COPY_CHUNK = 1 << 20
_STANDARD = {"-": 1, "/dev/stdout": 1, "/dev/stderr": 2}
_DESCRIPTOR_PATH = re.compile(r"/(?:dev/fd|proc/self/fd)/(\d+)\Z")


@dataclass(frozen=True)
class Destination:
    """What ``-o`` names: a descriptor of this process, a special file, or a file to replace."""

    text: str  # as the user typed it, for messages
    descriptor: int | None = None  # write into this descriptor of this process
    special: str | None = None  # open this FIFO or character device and write into it
    file: str | None = None  # replace this regular file (or create it)

    @property
    def is_stdout(self) -> bool:
        return self.descriptor == 1


def destination(output: str, name: str) -> Destination:
    """Decide how to write ``output`` without touching it; refuse what must not be written.

    ``name`` is the dataset's file name, suggested when ``output`` is a directory.
    """
    if output in _STANDARD:
        return Destination(output, descriptor=_STANDARD[output])
    match = _DESCRIPTOR_PATH.match(output)
    if match:
        return Destination(output, descriptor=int(match.group(1)))
    try:
        status = os.stat(output)  # follows symbolic links: what a write would reach
    except FileNotFoundError:
        if os.path.islink(output):
            raise CommandError(
                f"-o {output} is a symbolic link to {os.readlink(output)}, which does not "
                "exist; give the path of the file to write"
            ) from None
        return Destination(output, file=os.path.abspath(output))
    except OSError as exc:
        raise CommandError(f"cannot write {output}: {exc.strerror}") from None
    mode = status.st_mode
    linked = " (a symbolic link to one)" if os.path.islink(output) else ""
    if stat.S_ISREG(mode):
        return Destination(output, file=os.path.realpath(output))
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return Destination(output, special=output)
    if stat.S_ISDIR(mode):
        raise CommandError(
            f"-o {output} is a directory{linked}; give the path of the file to write, "
            f"e.g. -o {os.path.join(output, name)}"
        )
    kind = "a block device" if stat.S_ISBLK(mode) else "a socket or other special file"
    raise CommandError(
        f"-o {output} is {kind}{linked}; butler get writes a file, a FIFO, a character "
        "device or stdout (-o -)"
    )


def write_checked(ref: DatasetRef, target: Destination) -> None:
    """Copy the file of ``ref`` to ``target`` byte for byte, its checksum checked.

    A file is written to a temporary name beside it and renamed over it only if its
    sha256 is the recorded one, so nobody sees half a file or a corrupt one there.  A
    stream is written only after the file was checked, and checked again while written.
    """
    from butler.errors import ButlerError

    try:
        if target.file is not None:
            _replace_file(ref, target.file)
            return
        _check(ref, _sha256_of(ref.path), nothing_written=True)
        if target.descriptor is not None:
            with open(target.descriptor, "wb", closefd=False) as writer:
                _check(ref, _copy(ref.path, writer), nothing_written=False)
            return
        assert target.special is not None
        # No O_CREAT, no O_TRUNC: a special file is written into, never made or emptied.
        descriptor = os.open(target.special, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
        with open(descriptor, "wb") as writer:
            mode = os.fstat(descriptor).st_mode
            if not (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):  # replaced since destination()
                raise CommandError(f"{target.special} changed while it was opened; retry")
            _check(ref, _copy(ref.path, writer), nothing_written=False)
    except BrokenPipeError:
        if target.is_stdout:
            raise  # `butler get ... -o - | head`: the reader left; main() handles it
        raise CommandError(f"cannot write {target.text}: its reader went away") from None
    except OSError as exc:
        if isinstance(exc, ButlerError):
            raise
        failed = "read " + ref.path if exc.filename == ref.path else "write " + target.text
        raise CommandError(f"cannot {failed}: {exc.strerror or exc}") from None


def _replace_file(ref: DatasetRef, path: str) -> None:
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.butler-{os.getpid()}")
    try:
        with open(temporary, "wb") as writer:
            digest = _copy(ref.path, writer)
        _check(ref, digest, nothing_written=True)
        try:
            before = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISREG(before.st_mode):  # something else appeared meanwhile
                raise CommandError(f"{path} is no longer a regular file; nothing was written")
            # Keep what cp would keep of the file it writes over: its permissions and,
            # where this process may set it (root), its owner.
            os.chmod(temporary, stat.S_IMODE(before.st_mode))
            with contextlib.suppress(PermissionError):
                os.chown(temporary, before.st_uid, before.st_gid)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _copy(source: str, writer: IO[bytes]) -> str:
    """Copy ``source`` into ``writer``; the sha256 of what was copied."""
    digest = hashlib.sha256()
    with open(source, "rb") as reader:
        while chunk := reader.read(COPY_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
    writer.flush()
    return digest.hexdigest()


def _sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as reader:
        while chunk := reader.read(COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check(ref: DatasetRef, sha256: str, *, nothing_written: bool) -> None:
    from butler.errors import RepositoryError

    if sha256 != ref.sha256:
        raise RepositoryError(
            f"{ref.path} is corrupt (sha256 {sha256[:16]}…, the registry records "
            f"{ref.sha256[:16]}…); {'nothing was written; ' if nothing_written else ''}"
            f"run 'butler repair {ref.repository_path}'"
        )
