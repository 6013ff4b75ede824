"""Who may use the mount: checks on the requesting uid (SPEC §8, per-user views).

Without ``allow_other`` the kernel lets only the mounting user in, and nothing
here is needed.  With it, the kernel would let everyone in, so every request
that names its caller is checked: the mounting user, root, and the users of
``-o allow_users=NAME[:NAME...]`` pass; anyone else gets EACCES.  Requests
without a caller (read, write, release...) act on a handle whose ``open`` was
checked.

The kernel answers ``stat`` from its cache without asking the daemon, so with
``allow_other`` alone the mount's root directory is also shown as ``0700``:
the kernel's own permission check (``default_permissions`` is always on) then
keeps other users out even of cached entries.  With ``allow_users`` the root
stays ``0755`` and a listed user's ``ls`` may warm entries that an unlisted
user could then ``stat`` (names and sizes, never contents: ``open`` and
``opendir`` always reach the daemon).
"""

from __future__ import annotations

import errno
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import ParamSpec, Protocol, TypeVar, cast

import pyfuse3

from butlerfs.errors import refusal

P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Awaitable[object]])

_CHECKS_ITSELF = "__butlerfs_checks_caller__"


class Access:
    """The uids allowed in, or None: whoever the kernel lets in."""

    def __init__(self, uids: frozenset[int] | None) -> None:
        self.uids = uids

    def admits(self, uid: int) -> bool:
        return self.uids is None or uid in self.uids

    def check(self, uid: int) -> None:
        if self.uids is not None and uid not in self.uids:
            raise refusal(
                errno.EACCES,
                f"uid {uid} may not use this mount; the owner may add it with -o allow_users=NAME",
            )


class _Checked(Protocol):
    callers: Access


def checks_caller_itself(handler: F) -> F:
    """Mark a hot handler that calls ``self.callers.admits``/``check`` itself.

    :func:`checked` leaves it alone, so an answer from memory (``lookup`` of a listed
    entry, ENODATA for ``security.selinux``, asked of every file by ``ls -l``) costs one
    wrapper (the errno translation), not two.
    """
    setattr(handler, _CHECKS_ITSELF, True)
    return handler


def _checked(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(handler)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        # pyfuse3 passes (self, ..., ctx) positionally.
        operations = cast(_Checked, args[0])
        operations.callers.check(cast(pyfuse3.RequestContext, args[-1]).uid)
        return await handler(*args, **kwargs)

    return guarded


def checked(cls: C) -> C:
    """Class decorator: check the caller of every pyfuse3 handler that has one (``ctx``).

    The instances must have a ``callers`` attribute, the :class:`Access` to check with.
    A handler marked :func:`checks_caller_itself` is left alone.
    """
    for name, member in list(vars(cls).items()):
        base = getattr(pyfuse3.Operations, name, None)
        if base is None or not inspect.iscoroutinefunction(base):
            continue
        if getattr(member, _CHECKS_ITSELF, False):
            continue
        if "ctx" in inspect.signature(base).parameters:
            setattr(cls, name, _checked(member))
    return cls
