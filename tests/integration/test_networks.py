"""``meshd network create|ls|show|rm`` across three real daemons.

Three ``meshd run`` processes on 127.0.0.1 (the ``local`` preset). A network created on
alpha reaches every node (gossip, then push-pull); an overlapping subnet is refused
with a sentence, on another node too; ``rm`` accepted by gamma removes it everywhere,
and the name can be created again. A member's node certificate may neither create nor
remove a network (403); it may read them. A restarted node still holds what it knew.
"""

from __future__ import annotations

import json

import pytest

from meshd.errors import ApiError

try:
    from tests.integration.daemon import Daemon, Mesh, wait_for
except ImportError:  # pragma: no cover
    from daemon import Daemon, Mesh, wait_for  # type: ignore[no-redef]


def _names(d: Daemon) -> set[str]:
    return {n["name"] for n in d.api("GET", "/v1/networks")["networks"]}


def test_networks_are_created_refused_and_removed_mesh_wide(mesh_factory: Mesh) -> None:
    alpha, beta, gamma = nodes = mesh_factory.start_cluster(["alpha", "beta", "gamma"])
    out = alpha.cli(
        "network",
        "create",
        "lan",
        "--subnet",
        "10.40.0.0/24",
        "--gateway",
        "10.40.0.1",
        "--vlan",
        "40",
        "--dns",
        "10.40.0.2",
        "--dns",
        "fd00::53",
        check=True,
    )
    assert "network lan created: 10.40.0.0/24 on br-lan" in out.stdout
    wait_for("every node to know lan", lambda: all(_names(d) == {"lan"} for d in nodes), 20)
    shown = json.loads(gamma.cli("network", "show", "lan", "--json", check=True).stdout)
    assert shown == {
        "name": "lan",
        "subnet": "10.40.0.0/24",
        "gateway": "10.40.0.1",
        "bridge": "br-lan",
        "vlan": 40,
        "dns": ["10.40.0.2", "fd00::53"],
        "created_by": "alpha",
        "version": shown["version"],
        "addresses": [],  # nothing holds an address on it
    }

    # Overlapping, on another node: refused with a sentence, nothing created anywhere.
    bad = beta.cli("network", "create", "lan2", "--subnet", "10.40.0.128/25")
    assert bad.returncode != 0
    assert "overlaps network lan (10.40.0.0/24)" in bad.stderr, bad.stderr
    bad = beta.cli("network", "create", "tiny", "--subnet", "10.50.0.0/31")
    assert bad.returncode != 0 and "too small" in bad.stderr, bad.stderr
    bad = beta.cli("network", "create", "gw", "--subnet", "10.50.0.0/24", "--gateway", "10.51.0.1")
    assert bad.returncode != 0 and "outside subnet 10.50.0.0/24" in bad.stderr, bad.stderr
    # Malformed bodies are answered with a sentence, never a crash.
    for body, says in [
        ({"name": 5, "subnet": "10.70.0.0/24"}, "a name and a subnet"),
        ({"name": "x"}, "a name and a subnet"),
        ({"name": "x", "subnet": "10.70.0.0/24", "vlan": "7"}, "from 1 to 4094"),
        ({"name": "x", "subnet": "10.70.0.0/24", "dns": "1.1.1.1"}, "dns must be a list"),
        ({"name": "x", "subnet": "10.70.0.0/24", "gateway": 3}, "must be an IP address"),
        ({"name": "x", "subnet": "10.70.0.0/24", "colour": "red"}, "unknown network fields"),
        ({"name": "Bad", "subnet": "10.70.0.0/24"}, "invalid network name"),
    ]:
        with pytest.raises(ApiError) as info:
            beta.api("POST", "/v1/networks", body)
        assert info.value.status == 400 and says in str(info.value), (body, info.value)
    beta.cli("network", "create", "v6", "--subnet", "fd00:40::/64", check=True)
    wait_for("every node to know v6", lambda: all(_names(d) == {"lan", "v6"} for d in nodes), 20)

    table = alpha.cli("network", "ls", check=True).stdout.splitlines()
    assert table[0].split() == ["NAME", "SUBNET", "GATEWAY", "BRIDGE", "VLAN", "DNS"]
    assert table[1].split() == [
        "lan",
        "10.40.0.0/24",
        "10.40.0.1",
        "br-lan",
        "40",
        "10.40.0.2,fd00::53",
    ]
    assert table[2].split() == ["v6", "fd00:40::/64", "-", "br-v6", "-", "-"]
    shown_text = alpha.cli("network", "show", "v6", check=True).stdout
    assert "created_by  beta" in shown_text and "dns         -" in shown_text, shown_text

    # A node certificate reads but may not define or remove (admin role).
    refused = beta.https(
        "POST",
        "/v1/networks",
        cert=alpha.node_cert,
        body=json.dumps({"name": "x", "subnet": "10.60.0.0/24"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert refused.status == 403, refused.body
    refused = beta.https("DELETE", "/v1/networks/lan", cert=alpha.node_cert)
    assert refused.status == 403, refused.body
    listed = beta.https("GET", "/v1/networks", cert=alpha.node_cert)
    assert listed.status == 200, listed.body

    # Removed on gamma: gone everywhere; the name and subnet are free again.
    out = gamma.cli("network", "rm", "lan", check=True)
    assert "network lan removed mesh-wide" in out.stdout
    wait_for("every node to forget lan", lambda: all(_names(d) == {"v6"} for d in nodes), 20)
    missing = alpha.cli("network", "show", "lan")
    assert missing.returncode != 0 and "no network named lan" in missing.stderr
    alpha.cli("network", "create", "lan", "--subnet", "10.40.0.128/25", check=True)
    wait_for("every node to know lan again", lambda: all("lan" in _names(d) for d in nodes), 20)

    # A restarted node holds what it stored.
    beta.stop()
    beta.start()
    rows = json.loads(beta.cli("network", "ls", "--json", check=True).stdout)
    assert {(r["name"], r["subnet"]) for r in rows} == {
        ("lan", "10.40.0.128/25"),
        ("v6", "fd00:40::/64"),
    }


def test_a_node_offers_the_networks_it_can_attach_as_they_come_and_go(
    mesh_factory: Mesh,
) -> None:
    # alpha may create bridges: it offers every network; beta has no bridge "br-wan"
    # and may not create one: it offers none. Nothing touches the host: no workload
    # attaches a NIC here, and alpha does not set offered networks up ahead of one.
    alpha = mesh_factory.daemon("alpha")
    alpha.init()
    alpha.start(
        "--set", "guests.create_bridges=true", "--set", "guests.check_interval_s=0.2",
        "--set", "guests.prepare=false",
    )  # fmt: skip
    (beta,) = mesh_factory.join_many(["beta"], via=alpha, start=False)
    beta.start("--set", "guests.check_interval_s=0.2")

    def offers(d: Daemon) -> set[str]:
        return {c for c in d.status()["capabilities"] if c.startswith("network:")}

    assert offers(alpha) == offers(beta) == set()
    alpha.cli("network", "create", "wan", "--subnet", "10.60.0.0/24", check=True)
    wait_for("alpha to offer network:wan", lambda: offers(alpha) == {"network:wan"}, 20)
    wait_for("beta to know wan", lambda: _names(beta) == {"wan"}, 20)
    assert offers(beta) == set()  # no br-wan there, and it may not create it
    alpha.cli("network", "rm", "wan", check=True)
    wait_for("alpha to stop offering network:wan", lambda: offers(alpha) == set(), 20)
