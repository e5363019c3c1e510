"""Fencing in the simulator: time from "dead" to a verified Off, and false fences.

In the fencing simulator (tests/sim/fencing.py: the real ``Fencer`` cores, every message
through the codec, drifting clocks, a membership oracle that declares a node dead after
2.5 s without contact, as SWIM does at 16 nodes on the LAN preset), with the ``lan``
preset's ``[fencing]`` timings and a BMC that powers off at once (0 s delay):

- ``dead_to_off_p50_s`` / ``_p99_s`` / ``_max_s``: from the first node holding a crashed
  node dead until its BMC verified Off, over ``--seeds`` seeds per mesh size;
- ``dead_to_fenced_all_p50_s`` / ``_p99_s``: until every live node holds it fenced (and
  re-places its workloads);
- ``cut_to_off_p50_s``: from the crash itself, which adds the oracle's 2.5 s;
- ``fencing_sim_coordinator_crash``: at 5 nodes, the coordinator dies 0.1 s into a
  1 s power-off; its successor must wait out the lease of the grants it holds (the
  price of never overlapping), so dead → Off is about ``lease_s``;
- ``false_fences`` (must be 0): over ``--long`` simulated seconds at 16 nodes with 10 %
  datagram loss and flapping links (a random link cut for 0.5-5 s every 2 s on
  average, both ways), how many power-offs hit a node that a majority could reach.
  Also ``power_offs`` (any at all) and ``episodes`` (deaths declared and refuted).

Goal (issue 12): cut link to verified Off median ≤ 3 s, max ≤ 5 s, with membership's
~2.5 s of it; zero false fences.

Usage: .venv/bin/python benchmarks/bench_fencing_sim.py [--nodes 3,5,16] [--seeds 200]
       [--long 3600] [--loss 0.1]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshd import config
from tests.sim.fencing import FencingSim
from tests.sim.network import LinkModel


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def latency(n: int, seeds: int) -> dict[str, Any]:
    cfg = config.lan().fencing
    to_off, to_all, cut_off, missing = [], [], [], 0
    for seed in range(seeds):
        rng = random.Random(f"bench/{seed}")
        sim = FencingSim(seed, n, cfg, LinkModel())
        victim = rng.choice(sim.names)
        crash_at = 5.0 + rng.random()
        sim.at(crash_at, sim.crash, victim)
        sim.run_until(crash_at + 15.0)
        if sim.problems:
            raise SystemExit(f"invariant broken: {sim.describe()}: {sim.problems[:3]}")
        keys = [k for k in sim.off_at if k[0] == victim]
        if not keys:
            missing += 1
            continue
        key = keys[0]
        dead = sim.dead_at[key]
        to_off.append(sim.off_at[key] - dead)
        cut_off.append(sim.off_at[key] - crash_at)
        learnt = sim.fenced_at.get(key, {})
        if len(learnt) == n - 1:
            to_all.append(max(learnt.values()) - dead)
    return {
        "bench": "fencing_sim_latency",
        "nodes": n,
        "seeds": seeds,
        "preset": "lan",
        "bmc_delay_s": 0.0,
        "dead_to_off_p50_s": round(statistics.median(to_off), 3),
        "dead_to_off_p99_s": round(pct(to_off, 0.99), 3),
        "dead_to_off_max_s": round(max(to_off), 3),
        "dead_to_fenced_all_p50_s": round(statistics.median(to_all), 3),
        "dead_to_fenced_all_p99_s": round(pct(to_all, 0.99), 3),
        "cut_to_off_p50_s": round(statistics.median(cut_off), 3),
        "cut_to_off_max_s": round(max(cut_off), 3),
        "not_fenced": missing,
    }


def takeover(n: int, seeds: int) -> dict[str, Any]:
    """The coordinator dies right after it decided (its BMC request dies with it): time
    from "dead" to a verified Off by its successor, once its grants' leases ran out."""
    cfg = config.lan().fencing
    to_off, missing = [], 0
    for seed in range(seeds):
        rng = random.Random(f"bench/takeover/{seed}")
        sim = FencingSim(seed, n, cfg, LinkModel())
        victim = rng.choice(sim.names)
        for x in sim.names:
            sim.bmc[x].delay = 1.0  # long enough for the coordinator to die mid-request

        def kill(x: str, w: Any, sim: FencingSim = sim) -> None:
            if len(sim.windows) == 1:
                sim.events.after(0.1, sim.crash, x)

        sim.on_power_off.append(kill)
        sim.at(5.0, sim.crash, victim)
        sim.run_until(5.0 + cfg.lease_s * 3)
        if sim.problems:
            raise SystemExit(f"invariant broken: {sim.describe()}: {sim.problems[:3]}")
        keys = [k for k in sim.off_at if k[0] == victim]
        if not keys:
            missing += 1
            continue
        to_off.append(sim.off_at[keys[0]] - sim.dead_at[keys[0]])
    return {
        "bench": "fencing_sim_coordinator_crash",
        "nodes": n,
        "seeds": seeds,
        "preset": "lan",
        "lease_s": cfg.lease_s,
        "bmc_delay_s": 1.0,
        "dead_to_off_p50_s": round(statistics.median(to_off), 3),
        "dead_to_off_max_s": round(max(to_off), 3),
        "not_fenced": missing,
    }


def false_fences(n: int, seconds: float, loss: float, seed: int = 1) -> dict[str, Any]:
    cfg = config.lan().fencing
    sim = FencingSim(seed, n, cfg, LinkModel(loss=loss))
    rng = random.Random(f"flap/{seed}")
    cuts = 0
    t = 1.0
    while t < seconds:
        a, b = rng.sample(sim.names, 2)
        sim.at(t, sim.net.cut, a, b, True)
        sim.at(t + rng.uniform(0.5, 5.0), sim.net.uncut, a, b, True)
        cuts += 1
        t += rng.expovariate(1 / 2.0)
    sim.run_until(seconds)
    if sim.problems:
        raise SystemExit(f"invariant broken: {sim.describe()}: {sim.problems[:3]}")
    return {
        "bench": "fencing_sim_false_fences",
        "nodes": n,
        "simulated_s": seconds,
        "loss": loss,
        "link_cuts": cuts,
        "episodes": len(sim.dead_at),
        "power_offs": sim.power_offs,
        "false_fences": len(sim.false_fences),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", default="3,5,16")
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--long", type=float, default=3600.0)
    ap.add_argument("--loss", type=float, default=0.1)
    args = ap.parse_args()
    logging.disable(logging.CRITICAL)
    for n in (int(x) for x in args.nodes.split(",")):
        t0 = time.perf_counter()
        line = latency(n, args.seeds)
        line["wall_s"] = round(time.perf_counter() - t0, 2)
        print(json.dumps(line), flush=True)
    t0 = time.perf_counter()
    line = takeover(5, max(1, args.seeds // 4))
    line["wall_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(line), flush=True)
    t0 = time.perf_counter()
    line = false_fences(16, args.long, args.loss)
    line["wall_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
