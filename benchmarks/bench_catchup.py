"""Anti-entropy with real processes: how fast a node catches up on what it missed.

Three `meshd run` daemons on 127.0.0.1. One is stopped; the other two place
workloads for ``--seconds`` (16 clients each, back to back); the stopped one starts
again and the clock runs until its `meshd workloads` equals theirs. Nothing but
anti-entropy brings it the placements: they were confirmed while it was down, and
their gossip is long over. Prints one JSON line: ``missed`` placements, ``value``
(seconds from launching it, start-up and joining included, until its view is
complete), ``mtls_requests_received`` (auction requests it received over mTLS:
the Syncs that carried the difference, in runs within the API's 1 MiB body limit,
and digests too large for a datagram).

Run: .venv/bin/python benchmarks/bench_catchup.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_placement import CAPACITY, throughput  # noqa: E402

from tests.integration.daemon import Daemon, Mesh, wait_for  # noqa: E402


def _view(d: Daemon) -> set[str]:
    return {r["workload"] for r in d.api("GET", "/v1/workloads")}


def _auction_posts(d: Daemon) -> float:
    prefix = 'meshd_api_requests_total{code="204",route="/v1/mesh/auction"}'
    lines = str(d.api("GET", "/metrics")).splitlines()
    return sum(float(x.rsplit(" ", 1)[1]) for x in lines if x.startswith(prefix))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp:
        mesh = Mesh(Path(tmp))
        try:
            a, b, c = mesh.start_cluster(["n01", "n02", "n03"], *CAPACITY, timeout=60)
            c.stop()
            rate, failed = throughput([a, b], args.seconds, originators=2, clients=16)
            time.sleep(3.0)  # every gossip retransmission of the confirmations is over
            want = _view(a)  # after the last confirmations (and late decisions) landed
            t0 = time.monotonic()
            c.start()
            wait_for("the restarted node to catch up", lambda: _view(c) == want, 300)
            took = time.monotonic() - t0
            doc = {
                "bench": "catchup",
                "figure": "catch_up_s",
                "nodes": 3,
                "missed": len(want),
                "placed_per_s": round(rate, 1),
                "failed": failed,
                "value": round(took, 2),
                "mtls_requests_received": int(_auction_posts(c)),
                "note": "value includes the daemon's start-up and the first exchange (~2 s)",
            }
            print(json.dumps(doc), flush=True)
        finally:
            mesh.close()


if __name__ == "__main__":
    main()
