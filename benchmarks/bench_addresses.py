"""NIC addresses per second under 4 concurrent originators, beside plain placements.

Real ``meshd run`` daemons on 127.0.0.1 (the ``local`` preset; 4 by default), each
declaring that it attaches network ``lan`` (label ``network:lan=attached``). Each of 4
originators runs ``--clients`` threads submitting back to back through its node's unix
socket API for ``--seconds``, in alternating phases of the same run:

* ``placements_per_s``: submissions without NICs (the anchor: the auction alone);
* ``addresses_per_s``: submissions with one NIC on ``lan`` (``--net lan``): a majority
  claim fixes the address, then the same auction; each placed one holds one address.

``ratio`` is addresses_per_s / placements_per_s (goal: ≥ 1, "no slower than placements
themselves"). Failed submissions are counted, never hidden. Each phase runs ``--rounds``
times, interleaved, so a slow moment of the shared machine hits both; the rounds
alternate which phase goes first (plain then NIC, then NIC then plain; ``--rounds`` is
rounded up to an even number), because every placement makes the next one a little
dearer (each node's view, ledger and runner grow), so a phase that always ran second
would always run on a fuller mesh. ``assigned`` says where the NIC phase's addresses
came from (``meshd_addresses_assigned_total``: this node's pool, or a claim).

Run: .venv/bin/python benchmarks/bench_addresses.py [--nodes 4] [--seconds 8]
     [--clients 4] [--rounds 2] [--set KEY=VALUE]...
"""

from __future__ import annotations

import argparse
import json
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

from tests.integration.daemon import Daemon, Mesh, wait_for  # noqa: E402

CAPACITY = ("--cpus", "100000", "--memory", "100TiB", "--disk", "100TiB")
ATTACHES = ("--label", "network:lan=attached")
ORIGINATORS = 4
Body = Callable[[str], dict[str, Any]]


def plain(name: str) -> dict[str, Any]:
    return {"name": name, "cpus": 1, "memory": 1 << 20, "disk": 0}


def with_nic(name: str) -> dict[str, Any]:
    return {**plain(name), "nics": [{"network": "lan"}]}


def rate(nodes: list[Daemon], seconds: float, clients: int, body: Body, tag: str) -> dict[str, Any]:
    done = [0] * (ORIGINATORS * clients)
    failed = [0] * (ORIGINATORS * clients)
    errors: list[str] = []
    took: list[float] = []  # seconds per successful submission, as its client saw it
    stop = time.monotonic() + seconds

    def run(k: int) -> None:
        origin = nodes[(k % ORIGINATORS) * len(nodes) // ORIGINATORS]
        i = 0
        while time.monotonic() < stop:
            try:
                t0 = time.monotonic()
                origin.api("POST", "/v1/workloads", body(f"{tag}{k}-{i}"))
                took.append(time.monotonic() - t0)
                done[k] += 1
            except Exception as exc:  # a refusal or timeout counts against the rate
                failed[k] += 1
                if len(errors) < 3:
                    errors.append(str(exc)[:200])
            i += 1

    threads = [threading.Thread(target=run, args=(k,)) for k in range(ORIGINATORS * clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "per_s": sum(done) / (time.monotonic() - start),
        "p50_ms": statistics.median(took) * 1000 if took else None,
        "failed": sum(failed),
        "errors": errors,
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
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--clients", type=int, default=4, help="threads per originator")
    p.add_argument("--rounds", type=int, default=2)
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
            nodes[0].api("POST", "/v1/networks", {"name": "lan", "subnet": "10.64.0.0/14"})
            wait_for(
                "every node to know lan",
                lambda: all(d.api("GET", "/v1/networks")["networks"] for d in nodes),
                30,
            )
            # Warm up both paths (first syncs, imports, caches).
            rate(nodes, 2.0, 1, plain, "wp")
            rate(nodes, 2.0, 1, with_nic, "wa")
            plains, addrs = [], []
            for r in range(args.rounds + args.rounds % 2):
                phases = [(plains, plain, "p"), (addrs, with_nic, "a")]
                for out, body, tag in phases if r % 2 == 0 else phases[::-1]:
                    out.append(rate(nodes, args.seconds, args.clients, body, f"{tag}{r}-"))
            assigned = sum_assigned(nodes)
            common = {
                "originators": ORIGINATORS,
                "clients": args.clients,
                "s": args.seconds,
                "set": args.set,
            }
            p_rate = statistics.mean(x["per_s"] for x in plains)
            a_rate = statistics.mean(x["per_s"] for x in addrs)
            emit(
                "placements_per_s",
                args.nodes,
                value=round(p_rate, 1),
                rounds=[round(x["per_s"], 1) for x in plains],
                latency_p50_ms=[round(x["p50_ms"] or 0, 1) for x in plains],
                failed=sum(x["failed"] for x in plains),
                errors=[e for x in plains for e in x["errors"]][:3],
                means="submissions without NICs placed per second (the anchor)",
                **common,
            )
            emit(
                "addresses_per_s",
                args.nodes,
                value=round(a_rate, 1),
                rounds=[round(x["per_s"], 1) for x in addrs],
                latency_p50_ms=[round(x["p50_ms"] or 0, 1) for x in addrs],
                failed=sum(x["failed"] for x in addrs),
                errors=[e for x in addrs for e in x["errors"]][:3],
                means="submissions with one NIC placed (one address each) per second",
                assigned=assigned,
                **common,
            )
            emit(
                "ratio",
                args.nodes,
                value=round(a_rate / p_rate, 3) if p_rate else None,
                goal=">= 1.0 (addresses no slower than placements)",
            )
        finally:
            mesh.close()


if __name__ == "__main__":
    main()
