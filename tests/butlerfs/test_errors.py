"""The exception → errno table, applied once around every handler (no mount needed)."""

from __future__ import annotations

import errno
import gc
import inspect
import logging
import sqlite3
import weakref
from pathlib import Path

import pyfuse3
import pytest
import trio

from butler.errors import (
    ButlerError,
    DatasetExistsError,
    DatasetNotFoundError,
    FormatError,
    InvalidDataIdError,
    NoOutputError,
    RepositoryError,
    TransactionError,
)
from butlerfs.errors import errno_of, translate
from butlerfs.operations import Operations
from butlerfs.worker import _called


@pytest.mark.parametrize(
    ("exception", "number"),
    [
        (NoOutputError("x"), errno.EROFS),
        (InvalidDataIdError("x"), errno.EACCES),
        (DatasetNotFoundError("x"), errno.ENOENT),
        (DatasetExistsError("x"), errno.EEXIST),
        (FormatError("x"), errno.EINVAL),
        (ButlerError("x"), errno.EIO),
        (OSError(errno.ENOSPC, "full"), errno.ENOSPC),
        (OSError("no errno"), errno.EIO),
        (ValueError("a bug"), errno.EIO),
        (pyfuse3.FUSEError(errno.EXDEV), errno.EXDEV),
    ],
)
def test_errno_table(exception: BaseException, number: int) -> None:
    assert errno_of(exception) == number


def _raised(exception: BaseException, cause: BaseException | None, suppress: bool) -> BaseException:
    """``exception`` raised from ``cause`` (``from None`` if ``suppress``), caught."""
    try:
        try:
            raise cause if cause is not None else exception
        except BaseException:
            if suppress:
                raise exception from None
            raise exception from cause
    except BaseException as caught:
        return caught


@pytest.mark.parametrize(
    ("exception", "cause", "suppress", "number"),
    [
        # The system's reason wins over the library's generic EIO / EINVAL ...
        (TransactionError("put failed"), OSError(errno.ENOSPC, "full"), False, errno.ENOSPC),
        (TransactionError("put failed"), OSError(errno.EDQUOT, "quota"), False, errno.EDQUOT),
        (FormatError("cannot read"), OSError(errno.EMFILE, "files"), True, errno.EMFILE),
        (FormatError("cannot read"), OSError(errno.EACCES, "perm"), False, errno.EACCES),
        (RepositoryError("disk"), OSError(errno.EROFS, "ro"), False, errno.EROFS),
        # ... but not over a specific answer, and not for a cause that says nothing more.
        (NoOutputError("no output"), OSError(errno.ENOSPC, "full"), False, errno.EROFS),
        (FormatError("bad bytes"), ValueError("astropy"), False, errno.EINVAL),
        (TransactionError("failed"), OSError(errno.EIO, "io"), False, errno.EIO),
    ],
)
def test_errno_says_why(
    exception: BaseException, cause: BaseException, suppress: bool, number: int
) -> None:
    assert errno_of(_raised(exception, cause, suppress)) == number


def test_a_registry_failure_is_an_answer_not_a_bug(tmp_path: Path) -> None:
    """SQLite's own failures (the registry's) map by their result code, and are logged as
    refusals, without a traceback."""
    database = tmp_path / "registry.sqlite3"
    sqlite3.connect(database).close()
    database.chmod(0o444)
    readonly = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        with pytest.raises(sqlite3.Error) as caught:
            readonly.execute("CREATE TABLE t (x)")
    finally:
        readonly.close()
    assert errno_of(caught.value) == errno.EROFS
    assert errno_of(_raised(TransactionError("put"), caught.value, False)) == errno.EROFS
    assert errno_of(sqlite3.OperationalError("no such table")) == errno.EIO


def test_an_errno_of_the_instance_is_used() -> None:
    full = TransactionError("put failed")
    full.errno = errno.ENOSPC  # per instance, as the library sets it for the cause it saw
    assert errno_of(full) == errno.ENOSPC


def test_a_failure_in_a_worker_keeps_no_frames() -> None:
    """An expected failure leaves the worker without its traceback: what the failed call
    held (a payload) is freed at once, with no garbage collection."""

    class Payload:
        pass

    held: list[weakref.ref[Payload]] = []

    def put() -> None:
        payload = Payload()
        held.append(weakref.ref(payload))
        try:
            raise ValueError("astropy says no")
        except ValueError as error:
            raise FormatError("not a valid fits file") from error

    gc.disable()
    try:
        with pytest.raises(FormatError) as caught:
            _called(put)
        assert held[0]() is None
        assert caught.value.__cause__ is not None
        assert caught.value.__cause__.__traceback__ is None
    finally:
        gc.enable()


def test_every_handler_is_wrapped() -> None:
    for name, member in vars(Operations).items():
        base = getattr(pyfuse3.Operations, name, None)
        if base is not None and inspect.iscoroutinefunction(base):
            assert hasattr(member, "__wrapped__"), f"{name} is not wrapped by translated"


def test_a_refusal_is_logged_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    async def handler() -> None:
        raise NoOutputError("calexp/x.fits: no output accepts raw")

    with pytest.raises(pyfuse3.FUSEError) as caught:
        trio.run(translate("create", handler))
    assert caught.value.errno == errno.EROFS
    assert [r.getMessage() for r in caplog.records] == [
        "refused create: EROFS (Read-only file system): calexp/x.fits: no output accepts raw"
    ]


def test_a_bug_is_eio_with_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def handler() -> None:
        raise KeyError("oops")

    with caplog.at_level(logging.ERROR), pytest.raises(pyfuse3.FUSEError) as caught:
        trio.run(translate("read", handler))
    assert caught.value.errno == errno.EIO
    assert caplog.records[0].exc_info is not None


def test_ordinary_answers_are_not_logged_as_refusals(caplog: pytest.LogCaptureFixture) -> None:
    async def handler() -> None:
        raise DatasetNotFoundError("/nothing here")

    with caplog.at_level(logging.INFO), pytest.raises(pyfuse3.FUSEError):
        trio.run(translate("lookup", handler))
    assert caplog.records == []
