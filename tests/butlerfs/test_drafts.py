"""Drafts in memory, lookups answered from memory, and puts from many writers at once.

A new file starts as a draft in the daemon's memory (butlerfs.scratch) and spills to a
scratch file past 1 MiB; either way it reads back what was written, holes, truncations
and maps included.  A lookup in a directory whose every child the daemon knows is
answered without the library, yet a put elsewhere still shows within a second.  Closes
from many writers reach the library together (the tree's lock is shared by puts).
"""

from __future__ import annotations

import copy
import io
import mmap
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from butler import Butler, DataRepository
from butlerfs.scratch import MEMORY_DRAFT_MOST
from tests.butler.conftest import STANDARD_POLICY, exposure_path, make_image
from tests.butlerfs.conftest import (
    CALEXP_3_2,
    Layout,
    Mount,
    MountFactory,
    environment,
    mount_status,
    scratch_files,
    wait_for,
)

pytestmark = pytest.mark.mount

LIVE_DEADLINE = 1.0  # SPEC §8: changes through the library show within one second


def test_a_draft_in_memory_reads_back_what_was_written(mounted: Mount, layout: Layout) -> None:
    scratch = mounted.path("visitInfo/.visitInfo-v0000009.yaml.tmp")  # kept until renamed
    expected = bytearray()
    with open(scratch, "w+b", buffering=0) as file:
        file.write(b"exposureTime: 3")
        expected += b"exposureTime: 3"
        file.seek(40)  # a hole reads as zeros
        file.write(b"\n")
        expected += bytes(40 - len(expected)) + b"\n"
        with open(scratch, "rb") as reader:
            assert reader.read() == expected
        os.truncate(scratch, 15)  # shorter
        del expected[15:]
        os.truncate(scratch, 20)  # and longer again: zeros
        expected += bytes(5)
        file.seek(0)
        assert file.read() == expected
        with open(scratch, "rb") as reader, mmap.mmap(reader.fileno(), 0, prot=mmap.PROT_READ) as m:
            assert m[:] == expected
        status = mount_status(mounted)
        assert status["drafts"] == 1
        assert status["draft_bytes_in_memory"] == len(expected)
    assert [path for path in scratch_files(layout) if path.is_file()] == []  # no file at all
    os.truncate(scratch, 15)
    target = mounted.path("visitInfo/visitInfo-v0000009.yaml")
    os.rename(scratch, target)  # a put of what the draft holds
    assert target.read_bytes() == b"exposureTime: 3"
    with layout.butler() as butler:
        assert butler.get("visitInfo", visit=9) == {"exposureTime": 3}
    wait_for(lambda: mount_status(mounted)["drafts"] == 0, 10, "the draft dropped")
    assert mount_status(mounted)["draft_bytes_in_memory"] == 0


def test_a_large_draft_spills_to_a_scratch_file(mounted: Mount, layout: Layout) -> None:
    image = make_image(5, shape=(800, 800))  # about 2.5 MB of FITS
    target = mounted.path(exposure_path("calexp", 8, 1))
    target.parent.mkdir(parents=True)
    data = _fits_bytes(image)
    assert len(data) > MEMORY_DRAFT_MOST
    with open(target, "wb") as file:
        for start in range(0, len(data), 65536):
            file.write(data[start : start + 65536])
            if start + 65536 > MEMORY_DRAFT_MOST:
                file.flush()
                assert [p for p in scratch_files(layout) if p.is_file()], "no scratch file"
                assert mount_status(mounted)["draft_bytes_in_memory"] == 0
        with open(target, "rb") as reader:  # the draft, read back through its file
            assert reader.read(len(data)) == data[: file.tell()]
    assert target.read_bytes() == data
    with layout.butler() as butler:
        np.testing.assert_array_equal(butler.get("calexp", visit=8, ccd=1)[0].data, image[0].data)
    wait_for(
        lambda: not [p for p in scratch_files(layout) if p.is_file()], 10, "the scratch file gone"
    )


def _fits_bytes(hdus: fits.HDUList) -> bytes:
    stream = io.BytesIO()
    hdus.writeto(stream)
    return stream.getvalue()


def test_a_put_elsewhere_shows_to_lookups_in_a_listed_directory(
    mounted: Mount, layout: Layout
) -> None:
    """The directory is listed, so the daemon knows every name in it and answers a lookup of
    a missing one from memory; a put by another process must still show within a second."""
    new = mounted.path(exposure_path("calexp", 3, 7))
    assert os.listdir(new.parent) == [Path(CALEXP_3_2).name]
    assert not new.exists()  # answered from the listing
    script = textwrap.dedent(
        f"""
        from butler import Butler
        from tests.butler.conftest import make_image
        with Butler({str(layout.aggregator)!r}) as butler:
            butler.put(make_image(37), "calexp", visit=3, ccd=7)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, env=environment())
    landed = time.monotonic()
    wait_for(new.exists, LIVE_DEADLINE, "the dataset put elsewhere, by lookup")
    assert time.monotonic() - landed < LIVE_DEADLINE
    assert new.read_bytes() == (layout.out1 / exposure_path("calexp", 3, 7)).read_bytes()


def test_parallel_writers_put_every_file_to_every_output(
    mounted: Mount, layout: Layout, tmp_path: Path
) -> None:
    """8 cp at once into a directory made by mkdir: every close is a put to both outputs
    that accept calexp; none lost, none mixed up."""
    sources = tmp_path / "sources"
    sources.mkdir()
    expected = {}
    for ccd in range(1, 65):
        name = Path(exposure_path("calexp", 11, ccd)).name
        make_image(ccd, shape=(16, 16)).writeto(sources / name)
        expected[name] = (sources / name).read_bytes()
    target = mounted.path("calexp/v0000011")
    target.mkdir(parents=True)
    names = sorted(expected)
    writers = [
        subprocess.Popen(["cp", *[str(sources / n) for n in names[k::8]], str(target)])
        for k in range(8)
    ]
    assert [writer.wait(120) for writer in writers] == [0] * 8
    assert sorted(os.listdir(target)) == names
    for name, data in expected.items():
        assert (target / name).read_bytes() == data
        for output in layout.outputs:
            assert (output / "calexp/v0000011" / name).read_bytes() == data, output
    with Butler(layout.out1) as out1:
        assert len(out1.query("calexp", visit=11)) == 64


def test_writers_of_a_new_type_and_of_known_ones_at_once(
    start_mount: MountFactory, tmp_path: Path
) -> None:
    """With -o autodefine, a put that defines its type takes the tree's lock alone while
    other puts run: all of them land."""
    alone = tmp_path / "alone"
    DataRepository.create(alone, policy=copy.deepcopy(STANDARD_POLICY))
    mount = start_mount(str(alone), "-o", "autodefine")
    sources = tmp_path / "sources"
    sources.mkdir()
    files = []
    for ccd in range(1, 17):
        for dataset_type in ("calexp", "deepCoadd"):
            source = sources / f"{dataset_type}-{ccd}.fits"
            make_image(ccd, shape=(8, 8)).writeto(source)
            files.append((source, mount.path(exposure_path(dataset_type, 12, ccd))))
    for _, target in files:
        target.parent.mkdir(parents=True, exist_ok=True)
    writers = [
        subprocess.Popen(["cp", str(source), str(target)], stderr=subprocess.PIPE)
        for source, target in files
    ]
    for writer in writers:
        _, error = writer.communicate(timeout=120)
        assert writer.returncode == 0, error
    with Butler(alone) as butler:
        for dataset_type in ("calexp", "deepCoadd"):
            assert len(butler.query(dataset_type, visit=12)) == 16, dataset_type
