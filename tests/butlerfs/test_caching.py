"""What the daemon keeps in memory, and that it never shows anything stale.

Listings are kept with the registries' change token and listed again when it moved;
lookups of many names in one directory read ahead; the kernel may remember failed
lookups where no template can produce anything; ``-o xattr=notsup|nosys`` trade the
extended attributes for ``ls -l`` speed.  Real mounts, except the unit tests at the end.
"""

from __future__ import annotations

import copy
import errno
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from butler import Butler, DataRepository
from butler.confine import Root
from butler.view import View
from butlerfs.entries import Entry, EntryCache, ListingCache
from butlerfs.inodes import InodeTable, version_inode
from butlerfs.options import parse
from butlerfs.scratch import ScratchArea
from butlerfs.tree import Settings, Tree
from butlerfs.worker import Worker, read_cached
from tests.butler.conftest import STANDARD_POLICY, settle
from tests.butlerfs.conftest import CALEXP_3_2, Layout, Mount, MountFactory

INFO = "visitInfo/visitInfo-v{:07d}.yaml"
MANY = 150  # enough for three read-ahead windows (64, 128, ...)


@pytest.fixture
def many(tmp_path: Path) -> Path:
    """A repository holding visitInfo for visits 0, 2, 4, ... (MANY of them), in one dir."""
    root = tmp_path / "many"
    DataRepository.create(root, policy=copy.deepcopy(STANDARD_POLICY))
    with Butler(root) as butler:
        for visit in range(0, 2 * MANY, 2):
            butler.put({"visit": visit, "pad": "x" * visit}, "visitInfo", visit=visit)
    settle()
    return root


def sizes(root: Path) -> dict[str, tuple[int, int]]:
    """Path → (size, inode number) of every visitInfo."""
    with Butler(root) as butler:
        return {
            ref.relative_path: (ref.size, version_inode(ref.relative_path, ref.txid))
            for ref in butler.query("visitInfo")
        }


# -- listings and lookups -------------------------------------------------------------------


@pytest.mark.mount
def test_a_put_elsewhere_is_listed_at_once(many: Path, start_mount: MountFactory) -> None:
    mount = start_mount(str(many))
    directory = mount.path("visitInfo")
    assert len(os.listdir(directory)) == MANY  # listed, and kept
    assert len(os.listdir(directory)) == MANY  # from the kept listing
    with Butler(many) as butler:
        butler.put({"visit": 1}, "visitInfo", visit=1)
    # No waiting for the poll: the listing's change token moved, so it is listed again.
    assert INFO.format(1).rpartition("/")[2] in os.listdir(directory)
    assert mount.path(INFO.format(1)).stat().st_size > 0


@pytest.mark.mount
def test_stat_of_every_file_without_a_listing(many: Path, start_mount: MountFactory) -> None:
    expected = sizes(many)
    mount = start_mount(str(many))
    # In name order (read-ahead windows), then in another order on a fresh mount.
    for path, (size, inode) in sorted(expected.items()):
        found = mount.path(path).stat()
        assert (found.st_size, found.st_ino) == (size, inode), path
        with pytest.raises(FileNotFoundError):  # an odd visit: in the window, but absent
            mount.path(INFO.format(int(path[-12:-5]) + 1)).stat()
    other = start_mount(str(many))
    shuffled = list(expected.items())
    random.Random(7).shuffle(shuffled)
    for path, (size, _) in shuffled:
        assert other.path(path).stat().st_size == size, path
    # A dataset put after the read-ahead shows at once (it was never in a window).
    with Butler(many) as butler:
        butler.put({"visit": 3}, "visitInfo", visit=3)
    assert other.path(INFO.format(3)).stat().st_size > 0
    assert other.path(INFO.format(3)).read_bytes() == (many / INFO.format(3)).read_bytes()


@pytest.mark.mount
def test_a_listed_file_opens_and_reads(many: Path, start_mount: MountFactory) -> None:
    mount = start_mount(str(many))
    names = os.listdir(mount.path("visitInfo"))
    for name in names[:20]:
        relative = f"visitInfo/{name}"
        assert mount.path(relative).read_bytes() == (many / relative).read_bytes()


