"""Real mounts for the butlerfs tests.

``layout`` builds small repositories through the library (two inputs, two outputs,
FITS images); ``mount`` starts ``python -m butlerfs mount SOURCE MNT -f`` as a
subprocess with its log in a file, waits for the mount with a deadline, and at
teardown unmounts with ``butlerfs umount`` and asserts that it did: no mount, no
process, no scratch file, and no ERROR or traceback in the daemon's log.  The log is
printed at teardown, which pytest shows only for a failed test.

Without /dev/fuse or fusermount3 the mount tests skip, except under CI=true, where
they fail: there FUSE is expected.

Read paths (docs/mount.md, "Reads at the kernel's speed"): a mount uses FUSE passthrough
where it can.  ``start_mount(..., reads="daemon")`` mounts with ``-o passthrough=off``;
``reads="passthrough"`` checks that passthrough is on (outside CI a machine without it
skips; under CI=true it fails).  Tests taking the ``read_path`` fixture run with both.
``BUTLERFS_TEST_READS=daemon`` runs every other mount of the suite without passthrough.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from butler import Butler, DataRepository
from tests.butler.conftest import STANDARD_POLICY, exposure_path, make_image, settle

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MOUNT_DEADLINE = 20.0  # seconds: importing astropy on a cold, busy machine is the slow part
EXIT_DEADLINE = 15.0

CALEXP_1_1 = exposure_path("calexp", 1, 1)
CALEXP_3_2 = exposure_path("calexp", 3, 2)
RAW_1_1 = exposure_path("raw", 1, 1)
RAW_2_1 = exposure_path("raw", 2, 1)
VISIT_INFO_1 = "visitInfo/visitInfo-v0000001.yaml"


def fuse_problem() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    return None


def require_fuse() -> None:
    problem = fuse_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"FUSE is expected under CI but {problem}")
    pytest.skip(problem)


def environment() -> dict[str, str]:
    """A child Python imports butler and butlerfs from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


#: Every read path a mount can serve committed datasets through.
READ_PATHS = ("passthrough", "daemon")


def read_options(reads: str | None) -> list[str]:
    """Mount options for a read path (None: the suite's default, BUTLERFS_TEST_READS)."""
    if reads is None:
        reads = os.environ.get("BUTLERFS_TEST_READS", "passthrough")
    if reads not in READ_PATHS:
        raise ValueError(f"reads={reads!r}: one of {READ_PATHS}")
    return ["-o", "passthrough=off"] if reads == "daemon" else []


class Reachable(Protocol):
    """A mount whose files can be named (a :class:`Mount`, or one in another namespace)."""

    def path(self, relative: str) -> Path: ...


def mount_status(mount: Reachable) -> dict[str, Any]:
    """The ``mount`` part of MOUNT/.butler/status (passthrough, open files, reads served)."""
    status = json.loads(mount.path(".butler/status").read_text())
    result: dict[str, Any] = status["mount"]
    return result


def require_passthrough(mount: Mount) -> None:
    """Passthrough must be on for this mount: skip outside CI if the machine cannot."""
    state = mount_status(mount)["passthrough"]
    if state == "on":
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"FUSE passthrough is expected under CI (as root) but it is {state}")
    pytest.skip(f"FUSE passthrough is {state}")


def butlerfs_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "butlerfs", *args]


def run_butlerfs(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        butlerfs_command(*args),
        capture_output=True,
        text=True,
        env=environment(),
        timeout=timeout,
        check=False,
    )


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``condition`` until true; fail after ``seconds`` naming ``what``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class Layout:
    """Repositories in tmp_path: inputs in1, in2; outputs out1 (no raw), out2 (calexp only)."""

    root: Path
    in1: Path
    in2: Path
    out1: Path
    out2: Path
    aggregator: Path

    @property
    def outputs(self) -> tuple[Path, Path]:
        return self.out1, self.out2

    def butler(self) -> Butler:
        return Butler(self.aggregator)


def build_layout(root: Path) -> Layout:
    """in1 and in2 both hold calexp 1/1 (in1's wins); only inputs hold raw."""
    root.mkdir(parents=True, exist_ok=True)
    in1, in2 = root / "in1", root / "in2"
    for path in (in1, in2):
        DataRepository.create(path, policy=copy.deepcopy(STANDARD_POLICY))
    with Butler(in1) as butler:
        butler.put(make_image(1), "raw", visit=1, ccd=1)
        butler.put(make_image(2), "calexp", visit=1, ccd=1)
    with Butler(in2) as butler:
        butler.put(make_image(3), "raw", visit=2, ccd=1)
        butler.put(make_image(4), "calexp", visit=1, ccd=1)
        butler.put({"exposureTime": 30.0, "filter": "r"}, "visitInfo", visit=1)
    aggregator = root / "aggregator.yaml"
    aggregator.write_text(
        "butler: 1\n"
        "inputs:\n"
        "  - {path: in1, label: in1}\n"
        "  - {path: in2, label: in2}\n"
        "outputs:\n"
        "  - {path: out1, label: out1, mode: rw, datasetTypes: [calexp, src, visitInfo]}\n"
        "  - {path: out2, label: out2, mode: rw, datasetTypes: [calexp]}\n"
    )
    with Butler(aggregator) as butler:
        butler.put(make_image(5), "calexp", visit=3, ccd=2)
    settle()
    return Layout(root, in1, in2, root / "out1", root / "out2", aggregator)


