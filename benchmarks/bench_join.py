"""Join time with real processes: through a seed on loopback, and by mDNS in namespaces.

Prints JSON lines:
* ``seed_join_s``: 5 `meshd run` processes on 127.0.0.1; the founder runs, then four
  enrolled nodes are spawned with the founder as their only seed; time from spawning
  them until every node's `/v1/peers` shows all five alive (median over runs).
* ``mdns_join_s`` (root only): 5 network namespaces on a bridge, nodes started with
  `--mdns` and no seeds (LAN preset: RFC 6762 probing on); time until all five see
  five alive, measured from spawn and from the moment the last node was ready.

Run: .venv/bin/python benchmarks/bench_join.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e import netns  # noqa: E402
from tests.integration.daemon import Daemon, Mesh  # noqa: E402

N = 5
PORT = 7420


def _all_alive(nodes: list[Daemon]) -> bool:
    names = {d.name for d in nodes}
    for d in nodes:
        peers = {p["name"]: p["state"] for p in d.api("GET", "/v1/peers")}
        if set(peers) != names or set(peers.values()) != {"alive"}:
            return False
    return True


def _wait_all_alive(nodes: list[Daemon], timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _all_alive(nodes):
            return time.monotonic()
        time.sleep(0.02)
    raise RuntimeError("nodes did not converge")


def seed_join(base: Path) -> float:
    mesh = Mesh(base)
    try:
        founder = mesh.found("n1")
        nodes = mesh.join_many([f"n{i}" for i in range(2, N + 1)], via=founder, start=False)
        start = time.monotonic()
        for d in nodes:
            d.spawn()  # seeds come from the token, written to meshd.toml by init
        for d in nodes:
            d.wait_ready()
        return _wait_all_alive([founder, *nodes]) - start
    finally:
        mesh.close()


def mdns_join(base: Path) -> tuple[float, float]:
    mesh = Mesh(base)
    with netns.lab(N, tag="b") as lab:
        try:
            nodes = []
            for i, h in enumerate(lab.hosts):
                d = mesh.daemon(f"n{i + 1}", preset="lan")
                d.prefix = tuple(h.cmd([]))
                nodes.append(d)
            founder = nodes[0]
            founder.init(listen=f"{lab.hosts[0].addr}:{PORT}")
            founder.start()
            for d, h in zip(nodes[1:], lab.hosts[1:], strict=True):
                d.init(join=founder.create_token(), listen=f"{h.addr}:{PORT}")
            founder.stop()
            for d, h in zip(nodes, lab.hosts, strict=True):
                (d.data_dir / "meshd.toml").write_text(f'listen = "{h.addr}:{PORT}"\n')
            start = time.monotonic()
            for d, h in zip(nodes, lab.hosts, strict=True):
                d.spawn("--mdns", h.addr)
            for d in nodes:
                d.wait_ready()
            ready = time.monotonic()
            done = _wait_all_alive(nodes)
            return done - start, done - ready
        finally:
            mesh.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshd-bench-join-") as tmp:
        seeds = [seed_join(Path(tmp) / f"seed{r}") for r in range(args.runs)]
        print(
            json.dumps(
                {
                    "bench": "join",
                    "figure": "seed_join_s",
                    "nodes": N,
                    "p50": round(statistics.median(seeds), 3),
                    "max": round(max(seeds), 3),
                    "unit": "s",
                    "n": len(seeds),
                    "from": "spawn of the joiners",
                }
            ),
            flush=True,
        )
        reason = netns.available()
        if reason is not None:
            print(json.dumps({"bench": "join", "figure": "mdns_join_s", "skipped": reason}))
            return
        runs = [mdns_join(Path(tmp) / f"mdns{r}") for r in range(args.runs)]
        for i, label in ((0, "spawn"), (1, "all ready")):
            vals = [r[i] for r in runs]
            print(
                json.dumps(
                    {
                        "bench": "join",
                        "figure": "mdns_join_s",
                        "nodes": N,
                        "p50": round(statistics.median(vals), 3),
                        "max": round(max(vals), 3),
                        "unit": "s",
                        "n": len(vals),
                        "from": label,
                        "mdns_probing": True,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
