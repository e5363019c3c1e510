"""``meshd node drain`` / ``undrain`` across three real daemons running process workloads.

Three ``meshd run`` processes on 127.0.0.1 (the ``local`` preset). With alpha and gamma
drained, every workload lands on beta (drained nodes are offered nothing); undrained,
they bid again. ``meshd node drain beta`` (accepted by gamma) then moves every workload
off beta by auction (same ids, the next generation), waits until none is placed there,
and beta's processes are gone; ``peers`` and ``status`` show it draining; an undrain
lets beta take work again. Who may: the local operator, not a member's node
certificate; an unknown name is a clear error.
"""

from __future__ import annotations

import json
from typing import Any

from meshd.adapters.drivers.procfs import find_by_env
from meshd.errors import ApiError

try:
    from tests.integration.daemon import Daemon, Mesh, wait_for
except ImportError:  # pragma: no cover
    from daemon import Daemon, Mesh, wait_for  # type: ignore[no-redef]

CAPACITY = ("--cpus", "4", "--memory", "2GiB", "--disk", "20GiB")
N = 3


def _spec(i: int) -> dict[str, Any]:
    return {"name": f"job{i}", "cpus": 0.5, "memory": 16 << 20, "command": "sleep 600"}


def _draining(d: Daemon) -> set[str]:
    return {p["name"] for p in d.api("GET", "/v1/peers") if p["draining"]}


def _processes(d: Daemon) -> int:
    """Live processes that ``d``'s process driver started (its root, in their env)."""
    root = str(d.data_dir)
    return len([p for p, v in find_by_env("MESHD_ROOT", root) if v.startswith(root)])


def _rows(d: Daemon) -> dict[str, dict[str, Any]]:
    return {w["workload"]: w for w in d.api("GET", "/v1/workloads")}


def test_drain_moves_process_workloads_away_and_undrain_restores_bidding(
    mesh_factory: Mesh,
) -> None:
    nodes = mesh_factory.start_cluster(["alpha", "beta", "gamma"], *CAPACITY)
    try:
        _drain_and_undrain(nodes)
    finally:  # the sleeps outlive their daemons by design: remove them
        for row in nodes[1].api("GET", "/v1/workloads"):
            nodes[1].api("DELETE", f"/v1/workloads/{row['workload']}")
        wait_for("every copy gone", lambda: sum(_processes(d) for d in nodes) == 0, 30)


def _drain_and_undrain(nodes: list[Daemon]) -> None:
    alpha, beta, gamma = nodes
    alpha.api("POST", "/v1/nodes/alpha/drain")
    alpha.api("POST", "/v1/nodes/gamma/drain")
    wait_for(
        "every node to know alpha and gamma drained",
        lambda: all(_draining(d) == {"alpha", "gamma"} for d in nodes),
        20,
    )
    assert gamma.status()["draining"] is True
    placed = [alpha.api("POST", "/v1/workloads", _spec(i)) for i in range(N)]
    assert {p["owner"] for p in placed} == {"beta"}
    wids = {p["workload"] for p in placed}
    wait_for(
        "beta to run them",
        lambda: all(_rows(beta)[w]["state"] == "running" for w in wids),
        30,
    )
    # Undrained through another node: they bid again.
    out = beta.cli("node", "undrain", "alpha", check=True)
    assert "alpha undrained" in out.stdout
    beta.cli("node", "undrain", "gamma", "--json", check=True)
    wait_for(
        "every node to know nobody is drained", lambda: all(not _draining(d) for d in nodes), 20
    )

    # A member's node certificate may not drain anyone; an unknown name is an error.
    refused = beta.https("POST", "/v1/nodes/beta/drain", cert=alpha.node_cert)
    assert refused.status == 403, refused.body
    bad = gamma.cli("node", "drain", "nosuch")
    assert bad.returncode != 0 and "no member named 'nosuch'" in bad.stderr, bad.stderr

    done = gamma.cli("node", "drain", "beta", "--json", "--timeout", "60s", timeout=90)
    assert done.returncode == 0, (done.stdout, done.stderr, beta.log_tail())
    doc = json.loads(done.stdout)
    assert doc["done"] is True and doc["placed"] == [] and doc["by"] == "gamma"
    assert set(doc["moving"]) == wids
    for d in nodes:
        rows = _rows(d)
        for w in wids:
            assert rows[w]["owner"] in {"alpha", "gamma"}, (d.name, rows[w])
            assert rows[w]["generation"] == 2
    try:
        wait_for(
            "the new owners to run them",
            lambda: all(_rows(alpha)[w]["state"] == "running" for w in wids),
            30,
        )
    except AssertionError:
        raise AssertionError(str([(_rows(d), d.log_tail(40)) for d in nodes])) from None
    wait_for("beta to have destroyed its copies", lambda: beta.status()["allocated"]["cpus"] == 0)
    wait_for("beta's processes to be gone", lambda: _processes(beta) == 0)
    assert _processes(alpha) + _processes(gamma) == N
    peers = json.loads(alpha.cli("peers", "--json", check=True).stdout)
    assert {p["name"]: p["draining"] for p in peers} == {
        "alpha": False,
        "beta": True,
        "gamma": False,
    }
    lines = beta.cli("peers", check=True).stdout.splitlines()
    assert next(ln for ln in lines if ln.startswith("beta")).rstrip().endswith("draining")
    assert not next(ln for ln in lines if ln.startswith("alpha")).rstrip().endswith("draining")
    assert json.loads(beta.cli("status", "--json", check=True).stdout)["draining"] is True
    # While drained, beta is offered nothing: a workload that may run only there fails.
    try:
        alpha.api("POST", "/v1/workloads", {**_spec(9), "nodes": ["beta"]})
        raise AssertionError("a drained node was placed a workload")
    except ApiError as exc:
        assert exc.status == 409, exc

    alpha.cli("node", "undrain", "beta", check=True)
    wait_for("every node to know beta undrained", lambda: all(not _draining(d) for d in nodes), 20)
    again = alpha.api("POST", "/v1/workloads", {**_spec(10), "nodes": ["beta"]})
    assert again["owner"] == "beta"
