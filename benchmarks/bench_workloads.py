"""Workloads through the whole mesh: QEMU submit-to-guest-ready, and daemon RSS.

Prints JSON lines:
* ``mesh_boot_s``: three `meshd run` daemons on 127.0.0.1; from the client's submit
  of a `qemu` workload (test guest, direct kernel boot, TCG here) until its owner
  reports it `running` — which the qemu driver does when the guest printed its ready
  marker — so the auction, the award, the driver and the boot are all included.
  ``bare_boot_s``: the same QEMU command run bare in the same run (interleaved), and
  ``ratio`` = mesh / bare (goal ≤ 1.10).
* ``daemon_rss_mib_with_20``: the owner daemon's RSS with 20 `process` workloads.

Run: .venv/bin/python benchmarks/bench_workloads.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_qemu  # noqa: E402

from tests.integration.daemon import Daemon, Mesh  # noqa: E402

CAPACITY = ("--cpus", "64", "--memory", "64GiB", "--disk", "100GiB")


def _running_at(d: Daemon, wid: str, since: int) -> float | None:
    for e in d.api("GET", f"/v1/events?since={since}&limit=1000"):
        if e["kind"] == "workload.running" and e["subject"] == wid:
            return float(e["ts"])
    return None


def mesh_boot(nodes: list[Daemon], g: dict[str, str], i: int) -> float:
    alpha = nodes[0]
    cursors = {
        d.name: (d.api("GET", "/v1/events?since=0&limit=1000") or [{"id": 0}])[-1]["id"]
        for d in nodes
    }
    body = {
        "name": f"vm{i}",
        "cpus": 1,
        "memory": 128 << 20,
        "driver": "qemu",
        "kernel": g["MESHD_GUEST_VMLINUX"],
        "initrd": g["MESHD_GUEST_INITRD"],
        "ready_marker": g["MESHD_GUEST_MARKER"],
        "boot_timeout_s": 60,
    }
    t0 = time.time()
    decision = alpha.api("POST", "/v1/workloads", body)
    owner = next(d for d in nodes if d.name == decision["owner"])
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        at = _running_at(owner, decision["workload"], cursors[owner.name])
        if at is not None:
            owner.api("POST", f"/v1/workloads/{decision['workload']}/stop?timeout=5")
            return at - t0
        time.sleep(0.02)
    raise RuntimeError("the guest did not become ready")


def process_rss(nodes: list[Daemon]) -> float:
    alpha = nodes[0]
    wids = []
    for i in range(20):
        doc = alpha.api(
            "POST",
            "/v1/workloads",
            {
                "name": f"p{i}",
                "cpus": 0.1,
                "memory": 1 << 20,
                "command": "sleep 600",
                "nodes": ["alpha"],
            },
        )
        wids.append(doc["workload"])
    time.sleep(3.0)
    rss = psutil.Process(alpha.pid).memory_info().rss / (1 << 20)
    for wid in wids:
        alpha.api("POST", f"/v1/workloads/{wid}/stop?timeout=2")
    return rss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    g = bench_qemu.guest()
    base = Path(tempfile.mkdtemp(prefix="mb", dir="/tmp"))  # short: QMP socket paths
    mesh_times, bare_times = [], []
    mesh = Mesh(base / "mesh")
    try:
        nodes = mesh.start_cluster(["alpha", "beta", "gamma"], *CAPACITY)
        for i in range(args.runs):
            bare_times.append(bench_qemu.bare_boot(g, base / f"bare{i}"))
            mesh_times.append(mesh_boot(nodes, g, i))
        m, b = statistics.median(mesh_times), statistics.median(bare_times)
        print(
            json.dumps(
                {
                    "bench": "workloads",
                    "figure": "mesh_boot_s",
                    "p50": round(m, 3),
                    "n": len(mesh_times),
                }
            )
        )
        print(
            json.dumps(
                {
                    "bench": "workloads",
                    "figure": "bare_boot_s",
                    "p50": round(b, 3),
                    "n": len(bare_times),
                }
            )
        )
        print(
            json.dumps(
                {"bench": "workloads", "figure": "ratio", "value": round(m / b, 3), "goal": 1.10}
            )
        )
        rss = process_rss(nodes)
        print(
            json.dumps(
                {"bench": "workloads", "figure": "daemon_rss_mib_with_20", "value": round(rss, 1)}
            )
        )
    finally:
        mesh.close()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
