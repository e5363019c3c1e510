"""Fixtures shared by integration and e2e tests: meshes of real daemons, removed by pid."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# No property test has a time limit: CI shares two cores with daemons and guests, and
# a slow example is no failure here (speed is measured by benchmarks/, never asserted).
settings.register_profile("meshd", deadline=None)
settings.load_profile("meshd")

try:
    from tests.integration.daemon import Mesh
except ImportError:  # tests/integration is not a package, so pytest put it on sys.path
    from daemon import Mesh  # type: ignore[no-redef,import-not-found]


@pytest.fixture
def mesh_factory(tmp_path: Path) -> Iterator[Mesh]:
    """A :class:`Mesh` under ``tmp_path``; ``mesh_factory("name")`` makes a daemon.

    Every daemon it started is stopped (SIGTERM by pid, SIGKILL after a grace) when the
    test ends, whether it passed or not.
    """
    mesh = Mesh(tmp_path)
    try:
        yield mesh
    finally:
        mesh.close()
