"""The one workload model across real daemons: the spec lives in every node's view,
and requirements decide who may bid.

Three `meshd run` processes on 127.0.0.1. A workload pinned to one node carries a
rich spec; after that node is killed, every survivor still answers with the whole
spec (what a survivor needs to place it again). A label only one node carries, and a
capability none has, show that requirements steer and refuse placements.
"""

from __future__ import annotations

from typing import Any

import pytest

from meshd.errors import ApiError

try:
    from tests.integration.daemon import Daemon, Mesh, wait_all_alive, wait_for
except ImportError:  # pragma: no cover
    from daemon import Daemon, Mesh, wait_all_alive, wait_for  # type: ignore[no-redef]

CAPACITY = ("--cpus", "4", "--memory", "2GiB", "--disk", "20GiB")

SPEC: dict[str, Any] = {
    "name": "web",
    "cpus": 1,
    "memory": 64 << 20,
    "disk": 1 << 20,
    "command": "sleep 600",
    "env": {"GREETING": "hello"},
    "services": [{"name": "http", "port": 8080}, {"name": "dns", "port": 53, "proto": "udp"}],
    "user_data": "#cloud-config\nhostname: web\n",
    "labels": {"rack": "a"},
    "restart": "none",
}


@pytest.fixture
def three(mesh_factory: Mesh) -> list[Daemon]:
    alpha, beta, gamma = mesh_factory.start_cluster(["alpha", "beta", "gamma"], *CAPACITY)
    gamma.stop()
    gamma.start(*CAPACITY, "--label", "rack=a")
    wait_all_alive([alpha, beta, gamma], 30)
    return [alpha, beta, gamma]


def test_survivors_know_the_whole_spec_of_a_dead_nodes_workload(three: list[Daemon]) -> None:
    alpha, beta, gamma = three
    assert gamma.status()["labels"] == {"rack": "a"}
    assert "driver:process" in gamma.status()["capabilities"]
    placed = alpha.api("POST", "/v1/workloads", SPEC)
    assert placed["owner"] == "gamma"  # the only node with rack=a
    wid = placed["workload"]

    def everyone_knows() -> bool:
        return all(_known(d, wid) for d in three)

    wait_for("every node to hold the placement", everyone_knows, 15)
    gamma.kill()
    for d in (alpha, beta):
        shown = d.api("GET", f"/v1/workloads/{wid}")
        assert shown["owner"] == "gamma"
        assert shown["spec"] == SPEC, d.name  # defaults (tcp, no boot timeout) are left out
        assert shown["spec"]["command"] == "sleep 600"


def test_requirements_steer_and_refuse(three: list[Daemon]) -> None:
    alpha, beta, _ = three
    ok = beta.api(
        "POST",
        "/v1/workloads",
        {"name": "a", "cpus": 1, "memory": 1 << 20, "labels": {"rack": "a"}},
    )
    assert ok["owner"] == "gamma"
    with pytest.raises(ApiError) as err:
        alpha.api(
            "POST",
            "/v1/workloads",
            {"name": "b", "cpus": 1, "memory": 1 << 20, "requires": ["arch:sparc64"]},
        )
    assert err.value.status == 409
    assert "no node meets the workload's requirements" in str(err.value)
    assert "lacks arch:sparc64" in str(err.value)
    with pytest.raises(ApiError, match="lacks driver:fake"):
        alpha.api("POST", "/v1/workloads", {"name": "c", "cpus": 1, "memory": 1, "driver": "fake"})


def _known(d: Daemon, wid: str) -> bool:
    try:
        d.api("GET", f"/v1/workloads/{wid}")
    except ApiError:
        return False
    return True
