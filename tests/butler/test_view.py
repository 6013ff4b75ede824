"""The aggregator as paths: what the mount asks the resolver."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from butler import Butler, DataRepository, DatasetNotFoundError
from butler.errors import InvalidDataIdError, NoOutputError
from butler.view import Area, Place, View, locate

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


@pytest.fixture
def view(tmp_path: Path) -> View:
    DataRepository.create(tmp_path / "raw", policy=POLICY)
    raw = Butler(tmp_path / "raw")
    for ccd in range(3):
        raw.put({"ccd": ccd}, "raw", visit=1, ccd=ccd)
    butler = Butler(
        inputs=[tmp_path / "raw"],
        outputs=[tmp_path / "work", {"path": tmp_path / "only-calexp", "datasetTypes": ["calexp"]}],
    )
    butler.put({"v": 1}, "calexp", visit=1, ccd=0)
    butler.put({"v": 2}, "calexp", visit=1, ccd=0)
    return View(butler)


def names(nodes: list) -> list[str]:  # type: ignore[type-arg]
    return [node.name for node in nodes]


def test_union_tree(view: View) -> None:
    # The root lists the union only; the other namespaces are reached by name.
    assert names(view.listdir("")) == ["calexp", "raw"]
    assert all(view.stat(name).is_directory for name in (".repos", ".versions", ".butler"))
    assert names(view.listdir("raw/v0000001")) == [
        "raw-c000.yaml",
        "raw-c001.yaml",
        "raw-c002.yaml",
    ]
    node = view.stat("calexp/v0000001/calexp-c000.yaml")
    assert node.ref is not None and node.ref.version == 2 and node.ref.repository == "work"
    assert Path(node.ref.path).read_text() == "v: 2\n"
    assert view.stat("raw/v0000001").is_directory
    with pytest.raises(DatasetNotFoundError):
        view.stat("raw/v0000001/raw-c009.yaml")
    with pytest.raises(DatasetNotFoundError):
        view.stat("raw/v1/raw-c000.yaml")  # not canonical: never an alias


def test_repos_and_versions(view: View) -> None:
    assert names(view.listdir(".repos")) == ["work", "raw", "only-calexp"]
    assert names(view.listdir(".repos/raw/raw/v0000001")) == [
        "raw-c000.yaml",
        "raw-c001.yaml",
        "raw-c002.yaml",
    ]
    versions = view.listdir(".versions/calexp/v0000001/calexp-c000.yaml")
    assert names(versions) == ["v1.yaml", "v2.yaml"]
    first = view.stat(".versions/calexp/v0000001/calexp-c000.yaml/v1.yaml")
    assert first.ref is not None and Path(first.ref.path).read_text() == "v: 1\n"
    assert view.stat(".versions/calexp/v0000001/calexp-c000.yaml").is_directory


def test_removal_shows_the_input_again_and_keeps_versions(view: View) -> None:
    butler = view.butler
    butler.put({"mine": True}, "raw", visit=1, ccd=1)
    assert view.stat("raw/v0000001/raw-c001.yaml").ref.repository == "work"  # type: ignore[union-attr]
    assert butler.remove("raw", visit=1, ccd=1) == ["work"]
    assert view.stat("raw/v0000001/raw-c001.yaml").ref.repository == "raw"  # type: ignore[union-attr]
    kept = view.listdir(".versions/raw/v0000001/raw-c001.yaml")
    assert [n.ref.repository for n in kept] == ["work"]  # type: ignore[union-attr]
    with pytest.raises(DatasetNotFoundError, match="inputs are never changed"):
        butler.remove("raw", visit=1, ccd=2)


def test_classify_write(view: View, tmp_path: Path) -> None:
    target = view.classify_write("calexp/v0000002/calexp-c004.yaml")
    assert (target.dataset_type, target.data_id, target.define_genre) == (
        "calexp",
        {"visit": 2, "ccd": 4},
        None,
    )
    new = view.classify_write("icExp/v0000002/icExp-c004.yaml")
    assert (new.dataset_type, new.define_genre) == ("icExp", "meta")
    with pytest.raises(InvalidDataIdError, match="matches no dataset type"):
        view.classify_write("calexp/v2/calexp-c004.yaml")
    with pytest.raises(InvalidDataIdError):
        view.classify_write("notes.txt")
    readonly = View(
        Butler(
            inputs=[tmp_path / "raw"],
            outputs=[{"path": tmp_path / "x", "datasetTypes": ["calexp"]}],
        )
    )
    with pytest.raises(NoOutputError, match="only read-only inputs"):
        readonly.classify_write("raw/v0000001/raw-c007.yaml")
    assert view.is_template_directory("calexp/v0000009")
    assert not view.is_template_directory("calexp/v9")


def test_change_token_reports_paths_put_by_another_butler(view: View, tmp_path: Path) -> None:
    token = view.token()
    assert view.changes_since(token) == (token, [])
    Butler(tmp_path / "work").put({"late": 1}, "calexp", visit=3, ccd=1)
    token, paths = view.changes_since(token)
    assert "calexp/v0000003/calexp-c001.yaml" in paths
    assert view.stat("calexp/v0000003/calexp-c001.yaml").ref is not None
    assert view.changes_since(token) == (token, [])


def test_a_path_is_located_once() -> None:
    assert locate("") == Place(Area.UNION, "", relative="")
    assert locate("calexp/v0000001/x.yaml") == Place(
        Area.UNION, "calexp/v0000001/x.yaml", relative="calexp/v0000001/x.yaml"
    )
    assert locate(".repos") == Place(Area.REPOS, ".repos")
    assert locate(".repos/work/calexp/x.yaml") == Place(
        Area.REPOS, ".repos/work/calexp/x.yaml", "work", "calexp/x.yaml"
    )
    assert locate(".versions/calexp/x.yaml/v2.yaml").relative == "calexp/x.yaml/v2.yaml"
    assert locate(".butler/log") == Place(Area.INTERNAL, ".butler/log", relative="log")
    assert locate(".repos/work").is_namespace_root and not locate("calexp").is_namespace_root


def test_open_version_serves_that_version_after_newer_ones(view: View) -> None:
    path = "calexp/v0000001/calexp-c000.yaml"
    current = view.stat(path).ref
    assert current is not None and current.version == 2
    view.butler.put({"v": 3, "longer": "x" * 100}, "calexp", visit=1, ccd=0)
    # The ref was the current version's when taken; it opens as version 2 still.
    fd = view.open_version(current)
    assert fd is not None
    try:
        assert os.read(fd, 1000) == b"v: 2\n"
    finally:
        os.close(fd)
    versions = view.version_nodes(path)  # both outputs hold calexp: every version of each
    shown = [(n.ref.repository, n.ref.version) for n in versions]  # type: ignore[union-attr]
    assert shown == [("work", 1), ("work", 2), ("work", 3)] + [
        ("only-calexp", v) for v in (1, 2, 3)
    ]
    assert {node.txid for node in versions} == {node.ref.txid for node in versions}  # type: ignore[union-attr]
