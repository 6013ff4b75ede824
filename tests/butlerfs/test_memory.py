"""The daemon never keeps a payload in memory (issue 8): its resident size returns to its
baseline after every write, accepted or refused.  Measured from /proc/PID/status of a
real daemon around large writes through the mount (sizes chosen to make the point
without filling the disk: checked first)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from astropy.io import fits

from tests.butler.conftest import make_image
from tests.butlerfs.conftest import Layout, Mount

pytestmark = pytest.mark.mount

MB = 1 << 20
#: Room the daemon may keep after a write (caches, a thread's stack, allocator slack):
#: far below the payloads, which are 200-300 MB.
SLACK = 48 * MB


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid``, in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(value.split()[0]) * 1024
    return values


def settled_rss(pid: int, ceiling: int, seconds: float = 10.0) -> int:
    """The daemon's VmRSS once at or below ``ceiling`` (polled), or the last seen."""
    deadline = time.monotonic() + seconds
    rss = memory(pid)["VmRSS"]
    while rss > ceiling and time.monotonic() < deadline:
        time.sleep(0.05)  # polling a value another process sets, with a deadline
        rss = memory(pid)["VmRSS"]
    return rss


def fits_header(width: int, height: int) -> bytes:
    """The primary header of a float32 image of width x height (2880-byte blocks)."""
    header = fits.Header(
        [("SIMPLE", True), ("BITPIX", -32), ("NAXIS", 2), ("NAXIS1", width), ("NAXIS2", height)]
    )
    return header.tostring().encode()


def write_through(path: Path, header: bytes, data_bytes: int) -> OSError | None:
    """Write ``header`` then ``data_bytes`` zero bytes in 1 MiB writes; the close's error."""
    chunk = bytes(MB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, header)
        left = data_bytes
        while left:
            left -= os.write(fd, chunk[: min(left, MB)])
    except OSError:
        os.close(fd)
        raise
    try:
        os.close(fd)
    except OSError as exc:
        return exc
    return None


def test_large_writes_leave_no_payload_in_the_daemon(
    mounted: Mount, layout: Layout, tmp_path: Path
) -> None:
    size = 300 * MB
    free = shutil.disk_usage(tmp_path).free
    assert free > 4 * size, f"this test needs {4 * size // MB} MB free in {tmp_path}"
    assert mounted.process is not None
    pid = mounted.process.pid
    directory = mounted.path("calexp/v0000009")
    directory.mkdir(parents=True)
    # Warm up: the first FITS write loads astropy into the daemon, for good.
    make_image(90).writeto(directory / "calexp-v0000009-c001.fits")
    baseline = memory(pid)["VmRSS"]
    # Refused twice: the header announces 400 MB of pixels, 300 MB arrive.
    width = 10_000
    for ccd in (2, 3):
        failure = write_through(
            directory / f"calexp-v0000009-c{ccd:03d}.fits", fits_header(width, width), size
        )
        assert failure is not None and failure.errno == 22  # EINVAL: cut short
        rss = settled_rss(pid, baseline + SLACK)
        assert rss <= baseline + SLACK, (
            f"after a refused {size // MB} MB write the daemon holds "
            f"{(rss - baseline) // MB} MB more than before"
        )
    # Accepted: about 200 MB of pixels, whole (a height that fills whole 2880-byte blocks).
    height = 200 * MB // (4 * width) // 9 * 9
    accepted = directory / "calexp-v0000009-c004.fits"
    assert write_through(accepted, fits_header(width, height), 4 * width * height) is None
    assert accepted.stat().st_size == len(fits_header(width, height)) + 4 * width * height
    rss = settled_rss(pid, baseline + SLACK)
    assert rss <= baseline + SLACK, f"an accepted write left {(rss - baseline) // MB} MB"
    peak = memory(pid)["VmHWM"]
    print(f"daemon VmRSS baseline {baseline // MB} MB, now {rss // MB} MB, VmHWM {peak // MB} MB")
