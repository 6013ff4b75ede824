"""The exception → errno table, applied once around every handler (no mount needed)."""

from __future__ import annotations

import errno
import inspect
import logging

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
)
from butlerfs.errors import errno_of, translate
from butlerfs.operations import Operations


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
