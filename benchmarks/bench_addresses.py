"""NIC addresses per second under 4 concurrent originators, beside plain placements.

Real ``meshd run`` daemons on 127.0.0.1 (the ``local`` preset; 4 by default), each
declaring that it attaches network ``lan`` (label ``network:lan=attached``). Each of 4
originators runs ``--clients`` threads submitting back to back through its node's unix
socket API, in short slices of the same run:

* ``placements_per_s``: submissions without NICs (the anchor: the auction alone);
* ``addresses_per_s``: submissions with one NIC on ``lan`` (``--net lan``): the
  originator lends the address from its pool (or a majority claim fixes it), then the
  same auction; each placed one holds one address.

``ratio`` is addresses_per_s / placements_per_s (goal: ≥ 1, "no slower than placements
themselves"). Failed submissions are counted, never hidden.

``allocated_per_s`` is the allocator alone, measured once between the warm-ups: one NIC
submission through each of the 4 originators at once finds its pool empty, so each
node fills its pool (``addresses.pool`` addresses: one majority claim per block of 16,
side by side, granted and written by the voters, then the pool written); the figure
is the addresses in all 4 pools over the time from the first submission to the last
change of any pool (polled every 20 ms from ``meshd_address_pool_addresses``; an
originator whose view was not yet synced gets another submission 0.3 s later, and
that wait counts). ``vs_placements`` compares it with ``placements_per_s``.

The two phases share one mesh that grows (every placement makes the next a little
dearer: each node's view, ledger and runner grow) on a machine whose other work comes
and goes, so they run in ``--slices`` slices of ``--slice`` seconds each, in the order
plain, NIC, NIC, plain, plain, NIC, ... (ABBA: a steady drift hits both alike), and each
figure sums its slices. ``cpu_ms`` is the CPU time of all daemons (``/proc/PID/stat``,
user + system) per placement in that phase; ``cpu_ratio`` is NIC over plain. ``pairs``
is the ratio of each adjacent pair of slices, to show the spread. ``assigned`` says
where the NIC phase's addresses came from (``meshd_addresses_assigned_total``: this
node's pool, or a claim).

Run: .venv/bin/python benchmarks/bench_addresses.py [--nodes 4] [--slices 16]
     [--slice 2] [--clients 4] [--set KEY=VALUE]...
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meshd.config.sections import AddressesConfig  # noqa: E402
from meshd.core.address_pool import target  # noqa: E402
from meshd.core.addresses import BLOCK_SIZE  # noqa: E402
from tests.integration.daemon import Daemon, Mesh, wait_for  # noqa: E402

CAPACITY = ("--cpus", "100000", "--memory", "100TiB", "--disk", "100TiB")
ATTACHES = ("--label", "network:lan=attached")
ORIGINATORS = 4
SUBNET = "10.64.0.0/14"
Body = Callable[[str], dict[str, Any]]


def plain(name: str) -> dict[str, Any]:
    return {"name": name, "cpus": 1, "memory": 1 << 20, "disk": 0}


def with_nic(name: str) -> dict[str, Any]:
    return {**plain(name), "nics": [{"network": "lan"}]}


def cpu_s(nodes: list[Daemon]) -> float:
    """User + system CPU seconds the daemons have used so far."""
    ticks = 0
    for d in nodes:
        fields = Path(f"/proc/{d.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


class Phase:
    """One phase's slices, summed."""

    def __init__(self, body: Body, tag: str) -> None:
        self.body, self.tag = body, tag
        self.done = self.failed = 0
        self.wall = self.cpu = 0.0
        self.took: list[float] = []  # seconds per successful submission, as its client saw it
        self.errors: list[str] = []
        self.slices: list[float] = []  # placements per second of each slice

    def run(self, nodes: list[Daemon], seconds: float, clients: int) -> None:
        n = len(self.slices)
        done = [0] * (ORIGINATORS * clients)
        failed = [0] * len(done)
        stop = time.monotonic() + seconds

        def client(k: int) -> None:
            origin = nodes[(k % ORIGINATORS) * len(nodes) // ORIGINATORS]
            i = 0
            while time.monotonic() < stop:
                try:
                    t0 = time.monotonic()
                    origin.api("POST", "/v1/workloads", self.body(f"{self.tag}{n}-{k}-{i}"))
                    self.took.append(time.monotonic() - t0)
                    done[k] += 1
                except Exception as exc:  # a refusal or timeout counts against the rate
                    failed[k] += 1
                    if len(self.errors) < 3:
                        self.errors.append(str(exc)[:200])
                i += 1

        threads = [threading.Thread(target=client, args=(k,)) for k in range(len(done))]
        cpu0, start = cpu_s(nodes), time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - start
        self.cpu += cpu_s(nodes) - cpu0
        self.wall += wall
        self.done += sum(done)
        self.failed += sum(failed)
        self.slices.append(sum(done) / wall)

    @property
    def per_s(self) -> float:
        return self.done / self.wall if self.wall else 0.0

    def figures(self) -> dict[str, Any]:
        return {
            "value": round(self.per_s, 1),
            "cpu_ms": round(self.cpu / self.done * 1000, 3) if self.done else None,
            "latency_p50_ms": round(statistics.median(self.took) * 1000, 1) if self.took else None,
            "placed": self.done,
            "failed": self.failed,
            "errors": self.errors,
        }


def pool_sizes(nodes: list[Daemon]) -> list[int]:
    """Each node's pool on ``lan`` (``meshd_address_pool_addresses``, free + lent)."""
    out = []
    for d in nodes:
        n = 0
        for line in str(d.api("GET", "/metrics")).splitlines():
            ours = line.startswith("meshd_address_pool_addresses{") and 'network="lan"' in line
            if ours and 'state="retiring"' not in line:
                n += int(float(line.rsplit(" ", 1)[1]))
        out.append(n)
    return out


def fill(nodes: list[Daemon], timeout: float = 60.0) -> dict[str, Any]:
    """The allocator alone: a NIC submission through each of the 4 originators at once
    finds its pool empty (so it claims its own address, and the node starts filling its
    pool: one block claim per block, side by side). An originator whose pool is still
    empty 0.3 s after its last submission (its view not yet synced: it lends, and fills,
    only once it is) gets another. Timed from the first submission to the last change
    of any pool, once all 4 hold addresses and none has changed for 1 s; polled every
    20 ms (``meshd_address_pool_addresses``)."""
    origins = [nodes[k * len(nodes) // ORIGINATORS] for k in range(ORIGINATORS)]
    threads: list[threading.Thread] = []
    sent = [-1.0] * len(origins)

    def submit(k: int) -> None:
        body = with_nic(f"fill{k}-{len(threads)}")
        t = threading.Thread(target=origins[k].api, args=("POST", "/v1/workloads", body))
        t.start()
        threads.append(t)
        sent[k] = time.monotonic()

    start = time.monotonic()
    for k in range(len(origins)):
        submit(k)
    sizes = pool_sizes(origins)
    last_change = start
    while time.monotonic() - start < timeout:
        time.sleep(0.02)
        now_sizes = pool_sizes(origins)
        now = time.monotonic()
        if now_sizes != sizes:
            sizes, last_change = now_sizes, now
        if min(sizes) > 0 and now - last_change >= 1.0:
            break
        for k, n in enumerate(sizes):
            if n == 0 and now - sent[k] > 0.3:
                submit(k)
    for t in threads:
        t.join()
    took = last_change - start
    return {
        "s": round(took, 3),
        "addresses": sum(sizes),
        "pools": sizes,
        "submissions": len(threads),
        "per_s": sum(sizes) / took if took > 0 else 0.0,
    }


def sum_assigned(nodes: list[Daemon]) -> dict[str, int]:
    """``meshd_addresses_assigned_total`` by source, summed over the nodes (the warm-up
    included)."""
    out: dict[str, int] = {}
    for d in nodes:
        for line in str(d.api("GET", "/metrics")).splitlines():
            if line.startswith("meshd_addresses_assigned_total{"):
                source = line.split('source="', 1)[1].split('"', 1)[0]
                out[source] = out.get(source, 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


def emit(figure: str, nodes: int, **fields: Any) -> None:
    doc = {"bench": "addresses", "figure": figure, "nodes": nodes, **fields}
    print(json.dumps(doc), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--slices", type=int, default=16, help="slices per phase")
    p.add_argument("--slice", type=float, default=2.0, help="seconds per slice")
    p.add_argument("--clients", type=int, default=4, help="threads per originator")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config value for every daemon (meshd run --set), e.g. addresses.batch_linger_s=0",
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshd-bench-addr-") as tmp:
        mesh = Mesh(Path(tmp))
        try:
            names = [f"n{i}" for i in range(1, args.nodes + 1)]
            sets = [arg for kv in args.set for arg in ("--set", kv)]
            nodes = mesh.start_cluster(names, *CAPACITY, *ATTACHES, *sets, timeout=60)
            nodes[0].api("POST", "/v1/networks", {"name": "lan", "subnet": SUBNET})
            wait_for(
                "every node to know lan",
                lambda: all(d.api("GET", "/v1/networks")["networks"] for d in nodes),
                30,
            )
            pool = next(
                (int(kv.split("=", 1)[1]) for kv in args.set if kv.startswith("addresses.pool=")),
                AddressesConfig().pool,
            )
            hosts = ipaddress.ip_network(SUBNET).num_addresses - 3  # network, gateway, broadcast
            per_node = target(pool, hosts, args.nodes) * BLOCK_SIZE  # what each pool aims at
            # Warm up both paths (first syncs, imports, caches); the pools fill between
            # (a node lends, and so fills its pool, only once its view is synced).
            Phase(plain, "wp").run(nodes, 2.0, 1)
            filled = fill(nodes) if per_node else None
            Phase(with_nic, "wa").run(nodes, 2.0, 1)
            plains, nics = Phase(plain, "p"), Phase(with_nic, "a")
            for i in range(2 * args.slices):  # ABBA: p a a p p a a p ...
                phase = plains if i % 4 in (0, 3) else nics
                phase.run(nodes, args.slice, args.clients)
            common = {
                "originators": ORIGINATORS,
                "clients": args.clients,
                "slices": args.slices,
                "slice_s": args.slice,
                "set": args.set,
            }
            emit(
                "placements_per_s",
                args.nodes,
                **plains.figures(),
                means="submissions without NICs placed per second (the anchor)",
                **common,
            )
            emit(
                "addresses_per_s",
                args.nodes,
                **nics.figures(),
                means="submissions with one NIC placed (one address each) per second",
                assigned=sum_assigned(nodes),
                **common,
            )
            if filled is not None:
                vs = filled["per_s"] / plains.per_s if plains.per_s else 0.0
                emit(
                    "allocated_per_s",
                    args.nodes,
                    value=round(filled["per_s"], 1),
                    addresses=filled["addresses"],
                    pools=filled["pools"],
                    submissions=filled["submissions"],
                    s=filled["s"],
                    per_node=per_node,
                    vs_placements=round(vs, 2),
                    means=(
                        "addresses the mesh granted per second while 4 originators filled "
                        "their empty pools at once (majority claims of whole blocks), "
                        "beside placements_per_s"
                    ),
                )
            pairs = [a / p for p, a in zip(plains.slices, nics.slices, strict=True)]
            emit(
                "ratio",
                args.nodes,
                value=round(nics.per_s / plains.per_s, 3) if plains.per_s else None,
                cpu_ratio=(
                    round((nics.cpu / nics.done) / (plains.cpu / plains.done), 3)
                    if nics.done and plains.done
                    else None
                ),
                pairs_median=round(statistics.median(pairs), 3),
                pairs_range=[round(min(pairs), 3), round(max(pairs), 3)],
                goal=">= 1.0 (addresses no slower than placements)",
            )
        finally:
            mesh.close()


if __name__ == "__main__":
    main()
