"""SIGKILL at every step of the firecracker driver loses no VM, runs no second copy and
leaves no untracked process (tests/faults/driver_kill.py runs each cell; see its doc).

The Firecracker here is the stand-in binary of tests/unit/firecracker_fake.py: this
host has no firecracker binary and no hardware KVM (its /dev/kvm is kvm_pvm), so
tests/e2e/test_firecracker_driver.py skips. The stand-in is a real process the driver
spawns, adopts and kills, serving Firecracker's API on ``--api-sock`` in the workload's
directory, which is all the driver's crash safety relies on.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshd.failpoints import LOG_ENV
from tests.faults.driver_kill import run_child, run_driver_point
from tests.faults.kill import Outcome, kill_copies, points


@pytest.fixture
def data() -> Iterator[Path]:
    # Short: the API socket path must fit in sun_path (107 bytes).
    with tempfile.TemporaryDirectory(prefix="fck-", dir="/tmp") as tmp:
        try:
            yield Path(tmp)
        finally:
            kill_copies("firecracker", Path(tmp))


@pytest.mark.parametrize("point", points("firecracker"))
async def test_firecracker_driver_survives_kill_at(data: Path, point: str) -> None:
    out: Outcome = await run_driver_point("firecracker", point, data)
    assert out.killed, out.detail
    assert (out.lost, out.double, out.untracked) == (0, 0, 0), out


def test_a_create_start_destroy_passes_every_declared_point(data: Path) -> None:
    log = data / "passed"
    os.environ[LOG_ENV] = str(log)
    try:
        assert run_child("firecracker", data, None, act="rm") == 0
    finally:
        del os.environ[LOG_ENV]
    assert set(log.read_text().split()) == set(points("firecracker"))
    assert not list((data / "workloads").iterdir())
