"""kill -9 of meshd at every step of the QEMU driver: no lost VM, no second QEMU, no
QEMU left after ``workload rm`` (tests/faults/kill.py runs each cell; see its doc).

Needs qemu-system-x86_64 and the cached guest kernel (bootstrap/guest-image.sh); skips
with the reason otherwise. QEMUs are counted by their command line naming the
workload's directory.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.faults.kill import Outcome, points, run_point

try:
    from tests.integration.daemon import Mesh
except ImportError:  # pragma: no cover
    from daemon import Mesh  # type: ignore[no-redef]

pytestmark = [
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None,
        reason="qemu-system-x86_64 is not installed (bootstrap/setup.sh --test)",
    ),
    pytest.mark.slow,
]


@pytest.mark.parametrize("point", points("qemu"))
def test_qemu_driver_survives_kill_at(guest: dict[str, str], point: str) -> None:
    args = ("--kernel", guest["MESHD_GUEST_VMLINUX"], "--initrd", guest["MESHD_GUEST_INITRD"])
    if point.endswith("after_overlay"):
        args = ("--image", guest["MESHD_GUEST_DISK"], "--disk", "1GiB")
    # A short base directory: the QMP socket's path must fit in 107 bytes.
    with tempfile.TemporaryDirectory(prefix="mc", dir="/tmp") as base:
        mesh = Mesh(Path(base))
        try:
            out: Outcome = run_point(mesh, "qemu", point, (*args, "--memory", "128MiB"))
        finally:
            mesh.close()
    assert out.killed, out.detail
    assert (out.lost, out.double, out.untracked) == (0, 0, 0), out
