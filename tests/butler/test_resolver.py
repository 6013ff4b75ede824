"""The resolver (butler.resolver): outputs created at the first write only, search order."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest

from butler import Butler, ButlerError
from butler.view import View
from tests.butler.conftest import MakeRepo


def test_opening_and_reading_create_nothing(make_repo: MakeRepo, tmp_path: Path) -> None:
    raw = make_repo("raw")
    typo = tmp_path / "typo" / "deep" / "wrk"
    butler = Butler(inputs=[raw], outputs=[typo])
    assert not butler.exists("calexp", visit=1, ccd=1)
    assert butler.query("calexp") == []
    with pytest.raises(LookupError):
        butler.get("calexp", visit=1, ccd=1)
    View(butler).listdir("")
    assert not (tmp_path / "typo").exists()  # a read-only use never grows a tree
    # Its first write names the parent that is missing, and makes nothing.
    with pytest.raises(ButlerError, match="parent directory") as refused:
        butler.put(np.ones((2, 2)), "calexp", visit=1, ccd=1)
    assert refused.value.errno == errno.ENOENT
    assert not (tmp_path / "typo").exists()


def test_an_output_is_created_at_its_first_write(make_repo: MakeRepo, tmp_path: Path) -> None:
    raw = make_repo("raw")
    butler = Butler(inputs=[raw], outputs=[tmp_path / "work", tmp_path / "copy"])
    assert [label for label, _, _ in butler.repositories] == ["work", "copy", "raw"]
    assert not (tmp_path / "work").exists()
    refs = butler.put(np.ones((2, 2)), "calexp", visit=1, ccd=1)
    assert {ref.repository for ref in refs} == {"work", "copy"}
    alone = Butler(tmp_path / "work")  # standalone: the input became its parent
    assert [label for label, _, _ in alone.repositories] == ["work", "raw"]
    assert alone.exists("calexp", visit=1, ccd=1)
    # In search order as soon as it exists: reads find what was just written there.
    assert butler.ref("calexp", visit=1, ccd=1).repository == "work"
