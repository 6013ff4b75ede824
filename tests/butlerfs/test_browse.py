"""ACCEPTANCE 18 (browse) and 22 (extended attributes), with real tools on a real mount."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from tests.butler.conftest import image_array
from tests.butlerfs.conftest import (
    CALEXP_1_1,
    CALEXP_3_2,
    RAW_1_1,
    RAW_2_1,
    VISIT_INFO_1,
    Layout,
    Mount,
    MountFactory,
)

pytestmark = pytest.mark.mount

UNION_FILES = sorted([CALEXP_1_1, CALEXP_3_2, RAW_1_1, RAW_2_1, VISIT_INFO_1])


def run(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def test_find_lists_the_union_at_template_paths(mounted: Mount) -> None:
    found = run("find", str(mounted.mountpoint), "-type", "f", "-not", "-path", "*/.*")
    relative = sorted(os.path.relpath(line, mounted.mountpoint) for line in found.split())
    assert relative == UNION_FILES


def test_ls_lR_shows_exact_sizes_and_commit_times(mounted: Mount, layout: Layout) -> None:
    listing = run("ls", "-lR", "--time-style=+%s", str(mounted.mountpoint))
    with layout.butler() as butler:
        for relative in UNION_FILES:
            dataset_type = relative.split("/")[0]
            ref = next(
                r
                for r in butler.query(dataset_type)
                if os.path.basename(r.path) == os.path.basename(relative)
            )
            name = os.path.basename(relative)
            line = next(line for line in listing.splitlines() if line.endswith(" " + name))
            fields = line.split()
            assert int(fields[4]) == ref.size == os.path.getsize(ref.path), line
            assert int(fields[5]) == int(ref.committed), line
    for special in (".repos", ".versions", ".butler"):
        assert os.path.isdir(mounted.path(special))


def test_stat_modes_owner_and_stable_inodes(
    mounted: Mount, layout: Layout, start_mount: MountFactory
) -> None:
    calexp = os.stat(mounted.path(CALEXP_3_2))
    raw = os.stat(mounted.path(RAW_1_1))
    assert stat.S_IMODE(calexp.st_mode) == 0o644  # an output accepts calexp
    assert stat.S_IMODE(raw.st_mode) == 0o444  # only inputs could hold raw
    assert stat.S_IMODE(os.stat(mounted.path(".versions")).st_mode) == 0o555
    assert stat.S_IMODE(os.stat(mounted.path("calexp")).st_mode) == 0o755
    assert (calexp.st_uid, calexp.st_gid) == (os.getuid(), os.getgid())
    inodes = {p: os.stat(mounted.path(p)).st_ino for p in (*UNION_FILES, "calexp", "raw")}
    assert len(set(inodes.values())) == len(inodes)
    mounted.unmount()
    again = start_mount(str(layout.aggregator), mountpoint=mounted.mountpoint)
    assert {p: os.stat(again.path(p)).st_ino for p in inodes} == inodes


def test_cat_reads_the_bytes_the_library_returns(mounted: Mount, layout: Layout) -> None:
    with layout.butler() as butler:
        for dataset_type, keys in (("calexp", {"visit": 1, "ccd": 1}), ("visitInfo", {"visit": 1})):
            ref = butler.ref(dataset_type, **keys)
            shown = subprocess.run(
                ["cat", str(mounted.path(ref.relative_path))], capture_output=True, check=True
            ).stdout
            assert shown == Path(ref.path).read_bytes(), ref.relative_path
    # calexp 1/1 is in both inputs: the mount serves in1's, the first in search order.
    assert mounted.path(CALEXP_1_1).read_bytes() == (layout.in1 / CALEXP_1_1).read_bytes()


def test_astropy_memmap_reads_the_pixels(mounted: Mount, layout: Layout) -> None:
    with fits.open(mounted.path(CALEXP_3_2), memmap=True) as hdus:
        pixels = np.array(hdus[0].data, copy=True)
        seed = hdus[0].header["SEED"]
    np.testing.assert_array_equal(pixels, image_array(5))
    assert seed == 5
    with layout.butler() as butler:
        got = butler.get("calexp", visit=3, ccd=2)
        np.testing.assert_array_equal(got[0].data, pixels)
        got.close()


def test_repos_and_versions_namespaces(mounted: Mount, layout: Layout) -> None:
    assert sorted(os.listdir(mounted.path(".repos"))) == ["in1", "in2", "out1", "out2"]
    in2_copy = mounted.path(f".repos/in2/{CALEXP_1_1}")
    assert in2_copy.read_bytes() == (layout.in2 / CALEXP_1_1).read_bytes()
    assert stat.S_IMODE(in2_copy.stat().st_mode) == 0o444
    versions = mounted.path(f".versions/{CALEXP_3_2}")
    assert os.listdir(versions) == ["v1.fits"]
    assert (versions / "v1.fits").read_bytes() == mounted.path(CALEXP_3_2).read_bytes()


def test_status_file(mounted: Mount, layout: Layout) -> None:
    assert os.listdir(mounted.path(".butler")) == ["log", "status"]
    text = mounted.path(".butler/status").read_text()
    assert len(text.encode()) == mounted.path(".butler/status").stat().st_size
    status = json.loads(text)
    labels = {member["label"]: member for member in status["repositories"]}
    assert set(labels) == {"in1", "in2", "out1", "out2"}
    assert labels["out2"]["datasetTypes"] == ["calexp"]
    assert mounted.process is not None
    assert status["mount"]["pid"] == mounted.process.pid


def test_getfattr_shows_the_butler_keys(mounted: Mount, layout: Layout) -> None:
    dump = run(
        "getfattr", "-d", "-m", "user.butler", "--absolute-names", str(mounted.path(CALEXP_3_2))
    )
    values: dict[str, str] = {}
    for line in dump.splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            values[key] = json.loads(value)  # getfattr quotes text values like JSON strings
    with layout.butler() as butler:
        ref = butler.ref("calexp", visit=3, ccd=2)
        provenance = butler.provenance(ref)
    assert values["user.butler.dataset_type"] == "calexp"
    assert json.loads(values["user.butler.data_id"]) == {"visit": 3, "ccd": 2}
    assert values["user.butler.repository"] == ref.repository == "out1"
    assert values["user.butler.version"] == "1"
    assert values["user.butler.sha256"] == ref.sha256
    assert json.loads(values["user.butler.provenance"]) == json.loads(
        json.dumps(provenance, default=str)
    )
    assert set(os.listxattr(mounted.path(CALEXP_3_2))) == {
        f"user.butler.{name}"
        for name in ("dataset_type", "data_id", "repository", "version", "sha256", "provenance")
    }


def test_unknown_xattrs_answer_enodata_and_other_namespaces_enotsup(mounted: Mount) -> None:
    for name in ("user.other", "user.butler.nope"):
        with pytest.raises(OSError) as caught:
            os.getxattr(mounted.path(CALEXP_3_2), name)
        assert caught.value.errno == errno.ENODATA, name
    # No SELinux labels, no ACLs: "not supported", which ls remembers per filesystem.
    for name in ("security.selinux", "system.posix_acl_access", "trusted.x"):
        for target in (CALEXP_3_2, "calexp"):
            with pytest.raises(OSError) as caught:
                os.getxattr(mounted.path(target), name)
            assert caught.value.errno == errno.EOPNOTSUPP, (name, target)
    assert os.listxattr(mounted.path("calexp")) == []
