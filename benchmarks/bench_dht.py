"""DHT resolve latency and success: meshd's DHT against the bare ``kademlia`` package.

For each implementation and each network size N, in one process on 127.0.0.1:

1. N nodes start, each on its own UDP socket (meshd: a sealed ``DatagramMux`` per node;
   bare: ``Server.listen``). Node i bootstraps from up to 3 random earlier nodes with a
   real bootstrap (ping + a lookup of its own id). meshd nodes are also *warmed*: node i
   is told about those seeds with ``add_contact`` first (what the membership layer
   does); bare kademlia has no such call. Tables are built the same way otherwise.
2. ``--keys`` keys are put from random nodes (meshd ``put``; bare ``set``).
3. ``--gets`` gets of random keys from random live nodes, one after the other
   (bare kademlia with nodes stopped: ``--bare-concurrency`` at a time, or its 5 s
   timeouts would take many minutes; the line says so), with 0 % stopped;
4. then ``--stop-pct`` of the nodes are stopped abruptly (their sockets closed, no
   goodbye) and the gets are measured again.

A get succeeds when it returns the value that was put. One JSON line per (impl, N,
stopped) on stdout; progress on stderr. Goal (DESIGN.md §12, issue): meshd 100 %
success and p99 < 50 ms with 20 % stopped.

Usage: .venv/bin/python benchmarks/bench_dht.py [--nodes 100,500] [--keys 200]
       [--gets 500] [--stop-pct 20] [--impl meshd,bare] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kademlia.network import Server

from meshd import config
from meshd.adapters.dht import MeshDHT, StaticDirectory
from meshd.adapters.transport import DatagramMux
from meshd.core.keyring import KeyRing, MeshKey
from meshd.core.replay import ReplayGuard
from meshd.identity import pki
from meshd.metrics import Registry

HOST = "127.0.0.1"
SEEDS_PER_NODE = 3


def progress(msg: str) -> None:
    print(f"[bench_dht] {msg}", file=sys.stderr, flush=True)


def pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[idx]


@dataclass
class Peer:
    port: int
    get: Callable[[str], Awaitable[bytes | None]]
    put: Callable[[str, bytes], Awaitable[Any]]
    stop: Callable[[], None]
    contacts: Callable[[], int]


async def meshd_network(n: int, rng: random.Random) -> list[Peer]:
    cfg = config.local()
    secret = rng.randbytes(32)
    directory = StaticDirectory()
    peers: list[Peer] = []
    dhts: list[MeshDHT] = []
    for i in range(n):
        key = pki.new_key()
        name = f"n{i}"
        directory.add(name, key.public_key())
        registry = Registry()
        keys = KeyRing(cfg.security.key_grace_s)
        keys.add(MeshKey(0, secret), time.time())
        mux = DatagramMux(keys, ReplayGuard(cfg.security.max_clock_skew_s, 65536), registry)
        port = await mux.bind(HOST, 0)
        node_id = pki.node_id_of(key.public_key())
        dht = MeshDHT(cfg.dht, node_id, key, name, directory, mux, time.time, registry)
        await dht.start()

        async def get(k: str, dht: MeshDHT = dht) -> bytes | None:
            records = await dht.get(k)
            return records[0].value if records else None

        def stop(dht: MeshDHT = dht, mux: DatagramMux = mux) -> None:
            mux.close()  # abrupt: the socket goes, nothing is said
            dht.stop()

        def contacts(dht: MeshDHT = dht) -> int:
            return len(dht.protocol.router.contacts())

        peers.append(Peer(port, get, dht.put, stop, contacts))
        if dhts:
            seeds = rng.sample(range(len(dhts)), min(SEEDS_PER_NODE, len(dhts)))
            for s in seeds:
                dht.add_contact(dhts[s].node_id, (HOST, peers[s].port))
            await dht.bootstrap([(HOST, peers[s].port) for s in seeds])
        dhts.append(dht)
        if (i + 1) % 100 == 0:
            progress(f"meshd: {i + 1}/{n} nodes up")
    return peers


async def bare_network(n: int, rng: random.Random) -> list[Peer]:
    peers: list[Peer] = []
    for i in range(n):
        server = Server(ksize=20, alpha=3)
        await server.listen(0, HOST)
        port = int(server.transport.get_extra_info("sockname")[1])

        async def get(k: str, server: Server = server) -> bytes | None:
            value = await server.get(k)
            return value if isinstance(value, bytes) else None

        def bare_contacts(server: Server = server) -> int:
            return sum(len(b) for b in server.protocol.router.buckets)

        peers.append(Peer(port, get, server.set, server.stop, bare_contacts))
        if i:
            seeds = rng.sample(range(i), min(SEEDS_PER_NODE, i))
            await server.bootstrap([(HOST, peers[s].port) for s in seeds])
        if (i + 1) % 100 == 0:
            progress(f"bare: {i + 1}/{n} nodes up")
    return peers


async def measure(
    peers: list[Peer], live: list[int], keys: list[str], gets: int, rng: random.Random, conc: int
) -> tuple[list[float], int]:
    latencies: list[float] = []
    ok = 0
    sem = asyncio.Semaphore(conc)

    async def one(key: str, peer: Peer) -> None:
        nonlocal ok
        async with sem:
            t0 = time.perf_counter()
            value = await peer.get(key)
            latencies.append((time.perf_counter() - t0) * 1000)
            ok += value == value_of(key)

    jobs = [(rng.choice(keys), peers[rng.choice(live)]) for _ in range(gets)]
    if conc == 1:
        for key, peer in jobs:
            await one(key, peer)
    else:
        await asyncio.gather(*(one(key, peer) for key, peer in jobs))
    return sorted(latencies), ok


def value_of(key: str) -> bytes:
    return f"value of {key}".encode()


async def run(impl: str, n: int, args: argparse.Namespace) -> None:
    rng = random.Random(f"{args.seed}-{impl}-{n}")
    t0 = time.perf_counter()
    peers = await (meshd_network if impl == "meshd" else bare_network)(n, rng)
    build_s = time.perf_counter() - t0
    contacts = sum(p.contacts() for p in peers) / n
    progress(f"{impl} N={n}: built in {build_s:.1f}s, {contacts:.0f} contacts per node")
    keys = [f"key-{i}" for i in range(args.keys)]
    t0 = time.perf_counter()
    for key in keys:
        await peers[rng.randrange(n)].put(key, value_of(key))
    progress(f"{impl} N={n}: {len(keys)} keys put in {time.perf_counter() - t0:.1f}s")
    live = list(range(n))
    try:
        for stopped_pct in (0, args.stop_pct):
            if stopped_pct:
                victims = rng.sample(range(n), n * stopped_pct // 100)
                for v in victims:
                    peers[v].stop()
                live = sorted(set(live) - set(victims))
            conc = args.bare_concurrency if impl == "bare" and stopped_pct else 1
            t0 = time.perf_counter()
            lat, ok = await measure(peers, live, keys, args.gets, rng, conc)
            progress(f"{impl} N={n} stopped={stopped_pct}%: {time.perf_counter() - t0:.1f}s")
            line = {
                "bench": "dht",
                "impl": impl,
                "nodes": n,
                "stopped_pct": stopped_pct,
                "p50_ms": round(pct(lat, 50), 2),
                "p99_ms": round(pct(lat, 99), 2),
                "max_ms": round(lat[-1], 2),
                "success": round(ok / args.gets, 4),
                "gets": args.gets,
                "keys": args.keys,
                "concurrency": conc,
                "tables": "add_contact(3 seeds)+bootstrap" if impl == "meshd" else "bootstrap",
                "contacts_per_node": round(contacts, 1),
                "build_s": round(build_s, 2),
            }
            print(json.dumps(line), flush=True)
    finally:
        for i in live:
            peers[i].stop()
        await asyncio.sleep(0.1)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="100,500")
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--gets", type=int, default=500)
    parser.add_argument("--stop-pct", type=int, default=20)
    parser.add_argument("--impl", default="meshd,bare")
    parser.add_argument("--bare-concurrency", type=int, default=50)
    parser.add_argument("--seed", default="1")
    args = parser.parse_args()
    # Expected noise under failure: both libraries log every timeout.
    for name in ("kademlia", "rpcudp", "meshd"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    for n in (int(x) for x in args.nodes.split(",")):
        for impl in args.impl.split(","):
            await run(impl, n, args)


if __name__ == "__main__":
    asyncio.run(main())
