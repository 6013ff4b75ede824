"""Scale-out benchmark: the registry in PostgreSQL beside SQLite, in the same run.

    .venv/bin/python bench/scale.py [--size 10000000] [--url postgresql://HOST/DB]
                                    [--dir DIR] [--markdown] [--keep] [--quick]

Not a test: it prints what it measured (docs/benchmarks.md, "Scale-out").  Both
engines get the same repository: ``--size`` datasets of one dataset type
(``meta/v<visit>/c<ccd>.yaml``, 100 ccds per visit) and 4·10^5 of another
(``flat/b<block>/e<exposure>.yaml``: 40 directories of 10,000 entries, for
``ls -l``), registered through ``Registry.insert_many`` (PostgreSQL: ``COPY``);
their files do not exist, except for a few real ones put through ``Butler.put``
that the gets read.  Then, for each engine:

- the library at that size: get by full data ID, a partial-ID query returning
  100 (by visit), a small put to two outputs of that engine;
- the mount: start-up, ``ls -l`` of a 10,000-entry directory (cold and warm), the
  daemon's memory after start and after listing 4·10^5 entries;
- concurrent writers: 1 then 16 processes putting to the same two outputs (and,
  for contrast, 16 to two outputs each of their own), nothing lost;
- notice latency: a put through the library, until a second mount shows the new
  size of a file the kernel had cached (PostgreSQL: LISTEN/NOTIFY; SQLite: the
  0.3 s poll).

Without ``--url`` it starts a throwaway PostgreSQL with the server's durable
defaults (tests/pg.py), as root under the ``postgres`` user.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(PROJECT))

from common import (  # noqa: E402
    CpuCounters,
    Stats,
    fmt_time,
    interference,
    machine,
    measure,
    simple_table,
    source_revision,
)

from butler import Butler, DataRepository  # noqa: E402
from butler.journal import FileRecord, PutEntry  # noqa: E402

TEMPLATE = "{datasetType}/v{visit:07d}/c{ccd:03d}.yaml"
FLAT_TEMPLATE = "{datasetType}/b{block:03d}/e{exposure:07d}.yaml"
POLICY: dict[str, object] = {
    "genres": {
        "ccd": {
            "keys": {"visit": "int", "ccd": "int"},
            "template": TEMPLATE,
            "storage": "yaml",
            "python": "dict",
        },
        "exposure": {
            "keys": {"block": "int", "exposure": "int"},
            "template": FLAT_TEMPLATE,
            "storage": "yaml",
            "python": "dict",
        },
    },
    "datasetTypes": {"meta": {"genre": "ccd"}, "flat": {"genre": "exposure"}},
}
PER_VISIT = 100  # meta: 100 ccds per visit directory (a partial ID by visit: 100)
PER_BLOCK = 10_000  # flat: the 10,000-entry directories that ls -l lists
BLOCKS = 40
CHUNK = 100_000  # datasets per insert_many call (one transaction)
SOLO_VISIT = 9_000_000  # visits of the real files (never filled)
ENGINES = ("sqlite", "postgresql")
MOUNT_DEADLINE = 60.0
WRITERS = 16


@dataclass
class Engine:
    name: str
    registry: str  # "sqlite" or the URL
    big: Path = Path()
    small: Path = Path()
    fill_seconds: float = 0.0
    analyze_seconds: float = 0.0
    library: dict[str, Stats] = field(default_factory=dict)
    mount: dict[str, object] = field(default_factory=dict)
    writers: dict[str, object] = field(default_factory=dict)
    notices: Stats | None = None


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def path_of(visit: int, ccd: int) -> str:
    return TEMPLATE.format(datasetType="meta", visit=visit, ccd=ccd)


def entries(start: int, stop: int, committed: float) -> Iterator[PutEntry]:
    for n in range(start, stop):
        visit, ccd = divmod(n, PER_VISIT)
        record = FileRecord(0, True, path_of(visit, ccd), "yaml", 1024, "0" * 64)
        data_id: dict[str, int | str] = {"visit": visit, "ccd": ccd}
        yield PutEntry(f"{n:016x}-{0:012x}", "meta", data_id, 1, committed, (record,), ())


def flat_entries(committed: float) -> Iterator[PutEntry]:
    for n in range(BLOCKS * PER_BLOCK):
        block = n // PER_BLOCK
        path = FLAT_TEMPLATE.format(datasetType="flat", block=block, exposure=n)
        record = FileRecord(0, True, path, "yaml", 2048, "0" * 64)
        data_id: dict[str, int | str] = {"block": block, "exposure": n}
        yield PutEntry(f"{n:016x}-{1:012x}", "flat", data_id, 1, committed, (record,), ())


def fill(engine: Engine, size: int) -> None:
    repo = DataRepository(engine.big)
    registry = repo.registry
    committed = time.time()
    started = time.perf_counter()
    for first in range(0, size, CHUNK):
        registry.insert_many(entries(first, min(first + CHUNK, size), committed))
        if first and first % (10 * CHUNK) == 0:
            rate = first / (time.perf_counter() - started)
            log(f"  {engine.name}: {first:,} registered ({rate:,.0f}/s)")
    registry.insert_many(flat_entries(committed))  # the directories ls -l lists
    engine.fill_seconds = time.perf_counter() - started
    if repo.database is not None:  # what autovacuum would do after a bulk load, now
        started = time.perf_counter()
        schema = repo.database.schema
        repo.database.pool.run(
            lambda connection: (
                connection.execute(f'ANALYZE "{schema}".datasets')
                and connection.execute(f'ANALYZE "{schema}".files')
                and connection.execute(f'ANALYZE "{schema}".keys')
            ),
            "analyze",
        )
        engine.analyze_seconds = time.perf_counter() - started
    repo.close()


# -- the library -----------------------------------------------------------------------


def bench_library(engine: Engine, size: int, quick: bool) -> None:
    solos = 10
    with Butler(engine.big) as butler:
        for k in range(solos):
            butler.put({"solo": k, "pad": "x" * 900}, "meta", visit=SOLO_VISIT + k, ccd=k)
    visits = max(1, size // PER_VISIT)
    both = Butler(outputs=[engine.big, engine.small])
    alone = Butler(engine.big)

    def get_full(i: int) -> object:
        k = i % solos
        return alone.get("meta", visit=SOLO_VISIT + k, ccd=k)

    def query(i: int) -> None:
        found = alone.query("meta", visit=(i * 7919) % visits)
        assert len(found) == min(PER_VISIT, size), len(found)

    numbers = iter(range(10**9))

    def put(_: int) -> None:
        n = next(numbers)
        both.put({"n": n}, "meta", visit=SOLO_VISIT + 100 + n // 100, ccd=n % 100)

    reps = 0.3 if quick else 1.0
    engine.library["get by full data ID"] = measure(get_full, int(300 * reps), warmup=10)
    engine.library["query → 100 (by visit)"] = measure(query, int(100 * reps), warmup=5)
    engine.library["put 1 KiB YAML, 2 outputs"] = measure(put, int(200 * reps), warmup=5)
    both.close()
    alone.close()


# -- the mount ---------------------------------------------------------------------------


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT), *filter(None, [env.get("PYTHONPATH")])])
    return env


class Mount:
    def __init__(self, source: Path, mountpoint: Path, log_path: Path) -> None:
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.mountpoint = mountpoint
        started = time.perf_counter()
        with open(log_path, "ab") as daemon_log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "butlerfs", "mount", str(source), str(mountpoint), "-f"],
                stdout=daemon_log,
                stderr=daemon_log,
                env=environment(),
            )
        deadline = time.monotonic() + MOUNT_DEADLINE
        while not os.path.ismount(mountpoint):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the mount on {mountpoint} failed; see {log_path}")
            time.sleep(0.005)
        self.startup = time.perf_counter() - started

    def rss(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def unmount(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "butlerfs", "umount", str(self.mountpoint)],
            env=environment(),
            check=False,
            capture_output=True,
        )
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], check=False)


def import_cost() -> float:
    """Seconds a fresh Python takes to import the daemon's modules (part of start-up)."""
    stats = measure(
        lambda _: subprocess.run(
            [sys.executable, "-c", "import butlerfs.daemon"], env=environment(), check=True
        ),
        5,
    )
    return stats.median


