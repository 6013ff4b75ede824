"""Benchmark of the butler library (SPEC §6) against plain file I/O on the same disk.

    .venv/bin/python bench/library.py [--quick] [--sizes 10000,100000,1000000]
                                      [--dir DIR] [--markdown]

Not a test: it prints what it measured.  Every figure comes with a baseline that
does the same job with plain file I/O, measured in the same run on the same disk
(bench/README.md explains each one), and the ratio between the two.  Targets are
checked last and each is reported PASS or MISS.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import itertools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import yaml
from astropy.io import fits
from common import (
    CpuCounters,
    Row,
    Stats,
    create_probe,
    fmt_ratio,
    fmt_time,
    fsync_probe,
    interference,
    machine,
    measure,
    measure_command,
    simple_table,
    source_revision,
    table,
)

from butler import Butler, DataRepository
from butler.formats import get_format
from butler.journal import FileRecord, PutEntry
from butler.registry import SQLiteRegistry as Registry

PROJECT = Path(__file__).resolve().parents[1]
META_TEMPLATE = "{datasetType}/v{visit:07d}/{datasetType}-v{visit:07d}-c{ccd:03d}.yaml"
POLICY: dict[str, object] = {
    "genres": {
        "ccdmeta": {
            "keys": {"visit": "int", "ccd": "int"},
            "template": META_TEMPLATE,
            "storage": "yaml",
            "python": "dict",
        },
        "exposure": {
            "keys": {"visit": "int", "ccd": "int"},
            "template": "{datasetType}/v{visit:07d}/{datasetType}-v{visit:07d}-c{ccd:03d}.fits",
            "storage": "fits",
            "python": "numpy.ndarray",
        },
    },
    "datasetTypes": {"meta": {"genre": "ccdmeta"}, "calexp": {"genre": "exposure"}},
}
IMAGE_SHAPE = (4096, 4096)  # float32: 64 MiB of pixels
SOLO_VISIT = 9_000_000  # visits holding one real dataset each (full and partial-ID gets)
PUT_VISIT = 8_000_000  # visits receiving puts during the scale runs
CHUNK = 10_000  # registry rows per insert_many transaction when filling
BUDGET = 5.0  # seconds of timed calls per operation and size: a slow one stops early
REFERENCE = "lsst-daf-butler on this machine class (from the issue)"


@dataclass(frozen=True)
class Reps:
    put_small: int
    put_large: int
    get_small: int
    get_large: int
    query: int
    get_at_size: int
    put_at_size: int
    imports: int = 10


FULL = Reps(
    put_small=200,
    put_large=10,
    get_small=500,
    get_large=20,
    query=50,
    get_at_size=300,
    put_at_size=100,
)
QUICK = Reps(
    put_small=50, put_large=3, get_small=100, get_large=5, query=20, get_at_size=100, put_at_size=20
)


def load_average() -> str:
    """1/5/15-minute load: other work on the 2 cores or the disk inflates every figure."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min; counts processes waiting on I/O)"


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def small_object(seed: int = 0) -> dict[str, object]:
    """A plain dict that serializes to 1 KiB of YAML (padded to exactly 1024 bytes)."""
    obj: dict[str, object] = {
        "visit": seed,
        "filter": "r",
        "exptime": 30.0,
        "airmass": 1.2345,
        "keys": {f"key{i:02d}": float(i) * 1.5 for i in range(24)},
        "note": "",
    }
    size = len(get_format("yaml").serialize(obj))
    obj["note"] = "x" * (1024 - size - 3)  # '' -> 'xxx' drops the quotes (2 bytes) and pads
    while len(get_format("yaml").serialize(obj)) < 1024:
        obj["note"] = str(obj["note"]) + "x"
    return obj


def new_repository(path: Path) -> Path:
    DataRepository.create(path, policy=POLICY).close()
    return path


def counter() -> Iterator[int]:
    return itertools.count()


# -- plain file I/O baselines --------------------------------------------------------------


