"""NIC addresses across three real daemons: majority grants over real signed datagrams.

Three ``meshd run`` processes on 127.0.0.1 (the ``local`` preset). The process driver
attaches no NIC, and the capability ``network:NAME`` is the host helper's to probe; so
each node here declares that it attaches ``lan`` with the operator label
``network:lan=attached``, which offers the capability as the probe would. Two
submissions with ``--net lan`` on two nodes at once get distinct addresses (and the
MACs ``mac_for`` derives); a fixed address already held is refused with a sentence
naming its holder, as are an address outside the subnet and an unknown network, with
nothing placed; ``network show`` lists the addresses in use and ``network rm`` refuses
while they are; ``workload rm`` gives the address back to the pool, and a fixed claim
of it then succeeds.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import time
from typing import Any

try:
    from tests.integration.daemon import MESHD, Daemon, Mesh, meshd, wait_all_alive, wait_for
except ImportError:  # pragma: no cover
    from daemon import (  # type: ignore[no-redef]
        MESHD,
        Daemon,
        Mesh,
        meshd,
        wait_all_alive,
        wait_for,
    )

from meshd.core.nic import mac_for

CAPACITY = ("--cpus", "4", "--memory", "2GiB", "--disk", "10GiB")
ATTACHES = ("--label", "network:lan=attached")
SLEEPER = "sleep 600"


def _submit(name: str, net: str) -> list[str]:
    return [
        "submit", "--name", name, "--cpus", "0.1", "--memory", "16MiB",
        "--command", SLEEPER, "--net", net, "--json",
    ]  # fmt: skip


def _pid(d: Daemon, wid: str) -> int | None:
    for row in d.api("GET", "/v1/workloads"):
        if row["workload"] == wid and row["state"] == "running":
            return int(str(row["detail"]).rsplit(" ", 1)[1])
    return None


def _three_on_lan(mesh_factory: Mesh, subnet: str) -> list[Daemon]:
    """alpha, beta and gamma, each attaching network ``lan`` (``subnet``), all knowing it."""
    nodes = mesh_factory.start_cluster(["alpha", "beta", "gamma"], *CAPACITY, *ATTACHES)
    nodes[0].cli("network", "create", "lan", "--subnet", subnet, check=True)
    wait_for(
        "every node to know lan",
        lambda: all(d.api("GET", "/v1/networks")["networks"] for d in nodes),
        20,
    )
    return nodes


def test_addresses_are_distinct_refused_with_sentences_and_freed(mesh_factory: Mesh) -> None:
    alpha, beta, gamma = nodes = _three_on_lan(mesh_factory, "10.40.0.0/24")
    pids: list[int] = []
    wids: list[str] = []
    try:
        # Two originators at once.
        procs = [
            subprocess.Popen(
                [*MESHD, *_submit(name, "lan"), "--data-dir", str(d.data_dir)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for d, name in ((beta, "one"), (gamma, "two"))
        ]
        docs: list[dict[str, Any]] = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            docs.append(json.loads(out))
        wids = [doc["workload"] for doc in docs]
        ips = [doc["addresses"][0]["ip"] for doc in docs]
        assert len(set(ips)) == 2, ips
        assert all(ip.startswith("10.40.0.") for ip in ips)
        for doc in docs:
            assert doc["addresses"] == [
                {
                    "network": "lan",
                    "ip": doc["addresses"][0]["ip"],
                    "mac": mac_for(doc["workload"], 0),
                }
            ]
        # Every node's view carries them (the placement carries the spec).
        wait_for(
            "both running",
            lambda: all(_pid(d, w) is not None for d in nodes for w in wids),
            30,
        )
        pids = [p for p in (_pid(alpha, w) for w in wids) if p is not None]
        shown = json.loads(alpha.cli("workload", "show", wids[0], "--json", check=True).stdout)
        assert shown["addresses"] == docs[0]["addresses"]
        text = alpha.cli("workload", "show", wids[0], check=True).stdout
        assert ips[0] in text and mac_for(wids[0], 0) in text

        # A fixed address held by "one": refused, naming it; nothing placed.
        before = len(alpha.api("GET", "/v1/workloads"))
        bad = alpha.cli(*_submit("three", f"lan:{ips[0]}"))
        assert bad.returncode != 0
        assert f"address {ips[0]} on network lan is held by workload one ({wids[0]})" in (
            bad.stderr
        ), bad.stderr
        bad = alpha.cli(*_submit("three", "lan:10.99.0.1"))
        assert bad.returncode != 0 and "outside network lan's subnet" in bad.stderr, bad.stderr
        bad = alpha.cli(*_submit("three", "nope"))
        assert bad.returncode != 0 and "no network named nope" in bad.stderr, bad.stderr
        assert len(alpha.api("GET", "/v1/workloads")) == before

        # The network lists what holds its addresses, and can't be removed meanwhile.
        net = json.loads(gamma.cli("network", "show", "lan", "--json", check=True).stdout)
        assert sorted((a["name"], a["ip"]) for a in net["addresses"]) == sorted(
            zip(["one", "two"], ips, strict=True)
        )
        bad = gamma.cli("network", "rm", "lan")
        assert bad.returncode != 0 and "network lan is still in use by one, two" in bad.stderr

        # Removing "one" gives its address back: a fixed claim of it then succeeds.
        alpha.cli("workload", "rm", wids[0], check=True)
        deadline = time.monotonic() + 40
        while True:
            again = alpha.cli(*_submit("four", f"lan:{ips[0]}"))
            if again.returncode == 0:
                break
            assert "is held by" in again.stderr, again.stderr
            assert time.monotonic() < deadline, "the removed workload's address never came back"
            time.sleep(1.0)
        four = json.loads(again.stdout)
        wids.append(four["workload"])
        assert four["addresses"][0]["ip"] == ips[0]
    finally:
        for wid in wids:
            with contextlib.suppress(Exception):
                alpha.api("DELETE", f"/v1/workloads/{wid}")
        with contextlib.suppress(Exception):
            wait_for(
                "workloads torn down",
                lambda: (
                    not any(
                        r["workload"] in wids for d in nodes for r in d.api("GET", "/v1/workloads")
                    )
                ),
                20,
            )
        for pid in pids:  # what the teardown missed: our own sleepers, by pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_meshd_submit_net_is_checked_before_sending() -> None:
    out = meshd("submit", "--name", "x", "--cpus", "1", "--memory", "1MiB", "--net", "lan:")
    assert out.returncode != 0 and "--net must be NET or NET:IP" in out.stderr


def _assigned(d: Daemon) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in str(d.api("GET", "/metrics")).splitlines():
        if line.startswith("meshd_addresses_assigned_total{"):
            out[line.split('source="', 1)[1].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
    return out


def test_a_nodes_pool_lends_addresses_and_survives_a_restart(mesh_factory: Mesh) -> None:
    """On a /20 each node keeps a pool (blocks granted ahead of demand): after the
    first submission through alpha (claimed), the next ones are lent from alpha's pool
    without a claim, distinct; the other nodes list alpha's blocks (state ``pool``);
    a fixed address in alpha's pool asked through beta is refused naming it; and a
    restarted alpha, reading its pool from its store and its lending from its round
    records, hands none of the same addresses out again. (No command: the process
    driver can't run these, and they need not run: the addresses are the placement's.)"""
    alpha, beta, _ = nodes = _three_on_lan(mesh_factory, "10.48.0.0/20")

    def submit(d: Daemon, name: str, ip: str | None = None) -> str:
        nic = {"network": "lan"} if ip is None else {"network": "lan", "ip": ip}
        doc = d.api(
            "POST", "/v1/workloads", {"name": name, "cpus": 0.01, "memory": 1 << 20, "nics": [nic]}
        )
        return str(doc["addresses"][0]["ip"])

    ips = [submit(alpha, "p0")]
    wait_for("alpha's pool", lambda: _assigned(alpha).get("claim", 0) == 1, 10)
    time.sleep(0.5)  # the top-up claims its blocks in the background
    ips += [submit(alpha, f"p{i}") for i in range(1, 8)]
    assert len(set(ips)) == 8
    assert _assigned(alpha).get("pool", 0) >= 6, _assigned(alpha)
    net = json.loads(beta.cli("network", "show", "lan", "--json", check=True).stdout)
    blocks = [a for a in net["addresses"] if a["state"] == "pool"]
    assert blocks and all(a["holder"].endswith(":alpha") for a in blocks), net["addresses"]
    # A free address of alpha's pool, asked for through beta: refused, naming the pool.
    block = blocks[0]["ip"]
    first = ipaddress.ip_network(block).network_address
    free = next(str(first + k) for k in range(1, 16) if str(first + k) not in ips)
    bad = beta.cli(*_submit("taken", f"lan:{free}"))
    assert bad.returncode != 0 and "node alpha's pool" in bad.stderr, bad.stderr

    alpha.stop()
    alpha.start(*CAPACITY, *ATTACHES)
    wait_all_alive(nodes, 30)
    more = [submit(alpha, f"q{i}") for i in range(8)]
    assert not set(more) & set(ips), (ips, more)
    assert len(set(more)) == 8