def bench_mount(engine: Engine, root: Path, size: int) -> None:
    startups = []
    for attempt in range(3):
        mount = Mount(engine.big, root / f"mnt-{engine.name}", root / f"{engine.name}.log")
        startups.append(mount.startup)
        if attempt < 2:
            mount.unmount()
    engine.mount["start-up"] = Stats(tuple(startups))
    engine.mount["rss after start"] = mount.rss()

    def ls(block: int) -> None:
        done = subprocess.run(
            ["ls", "-l", str(mount.mountpoint / "flat" / f"b{block:03d}")],
            capture_output=True,
            check=True,
        )
        lines = done.stdout.count(b"\n")
        assert lines == PER_BLOCK + 1, lines  # "total" and one line each

    engine.mount["ls -l cold"] = measure(ls, 10, warmup=0)
    engine.mount["ls -l warm"] = measure(lambda i: ls(i % 3), 10, warmup=1)
    engine.mount["rss after 10 dirs"] = mount.rss()
    for block in range(10, BLOCKS):
        ls(block)
    engine.mount["rss after 40 dirs"] = mount.rss()
    mount.unmount()


# -- concurrent writers ------------------------------------------------------------------

WRITER = r"""
import sys, time
from pathlib import Path
from butler import Butler

worker, count, rendezvous, *outputs = sys.argv[1:]
worker, count, rendezvous = int(worker), int(count), Path(rendezvous)
butler = Butler(outputs=outputs)
butler.put({"warm": worker}, "meta", visit=8_000_000 + worker, ccd=999)
(rendezvous / f"ready-{worker}").touch()
while not (rendezvous / "go").exists():
    time.sleep(0.001)
started = time.time()
for n in range(count):
    butler.put({"worker": worker, "n": n}, "meta", visit=8_000_000 + worker, ccd=n)
(rendezvous / f"done-{worker}").write_text(f"{started} {time.time()}")
butler.close()
"""