def write_fsync(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def plain_put(
    directories: list[Path], data: bytes, numbers: Iterator[int]
) -> Callable[[int], None]:
    """Write + fsync a temporary file, rename it into place; once per directory."""

    def put(_: int) -> None:
        name = f"f{next(numbers):07d}.yaml"
        for directory in directories:
            temporary = directory / f".{name}.tmp"
            write_fsync(temporary, data)
            os.rename(temporary, directory / name)

    return put


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as stream:
        return stream.read()


def read_into(path: str, buffer: bytearray) -> int:
    """Read a whole file into an already allocated buffer: the page-cache copy alone."""
    with open(path, "rb", buffering=0) as stream:
        return stream.readinto(buffer)  # type: ignore[attr-defined]


def yaml_load(path: str) -> object:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(read_bytes(path), Loader=loader)


def glob_read(pattern: str) -> bytes:
    (found,) = glob.glob(pattern)
    return read_bytes(found)


# -- sections -----------------------------------------------------------------------------


def bench_import(reps: Reps) -> tuple[Row, float]:
    log("import time")
    python = sys.executable
    bare = measure_command([python, "-c", "pass"], reps.imports)
    full = measure_command([python, "-c", "import butler"], reps.imports)
    row = Row("import butler (fresh process)", full, [("python -c pass", bare)])
    return row, full.median - bare.median


def bench_put_small(root: Path, reps: Reps) -> list[Row]:
    log(f"small puts ({reps.put_small} each)")
    obj = small_object()
    data = get_format("yaml").serialize(obj)
    one = Butler(outputs=[str(new_repository(root / "put1" / "A"))])
    two = Butler(
        outputs=[str(new_repository(root / "put2" / "A")), str(new_repository(root / "put2" / "B"))]
    )

    def butler_put(butler: Butler, numbers: Iterator[int]) -> Callable[[int], None]:
        def put(_: int) -> None:
            n = next(numbers)
            butler.put(obj, "meta", visit=10 + n // 100, ccd=n % 100)

        return put

    plain1 = [root / "plain-put1" / "A"]
    plain2 = [root / "plain-put2" / name for name in ("A", "B")]
    for directory in plain1 + plain2:
        directory.mkdir(parents=True)
    rows = []
    for label, butler, dirs in (("1 output", one, plain1), ("2 outputs", two, plain2)):
        stats = measure(butler_put(butler, counter()), reps.put_small, warmup=5)
        base = measure(plain_put(dirs, data, counter()), reps.put_small, warmup=5)
        what = "1 dir" if len(dirs) == 1 else "2 dirs"
        rows.append(
            Row(
                f"put 1 KiB YAML, {label}",
                stats,
                [(f"write+fsync+rename, {what}", base)],
            )
        )
    one.close()
    two.close()
    return rows


@dataclass(frozen=True)
class Throughput:
    single: float  # puts/s, one writer
    threads: float  # puts/s, 8 threads through one Butler
    processes: float  # puts/s, 8 processes
    batch: float  # puts/s, Butler.ingest_many of files


WRITERS = 8
_PROCESS_WRITER = """
import sys, time
from butler import Butler
a, b, start, count, go = sys.argv[1:6]
butler = Butler(outputs=[a, b])
obj = {"k": "v" * 900}
while not __import__("os").path.exists(go):
    time.sleep(0.001)
for n in range(int(start), int(start) + int(count)):
    butler.put(obj, "meta", visit=n // 100, ccd=n % 100)
butler.close()
"""


def bench_throughput(root: Path, reps: Reps) -> Throughput:
    """Puts per second to 2 outputs: one writer, 8 threads, 8 processes, a batch of files."""
    import subprocess
    import threading

    log("throughput: 1 writer, 8 threads, 8 processes, ingest_many")
    obj = small_object()
    per = reps.put_small  # puts per writer
    numbers = itertools.count(10_000_000)

    def outputs(name: str) -> list[str]:
        return [str(new_repository(root / name / each)) for each in ("A", "B")]

    def timed(run: Callable[[], None], count: int) -> float:
        start = time.perf_counter()
        run()
        return count / (time.perf_counter() - start)

    single_outputs = outputs("tp-single")
    with Butler(outputs=single_outputs) as butler:
        butler.put(obj, "meta", visit=0, ccd=0)

        def single() -> None:
            for _ in range(per * 2):
                n = next(numbers)
                butler.put(obj, "meta", visit=n // 100, ccd=n % 100)

        single_rate = timed(single, per * 2)
    with Butler(outputs=outputs("tp-threads")) as butler:
        butler.put(obj, "meta", visit=0, ccd=0)

        def work() -> None:
            for _ in range(per):
                n = next(numbers)
                butler.put(obj, "meta", visit=n // 100, ccd=n % 100)

        def threads() -> None:
            pool = [threading.Thread(target=work) for _ in range(WRITERS)]
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()

        thread_rate = timed(threads, per * WRITERS)
    a, b = outputs("tp-processes")
    go = root / "tp-go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _PROCESS_WRITER, a, b, str(1000 * (w + 1)), str(per), str(go)]
        )
        for w in range(WRITERS)
    ]
    time.sleep(1.5)  # let every child import and open: the timing starts at "go"
    start = time.perf_counter()
    go.touch()
    if any(child.wait() for child in children):
        raise RuntimeError("a writer process failed")
    process_rate = per * WRITERS / (time.perf_counter() - start)
    files = root / "tp-files"
    files.mkdir()
    data = get_format("yaml").serialize(obj)
    items = []
    for n in range(per * 4):
        path = files / f"{n}.yaml"
        path.write_bytes(data)
        items.append((path, "meta", {"visit": n // 100, "ccd": n % 100}))
    with Butler(outputs=outputs("tp-batch")) as butler:
        batch_rate = timed(lambda: _check(butler.ingest_many(items)), len(items))
    return Throughput(single_rate, thread_rate, process_rate, batch_rate)


def _check(results: list[object]) -> None:
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} puts failed: {failed[0]}")


def bench_put_large(root: Path, reps: Reps, image: np.ndarray) -> list[Row]:
    log(f"large puts ({reps.put_large} each, 64 MiB)")
    data = get_format("fits").serialize(image)
    one = Butler(outputs=[str(new_repository(root / "putL1" / "A"))])
    two = Butler(
        outputs=[
            str(new_repository(root / "putL2" / "A")),
            str(new_repository(root / "putL2" / "B")),
        ]
    )
    plain1 = [root / "plain-putL1" / "A"]
    plain2 = [root / "plain-putL2" / name for name in ("A", "B")]
    for directory in plain1 + plain2:
        directory.mkdir(parents=True)

    def butler_put(butler: Butler) -> Callable[[int], None]:
        numbers = counter()

        def put(_: int) -> None:
            butler.put(image, "calexp", visit=10, ccd=next(numbers))

        return put

    def plain_large(dirs: list[Path]) -> Callable[[int], None]:
        numbers = counter()

        def put(_: int) -> None:  # new files, like a put: see "Fairness" in bench/README.md
            name = f"image{next(numbers):03d}.fits"
            for directory in dirs:
                write_fsync(directory / name, data)

        return put

    rows = []
    for label, butler, dirs in (("1 output", one, plain1), ("2 outputs", two, plain2)):
        stats = measure(butler_put(butler), reps.put_large)
        base = measure(plain_large(dirs), reps.put_large)
        what = "1 file" if len(dirs) == 1 else "2 files"
        rows.append(Row(f"put 64 MiB FITS, {label}", stats, [(f"write+fsync, {what}", base)]))
    one.close()
    two.close()
    shutil.rmtree(root / "putL1")
    shutil.rmtree(root / "putL2")
    shutil.rmtree(root / "plain-putL1")
    shutil.rmtree(root / "plain-putL2")
    return rows


def bench_get(root: Path, reps: Reps, image: np.ndarray) -> list[Row]:
    log("gets")
    path = new_repository(root / "get")
    with Butler(path) as writer:
        writer.put(small_object(), "meta", visit=1, ccd=0)
        writer.put(small_object(2), "meta", visit=2, ccd=5)  # visit 2 has one dataset
        writer.put(image, "calexp", visit=1, ccd=0)
    butler = Butler(path)
    small = butler.uri("meta", visit=1, ccd=0)
    large = butler.uri("calexp", visit=1, ccd=0)
    buffer = bytearray(os.path.getsize(large))
    solo = str(path / "meta" / "v0000002" / "meta-v0000002-c*.yaml")
    assert butler.get("meta", visit=1, ccd=0) == small_object()
    assert np.array_equal(butler.get("calexp", visit=1, ccd=0), image)  # type: ignore[arg-type]

    rows = [
        Row(
            "get 1 KiB YAML by full data ID",
            measure(lambda _: butler.get("meta", visit=1, ccd=0), reps.get_small, warmup=5),
            [
                ("read file bytes", measure(lambda _: read_bytes(small), reps.get_small)),
                (
                    "read + yaml.load (C loader)",
                    measure(lambda _: yaml_load(small), reps.get_small),
                ),
            ],
        ),
        Row(
            "get 1 KiB YAML by partial ID (visit only, 1 match)",
            measure(lambda _: butler.get("meta", visit=2), reps.get_small, warmup=5),
            [
                ("glob visit dir + read bytes", measure(lambda _: glob_read(solo), reps.get_small)),
                ("read file bytes", measure(lambda _: read_bytes(small), reps.get_small)),
            ],
        ),
        Row(
            "get 64 MiB FITS by full data ID (ndarray)",
            measure(lambda _: butler.get("calexp", visit=1, ccd=0), reps.get_large),
            [
                (
                    "read file bytes into a reused buffer",
                    measure(lambda _: read_into(large, buffer), reps.get_large),
                ),
                (
                    "read file bytes into a new bytes",
                    measure(lambda _: read_bytes(large), reps.get_large),
                ),
                (
                    "fits.getdata(memmap=False)",
                    measure(lambda _: fits.getdata(large, memmap=False), reps.get_large),
                ),
            ],
        ),
    ]
    butler.close()
    return rows


@dataclass
class ScalePoint:
    size: int
    fill_seconds: float
    query: Stats
    get_full: Stats
    get_partial: Stats
    put: Stats


def fill(registry: Registry, start: int, stop: int) -> None:
    """Register datasets start..stop-1 (100 ccds per visit) in chunks; their files don't exist."""
    committed = time.time()
    for first in range(start, stop, CHUNK):
        commits = []
        for n in range(first, min(first + CHUNK, stop)):
            visit, ccd = divmod(n, 100)
            path = f"meta/v{visit:07d}/meta-v{visit:07d}-c{ccd:03d}.yaml"
            entry = FileRecord(0, True, path, "yaml", 1024, "0" * 64)
            commits.append(
                PutEntry(
                    f"{n:016x}-bench",
                    "meta",
                    {"visit": visit, "ccd": ccd},
                    1,
                    committed,
                    (entry,),
                    (),
                )
            )
        registry.insert_many(commits)


def bench_scale(root: Path, reps: Reps, sizes: list[int]) -> tuple[list[Row], list[ScalePoint]]:
    path = new_repository(root / "scale")
    solos = 10
    with Butler(path) as writer:  # the few real files that the gets read
        for k in range(solos):
            writer.put(small_object(k), "meta", visit=SOLO_VISIT + k, ccd=k)
    files = [
        str(path / "meta" / f"v{SOLO_VISIT + k:07d}" / f"meta-v{SOLO_VISIT + k:07d}-c{k:03d}.yaml")
        for k in range(solos)
    ]
    query_dir = root / "plain-query" / "v0000005"
    query_dir.mkdir(parents=True)
    payload = get_format("yaml").serialize(small_object())
    for ccd in range(100):
        (query_dir / f"meta-v0000005-c{ccd:03d}.yaml").write_bytes(payload)
    put_dir = root / "plain-put-scale"
    put_dir.mkdir()
    obj = small_object()
    registry = Registry(path / "registry.sqlite3")
    rows: list[Row] = []
    points: list[ScalePoint] = []
    filled = 0
    for index, size in enumerate(sizes):
        log(f"filling the registry to {size:,} datasets")
        start = time.perf_counter()
        fill(registry, filled, size)
        fill_seconds = time.perf_counter() - start
        filled = size
        log(f"  filled in {fill_seconds:.1f} s; measuring")
        butler = Butler(path)
        visits = [(j * (size // 100)) // 8 for j in range(8)]

        def query(i: int, butler: Butler = butler, visits: list[int] = visits) -> None:
            found = butler.query("meta", visit=visits[i % len(visits)])
            assert len(found) == 100, len(found)

        def get_full(i: int, butler: Butler = butler) -> object:
            k = i % solos
            return butler.get("meta", visit=SOLO_VISIT + k, ccd=k)

        def get_partial(i: int, butler: Butler = butler) -> object:
            return butler.get("meta", visit=SOLO_VISIT + i % solos)

        numbers = itertools.count(100_000 * index)  # fresh data IDs for each size

        def put(_: int, butler: Butler = butler, numbers: Iterator[int] = numbers) -> None:
            n = next(numbers)
            butler.put(obj, "meta", visit=PUT_VISIT + n // 100, ccd=n % 100)

        pattern = str(query_dir / "*.yaml")
        point = ScalePoint(
            size,
            fill_seconds,
            measure(query, reps.query, warmup=3, budget=BUDGET),
            measure(get_full, reps.get_at_size, warmup=5, budget=BUDGET),
            measure(get_partial, reps.get_at_size, warmup=5, budget=BUDGET),
            measure(put, reps.put_at_size, warmup=3, budget=BUDGET),
        )
        points.append(point)
        base_glob = measure(lambda _, p=pattern: glob.glob(p), reps.query, warmup=3)
        base_read = measure(lambda i: read_bytes(files[i % solos]), reps.get_at_size)
        base_put = measure(plain_put([put_dir], payload, counter()), reps.put_at_size, warmup=3)
        at = f"{size:,} registered"
        rows += [
            Row(f"query → 100 datasets, {at}", point.query, [("glob dir of 100 files", base_glob)]),
            Row(f"get by full data ID, {at}", point.get_full, [("read file bytes", base_read)]),
            Row(
                f"get by partial ID (1 match), {at}",
                point.get_partial,
                [("read file bytes", base_read)],
            ),
            Row(
                f"put 1 KiB YAML, 1 output, {at}",
                point.put,
                [("write+fsync+rename, 1 dir", base_put)],
            ),
        ]
        butler.close()
    registry.close()
    return rows, points


def lsst_daf_butler() -> str:
    try:
        spec = importlib.util.find_spec("lsst.daf.butler")
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        return "lsst-daf-butler: not installed; reference figures above are from the issue"
    stats = measure_command([sys.executable, "-c", "import lsst.daf.butler"], 5)
    return f"lsst-daf-butler: installed; 'import lsst.daf.butler' takes {fmt_time(stats.median)}"


# -- targets ------------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("PASS" if ok else "MISS")


def targets(
    rows: dict[str, Row], import_cost: float, points: list[ScalePoint], rates: Throughput
) -> list[tuple[str, str, str, str]]:
    put2 = rows["put 1 KiB YAML, 2 outputs"].stats
    # Judged on the worse of median and mean: puts settle in batches (butler/transaction.py),
    # and the batch's flushes land in a few calls that a median would not show.
    put2_worst = max(put2.median, put2.mean)
    get = rows["get 1 KiB YAML by full data ID"].stats.median
    worst_get = max([get, *(p.get_full.median for p in points)])
    million = next((p for p in points if p.size == 1_000_000), None)
    result = [
        (
            "small durable put, 2 outputs ≤ 1.5 ms (worse of median, mean)",
            "put 7.3 ms",
            f"median {fmt_time(put2.median)}, mean {fmt_time(put2.mean)}",
            verdict(put2_worst <= 1.5e-3),
        ),
        (
            "get by full data ID ≤ 0.5 ms (worst of every size)",
            "get 5.8 ms",
            f"{fmt_time(get)} (worst {fmt_time(worst_get)})",
            verdict(worst_get <= 0.5e-3),
        ),
        (
            "query → 100 of 10^6 ≤ 20 ms",
            "1,000 datasets 14.5 ms",
            fmt_time(million.query.median) if million else "-",
            verdict(million.query.median <= 20e-3 if million else None),
        ),
    ]
    if len(points) >= 2:
        low, high = points[0], points[-1]
        growth = {
            "query": high.query.median / low.query.median,
            "get full": high.get_full.median / low.get_full.median,
            "get partial": high.get_partial.median / low.get_partial.median,
            "put": high.put.median / low.put.median,
        }
        worst = max(growth.values())
        figure = ", ".join(
            f"{name} {fmt_ratio(value)}" + (" (grows)" if value > 1.5 else "")
            for name, value in growth.items()
        )
        result.append(
            (
                f"no growth {low.size:,} → {high.size:,} (each median ≤ 1.5× its first)",
                "-",
                figure,
                verdict(worst <= 1.5),
            )
        )
    else:
        result.append(("no growth with repository size", "-", "one size only", verdict(None)))
    for how, rate in (("threads", rates.threads), ("processes", rates.processes)):
        result.append(
            (
                f"group commit: {WRITERS} writers ({how}) ≥ 3× one writer's puts/s",
                "-",
                f"{rate:.0f}/s = {rate / rates.single:.2f}× of {rates.single:.0f}/s",
                verdict(rate >= 3 * rates.single),
            )
        )
    result.append(
        (
            "import butler ≤ 0.25 s",
            "import 0.9 s",
            fmt_time(import_cost),
            verdict(import_cost <= 0.25),
        )
    )
    return result


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions; sizes ≤ 10^5")
    parser.add_argument("--sizes", help="repository sizes for the scale runs, e.g. 10000,100000")
    parser.add_argument("--dir", help="where to make the temporary directory (default: $TMPDIR)")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.sizes:
        args.sizes = sorted({int(s.replace("_", "")) for s in args.sizes.split(",") if s})
    else:
        args.sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reps = QUICK if args.quick else FULL
    root = Path(tempfile.mkdtemp(prefix="butler-bench-", dir=args.dir))
    started = time.time()
    counters = CpuCounters.now()
    try:
        fsync = fsync_probe(root)
        creates = [create_probe(root)]
        info = [
            *machine(root),
            (
                "fsync",
                f"overwrite 1 KiB in place + fsync: median {fmt_time(fsync.median)}, "
                f"p90 {fmt_time(fsync.p90)}",
            ),
            ("butler", f"{PROJECT / 'butler'} at {source_revision(PROJECT, 'butler')}"),
            ("load before", load_average()),
        ]
        import_row, import_cost = bench_import(reps)
        image = np.random.default_rng(0).standard_normal(IMAGE_SHAPE, dtype=np.float32)
        rows = [import_row]
        rows += bench_put_small(root, reps)
        rates = bench_throughput(root, reps)
        rows += bench_put_large(root, reps, image)
        rows += bench_get(root, reps, image)
        scale_rows, points = bench_scale(root, reps, args.sizes)
        creates.append(create_probe(root))
        info.append(
            (
                "file create",
                "empty file, no fsync: median "
                + " at the start, ".join(fmt_time(each.median) for each in creates)
                + " at the end",
            )
        )
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    elapsed = time.time() - started
    info.append(("during the run", interference(counters, CpuCounters.now(), elapsed)))
    md = args.markdown

    print(f"butler library benchmark — {time.strftime('%Y-%m-%d %H:%M %Z')}")
    python = os.path.relpath(sys.executable)
    python = sys.executable if python.startswith("..") else python
    print(f"command: {' '.join([python, *sys.argv])}")
    print()
    print(simple_table(["machine", ""], [list(pair) for pair in info], markdown=md))
    print()
    print(table(rows, markdown=md))
    print()
    print("Scale: registry filled through butler.registry.Registry.insert_many in chunks of")
    print(f"{CHUNK:,} (100 ccds per visit). The filled datasets' files do NOT exist: a query")
    print("never opens them. The gets read 10 real 1 KiB files put through Butler.put.")
    fills = [[f"{p.size:,}", f"{p.fill_seconds:.1f} s"] for p in points]
    print(simple_table(["registered", "fill time (incremental)"], fills, markdown=md))
    print()
    print(table(scale_rows, markdown=md))
    print()
    print("Medians by repository size (the scale rows above, side by side):")
    summary = [
        [f"{p.size:,}"] + [fmt_time(s.median) for s in (p.query, p.get_full, p.get_partial, p.put)]
        for p in points
    ]
    header = ["registered", "query → 100", "get full ID", "get partial ID", "put 1 output"]
    print(simple_table(header, summary, markdown=md))
    print()
    print("Throughput to 2 outputs (1 KiB YAML puts; puts/s, higher is better):")
    throughput = [
        ["1 writer", f"{rates.single:.0f}", "1.00×"],
        [
            f"{WRITERS} threads, one Butler",
            f"{rates.threads:.0f}",
            fmt_ratio(rates.threads / rates.single),
        ],
        [
            f"{WRITERS} processes",
            f"{rates.processes:.0f}",
            fmt_ratio(rates.processes / rates.single),
        ],
        [
            "Butler.ingest_many (one thread)",
            f"{rates.batch:.0f}",
            fmt_ratio(rates.batch / rates.single),
        ],
    ]
    print(simple_table(["writers", "puts/s", "vs 1 writer"], throughput, markdown=md))
    print()
    print(f"Targets (reference: {REFERENCE}):")
    header = ["target", "lsst-daf-butler", "measured", "verdict"]
    print(
        simple_table(
            header,
            [list(t) for t in targets({r.name: r for r in rows}, import_cost, points, rates)],
            markdown=md,
        )
    )
    print(
        f"import butler = median of {reps.imports} fresh 'python -c \"import butler\"' "
        f"minus median of 'python -c pass'"
    )
    print(lsst_daf_butler())
    print(f"total run time {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
