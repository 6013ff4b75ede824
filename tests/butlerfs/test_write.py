"""ACCEPTANCE 19 (cp), 20 (rsync) and 21 (refusals), and the rest of the write semantics:
versions on overwrite, mv (EXDEV → copy), rm, scratch files, errors at close."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from tests.butler.conftest import exposure_path, image_array, make_image
from tests.butlerfs.conftest import (
    CALEXP_3_2,
    RAW_1_1,
    VISIT_INFO_1,
    Layout,
    Mount,
    MountFactory,
    scratch_files,
)

pytestmark = pytest.mark.mount


def write_image(path: Path, seed: int) -> bytes:
    make_image(seed).writeto(path)
    return path.read_bytes()


def tool(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


def outputs_holding(layout: Layout, relative: str) -> list[str]:
    return [output.name for output in layout.outputs if (output / relative).is_file()]


def test_cp_puts_to_every_accepting_output(mounted: Mount, layout: Layout, tmp_path: Path) -> None:
    target = exposure_path("calexp", 7, 3)
    data = write_image(tmp_path / "image.fits", 70)
    assert tool("mkdir", "-p", str(mounted.path(target).parent)).returncode == 0
    result = tool("cp", str(tmp_path / "image.fits"), str(mounted.path(target)))
    assert result.returncode == 0, result.stderr
    with layout.butler() as butler:  # the library sees it at once
        refs = butler.query("calexp", visit=7, ccd=3)
        assert [ref.version for ref in refs] == [1]
        np.testing.assert_array_equal(butler.get("calexp", visit=7, ccd=3)[0].data, image_array(70))
    assert outputs_holding(layout, target) == ["out1", "out2"]
    assert (layout.out1 / target).read_bytes() == data
    assert os.listdir(mounted.path(target).parent) == [os.path.basename(target)]
    assert mounted.path(target).stat().st_size == len(data)


def test_cp_over_a_dataset_makes_a_new_version(
    mounted: Mount, layout: Layout, tmp_path: Path
) -> None:
    data = write_image(tmp_path / "image.fits", 71)
    before = mounted.path(CALEXP_3_2).read_bytes()
    result = tool("cp", str(tmp_path / "image.fits"), str(mounted.path(CALEXP_3_2)))
    assert result.returncode == 0, result.stderr
    assert mounted.path(CALEXP_3_2).read_bytes() == data
    assert os.getxattr(mounted.path(CALEXP_3_2), "user.butler.version") == b"2"
    versions = mounted.path(f".versions/{CALEXP_3_2}")
    assert sorted(os.listdir(versions)) == ["v1.fits", "v2.fits"]
    assert (versions / "v1.fits").read_bytes() == before
    with layout.butler() as butler:
        assert [r.version for r in butler.versions("calexp", visit=3, ccd=2)] == [1, 2]


def test_a_shorter_file_written_over_a_dataset_replaces_it_whole(
    layout: Layout, start_mount: MountFactory, tmp_path: Path, read_path: str
) -> None:
    """open(O_TRUNC) empties the draft: libfuse asks for atomic O_TRUNC, so the kernel sends
    no truncate of its own (once, nothing did, and the old version's tail stayed)."""
    mount = start_mount(str(layout.aggregator), reads=read_path)
    path = mount.path(VISIT_INFO_1)
    before = path.read_bytes()
    shorter = b"filter: g\n"
    assert len(shorter) < len(before)
    (tmp_path / "short.yaml").write_bytes(shorter)
    result = tool("cp", str(tmp_path / "short.yaml"), str(path))
    assert result.returncode == 0, result.stderr
    assert path.read_bytes() == shorter
    with open(path, "w") as rewritten:  # O_TRUNC, then a write through Python
        rewritten.write("filter: i\n")
    assert path.read_bytes() == b"filter: i\n"
    with layout.butler() as butler:
        assert butler.get("visitInfo", visit=1) == {"filter": "i"}


def test_rsync_creates_every_dataset_and_leaves_no_temporary(
    mounted: Mount, layout: Layout, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    expected: dict[str, bytes] = {}
    for visit in (11, 12):
        for ccd in (1, 2, 3):
            relative = exposure_path("calexp", visit, ccd)
            (tree / relative).parent.mkdir(parents=True, exist_ok=True)
            expected[relative] = write_image(tree / relative, visit * 10 + ccd)
    (tree / "visitInfo").mkdir()
    (tree / "visitInfo/visitInfo-v0000011.yaml").write_text("exposureTime: 15.0\n")
    expected["visitInfo/visitInfo-v0000011.yaml"] = b"exposureTime: 15.0\n"
    result = tool("rsync", "-a", f"{tree}/", f"{mounted.mountpoint}/")
    assert result.returncode == 0, result.stderr
    for relative, data in expected.items():
        assert mounted.path(relative).read_bytes() == data, relative
        accepting = ["out1", "out2"] if relative.startswith("calexp") else ["out1"]
        assert outputs_holding(layout, relative) == accepting, relative
    leftovers = [
        path
        for root in (mounted.mountpoint / "calexp", *layout.outputs)
        for path in root.rglob(".*")
        if ".butler" not in path.parts
    ]
    assert leftovers == []
    assert scratch_files(layout) == [] or all(p.is_dir() for p in scratch_files(layout))


def test_mv_between_datasets_copies(mounted: Mount, layout: Layout, tmp_path: Path) -> None:
    source = exposure_path("calexp", 8, 1)
    target = exposure_path("calexp", 8, 2)
    mounted.path(source).parent.mkdir(parents=True)
    data = write_image(tmp_path / "image.fits", 81)
    shutil.copyfile(tmp_path / "image.fits", mounted.path(source))
    with pytest.raises(OSError) as caught:
        os.rename(mounted.path(source), mounted.path(target))
    assert caught.value.errno == errno.EXDEV
    result = tool("mv", str(mounted.path(source)), str(mounted.path(target)))
    assert result.returncode == 0, result.stderr
    assert os.listdir(mounted.path(target).parent) == [os.path.basename(target)]
    assert mounted.path(target).read_bytes() == data
    with layout.butler() as butler:
        assert butler.exists("calexp", visit=8, ccd=2)
        assert not butler.exists("calexp", visit=8, ccd=1)


def test_rm_hides_the_dataset_and_keeps_its_versions(mounted: Mount, layout: Layout) -> None:
    before = mounted.path(CALEXP_3_2).read_bytes()
    assert tool("rm", str(mounted.path(CALEXP_3_2))).returncode == 0
    assert not mounted.path(CALEXP_3_2).exists()
    assert outputs_holding(layout, CALEXP_3_2) == []
    assert mounted.path(f".versions/{CALEXP_3_2}/v1.fits").read_bytes() == before
    with layout.butler() as butler:
        assert not butler.exists("calexp", visit=3, ccd=2)


def test_rm_of_an_input_dataset_is_erofs(mounted: Mount, layout: Layout) -> None:
    with pytest.raises(OSError) as caught:
        os.unlink(mounted.path(RAW_1_1))
    assert caught.value.errno == errno.EROFS
    assert (layout.in1 / RAW_1_1).is_file()
    assert f"/{RAW_1_1}: only input in1 holds it" in mounted.log()


def test_writing_where_only_inputs_could_hold_it_is_erofs(
    mounted: Mount, layout: Layout, tmp_path: Path
) -> None:
    target = exposure_path("raw", 9, 1)  # no output accepts raw
    mounted.path(target).parent.mkdir(parents=True)
    write_image(tmp_path / "image.fits", 9)
    result = tool("cp", str(tmp_path / "image.fits"), str(mounted.path(target)))
    assert result.returncode != 0
    assert "Read-only file system" in result.stderr
    with pytest.raises(OSError) as caught:
        os.open(mounted.path(target), os.O_WRONLY | os.O_CREAT, 0o644)
    assert caught.value.errno == errno.EROFS
    refusals = [line for line in mounted.log().splitlines() if "EROFS" in line and target in line]
    assert refusals and all("no output accepts raw" in line for line in refusals)
    assert outputs_holding(layout, target) == []


def test_a_path_matching_no_template_is_eacces(mounted: Mount, tmp_path: Path) -> None:
    for bad in ("notes.txt", "calexp/v0000001/calexp-v1-c1.fits", "calexp/v1"):
        with pytest.raises(OSError) as caught:
            if bad.endswith("v1"):
                os.mkdir(mounted.path(bad))
            else:
                os.open(mounted.path(bad), os.O_WRONLY | os.O_CREAT, 0o644)
        assert caught.value.errno == errno.EACCES, bad
        lines = [line for line in mounted.log().splitlines() if f"{bad}:" in line]
        assert len(lines) == 1 and "EACCES" in lines[0], lines


def test_namespaces_other_than_the_union_are_read_only(mounted: Mount) -> None:
    for path in (f".repos/out1/{CALEXP_3_2}", f".versions/{CALEXP_3_2}/v1.fits", ".butler/x"):
        with pytest.raises(OSError) as caught:
            os.open(mounted.path(path), os.O_WRONLY | os.O_CREAT, 0o644)
        assert caught.value.errno == errno.EROFS, path


def test_a_bad_file_fails_at_close_and_puts_nothing(
    mounted: Mount, layout: Layout, tmp_path: Path
) -> None:
    target = exposure_path("calexp", 3, 9)
    whole = write_image(tmp_path / "image.fits", 39)
    fd = os.open(mounted.path(target), os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, whole[: len(whole) // 2])  # begins like FITS, but is cut short
    with pytest.raises(OSError) as caught:
        os.close(fd)
    assert caught.value.errno == errno.EINVAL
    assert not mounted.path(target).exists()
    assert outputs_holding(layout, target) == []
    assert f"/{target}: nothing was put" in mounted.log()


def test_scratch_files_stay_in_the_mount_until_renamed(
    mounted: Mount, layout: Layout, tmp_path: Path
) -> None:
    directory = mounted.path(CALEXP_3_2).parent
    scratch = directory / ".calexp.swp"
    data = write_image(tmp_path / "image.fits", 33)
    scratch.write_bytes(data)
    os.chmod(scratch, 0o600)
    os.utime(scratch, (1_000_000_000, 1_000_000_000))
    with open(scratch, "r+b") as file:
        file.truncate(len(data))
    assert scratch.read_bytes() == data
    assert ".calexp.swp" in os.listdir(directory)
    assert not any(path.name == ".calexp.swp" for out in layout.outputs for path in out.rglob("*"))
    target = directory / "calexp-v0000003-c004.fits"
    os.rename(scratch, target)
    assert target.read_bytes() == data
    assert ".calexp.swp" not in os.listdir(directory)
    with layout.butler() as butler:
        assert butler.exists("calexp", visit=3, ccd=4)
    (directory / ".deleted").write_bytes(b"x")
    os.unlink(directory / ".deleted")
    assert not (directory / ".deleted").exists()
    # A scratch directory: everything in it is scratch (rsync --partial-dir, .tmp/).
    (directory / ".partial").mkdir()
    partial = directory / ".partial" / "calexp-v0000003-c005.fits"
    partial.write_bytes(data)
    os.rename(partial, directory / "calexp-v0000003-c005.fits")
    os.rmdir(directory / ".partial")
    with layout.butler() as butler:
        assert butler.exists("calexp", visit=3, ccd=5)


def test_written_fits_is_readable_with_memmap(mounted: Mount, tmp_path: Path) -> None:
    target = mounted.path(exposure_path("calexp", 3, 7))
    make_image(37).writeto(target)
    with fits.open(target, memmap=True) as hdus:
        np.testing.assert_array_equal(hdus[0].data, image_array(37))


def test_closing_a_duplicate_does_not_commit(mounted: Mount, layout: Layout) -> None:
    """numpy's tofile (astropy's writeto) writes through a dup it closes: that close is not
    the last one, so it commits nothing; the last close commits the whole file, once."""
    target = mounted.path("visitInfo/visitInfo-v0000004.yaml")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"- first\n")  # already valid YAML: only the close may say it is whole
        os.close(os.dup(fd))
        with layout.butler() as butler:
            assert not butler.exists("visitInfo", visit=4)
        os.write(fd, b"- second\n")
    finally:
        os.close(fd)
    with layout.butler() as butler:
        refs = butler.versions("visitInfo", visit=4)
        assert [ref.version for ref in refs] == [1]
        assert Path(refs[0].path).read_bytes() == b"- first\n- second\n"
    make_image(44).writeto(mounted.path(exposure_path("calexp", 3, 14)))
    assert mounted.path(".butler/log").read_text() == ""  # no refusal of a part-written file