@pytest.mark.mount
def test_failed_lookups_where_nothing_can_appear_are_remembered_safely(
    mounted: Mount, layout: Layout
) -> None:
    probe = mounted.path("visitInfo/.probe")
    for _ in range(2):  # the second answer is the kernel's own
        with pytest.raises(FileNotFoundError):
            probe.stat()
    probe.write_bytes(b"scratch")  # created through the mount: the kernel sees it at once
    assert probe.read_bytes() == b"scratch"
    probe.unlink()
    with pytest.raises(FileNotFoundError):
        probe.stat()
    # A template path is never remembered as missing: a put elsewhere shows at once.
    missing = mounted.path(INFO.format(7))
    with pytest.raises(FileNotFoundError):
        missing.stat()
    with layout.butler() as butler:
        butler.put({"visit": 7}, "visitInfo", visit=7)
    assert missing.stat().st_size > 0


# -- -o xattr= ------------------------------------------------------------------------------


@pytest.mark.mount
def test_xattr_nosys_turns_extended_attributes_off(
    layout: Layout, start_mount: MountFactory
) -> None:
    mount = start_mount(str(layout.aggregator), "-o", "xattr=nosys")
    target = mount.path(CALEXP_3_2)
    for name in ("user.butler.version", "security.selinux", "user.other"):
        for _ in range(2):  # the first answer is the daemon's, then the kernel's own
            with pytest.raises(OSError) as caught:
                os.getxattr(target, name)
            assert caught.value.errno == errno.EOPNOTSUPP, name
    with pytest.raises(OSError) as caught:
        os.listxattr(target)
    assert caught.value.errno == errno.EOPNOTSUPP
    if shutil.which("getfattr"):
        result = subprocess.run(
            ["getfattr", "-n", "user.butler.version", str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode != 0
        assert "not supported" in result.stderr
    # Everything else works as before.
    assert target.read_bytes() == (layout.out1 / CALEXP_3_2).read_bytes()
    assert subprocess.run(["ls", "-l", str(target.parent)], capture_output=True).returncode == 0


@pytest.mark.mount
def test_xattr_notsup_refuses_other_namespaces(layout: Layout, start_mount: MountFactory) -> None:
    mount = start_mount(str(layout.aggregator), "-o", "xattr=notsup")
    target = mount.path(CALEXP_3_2)
    assert os.getxattr(target, "user.butler.version") == b"1"
    for name in ("security.selinux", "system.posix_acl_access", "trusted.x"):
        with pytest.raises(OSError) as caught:
            os.getxattr(target, name)
        assert caught.value.errno == errno.EOPNOTSUPP, name
    with pytest.raises(OSError) as caught:
        os.getxattr(target, "user.other")
    assert caught.value.errno == errno.ENODATA
    assert target.read_bytes() == (layout.out1 / CALEXP_3_2).read_bytes()


def test_the_xattr_option_is_checked() -> None:
    assert parse([], "s").xattr == "notsup"
    assert parse(["xattr=butler"], "s").xattr == "notsup"  # the old default, in old fstabs
    assert parse(["xattr=nosys"], "s").xattr == "nosys"
    assert not any(option.startswith("xattr") for option in parse(["xattr=notsup"], "s").fuse)
    with pytest.raises(Exception, match="xattr=off"):
        parse(["xattr=off"], "s")


# -- the pieces, without a mount -------------------------------------------------------------


def test_a_listing_window_is_the_listing_cut(layout: Layout) -> None:
    with layout.butler() as butler:
        for visit in range(10, 30):
            butler.put({"visit": visit}, "visitInfo", visit=visit)
        view = View(butler)
        whole = [node.name for node in view.listdir("visitInfo")]
        for start in ("", whole[3], whole[3] + "0", "zzz"):
            for limit in (1, 2, 5, 100):
                window = view.listdir_from("visitInfo", start, limit)
                assert window is not None
                nodes, last = window
                expected = [name for name in whole if name >= start]
                if last is not None:
                    expected = [name for name in expected if name <= last]
                    assert len(nodes) <= limit * len(butler.resolver.search)  # per repository
                assert [node.name for node in nodes] == expected
        # Two inputs hold calexp 1/1: the window shows the first's, as the listing does.
        listed = {node.path: node.ref for node in view.listdir("calexp/v0000001")}
        window = view.listdir_from("calexp/v0000001", "", 1)
        assert window is not None
        for node in window[0]:
            assert node.ref == listed[node.path]
        assert view.listdir_from("", "a", 10) is None
        assert view.listdir_from(".versions/calexp", "a", 10) is None


def test_tree_remembers_absence_only_where_no_template_reaches(layout: Layout) -> None:
    told: list[str] = []
    with layout.butler() as butler:
        view = View(butler)
        tree = Tree(
            view,
            lambda: view,
            Worker(),
            ScratchArea(None),
            Settings("/nowhere", "test"),
            told.append,
        )
        assert tree.absent("visitInfo/.git")
        assert tree.absent(".git")
        assert not tree.absent(INFO.format(9))  # a put may make it
        assert not tree.absent("calexp/v0000009")  # a template directory
        assert not tree.absent(".versions/visitInfo/.git")
        tree.changed_here("visitInfo/.git/objects/x")  # a change below: forget it
        assert told == ["visitInfo/.git/objects/x", "visitInfo/.git"]
        told.clear()
        tree.view.refresh()  # a policy change: the kernel must forget every absence
        tree.check_revision()
        assert told == [".git"]


def test_entry_cache_is_bounded_and_keeps_what_is_used() -> None:
    cache = EntryCache(limit=100)
    first = Entry("a/0", False, 0o444)
    cache.put(first, cache.generation)
    for index in range(1, 1000):
        cache.put(Entry(f"a/{index}", False, 0o444), cache.generation)
        assert cache.get("a/0") is first  # used all along: kept
        assert len(cache) <= 100
    assert cache.get("a/500") is None
    stale = cache.generation
    cache.drop("a/0")
    cache.put(first, stale)  # an answer older than the drop is not kept
    assert cache.get("a/0") is None


def test_listing_cache_is_bounded_by_entries() -> None:
    listings = ListingCache(limit=100)
    for index in range(10):
        listings.put(f"d{index}", index, [Entry(f"d{index}/{n}", False, 0o444) for n in range(30)])
        assert listings.entries <= 100
    assert listings.get("d9", 9) is not None
    assert listings.get("d9", 8) is None  # another key: not current
    assert listings.get("d0", 0) is None  # evicted
    listings.put("big", 0, [Entry(f"big/{n}", False, 0o444) for n in range(60)])
    assert listings.get("big", 0) is None  # more than half the limit: not kept


def test_inode_table_follows_the_kernels_counts() -> None:
    table = InodeTable()
    inode = table.remember("a/b")
    for _ in range(4):
        table.remember("a/b", inode)
    assert table.lookups(inode) == 5
    assert not table.forget(inode, 2)
    assert table.lookups(inode) == 3
    table.move(inode, "a/c")
    assert table.path(inode) == "a/c" and table.lookups(inode) == 3
    # Two versions of one path, each its own inode with its own count.
    older, newer = version_inode("a/c", "t1"), version_inode("a/c", "t2")
    table.remember("a/c", older)
    table.remember("a/c", newer)
    table.remember("a/c", newer)
    assert (table.lookups(older), table.lookups(newer)) == (1, 2)
    assert table.forget(older, 1) and table.lookups(newer) == 2
    assert table.forget(inode, 3)
    assert table.lookups(inode) == 0 and table.get(inode) is None
    assert not table.forget(inode, 1)  # a late forget of a forgotten inode: ignored
    assert table.forget(newer, 2)
    assert len(table) == 1  # the root


def test_cached_open_and_read(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    path = tmp_path / "f"
    path.write_bytes(data)
    os.stat(path)  # every component now in the dentry cache
    root = Root(str(tmp_path))
    fd = root.open_cached("f")  # this kernel (6.x) has openat2 with RESOLVE_CACHED
    assert fd is not None
    try:
        os.read(fd, 1)  # the page is cached
        assert bytes(read_cached(fd, 4096, 0, len(data)) or b"?") == data[:4096]
        assert bytes(read_cached(fd, 4096, 8192, len(data)) or b"?") == data[8192:]
        at_end = read_cached(fd, 4096, len(data), len(data))
        assert at_end is not None and bytes(at_end) == b""
    finally:
        os.close(fd)
    with pytest.raises(FileNotFoundError):  # after a lookup, the kernel knows it is absent
        os.stat(tmp_path / "missing")
    assert root.open_cached("missing") is None  # the worker thread says why
    root.close()
