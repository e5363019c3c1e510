"""Placement quality and auction traffic: meshd's auction against a centralized placer.

Two figures, one JSON line each (plus one line per mesh size for the second):

- ``placement_quality``: N = 1,000 blades of mixed sizes (16/32/64 CPUs, 64/128/256 GiB)
  receive the same arrival sequence of random workloads of mixed sizes: VM flavours
  of 1-16 CPUs at 2, 4 or 8 GiB per CPU (at most 64 GiB), drawn until the sequence
  asks for 1.5x the mesh. meshd's auction places them one by one, as they arrive,
  asking a random sample of ``ceil(d log2 N)`` = 20 blades per round and every blade
  only in its last round. ``packed`` is the mean of the CPU and memory fractions of the
  mesh in use at a placer's *first refusal*. The anchors, all centralized and
  omniscient (they see every blade's free capacity exactly):

  * ``bfd``: best-fit-decreasing — sees the whole sequence up front, sorts it
    largest first (by dominant share) and puts each workload on the blade with the
    least capacity left after it; ``ratio`` = auction / bfd (goal ≥ 0.95; Sparrow
    reports within 12 % of an omniscient scheduler);
  * ``best_fit_online``: the same best fit, on the arrival order (no look-ahead);
  * ``balanced_fit_online``: meshd's own criterion (the fullest least-used dimension,
    :mod:`meshd.core.auction.scoring`) over every blade: what the auction would do if it
    could ask the whole mesh for free; ``ratio_balanced`` isolates what sampling and
    decentralization cost.

  ``--batch K`` (default ``1,8``, one line each): the arrivals come K at a time, each
  group submitted by one originator at one moment with one shared first-round
  sample, as the shell starts the auctions that queued while it was busy
  (``candidates.Batch``); their rounds run interleaved, and the clock moves for the
  ones that wait on each other's holds.

  For this figure the 1,000 auction cores run directly, exchanging messages through an
  in-memory queue with instant, lossless delivery, and a placement's confirmation goes
  only to the winner and the round's candidates (the others would merely record it):
  quality depends on scores and sampling, not on timing, and this keeps the run to
  seconds instead of simulating a million confirmation deliveries.

- ``placement_messages``: for N = 16, 64, 256, 1,000, in the deterministic simulator
  (the same harness as the tests: virtual time, the sim network, oracle membership),
  ``--placements`` workloads submitted one at a time from random nodes. Per decided
  placement: ``auction_msgs`` (BidRequest, Bid, Release, Award, Accept, Refuse,
  Revoke), and ``confirm_msgs`` (the Confirm sent directly to every member: O(N) by
  design, every node records every placement; the shell also gossips it). Up to
  ``auction.full_mesh_max`` members everyone is asked (O(N)); beyond, the auction part
  grows with log2 N: ``per_log2n`` stays flat.

- ``load_limit`` (one line per ``--load-limits`` value): the same arrivals on blades
  with a background load, placed with ``auction.max_load_per_core`` at each value
  (Aether's 2.0, meshd's 4.0); see :func:`load_limits`.

Usage: .venv/bin/python benchmarks/bench_placement_quality.py [--nodes 1000]
       [--seed 1] [--batch 1,8] [--sizes 16,64,256,1000] [--placements 40]
       [--load-limits 2,4]
       [--set auction.KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshd.config import Config
from meshd.config import files as config_files
from meshd.core.auction import (
    Auctioneer,
    BidRequest,
    Broadcast,
    Capacity,
    Decided,
    Failed,
    Resources,
    Send,
    Telemetry,
    Workload,
)
from meshd.core.auction.candidates import Batch
from meshd.core.auction.model import GiB
from tests.factories import workload as _factory_workload
from tests.sim.auction import AUCTION_MESSAGES, auction_sim

LOG = logging.getLogger("bench.placement")
NODE_CPUS = (16, 32, 64)
NODE_MEM_GIB = (64, 128, 256)
WL_CPUS = (1, 1, 2, 2, 4, 4, 8, 16)
WL_GIB_PER_CPU = (2, 4, 4, 8)
WL_MAX_GIB = 64


def _workload(wid: str, res: Resources) -> Workload:
    return _factory_workload(wid, resources=res)


def capacities(n: int, rng: random.Random) -> list[Capacity]:
    return [
        Capacity(float(rng.choice(NODE_CPUS)), rng.choice(NODE_MEM_GIB) * GiB, 1000 * GiB)
        for _ in range(n)
    ]


def flavour(rng: random.Random) -> Resources:
    cpus = rng.choice(WL_CPUS)
    return Resources(float(cpus), min(WL_MAX_GIB, cpus * rng.choice(WL_GIB_PER_CPU)) * GiB, 0)


def arrivals(caps: list[Capacity], rng: random.Random, demand: float = 1.5) -> list[Resources]:
    """Random workloads until they ask for ``demand`` x the mesh's CPU and memory."""
    cpu_total = sum(c.cpus for c in caps)
    mem_total = sum(c.memory for c in caps)
    out: list[Resources] = []
    cpu = mem = 0.0
    while cpu < demand * cpu_total or mem < demand * mem_total:
        r = flavour(rng)
        out.append(r)
        cpu += r.cpus
        mem += r.memory
    return out


