"""Benchmark of the butlerfs mount against its own backing directory, on a real mount.

    .venv/bin/python bench/mount.py [--quick] [--markdown] [--syscalls] [--dir DIR] [--keep]

Not a test: it prints what it measured.  Every figure is a ratio to the same
operation on the backing directory (the repository's own files), measured in the
same run on the same disk; absolute rates are printed beside it.  The ratio is a
*speed* ratio, native time / mount time (= mount rate / native rate): 1.00× is
native speed, 0.50× half of it.  Targets are checked last (PASS/MISS).  Progress
goes to stderr, the report to stdout.  Full run about 5 minutes, --quick about 1.5.

Each daemon is ``python -m butlerfs mount SOURCE MNT -f`` in its own session; the
benchmark waits for ``os.path.ismount`` (60 s deadline) and unmounts every mount it
made with ``fusermount3 -u`` in a ``finally`` (also on Ctrl-C or SIGTERM).  The temp
dir (under /work by default, the repository's disk) is removed unless ``--keep``,
and never while anything is still mounted below it.

What it does (needs root for drop_caches, /dev/fuse and fusermount3):

1. sequential 1 MiB reads of a 1 GiB ``npy`` dataset (ingested through the library),
   cold (``sync; echo 3 > /proc/sys/vm/drop_caches`` before every run, on every
   side; backing file, butlerfs and mergerfs take turns, the order rotating) and warm;
2. 4 KiB random reads of the same file, cold and warm;
3. ``ls -l``, ``ls`` and ``find DIR -type f | wc -l`` of a 10,000-entry directory:
   cold (a fresh mount, then drop_caches; drop_caches for the backing dir) and warm;
   ``ls -l`` also with ``-o xattr=notsup`` when this butlerfs accepts that option;
4. ``os.stat`` of those 10,000 files, cold (fresh mount), warm, and after
   ``echo 2 > drop_caches`` on a live mount (the kernel asks again, the daemon's
   own cache answers: the price of the FUSE round trip alone);
5. ``find`` over 100,000 datasets in 100 directories of 1,000, cold and warm;
6. ``cp`` of 1,000 4 KiB ``.npy`` files into a mount of an aggregator with two
   outputs (each close is a durable put into both).  Baselines: write + fsync of
   each file into two plain directories (the same durability: each file safe when
   its close returns; the ratio the analysis uses), and ``cp`` + ``sync``, into two
   and into one plain directory;
7. mount start-up (spawn to ``os.path.ismount``) with 10^6 registered datasets
   whose files do NOT exist, against an empty repository; the daemon's VmRSS and
   VmHWM after start-up, after ``ls -l`` of a 10,000-entry directory and after a
   ``find`` over 100,000 datasets;
8. mergerfs (if installed) over two plain directories holding hard links to the
   same files: cold sequential read (in the same runs as 1), cold stat, create of
   1,000 files, and a warm read with ``cache.files=full`` (the kernel's FUSE page
   cache, whoever the daemon).

``--syscalls`` adds ``strace -w -c -f ls -l`` of the 10,000-entry directory (backing
dir, mount cold and warm) and the number of FUSE requests the daemon reads during one
warm ``ls -l``.

The small files of 3-5 are written directly at their template paths and registered
with ``Registry.insert_many`` (the way bench/library.py fills registries): 110,000
puts would take minutes.  ``--quick`` keeps every section with fewer repetitions,
a 256 MiB file and 2×10^5 datasets for the start-up (so that target is not judged).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from astropy.io import fits
from common import (
    CpuCounters,
    Stats,
    fmt_ratio,
    fmt_time,
    fsync_probe,
    interference,
    machine,
    simple_table,
    source_revision,
)
from numpy.lib import format as npy_format

from butler import Butler, DataRepository
from butler.journal import FileRecord, PutEntry
from butler.registry import SQLiteRegistry as Registry

PROJECT = Path(__file__).resolve().parents[1]
MiB = 1 << 20
KiB = 1 << 10
SMALL_TEMPLATE = "{datasetType}/v{visit:07d}/{datasetType}-v{visit:07d}-c{ccd:05d}"
POLICY: dict[str, object] = {
    "genres": {
        "ccdmeta": {
            "keys": {"visit": "int", "ccd": "int"},
            "template": SMALL_TEMPLATE + ".yaml",
            "storage": "yaml",
            "python": "dict",
        },
        "array": {
            "keys": {"visit": "int", "ccd": "int"},
            "template": SMALL_TEMPLATE + ".npy",
            "storage": "npy",
            "python": "numpy.ndarray",
        },
        "exposure": {
            "keys": {"visit": "int", "ccd": "int"},
            "template": SMALL_TEMPLATE + ".fits",
            "storage": "fits",
            "python": "astropy.io.fits.HDUList",
        },
    },
    "datasetTypes": {
        "image": {"genre": "array"},  # the big file
        "blob": {"genre": "exposure"},  # the small FITS files copied in
        "meta": {"genre": "ccdmeta"},  # the 10,000-entry directory
        "many": {"genre": "ccdmeta"},  # 100 directories of 1,000
    },
}
LISTED_VISIT = 1  # meta/v0000001/: the 10,000-entry directory
MANY_FIRST_VISIT = 100  # many/v0000100 .. : the directories of 1,000
CHUNK = 10_000  # registry rows per insert_many transaction
MOUNT_DEADLINE = 60.0  # seconds from spawn to ismount before giving up
EXIT_DEADLINE = 15.0
WRITERS = 8  # parallel writers of the second cp figure
MERGERFS_OPTIONS = "cache.files=partial,dropcacheonclose=true,category.create=mfs"
PASSTHROUGH = "butlerfs (passthrough)"
NO_PASSTHROUGH = "butlerfs -o passthrough=off"


@dataclass(frozen=True)
class Plan:
    file_size: int
    cold: int  # repetitions of each cold metadata figure (each: a fresh mount, drop_caches)
    cold_reads: int  # repetitions of each cold read (drop_caches before each)
    warm: int  # repetitions of each warm figure
    random_cold: int  # 4 KiB reads per cold random-read run
    random_warm: int
    listed: int  # entries of the listed directory
    many_dirs: int
    many_per_dir: int
    copies: int  # files per cp run
    cp_runs: int
    registered: int  # datasets registered for the start-up figure
    startups: int


FULL = Plan(
    file_size=1 << 30,
    cold=3,
    cold_reads=5,
    warm=5,
    random_cold=2000,
    random_warm=100_000,
    listed=10_000,
    many_dirs=100,
    many_per_dir=1000,
    copies=1000,
    cp_runs=2,
    registered=1_000_000,
    startups=3,
)
QUICK = Plan(
    file_size=256 * MiB,
    cold=1,
    cold_reads=2,
    warm=3,
    random_cold=1000,
    random_warm=30_000,
    listed=10_000,
    many_dirs=100,
    many_per_dir=1000,
    copies=1000,
    cp_runs=1,
    registered=200_000,
    startups=1,
)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- the machine ------------------------------------------------------------------------


def drop_caches() -> None:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``: page cache, dentries and inodes."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as control:
        control.write("3\n")


def drop_dentries() -> None:
    """``echo 2 > /proc/sys/vm/drop_caches``: dentries and inodes, not the page cache."""
    with open("/proc/sys/vm/drop_caches", "w") as control:
        control.write("2\n")


def command_version(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else "?"


def pyfuse3_version() -> str:
    try:
        import pyfuse3
    except ImportError:
        return "not importable"
    return str(getattr(pyfuse3, "__version__", "?"))


def tree_digest(*packages: str) -> str:
    """A short SHA-256 of the packages' .py files as they are on disk (uncommitted changes
    included), so that a figure can be tied to the exact code it measured."""
    digest = hashlib.sha256()
    for package in packages:
        for path in sorted((PROJECT / package).rglob("*.py")):
            digest.update(str(path.relative_to(PROJECT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def mounts_under(root: Path) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    found = []
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as mounts:
        for line in mounts:
            target = line.split()[1].replace("\\040", " ")
            if target.startswith(prefix):
                found.append(target)
    return found


def butlerfs_status(mountpoint: Path) -> dict[str, object]:
    """The mount part of MOUNT/.butler/status."""
    status: dict[str, object] = json.loads((mountpoint / ".butler" / "status").read_text())["mount"]
    return status


def passthrough_state(mountpoint: Path) -> str:
    return str(butlerfs_status(mountpoint).get("passthrough", "not reported"))


def io_counters(mountpoint: Path) -> str:
    status = butlerfs_status(mountpoint)
    keys = ("passthrough", "passthrough_opens", "backing_ids", "reads_served")
    return ", ".join(f"{key} {status.get(key)}" for key in keys)


# -- daemons ----------------------------------------------------------------------------


def child_environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT), *filter(None, [env.get("PYTHONPATH")])])
    return env


class Daemon:
    """One FUSE daemon in the foreground (``-f``), as a subprocess in its own session."""

    def __init__(self, name: str, argv: list[str], mountpoint: Path, log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.mountpoint = mountpoint
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.startup = 0.0  # seconds from spawn to ismount

    def start(self) -> Daemon:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            start = time.perf_counter()
            # Own session: a Ctrl-C reaches only the benchmark, whose finally unmounts.
            self.process = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                env=child_environment(),
                start_new_session=True,
            )
        deadline = start + MOUNT_DEADLINE
        while not os.path.ismount(self.mountpoint):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode} before mounting:\n"
                    + self.log_tail()
                )
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{self.name} did not mount in {MOUNT_DEADLINE} s")
            time.sleep(0.002)
        self.startup = time.perf_counter() - start
        if self.name == "butlerfs":
            # Mounted is not ready: the daemon stats its mountpoint once before it says
            # "mounted", and an unmount during that stat fails (EBUSY), leaving the daemon
            # running.  So nothing may stop it before it has said so.
            while " INFO mounted " not in self.log_tail(50):
                if self.process.poll() is not None or time.perf_counter() > deadline:
                    raise RuntimeError(f"{self.name} mounted but never said it was ready")
                time.sleep(0.002)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def memory(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in bytes, from /proc/PID/status."""
        values = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
        return values["VmRSS"], values["VmHWM"]

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """fusermount3 -u, then wait for the daemon; lazy unmount and kill as a last resort."""
        if self.process is None:
            return
        if os.path.ismount(self.mountpoint):
            subprocess.run(
                ["fusermount3", "-u", str(self.mountpoint)],
                capture_output=True,
                check=False,
            )
        elif self.process.poll() is None:
            self.process.terminate()  # still starting (interrupted): nothing to unmount yet
        try:
            self.process.wait(EXIT_DEADLINE)
        except subprocess.TimeoutExpired:
            log(f"{self.name} did not exit after unmount; SIGTERM")
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], check=False)
        self.process = None


