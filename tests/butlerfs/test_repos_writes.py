"""Writes under ``.repos/<label>/`` (SPEC §8): an output's directory takes new files by its
own templates, put to that output alone, and ``rm`` there removes from it alone; an input's
stays read-only.  The library part (View.classify_repo_write, Butler.remove(outputs=...))
is checked without a mount first."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from butler import Butler, DataRepository
from butler.errors import (
    DatasetNotFoundError,
    InvalidDataIdError,
    NoOutputError,
    ReadOnlyError,
    UnknownLabelError,
)
from butler.view import View
from tests.butler.conftest import exposure_path, image_array, make_image
from tests.butlerfs.conftest import CALEXP_1_1, CALEXP_3_2, RAW_1_1, Layout, Mount

POLICY = {
    "genres": {
        "meta": {
            "keys": {"visit": "int", "ccd": "int"},
            "template": "{datasetType}/v{visit:07d}/{datasetType}-c{ccd:03d}.yaml",
            "storage": "yaml",
        }
    },
    "datasetTypes": {"raw": {"genre": "meta"}, "calexp": {"genre": "meta"}},
}
# The output "own" keeps calexp under a template of its own.
OWN_POLICY = {
    "genres": POLICY["genres"],
    "datasetTypes": {
        "raw": {"genre": "meta"},
        "calexp": {"genre": "meta", "template": "calexp/{visit:07d}/c{ccd:03d}.yaml"},
    },
}


@pytest.fixture
def butler(tmp_path: Path) -> Butler:
    DataRepository.create(tmp_path / "in", label="in", policy=POLICY)
    with Butler(tmp_path / "in") as repo:
        repo.put({"ccd": 1}, "raw", visit=1, ccd=1)
    DataRepository.create(tmp_path / "own", label="own", policy=OWN_POLICY)
    return Butler(
        inputs=[tmp_path / "in"],
        outputs=[
            {"path": tmp_path / "own", "label": "own"},
            {"path": tmp_path / "all", "label": "all"},
            {"path": tmp_path / "cal", "label": "cal", "datasetTypes": ["calexp"]},
        ],
    )


# -- the library ---------------------------------------------------------------


def test_a_repos_path_is_read_by_that_repositorys_own_templates(butler: Butler) -> None:
    view = View(butler)
    target = view.classify_write(".repos/own/calexp/0000001/c002.yaml")
    assert (target.dataset_type, target.data_id, target.outputs) == (
        "calexp",
        {"visit": 1, "ccd": 2},
        ("own",),
    )
    assert target.define_genre is None
    # The view's template is not this repository's: not a path in it (and not a new type).
    with pytest.raises(InvalidDataIdError, match="calexp is a defined dataset type"):
        view.classify_write(".repos/own/calexp/v0000001/calexp-c002.yaml")
    # "all" was made from the input's policy: its calexp template is the genre's, while the
    # union view takes calexp from "own", first in search order.
    assert view.classify_write(".repos/all/calexp/v0000001/calexp-c002.yaml").outputs == ("all",)
    assert view.classify_write("calexp/0000001/c002.yaml").outputs is None
    assert view.is_template_directory(".repos/own/calexp/0000001")
    assert not view.is_template_directory(".repos/all/calexp/0000001")


def test_repos_write_refusals(butler: Butler) -> None:
    view = View(butler)
    with pytest.raises(ReadOnlyError, match="in is an input"):
        view.classify_write(".repos/in/raw/v0000001/raw-c002.yaml")
    with pytest.raises(NoOutputError, match="output cal does not accept raw"):
        view.classify_write(".repos/cal/raw/v0000001/raw-c002.yaml")
    with pytest.raises(NoOutputError, match="output cal does not accept"):
        view.classify_write(".repos/cal/flat/v0000001/flat-c002.yaml")  # a new type
    with pytest.raises(DatasetNotFoundError):
        view.classify_write(".repos/nobody/raw/v0000001/raw-c002.yaml")
    with pytest.raises(InvalidDataIdError):
        view.classify_write(".repos/all/raw/v1/raw-c2.yaml")


def test_a_new_dataset_type_under_repos_by_genre(butler: Butler) -> None:
    target = View(butler).classify_write(".repos/all/flat/v0000001/flat-c002.yaml")
    assert (target.dataset_type, target.define_genre, target.outputs) == ("flat", "meta", ("all",))


def test_remove_narrowed_to_outputs(butler: Butler) -> None:
    butler.put({"v": 1}, "calexp", visit=1, ccd=1)
    assert butler.remove("calexp", visit=1, ccd=1, outputs=["all"]) == ["all"]
    assert [ref.repository for ref in butler.query("calexp", visit=1, ccd=1)] == ["own"]
    with pytest.raises(DatasetNotFoundError, match="none of the outputs"):
        butler.remove("calexp", visit=1, ccd=1, outputs=["all"])
    with pytest.raises(UnknownLabelError):
        butler.remove("calexp", visit=1, ccd=1, outputs=["in"])
    assert sorted(butler.remove("calexp", visit=1, ccd=1)) == ["cal", "own"]


# -- the mount -----------------------------------------------------------------


def write_image(path: Path, seed: int) -> bytes:
    make_image(seed).writeto(path)
    return path.read_bytes()


def tool(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


def holds(repository: Path, dataset_type: str, visit: int, ccd: int) -> bool:
    with Butler(repository) as alone:
        return alone.exists(dataset_type, visit=visit, ccd=ccd)


@pytest.mark.mount
def test_cp_into_an_outputs_directory_puts_to_it_alone(
    mounted: Mount, layout: Layout, tmp_path: Path
) -> None:
    target = exposure_path("calexp", 7, 3)
    union_directory = mounted.path(target).parent.parent
    before = os.listdir(union_directory)  # cached by the daemon: the put must move it on
    assert not mounted.path(f".repos/out2/{target}").exists()
    data = write_image(tmp_path / "image.fits", 73)
    assert tool("mkdir", "-p", str(mounted.path(f".repos/out1/{target}").parent)).returncode == 0
    result = tool("cp", str(tmp_path / "image.fits"), str(mounted.path(f".repos/out1/{target}")))
    assert result.returncode == 0, result.stderr
    assert (layout.out1 / target).read_bytes() == data
    assert not (layout.out2 / target).exists()
    assert holds(layout.out1, "calexp", 7, 3) and not holds(layout.out2, "calexp", 7, 3)
    with Butler(layout.out1) as alone:
        np.testing.assert_array_equal(alone.get("calexp", visit=7, ccd=3)[0].data, image_array(73))
    # At once, in both views, with the other output untouched.
    assert os.listdir(union_directory) == sorted([*before, "v0000007"])
    assert mounted.path(target).read_bytes() == data
    assert os.getxattr(mounted.path(target), "user.butler.repository") == b"out1"
    assert os.listdir(mounted.path(f".repos/out1/{target}").parent) == [os.path.basename(target)]
    assert mounted.path(f".repos/out1/{target}").read_bytes() == data
    assert not mounted.path(f".repos/out2/{target}").exists()


@pytest.mark.mount
def test_directory_modes_under_repos(mounted: Mount) -> None:
    def mode(relative: str) -> int:
        return stat.S_IMODE(mounted.path(relative).stat().st_mode)

    assert mode(".repos") == 0o555
    assert mode(".repos/out1") == mode(".repos/out1/calexp") == 0o755
    assert mode(".repos/in1") == mode(".repos/in1/calexp") == 0o555
    assert mode(f".repos/out1/{CALEXP_3_2}") == 0o444  # no overwrite in place
    assert mode(".versions") == 0o555


@pytest.mark.mount
def test_fsync_commits_under_repos(mounted: Mount, layout: Layout, tmp_path: Path) -> None:
    target = exposure_path("calexp", 3, 5)  # calexp/v0000003 exists in out1
    data = write_image(tmp_path / "image.fits", 35)
    fd = os.open(mounted.path(f".repos/out1/{target}"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
        assert holds(layout.out1, "calexp", 3, 5)
    finally:
        os.close(fd)
    assert not holds(layout.out2, "calexp", 3, 5)
    with Butler(layout.out1) as alone:
        assert [ref.version for ref in alone.versions("calexp", visit=3, ccd=5)] == [1]


@pytest.mark.mount
def test_rm_under_repos_removes_from_that_output_alone(mounted: Mount, layout: Layout) -> None:
    assert os.getxattr(mounted.path(CALEXP_3_2), "user.butler.repository") == b"out1"
    assert tool("rm", str(mounted.path(f".repos/out1/{CALEXP_3_2}"))).returncode == 0
    assert not holds(layout.out1, "calexp", 3, 2)
    assert holds(layout.out2, "calexp", 3, 2)
    assert not mounted.path(f".repos/out1/{CALEXP_3_2}").exists()
    assert mounted.path(f".repos/out2/{CALEXP_3_2}").is_file()
    # The union view now reads out2's copy, at once.
    assert os.getxattr(mounted.path(CALEXP_3_2), "user.butler.repository") == b"out2"
    with pytest.raises(OSError) as caught:  # out1 no longer holds it
        os.unlink(mounted.path(f".repos/out1/{CALEXP_3_2}"))
    assert caught.value.errno == errno.ENOENT


@pytest.mark.mount
def test_an_inputs_directory_stays_read_only(
    mounted: Mount, layout: Layout, tmp_path: Path
) -> None:
    new = exposure_path("calexp", 1, 9)  # calexp/v0000001 is in in1
    for path in (f".repos/in1/{new}", f".repos/in1/{exposure_path('calexp', 1, 1)}"):
        with pytest.raises(OSError) as caught:
            os.open(mounted.path(path), os.O_WRONLY | os.O_CREAT, 0o644)
        assert caught.value.errno == errno.EROFS, path
    for action, path in (
        (os.mkdir, ".repos/in1/calexp/v0000042"),
        (os.unlink, f".repos/in1/{RAW_1_1}"),
        (os.unlink, f".repos/in1/{CALEXP_1_1}"),
        (os.mkdir, ".repos/out3"),
    ):
        with pytest.raises(OSError) as caught:
            action(mounted.path(path))
        assert caught.value.errno == errno.EROFS, path
    assert (layout.in1 / RAW_1_1).is_file() and (layout.in1 / CALEXP_1_1).is_file()
    assert "/.repos/in1/" in mounted.log() and "in1 is not an output" in mounted.log()
    # A type its output does not accept: EROFS too (out2 takes calexp only).
    raw = exposure_path("raw", 9, 1)
    os.makedirs(mounted.path(f".repos/out2/{raw}").parent)
    write_image(tmp_path / "raw.fits", 91)
    result = tool("cp", str(tmp_path / "raw.fits"), str(mounted.path(f".repos/out2/{raw}")))
    assert result.returncode != 0 and "Read-only file system" in result.stderr
    assert "output out2 does not accept raw" in mounted.log()
    # And an existing dataset is not overwritten in place under .repos/.
    with pytest.raises(OSError) as caught:
        os.open(mounted.path(f".repos/out1/{CALEXP_3_2}"), os.O_WRONLY)
    assert caught.value.errno == errno.EROFS


@pytest.mark.mount
def test_scratch_and_rename_under_repos(mounted: Mount, layout: Layout, tmp_path: Path) -> None:
    target = exposure_path("calexp", 8, 1)
    directory = mounted.path(f".repos/out1/{target}").parent
    directory.mkdir(parents=True)
    scratch = directory / f".{os.path.basename(target)}.Xy12ab"
    data = write_image(tmp_path / "image.fits", 81)
    scratch.write_bytes(data)
    assert os.listdir(directory) == [scratch.name]
    assert not holds(layout.out1, "calexp", 8, 1)  # scratch is never put by itself
    os.rename(scratch, directory / os.path.basename(target))
    assert os.listdir(directory) == [os.path.basename(target)]
    assert (layout.out1 / target).read_bytes() == data
    assert not holds(layout.out2, "calexp", 8, 1)
    assert mounted.path(target).read_bytes() == data
    # Renamed over a dataset both outputs hold: a new version in out1 alone.
    over = mounted.path(f".repos/out1/{CALEXP_3_2}")
    scratch = over.parent / ".replacement"
    scratch.write_bytes(data)
    os.rename(scratch, over)
    with Butler(layout.out1) as alone:
        assert [ref.version for ref in alone.versions("calexp", visit=3, ccd=2)] == [1, 2]
    with Butler(layout.out2) as alone:
        assert [ref.version for ref in alone.versions("calexp", visit=3, ccd=2)] == [1]
    assert over.read_bytes() == data
    assert mounted.path(CALEXP_3_2).read_bytes() == data  # out1 is first in search order
    assert os.getxattr(mounted.path(CALEXP_3_2), "user.butler.version") == b"2"


@pytest.mark.mount
def test_rsync_into_an_outputs_directory(mounted: Mount, layout: Layout, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    expected = {}
    for ccd in (1, 2):
        relative = exposure_path("calexp", 12, ccd)
        (tree / relative).parent.mkdir(parents=True, exist_ok=True)
        expected[relative] = write_image(tree / relative, 120 + ccd)
    result = tool("rsync", "-a", f"{tree}/", f"{mounted.path('.repos/out2')}/")
    assert result.returncode == 0, result.stderr
    for relative, data in expected.items():
        assert (layout.out2 / relative).read_bytes() == data
        assert not (layout.out1 / relative).exists()
        assert mounted.path(relative).read_bytes() == data
