"""Fixtures every test directory shares: the PostgreSQL server and the registry engine.

``postgres`` starts one throwaway cluster for the session (tests/pg.py) the first
time a test asks for it, and stops it at the end.  Without the server binaries or
psycopg the tests that need it skip, except under ``CI=true``, where they fail.

``engine`` says which registry new repositories get.  A test module marked
``@pytest.mark.engines(...)`` runs once per engine named (all three by default):

    sqlite      every repository in SQLite (the embedded default)
    postgresql  every repository in PostgreSQL, outputs created at first write too
                (``BUTLER_REGISTRY`` is set for the test)
    mixed       alternately SQLite and PostgreSQL, in the order they are made, so
                outputs mix both engines

Unmarked tests get ``sqlite``; ``BUTLER_REGISTRY`` is then unset, so a developer's
environment never changes what the tests make.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.pg import Cluster, ClusterUnavailable

ENGINES = ("sqlite", "postgresql", "mixed")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("engines")
    if marker is not None and "engine" in metafunc.fixturenames:
        metafunc.parametrize("engine", marker.args or ENGINES, indirect=True)


def unavailable(reason: str) -> None:
    """Skip, or fail under CI=true, where PostgreSQL is expected."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is expected under CI but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """A running PostgreSQL server for the whole session."""
    try:
        import psycopg  # noqa: F401  # the [postgres] extra
    except ImportError:
        unavailable("psycopg is not installed (pip install -e '.[postgres]')")
    try:
        cluster = Cluster.start()
    except ClusterUnavailable as exc:
        unavailable(str(exc))
        raise
    try:
        yield cluster
    finally:
        cluster.destroy()


@dataclass(frozen=True)
class Engine:
    """Which registry the repositories of one test get."""

    name: str
    url: str | None = None  # the PostgreSQL URL, for postgresql and mixed

    def registry(self, index: int) -> str:
        """The ``registry=`` of the ``index``-th repository a test makes (from 0)."""
        if self.url is None or (self.name == "mixed" and index % 2 == 0):
            return "sqlite"
        return self.url


@pytest.fixture
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Engine:
    name = getattr(request, "param", "sqlite")
    if name == "sqlite":
        monkeypatch.delenv("BUTLER_REGISTRY", raising=False)
        return Engine(name)
    cluster: Cluster = request.getfixturevalue("postgres")
    monkeypatch.setenv("BUTLER_REGISTRY", cluster.url())
    return Engine(name, cluster.url())


@pytest.fixture
def own_postgres(postgres: Cluster) -> Iterator[Cluster]:
    """A cluster of the test's own, to stop and start (the session's stays up)."""
    cluster = Cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()
