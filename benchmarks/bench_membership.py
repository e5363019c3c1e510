"""Failure detection in the simulator: time to detect, false deads, and traffic.

For each mesh size, in the deterministic simulator with the `lan()` preset's timings
and the given datagram loss (default 10 %, delays 0.2-2 ms):

- ``detect_all_p50_s`` / ``detect_all_max_s``: from killing one node until EVERY live
  node holds it dead, over ``--kills`` kills spread over ``--seeds`` seeds (each
  victim is restarted and the mesh re-converges before the next kill). Sampled every
  50 ms of virtual time.
- ``false_dead``: over a long run with no faults but the loss (``--long`` simulated
  seconds per size; default 1 h at 16 nodes, 10 min at 256), how many times any node
  declared a *running* node dead. Also ``suspect_events`` (alive→suspect transitions
  seen anywhere: the noise the loss causes).
- ``msgs_per_node_s`` and ``bytes_per_node_s``: datagrams and reliable messages sent
  per node per second in that long run, and their encoded membership payload (before
  sealing and signing, which add ~49 bytes and a signature per datagram in the shell).

Goals (docs/SPECIFICATION.md): detection ≤ 5 s at 256 nodes, zero false deads. The
anchors in DESIGN.md §12 are 15 s (VMware HA, Aether) for detection.

Usage: .venv/bin/python benchmarks/bench_membership.py [--nodes 16,256] [--kills 12]
       [--seeds 3] [--loss 0.1] [--long 16=3600,256=600] [--set membership.KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshd.config import Config
from meshd.config import files as config_files
from meshd.core.membership import MemberChanged, MemberState, Send
from meshd.core.membership import codec as membership_codec
from tests.sim.harness import Simulation
from tests.sim.network import LinkModel

STAGGER_S = 0.01


def build(seed: int, n: int, cfg: Config, loss: float) -> Simulation:
    sim = Simulation(seed, n, cfg, LinkModel(loss=loss), trace=False, stagger=STAGGER_S)
    sim.run_for(n * STAGGER_S + 0.01)
    if sim.run_until_true(sim.converged, 120, 0.5) is None:
        raise SystemExit(f"n={n} seed={seed}: mesh did not converge after joining")
    return sim


def detection(n: int, cfg: Config, loss: float, kills: int, seeds: int) -> list[float]:
    times: list[float] = []
    per_seed = max(1, kills // seeds)
    for seed in range(seeds):
        sim = build(seed, n, cfg, loss)
        rng = random.Random(f"bench/{n}/{seed}")
        for _ in range(per_seed):
            sim.run_for(rng.uniform(0, cfg.membership.probe_interval_s * 2))
            victim = rng.choice(sim.running())
            sim.crash(victim)
            t0 = sim.now
            live = sim.running()

            def all_dead(
                sim: Simulation = sim, victim: str = victim, live: list[str] = live
            ) -> bool:
                return all(sim.state_of(o, victim) is MemberState.DEAD for o in live)

            t = sim.run_until_true(all_dead, 120, 0.05)
            if t is None:
                raise SystemExit(f"n={n} seed={seed}: {victim} not detected in 120 s")
            times.append(t - t0)
            sim.restart(victim)
            if sim.run_until_true(sim.converged, 120, 0.5) is None:
                raise SystemExit(f"n={n} seed={seed}: {victim} did not rejoin")
    return times


def long_run(n: int, cfg: Config, loss: float, seconds: float) -> dict[str, Any]:
    sim = build(1000 + n, n, cfg, loss)
    false_dead = 0
    suspects = 0
    bytes_sent = 0
    msgs = 0

    def listen(t: float, node: str, channel: str, e: Any) -> None:
        nonlocal false_dead, suspects
        if isinstance(e, MemberChanged):
            if e.member.state is MemberState.DEAD and sim.nodes[e.member.name].up:
                false_dead += 1
            elif e.member.state is MemberState.SUSPECT:
                suspects += 1

    send = sim.effect_handlers[Send]

    def counting_send(node: Any, channel: str, e: Send) -> None:
        nonlocal bytes_sent, msgs
        msgs += 1
        bytes_sent += membership_codec.size(e.msg)
        send(node, channel, e)

    sim.listeners.append(listen)
    sim.effect_handlers[Send] = counting_send
    wall = time.perf_counter()
    sim.run_for(seconds)
    wall = time.perf_counter() - wall
    return {
        "false_dead": false_dead,
        "suspect_events": suspects,
        "sim_seconds": seconds,
        "msgs_per_node_s": round(msgs / n / seconds, 2),
        "bytes_per_node_s": round(bytes_sent / n / seconds, 1),
        "sim_wall_s": round(wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", default="16,256")
    ap.add_argument("--kills", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--loss", type=float, default=0.1)
    ap.add_argument("--long", default="16=3600,256=600", help="N=SECONDS,... (else 600)")
    ap.add_argument(
        "--set", nargs="*", default=[], help="config overrides, e.g. membership.gossip_nodes=4"
    )
    args = ap.parse_args()
    # Values as in meshd.toml (numbers typed, "250ms" a duration), keys as in `--set`.
    overrides: dict[str, Any] = dict(config_files.parse_assignment(item) for item in args.set)
    cfg = config_files.load(None, "lan", overrides)
    long_s = {int(k): float(v) for k, v in (x.split("=") for x in args.long.split(",") if x)}
    for n in (int(x) for x in args.nodes.split(",")):
        wall = time.perf_counter()
        times = detection(n, cfg, args.loss, args.kills, args.seeds)
        figures = long_run(n, cfg, args.loss, long_s.get(n, 600.0))
        line = {
            "bench": "membership",
            "nodes": n,
            "loss": args.loss,
            "detect_all_p50_s": round(statistics.median(times), 2),
            "detect_all_max_s": round(max(times), 2),
            "kills": len(times),
            **figures,
            "wall_s": round(time.perf_counter() - wall, 1),
        }
        if overrides:
            line["overrides"] = overrides
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