class Daemons:
    """Every daemon the benchmark started, so that ``finally`` can stop them all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.live: list[Daemon] = []
        self.count = 0

    def butlerfs(self, source: Path, mountpoint: Path, options: Sequence[str] = ()) -> Daemon:
        argv = [sys.executable, "-m", "butlerfs", "mount", str(source), str(mountpoint), "-f"]
        return self._start("butlerfs", [*argv, *options], mountpoint)

    def mergerfs(
        self, branches: Sequence[Path], mountpoint: Path, options: str = MERGERFS_OPTIONS
    ) -> Daemon:
        argv = [
            "mergerfs",
            "-f",
            "-o",
            f"{options},fsname=bench-mergerfs",
            ":".join(str(b) for b in branches),
            str(mountpoint),
        ]
        return self._start("mergerfs", argv, mountpoint)

    def _start(self, name: str, argv: list[str], mountpoint: Path) -> Daemon:
        self.count += 1
        daemon = Daemon(name, argv, mountpoint, self.root / "logs" / f"{name}-{self.count}.log")
        self.live.append(daemon)
        try:
            return daemon.start()
        except BaseException:
            self.stop(daemon)
            raise

    def stop(self, daemon: Daemon) -> None:
        daemon.stop()
        if daemon in self.live:
            self.live.remove(daemon)

    def stop_all(self) -> None:
        for daemon in list(self.live):
            try:
                self.stop(daemon)
            except Exception as exc:  # keep stopping the others
                log(f"could not stop {daemon.name} on {daemon.mountpoint}: {exc}")


# -- timing -----------------------------------------------------------------------------


def timed(operation: Callable[[], object]) -> float:
    start = time.perf_counter()
    operation()
    return time.perf_counter() - start


def repeat(operation: Callable[[], object], n: int) -> Stats:
    """``n`` timed calls, one after another (warm figures: nothing in between)."""
    return Stats(tuple(timed(operation) for _ in range(n)))


def run(argv: Sequence[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def count_lines(command: str, expected: int) -> Callable[[], None]:
    """A shell pipeline (``find ... | wc -l``) whose output must be ``expected``."""

    def go() -> None:
        out = subprocess.run(command, shell=True, check=True, capture_output=True, text=True)
        got = int(out.stdout.strip())
        if got != expected:
            raise RuntimeError(f"{command!r} printed {got}, expected {expected}")

    return go


def read_sequential(path: Path) -> int:
    """Read the whole file in 1 MiB os.readv calls into one reused buffer (dd bs=1M)."""
    buffer = bytearray(MiB)
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            got = os.readv(fd, [buffer])
            if got == 0:
                break
            total += got
    finally:
        os.close(fd)
    return total


def read_random(path: Path, offsets: Sequence[int]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset in offsets:
            if len(os.pread(fd, 4 * KiB, offset)) != 4 * KiB:
                raise RuntimeError(f"short read at {offset} of {path}")
    finally:
        os.close(fd)


def rotated_cold_runs(
    paths: dict[str, Path], runs: int, operation: Callable[[Path, int], object]
) -> dict[str, list[float]]:
    """``operation(path, run)`` on every path per run, drop_caches before each; the
    order rotates from run to run, so no side is always first after the other's run."""
    keys = list(paths)
    samples: dict[str, list[float]] = {key: [] for key in keys}
    for index in range(runs):
        turn = index % len(keys)
        for key in keys[turn:] + keys[:turn]:
            drop_caches()
            samples[key].append(timed(lambda key=key, index=index: operation(paths[key], index)))
    return samples


def stat_all(paths: Sequence[str]) -> None:
    stat = os.stat
    for path in paths:
        stat(path)


def copy_fsync_each(names: Sequence[str], dirs: Sequence[Path]) -> None:
    """Copy each file into each directory: read, create, write, fsync, close."""
    for name in names:
        with open(name, "rb") as source:
            data = source.read()
        base = os.path.basename(name)
        for directory in dirs:
            fd = os.open(directory / base, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)


