"""The originator's bookkeeping: live auctions, their rounds, and the sentences of failure.

An *auction* is what one ``submit`` started; it runs one or more *rounds* (a new round
when a sample found no fit, when both awards failed, or when concurrent holds made
every candidate busy). Both are mutable and private to the originator; what leaves the
node is a frozen :class:`~meshd.core.auction.model.RoundRecord` snapshot.

The failure sentences are what a client reads, so each names the workload's size, how
many candidates answered, and each refusal::

    no node has capacity for 4 cpus, 2 GiB memory (5 of 5 answered: n1: not enough
    memory: 1.5 GiB free of 2 GiB asked; ...)
    no candidate answered within 250 ms
    no award was accepted: n3 refused (not enough memory: ...); n2 did not answer its
    award (no answer within 1 s)
    constraint unsatisfiable: no alive member among n7, n8
"""

from __future__ import annotations

import math

from meshd.core.auction.messages import Bid
from meshd.core.auction.model import (
    COLLECTING,
    AwardRecord,
    BidRecord,
    RoundRecord,
    Workload,
)

_LISTED = 5  # refusals named in a failure sentence before "and N more"


class Round:
    """One round of an auction, as it unfolds at the originator."""

    def __init__(
        self,
        rid: str,
        seq: int,
        candidates: tuple[str, ...],
        now: float,
        deadline: float,
        exhaustive: bool,
    ) -> None:
        self.rid, self.seq, self.candidates, self.started = rid, seq, candidates, now
        self.deadline, self.exhaustive = deadline, exhaustive
        self.bids: dict[str, Bid] = {}
        self.bid_at: dict[str, float] = {}
        self.ranked: list[str] = []
        self.next_idx = 0  # the next bidder in `ranked` to award
        self.awards: list[AwardRecord] = []
        self.award_deadline = math.inf
        self.resend_at = math.inf  # when the pending award goes out again (datagram)
        self.resend_gap = 0.0
        self.state = COLLECTING
        self.reason = ""
        self.closed_at: float | None = None

    def settle(self, outcome: str, why: str) -> None:
        """Record the outcome of the last award; its timers stop."""
        self.award_deadline = self.resend_at = math.inf
        last = self.awards[-1]
        self.awards[-1] = AwardRecord(last.node, last.generation, outcome, why)

    def pending_award(self) -> AwardRecord | None:
        if self.awards and self.awards[-1].outcome == "pending":
            return self.awards[-1]
        return None


class Auction:
    """Everything one ``submit`` started."""

    def __init__(self, aid: str, workload: Workload, members: tuple[str, ...], now: float) -> None:
        self.id, self.workload, self.members, self.started = aid, workload, members, now
        self.attempt = 1  # widening level for candidates.select
        self.seq = 0  # rounds started
        self.round: Round | None = None
        self.rounds: list[str] = []
        self.excluded: set[str] = set()  # said no, refused or fell silent on an award
        self.retry_at = math.inf
        self.reasons: list[str] = []
        # The workload's NIC addresses are still being claimed: rounds run and rank their
        # bids, but nothing is awarded until Auctioneer.fix gives the workload with them.
        self.pending = False


def snapshot(a: Auction, r: Round, originator: str) -> RoundRecord:
    w = a.workload
    bids = tuple(
        BidRecord(
            n, b.score, b.reason, b.tenant_count, b.mem_free, b.workloads, r.bid_at[n], b.busy
        )
        for n, b in r.bids.items()
    )
    won = next((x for x in r.awards if x.outcome == "accepted"), None)
    return RoundRecord(
        r.rid,
        a.id,
        r.seq,
        w,
        originator,
        r.started,
        r.candidates,
        bids,
        tuple(r.awards),
        r.state,
        won.node if won else None,
        won.generation if won else None,
        r.reason,
        r.closed_at,
    )


def explain(w: Workload, r: Round, window_s: float) -> str:
    """Why a round placed nothing, in one sentence."""
    failed = [x for x in r.awards if x.outcome != "accepted"]
    if failed:
        return "no award was accepted: " + "; ".join(
            f"{x.node} refused ({x.reason})"
            if x.outcome == "refused"
            else f"{x.node} did not answer its award ({x.reason})"
            for x in failed
        )
    asked, answered = len(r.candidates), len(r.bids)
    if not answered:
        return f"no candidate answered within {window_s * 1000:g} ms"
    neg = sorted((n, b.reason) for n, b in r.bids.items() if b.score <= 0)
    listed = "; ".join(f"{n}: {why}" for n, why in neg[:_LISTED])
    if len(neg) > _LISTED:
        listed += f"; and {len(neg) - _LISTED} more"
    silent = [c for c in r.candidates if c not in r.bids]
    if silent:
        more = "..." if len(silent) > _LISTED else ""
        listed += f"; no answer from {', '.join(silent[:_LISTED])}{more}"
    unmet = [why for _, why in neg if is_requirement(why)]
    if unmet and len(unmet) == len(neg) and not silent:
        return (
            f"no node meets the workload's requirements ({answered} of {asked} answered: {listed})"
        )
    return (
        f"no node has capacity for {w.resources.describe()} "
        f"({answered} of {asked} answered: {listed})"
    )


def is_requirement(reason: str) -> bool:
    """Whether a -1 bid's reason is an unmet requirement (capabilities.unmet's words)."""
    return reason.startswith("lacks ") or reason.endswith("(anti-affinity)")


def unsatisfiable(w: Workload) -> str:
    c = w.constraints
    avoid = ", ".join(sorted(c.avoid))
    if c.nodes:
        among = ", ".join(sorted(c.nodes))
        tail = f" outside {avoid}" if avoid else ""
        return f"constraint unsatisfiable: no alive member among {among}{tail}"
    if avoid:
        return f"constraint unsatisfiable: no alive member outside {avoid}"
    return "no alive member to place it on"
