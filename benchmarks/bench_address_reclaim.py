"""How soon a removed workload's fixed address can be claimed again, in the simulator.

The scenario of tests/integration/test_addresses.py, on the real shells in the
deterministic simulator (``tests.sim.test_address_sim.reclaim_after_removal``): three
nodes started 0.7 s apart (so their address sweeps, every 2 s, run out of phase), a
workload holding 10.40.0.9 removed, then a new submission asking for 10.40.0.9 every
``--every`` s from another node. Each removal moment (``--offsets`` of them, spread over
one sweep period) and each link (all fast; or one voter answering in 50-80 ms) is one
case. Per case it prints how many submissions were refused before one won, when the
winner was submitted (seconds after the removal; null: none won), and how many grants
to refused submissions the voters still held at the end (they deny the address to
everyone else until ``addresses.grant_ttl_s``, 120 s). A summary line per link follows.

Virtual time: the figures don't depend on the machine.

Run: .venv/bin/python benchmarks/bench_address_reclaim.py [--offsets 16] [--tries 12]
     [--every 0.5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.sim.test_address_sim import reclaim_after_removal  # noqa: E402

REMOVED_AT = 12.0
SWEEP_S = 2.0  # the scenario's addresses.sweep_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--offsets", type=int, default=16)
    ap.add_argument("--tries", type=int, default=12)
    ap.add_argument("--every", type=float, default=0.5)
    args = ap.parse_args()
    for slow in (False, True):
        won_after: list[float] = []
        leaked = 0
        for i in range(args.offsets):
            offset = SWEEP_S * i / args.offsets
            tries, left = reclaim_after_removal(
                REMOVED_AT + offset, slow=slow, tries=args.tries, every_s=args.every
            )
            won = [k for k, s in enumerate(tries) if s.result is not None]
            after = None if not won else round(0.05 + won[0] * args.every, 2)
            if after is not None:
                won_after.append(after)
            leaked += len(left)
            case = {
                "case": "reclaim",
                "slow_voter": slow,
                "offset_s": round(offset, 3),
                "refused_before_win": won[0] if won else len(tries),
                "won_submitted_after_s": after,
                "grants_left": len(left),
            }
            print(json.dumps(case), flush=True)
        won_after.sort()
        summary = {
            "case": "summary",
            "slow_voter": slow,
            "cases": args.offsets,
            "never_won": args.offsets - len(won_after),
            "won_after_s_median": won_after[len(won_after) // 2] if won_after else None,
            "won_after_s_max": won_after[-1] if won_after else None,
            "grants_left": leaked,
        }
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