def packed(caps: list[Capacity], used_cpu: float, used_mem: float) -> dict[str, float]:
    cpu = used_cpu / sum(c.cpus for c in caps)
    mem = used_mem / sum(c.memory for c in caps)
    return {"cpu": round(cpu, 4), "mem": round(mem, 4), "mean": round((cpu + mem) / 2, 4)}


# -- the anchors: centralized, omniscient placers -----------------------------------------


def _least_left(c: Capacity, fc: float, fm: float) -> float:
    """Best fit: the capacity left after placing, both dimensions (lower is better)."""
    return fc / c.cpus + fm / c.memory


def _balanced(c: Capacity, fc: float, fm: float) -> float:
    """meshd's criterion: the least-used dimension after placing (higher is better)."""
    return -min(1 - fc / c.cpus, 1 - fm / c.memory)


def centralized(
    caps: list[Capacity], seq: list[Resources], cost: Any, decreasing: bool
) -> dict[str, Any]:
    """Place each workload where ``cost`` of the leftover is lowest; stop at the first no."""
    if decreasing:
        cpu_avg = sum(c.cpus for c in caps) / len(caps)
        mem_avg = sum(c.memory for c in caps) / len(caps)
        seq = sorted(seq, key=lambda r: -max(r.cpus / cpu_avg, r.memory / mem_avg))
    free = [[c.cpus, float(c.memory)] for c in caps]
    used_cpu = used_mem = 0.0
    placed = 0
    for r in seq:
        best, best_cost = -1, math.inf
        for i, (fc, fm) in enumerate(free):
            if r.cpus <= fc and r.memory <= fm:
                x = cost(caps[i], fc - r.cpus, fm - r.memory)
                if x < best_cost:
                    best, best_cost = i, x
        if best < 0:
            break
        free[best][0] -= r.cpus
        free[best][1] -= r.memory
        used_cpu += r.cpus
        used_mem += r.memory
        placed += 1
    return {"placed": placed, "packed": packed(caps, used_cpu, used_mem)}


# -- meshd: the auction cores, driven directly --------------------------------------------


