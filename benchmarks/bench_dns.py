"""DNS for mesh names (`meshd run --dns`): query latency, cached and uncached.

Three `meshd run` daemons on 127.0.0.1 (the ``local`` preset); beta and gamma publish
`web`. A client (dnspython, one UDP socket, one query in flight) asks alpha's DNS server
`web.beta.lab.example A` (one instance) and `web.lab.example SRV` (every instance, with
the additional section) over and over:

* ``cached``: the server's lookup cache on (``dns.cache_s`` 2 s: after the first question
  in a window, answers come from memory);
* ``uncached``: a second alpha-side server on the same node with ``dns.cache_s`` 0 can't
  exist (one per node), so the run restarts alpha with ``--set dns.cache_s=0``: every
  question is a DHT lookup among the three nodes.

The anchor in the same run is ``meshd_resolve_api``: the same lookup through the unix
socket API (`GET /v1/resolve`), what `meshd resolve` does minus starting a process.

Run: .venv/bin/python benchmarks/bench_dns.py [--queries 2000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import dns.message
import dns.query

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.daemon import DOMAIN, Daemon, Mesh, wait_for  # noqa: E402


def emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "p50_ms": round(1000 * statistics.median(s), 3),
        "p99_ms": round(1000 * s[min(len(s) - 1, int(0.99 * len(s)))], 3),
        "n": len(s),
    }


def ask(server: tuple[str, int], name: str, rtype: str) -> float:
    q = dns.message.make_query(name, rtype)
    t0 = time.perf_counter()
    r = dns.query.udp(q, server[0], port=server[1], timeout=2)
    took = time.perf_counter() - t0
    if not r.answer:
        raise RuntimeError(f"no answer for {name} {rtype}: {r.rcode()}")
    return took


def instances(server: tuple[str, int]) -> int:
    q = dns.message.make_query(f"web.{DOMAIN}", "SRV")
    r = dns.query.udp(q, server[0], port=server[1], timeout=2)
    return len(r.answer[0]) if r.answer else 0


def dns_server(d: Daemon) -> tuple[str, int]:
    host, port = str(d.status()["dns"]).rsplit(":", 1)
    return host, int(port)


def measure(d: Daemon, queries: int, label: str) -> None:
    server = dns_server(d)
    for name, rtype in ((f"web.beta.{DOMAIN}", "A"), (f"web.{DOMAIN}", "SRV")):
        samples = [ask(server, name, rtype) for _ in range(queries)]
        emit({"figure": f"dns_{label}", "query": f"{name} {rtype}", **percentiles(samples)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mesh = Mesh(Path(tmp))
        try:
            alpha = mesh.daemon("alpha")
            alpha.init()
            alpha.start("--dns", "127.0.0.1:0")
            beta, gamma = mesh.join_many(["beta", "gamma"], via=alpha)
            for d in (beta, gamma):
                d.cli("service", "add", "web", "--port", "8080", check=True)
            server = dns_server(alpha)
            wait_for("both instances", lambda: instances(server) == 2, 30)
            measure(alpha, args.queries, "cached")
            path = f"/v1/resolve?name={quote(f'@web@beta@{DOMAIN}')}"
            api = []
            for _ in range(args.queries // 4):
                t0 = time.perf_counter()
                alpha.api("GET", path)
                api.append(time.perf_counter() - t0)
            emit(
                {"figure": "meshd_resolve_api", "query": f"@web@beta@{DOMAIN}", **percentiles(api)}
            )
            alpha.stop()
            alpha.start("--dns", "127.0.0.1:0", "--set", "dns.cache_s=0")
            wait_for("alpha sees both", lambda: len(alpha.api("GET", "/v1/peers")) >= 3, 30)
            server = dns_server(alpha)
            wait_for("answers again", lambda: instances(server) == 2, 30)
            measure(alpha, args.queries // 4, "uncached")
        finally:
            mesh.close()


if __name__ == "__main__":
    main()
