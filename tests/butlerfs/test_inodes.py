"""Inode numbers and the inode table (no mount needed)."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from butlerfs.inodes import ROOT, InodeTable, draft_inode, inode_of, version_inode


def test_root_is_pyfuse3s_root() -> None:
    assert inode_of("") == ROOT == 1


@given(st.text(min_size=1))
def test_inodes_are_stable_and_in_range(path: str) -> None:
    inode = inode_of(path)
    assert inode == inode_of(path)
    assert 1 < inode < 2**63


def test_inodes_do_not_depend_on_the_process() -> None:
    # A fixed value: a change of hash would renumber every mount (backups, find -inum).
    assert inode_of("calexp/v0000001/calexp-v0000001-c001.fits") == 1793031414287378229
    assert inode_of("a") != inode_of("b")


def test_table_counts_lookups_and_forgets() -> None:
    table = InodeTable()
    inode = table.remember("calexp")
    table.remember("calexp")
    assert table.path(inode) == "calexp"
    assert table.known("calexp") == inode
    table.forget(inode, 1)
    assert table.path(inode) == "calexp"
    table.forget(inode, 1)
    with pytest.raises(OSError) as caught:
        table.path(inode)
    assert caught.value.errno == errno.ESTALE
    assert table.known("calexp") is None


def test_root_is_never_forgotten() -> None:
    table = InodeTable()
    table.forget(ROOT, 5)
    assert table.path(ROOT) == ""


def test_a_renamed_inode_follows_its_new_name() -> None:
    table = InodeTable()
    inode = table.remember("calexp/.tmp.XYZ", draft_inode("calexp/.tmp.XYZ"))
    table.move(inode, "calexp/.tmp.ABC")
    assert table.path(inode) == "calexp/.tmp.ABC"
    assert table.remember("calexp/.tmp.ABC", inode) == inode


def test_a_file_inode_names_one_version() -> None:
    path = "calexp/v0000001/calexp-v0000001-c001.fits"
    first, second = version_inode(path, "tx1"), version_inode(path, "tx2")
    assert first != second != inode_of(path)
    assert first == version_inode(path, "tx1")  # the same at every mount, on every host
    assert 1 < first < 2**63
    assert draft_inode(path) != draft_inode(path)  # drafts: never the same twice
