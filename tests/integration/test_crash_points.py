"""kill -9 of meshd at every step of a driver loses no workload, runs no second copy and
leaves no untracked process (tests/faults/kill.py runs each cell; see its doc).

For every failpoint the process driver declares, a fresh single-node mesh is killed
there (submit for create/start points, ``workload stop`` for stop points, ``workload
rm`` for destroy points), restarted, and checked by scanning /proc. The QEMU driver's
points are covered the same way by tests/e2e/test_qemu_crash_points.py, which needs a
guest kernel.
"""

from __future__ import annotations

import pytest

from tests.faults.kill import STUBBORN, Outcome, points, run_point

try:
    from tests.integration.daemon import Mesh
except ImportError:  # pragma: no cover
    from daemon import Mesh  # type: ignore[no-redef]


@pytest.mark.parametrize("point", points("process"))
def test_process_driver_survives_kill_at(mesh_factory: Mesh, point: str) -> None:
    out: Outcome = run_point(mesh_factory, "process", point, ("--command", STUBBORN))
    assert out.killed, out.detail
    assert (out.lost, out.double, out.untracked) == (0, 0, 0), out
