"""Metadata request latency from a guest (issue 13 figure: p50/p99).

One blade namespace runs meshd's GuestNetworks (``tests/integration/guest_lab.py``: the
real dnsmasq, nftables guard and metadata server; no QEMU); one guest namespace, its
veth peer named like the workload's tap, takes its address by busybox udhcpc and then
asks ``GET /latest/meta-data/<path>`` ``--requests`` times in a row, each on a new
connection (as cloud-init and curl do), timed inside the guest from connect to the last
byte. Every request goes through the full identification (neighbour table, fdb, tap).

The anchor in the same run is ``GET /latest/meta-data/instance-id`` answered 403 to an
unknown source: the same server and round trip without the identification's success
path (two ``ip``/``bridge`` calls that find nothing are skipped: it stops at the
address), so the difference is what identifying a guest costs.

Root only. Run: .venv/bin/python benchmarks/bench_metadata.py [--requests 300] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.guest_lab import Lab, usable  # noqa: E402


def emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def summary(name: str, run: int, answers: list[tuple[int, str, float]], want: int) -> None:
    ms = [t * 1000 for s, _, t in answers if s == want]
    emit(
        {
            "metric": name,
            "run": run,
            "n": len(ms),
            "wrong_status": len(answers) - len(ms),
            "p50_ms": round(statistics.median(ms), 3),
            "p99_ms": round(pct(ms, 99), 3),
            "max_ms": round(max(ms), 3),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    why = usable()
    if why is not None:
        emit({"skipped": why})
        return
    lab = Lab("h13hb")
    try:
        lab.workload("w-bench", "bench", "10.77.0.11", "#cloud-config\n")
        blade = lab.blade("a", "10.77.0.2", create=True, attach=[])
        g = lab.guest(blade, "w-bench", "10.77.0.11")
        assert blade.send("attach w-bench") == "OK"
        lease = lab.dhcp(g)
        if lease is None or lease["ip"] != g.ip:
            raise SystemExit(f"no lease: {lease} {lab.errors('a')}")
        # On a tap-named port (any other port is an uplink to the guard, which drops
        # its metadata traffic before the server sees it).
        stranger = lab.guest(blade, "w-none", "10.77.0.99")
        lab._in(stranger.ns, "ip", "addr", "add", "10.77.0.99/24", "dev", "eth0")
        lab._in(stranger.ns, "ip", "route", "add", "169.254.169.254/32", "via", "10.77.0.2")
        for run in range(args.runs):
            paths = ["/latest/meta-data/instance-id"] * args.requests
            summary("metadata_request", run, lab.fetch(g, *paths), 200)
            summary("refused_request", run, lab.fetch(stranger, *paths), 403)
            summary("user_data_request", run, lab.fetch(g, *["/latest/user-data"] * 100), 200)
    finally:
        lab.close()


if __name__ == "__main__":
    main()
