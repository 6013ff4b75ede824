"""A bad aggregator file never ends a mount: SIGHUP keeps the previous configuration and
logs why; a mount started on a bad file exits with status 2 and one line."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.butler.test_hostile_config import LAUGHS
from tests.butlerfs.conftest import (
    CALEXP_1_1,
    Layout,
    Mount,
    require_fuse,
    run_butlerfs,
    wait_for,
)

RELOAD_DEADLINE = 10.0

# (id, text of the aggregator file, what the log must say); {dir} is the file's directory.
BAD_AGGREGATORS: list[tuple[str, bytes, str]] = [
    ("alias-bomb", LAUGHS + b"butler: 1\ninputs: *i\n", "aliases expand"),
    ("recursive-alias", b"butler: 1\ninputs: &i [*i]\n", "refers to a node that contains it"),
    ("self-including", b"butler: 1\ninputs: [aggregator.yaml]\n", "in a loop"),
    ("mutual", b"butler: 1\ninputs: [other.yaml]\n", "in a loop"),
    (
        "genre-list",
        b"butler: 1\ninputs: [in1]\npolicy: {datasetTypes: {calexp: {genre: [x]}}}\n",
        "unknown genre ['x']",
    ),
    (
        "width-4294967295",
        b"butler: 1\ninputs: [in1]\n"
        b"policy: {genres: {exposure: {template: '{visit:04294967295d}/{ccd}.fits'}}}\n",
        "width '04294967295d'",
    ),
    (
        "colliding-templates",
        b"butler: 1\ninputs: [in1]\npolicy: {datasetTypes: {calexp: {genre: exposure, "
        b"template: 'raw/v{visit:07d}/raw-v{visit:07d}-c{ccd:03d}.fits'}}}\n",
        "would share the files",
    ),
    ("nul-path", b'butler: 1\ninputs: ["in1\\0"]\n', "NUL"),
    ("invalid-utf8", b"butler: 1\ninputs: [in\xff]\n", "UTF-8"),
    ("not-a-mapping", b"- in1\n- in2\n", "a mapping starting with 'butler: 1'"),
    ("butler-true", b"butler: true\ninputs: [in1]\n", "butler is True"),
    ("unknown-key", b"butler: 1\ninput: [in1]\n", "unknown key"),
    ("deep", b"butler: 1\npolicy: " + b"{a: " * 40 + b"1" + b"}" * 40 + b"\n", "levels"),
    ("two-documents", b"butler: 1\n---\nbutler: 1\n", "single document"),
]


@pytest.fixture
def daemon(layout: Layout, tmp_path: Path) -> Iterator[Mount]:
    """The layout's aggregator mounted; unmounted (exit 0 asserted) at teardown.

    Not conftest's start_mount: that one fails a test on any ERROR in the log, and a
    refused reload is logged as an error on purpose.
    """
    require_fuse()
    mount = Mount(tmp_path / "mnt", tmp_path / "daemon.log")
    try:
        yield mount.start(str(layout.aggregator))
        print(f"---- daemon log ----\n{mount.log()}")
        assert mount.process is not None and mount.process.poll() is None, "the daemon died"
        mount.unmount()
        assert "Traceback" not in mount.log()
    finally:
        mount.cleanup()


def _replace(path: Path, text: bytes) -> None:
    """As an editor saving the file would: a new file renamed over the old one."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(text)
    os.replace(temporary, path)


def _log_count(mount: Mount, text: str) -> int:
    return mount.log().count(text)


def test_sighup_with_a_bad_aggregator_keeps_the_previous_configuration(
    daemon: Mount, layout: Layout
) -> None:
    assert daemon.process is not None
    good = layout.aggregator.read_bytes()
    (layout.root / "other.yaml").write_bytes(b"butler: 1\ninputs: [aggregator.yaml]\n")
    served = (layout.in1 / CALEXP_1_1).read_bytes()
    labels = sorted(os.listdir(daemon.path(".repos")))
    assert daemon.path(CALEXP_1_1).read_bytes() == served
    for count, (case, text, reason) in enumerate(BAD_AGGREGATORS, start=1):
        _replace(layout.aggregator, text)
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(
            lambda n=count: _log_count(daemon, "SIGHUP: reloading failed") >= n,  # type: ignore[misc]
            RELOAD_DEADLINE,
            f"the refused reload of {case}",
        )
        assert daemon.process.poll() is None, f"the daemon died on {case}:\n{daemon.log()}"
        last = [line for line in daemon.log().splitlines() if "reloading failed" in line][-1]
        assert "keeping the previous configuration" in last
        assert reason in last, f"{case}: {last}"
        assert "internal error" not in last, f"{case}: {last}"
        # The previous configuration still serves: same members, same data.
        assert sorted(os.listdir(daemon.path(".repos"))) == labels, case
        assert daemon.path(CALEXP_1_1).read_bytes() == served, case
    assert _log_count(daemon, "SIGHUP: reloaded") == 0
    # A good file again: the next SIGHUP reloads it.
    _replace(layout.aggregator, good.replace(b"label: in2", b"label: second"))
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: _log_count(daemon, "SIGHUP: reloaded") == 1, RELOAD_DEADLINE, "the reload")
    wait_for(
        lambda: "second" in os.listdir(daemon.path(".repos")), RELOAD_DEADLINE, "the new label"
    )


@pytest.mark.parametrize(
    ("case", "text", "reason"),
    [case for case in BAD_AGGREGATORS if case[0] != "mutual"],
    ids=[case[0] for case in BAD_AGGREGATORS if case[0] != "mutual"],
)
def test_a_mount_on_a_bad_aggregator_exits_2_with_one_line(
    layout: Layout, tmp_path: Path, case: str, text: bytes, reason: str
) -> None:
    require_fuse()
    _replace(layout.aggregator, text)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run_butlerfs("mount", str(layout.aggregator), str(mountpoint), "-f")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("butlerfs: cannot open"), result.stderr
    assert reason in result.stderr and str(layout.aggregator) in result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert not os.path.ismount(mountpoint)


def test_a_daemonizing_mount_on_a_bad_aggregator_exits_2_with_one_line(
    layout: Layout, tmp_path: Path
) -> None:
    """Without -f the parent reports the daemon's line and status."""
    require_fuse()
    _replace(layout.aggregator, b"butler: 1\ninputs: [aggregator.yaml]\n")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run_butlerfs("mount", str(layout.aggregator), str(mountpoint))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "in a loop" in result.stderr, result.stderr
    assert not os.path.ismount(mountpoint)
