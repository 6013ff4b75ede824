"""The resolver (butler.resolver): outputs created at the first write only, search order."""

from __future__ import annotations

import errno
import gc
import os
from pathlib import Path

import numpy as np
import pytest

from butler import Butler, ButlerError
from butler.view import View
from tests.butler.conftest import MakeRepo, pixels


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


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_butlers_closed_or_dropped_keep_no_descriptors(make_repo: MakeRepo, tmp_path: Path) -> None:
    """A long-lived process (a pipeline, the mount daemon across reloads) opens butlers
    again and again: each one's directory, lock and registry descriptors go with it,
    whether it is closed or only dropped."""
    raw = make_repo("raw")
    outputs = [tmp_path / "work", tmp_path / "copy"]
    Butler(inputs=[raw], outputs=outputs).put(np.ones((2, 2)), "calexp", visit=1, ccd=1)
    gc.collect()
    before = _open_descriptors()
    for round_ in range(40):
        butler = Butler(inputs=[raw], outputs=outputs)
        butler.put(np.ones((2, 2)) * round_, "calexp", visit=1, ccd=2)
        assert pixels(butler.get("calexp", visit=1, ccd=1)).shape == (2, 2)
        View(butler).listdir("")
        if round_ % 2:
            butler.close()
        del butler
    gc.collect()
    assert _open_descriptors() <= before + 2, "descriptors of dropped butlers stayed open"
