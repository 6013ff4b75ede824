"""File operations confined to one repository's tree, never through a symbolic link.

A member repository may be writable by people the reader (or a root-run mount
daemon) should not trust: whoever can write it can plant a symbolic link where
a dataset, a template directory or ``.butler/versions/...`` should be.  So the
library never resolves a path inside a repository by name from ``/``: every
operation starts from a descriptor of the repository's root and resolves the
rest beneath it, refusing any symbolic link on the way (``openat2`` with
``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``; on kernels without ``openat2``, a walk
of ``O_NOFOLLOW`` opens, one component at a time).  The root itself is trusted:
it is the path the user or admin named.

A link found where the butler expects its own file or directory raises
:class:`butler.errors.UnsafePathError`, which ``butler verify`` also reports.

Paths are relative to the root, ``/``-separated, with no ``.``, ``..`` or empty
components (template paths and :mod:`butler.layout` names always are).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator

from butler.errors import UnsafePathError

_SYS_OPENAT2 = 437  # the same number on every Linux architecture
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE_CACHED = 0x20
_CONFINED = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


class _Openat2:
    """``openat2(2)`` through ctypes (Python has no wrapper); None where the kernel lacks it."""

    def __init__(self) -> None:
        self._syscall: Callable[..., int] | None = None
        self.available = True
        self._lock = threading.Lock()

    def _load(self) -> Callable[..., int] | None:
        with self._lock:
            if self._syscall is None and self.available:
                try:
                    function = ctypes.CDLL(None, use_errno=True).syscall
                except (OSError, AttributeError):
                    self.available = False
                    return None
                function.restype = ctypes.c_long
                function.argtypes = (
                    ctypes.c_long,
                    ctypes.c_int,
                    ctypes.c_char_p,
                    ctypes.c_void_p,
                    ctypes.c_size_t,
                )
                self._syscall = function
        return self._syscall

    def __call__(self, dir_fd: int, path: str, flags: int, mode: int, resolve: int) -> int | None:
        """The new fd; None if openat2 is missing; OSError for any other failure."""
        syscall = self._syscall or self._load()
        if syscall is None:
            return None
        creates = flags & os.O_CREAT or flags & os.O_TMPFILE == os.O_TMPFILE
        how = _OpenHow(flags, mode if creates else 0, resolve)
        fd = syscall(
            _SYS_OPENAT2, dir_fd, os.fsencode(path), ctypes.addressof(how), ctypes.sizeof(how)
        )
        if fd >= 0:
            return int(fd)
        number = ctypes.get_errno()
        if number in (errno.ENOSYS, errno.EPERM) and not resolve & _RESOLVE_CACHED:
            self.available = False  # no openat2 (Linux < 5.6), or a seccomp filter refuses it
            return None
        raise OSError(number, os.strerror(number), path)


openat2 = _Openat2()

_AT_EACCESS = 0x200
_libc: ctypes.CDLL | None = None


def write_denied(dir_fd: int) -> int:
    """0 if the process may create entries in the directory ``dir_fd``, else the errno
    that says why not: EACCES (permission), EROFS (a read-only mount, bind mounts
    included), EPERM (immutable).  ``faccessat(AT_EACCESS)``: os.access only says no."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.faccessat.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int)
        _libc.faccessat.restype = ctypes.c_int
    if _libc.faccessat(dir_fd, b".", os.W_OK | os.X_OK, _AT_EACCESS) == 0:
        return 0
    return ctypes.get_errno() or errno.EACCES


def _components(path: str) -> list[str]:
    parts = path.split("/")
    if not path or any(part in ("", ".", "..") for part in parts) or "\x00" in path:
        raise UnsafePathError(
            f"{path!r} is not a plain relative path inside a repository (a registry or "
            "journal naming it is damaged or forged); run 'butler verify' on the repository",
            errno=errno.EINVAL,
        )
    return parts


def _unsafe(root: str, path: str, what: str) -> UnsafePathError:
    return UnsafePathError(
        f"{os.path.join(root, path)}: {what}; the butler never follows links inside a "
        "repository. Remove it (run 'butler verify' on the repository to list every such "
        "entry) and retry",
        errno=errno.ELOOP,
    )


