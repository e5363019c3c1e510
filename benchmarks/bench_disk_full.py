"""Full disks under the real shells: lost acknowledged placements, crashes, probe cost.

Two parts, one JSON line per figure:

* **scenarios**: the simulator's random fault schedules (``tests/sim/test_shell_sim.py``:
  crashes, partitions, loss) with at least one disk that fills up (every write fails:
  disk full, I/O error or read-only) and is freed again, on 3-6 nodes running the
  real placement shell and runner. After the mesh settles, every node restarts and
  settles again. Counted: scenarios run, crashes (a callback that raised, a node that
  asked to stop, an invariant broken), and *lost acknowledged placements*: a
  ``submit`` that returned "placed" whose owner's disk does not hold the allocation
  (goal 0). Also how many submissions were refused while disks were full.
* **probe**: what ``GET /v1/health`` now costs in store work: one fsynced write
  transaction (``meshd.adapters.store.probe``), against the ``SELECT 1`` it replaced.

Usage: .venv/bin/python benchmarks/bench_disk_full.py [--seeds 60] [--probes 300] [--dir PATH]
The probe directory must be on the disk you care about: on tmpfs, fsync is free.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meshd.adapters.store import probe  # noqa: E402
from meshd.adapters.store.db import Store  # noqa: E402
from tests.faults.store import Fault  # noqa: E402
from tests.sim import test_shell_sim  # noqa: E402
from tests.sim.shells import ShellSim  # noqa: E402
from tests.sim.test_store_fault_sim import SETTLE, _promises_kept  # noqa: E402


def _scenario(seed: int) -> dict[str, int]:
    """One random schedule with a disk fault forced in (its own generator)."""
    original = ShellSim.__init__
    forced = random.Random(f"{seed}/bench-disk")

    def init(self: ShellSim, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        names = list(self.nodes)
        for _ in range(forced.randint(1, 2)):
            x, t = forced.choice(names), forced.uniform(0.0, 5.0)
            self.at(t, self.disk_full, x, forced.choice(list(Fault)))
            self.at(t + forced.uniform(0.2, 3.0), self.disk_ok, x)

    ShellSim.__init__ = init  # type: ignore[method-assign]
    try:
        sim, problems = test_shell_sim.random_run(seed, "lagged")
    finally:
        ShellSim.__init__ = original  # type: ignore[method-assign]
    try:
        lost = [p for p in problems if "reported placed" in p] + _promises_kept(sim)
        for name in sim.nodes:
            sim.at(sim.now + 0.1, sim.restart, name)
        sim.run_until(sim.now + SETTLE)
        after = sim.final_problems()
        lost += [p for p in after if "reported placed" in p] + _promises_kept(sim)
        crashes = [p for p in [*problems, *after] if "raised" in p or "stop" in p or "breach" in p]
        refused = sum(1 for s in sim.submissions if s.error and "store can't write" in s.error)
        failures = sum(sim.disk(n).failures for n in sim.nodes)
        return {
            "lost": len(lost),
            "crashes": len(crashes),
            "problems": len(problems) + len(after),
            "refused": refused,
            "placed": sum(1 for s in sim.submissions if s.result is not None),
            "write_failures": failures,
        }
    finally:
        sim.close()


def scenarios(seeds: int) -> None:
    totals: dict[str, int] = {}
    start = time.perf_counter()
    for seed in range(seeds):
        for key, value in _scenario(seed).items():
            totals[key] = totals.get(key, 0) + value
    elapsed = time.perf_counter() - start
    print(json.dumps({"figure": "disk_full_scenarios", "value": seeds, "unit": "runs"}))
    print(json.dumps({"figure": "disk_full_crashes", "value": totals["crashes"]}))
    print(
        json.dumps(
            {
                "figure": "disk_full_lost_acknowledged_placements",
                "value": totals["lost"],
                "goal": 0,
                "placed": totals["placed"],
            }
        )
    )
    print(json.dumps({"figure": "disk_full_other_problems", "value": totals["problems"]}))
    print(
        json.dumps(
            {
                "figure": "disk_full_refused_submissions",
                "value": totals["refused"],
                "store_write_failures": totals["write_failures"],
                "seconds": round(elapsed, 1),
            }
        )
    )


def _timings(fn: object, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append((time.perf_counter() - t) * 1e6)
    return sorted(out)


def probe_cost(directory: Path, n: int) -> None:
    with Store.open(directory / "meshd.db") as store:
        for _ in range(10):
            probe.probe(store, 1, time.time())
        write = _timings(lambda: probe.probe(store, 1, time.time()), n)
        read = _timings(lambda: store.scalar("SELECT 1"), n)
    for name, xs in (("health_probe_write", write), ("health_select_1_anchor", read)):
        print(
            json.dumps(
                {
                    "figure": name,
                    "median_us": round(statistics.median(xs), 1),
                    "p99_us": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))], 1),
                    "n": n,
                }
            )
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=60)
    ap.add_argument("--probes", type=int, default=300)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        probe_cost(Path(d), args.probes)
    scenarios(args.seeds)


if __name__ == "__main__":
    main()