def run_writers(root: Path, outputs: list[list[Path]], count: int) -> float:
    """Start one writer per item of ``outputs``; puts per second once all are ready."""
    rendezvous = Path(tempfile.mkdtemp(dir=root, prefix="rendezvous-"))
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                str(worker),
                str(count),
                str(rendezvous),
                *map(str, each),
            ],
            env=environment(),
        )
        for worker, each in enumerate(outputs)
    ]
    try:
        while len(list(rendezvous.glob("ready-*"))) < len(processes):
            if any(p.poll() not in (None, 0) for p in processes):
                raise RuntimeError("a writer failed to start")
            time.sleep(0.01)
        (rendezvous / "go").touch()
        for process in processes:
            if process.wait() != 0:
                raise RuntimeError("a writer failed")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    # From the first put begun to the last put returned (not the processes' exits).
    spans = [
        tuple(map(float, (rendezvous / f"done-{w}").read_text().split()))
        for w in range(len(processes))
    ]
    return len(processes) * count / (max(e for _, e in spans) - min(s for s, _ in spans))


def bench_writers(engine: Engine, root: Path, count: int) -> None:
    one = run_writers(root, [[engine.big, engine.small]], count)
    shared = run_writers(root, [[engine.big, engine.small]] * WRITERS, count)
    own = []
    for worker in range(WRITERS):
        pair = []
        for side in ("a", "b"):
            path = root / f"{engine.name}-own-{worker}{side}"
            DataRepository.create(
                path, label=f"own{worker}{side}", policy=POLICY, registry=engine.registry
            ).close()
            pair.append(path)
        own.append(pair)
    separate = run_writers(root, own, count)
    with Butler(engine.big) as butler:
        found = {
            (ref.data_id["visit"], ref.data_id["ccd"])
            for worker in range(WRITERS)
            for ref in butler.query("meta", visit=8_000_000 + worker)
        }
    expected = {(8_000_000 + w, n) for w in range(WRITERS) for n in range(count)}
    expected |= {(8_000_000 + w, 999) for w in range(WRITERS)}
    lost = len(expected - found)
    for pair in own:
        with Butler(pair[1]) as butler:
            lost += count + 1 - len(butler.query("meta"))
    engine.writers = {"1 writer": one, "16, shared": shared, "16, own": separate, "lost": lost}


# -- notices -----------------------------------------------------------------------------