class Root:
    """A repository's root directory, held open; every path below it is resolved safely."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._mounts: dict[tuple[int, int], str] = {}
        self._local = threading.local()

    def mount_of(self, fd: int) -> str:
        """The mount id of the open directory ``fd`` (``/proc/self/fdinfo``; remembered
        per directory: a mount under a repository's tree is an admin's rare act), "" if
        it cannot be told."""
        found = os.fstat(fd)
        key = (found.st_dev, found.st_ino)
        known = self._mounts.get(key)
        if known is not None:
            return known
        mount = ""
        try:
            with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as info:
                for line in info:
                    if line.startswith("mnt_id:"):
                        mount = line.split()[1]
                        break
        except OSError:
            return ""  # no /proc: the rename itself will say
        if len(self._mounts) > 65_536:
            self._mounts.clear()
        self._mounts[key] = mount
        return mount

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:  # a repository dropped unclosed must not keep its directory
        with contextlib.suppress(Exception):
            self.close()

    def absolute(self, relative: str) -> str:
        """For messages and for tools that need a name; never opened by the butler itself."""
        return os.path.join(self.path, relative)

    # -- opening ---------------------------------------------------------------

    def open(self, relative: str, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
        """An fd on ``relative`` (created if ``flags`` say so), never through a link."""
        _components(relative)  # openat2 would refuse ".." too, but not say why
        flags |= os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = openat2(self.fd, relative, flags, mode, _CONFINED)
        except OSError as exc:
            raise self._explain(exc, relative) from None
        if fd is not None:
            return fd
        parent, name = self._walk_parent(relative)
        try:
            return os.open(name, flags, mode, dir_fd=parent)
        except OSError as exc:
            raise self._explain(exc, relative) from None
        finally:
            os.close(parent)

    def open_cached(self, relative: str) -> int | None:
        """Like ``open(relative)`` for reading, but only if the kernel need not wait for the
        disk to resolve it (``RESOLVE_CACHED``); None otherwise.  For hot paths."""
        try:
            return openat2(
                self.fd,
                relative,
                os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                0,
                _CONFINED | _RESOLVE_CACHED,
            )
        except OSError:
            return None  # EAGAIN: not all cached; anything else: the slow path says it

    @contextlib.contextmanager
    def directory(
        self, relative: str, create: bool = False, made: list[str] | None = None
    ) -> Iterator[int]:
        """An fd on the directory ``relative`` ("" for the root), made first if ``create``
        (each directory made is appended to ``made``, parents first)."""
        kept: dict[str, int] | None = getattr(self._local, "kept", None)
        if kept is not None:
            fd = kept.get(relative)
            if fd is None:
                fd = kept[relative] = self.open_directory(relative, create, made)
            yield fd
            return
        fd = self.open_directory(relative, create, made)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def keeping_directories(self) -> Iterator[None]:
        """While inside, this thread's directory lookups keep their fds and reuse them
        (a batch of puts, under the repository lock, resolves the same few directories
        dozens of times); they are closed at the end.  Only this thread sees them."""
        if getattr(self._local, "kept", None) is not None:
            yield  # nested: the outer one closes them
            return
        kept: dict[str, int] = {}
        self._local.kept = kept
        try:
            yield
        finally:
            self._local.kept = None
            for fd in kept.values():
                os.close(fd)

    def open_directory(
        self, relative: str, create: bool = False, made: list[str] | None = None
    ) -> int:
        flags = os.O_RDONLY | os.O_DIRECTORY
        if relative == "":
            return os.open(".", flags | os.O_CLOEXEC, dir_fd=self.fd)
        if not create:
            return self.open(relative, flags)
        try:
            return self.open(relative, flags)
        except FileNotFoundError:
            pass
        fd = os.open(".", flags | os.O_CLOEXEC, dir_fd=self.fd)
        done: list[str] = []
        try:
            for part in _components(relative):
                done.append(part)
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                else:
                    if made is not None:
                        made.append("/".join(done))
                try:
                    child = os.open(part, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    raise self._explain(exc, "/".join(done)) from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _walk_parent(self, relative: str) -> tuple[int, str]:
        """(fd of the parent directory, last component), walking without following links."""
        *parents, name = _components(relative)
        fd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.fd)
        done: list[str] = []
        try:
            for part in parents:
                done.append(part)
                try:
                    child = os.open(
                        part,
                        os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                        dir_fd=fd,
                    )
                except OSError as exc:
                    raise self._explain(exc, "/".join(done)) from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd, name

    @contextlib.contextmanager
    def parent(self, relative: str, create: bool = False) -> Iterator[tuple[int, str]]:
        """(fd of ``relative``'s directory, its last component): for the ``*at`` calls."""
        directory, _, name = relative.rpartition("/")
        with self.directory(directory, create) as fd:
            yield fd, name

    def _explain(self, exc: OSError, relative: str) -> OSError:
        """ELOOP/ENOTDIR/EXDEV from a confined lookup: say which entry is not ours."""
        if exc.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
            link = self._first_link(relative)
            if link is not None:
                return _unsafe(self.path, link, "a symbolic link is in the way")
        if exc.errno in (errno.ELOOP, errno.EXDEV):
            return _unsafe(self.path, relative, "a symbolic link is in the way")
        if exc.errno == errno.ENOTDIR:
            return OSError(
                errno.ENOTDIR,
                "a file is where a directory must be (remove or move it, then retry)",
                self.absolute(relative),
            )
        exc.filename = self.absolute(relative)
        return exc

    def _first_link(self, relative: str) -> str | None:
        """The first component of ``relative`` that is a symbolic link, if any."""
        fd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.fd)
        done: list[str] = []
        try:
            for part in relative.split("/"):
                done.append(part)
                try:
                    found = os.stat(part, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    return None
                if stat.S_ISLNK(found.st_mode):
                    return "/".join(done)
                if not stat.S_ISDIR(found.st_mode):
                    return None
                child = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = child
        finally:
            os.close(fd)
        return None

    # -- entries -----------------------------------------------------------------

    def lstat(self, relative: str) -> os.stat_result:
        with self.parent(relative) as (fd, name):
            return os.stat(name, dir_fd=fd, follow_symlinks=False)

    def exists(self, relative: str) -> bool:
        try:
            self.lstat(relative)
        except FileNotFoundError:
            return False
        return True

    def link(self, source: str, destination: str) -> None:
        """A second name for ``source`` (a regular file the butler made)."""
        with self.parent(source) as (src_fd, src_name), self.parent(destination) as (fd, name):
            os.link(src_name, name, src_dir_fd=src_fd, dst_dir_fd=fd, follow_symlinks=False)

    def rename(self, source: str, destination: str) -> None:
        with self.parent(source) as (src_fd, src_name), self.parent(destination) as (fd, name):
            os.rename(src_name, name, src_dir_fd=src_fd, dst_dir_fd=fd)

    def rmdir(self, relative: str) -> None:
        """Remove an empty directory (nothing if it is gone or holds something)."""
        with contextlib.suppress(FileNotFoundError, OSError), self.parent(relative) as (fd, name):
            os.rmdir(name, dir_fd=fd)
        kept: dict[str, int] | None = getattr(self._local, "kept", None)
        if kept is not None and relative in kept:  # its fd names a directory now gone
            os.close(kept.pop(relative))

    def unlink(self, relative: str, missing_ok: bool = True) -> None:
        try:
            with self.parent(relative) as (fd, name):
                os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def listdir(self, relative: str) -> list[str]:
        with self.directory(relative) as fd:
            return os.listdir(fd)

    def check_regular(self, relative: str) -> os.stat_result | None:
        """The lstat of ``relative`` if it is a regular file, None if absent; else raise."""
        try:
            found = self.lstat(relative)
        except FileNotFoundError:
            return None
        if stat.S_ISREG(found.st_mode):
            return found
        if stat.S_ISLNK(found.st_mode):
            raise _unsafe(self.path, relative, "a symbolic link is where a dataset file must be")
        kind = "a directory" if stat.S_ISDIR(found.st_mode) else "a special file"
        raise OSError(
            errno.EISDIR if stat.S_ISDIR(found.st_mode) else errno.EEXIST,
            f"{kind} is where a dataset file must go (move it away, then retry)",
            self.absolute(relative),
        )


def fd_path(fd: int) -> str:
    """A name that reopens exactly the file ``fd`` is open on (for libraries that want a
    path, such as astropy): no path lookup can be redirected on the way."""
    return f"/proc/self/fd/{fd}"
