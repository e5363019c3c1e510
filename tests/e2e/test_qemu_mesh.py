"""A QEMU workload through the whole mesh (root, QEMU under TCG here).

Three `meshd run` daemons; a `qemu` workload (direct kernel boot of the test guest)
submitted on one node is placed by auction, boots on the winner and its serial log
shows the ready marker; every node's `meshd workloads` shows it running; the owner's
daemon restarts and finds the same QEMU process running (reattached); `meshd
workload stop` from another node powers it off and no QEMU process is left, and
`meshd workload rm` removes every file and forgets it everywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from tests.integration.daemon import Daemon, Mesh, meshd, wait_for
except ImportError:  # pragma: no cover
    from daemon import Daemon, Mesh, meshd, wait_for  # type: ignore[no-redef]

from tests.e2e.needs import QEMU, skip_reason
from tests.e2e.test_qemu_driver import _qemu_pids_under

CAPACITY = ("--cpus", "4", "--memory", "2GiB", "--disk", "10GiB")

reason = skip_reason("QEMU workloads need root", QEMU)
pytestmark = [pytest.mark.skipif(reason is not None, reason=reason or ""), pytest.mark.slow]


def state(d: Daemon, wid: str) -> str:
    rows = {r["workload"]: r for r in d.api("GET", "/v1/workloads")}
    row = rows.get(wid, {})
    assert row.get("state") != "failed", f"{d.name}: the workload failed: {row.get('detail')}"
    return str(row.get("state"))


@pytest.fixture
def short_mesh() -> Iterator[Mesh]:
    """A mesh under a short path: QMP sockets live in the workload directory, and a
    unix socket path must stay under 108 bytes (pytest's tmp_path is too deep)."""
    base = Path(tempfile.mkdtemp(prefix="mq", dir="/tmp"))
    mesh = Mesh(base)
    try:
        yield mesh
    finally:
        mesh.close()
        shutil.rmtree(base, ignore_errors=True)


def test_a_qemu_workload_boots_on_the_winner_and_survives_its_daemon(
    short_mesh: Mesh, guest: dict[str, str]
) -> None:
    nodes = short_mesh.start_cluster(["alpha", "beta", "gamma"], *CAPACITY, timeout=20)
    alpha = nodes[0]
    body = {
        "name": "vm1",
        "cpus": 1,
        "memory": 128 * 1024 * 1024,
        "driver": "qemu",
        "kernel": guest["MESHD_GUEST_VMLINUX"],
        "initrd": guest["MESHD_GUEST_INITRD"],
        "ready_marker": guest["MESHD_GUEST_MARKER"],
        "boot_timeout_s": 60,
    }
    decision = alpha.api("POST", "/v1/workloads", body)
    wid, owner_name = decision["workload"], decision["owner"]
    owner = next(d for d in nodes if d.name == owner_name)
    other = next(d for d in nodes if d.name != owner_name)
    try:
        wait_for("running everywhere", lambda: all(state(d, wid) == "running" for d in nodes), 90)
        logs = meshd("workload", "logs", wid, data_dir=other.data_dir, check=True)
        assert guest["MESHD_GUEST_MARKER"] in logs.stdout
        pids = _qemu_pids_under(owner.data_dir)
        assert len(pids) == 1

        assert owner.stop() == 0
        assert _qemu_pids_under(owner.data_dir) == pids  # the VM did not notice
        owner.start(*CAPACITY)
        wait_for("reattached", lambda: state(owner, wid) == "running", 30)
        assert _qemu_pids_under(owner.data_dir) == pids

        out = meshd("workload", "stop", wid, "--json", data_dir=other.data_dir, check=True)
        assert json.loads(out.stdout)["state"] == "stopped"
        wait_for("no QEMU left", lambda: not _qemu_pids_under(owner.data_dir), 30)

        meshd("workload", "rm", wid, data_dir=other.data_dir, check=True)
        workload_dir = owner.data_dir / "workloads" / wid
        wait_for("every file removed", lambda: not workload_dir.exists(), 30)
        wait_for(
            "unlisted",
            lambda: all(
                wid not in {r["workload"] for r in d.api("GET", "/v1/workloads")} for d in nodes
            ),
            15,
        )
    finally:
        for pid in _qemu_pids_under(owner.data_dir):
            os.kill(pid, 9)