def auction_quality(
    caps: list[Capacity],
    seq: list[Resources],
    cfg: Config,
    seed: int,
    batch: int = 1,
    background: list[float] | None = None,
) -> dict[str, Any]:
    names = [f"n{i:04d}" for i in range(len(caps))]
    cores = {
        n: Auctioneer(cfg.auction, n, c, random.Random(f"{seed}/{n}"), 0.0, LOG)
        for n, c in zip(names, caps, strict=True)
    }
    rng = random.Random(f"{seed}/arrivals")
    now = 0.0
    used_cpu = used_mem = 0.0
    requests = 0

    bg = dict(zip(names, background or [0.0] * len(names), strict=True))

    def feed(n: str) -> None:  # the shell feeds psutil readings; here: what the ledger implies
        ledger = cores[n].ledger()
        cap = ledger.capacity
        free_mem, free_disk = cap.memory - ledger.committed.memory, cap.disk - ledger.committed.disk
        # Load per core: the host's own background, plus its guests keeping half their
        # CPUs busy (a guest's vCPU thread is one runnable task while it works).
        load = bg[n] + GUEST_BUSY * ledger.committed.cpus / cap.cpus
        cores[n].set_telemetry(Telemetry(load, free_mem, free_disk))

    for n in names:
        feed(n)
    for first in range(0, len(seq), batch):
        now += 0.01
        origin = rng.choice(names)
        # A batch: one originator's submissions of one moment, sharing a first-round
        # sample as the shell's (candidates.Batch); their rounds then run interleaved.
        shared = Batch()
        queue: deque[tuple[str, Any]] = deque()
        for i in range(first, min(first + batch, len(seq))):
            w = _workload(f"w{i}", seq[i])
            _, effects = cores[origin].submit(w, names, now, batch=shared)
            queue.extend((origin, e) for e in effects)
        asked: dict[str, set[str]] = {}  # workload id -> candidates asked
        outcomes: list[Decided | Failed] = []
        size = min(batch, len(seq) - first)
        for _ in range(100):  # rounds that wait (busy retries) need the clock to move
            while queue:
                src, e = queue.popleft()
                if isinstance(e, Send):
                    if isinstance(e.msg, BidRequest):
                        asked.setdefault(e.msg.workload_id, set()).add(e.to)
                        requests += 1
                    queue.extend((e.to, x) for x in cores[e.to].receive(e.msg, src, now))
                elif isinstance(e, Broadcast):
                    p = e.msg.placement
                    for n in asked.get(p.workload_id, set()) | {p.owner}:
                        if n != src:
                            queue.extend((n, x) for x in cores[n].receive(e.msg, src, now))
                elif isinstance(e, Decided | Failed):
                    outcomes.append(e)
            if len(outcomes) >= size:
                break
            now = max(now, cores[origin].next_deadline())
            involved = {origin}.union(*asked.values())
            for n in sorted(involved):
                queue.extend((n, x) for x in cores[n].tick(now))
        for o in outcomes:
            if isinstance(o, Decided):
                used_cpu += o.placement.resources.cpus
                used_mem += o.placement.resources.memory
                feed(o.placement.owner)
        failed = [o for o in outcomes if isinstance(o, Failed)]
        if failed or len(outcomes) < size:
            placed = first + sum(isinstance(o, Decided) for o in outcomes)
            return {
                "placed": placed,
                "packed": packed(caps, used_cpu, used_mem),
                "bid_requests_per_placement": round(requests / max(1, placed), 1),
                "refused": failed[0].reason[:120] if failed else "no outcome",
            }
    return {"placed": len(seq), "packed": packed(caps, used_cpu, used_mem), "refused": None}


GUEST_BUSY = 0.5  # the load model's share of a placed vCPU that is runnable


def load_limits(n: int, seed: int, cfg: Config, limits: list[float]) -> list[dict[str, Any]]:
    """What refusing bids past a load per core does to packing, on busy blades.

    Each blade has a background load per core drawn from 0.2 to 2.5 (hosts doing other
    work: backups, builds, a busy neighbour), and each placed vCPU adds half a runnable
    task. The same arrivals are placed with ``auction.max_load_per_core`` at each limit
    (Aether's 2.0; meshd's default 4.0); ``packed`` is the mesh's use at the first
    refusal. A model, not a measurement of real hosts: it shows the shape of the cost.
    """
    rng = random.Random(seed)
    caps = capacities(n, rng)
    seq = arrivals(caps, rng)
    background = [random.Random(f"{seed}/bg/{i}").uniform(0.2, 2.5) for i in range(n)]
    out = []
    for lim in limits:
        c = cfg.override({"auction.max_load_per_core": lim})
        auc = auction_quality(caps, seq, c, seed, 1, background)
        out.append(
            {
                "figure": "load_limit",
                "nodes": n,
                "max_load_per_core": lim,
                "placed": auc["placed"],
                "packed": auc["packed"],
                "refused": auc["refused"],
            }
        )
    return out