def copy_cp_sync(names: Sequence[str], dirs: Sequence[Path]) -> None:
    """``cp FILES... DIR`` for each directory, then ``sync``."""
    copy_cp(names, dirs)
    run(["sync"])


def copy_cp(names: Sequence[str], dirs: Sequence[Path]) -> None:
    """``cp FILES... DIR`` for each directory (through the mount: each close is a put)."""
    for directory in dirs:
        run(["cp", *names, directory])


def in_parallel(
    copy: Callable[[Sequence[str], Sequence[Path]], None],
    names: Sequence[str],
    dirs: Sequence[Path],
    writers: int,
) -> None:
    """``copy`` of every ``writers``-th file by each of ``writers`` threads (each runs its
    own cp processes, or its own writes and fsyncs) at once."""
    failures: list[BaseException] = []

    def share(k: int) -> None:
        try:
            copy(names[k::writers], dirs)
        except BaseException as exc:  # reported below, in the caller's thread
            failures.append(exc)

    threads = [threading.Thread(target=share, args=(k,)) for k in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def small_fits(seed: int) -> bytes:
    """A small FITS image (32 × 32 float32: 8,640 bytes with its header)."""
    image = np.random.default_rng(seed).standard_normal((32, 32), dtype=np.float32)
    stream = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(data=image)]).writeto(stream)
    return stream.getvalue()


# -- results ----------------------------------------------------------------------------


@dataclass
class Figure:
    """One operation through the mount and the same on a baseline; ``work`` units each."""

    section: str
    name: str
    unit: str  # "MB/s", "/s" (per second of `what`), or "s" (a time)
    work: float
    mount: Stats
    base: Stats
    base_label: str = "backing dir"
    what: str = ""

    @property
    def ratio(self) -> float:
        """Speed ratio: native time / mount time."""
        return self.base.median / self.mount.median if self.mount.median > 0 else float("inf")

    def rate(self, stats: Stats) -> float:
        return self.work / stats.median

    def show(self, stats: Stats) -> str:
        t = stats.median
        if self.unit == "MB/s":
            return f"{self.work / t / 1e6:,.0f} MB/s ({fmt_time(t)})"
        if self.unit == "/s":
            return f"{self.work / t:,.0f} {self.what}/s ({fmt_time(t)})"
        return f"{t:.3f} s"


@dataclass
class Results:
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    memory: list[tuple[str, int, int]] = field(default_factory=list)
    startup: dict[str, Stats] = field(default_factory=dict)
    info: list[tuple[str, str]] = field(default_factory=list)
    mergerfs: str = ""

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        mount, base = figure.show(figure.mount), figure.show(figure.base)
        log(f"  {figure.name}: {mount} vs {figure.base_label} {base}: {fmt_ratio(figure.ratio)}")
        return figure

    def find(self, section: str, name: str) -> Figure | None:
        for figure in self.figures:
            if figure.section == section and figure.name == name:
                return figure
        return None


# -- the data ---------------------------------------------------------------------------


@dataclass
class Layout:
    root: Path
    repo: Path
    big: Path  # the big file in the repository
    listed_dir: str  # relative: meta/v0000001
    listed: list[str]  # relative paths of its files
    many_dir: str  # relative: many
    many_count: int


def small_payload() -> bytes:
    text = "".join(f"key{i:02d}: {i * 1.5}\n" for i in range(20))
    return text.encode()


def npy_bytes(size: int, seed: int = 0) -> bytes:
    """A float64 .npy of exactly ``size`` bytes (the 128-byte header included)."""
    count = (size - 128) // 8
    array = np.random.default_rng(seed).standard_normal(count)
    stream = io.BytesIO()
    np.save(stream, array, allow_pickle=False)
    data = stream.getvalue()
    assert len(data) == size, (len(data), size)
    return data


def write_big_npy(path: Path, size: int) -> None:
    """A float32 .npy of ``size`` bytes, written in 64 MiB blocks of random data."""
    count = (size - 128) // 4
    header = {"descr": "<f4", "fortran_order": False, "shape": (count,)}
    block = np.random.default_rng(1).standard_normal(16 * MiB, dtype=np.float32).tobytes()
    with open(path, "wb") as stream:
        npy_format.write_array_header_1_0(stream, header)
        if stream.tell() != 128:
            raise RuntimeError(f"unexpected npy header size {stream.tell()}")
        left = count * 4
        while left:
            chunk = block[: min(left, len(block))]
            stream.write(chunk)
            left -= len(chunk)


def small_path(dataset_type: str, visit: int, ccd: int, extension: str = ".yaml") -> str:
    return f"{dataset_type}/v{visit:07d}/{dataset_type}-v{visit:07d}-c{ccd:05d}{extension}"