class Mount:
    """One daemon, started in the foreground as a subprocess."""

    def __init__(self, mountpoint: Path, log_path: Path) -> None:
        self.mountpoint = mountpoint
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *args: str, wrapper: Sequence[str] = ()) -> Mount:
        """Start the daemon (``wrapper`` runs it, e.g. ``prlimit --nofile=...``)."""
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*wrapper, *butlerfs_command("mount", *args, str(self.mountpoint), "-f")],
                stdout=log,
                stderr=log,
                env=environment(),
            )
        wait_for(self._mounted_or_dead, MOUNT_DEADLINE, f"the mount on {self.mountpoint}")
        if not os.path.ismount(self.mountpoint):
            pytest.fail(f"the daemon exited with {self.process.poll()}:\n{self.log()}")
        # Mounted is not ready: the daemon stats its mountpoint before it says "mounted",
        # and an unmount during that stat fails (EBUSY).  As `butlerfs mount` without -f
        # does, return once it said so.
        wait_for(
            lambda: (
                " INFO mounted " in self.log()
                or self.process is None
                or self.process.poll() is not None
            ),
            MOUNT_DEADLINE,
            f"the daemon on {self.mountpoint} to say it is ready",
        )
        return self

    def _mounted_or_dead(self) -> bool:
        assert self.process is not None
        return os.path.ismount(self.mountpoint) or self.process.poll() is not None

    def path(self, relative: str) -> Path:
        return self.mountpoint / relative

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def unmount(self) -> None:
        """``butlerfs umount``, and check that nothing is left."""
        result = run_butlerfs("umount", str(self.mountpoint))
        assert result.returncode == 0, f"butlerfs umount failed: {result.stderr}"
        self.assert_gone()

    def terminate(self, number: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(number)
        self.assert_gone()

    def assert_gone(self) -> None:
        assert self.process is not None
        try:
            code = self.process.wait(EXIT_DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"the daemon did not exit within {EXIT_DEADLINE} s")
        assert code == 0, f"the daemon exited with {code}"
        assert not os.path.ismount(self.mountpoint), "still mounted"

    def cleanup(self) -> None:
        """Last resort at teardown: never leave a mount or a process behind."""
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], check=False)
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def scratch_files(layout: Layout) -> list[Path]:
    found: list[Path] = []
    for output in layout.outputs:
        scratch = output / ".butler" / "scratch"
        if scratch.exists():
            found.extend(scratch.rglob("*"))
    return found


def assert_clean_log(text: str) -> None:
    bad = [line for line in text.splitlines() if " ERROR " in line or "Traceback" in line]
    assert not bad, "the daemon logged errors:\n" + "\n".join(bad)


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return build_layout(tmp_path / "repos")


MountFactory = Callable[..., Mount]


@pytest.fixture
def start_mount(tmp_path: Path) -> Iterator[MountFactory]:
    """``start_mount(*args, mountpoint=None, wrapper=(), reads=None)`` → a running Mount;
    all checked at teardown.  ``reads``: "passthrough" or "daemon" (see the module's
    docstring); None: the suite's default."""
    require_fuse()
    started: list[Mount] = []

    def start(
        *args: str,
        mountpoint: Path | None = None,
        wrapper: Sequence[str] = (),
        reads: str | None = None,
    ) -> Mount:
        index = len(started)
        where = mountpoint or tmp_path / f"mnt{index}"
        mount = Mount(where, tmp_path / f"daemon{index}.log")
        started.append(mount)
        mount.start(*args, *read_options(reads), wrapper=wrapper)
        if reads == "passthrough":
            require_passthrough(mount)
        return mount

    yield start
    try:
        for mount in started:
            print(f"---- daemon log {mount.log_path} ----\n{mount.log()}")
            if mount.process is not None and mount.process.poll() is None:
                mount.unmount()
            assert_clean_log(mount.log())
    finally:
        for mount in started:
            mount.cleanup()


@pytest.fixture(params=READ_PATHS)
def read_path(request: pytest.FixtureRequest) -> str:
    """Each read path in turn: pass it as ``start_mount(..., reads=read_path)``."""
    result: str = request.param
    return result


@pytest.fixture
def mounted(layout: Layout, start_mount: MountFactory) -> Iterator[Mount]:
    """The layout's aggregator mounted; at teardown, no scratch file may be left."""
    mount = start_mount(str(layout.aggregator))
    yield mount
    if mount.process is not None and mount.process.poll() is None:
        mount.unmount()
    assert scratch_files(layout) == [], "scratch files left after unmount"
