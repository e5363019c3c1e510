"""Placement speed with real processes: 16 `meshd run` daemons on 127.0.0.1.

Prints JSON lines:
* ``decision_ms``: submit (over the unix socket API) until the placement is confirmed
  on EVERY member — each node logs a `placement.recorded` event stamped with the
  wall clock when it records the placement; all run on this machine, so one clock.
  Also ``submit_ms``: what the submitting client waited (until the originator had the
  winner's durable acceptance). p50/p99 over sequential submissions.
* ``throughput_per_s``: placements per second sustained with 4 concurrent originators
  (``--clients`` threads per originator, each submitting back to back through its
  node; by default one run with 1 and one with 16: the goal is about sustained load,
  which needs submissions in flight at every originator).

Goals (docs/SPECIFICATION.md): decision p50 ≤ 20 ms, p99 ≤ 100 ms; ≥ 200/s.
Run: .venv/bin/python benchmarks/bench_placement.py [--nodes 16] [--decisions 200]
     [--seconds 10] [--clients 1,16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.daemon import Daemon, Mesh  # noqa: E402

CAPACITY = ("--cpus", "100000", "--memory", "100TiB", "--disk", "100TiB")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _start_mesh(mesh: Mesh, n: int) -> list[Daemon]:
    return mesh.start_cluster([f"n{i:02d}" for i in range(1, n + 1)], *CAPACITY, timeout=60)


def _recorded_at(nodes: list[Daemon], since: dict[str, int]) -> dict[str, dict[str, float]]:
    """workload id -> {node: wall-clock time it recorded the placement}."""
    out: dict[str, dict[str, float]] = {}
    for d in nodes:
        cursor = since.get(d.name, 0)
        while True:
            events = d.api("GET", f"/v1/events?since={cursor}&limit=1000")
            if not events:
                break
            for e in events:
                cursor = e["id"]
                if e["kind"] == "placement.recorded":
                    out.setdefault(e["subject"], {})[d.name] = e["ts"]
        since[d.name] = cursor
    return out


def decisions(nodes: list[Daemon], count: int) -> tuple[list[float], list[float]]:
    since: dict[str, int] = {}
    _recorded_at(nodes, since)  # skip what happened before
    submitted: dict[str, float] = {}
    submit_ms = []
    for i in range(count):
        origin = nodes[i % len(nodes)]
        t0 = time.time()
        doc = origin.api(
            "POST", "/v1/workloads", {"name": f"d{i}", "cpus": 1, "memory": 1 << 20, "disk": 0}
        )
        submit_ms.append((time.time() - t0) * 1000)
        submitted[doc["workload"]] = t0
        time.sleep(0.01)  # sequential decisions, not a flood
    time.sleep(2.0)
    seen = _recorded_at(nodes, since)
    decided = []
    for wid, t0 in submitted.items():
        stamps = seen.get(wid, {})
        if len(stamps) == len(nodes):
            decided.append((max(stamps.values()) - t0) * 1000)
    return decided, submit_ms


def throughput(
    nodes: list[Daemon], seconds: float, originators: int = 4, clients: int = 1
) -> tuple[float, int]:
    """Placements/s: ``clients`` threads per originator, each submitting back to back."""
    done = [0] * (originators * clients)
    failed = [0] * (originators * clients)
    stop = time.monotonic() + seconds

    def run(k: int) -> None:
        origin = nodes[(k % originators) * len(nodes) // originators]
        i = 0
        while time.monotonic() < stop:
            try:
                origin.api(
                    "POST",
                    "/v1/workloads",
                    {"name": f"t{k}-{i}", "cpus": 1, "memory": 1 << 20, "disk": 0},
                )
                done[k] += 1
            except Exception:  # a refusal or timeout counts against the rate
                failed[k] += 1
            i += 1

    threads = [threading.Thread(target=run, args=(k,)) for k in range(originators * clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - start), sum(failed)


def emit(figure: str, nodes: int, **fields: Any) -> None:
    """One JSON line of this benchmark's output."""
    doc = {"bench": "placement", "figure": figure, "nodes": nodes, **fields}
    print(json.dumps(doc), flush=True)


def _latency(ms: list[float]) -> dict[str, Any]:
    return {
        "p50": round(statistics.median(ms), 2),
        "p99": round(_pct(ms, 0.99), 2),
        "n": len(ms),
        "unit": "ms",
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--decisions", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", default="1,16", help="client threads per originator, one run each")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshd-bench-place-") as tmp:
        mesh = Mesh(Path(tmp))
        try:
            nodes = _start_mesh(mesh, args.nodes)
            decided, submit_ms = decisions(nodes, args.decisions)
            emit(
                "decision_ms",
                args.nodes,
                **_latency(decided),
                of=args.decisions,
                means="submit until recorded on every member",
            )
            waited = "what the submitting client waited"
            emit("submit_ms", args.nodes, **_latency(submit_ms), means=waited)
            for clients in (int(c) for c in args.clients.split(",")):
                rate, failed = throughput(nodes, args.seconds, clients=clients)
                emit(
                    "throughput_per_s",
                    args.nodes,
                    originators=4,
                    clients_per_originator=clients,
                    value=round(rate, 1),
                    failed=failed,
                    seconds=args.seconds,
                )
        finally:
            mesh.close()


if __name__ == "__main__":
    main()
