"""Which bid wins: the deterministic tie-break matrix (DESIGN.md §6, step 3).

Positive bids are ordered by, in turn:

====  =====================  ===========================================================
 #    criterion              prefers
====  =====================  ===========================================================
 1    score                  the higher score (:mod:`.scoring`)
 2    tenant spread          fewer workloads of the request's tenant on the bidder
 3    free memory            more free memory on the bidder
 4    neighbour density      fewer workloads in total on the bidder
 5    hash                   the smaller SHA-256 of ``round id, NUL, node name``
====  =====================  ===========================================================

Every criterion is a fact the bid itself carries (the bidder reports its tenant
count, free memory and workload count), and the last one is a hash of names every
node knows, so the order is a pure function of the set of bids and the round id:
every node given the same bids picks the same winner, whatever order they arrived
in. The hash differs per round, so among identical idle nodes the first pick
rotates instead of always falling on the same name. Bids of -1 never rank.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from meshd.core.auction.messages import Bid


def tiebreak_hash(round_id: str, node: str) -> bytes:
    return hashlib.sha256(f"{round_id}\0{node}".encode()).digest()


def sort_key(round_id: str, node: str, bid: Bid) -> tuple[int, int, int, int, bytes]:
    return (
        -bid.score,
        bid.tenant_count,
        -bid.mem_free,
        bid.workloads,
        tiebreak_hash(round_id, node),
    )


def rank(bids: Mapping[str, Bid], round_id: str) -> list[str]:
    """The bidders with a positive score, best first."""
    positive = [(sort_key(round_id, node, b), node) for node, b in bids.items() if b.score > 0]
    positive.sort()
    return [node for _, node in positive]


def winner(bids: Mapping[str, Bid], round_id: str) -> str | None:
    order = rank(bids, round_id)
    return order[0] if order else None