def bench_notices(engine: Engine, root: Path, samples: int) -> None:
    """A put through the library until a second mount shows the new size of a file the
    kernel had cached: only an invalidation (a notice, or the poll) changes it."""
    first = Mount(engine.big, root / f"n1-{engine.name}", root / f"n1-{engine.name}.log")
    second = Mount(engine.big, root / f"n2-{engine.name}", root / f"n2-{engine.name}.log")
    target = second.mountpoint / path_of(SOLO_VISIT, 0)
    latencies = []
    with Butler(engine.big) as butler:
        for i in range(samples):
            before = target.stat().st_size  # cached by the kernel from now on
            payload = {"i": i, "pad": "y" * (i % 2 * 100 + 10)}
            butler.put(payload, "meta", visit=SOLO_VISIT, ccd=0)
            put_at = time.perf_counter()
            deadline = put_at + 10
            while target.stat().st_size == before:
                if time.perf_counter() > deadline:
                    raise RuntimeError("a put never showed in the second mount")
            latencies.append(time.perf_counter() - put_at)
    engine.notices = Stats(tuple(latencies))
    first.unmount()
    second.unmount()


# -- the report ----------------------------------------------------------------------------


def percentile(stats: Stats, fraction: float) -> float:
    ordered = sorted(stats.samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def report(engines: dict[str, Engine], size: int, info: list[tuple[str, str]], md: bool) -> None:
    sqlite, pg = engines["sqlite"], engines["postgresql"]
    print(f"butler scale-out benchmark — {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"command: {' '.join(['bench/scale.py', *sys.argv[1:]])}")
    print()
    print(simple_table(["machine", ""], [list(pair) for pair in info], markdown=md))
    print()
    rows = [
        ["fill (insert_many; PostgreSQL: COPY)", f"{sqlite.fill_seconds:.0f} s",
         f"{pg.fill_seconds:.0f} s (+ ANALYZE {pg.analyze_seconds:.0f} s)"],
        ["fill rate", *(f"{(size + BLOCKS * PER_BLOCK) / e.fill_seconds:,.0f}/s"
                        for e in (sqlite, pg))],
    ]  # fmt: skip
    for name in sqlite.library:
        s, p = sqlite.library[name], pg.library[name]
        rows.append([f"{name}: median / p90", f"{fmt_time(s.median)} / {fmt_time(s.p90)}",
                     f"{fmt_time(p.median)} / {fmt_time(p.p90)}"])  # fmt: skip
    for name in ("start-up", "ls -l cold", "ls -l warm"):
        s, p = sqlite.mount[name], pg.mount[name]
        assert isinstance(s, Stats) and isinstance(p, Stats)
        rows.append([f"mount {name}: median", fmt_time(s.median), fmt_time(p.median)])
    for name in ("rss after start", "rss after 10 dirs", "rss after 40 dirs"):
        rows.append([f"daemon {name}", f"{sqlite.mount[name] / 2**20:.0f} MiB",  # type: ignore[operator]
                     f"{pg.mount[name] / 2**20:.0f} MiB"])  # type: ignore[operator]  # fmt: skip
    for name in ("1 writer", "16, shared", "16, own"):
        rows.append([f"puts/s, {name}", f"{sqlite.writers[name]:.0f}", f"{pg.writers[name]:.0f}"])
    rows.append(["puts lost", str(sqlite.writers["lost"]), str(pg.writers["lost"])])
    assert sqlite.notices is not None and pg.notices is not None
    rows.append(
        [
            "put → shown in another mount: p50 / p99",
            *(
                f"{fmt_time(e.notices.median)} / {fmt_time(percentile(e.notices, 0.99))}"
                for e in (sqlite, pg)
                if e.notices is not None
            ),
        ]
    )
    print(f"At {size:,} registered datasets:")
    print(simple_table(["", "SQLite", "PostgreSQL"], rows, markdown=md))
    print()
    ratio = pg.mount["ls -l cold"].median / sqlite.mount["ls -l cold"].median  # type: ignore[union-attr]
    speedup = pg.writers["16, shared"] / pg.writers["1 writer"]  # type: ignore[operator]
    speedup_own = pg.writers["16, own"] / pg.writers["1 writer"]  # type: ignore[operator]
    rss = pg.mount["rss after 40 dirs"] / sqlite.mount["rss after 40 dirs"]  # type: ignore[operator]
    targets = [
        ("get by full data ID ≤ 1 ms (median)", fmt_time(pg.library["get by full data ID"].median),
         pg.library["get by full data ID"].median <= 1e-3),
        ("query → 100 ≤ 20 ms (median)", fmt_time(pg.library["query → 100 (by visit)"].median),
         pg.library["query → 100 (by visit)"].median <= 20e-3),
        ("put to two PostgreSQL outputs ≤ 3 ms (median)",
         fmt_time(pg.library["put 1 KiB YAML, 2 outputs"].median),
         pg.library["put 1 KiB YAML, 2 outputs"].median <= 3e-3),
        ("ls -l of 10,000 entries ≤ 1.5× SQLite (cold)", f"{ratio:.2f}×", ratio <= 1.5),
        ("mount start-up ≤ 1 s (median)", fmt_time(pg.mount["start-up"].median),  # type: ignore[union-attr]
         pg.mount["start-up"].median <= 1.0),  # type: ignore[union-attr]
        ("daemon memory ≤ 1.2× SQLite's (after 4·10^5 entries)", f"{rss:.2f}×", rss <= 1.2),
        ("16 writers ≥ 5× one writer (shared outputs)", f"{speedup:.1f}×", speedup >= 5),
        ("16 writers ≥ 5× one writer (own outputs)", f"{speedup_own:.1f}×", speedup_own >= 5),
        ("nothing lost", str(pg.writers["lost"]), pg.writers["lost"] == 0),
        ("notice latency p99 ≤ 100 ms", fmt_time(percentile(pg.notices, 0.99)),
         percentile(pg.notices, 0.99) <= 0.1),
    ]  # fmt: skip
    print("Targets (docs/benchmarks.md, Scale-out):")
    lines = [[name, value, "PASS" if ok else "MISS"] for name, value, ok in targets]
    print(simple_table(["target", "measured", "verdict"], lines, markdown=md))


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=lambda s: int(s.replace("_", "")), default=10_000_000)
    parser.add_argument("--url", help="a PostgreSQL database to use (default: start one)")
    parser.add_argument("--dir", help="where to make the temporary directory (default: $TMPDIR)")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="butler-scale-", dir=args.dir))
    cluster = None
    started = time.time()
    counters = CpuCounters.now()
    try:
        url = args.url
        if url is None:
            from tests.pg import Cluster

            cluster = Cluster.start(durable=True)
            url = cluster.url()
            log(f"started PostgreSQL in {cluster.base}")
        server = "given by --url" if args.url else "throwaway, server defaults (fsync on)"
        info = [
            *machine(root),
            ("butler", f"{PROJECT / 'butler'} at {source_revision(PROJECT, 'butler')}"),
            ("PostgreSQL", f"{server}; registry writes commit asynchronously, flushed when "
                           "settling (docs/scale-out.md)"),
            ("import butlerfs.daemon", fmt_time(import_cost())),
        ]  # fmt: skip
        engines = {name: Engine(name, "sqlite" if name == "sqlite" else url) for name in ENGINES}
        for engine in engines.values():
            engine.big = root / f"{engine.name}-big"
            engine.small = root / f"{engine.name}-small"
            for path in (engine.big, engine.small):
                DataRepository.create(
                    path, label=f"{path.name}", policy=POLICY, registry=engine.registry
                ).close()
            log(f"filling {engine.name} to {args.size:,} datasets")
            fill(engine, args.size)
            log(f"  filled in {engine.fill_seconds:.0f} s")
        for engine in engines.values():
            log(f"{engine.name}: library")
            bench_library(engine, args.size, args.quick)
            log(f"{engine.name}: mount")
            bench_mount(engine, root, args.size)
            log(f"{engine.name}: writers")
            bench_writers(engine, root, 20 if args.quick else 100)
            log(f"{engine.name}: notice latency")
            bench_notices(engine, root, 30 if args.quick else 200)
        elapsed = time.time() - started
        info.append(("during the run", interference(counters, CpuCounters.now(), elapsed)))
        info.append(("total run time", f"{elapsed:.0f} s"))
        report(engines, args.size, info, args.markdown)
        raw = {
            name: {
                "fill_seconds": e.fill_seconds,
                "library": {k: v.samples for k, v in e.library.items()},
            }
            for name, e in engines.items()
        }
        (root / "raw.json").write_text(json.dumps(raw))
    finally:
        if cluster is not None:
            cluster.destroy()
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
