"""Small helpers shared by the benchmarks: timing, statistics, tables, the machine.

Nothing here knows about the butler.  A benchmark times an operation and a
baseline (plain file I/O doing the same job) in the same run, on the same disk,
and reports both with their ratio, so a figure means something on any machine.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Stats:
    """Wall-clock samples of one operation, in seconds."""

    samples: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        ordered = sorted(self.samples)
        middle = len(ordered) // 2
        if len(ordered) % 2:
            return ordered[middle]
        return (ordered[middle - 1] + ordered[middle]) / 2

    @property
    def mean(self) -> float:
        """Shows costs paid once every k calls (batched flushes), which a median hides."""
        return sum(self.samples) / len(self.samples)

    @property
    def p90(self) -> float:
        """90th percentile, nearest-rank (the smallest sample >= 90% of them)."""
        ordered = sorted(self.samples)
        return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def measure(
    operation: Callable[[int], object],
    repeat: int,
    *,
    warmup: int = 1,
    setup: Callable[[int], object] | None = None,
    budget: float | None = None,
) -> Stats:
    """Time ``operation(i)`` for i in range(repeat), after ``warmup`` untimed calls.

    ``setup(i)``, if given, runs untimed before each call (warm-up calls get negative i).
    ``budget`` (seconds of timed calls) stops a slow operation early, after at least 10.
    """
    for i in range(-warmup, 0):
        if setup is not None:
            setup(i)
        operation(i)
    gc.collect()
    samples = []
    clock = time.perf_counter
    for i in range(repeat):
        if setup is not None:
            setup(i)
        start = clock()
        operation(i)
        samples.append(clock() - start)
        if budget is not None and len(samples) >= 10 and sum(samples) > budget:
            break
    return Stats(tuple(samples))


def measure_command(argv: Sequence[str], repeat: int, *, warmup: int = 1) -> Stats:
    """Wall-clock time of a fresh process running ``argv`` (output discarded)."""

    def run(_: int) -> None:
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)

    return measure(run, repeat, warmup=warmup)


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(value: float) -> str:
    return f"{value:.1f}×" if value >= 10 else f"{value:.2f}×"


@dataclass
class Row:
    """One measured operation and the plain-I/O baselines it is compared with."""

    name: str
    stats: Stats
    baselines: list[tuple[str, Stats]] = field(default_factory=list)


def table(rows: Sequence[Row], *, markdown: bool = False) -> str:
    """Rows as a text (or Markdown) table: one line per (operation, baseline) pair.

    The ratio is operation median / baseline median.
    """
    header = ["operation", "n", "median", "p90", "mean", "baseline (same run, same disk)"]
    header += ["median", "ratio"]
    lines: list[list[str]] = []
    for row in rows:
        stats = row.stats
        first = [
            row.name,
            str(stats.n),
            *(fmt_time(t) for t in (stats.median, stats.p90, stats.mean)),
        ]
        if not row.baselines:
            lines.append([*first, "-", "-", "-"])
        for index, (label, base) in enumerate(row.baselines):
            ratio = stats.median / base.median if base.median > 0 else float("inf")
            lead = first if index == 0 else [""] * len(first)
            lines.append([*lead, label, fmt_time(base.median), fmt_ratio(ratio)])
    return _render(header, lines, markdown, right={1, 2, 3, 4, 6, 7})


def simple_table(header: Sequence[str], lines: Sequence[Sequence[str]], *, markdown: bool) -> str:
    return _render(list(header), [list(line) for line in lines], markdown, right=set())


def _render(header: list[str], lines: list[list[str]], markdown: bool, right: set[int]) -> str:
    if markdown:
        out = ["| " + " | ".join(header) + " |"]
        out.append(
            "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|"
        )
        out.extend("| " + " | ".join(cell or " " for cell in line) + " |" for line in lines)
        return "\n".join(out)
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]

    def render(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(header), rule, *(render(line) for line in lines)])


def fsync_probe(directory: Path, repeat: int = 50) -> Stats:
    """Write 1 KiB and fsync it: the floor under any durable write on this disk."""
    path = directory / ".fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:

        def once(_: int) -> None:
            os.pwrite(fd, b"x" * 1024, 0)
            os.fsync(fd)

        return measure(once, repeat, warmup=3)
    finally:
        os.close(fd)
        path.unlink()


def create_probe(directory: Path, repeat: int = 200) -> Stats:
    """Create an empty file (no fsync), a put's most frequent metadata operation; on a
    shared VM's disk it varies by 30x from one minute to the next, so it is taken at
    the start and at the end of a run."""
    made = directory / ".create-probe"
    made.mkdir()
    try:

        def once(n: int) -> None:
            os.close(os.open(made / f"f{n}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))

        return measure(once, repeat, warmup=3)
    finally:
        shutil.rmtree(made, ignore_errors=True)


def machine(directory: Path) -> list[tuple[str, str]]:
    """What the figures were measured on: CPUs, kernel, Python, the disk under ``directory``."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    disk = "?"
    if shutil.which("findmnt"):
        found = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE,FSTYPE,TARGET", "--target", str(directory)],
            capture_output=True,
            text=True,
        )
        disk = " ".join(found.stdout.split()) or "?"
    usage = shutil.disk_usage(directory)
    return [
        ("cpus", f"{os.cpu_count()} (nproc), {cpu}"),
        ("kernel", f"{platform.system()} {platform.release()} {platform.machine()}"),
        (
            "python",
            f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        ),
        ("temp dir", str(directory)),
        ("disk", f"{disk}, {usage.free / 2**30:.0f} GiB free"),
    ]


def source_revision(checkout: Path, package: str) -> str:
    """The git commit of ``checkout`` and whether ``package`` differs from it (read-only git)."""
    git = ["git", "--no-optional-locks", "-C", str(checkout)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        clean = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", package]).returncode == 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head}" + ("" if clean else f" + uncommitted changes in {package}/")


@dataclass(frozen=True)
class CpuCounters:
    """Machine-wide busy and steal CPU seconds (/proc/stat) and this process's own."""

    busy: float
    steal: float
    own: float

    @classmethod
    def now(cls) -> CpuCounters:
        times = os.times()
        own = times.user + times.system + times.children_user + times.children_system
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return cls(0.0, 0.0, own)
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
        hz = os.sysconf("SC_CLK_TCK")
        return cls((user + nice + system + irq + softirq) / hz, steal / hz, own)


def interference(before: CpuCounters, after: CpuCounters, seconds: float) -> str:
    """How much CPU other processes (and the hypervisor, as steal) took during a run."""
    others = max(0.0, (after.busy - before.busy) - (after.own - before.own))
    capacity = seconds * (os.cpu_count() or 1)
    share = 100 * others / capacity if capacity else 0.0
    steal = after.steal - before.steal
    busy = "  (busy machine: figures may be inflated)" if share > 10 else ""
    return (
        f"other processes used {others:.1f} CPU-s ({share:.0f}% of the cores), "
        f"steal {steal:.1f} s{busy}"
    )
