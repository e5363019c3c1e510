"""The mesh with real processes on 127.0.0.1: five daemons joined through one seed.

Proves, with separate `meshd run` processes on real sockets:
* every node sees all five alive after joining through the founder as the only seed;
* names resolve from every node in all three forms, and only to live nodes;
* `kill -9` of a node is detected by every other node (dead), and its names stop
  resolving; a graceful stop shows as `left` and a restart rejoins;
* members learnt over the mesh land in each node's durable roster;
* a removal by the CA reaches every node by gossip.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import pytest

try:
    from tests.integration.daemon import DOMAIN, Daemon, Mesh, meshd, wait_for
except ImportError:  # pragma: no cover - run without the tests package on sys.path
    from daemon import DOMAIN, Daemon, Mesh, meshd, wait_for  # type: ignore[no-redef]

NAMES = ["beta", "gamma", "delta", "epsilon"]
# LAN/local preset: probe 0.5 s, suspicion ≤ 6·log10(10)·0.5 = 3 s, plus gossip:
# detection takes ~3-4 s; the bound leaves room for a loaded 2-core CI machine.
DETECT_S = 15.0


def states(d: Daemon) -> dict[str, str]:
    return {p["name"]: p["state"] for p in d.api("GET", "/v1/peers")}


def all_see(nodes: Iterable[Daemon], expected: dict[str, str]) -> bool:
    return all({k: v for k, v in states(d).items() if k in expected} == expected for d in nodes)


def resolve(d: Daemon, name: str) -> list[dict[str, Any]]:
    out = meshd("resolve", name, "--json", data_dir=d.data_dir, check=False)
    if out.returncode != 0:
        return []
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


@pytest.fixture
def five(mesh_factory: Mesh) -> list[Daemon]:
    alpha = mesh_factory.found("alpha")
    others = mesh_factory.join_many(NAMES, via=alpha)
    nodes = [alpha, *others]
    everyone = {d.name: "alive" for d in nodes}
    wait_for("all five to see five alive", lambda: all_see(nodes, everyone), 20)
    return nodes


def test_five_daemons_join_detect_and_resolve(five: list[Daemon]) -> None:
    alpha, beta, gamma, delta, epsilon = five
    beta.api("POST", "/v1/services", {"name": "web", "port": 8080})
    gamma.api("POST", "/v1/services", {"name": "web", "port": 8081})
    delta.api("POST", "/v1/services", {"name": "db", "port": 5432, "proto": "tcp"})

    def web_everywhere() -> bool:
        return all(len(resolve(d, f"@web@{DOMAIN}")) == 2 for d in five)

    wait_for("@web to resolve from every node", web_everywhere, 15)
    for d in five:
        one = resolve(d, f"@web@beta@{DOMAIN}")
        assert [(r["node"], r["port"], r["proto"]) for r in one] == [("beta", 8080, "tcp")]
        assert resolve(d, f"@web@*@{DOMAIN}")[0]["node"] in {"beta", "gamma"}
        assert resolve(d, f"@db@delta@{DOMAIN}")[0]["address"] == "127.0.0.1"
    # A node resolving `*` prefers its own instance.
    assert [r["node"] for r in resolve(gamma, f"@web@*@{DOMAIN}")] == ["gamma"]
    missing = meshd("resolve", f"@nope@{DOMAIN}", data_dir=alpha.data_dir, check=False)
    assert missing.returncode != 0 and "nothing found" in missing.stderr

    # Every node's durable roster learnt every member, not only the seed's.
    for d in five:
        roster = {m["name"] for m in d.api("GET", "/v1/roster")}
        assert roster == {n.name for n in five}, d.name

    # kill -9 beta: every other node declares it dead; its name stops resolving.
    beta.kill()
    start = time.monotonic()
    survivors = [alpha, gamma, delta, epsilon]
    wait_for(
        "survivors to mark beta dead",
        lambda: all(states(d).get("beta") == "dead" for d in survivors),
        DETECT_S,
    )
    detected = time.monotonic() - start
    for d in survivors:
        assert [r["node"] for r in resolve(d, f"@web@{DOMAIN}")] == ["gamma"]
        assert resolve(d, f"@web@beta@{DOMAIN}") == []
        assert d.status()["members_alive"] == 4
    print(f"beta detected dead by all survivors in {detected:.2f}s")


def test_leave_rejoin_and_removal(five: list[Daemon]) -> None:
    alpha, beta, gamma, delta, epsilon = five
    assert gamma.stop() == 0
    wait_for(
        "others to see gamma left",
        lambda: all(states(d).get("gamma") == "left" for d in (alpha, beta, delta, epsilon)),
        DETECT_S,
    )
    gamma.start()
    wait_for(
        "gamma to rejoin",
        lambda: all(states(d).get("gamma") == "alive" for d in five),
        DETECT_S,
    )

    meshd("node", "remove", "epsilon", data_dir=alpha.data_dir)

    def removal_known() -> bool:
        rosters = [
            {m["name"]: m["removed_at"] for m in d.api("GET", "/v1/roster")} for d in five[:4]
        ]
        return all(r.get("epsilon") is not None for r in rosters)

    wait_for("the removal to reach every node", removal_known, DETECT_S)
    # What epsilon says is now dropped everywhere, so it ends up dead or left.
    wait_for(
        "epsilon to be out of everyone's view",
        lambda: all(states(d).get("epsilon") in {"dead", "left"} for d in five[:4]),
        DETECT_S,
    )


def test_a_member_that_missed_a_removal_learns_it_by_anti_entropy(mesh_factory: Mesh) -> None:
    """Gossip of a removal is best effort: a node that was away while it spread (and
    whose retransmissions are long over) still learns it when it returns: with the
    mesh key the removal rotated (fetched from its seed at start, revocations first),
    and by the periodic revocation push."""
    alpha = mesh_factory.found("alpha")
    others = mesh_factory.join_many(["beta", "gamma", "delta"], via=alpha, start=False)
    for d in others:  # alpha keeps the default (10 s): beta's pushes reach gamma first
        with (d.data_dir / "meshd.toml").open("a") as f:
            f.write("\n[membership]\nrevocation_sync_interval_s = 1.0\n")
    mesh_factory.start_all(others)
    nodes = [alpha, *others]
    beta, gamma, delta = others
    everyone = {d.name: "alive" for d in nodes}
    wait_for("all four alive", lambda: all_see(nodes, everyone), DETECT_S)
    gamma.stop()
    delta.stop()
    meshd("node", "remove", "delta", data_dir=alpha.data_dir)

    def removed_on(d: Daemon) -> bool:
        return any(m["name"] == "delta" and m["removed_at"] for m in d.api("GET", "/v1/roster"))

    wait_for("beta to hear of the removal", lambda: removed_on(beta), DETECT_S)
    time.sleep(3.0)  # every gossip retransmission of it is over (4 rounds of 0.2 s)
    gamma.start()
    wait_for("gamma to learn the removal", lambda: removed_on(gamma), DETECT_S)
    assert gamma.status()["key_epoch"] == 1
