"""The auction state machine: one per node, originator and bidder at once.

Theory of operation
-------------------
DESIGN.md §6, step by step, with the crash semantics the simulator checks:

1. **Request.** ``submit`` picks candidates (:mod:`.candidates`: everyone in a small
   mesh, ``d·log2 N`` at random in a large one) and sends each a ``BidRequest``
   datagram. The originator bids for itself in-process when it is a candidate.
2. **Bid.** A candidate scores the request (:mod:`.scoring`) against its ledger —
   committed allocations plus unexpired holds — and its telemetry. A positive bid
   first persists a **hold** (``auction.hold_ttl_s``), then leaves; a new request
   for the same workload replaces an older hold.
3. **Close.** When every candidate answered, or at ``auction.window_s``, the bids are
   ranked (:mod:`.ranking`). The losers' holds are released by the confirmation that
   every member receives anyway (no extra message); a round that places nothing sends
   ``Release`` to its positive bidders. A *pending* auction (``submit(pending=True)``:
   the spec's NIC addresses are being claimed meanwhile) stops here, ``closed``, until
   :meth:`Auctioneer.fix` gives it the workload with them; :meth:`Auctioneer.abandon`
   fails it instead and releases its bidders' holds.
4. **Award.** Each award gets a fresh **generation** (one above any this node ever
   awarded or saw placed for the workload), recorded durably *before* the ``Award``
   leaves, so a restarted originator never hands one generation to two nodes. The
   winner re-checks (its hold, its telemetry), commits the allocation durably and
   answers ``Accept`` — or ``Refuse`` with a reason. An award that fits one datagram
   travels as one and goes out again after ``auction.award_resend_s``, then twice
   that, until answered; the winner answers every copy (a repeated award of what it
   committed is accepted again), so a lost award or answer costs one resend, not the
   next-best bidder. A larger award goes over mTLS. On a refusal, or silence for
   ``auction.award_timeout_s`` (the award is then withdrawn with ``Revoke``), the
   next-best bidder is awarded; after two awards, a new round.
5. **Confirm.** On ``Accept`` the originator records the placement, broadcasts
   ``Confirm`` and resolves the client with ``Decided``. Every node merges it into
   its view (highest generation wins; at one generation the smaller (owner, round)
   wins, the same on every node, so two owners for one generation, from two
   originators in a partition or a winner that confirmed itself, resolve into one: the
   losing owner releases and stops its side, and nothing stops the daemon); losers drop
   their holds; an owner of an older generation releases and stops it; the winner
   starts it (``Start``). An award names its winner, and a node commits only an award
   for a round it bid in, so a copied award commits nothing anywhere else.

Where meshd departs from the design's letter
---------------------------------------------
* **Winner-side confirmation.** A winner that accepted but sees no confirmation
  within ``auction.confirm_timeout_s`` first asks the originator again: it re-sends
  its ``Accept`` (twice, half a timeout apart), which a live originator answers with
  the ``Confirm``, or with ``Revoke`` if it withdrew the award meanwhile (a winner
  that crashed before its ``Accept`` left misses the first ``Revoke``). With no
  answer after that it broadcasts the placement itself: an originator crash after
  the award loses no accepted workload. The timeout exceeds the award timeout, so a
  live originator that gave up on a slow winner revokes first. (A partition that
  swallows the ``Accept``, the ``Revoke`` and the asks can still let a workload
  appear after its client saw ``Failed``; it never runs twice for long: the higher
  generation wins and the other owner stops.)
* **No DHT copy of placements, and one signature on a confirmation.** The design
  has the originator also publish each placement in the DHT, signed by originator
  and winner. Every node already holds the whole view (direct confirmations, gossip,
  digest anti-entropy), so a DHT record would be a third copy at the cost of a
  Kademlia store per decision; the DHT carries services, the lookup that needs it.
  A ``Confirm`` is signed by its sender only: the winner's word is its own signed
  ``Accept`` to the originator, and a node named owner of a placement it never
  accepted holds no allocation for it, logs that, and runs nothing.
* **Busy retries.** A round in which every "no" came from capacity *held* by
  concurrent rounds (``Bid.busy``) is retried after about one window for up to
  ``auction.hold_ttl_s``, without using up ``auction.max_rounds``: those holds
  resolve within an award timeout, and failing the client would be wrong.
* **Abandoned rounds.** A restarted originator marks its unfinished rounds
  abandoned (their holds expire). An ``Accept`` that still arrives for such a round
  is confirmed, not wasted; one for an award it withdrew is answered ``Revoke``, and
  so is one for a round too old to remember unless the view holds that award.
* **Idempotency.** ``submit`` of a placed workload id returns ``Decided`` at once;
  of one already in an auction here, that auction's id. The shell must send one
  workload id to one originator (it maps client idempotency keys to ids).
* Anti-entropy is driven by the shell through :meth:`anti_entropy`: every
  ``auction.sync_interval_s`` it sends one random member a ``Digest`` of the view
  (:mod:`.digest`, bucket sums). The member answers with its own ``Digest`` and a
  ``Sync`` of the placements in the buckets that differ; the first node then sends
  its placements of the buckets that still differ. Both merge, so both converge,
  and a node at rest sends one datagram per exchange, not its whole view. A node
  that hears a stale ``Confirm`` answers with the newer placement at once.

``now`` is wall-clock seconds: hold expiries and commit times are persisted.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

from meshd.config import AuctionConfig
from meshd.core.auction import candidates, codec, ranking
from meshd.core.auction.bidder import Bidder, clip
from meshd.core.auction.capabilities import SIMULATED, Capabilities, Requirements
from meshd.core.auction.digest import COUNTS, ViewDigest
from meshd.core.auction.durable import DurableState, PlacementRecorded, RoundRecorded
from meshd.core.auction.effects import Broadcast, Decided, Effect, Failed, Persist, Send
from meshd.core.auction.messages import (
    Accept,
    AuctionMsg,
    Award,
    Bid,
    BidRequest,
    Confirm,
    Digest,
    Refuse,
    Release,
    Revoke,
    Sync,
)
from meshd.core.auction.model import (
    ABANDONED,
    AWARDING,
    CLOSED,
    COLLECTING,
    DECIDED,
    FAILED,
    FINAL_STATES,
    WAITING,
    Allocation,
    AwardRecord,
    Capacity,
    Ledger,
    Placement,
    Resources,
    RoundRecord,
    Telemetry,
    Workload,
)
from meshd.core.auction.rounds import Auction, Round, explain, snapshot, unsatisfiable

# A size, not a timing: awards per round (the winner, then the next-best).
AWARDS_PER_ROUND = 2
CONFIRM_ASKS = 2  # Accepts a winner re-sends before it confirms the placement itself


def _positive(r: Round) -> list[str]:
    """The bidders of ``r`` that bid (and so hold capacity for it)."""
    return [node for node, b in r.bids.items() if b.score > 0]


def _supersedes(p: Placement, cur: Placement) -> bool:
    """At one generation: a removal beats a placement (a removal and a re-placement
    from two nodes may meet there), and otherwise the smaller (owner, round) wins, so
    every node keeps the same entry and the views' digests agree. Two placements that
    name two owners for one generation (two originators in a partition, a node that
    confirmed its own award) are a conflict the view resolves the same way everywhere:
    the losing owner meets the winning placement and releases its side."""
    if p.removed != cur.removed:
        return p.removed
    return (p.owner, p.round) < (cur.owner, cur.round)


class Auctioneer:
    """One node's auction core. Feed it submits, messages and ticks; run its effects.

    Call :meth:`tick` whenever the clock reaches :meth:`next_deadline` (early is
    harmless) and re-read the deadline after every call.
    """

    def __init__(
        self,
        cfg: AuctionConfig,
        name: str,
        capacity: Capacity,
        rng: random.Random,
        now: float,
        log: logging.Logger,
        witness: bool = False,
        capabilities: Capabilities = SIMULATED,
    ) -> None:
        self._cfg, self._name, self._rng, self._log = cfg, name, rng, log
        self._book = Bidder(cfg, name, capacity, log, witness, capabilities)
        self._view: dict[str, Placement] = {}
        self._digest = ViewDigest()
        # The first member whose Digest matched our view (None: none yet): a node that
        # was fenced, or lost power, knows from then on which of its workloads moved.
        self.synced_with: str | None = None
        self._auctions: dict[str, Auction] = {}
        self._by_round: dict[str, Auction] = {}
        self._records: dict[str, RoundRecord] = {}
        self._gen_floor: dict[str, int] = {}  # highest generation awarded or seen, per id
        self._pending: list[Effect] = []  # owed by restore(), emitted at the first tick
        self._pending_at = now

    @classmethod
    def restore(
        cls,
        cfg: AuctionConfig,
        name: str,
        capacity: Capacity,
        rng: random.Random,
        now: float,
        log: logging.Logger,
        durable: DurableState,
        witness: bool = False,
        capabilities: Capabilities = SIMULATED,
    ) -> Auctioneer:
        """Rebuild after a restart from what the Persist effects recorded."""
        core = cls(cfg, name, capacity, rng, now, log, witness, capabilities)
        core._view = dict(durable.placements)
        core._digest = ViewDigest(core._view.values())
        for p in core._view.values():
            core._raise_floor(p.workload_id, p.generation)
        for wid, gen in durable.floors.items():
            core._raise_floor(wid, gen)
        core._book.restore(durable, now, core._pending)
        for rec in durable.rounds.values():
            for aw in rec.awards:
                core._raise_floor(rec.workload_id, aw.generation)
            if rec.state not in FINAL_STATES:
                why = "the originator restarted during the round"
                gone = dataclasses.replace(rec, state=ABANDONED, reason=why, closed_at=now)
                core._pending.append(Persist(RoundRecorded(gone)))
                rec = gone  # noqa: PLW2901 - remember the abandoned version
            core._remember(rec)
        log.info(
            "auction restored holds=%d allocations=%d placements=%d rounds=%d",
            len(core._book.holds),
            len(core._book.allocs),
            len(core._view),
            len(core._records),
        )
        return core

    # -- public API ------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    def set_telemetry(self, t: Telemetry) -> None:
        self._book.telemetry = t

    def set_draining(self, r: Resources) -> None:
        """What released workloads still use here until they are destroyed."""
        self._book.draining = r

    def set_idle(self, idle: Mapping[str, Resources]) -> None:
        """What allocations here don't use now, by workload id (stopped: CPU and memory;
        failed: all): lent to new bids until the workload runs again."""
        self._book.set_idle(idle)

    def lend(self, wid: str, r: Resources | None) -> None:
        """One workload's part of :meth:`set_idle` (None: it runs again, or is gone)."""
        self._book.lend(wid, r)

    def resume_fits(self, wid: str) -> str | None:
        """None if the idle workload ``wid`` may run again here, else why not."""
        return self._book.resume_fits(wid)

    def set_unwritable(self, reason: str | None) -> None:
        """Why this node's store can't write now (None: it can again).

        Meanwhile the node answers every request with a refusal that says so and refuses
        every award (a repeat of one already committed excepted: that one is on disk).
        """
        self._book.unwritable = None if reason is None else clip(reason)

    def set_capabilities(self, capabilities: Capabilities) -> None:
        """What this node offers from now on (networks come and go); later bids use it."""
        self._book.capabilities = capabilities

    def set_maintenance(self, reason: str | None) -> None:
        """Why the operator drained this node (None: it may bid again).

        Meanwhile the node bids on nothing and refuses every award, saying why; what it
        already holds stays until a newer generation is placed elsewhere.
        """
        self._book.maintenance = None if reason is None else clip(reason)

    @property
    def unwritable(self) -> str | None:
        return self._book.unwritable

    def submit(
        self,
        workload: Workload,
        members: Sequence[str],
        now: float,
        *,
        supersede: bool = False,
        batch: candidates.Batch | None = None,
        pending: bool = False,
    ) -> tuple[str, list[Effect]]:
        """Start an auction; returns its id (``Decided``/``Failed`` carry it) and effects.

        ``members`` are the alive members' names, this node included. ``supersede``
        re-places a placed workload at a higher generation (after fencing its owner).
        Auctions submitted with one ``batch`` ask the same first-round sample.
        ``pending``: the workload's NIC addresses are being claimed meanwhile; its rounds
        collect and rank bids (which need no address) but award nothing until
        :meth:`fix` gives the workload with them, or :meth:`abandon` ends it.
        """
        placed = self._view.get(workload.id)
        if placed is not None and not placed.removed and not supersede:
            return placed.round, [Decided(placed.round, placed)]
        for a in self._auctions.values():
            if a.workload.id == workload.id:
                return a.id, []
        aid = f"{self._name}-{self._rng.getrandbits(48):012x}"
        a = Auction(aid, workload, tuple(members), now)
        a.pending = pending
        self._auctions[aid] = a
        self._log.debug(
            "auction submit id=%s workload=%s resources=%r",
            aid,
            workload.id,
            workload.resources.describe(),
        )
        out: list[Effect] = []
        self._start_round(a, now, out, batch)
        return aid, out

    def fix(self, aid: str, workload: Workload, now: float) -> list[Effect]:
        """A pending auction's workload with its NIC addresses fixed: it may be awarded
        now (at once if its round already closed). Nothing for an auction that ended."""
        a = self._auctions.get(aid)
        if a is None or not a.pending:
            return []
        if workload.id != a.workload.id:
            raise ValueError(f"auction {aid} places {a.workload.id}, not {workload.id}")
        a.workload, a.pending = workload, False
        out: list[Effect] = []
        r, cfg = a.round, self._cfg
        if r is None or r.state != CLOSED:
            return out
        if now - r.started <= cfg.hold_ttl_s - 2 * cfg.award_timeout_s:
            self._award_next(a, now, out)
            return out
        # The claim took so long that the bidders' holds may lapse before two awards
        # are answered (their bids would be refused): ask for fresh bids instead.
        self._release_holds(
            r, _positive(r), "its bids grew old while the addresses were claimed", out
        )
        r.state, r.reason, r.closed_at = WAITING, "bids too old to award", now
        self._persist_round(a, r, out)
        self._start_round(a, now, out)
        return out

    def abandon(self, aid: str, why: str, now: float) -> list[Effect]:
        """End a pending auction whose addresses could not be had (``Failed`` with
        ``why``), freeing the holds of its current round's positive bids."""
        a = self._auctions.get(aid)
        if a is None or not a.pending:
            return []
        out: list[Effect] = []
        r = a.round
        if r is not None and r.state in (COLLECTING, CLOSED):
            self._release_holds(r, _positive(r), "the submission was refused", out)
        self._fail(a, why, now, out)
        return out

    def _release_holds(self, r: Round, nodes: Iterable[str], why: str, out: list[Effect]) -> None:
        """Free the holds ``nodes`` placed for their bids in ``r`` (none was awarded)."""
        for node in nodes:
            if node == self._name:
                self._book.release_hold(r.rid, why, out)
            else:
                out.append(Send(node, Release(r.rid), False))

    def receive(self, msg: AuctionMsg, sender: str, now: float) -> list[Effect]:
        """Handle one message the shell authenticated as coming from ``sender``."""
        out: list[Effect] = []
        m: object = msg
        if not sender or sender == self._name:
            self._log.debug("drop reason=bad-sender sender=%r", sender)
        elif isinstance(m, BidRequest):
            out.append(Send(sender, self._book.bid(m, sender, now, out), False))
        elif isinstance(m, Bid):
            self._on_bid(m, sender, now, out)
        elif isinstance(m, Award):
            self._on_award(m, sender, now, out)
        elif isinstance(m, Accept):
            self._on_accept(m, sender, now, out)
        elif isinstance(m, Refuse):
            self._on_refuse(m, sender, now, out)
        elif isinstance(m, Confirm):
            if self._adopt(m.placement, out) == "stale":
                self._confirm_to(sender, self._view[m.placement.workload_id], out)
        elif isinstance(m, Digest):
            count = len(m.sums)
            differing = self._digest.differing(m.sums) if count in COUNTS else frozenset()
            if count in COUNTS and not differing:
                self.synced_with = sender  # its view and ours hold the same placements
            if differing and not m.reply:  # answer at the sender's bucket count
                self._send_sized(sender, Digest(self._digest.sums(count), True), out)
            if differing:
                self._send_sync(sender, self._in_buckets(differing, count), out)
        elif isinstance(m, Sync):
            for p in m.placements:
                self._adopt(p, out)
            if not m.reply:
                self._send_sync(sender, tuple(self._view.values()), out)
        elif isinstance(m, Release):
            h = self._book.holds.get(m.round_id)
            if h is not None and h.originator == sender:
                self._book.release_hold(m.round_id, "released by the originator", out)
        elif isinstance(m, Revoke):
            self._book.revoke(m, sender, now, out)
        else:
            self._log.debug("drop reason=unknown-message type=%s from=%s", type(msg), sender)
        return out

    def tick(self, now: float) -> list[Effect]:
        """Run every timer that is due: holds, windows, awards, retries, confirmations."""
        out, self._pending = self._pending, []
        self._book.expire(now, out)
        for a in list(self._auctions.values()):
            r = a.round
            if r is None:
                continue
            if r.state == COLLECTING and now >= r.deadline:
                self._close(a, now, out)
            elif r.state == AWARDING and now >= r.award_deadline:
                self._award_silent(a, now, out)
            elif r.state == AWARDING and now >= r.resend_at:
                self._resend_award(a, r, now, out)
            elif r.state == WAITING and now >= a.retry_at:
                self._start_round(a, now, out)
        for wid, t in list(self._book.confirm_at.items()):
            if t <= now and wid in self._book.confirm_at:
                self._confirm_overdue(wid, now, out)
        return out

    def next_deadline(self) -> float:
        """The time by which :meth:`tick` must next run."""
        if self._pending:
            return self._pending_at
        d = self._book.next_deadline()
        for a in self._auctions.values():
            r = a.round
            if r is None:
                continue
            if r.state == COLLECTING:
                d = min(d, r.deadline)
            elif r.state == AWARDING:
                d = min(d, r.award_deadline, r.resend_at)
            elif r.state == WAITING:
                d = min(d, a.retry_at)
        return d

    def placements(self) -> Mapping[str, Placement]:
        """The mesh-wide view: workload id -> placement (highest generation known)."""
        return MappingProxyType(self._view)

    def ledger(self) -> Ledger:
        """Committed + held on this node, against its capacity."""
        return self._book.ledger()

    def allocation(self, workload_id: str) -> Allocation | None:
        """This node's allocation of one workload (without copying the whole ledger)."""
        return self._book.allocs.get(workload_id)

    def rounds(self) -> list[RoundRecord]:
        """History, oldest first: finished rounds and the live ones as they stand."""
        recs = dict(self._records)
        for a in self._auctions.values():
            if a.round is not None:
                recs[a.round.rid] = snapshot(a, a.round, self._name)
        return list(recs.values())

    def round_record(self, round_id: str) -> RoundRecord | None:
        """One round as it stands (live or finished), without copying the history."""
        a = self._by_round.get(round_id)
        if a is not None and a.round is not None and a.round.rid == round_id:
            return snapshot(a, a.round, self._name)
        return self._records.get(round_id)

    def remove(self, workload_id: str, now: float) -> tuple[Placement, list[Effect]]:
        """Remove a placed workload: a tombstone at the next generation, confirmed to all.

        Any node may remove; two concurrent removals write the same owner at the same
        generation, so they agree. Raises KeyError if the workload is not placed.
        """
        placed = self._view.get(workload_id)
        if placed is None or placed.removed:
            raise KeyError(workload_id)
        tomb = dataclasses.replace(
            placed,
            generation=self._next_generation(workload_id),
            round=f"{self._name}-rm{self._rng.getrandbits(40):010x}",
            originator=self._name,
            decided_at=now,
            removed=True,
        )
        out: list[Effect] = []
        self._adopt(tomb, out)
        out.append(Broadcast(Confirm(tomb)))
        self._log.info("auction removed workload=%s generation=%d", workload_id, tomb.generation)
        return tomb, out

    def anti_entropy(self, peer: str) -> list[Effect]:
        """Start an exchange with ``peer`` (the shell picks one at random): our digest."""
        out: list[Effect] = []
        self._send_sized(peer, Digest(self._digest.sums(), False), out)
        return out

    def _in_buckets(self, buckets: frozenset[int], count: int) -> tuple[Placement, ...]:
        return tuple(self._view[wid] for wid in self._digest.members(buckets, count))

    def _send_sync(self, to: str, placements: tuple[Placement, ...], out: list[Effect]) -> None:
        # In runs: one request body over mTLS is bounded (a new node may need the view).
        for chunk in codec.sync_chunks(placements):
            msg = Sync(chunk, True)
            out.append(Send(to, msg, len(chunk) > 4 or not codec.fits_datagram(msg)))

    def _confirm_to(self, to: str, p: Placement, out: list[Effect]) -> None:
        self._send_sized(to, Confirm(p), out)

    def _send_sized(self, to: str, msg: AuctionMsg, out: list[Effect]) -> None:
        """A datagram if ``msg`` fits one, else the reliable channel."""
        out.append(Send(to, msg, not codec.fits_datagram(msg)))

    # -- originator --------------------------------------------------------------------

    def _start_round(
        self, a: Auction, now: float, out: list[Effect], batch: candidates.Batch | None = None
    ) -> None:
        cfg, w = self._cfg, a.workload
        choose = candidates.select if batch is None else batch.select
        sel = choose(
            a.members,
            w.constraints,
            a.attempt,
            cfg.full_mesh_max,
            cfg.sample_d,
            cfg.max_rounds,
            self._rng,
            a.excluded,
        )
        if not sel.candidates:
            if sel.eligible == 0:
                why = unsatisfiable(w)
            else:
                why = a.reasons[-1] if a.reasons else "no eligible member left to ask"
            self._fail(a, why, now, out)
            return
        a.seq += 1
        rid = a.id if a.seq == 1 else f"{a.id}.{a.seq}"
        deadline = now + cfg.window_s
        r = Round(rid, a.seq, tuple(sel.candidates), now, deadline, sel.exhaustive)
        a.round, a.retry_at = r, math.inf
        a.rounds.append(rid)
        self._by_round[rid] = a
        req = BidRequest(rid, w.id, w.tenant, w.resources, cfg.window_s, Requirements.of(w.spec))
        for c in r.candidates:
            if c == self._name:
                r.bids[c], r.bid_at[c] = self._book.bid(req, c, now, out), now
            else:
                out.append(Send(c, req, False))
        if len(r.bids) == len(r.candidates):
            self._close(a, now, out)

    def _on_bid(self, m: Bid, sender: str, now: float, out: list[Effect]) -> None:
        a = self._by_round.get(m.round_id)
        r = a.round if a is not None else None
        if a is None or r is None or r.rid != m.round_id:
            late = True
        elif sender in r.bids:
            return  # a duplicate datagram
        else:
            late = r.state != COLLECTING or sender not in r.candidates
        if late:
            if m.score > 0:  # too late to count: free its hold now rather than at expiry
                out.append(Send(sender, Release(m.round_id), False))
            return
        assert a is not None and r is not None
        r.bids[sender], r.bid_at[sender] = m, now
        if len(r.bids) == len(r.candidates):
            self._close(a, now, out)

    def _close(self, a: Auction, now: float, out: list[Effect]) -> None:
        r = a.round
        assert r is not None
        r.ranked = ranking.rank(r.bids, r.rid)
        if a.pending and r.ranked:
            r.state = CLOSED  # fix() awards it once the addresses are fixed
            return
        self._award_next(a, now, out)

    def _award_next(self, a: Auction, now: float, out: list[Effect]) -> None:
        r, w = a.round, a.workload
        assert r is not None
        while r.next_idx < min(len(r.ranked), AWARDS_PER_ROUND):
            node = r.ranked[r.next_idx]
            r.next_idx += 1
            gen = self._next_generation(w.id)
            r.awards.append(AwardRecord(node, gen))
            r.state = AWARDING
            self._persist_round(a, r, out)  # durable before the award leaves
            if node != self._name:
                r.award_deadline = now + self._cfg.award_timeout_s
                r.resend_gap = self._cfg.award_resend_s
                r.resend_at = now + r.resend_gap
                award = Award(r.rid, w, gen, node)
                self._send_sized(node, award, out)
                return
            placed = self._view.get(w.id)
            why = self._book.accept_award(r.rid, w, gen, node, placed, now, out)
            if why is None:
                r.settle("accepted", "")
                self._decide(a, node, gen, now, out)
                return
            r.settle("refused", why)
            a.excluded.add(node)
        self._round_over(a, now, out)

    def _resend_award(self, a: Auction, r: Round, now: float, out: list[Effect]) -> None:
        aw = r.pending_award()
        if aw is None:
            r.resend_at = math.inf
            return
        r.resend_gap *= 2
        r.resend_at = now + r.resend_gap
        award = Award(r.rid, a.workload, aw.generation, aw.node)
        self._send_sized(aw.node, award, out)
        self._log.debug("auction award-resend round=%s node=%s", r.rid, aw.node)

    def _award_silent(self, a: Auction, now: float, out: list[Effect]) -> None:
        r = a.round
        assert r is not None
        aw = r.awards[-1]
        r.settle("silent", f"no answer within {self._cfg.award_timeout_s:g} s")
        a.excluded.add(aw.node)
        out.append(Send(aw.node, Revoke(r.rid, a.workload.id, aw.generation), True))
        self._log.info(
            "auction award-silent round=%s node=%s generation=%d", r.rid, aw.node, aw.generation
        )
        self._award_next(a, now, out)

    def _on_award(self, m: Award, sender: str, now: float, out: list[Effect]) -> None:
        w, gen = m.workload, m.generation
        if m.winner != self._name:
            # A copy of another node's award (the signature is the originator's, so it
            # verifies anywhere): never commit what was awarded to someone else.
            self._log.warning(
                "auction award-for-another round=%s winner=%s from=%s", m.round_id, m.winner, sender
            )
            return
        placed = self._view.get(w.id)
        why = self._book.accept_award(m.round_id, w, gen, sender, placed, now, out)
        if why is None:
            out.append(Send(sender, Accept(m.round_id, w.id, gen), False))
        else:
            out.append(Send(sender, Refuse(m.round_id, w.id, gen, clip(why)), False))

    def _current(self, round_id: str, sender: str, gen: int) -> Auction | None:
        """The live auction whose pending award to ``sender`` at ``gen`` this answers."""
        a = self._by_round.get(round_id)
        r = a.round if a is not None else None
        if r is None or r.rid != round_id or r.state != AWARDING:
            return None
        aw = r.pending_award()
        if aw is None or aw.node != sender or aw.generation != gen:
            return None
        return a

    def _on_accept(self, m: Accept, sender: str, now: float, out: list[Effect]) -> None:
        a = self._current(m.round_id, sender, m.generation)
        if a is None:
            self._late_accept(m, sender, now, out)
            return
        assert a.round is not None
        a.round.settle("accepted", "")
        self._decide(a, sender, m.generation, now, out)

    def _on_refuse(self, m: Refuse, sender: str, now: float, out: list[Effect]) -> None:
        a = self._current(m.round_id, sender, m.generation)
        if a is None or a.round is None:
            return
        a.round.settle("refused", m.reason)
        a.excluded.add(sender)
        self._award_next(a, now, out)

    def _ours(self, round_id: str) -> bool:
        """Whether ``round_id`` names a round this node started (``submit``'s form)."""
        head, _, rest = round_id.partition(".")
        return (
            head.startswith(f"{self._name}-")
            and len(head) == len(self._name) + 13
            and all(c in "0123456789abcdef" for c in head[-12:])
            and (not rest or rest.isdigit())
        )

    def _late_accept(self, m: Accept, sender: str, now: float, out: list[Effect]) -> None:
        """An Accept for an award this node no longer waits for."""
        rec = self._records.get(m.round_id)
        cur = self._view.get(m.workload_id)
        if rec is None and self._ours(m.round_id):
            # A round of ours too old to remember (auction.rounds_keep): had it ended
            # with this award, the view would hold it; so it did not. Say which.
            if cur is not None and (cur.owner, cur.generation) == (sender, m.generation):
                self._confirm_to(sender, cur, out)
            else:
                out.append(Send(sender, Revoke(m.round_id, m.workload_id, m.generation), True))
            return
        awards = rec.awards if rec is not None else ()
        aw = next((x for x in awards if (x.node, x.generation) == (sender, m.generation)), None)
        if rec is None or aw is None:
            self._log.warning("auction unknown-accept round=%s from=%s", m.round_id, sender)
            return
        if aw.outcome == "accepted":  # a repeat: the winner may have missed the Confirm
            if cur is not None and (cur.owner, cur.generation) == (sender, m.generation):
                self._confirm_to(sender, cur, out)
            return
        live = any(x.workload.id == m.workload_id for x in self._auctions.values())
        if aw.outcome != "pending" or rec.state != ABANDONED or live:
            out.append(Send(sender, Revoke(m.round_id, m.workload_id, m.generation), True))
            return
        # The award of a round this node abandoned when it restarted: confirm it.
        if cur is not None and cur.generation >= m.generation:
            if cur.generation > m.generation:
                self._confirm_to(sender, cur, out)
            return
        p = Placement(rec.workload, sender, m.generation, rec.round_id, self._name, now)
        won = tuple(dataclasses.replace(x, outcome="accepted") if x is aw else x for x in awards)
        rec = dataclasses.replace(
            rec, awards=won, state=DECIDED, winner=sender, generation=m.generation, closed_at=now
        )
        self._remember(rec)
        out.append(Persist(RoundRecorded(rec)))
        self._adopt(p, out)
        out.append(Broadcast(Confirm(p)))
        out.append(Decided(rec.auction_id, p))

    def _round_over(self, a: Auction, now: float, out: list[Effect]) -> None:
        """No award of this round was accepted: widen, retry or fail."""
        r, cfg = a.round, self._cfg
        assert r is not None
        # Positive bids never awarded: free their holds.
        self._release_holds(r, r.ranked[r.next_idx :], "the round placed nothing", out)
        busy = False
        for node, b in r.bids.items():
            if b.score <= 0:
                busy = busy or b.busy
                if not b.busy:
                    a.excluded.add(node)
        silent = len(r.bids) < len(r.candidates)
        why = explain(a.workload, r, cfg.window_s)
        a.reasons.append(why)
        r.reason, r.closed_at = why, now
        if a.attempt < cfg.max_rounds and (not r.exhaustive or silent or r.ranked):
            a.attempt += 1
            a.retry_at = now
        elif busy and now - a.started < cfg.hold_ttl_s:
            # Only holds of concurrent rounds said no; they resolve within an award timeout.
            a.retry_at = now + cfg.window_s * (0.5 + self._rng.random())
        else:
            self._fail(a, why, now, out)
            return
        r.state = WAITING
        self._persist_round(a, r, out)
        if a.retry_at <= now:
            self._start_round(a, now, out)

    def _decide(self, a: Auction, owner: str, gen: int, now: float, out: list[Effect]) -> None:
        r, w = a.round, a.workload
        assert r is not None
        p = Placement(w, owner, gen, r.rid, self._name, now)
        r.state, r.closed_at = DECIDED, now
        self._persist_round(a, r, out)
        if self._adopt(p, out) != "stale":  # a newer generation (a removal) came first
            out.append(Broadcast(Confirm(p)))
        out.append(Decided(a.id, p))
        self._log.info(
            "auction decided id=%s workload=%s owner=%s generation=%d", a.id, w.id, owner, gen
        )
        self._finish(a)

    def _fail(self, a: Auction, why: str, now: float, out: list[Effect]) -> None:
        r = a.round
        if r is None:  # nobody could even be asked: still leave a record
            r = a.round = Round(a.id, 0, (), now, now, True)
        r.state, r.reason, r.closed_at = FAILED, why, now
        self._persist_round(a, r, out)
        out.append(Failed(a.id, why))
        self._log.info("auction failed id=%s workload=%s reason=%r", a.id, a.workload.id, why)
        self._finish(a)

    def _finish(self, a: Auction) -> None:
        self._auctions.pop(a.id, None)
        for rid in a.rounds:
            self._by_round.pop(rid, None)

    def _next_generation(self, wid: str) -> int:
        placed = self._view.get(wid)
        gen = max(self._gen_floor.get(wid, 0), placed.generation if placed else 0) + 1
        self._gen_floor[wid] = gen
        return gen

    def _raise_floor(self, wid: str, gen: int) -> None:
        self._gen_floor[wid] = max(self._gen_floor.get(wid, 0), gen)

    def _persist_round(self, a: Auction, r: Round, out: list[Effect]) -> None:
        rec = snapshot(a, r, self._name)
        self._remember(rec)
        out.append(Persist(RoundRecorded(rec)))

    def _remember(self, rec: RoundRecord) -> None:
        self._records[rec.round_id] = rec
        while len(self._records) > self._cfg.rounds_keep:
            del self._records[next(iter(self._records))]

    # -- the placement view ------------------------------------------------------------

    def _adopt(self, p: Placement, out: list[Effect]) -> str:
        """Merge ``p`` into the view: "new", "same" or "stale"."""
        wid = p.workload_id
        cur = self._view.get(wid)
        if cur is not None and p.generation < cur.generation:
            return "stale"
        if cur is not None and p.generation == cur.generation:
            conflict = not (p.removed or cur.removed) and p.owner != cur.owner
            keep = cur if not _supersedes(p, cur) else p
            if conflict:
                self._log.warning(
                    "auction owner-conflict workload=%s generation=%d owners=%s,%s keeping=%s",
                    wid,
                    p.generation,
                    cur.owner,
                    p.owner,
                    keep.owner,
                )
            if keep is cur:
                self._book.reconcile(cur if cur.removed or conflict else p, False, out)
                return "same"
        self._view[wid] = p
        self._digest.replace(cur, p)
        self._raise_floor(wid, p.generation)
        out.append(Persist(PlacementRecorded(p)))
        self._book.reconcile(p, True, out)
        return "new"

    def _confirm_overdue(self, wid: str, now: float, out: list[Effect]) -> None:
        """No confirmation for what this node accepted: ask the originator, then confirm."""
        alloc = self._book.allocs[wid]
        asked = self._book.confirm_asks.get(wid, 0)
        if asked >= CONFIRM_ASKS or alloc.originator == self._name:
            self._self_confirm(wid, now, out)
            return
        self._book.confirm_asks[wid] = asked + 1
        self._book.confirm_at[wid] = now + self._cfg.confirm_timeout_s / 2
        self._log.info(
            "auction confirm-overdue workload=%s generation=%d asking=%s",
            wid,
            alloc.generation,
            alloc.originator,
        )
        out.append(Send(alloc.originator, Accept(alloc.round_id, wid, alloc.generation), False))

    def _self_confirm(self, wid: str, now: float, out: list[Effect]) -> None:
        """The originator never confirmed what this node accepted: confirm it ourselves."""
        alloc = self._book.allocs[wid]
        self._book.settled(wid)
        cur = self._view.get(wid)
        if cur is not None and cur.generation >= alloc.generation:
            self._book.reconcile(cur, False, out)
            return
        p = Placement(
            alloc.workload, self._name, alloc.generation, alloc.round_id, alloc.originator, now
        )
        self._log.warning(
            "auction self-confirm workload=%s generation=%d originator=%s",
            wid,
            alloc.generation,
            alloc.originator,
        )
        self._adopt(p, out)
        out.append(Broadcast(Confirm(p)))