def quality(n: int, seed: int, cfg: Config, batch: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    caps = capacities(n, rng)
    seq = arrivals(caps, rng)
    t0 = time.perf_counter()
    bfd = centralized(caps, seq, _least_left, decreasing=True)
    online = centralized(caps, seq, _least_left, decreasing=False)
    balanced = centralized(caps, seq, _balanced, decreasing=False)
    t1 = time.perf_counter()
    auc = auction_quality(caps, seq, cfg, seed, batch)
    t2 = time.perf_counter()
    mean = auc["packed"]["mean"]
    return {
        "figure": "placement_quality",
        "nodes": n,
        "seed": seed,
        "workloads_offered": len(seq),
        "sample": math.ceil(cfg.auction.sample_d * math.log2(n)),
        "batch": batch,
        "auction": auc,
        "bfd": bfd,
        "best_fit_online": online,
        "balanced_fit_online": balanced,
        "ratio": round(mean / bfd["packed"]["mean"], 4),
        "ratio_online": round(mean / online["packed"]["mean"], 4),
        "ratio_balanced": round(mean / balanced["packed"]["mean"], 4),
        "goal": 0.95,
        "seconds": {"anchors": round(t1 - t0, 2), "auction": round(t2 - t1, 2)},
    }


# -- traffic in the simulator -------------------------------------------------------------


def messages(n: int, placements: int, seed: int, cfg: Config) -> dict[str, Any]:
    caps = {f"n{i}": Capacity(64.0, 256 * GiB, 1000 * GiB) for i in range(1, n + 1)}
    sim, fleet = auction_sim(seed, n, cfg, capacities=caps, trace=False)
    rng = random.Random(seed)
    names = list(sim.nodes)
    sim.run_until(0.1)
    t0 = time.perf_counter()
    for i in range(placements):
        w = _workload(f"w{i}", flavour(rng))
        sim.at(0.1 + 0.5 * i, fleet.submit, rng.choice(names), w)
    sim.run_until(0.1 + 0.5 * placements + 2.0)
    decided = sum(1 for o in fleet.outcomes.values() if o.placement is not None)
    auction_msgs = sum(fleet.messages[k] for k in AUCTION_MESSAGES)
    per = auction_msgs / max(1, decided)
    return {
        "figure": "placement_messages",
        "nodes": n,
        "placements": decided,
        "auction_msgs": round(per, 1),
        "per_log2n": round(per / math.log2(n), 2),
        "by_kind": {k: round(fleet.messages[k] / max(1, decided), 2) for k in AUCTION_MESSAGES},
        "confirm_msgs": round(fleet.messages["Confirm"] / max(1, decided), 1),
        "full_mesh": n <= cfg.auction.full_mesh_max,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sizes", default="16,64,256,1000")
    ap.add_argument("--placements", type=int, default=40)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument(
        "--load-limits",
        default="2,4",
        help="auction.max_load_per_core values to compare on busy blades (empty: skip)",
    )
    ap.add_argument(
        "--batch",
        default="1,8",
        help="auctions an originator starts together, sharing a sample (one figure each)",
    )
    args = ap.parse_args()
    # Values as in meshd.toml: numbers and booleans typed (auction.sample_d=1.5).
    overrides = dict(config_files.parse_assignment(item) for item in args.set)
    cfg = config_files.load(None, "sim", overrides)
    for batch in (int(x) for x in args.batch.split(",") if x):
        print(json.dumps(quality(args.nodes, args.seed, cfg, batch)), flush=True)
    if args.load_limits:
        limits = [float(x) for x in args.load_limits.split(",")]
        for line in load_limits(args.nodes, args.seed, cfg, limits):
            print(json.dumps(line), flush=True)
    for n in (int(x) for x in args.sizes.split(",") if x):
        print(json.dumps(messages(n, args.placements, args.seed, cfg)), flush=True)


if __name__ == "__main__":
    main()
