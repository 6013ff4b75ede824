"""Every error carries the errno that says why: the instance's own, else its class's."""

from __future__ import annotations

import errno

from butler.errors import (
    ButlerError,
    ConfigError,
    NoOutputError,
    RepositoryError,
    TransactionError,
    UnsafePathError,
)


def test_an_instance_keeps_its_own_errno() -> None:
    # Round 1: a class attribute hid the instance's (RepositoryError(ENOSPC, ...).errno was 5).
    assert RepositoryError(errno.ENOSPC, "full").errno == errno.ENOSPC
    assert TransactionError("full", errno=errno.EDQUOT).errno == errno.EDQUOT
    assert isinstance(RepositoryError(errno.EACCES, "no"), OSError)


def test_each_class_has_a_default() -> None:
    assert TransactionError("x").errno == errno.EIO
    assert NoOutputError("x").errno == errno.EROFS
    assert ConfigError("x").errno == errno.EINVAL
    assert UnsafePathError("x").errno == errno.EACCES
    assert UnsafePathError("x", errno=errno.ELOOP).errno == errno.ELOOP
    assert all(issubclass(cls, ButlerError) for cls in (ConfigError, RepositoryError))