def register(
    repo: Path,
    items: Iterator[tuple[str, int, int]],
    payload: bytes | None,
    committed: float,
) -> int:
    """Register ``(type, visit, ccd)`` datasets (yaml) with insert_many; write their files
    at their template paths first unless ``payload`` is None (then they do not exist)."""
    registry = Registry(repo / "registry.sqlite3")
    size = len(payload) if payload is not None else 256
    digest = hashlib.sha256(payload or b"").hexdigest()
    made_dirs: set[str] = set()
    made_versions: set[str] = set()
    count = 0
    commits: list[PutEntry] = []

    def flush() -> None:
        registry.insert_many(commits)
        commits.clear()

    try:
        for dataset_type, visit, ccd in items:
            relative = small_path(dataset_type, visit, ccd)
            if payload is not None:
                directory = relative.rpartition("/")[0]
                if directory not in made_dirs:
                    (repo / directory).mkdir(parents=True, exist_ok=True)
                    made_dirs.add(directory)
                fd = os.open(repo / relative, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                os.write(fd, payload)
                os.close(fd)
                # Every version has its own name too (what get and the mount open).
                kept = repo / ".butler" / "versions" / "v1" / relative
                if directory not in made_versions:
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    made_versions.add(directory)
                os.link(repo / relative, kept)
            entry = FileRecord(0, True, relative, "yaml", size, digest)
            txid = f"{dataset_type}-{visit:07d}-{ccd:05d}-bench"
            data_id: dict[str, int | str] = {"visit": visit, "ccd": ccd}
            commits.append(PutEntry(txid, dataset_type, data_id, 1, committed, (entry,), ()))
            count += 1
            if len(commits) >= CHUNK:
                flush()
        if commits:
            flush()
    finally:
        registry.close()
    return count


def build_main(root: Path, plan: Plan) -> Layout:
    repo = root / "repo"
    DataRepository.create(repo, label="bench", policy=POLICY).close()
    log(f"writing a {plan.file_size / MiB:.0f} MiB .npy and ingesting it through the library")
    source = root / "source-image.npy"
    write_big_npy(source, plan.file_size)
    with Butler(repo) as butler:
        butler.ingest(source, "image", visit=1, ccd=0)
        big = Path(butler.uri("image", visit=1, ccd=0))
    source.unlink()
    if big.stat().st_size != plan.file_size:
        raise RuntimeError(f"{big} is {big.stat().st_size} bytes, expected {plan.file_size}")
    many = plan.many_dirs * plan.many_per_dir
    log(f"writing and registering {plan.listed:,} + {many:,} small files (insert_many)")
    listed = [small_path("meta", LISTED_VISIT, ccd) for ccd in range(plan.listed)]

    def items() -> Iterator[tuple[str, int, int]]:
        for ccd in range(plan.listed):
            yield "meta", LISTED_VISIT, ccd
        for index in range(plan.many_dirs):
            for ccd in range(plan.many_per_dir):
                yield "many", MANY_FIRST_VISIT + index, ccd

    start = time.perf_counter()
    register(repo, items(), small_payload(), time.time())
    log(f"  done in {time.perf_counter() - start:.1f} s")
    return Layout(root, repo, big, f"meta/v{LISTED_VISIT:07d}", listed, "many", many)


# -- sections ---------------------------------------------------------------------------


class Bench:
    def __init__(self, root: Path, plan: Plan, daemons: Daemons, results: Results) -> None:
        self.root = root
        self.plan = plan
        self.daemons = daemons
        self.results = results
        self.mount: Daemon | None = None
        self.layout: Layout | None = None
        self.visits = iter(range(10, 10_000))  # blob visits: new data IDs for every copy run
        self.copy_mount: Stats | None = None
        self.copy_parallel: Stats | None = None
        self.registered = 0
        self.merger: tuple[Path, Path, list[str]] | None = None
        self.mount_options: list[str] = []  # of the main mount; default options

    # The main mount: butlerfs over the repository alone.

    @property
    def mnt(self) -> Path:
        return self.root / "mnt"

    def fresh_mount(self) -> Daemon:
        """Unmount (if mounted) and mount the repository again: nothing cached in the kernel
        or the daemon.  Then drop the page cache too, as for the backing directory."""
        assert self.layout is not None
        if self.mount is not None:
            self.daemons.stop(self.mount)
        self.mount = self.daemons.butlerfs(self.layout.repo, self.mnt, self.mount_options)
        drop_caches()
        return self.mount

    def ensure_mount(self) -> Daemon:
        assert self.layout is not None
        if self.mount is None:
            self.mount = self.daemons.butlerfs(self.layout.repo, self.mnt, self.mount_options)
        return self.mount

    def supports(self, options: Sequence[str]) -> bool:
        """Whether this butlerfs mounts with ``options`` (a newer option may be missing)."""
        assert self.layout is not None
        try:
            daemon = self.daemons.butlerfs(self.layout.repo, self.root / "mnt-probe", options)
        except RuntimeError as exc:
            log(f"butlerfs does not mount with {' '.join(options)}: {exc}")
            return False
        self.daemons.stop(daemon)
        return True

    def note_samples(self, what: str, samples: dict[str, list[float]], work: float) -> None:
        """Every run of a cold figure, in run order: the disk's noise shows here."""
        shown = "; ".join(
            f"{key} " + ", ".join(f"{work / t:,.0f}" for t in times)
            for key, times in samples.items()
        )
        self.results.notes.append(f"{what}, every run: {shown}")

    # 1 and 2: reads

    def reads(self) -> None:
        """Sequential and 4 KiB random reads of the big file, cold and warm: the backing
        file, butlerfs with passthrough (default options), butlerfs -o passthrough=off,
        and mergerfs, in the same runs (cold: in turn, the order rotating)."""
        layout = self.layout
        assert layout is not None
        plan = self.plan
        self.ensure_mount()
        relative = layout.big.relative_to(layout.repo)
        size = plan.file_size
        readers = {"backing file": layout.big, PASSTHROUGH: self.mnt / relative}
        off = self.daemons.butlerfs(layout.repo, self.root / "mnt-off", ["-o", "passthrough=off"])
        readers[NO_PASSTHROUGH] = off.mountpoint / relative
        self.results.notes.append(
            f"read path of the mount with default options: {passthrough_state(self.mnt)}; "
            f"with -o passthrough=off: {passthrough_state(off.mountpoint)}"
        )
        merger = self.mergerfs_branches()
        merged = None
        if merger is not None:
            merged = self.daemons.mergerfs(merger[:2], self.root / "mnt-mergerfs")
            readers["mergerfs"] = merged.mountpoint / "data" / "image.npy"
        for name, path in readers.items():
            if os.path.getsize(path) != size:
                raise RuntimeError(f"{name}: {path} does not show {size} bytes")
        pages = size // (4 * KiB)
        rng = random.Random(42)
        runs = [
            [rng.randrange(pages) * 4 * KiB for _ in range(plan.random_cold)]
            for _ in range(plan.cold_reads)
        ]
        offsets = [rng.randrange(pages) * 4 * KiB for _ in range(plan.random_warm)]
        mib = f"{size / MiB:.0f} MiB"
        try:
            log(f"sequential reads, cold: {', '.join(readers)} in turn, drop_caches before each")
            cold = rotated_cold_runs(
                readers, plan.cold_reads, lambda path, _: read_sequential(path)
            )
            self.note_samples("cold sequential read, MB/s", cold, size / 1e6)
            self.add_variants(
                "read", f"sequential read {mib}, 1 MiB blocks, cold", "MB/s", size, "", cold
            )
            log("sequential reads, warm")
            warm: dict[str, list[float]] = {}
            for name, path in readers.items():
                read_sequential(path)
                read_sequential(path)
                warm[name] = list(repeat(lambda p=path: read_sequential(p), plan.warm).samples)
            self.add_variants(
                "read", f"sequential read {mib}, 1 MiB blocks, warm", "MB/s", size, "", warm
            )
            log("4 KiB random reads, cold (in turn, drop_caches before each)")
            cold = rotated_cold_runs(
                readers, plan.cold_reads, lambda path, index: read_random(path, runs[index])
            )
            self.note_samples("cold 4 KiB random reads, reads/s", cold, plan.random_cold)
            self.add_variants(
                "read",
                f"4 KiB random reads ({plan.random_cold:,} per run), cold",
                "/s",
                plan.random_cold,
                "reads",
                cold,
            )
            log("4 KiB random reads, warm")
            warm = {}
            for name, path in readers.items():
                read_sequential(path)
                warm[name] = list(repeat(lambda p=path: read_random(p, offsets), plan.warm).samples)
            self.add_variants(
                "read",
                f"4 KiB random reads ({plan.random_warm:,} per run), warm",
                "/s",
                plan.random_warm,
                "reads",
                warm,
            )
            self.results.notes.append(f"daemon counters after the reads: {io_counters(self.mnt)}")
        finally:
            if merged is not None:
                self.daemons.stop(merged)
            self.daemons.stop(off)

    def add_variants(
        self,
        section: str,
        name: str,
        unit: str,
        work: float,
        what: str,
        samples: dict[str, list[float]],
        base_key: str = "backing file",
    ) -> None:
        """One row per mount in ``samples`` (all but ``base_key``), each beside the base."""
        base = Stats(tuple(samples[base_key]))
        for key, times in samples.items():
            if key == base_key:
                continue
            self.results.add(
                Figure(
                    section, f"{name}: {key}", unit, work, Stats(tuple(times)), base, base_key, what
                )
            )

    # 3, 4, 5: metadata

    def metadata_pair(
        self,
        name: str,
        unit: str,
        work: float,
        what: str,
        operation: Callable[[Path], object],
        *,
        dentries: bool = False,
        warm_each: int | None = None,
    ) -> None:
        """Cold (fresh mount + drop_caches; drop_caches for the backing dir) and warm.

        With ``dentries``, also a third figure: after ``echo 2 > drop_caches`` (dentries
        and inodes only) on a live mount, so the kernel asks again but the daemon's own
        cache still knows every entry: the cost of the FUSE round trip alone.
        """
        plan = self.plan
        layout = self.layout
        assert layout is not None
        # warm runs spread over the cold rounds; a cheap operation may ask for more each
        warm_runs = warm_each or -(-plan.warm // plan.cold)
        mount: dict[str, list[float]] = {"cold: fresh mount": [], "warm": []}
        base: dict[str, list[float]] = {"cold: fresh mount": [], "warm": []}
        forgotten = "kernel dentries dropped, daemon cache warm"
        if dentries:
            mount[forgotten], base[forgotten] = [], []
        for _ in range(plan.cold):
            drop_caches()
            base["cold: fresh mount"].append(timed(lambda: operation(layout.repo)))
            base["warm"].extend(repeat(lambda: operation(layout.repo), warm_runs).samples)
            if dentries:
                drop_dentries()
                base[forgotten].append(timed(lambda: operation(layout.repo)))
            self.fresh_mount()
            mount["cold: fresh mount"].append(timed(lambda: operation(self.mnt)))
            mount["warm"].extend(repeat(lambda: operation(self.mnt), warm_runs).samples)
            if dentries:
                drop_dentries()
                mount[forgotten].append(timed(lambda: operation(self.mnt)))
        for label in mount:
            self.results.add(
                Figure(
                    "metadata",
                    f"{name}, {label}",
                    unit,
                    work,
                    Stats(tuple(mount[label])),
                    Stats(tuple(base[label])),
                    what=what,
                )
            )

    def ls_long(self) -> None:
        """``ls -l`` of the 10,000-entry directory, cold (a fresh mount, drop_caches; for the
        backing dir drop_caches) and warm, default options: the backing dir, butlerfs and
        mergerfs (the same files, half in each branch) in the same rounds."""
        layout = self.layout
        assert layout is not None
        plan = self.plan
        n = len(layout.listed)
        listed = layout.listed_dir
        log(f"ls -l of a {n:,}-entry directory: backing dir, butlerfs, mergerfs")
        merger = self.mergerfs_branches()
        warm_runs = -(-plan.warm // plan.cold)
        labels = ("cold: fresh mount", "warm")
        samples: dict[str, dict[str, list[float]]] = {
            label: {"backing dir": [], "butlerfs": [], "mergerfs": []} for label in labels
        }

        def measure(key: str, directory: Path) -> None:
            samples["cold: fresh mount"][key].append(timed(lambda: run(["ls", "-l", directory])))
            samples["warm"][key].extend(
                repeat(lambda: run(["ls", "-l", directory]), warm_runs).samples
            )

        for _ in range(plan.cold):
            drop_caches()
            measure("backing dir", layout.repo / listed)
            self.fresh_mount()
            measure("butlerfs", self.mnt / listed)
            if merger is not None:
                merged = self.daemons.mergerfs(merger[:2], self.root / "mnt-mergerfs")
                try:
                    drop_caches()
                    measure("mergerfs", merged.mountpoint / "meta")
                finally:
                    self.daemons.stop(merged)
        for label in labels:
            found = {key: times for key, times in samples[label].items() if times}
            self.add_variants(
                "metadata", f"ls -l of a {n:,}-entry dir, {label}", "s", 1, "", found, "backing dir"
            )

    def metadata(self) -> None:
        layout = self.layout
        assert layout is not None
        n = len(layout.listed)
        listed = layout.listed_dir
        self.ls_long()
        log(f"ls of a {n:,}-entry directory")
        self.metadata_pair(
            f"ls of a {n:,}-entry dir", "s", 1, "", lambda top: run(["ls", top / listed])
        )
        log(f"find DIR -type f | wc -l of a {n:,}-entry directory")
        self.metadata_pair(
            f"find DIR -type f (piped to wc -l), {n:,}-entry dir",
            "s",
            1,
            "",
            lambda top: count_lines(f"find '{top / listed}' -type f | wc -l", n)(),
        )
        log(f"os.stat of {n:,} files")
        paths = {  # made before the clock starts
            top: [str(top / relative) for relative in layout.listed]
            for top in (layout.repo, self.mnt)
        }
        self.metadata_pair(
            f"os.stat of {n:,} files (no listing first)",
            "/s",
            n,
            "stats",
            lambda top: stat_all(paths[top]),
            dentries=True,
            warm_each=2 * self.plan.warm,  # ~30 ms each: more runs against the noise
        )
        many = layout.many_count
        dirs = self.plan.many_dirs
        log(f"find over {many:,} datasets")
        self.metadata_pair(
            f"find DIR -type f (piped to wc -l), {many:,} files in {dirs} dirs",
            "/s",
            many,
            "entries",
            lambda top: count_lines(f"find '{top / layout.many_dir}' -type f | wc -l", many)(),
        )

    # 6: cp into two outputs

    def sources(self, visit: int) -> list[str]:
        """1,000 (plan.copies) new small FITS files named as blob datasets of ``visit``."""
        directory = self.root / "cp-source" / f"v{visit:07d}"
        directory.mkdir(parents=True)
        names = []
        for ccd in range(self.plan.copies):
            name = Path(small_path("blob", visit, ccd, ".fits")).name
            (directory / name).write_bytes(small_fits(ccd))
            names.append(str(directory / name))
        return names

    def copy_series(self, into: Callable[[int, list[str]], Callable[[], object]]) -> Stats:
        """``plan.cp_runs`` runs, each copying new files (fresh data IDs) made untimed;
        ``into(visit, names)`` prepares the targets and returns the timed copy."""
        samples = []
        for _ in range(self.plan.cp_runs):
            visit = next(self.visits)
            copy = into(visit, self.sources(visit))
            os.sync()  # nothing of the set-up left for the timed run to flush
            samples.append(timed(copy))
        return Stats(tuple(samples))

    def plain_dirs(self, label: str, count: int) -> list[Path]:
        made = [self.root / "plain" / f"{label}-{k}" for k in range(count)]
        for directory in made:
            directory.mkdir(parents=True)
        return made

    def plain_into(
        self,
        label: str,
        copy: Callable[[Sequence[str], Sequence[Path]], None],
        count: int,
        writers: int = 1,
    ) -> Callable[[int, list[str]], Callable[[], object]]:
        """For copy_series: ``copy`` into ``count`` new plain directories, by ``writers``
        processes at once (each its share of the files)."""

        def into(visit: int, names: list[str]) -> Callable[[], object]:
            dirs = self.plain_dirs(f"{label}-{visit}", count)
            if writers == 1:
                return lambda: copy(names, dirs)
            return lambda: in_parallel(copy, names, dirs, writers)

        return into

    def copies(self) -> None:
        """cp of small FITS files into a mount of two outputs (each close a durable put
        into both), by one cp and by 8 at once, beside the same copies into two plain
        directories and through mergerfs."""
        plan = self.plan
        root = self.root
        outputs = [root / "outA", root / "outB"]
        for output in outputs:
            DataRepository.create(output, label=output.name, policy=POLICY).close()
        aggregator = root / "two-outputs.yaml"
        aggregator.write_text(
            "butler: 1\n"
            "outputs:\n"
            "  - {path: outA, label: outA, mode: rw}\n"
            "  - {path: outB, label: outB, mode: rw}\n"
        )
        mountpoint = root / "mnt-cp"
        size = len(small_fits(0))
        files = f"{plan.copies:,} × {size / KiB:.1f} KiB FITS"
        daemon = self.daemons.butlerfs(aggregator, mountpoint)

        def into_mount(writers: int) -> Callable[[int, list[str]], Callable[[], object]]:
            def into(visit: int, names: list[str]) -> Callable[[], object]:
                target = mountpoint / f"blob/v{visit:07d}"
                target.mkdir(parents=True)  # a template directory: kept in memory by the mount
                if writers == 1:
                    return lambda: run(["cp", *names, target])
                return lambda: in_parallel(copy_cp, names, [target], writers)

            return into

        mount_stats: dict[int, Stats] = {}
        try:
            for writers in (1, WRITERS):
                log(f"cp of {files} into a mount with two outputs, {writers} writer(s)")
                mount_stats[writers] = self.copy_series(into_mount(writers))
        finally:
            self.daemons.stop(daemon)
        for output in outputs:  # every file a dataset in both outputs
            made = sum(len(files) for _, _, files in os.walk(output / "blob"))
            if made != 2 * plan.copies * plan.cp_runs:
                raise RuntimeError(f"{output}: {made} files after cp, not {plan.copies}")
        baselines: dict[int, list[tuple[str, Stats]]] = {1: [], WRITERS: []}
        self.copy_mount = mount_stats[1]
        self.copy_parallel = mount_stats[WRITERS]

        # Baselines, each series on its own (bench/README.md "Fairness"), new files each run.
        log("  baselines: write + fsync of each file, and cp + sync, into 2 plain dirs")
        for writers in (1, WRITERS):
            for label, copy in (
                ("write+fsync each file, 2 plain dirs", copy_fsync_each),
                ("cp + sync, 2 plain dirs", copy_cp_sync),
            ):
                stats = self.copy_series(self.plain_into(f"p{writers}", copy, 2, writers))
                baselines[writers].append((label, stats))
        # What the library alone takes for the same puts (the mount's overhead is the rest):
        # Butler.ingest of each file, by one thread and by 8 at once (its group commit).
        with Butler(aggregator) as butler:

            def ingest_each(names: Sequence[str], visit: int) -> None:
                for name in names:
                    ccd = int(Path(name).stem.rpartition("-c")[2])
                    butler.ingest(name, "blob", visit=visit, ccd=ccd)

            for writers in (1, WRITERS):
                log(f"  the library: Butler.ingest of each file, {writers} thread(s)")

                def into_library(
                    visit: int, names: list[str], writers: int = writers
                ) -> Callable[[], object]:
                    if writers == 1:
                        return lambda: ingest_each(names, visit)
                    return lambda: in_parallel(
                        lambda share, _: ingest_each(share, visit), names, [], writers
                    )

                stats = self.copy_series(into_library)
                baselines[writers].append(("the library: Butler.ingest of each file", stats))
        merged = self.mergerfs_copies(files)
        for writers in (1, WRITERS):
            name = f"cp {files} into 2 outputs (durable puts), {writers} writer(s)"
            for label, stats in baselines[writers]:
                self.results.add(
                    Figure(
                        "write",
                        name,
                        "/s",
                        plan.copies,
                        mount_stats[writers],
                        stats,
                        label,
                        "files",
                    )
                )
            if writers in merged:
                label, stats = merged[writers]
                self.results.add(
                    Figure(
                        "write",
                        name,
                        "/s",
                        plan.copies,
                        mount_stats[writers],
                        stats,
                        label,
                        "files",
                    )
                )

    def mergerfs_copies(self, files: str) -> dict[int, tuple[str, Stats]]:
        """The same copies through mergerfs over two plain directories (one copy of each
        file, where category.create puts it; cp + sync), by 1 and by 8 writers."""
        merger = self.mergerfs_branches()
        if merger is None:
            return {}
        mountpoint = self.root / "mnt-mergerfs"
        daemon = self.daemons.mergerfs(merger[:2], mountpoint)
        found = {}
        try:
            for writers in (1, WRITERS):
                log(f"  mergerfs: cp + sync of {files}, {writers} writer(s)")

                def into(
                    visit: int, names: list[str], writers: int = writers
                ) -> Callable[[], object]:
                    target = mountpoint / "created" / f"v{visit:07d}"
                    target.mkdir()
                    if writers == 1:
                        return lambda: copy_cp_sync(names, [target])
                    return lambda: in_parallel(copy_cp_sync, names, [target], writers)

                found[writers] = ("mergerfs: cp + sync, 1 copy", self.copy_series(into))
        finally:
            self.daemons.stop(daemon)
        return found

    # 7: start-up and memory with many registered datasets

    def startup(self) -> None:
        plan = self.plan
        root = self.root
        listed_n = self.plan.listed
        per_dir = self.plan.many_per_dir
        filled_dirs = (plan.registered - listed_n) // per_dir
        registered = listed_n + filled_dirs * per_dir
        big = root / "registered"
        DataRepository.create(big, label="registered", policy=POLICY).close()
        log(f"registering {registered:,} datasets whose files do not exist (insert_many)")

        def items() -> Iterator[tuple[str, int, int]]:
            for ccd in range(listed_n):
                yield "meta", LISTED_VISIT, ccd
            for index in range(filled_dirs):
                for ccd in range(per_dir):
                    yield "many", MANY_FIRST_VISIT + index, ccd

        start = time.perf_counter()
        register(big, items(), None, time.time())
        log(f"  done in {time.perf_counter() - start:.1f} s")
        self.results.notes.append(
            f"start-up repository: {registered:,} datasets registered with insert_many "
            f"({listed_n:,} in one directory, {filled_dirs} directories of {per_dir:,}); "
            "their files do NOT exist (ls -l and find need only the registry)"
        )
        empty = root / "empty"
        DataRepository.create(empty, label="empty", policy=POLICY).close()
        mountpoint = root / "mnt-startup"
        log("mount start-up: empty repository vs the filled one (spawn to ismount)")
        for label, repo in (("empty repository", empty), (f"{registered:,} datasets", big)):
            samples = []
            for index in range(plan.startups):
                daemon = self.daemons.butlerfs(repo, mountpoint)
                samples.append(daemon.startup)
                if repo == big and index == plan.startups - 1:
                    self.memory(daemon, registered, mountpoint)
                self.daemons.stop(daemon)
            self.results.startup[label] = Stats(tuple(samples))
            log(f"  {label}: median {fmt_time(Stats(tuple(samples)).median)}")
        self.registered = registered
        drop_caches()
        daemon = self.daemons.butlerfs(big, mountpoint)
        self.results.startup[f"{registered:,} datasets, after drop_caches"] = Stats(
            (daemon.startup,)
        )
        self.daemons.stop(daemon)

    def memory(self, daemon: Daemon, registered: int, mountpoint: Path) -> None:
        record = self.results.memory
        rss, hwm = daemon.memory()
        record.append(("after start-up", rss, hwm))
        listed = mountpoint / f"meta/v{LISTED_VISIT:07d}"
        took = timed(lambda: run(["ls", "-l", listed]))
        rss, hwm = daemon.memory()
        record.append((f"after ls -l of {self.plan.listed:,} entries ({took:.2f} s)", rss, hwm))
        dirs = [
            str(mountpoint / f"many/v{MANY_FIRST_VISIT + k:07d}")
            for k in range(self.plan.many_dirs)
        ]
        expected = self.plan.many_dirs * self.plan.many_per_dir
        quoted = " ".join(f"'{d}'" for d in dirs)
        took = timed(count_lines(f"find {quoted} -type f | wc -l", expected))
        rss, hwm = daemon.memory()
        record.append((f"after find over {expected:,} datasets ({took:.2f} s)", rss, hwm))

    # 8: mergerfs

    def mergerfs_branches(self) -> tuple[Path, Path, list[str]] | None:
        """Two plain directories for mergerfs, made once: hard links to the big file and
        to the listed files (half in each), so the same inodes and blocks as the baseline.
        None if mergerfs is not installed."""
        if self.merger is not None:
            return self.merger
        if shutil.which("mergerfs") is None:
            policy = command_version(["apt-cache", "policy", "mergerfs"])
            self.results.mergerfs = (
                f"mergerfs is not installed (apt-cache policy: {policy}); "
                "install it with 'apt-get install -y mergerfs' to compare"
            )
            log(self.results.mergerfs)
            return None
        version = command_version(["mergerfs", "--version"])
        self.results.mergerfs = f"{version}, options {MERGERFS_OPTIONS}"
        layout = self.layout
        assert layout is not None
        branch_a, branch_b = self.root / "mfs-a", self.root / "mfs-b"
        for branch in (branch_a, branch_b):
            (branch / "data").mkdir(parents=True)
            (branch / "meta").mkdir()
            (branch / "created").mkdir()
        os.link(layout.big, branch_a / "data" / "image.npy")
        half = len(layout.listed) // 2
        names = []
        for index, relative in enumerate(layout.listed):
            name = os.path.basename(relative)
            branch = branch_a if index < half else branch_b
            os.link(layout.repo / relative, branch / "meta" / name)
            names.append(name)
        self.merger = (branch_a, branch_b, names)
        return self.merger

    def mergerfs(self) -> None:
        layout = self.layout
        assert layout is not None
        plan = self.plan
        merger = self.mergerfs_branches()
        if merger is None:
            return
        branch_a, branch_b, names = merger
        log("mergerfs: cold stat, warm read with cache.files=full")
        mountpoint = self.root / "mnt-mergerfs"
        daemon = self.daemons.mergerfs([branch_a, branch_b], mountpoint)
        size = plan.file_size
        native = layout.big
        through = mountpoint / "data" / "image.npy"
        try:
            cold_mount, cold_base = [], []
            native_paths = [str(layout.repo / relative) for relative in layout.listed]
            merged_paths = [str(mountpoint / "meta" / name) for name in names]
            for _ in range(plan.cold):
                drop_caches()
                cold_base.append(timed(lambda: stat_all(native_paths)))
                self.daemons.stop(daemon)
                daemon = self.daemons.mergerfs([branch_a, branch_b], mountpoint)
                drop_caches()
                cold_mount.append(timed(lambda: stat_all(merged_paths)))
            self.results.add(
                Figure(
                    "mergerfs",
                    f"mergerfs: os.stat of {len(names):,} files, cold (fresh mount)",
                    "/s",
                    len(names),
                    Stats(tuple(cold_mount)),
                    Stats(tuple(cold_base)),
                    what="stats",
                )
            )
        finally:
            self.daemons.stop(daemon)
        # The kernel's FUSE page cache, whoever the daemon: warm reads through mergerfs
        # with cache.files=full (pages kept across opens, like butlerfs's keep_cache).
        daemon = self.daemons.mergerfs([branch_a, branch_b], mountpoint, "cache.files=full")
        try:
            read_sequential(native)
            read_sequential(through)
            self.results.add(
                Figure(
                    "mergerfs",
                    f"mergerfs cache.files=full: sequential read {size / MiB:.0f} MiB, warm",
                    "MB/s",
                    size,
                    repeat(lambda: read_sequential(through), plan.warm),
                    repeat(lambda: read_sequential(native), plan.warm),
                    "backing file",
                )
            )
        finally:
            self.daemons.stop(daemon)

    # Optional: syscall and request counts of ls -l (strace)

    def syscalls(self) -> list[str]:
        """``strace -w -c -f ls -l`` of the listed directory: the backing dir, the mount
        cold and warm; and the FUSE requests the daemon reads during one warm ``ls -l``."""
        layout = self.layout
        assert layout is not None
        if shutil.which("strace") is None:
            return ["strace is not installed"]
        lines = []
        listed = layout.listed_dir
        report = self.root / "strace.txt"
        for label, top, fresh in (
            ("backing dir", layout.repo, False),
            ("mount, cold (fresh mount)", self.mnt, True),
            ("mount, warm", self.mnt, False),
        ):
            if fresh:
                self.fresh_mount()
            else:
                self.ensure_mount()
            subprocess.run(
                ["strace", "-w", "-c", "-f", "-o", str(report), "ls", "-l", str(top / listed)],
                stdout=subprocess.DEVNULL,
                check=True,
            )
            shown = []
            for row in report.read_text().splitlines():
                parts = row.split()
                if len(parts) in (5, 6) and parts[-1] in (
                    "getxattr",
                    "lgetxattr",
                    "statx",
                    "getdents64",
                ):
                    errors = f", {parts[4]} errors" if len(parts) == 6 else ""
                    shown.append(f"{parts[-1]} {parts[3]} calls × {parts[2]} µs{errors}")
            lines.append(f"strace -w -c -f ls -l, {label}: " + "; ".join(shown))
        daemon = self.ensure_mount()
        trace = subprocess.Popen(
            ["strace", "-c", "-f", "-e", "trace=read", "-o", str(report), "-p", str(daemon.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # attached to every thread
        run(["ls", "-l", self.mnt / listed])
        time.sleep(0.5)
        trace.send_signal(signal.SIGINT)
        trace.wait(30)
        reads = [row.split()[3] for row in report.read_text().splitlines() if row.endswith(" read")]
        lines.append(
            f"FUSE requests read by the daemon during one warm ls -l: {reads[0] if reads else '?'}"
        )
        return lines


# -- targets ----------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("PASS" if ok else "MISS")


def targets(bench: Bench, results: Results) -> list[list[str]]:
    """Issue 10's targets (speed ratios: native time / mount time), then the older ones."""
    plan = bench.plan
    rows: list[list[str]] = []
    mib = f"{plan.file_size / MiB:.0f} MiB"

    def ratio_row(target: str, section: str, name: str, least: float) -> None:
        found = results.find(section, name)
        if found is None:
            rows.append([target, "not measured", verdict(None)])
            return
        shown = f"{fmt_ratio(found.ratio)} ({found.show(found.mount)} vs {found.show(found.base)})"
        rows.append([target, shown, verdict(found.ratio >= least)])

    n = f"{plan.listed:,}"
    for label in ("cold: fresh mount", "warm"):
        when = label.split(":")[0]
        ratio_row(
            f"ls -l of {n} entries ≤ 1.5× the backing dir ({when}, default options)",
            "metadata",
            f"ls -l of a {n}-entry dir, {label}: butlerfs",
            1 / 1.5,
        )
    for when in ("cold", "warm"):
        ratio_row(
            f"{when} sequential read, passthrough ≥ 0.95× native",
            "read",
            f"sequential read {mib}, 1 MiB blocks, {when}: {PASSTHROUGH}",
            0.95,
        )
    cold_random = f"4 KiB random reads ({plan.random_cold:,} per run), cold"
    ratio_row(
        "cold 4 KiB random reads, passthrough ≥ 0.9× native",
        "read",
        f"{cold_random}: {PASSTHROUGH}",
        0.9,
    )
    ratio_row(
        "cold 4 KiB random reads, without passthrough ≥ 0.5× native",
        "read",
        f"{cold_random}: {NO_PASSTHROUGH}",
        0.5,
    )
    for stats, least, who in (
        (bench.copy_mount, 500, "one cp"),
        (bench.copy_parallel, 1500, f"{WRITERS} parallel cp"),
    ):
        target = f"cp of {plan.copies:,} small FITS into two outputs, {who}, ≥ {least:,} files/s"
        if stats is None:
            rows.append([target, "not measured", verdict(None)])
            continue
        rate = plan.copies / stats.median
        rows.append([target, f"{rate:,.0f} files/s", verdict(rate >= least)])
    warm_stat = results.find("metadata", f"os.stat of {n} files (no listing first), warm")
    if warm_stat:
        rows.append(["warm stat ≥ 0.9× native", fmt_ratio(warm_stat.ratio)])
        rows[-1].append(verdict(warm_stat.ratio >= 0.9))
    cold_stat = results.find(
        "metadata", f"os.stat of {n} files (no listing first), cold: fresh mount"
    )
    if cold_stat:
        rate = cold_stat.rate(cold_stat.mount)
        rows.append(["cold stat ≥ 10,000/s", f"{rate:,.0f}/s", verdict(rate >= 10_000)])
    registered = bench.registered
    label = f"{registered:,} datasets"
    startup = results.startup.get(label)
    judged = registered >= 1_000_000
    if startup is not None:
        rows.append(
            [
                "mount start-up with 10^6 datasets ≤ 1 s",
                f"{fmt_time(startup.median)} ({label})",
                verdict(startup.median <= 1.0 if judged else None),
            ]
        )
    if results.memory:
        peak = max(hwm for _, _, hwm in results.memory)
        rows.append(
            [
                "daemon memory with 10^6 datasets ≤ 500 MB",
                f"peak RSS (VmHWM) {peak / 1e6:.0f} MB ({label})",
                verdict(peak <= 500e6 if judged else None),
            ]
        )
    return rows


# -- report -----------------------------------------------------------------------------


def report(bench: Bench, results: Results, markdown: bool) -> None:
    md = markdown
    print(simple_table(["machine", ""], [list(pair) for pair in results.info], markdown=md))
    print()
    print(
        "Speed ratio = native time / butlerfs time (= butlerfs rate / native rate); "
        "1.00× = native speed. Medians of n runs."
    )
    header = ["operation", "n", "butlerfs", "baseline (same run, same disk)", "baseline", "ratio"]
    lines = []
    for figure in results.figures:
        lines.append(
            [
                figure.name,
                str(figure.mount.n),
                figure.show(figure.mount),
                figure.base_label,
                figure.show(figure.base),
                fmt_ratio(figure.ratio),
            ]
        )
    print(simple_table(header, lines, markdown=md))
    print()
    if results.startup:
        base = results.startup.get("empty repository")
        rows = []
        for label, stats in results.startup.items():
            ratio = fmt_ratio(base.median / stats.median) if base else "-"
            rows.append([label, str(stats.n), fmt_time(stats.median), ratio])
        print("Mount start-up, spawn of 'butlerfs mount SOURCE MNT -f' to os.path.ismount:")
        print(
            simple_table(
                ["repository", "n", "median", "speed vs empty repository"], rows, markdown=md
            )
        )
        print()
    if results.memory:
        rows = [
            [label, f"{rss / 1e6:.0f} MB", f"{hwm / 1e6:.0f} MB"]
            for label, rss, hwm in results.memory
        ]
        print("Daemon memory (/proc/PID/status), start-up repository:")
        print(simple_table(["when", "VmRSS", "VmHWM (peak)"], rows, markdown=md))
        print()
    for note in results.notes:
        print(f"note: {note}")
    print(f"mergerfs: {results.mergerfs or 'not run'}")
    print()
    print("Targets:")
    print(simple_table(["target", "measured", "verdict"], targets(bench, results), markdown=md))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, smaller sizes (~2 min)")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--dir", default=str(PROJECT.parent), help="where to make the temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--syscalls", action="store_true", help="also strace -c one ls -l (for analysis)"
    )
    parser.add_argument(
        "--only",
        default="reads,metadata,copies,startup,mergerfs",
        help="comma-separated sections to run (default: all)",
    )
    return parser.parse_args(argv)


def _interrupt(number: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {number}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    sections = set(args.only.split(","))
    for tool in ("fusermount3", "ls", "find", "cp"):
        if shutil.which(tool) is None:
            print(f"bench/mount.py needs {tool}", file=sys.stderr)
            return 1
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("bench/mount.py needs root (drop_caches) and /dev/fuse", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _interrupt)
    root = Path(tempfile.mkdtemp(prefix="butlerfs-mount-bench-", dir=args.dir))
    (root / "logs").mkdir()
    started = time.time()
    counters = CpuCounters.now()
    results = Results()
    daemons = Daemons(root)
    bench = Bench(root, plan, daemons, results)
    syscall_lines: list[str] = []
    interrupted = False
    try:
        fsync = fsync_probe(root)
        results.info = [
            *machine(root),
            ("nproc", command_version(["nproc"])),
            ("pyfuse3", pyfuse3_version()),
            ("fuse", command_version(["fusermount3", "-V"])),
            (
                "fsync",
                f"overwrite 1 KiB in place + fsync: median {fmt_time(fsync.median)}, "
                f"p90 {fmt_time(fsync.p90)}",
            ),
            ("butlerfs", f"{PROJECT} at {source_revision(PROJECT, 'butlerfs')}"),
            ("butler", f"at {source_revision(PROJECT, 'butler')}"),
            (
                "source digest",
                f"{tree_digest('butler', 'butlerfs')} (sha256 of butler/, butlerfs/ *.py)",
            ),
            ("load before", " ".join(f"{x:.2f}" for x in os.getloadavg())),
            ("plan", "quick" if args.quick else "full"),
        ]
        bench.layout = build_main(root, plan)
        if "reads" in sections:
            bench.reads()
        if "metadata" in sections:
            bench.metadata()
        if args.syscalls:
            syscall_lines = bench.syscalls()
        if bench.mount is not None:
            daemons.stop(bench.mount)
            bench.mount = None
        if "copies" in sections:
            bench.copies()
        if "mergerfs" in sections:
            bench.mergerfs()
        if "startup" in sections:
            bench.startup()
    except KeyboardInterrupt:
        log("interrupted: unmounting and cleaning up")
        interrupted = True
    finally:
        # A second Ctrl-C must not leave a mount behind: cleaning up is not interruptible.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        daemons.stop_all()
        left = mounts_under(root)
        for target in left:
            subprocess.run(["fusermount3", "-uz", target], check=False)
        left = mounts_under(root)
        if left:
            log(f"still mounted, NOT removing {root}: {left}")
        elif args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if interrupted:
        return 130
    elapsed = time.time() - started
    results.info.append(("during the run", interference(counters, CpuCounters.now(), elapsed)))
    print(f"butlerfs mount benchmark — {time.strftime('%Y-%m-%d %H:%M %Z')}")
    python = os.path.relpath(sys.executable)
    python = sys.executable if python.startswith("..") else python
    print(f"command: {' '.join([python, *sys.argv])}")
    print()
    report(bench, results, args.markdown)
    for line in syscall_lines:
        print(line)
    print(f"total run time {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
