"""ACCEPTANCE 30: two hosts share one PostgreSQL-registered repository.

"Two hosts" are two mount daemons on two mount points and library writers in other
processes, all on one repository whose registry is in a real PostgreSQL server
(tests/pg.py).  A put through any of them appears in both mounts within one second,
pushed by the server's notices (the daemons send it no query while nothing
changes); concurrent writers through both mounts and the library lose nothing; the
server stopped under the mounts makes reads fail with EIO and a logged reason, and
everything resumes by itself when it is back.
"""

from __future__ import annotations

import copy
import errno
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from astropy.io import fits

from butler import Butler, DataRepository
from tests.butler.conftest import STANDARD_POLICY, exposure_path, make_image, settle
from tests.butlerfs.conftest import Mount, MountFactory, environment, wait_for
from tests.pg import Cluster

pytestmark = pytest.mark.mount

LIVE_DEADLINE = 1.0  # ACCEPTANCE 30: a put shows in every mount within one second
QUIET_SECONDS = 2.5  # longer than several poll periods (0.3 s) and a listener check (2 s)


def put_in_another_process(repository: Path, seed: int, visit: int, ccd: int) -> None:
    script = textwrap.dedent(
        f"""
        from butler import Butler
        from tests.butler.conftest import make_image
        with Butler({str(repository)!r}) as butler:
            butler.put(make_image({seed}), "calexp", visit={visit}, ccd={ccd})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, env=environment(), timeout=120)


def shared_repository(root: Path, url: str) -> Path:
    repository = root / "shared"
    DataRepository.create(repository, policy=copy.deepcopy(STANDARD_POLICY), registry=url).close()
    with Butler(repository) as butler:
        butler.put(make_image(1), "calexp", visit=1, ccd=1)
    settle()
    return repository


def two_hosts(repository: Path, start_mount: MountFactory) -> tuple[Mount, Mount]:
    return start_mount(str(repository)), start_mount(str(repository))


def all_visible(mounts: tuple[Mount, ...], relative: str, size: int | None = None) -> bool:
    for mount in mounts:
        try:
            found = mount.path(relative).stat().st_size
        except FileNotFoundError:
            return False
        if size is not None and found != size:
            return False
    return True


def last_query_of_butlers(cluster: Cluster) -> str:
    """When any butler connection last began a statement (the daemons' included)."""
    return cluster.psql(
        "SELECT COALESCE(max(query_start)::text, '') FROM pg_stat_activity "
        "WHERE application_name = 'butler'"
    ).strip()


def test_a_put_anywhere_shows_in_both_mounts_without_polling(
    tmp_path: Path, postgres: Cluster, start_mount: MountFactory
) -> None:
    repository = shared_repository(tmp_path, postgres.url())
    mounts = two_hosts(repository, start_mount)
    cached = exposure_path("calexp", 1, 1)
    for mount in mounts:  # warm the kernel's caches of an existing dataset
        assert mount.path(cached).read_bytes() == (repository / cached).read_bytes()
    sizes = [mount.path(cached).stat().st_size for mount in mounts]

    # Quiet: neither daemon asks the server anything while nothing changes.
    before = last_query_of_butlers(postgres)
    deadline = time.monotonic() + QUIET_SECONDS
    while time.monotonic() < deadline:
        assert last_query_of_butlers(postgres) == before, "a daemon polls the server"
        time.sleep(0.1)

    # A library writer elsewhere: a new dataset, and a new version of a cached one.
    put_in_another_process(repository, 2, 2, 1)
    wait_for(
        lambda: all_visible(mounts, exposure_path("calexp", 2, 1)),
        LIVE_DEADLINE,
        "a library put in both mounts",
    )
    bigger = make_image(3, shape=(64, 64))
    script = textwrap.dedent(
        f"""
        import numpy as np
        from astropy.io import fits
        from butler import Butler
        with Butler({str(repository)!r}) as butler:
            butler.put(np.ones((64, 64), dtype=np.float32), "calexp", visit=1, ccd=1)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, env=environment(), timeout=120)
    wait_for(
        lambda: all(m.path(cached).stat().st_size != s for m, s in zip(mounts, sizes, strict=True)),
        LIVE_DEADLINE,
        "the new version of a cached dataset in both mounts",
    )
    for mount in mounts:
        assert mount.path(cached).read_bytes() == (repository / cached).read_bytes()
    del bigger

    # Through each mount: shows in the other (and in the library).
    for index, (source, other) in enumerate((mounts, mounts[::-1])):
        relative = exposure_path("calexp", 5, index)
        image = tmp_path / f"image{index}.fits"
        make_image(50 + index).writeto(image)
        source.path(relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, source.path(relative))
        wait_for(
            lambda other=other, relative=relative: all_visible((other,), relative),
            LIVE_DEADLINE,
            "a put through one mount in the other",
        )
        assert other.path(relative).read_bytes() == image.read_bytes()
    with Butler(repository) as butler:
        assert butler.exists("calexp", visit=5, ccd=1)


WRITER = r"""
import sys
import numpy as np
from butler import Butler

repository, worker, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with Butler(repository) as butler:
    for n in range(count):
        butler.put(np.full((8, 8), worker * 1000 + n, dtype=np.float32), "calexp",
                   visit=100 + worker, ccd=n)
        butler.put({"worker": worker, "n": n}, "visitInfo", visit=7)  # the same data ID
"""


def test_concurrent_writers_through_both_mounts_and_the_library_lose_nothing(
    tmp_path: Path, postgres: Cluster, start_mount: MountFactory
) -> None:
    repository = shared_repository(tmp_path, postgres.url())
    mounts = two_hosts(repository, start_mount)
    count = 12
    sources = []
    for n in range(count):
        image = tmp_path / f"source{n}.fits"
        make_image(200 + n).writeto(image)
        sources.append(image)
    copiers = []
    for index, mount in enumerate(mounts):
        mount.path(exposure_path("calexp", 200 + index, 0)).parent.mkdir(parents=True)
        commands = [
            f"cp {sources[n]} {mount.path(exposure_path('calexp', 200 + index, n))}"
            for n in range(count)
        ]
        copiers.append(subprocess.Popen(["sh", "-c", " && ".join(commands)]))
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(repository), str(worker), str(count)],
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in (1, 2)
    ]
    for copier in copiers:
        assert copier.wait(timeout=300) == 0
    for writer in writers:
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, f"{out}\n{err}"

    expected = {
        exposure_path("calexp", visit, n): None
        for visit in (200, 201, 101, 102)
        for n in range(count)
    }
    with Butler(repository) as butler:
        listed = {
            ref.relative_path for ref in butler.query("calexp") if ref.data_id["visit"] >= 100
        }
        assert listed == set(expected)
        versions = butler.versions("visitInfo", visit=7)
        assert [ref.version for ref in versions] == list(range(1, 2 * count + 1))
        for visit, seed in ((200, 200), (201, 200)):
            for n in range(count):
                got = butler.get("calexp", visit=visit, ccd=n)
                assert got[0].header["SEED"] == seed + n
    for relative in expected:
        wait_for(
            lambda relative=relative: all_visible(
                mounts, relative, (repository / relative).stat().st_size
            ),
            LIVE_DEADLINE,
            f"{relative} in both mounts",
        )


def test_the_server_stopped_under_two_mounts(
    tmp_path: Path, own_postgres: Cluster, start_mount: MountFactory
) -> None:
    repository = shared_repository(tmp_path, own_postgres.url())
    mounts = two_hosts(repository, start_mount)
    known = exposure_path("calexp", 1, 1)
    for mount in mounts:
        assert mount.path(known).stat().st_size > 0

    own_postgres.stop_server()
    for mount in mounts:
        wait_for(lambda mount=mount: _fails_with_eio(lambda: mount.path(known).stat()), 10.0,
                 "reads that cannot be verified to fail with EIO")  # fmt: skip
        wait_for(lambda mount=mount: "not told of changes any more" in mount.log(), 10.0,
                 "the daemon to log why")  # fmt: skip
    assert str(own_postgres.socket_dir) in mounts[0].log()
    with pytest.raises(OSError) as caught:
        shutil.copyfile(repository / known, mounts[0].path(exposure_path("calexp", 9, 9)))
    assert caught.value.errno == errno.EIO

    own_postgres.run_server()
    put_in_another_process(repository, 4, 4, 4)  # while the daemons reconnect
    for mount in mounts:
        wait_for(
            lambda mount=mount: all_visible((mount,), exposure_path("calexp", 4, 4)),
            10.0,
            "the mount to resume and catch up",
        )
        assert mount.path(known).read_bytes() == (repository / known).read_bytes()
    with Butler(repository) as butler:
        assert not butler.exists("calexp", visit=9, ccd=9), "a failed put was committed"
    put_in_another_process(repository, 5, 5, 5)
    wait_for(
        lambda: all_visible(mounts, exposure_path("calexp", 5, 5)),
        LIVE_DEADLINE,
        "notices again after the restart",
    )


def _fails_with_eio(call: Callable[[], object]) -> bool:
    try:
        call()
    except OSError as exc:
        return exc.errno == errno.EIO
    return False


def test_fits_files_read_through_either_mount(
    tmp_path: Path, postgres: Cluster, start_mount: MountFactory
) -> None:
    repository = shared_repository(tmp_path, postgres.url())
    mounts = two_hosts(repository, start_mount)
    for mount in mounts:
        with fits.open(mount.path(exposure_path("calexp", 1, 1))) as hdus:
            assert hdus[0].header["SEED"] == 1
    assert os.listdir(mounts[0].path("calexp")) == os.listdir(mounts[1].path("calexp"))
