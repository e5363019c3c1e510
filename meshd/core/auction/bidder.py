"""The bidder's side of a node: its ledger of holds and committed allocations.

Theory of operation
-------------------
DESIGN.md §6, steps 2 and 4, seen from a candidate. The ledger is the only thing that
stands between concurrent rounds and an overcommitted node, so its rules are few and
strict:

* A **bid** scores the request (:mod:`.scoring`) against committed + held, excluding
  anything for the same workload (a newer round for it replaces an older hold). A
  positive bid places a **hold** — persisted before the bid leaves — that expires
  after ``auction.hold_ttl_s`` unless released earlier (the round closed without us,
  the placement was confirmed elsewhere, the originator withdrew the award).
* An **award** is re-checked against the ledger *without* its own hold and against
  fresh telemetry; only then is the **allocation** committed (persisted before the
  ``Accept`` leaves). A commit that would take committed beyond capacity x overcommit
  is impossible by construction and raises :class:`~.model.InvariantBreach`.
* A node whose store can't write (``unwritable``, set by the shell) bids nothing and
  refuses every award: it could persist neither the hold nor the allocation. A
  repeated award of an allocation it committed before is still accepted: that one is
  on disk.
* A node the operator drained (``maintenance``, from the shell: ``meshd node drain``)
  bids nothing and refuses every award, like a witness, until it is undrained.
* A released allocation's resources stay counted (``draining``, from the shell) until
  the runner has destroyed its workload: nothing is offered again before it is gone.
* An allocation whose workload does not run (``idle``, from the shell) lends what it
  does not use: a stopped workload its CPU and memory (it keeps its disk), a failed
  one everything. Bids and commits count committed minus idle; starting a stopped
  workload again first takes its share back (:meth:`Bidder.resume_fits`), refused with a
  sentence if the node has promised it to others meanwhile.
* A repeated award is answered again without a second commit; an award for a
  generation at or below one already held or placed is refused; an award the
  originator already withdrew (a ``Revoke`` that overtook it) is refused.
* An allocation is **confirmed** when the placement naming this node at its generation
  arrives (or the node confirms it itself, see :mod:`.auctioneer`); only then does the
  shell start the workload (``Start``). A newer generation elsewhere releases it
  (``Stop`` if it was running).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from meshd.config import AuctionConfig
from meshd.core.auction import scoring
from meshd.core.auction.capabilities import Capabilities, Requirements
from meshd.core.auction.durable import (
    AllocationCommitted,
    AllocationReleased,
    BidRecorded,
    DurableState,
    HoldPlaced,
    HoldReleased,
)
from meshd.core.auction.effects import Effect, Persist, Start, Stop
from meshd.core.auction.messages import Bid, BidRequest, Revoke
from meshd.core.auction.model import (
    NOTHING,
    Allocation,
    BidRecord,
    Capacity,
    Hold,
    InvariantBreach,
    Ledger,
    Placement,
    Resources,
    Telemetry,
    Workload,
)

# Reasons are clipped so that a Bid (and a Refuse) fits one datagram.
MAX_REASON_BYTES = 400


def clip(text: str) -> str:
    raw = text.encode()
    if len(raw) <= MAX_REASON_BYTES:
        return text
    return raw[: MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."


def _forget_until(memo: dict[Any, Any], live: Callable[[Any], bool]) -> None:
    """Drop entries in insertion order until the first one still ``live``."""
    while memo:
        key = next(iter(memo))
        if live(memo[key]):
            return
        del memo[key]


def _ucpus(r: Resources) -> int:
    return round(r.cpus * 1_000_000)


class _Tally:
    """Running totals of holds or allocations, so a bid costs O(1), not O(ledger).

    CPU is summed in exact micro-cores (integers), so adding and removing never drifts.
    (A re-sum per commitment, as a check, grew with the node's workloads; the simulator
    checks the totals against a fresh sum after every step instead.)
    """

    def __init__(self) -> None:
        self.ucpus = self.memory = self.disk = self.count = 0
        self.tenants: Counter[str | None] = Counter()

    def add(self, r: Resources, tenant: str | None, sign: int = 1) -> None:
        self.ucpus += sign * _ucpus(r)
        self.memory += sign * r.memory
        self.disk += sign * r.disk
        self.count += sign
        self.tenants[tenant] += sign

    def resources(self) -> Resources:
        return Resources(self.ucpus / 1_000_000, self.memory, self.disk)


class Bidder:
    """Holds and allocations of one node, and the rules that change them."""

    def __init__(
        self,
        cfg: AuctionConfig,
        name: str,
        capacity: Capacity,
        log: logging.Logger,
        witness: bool,
        capabilities: Capabilities,
    ) -> None:
        self._cfg, self._name, self._capacity, self._log = cfg, name, capacity, log
        self.witness = witness
        self.capabilities = capabilities
        # Why this node's store can't write (None: it can). Then it bids nothing and
        # accepts no award: it could not persist the hold or the allocation first.
        self.unwritable: str | None = None
        # Why the operator drained this node (None: not drained). Then it bids nothing
        # and accepts no award (``meshd node drain``; meshd.core.drain).
        self.maintenance: str | None = None
        self._oc = scoring.Overcommit.from_config(cfg)
        self.limit = scoring.limit(capacity, self._oc)
        self.telemetry: Telemetry | None = None
        # What released workloads still use here until the runner has verifiably
        # destroyed them (the shell passes it in): counted like holds, so capacity
        # freed by a removal or a move is offered again only once its process is gone.
        self.draining = NOTHING
        # What allocations here don't use now (stopped: CPU and memory; failed: all),
        # by workload id, from the shell; lent to new bids until the workload runs again.
        # Set through set_idle: _lent tallies the part of it that allocations back.
        self.idle: dict[str, Resources] = {}
        self._lent = _Tally()
        # Change these only through _put_hold/_drop_hold/_put_alloc/_drop_alloc (tallies).
        self.holds: dict[str, Hold] = {}  # round id -> hold
        self.allocs: dict[str, Allocation] = {}  # workload id -> allocation
        self._held, self._committed = _Tally(), _Tally()
        self.confirm_at: dict[str, float] = {}  # workload id -> when confirmation is overdue
        self.confirm_asks: dict[str, int] = {}  # workload id -> Accepts re-sent meanwhile
        self._my_bids: dict[str, tuple[float, Bid]] = {}  # round id -> (forget at, bid)
        self._revoked: dict[tuple[str, int], float] = {}  # (round, generation) -> forget at

    def restore(self, durable: DurableState, now: float, out: list[Effect]) -> None:
        for wid, alloc in durable.allocations.items():
            self._put_alloc(alloc)
            if not alloc.confirmed:
                self.confirm_at[wid] = now + self._cfg.confirm_timeout_s
        for rid, h in durable.holds.items():
            if h.expires_at > now:
                self._put_hold(h)
            else:
                out.append(Persist(HoldReleased(rid, "expired while the node was down")))
        for rid, rec in durable.bids.items():
            if rid in self.holds:
                b = rec.bid
                bid = Bid(rid, b.score, b.reason, b.tenant_count, b.mem_free, b.workloads, b.busy)
                self._my_bids[rid] = (self.holds[rid].expires_at, bid)

    def ledger(self) -> Ledger:
        return Ledger(
            self._capacity,
            self.limit,
            self._committed.resources(),
            self._held.resources(),
            dict(self.allocs),
            dict(self.holds),
        )

    def next_deadline(self) -> float:
        d = min((h.expires_at for h in self.holds.values()), default=math.inf)
        return min(d, min(self.confirm_at.values(), default=math.inf))

    def expire(self, now: float, out: list[Effect]) -> None:
        for rid, h in list(self.holds.items()):
            if h.expires_at <= now:
                self.release_hold(rid, "expired", out)
        # Both are consulted with their times (a stale entry answers nothing), so
        # forgetting from the oldest insertion until the first live one is enough and
        # keeps every tick O(what expired) rather than O(what is remembered).
        _forget_until(self._my_bids, lambda v: v[0] > now)
        _forget_until(self._revoked, lambda t: t > now)

    # -- the ledger's entries (keep the tallies in step) ------------------------------

    def _put_hold(self, h: Hold) -> None:
        self._drop_hold(h.round_id)
        self.holds[h.round_id] = h
        self._held.add(h.resources, h.tenant)

    def _drop_hold(self, rid: str) -> Hold | None:
        h = self.holds.pop(rid, None)
        if h is not None:
            self._held.add(h.resources, h.tenant, -1)
        return h

    def _put_alloc(self, a: Allocation) -> None:
        self._drop_alloc(a.workload.id)
        self.allocs[a.workload.id] = a
        self._committed.add(a.resources, a.tenant)
        lent = self.idle.get(a.workload.id)
        if lent is not None:
            self._lent.add(lent, None)

    def _drop_alloc(self, wid: str) -> Allocation | None:
        a = self.allocs.pop(wid, None)
        if a is not None:
            self._committed.add(a.resources, a.tenant, -1)
            lent = self.idle.get(wid)
            if lent is not None:
                self._lent.add(lent, None, -1)
        return a

    def lend(self, wid: str, r: Resources | None) -> None:
        """What ``wid``'s allocation doesn't use now (None: it uses all of it again)."""
        old = self.idle.get(wid)
        if old == r:
            return
        if wid in self.allocs:
            if old is not None:
                self._lent.add(old, None, -1)
            if r is not None:
                self._lent.add(r, None)
        if r is None:
            del self.idle[wid]
        else:
            self.idle[wid] = r

    def set_idle(self, idle: Mapping[str, Resources]) -> None:
        """The whole idle map at once (a rebuilt core); only what changed is lent anew."""
        for wid in [w for w in self.idle if w not in idle]:
            self.lend(wid, None)
        for wid, r in idle.items():
            self.lend(wid, r)

    def _others(self, wid: str, tenant: str | None) -> tuple[Resources, Resources, int, int]:
        """Committed, held, count, and count of ``tenant``'s, of all but workload ``wid``."""
        c, hd = self._committed, self._held
        c_ucpus, c_mem, c_disk = c.ucpus, c.memory, c.disk
        h_ucpus, h_mem, h_disk = hd.ucpus, hd.memory, hd.disk
        count = c.count + hd.count
        same = c.tenants[tenant] + hd.tenants[tenant]
        own = self.allocs.get(wid)
        if own is not None:  # take what belongs to wid itself off
            r = own.resources
            c_ucpus, c_mem, c_disk = c_ucpus - _ucpus(r), c_mem - r.memory, c_disk - r.disk
            count, same = count - 1, same - (own.tenant == tenant)
        for h in self.holds.values():  # holds are few: the rounds in flight
            if h.workload_id == wid:
                r = h.resources
                h_ucpus, h_mem, h_disk = h_ucpus - _ucpus(r), h_mem - r.memory, h_disk - r.disk
                count, same = count - 1, same - (h.tenant == tenant)
        return (
            Resources(c_ucpus / 1_000_000, c_mem, c_disk),
            Resources(h_ucpus / 1_000_000, h_mem, h_disk),
            count,
            same,
        )

    def _unmet(self, req: Requirements) -> str | None:
        """Why this node can't meet ``req`` (capabilities, labels, anti-affinity)."""
        names = (a.workload.name for a in self.allocs.values()) if req.anti_affinity else ()
        return self.capabilities.unmet(req, names)

    def _idle_total(self, skip: str | None = None) -> Resources:
        """What idle allocations lend (O(1): a running tally), but ``skip``'s."""
        total = self._lent.resources()
        lent = self.idle.get(skip) if skip is not None and skip in self.allocs else None
        return total if lent is None else total - lent

    def _evaluate(self, ask: Resources, wid: str) -> scoring.Verdict:
        committed, held, _, _ = self._others(wid, None)
        committed = _floor(committed - self._idle_total())
        held = held + self.draining
        return scoring.evaluate(ask, self._capacity, self._oc, committed, held, self.telemetry)

    def resume_fits(self, wid: str) -> str | None:
        """Whether the idle workload ``wid`` may run again here (None), or why not: what
        it lent while idle must still be free (committed, holds and draining counted)."""
        if wid not in self.idle or wid not in self.allocs:
            return None
        committed = _floor(self._committed.resources() - self._idle_total(skip=wid))
        used = committed + self._held.resources() + self.draining
        if used.within(self.limit):
            return None
        short = [
            name
            for name, u, lim in (
                ("cpu", used.cpus, self.limit.cpus),
                ("memory", used.memory, self.limit.memory),
                ("disk", used.disk, self.limit.disk),
            )
            if u > lim + (1e-9 if name == "cpu" else 0)
        ]
        return (
            f"not enough {', '.join(short)} free to start it again: while it was stopped "
            "this node promised that capacity to other workloads; move it (remove and "
            "submit it again) or free capacity here"
        )

    def bid(self, req: BidRequest, originator: str, now: float, out: list[Effect]) -> Bid:
        """Answer a request: persist a hold for a positive score, record the bid."""
        rid, wid = req.round_id, req.workload_id
        prev = self._my_bids.get(rid)
        if prev is not None and prev[0] > now:
            return prev[1]  # a repeated request: the same answer, no second hold
        _, _, count, same = self._others(wid, req.tenant)
        same = 0 if req.tenant is None else same
        unmet = self._unmet(req.requirements)
        if self.witness:
            v = scoring.Verdict(scoring.NO_BID, "witness runs no workloads", 0)
        elif self.maintenance is not None:
            v = scoring.Verdict(scoring.NO_BID, self.maintenance, 0)
        elif self.unwritable is not None:
            v = scoring.Verdict(scoring.NO_BID, self.unwritable, 0)
        elif wid in self.allocs:
            v = scoring.Verdict(scoring.NO_BID, "already hosts this workload", 0)
        elif unmet is not None:
            v = scoring.Verdict(scoring.NO_BID, unmet, 0)
        else:
            v = self._evaluate(req.resources, wid)
        bid = Bid(rid, v.score, clip(v.reason), same, v.mem_free, count, v.busy)
        for h in [h for h in self.holds.values() if h.workload_id == wid]:
            self.release_hold(h.round_id, "replaced by a newer round", out)
        expires = now + self._cfg.hold_ttl_s
        if v.score > 0:  # a hold, and the bid behind it (a repeated request gets this answer)
            hold = Hold(rid, wid, req.resources, req.tenant, originator, expires)
            self._put_hold(hold)
            out.append(Persist(HoldPlaced(hold)))
            rec = BidRecord(self._name, bid.score, bid.reason, same, v.mem_free, count, now, v.busy)
            out.append(Persist(BidRecorded(rid, originator, wid, rec)))
        self._my_bids[rid] = (expires, bid)
        return bid

    def accept_award(
        self,
        rid: str,
        w: Workload,
        gen: int,
        originator: str,
        placed: Placement | None,
        now: float,
        out: list[Effect],
    ) -> str | None:
        """Commit the award durably (None), or say why not."""
        cur = self.allocs.get(w.id)
        if cur is not None and cur.generation == gen and cur.round_id == rid:
            return None  # a repeated award: already committed
        if cur is not None and cur.generation >= gen:
            return f"this node already holds generation {cur.generation} of the workload"
        if (rid, gen) in self._revoked:
            return "the award was withdrawn"
        bid = self._my_bids.get(rid)
        if bid is None or bid[1].score <= 0:
            # Commit only what this node bid for in this round: an award for a round it
            # never bid in (a copied datagram, a confused originator) or that it refused.
            return "this node made no positive bid in that round"
        if placed is not None and placed.generation >= gen:
            return f"generation {placed.generation} is already placed on {placed.owner}"
        why: str | None = "witness runs no workloads" if self.witness else self.unwritable
        why = why or self.maintenance
        if why is None:  # an award carries the whole spec: judge it, not the request
            why = self._unmet(Requirements.of(w.spec))
        if why is None:
            v = self._evaluate(w.resources, w.id)
            why = v.reason if v.score < 0 else None
        for h in [h for h in self.holds.values() if h.workload_id == w.id]:
            self.release_hold(h.round_id, "refused" if why else "committed", out)
        if why is not None:
            return why
        alloc = Allocation(w, rid, gen, originator, now, False)
        self._put_alloc(alloc)
        self.settled(w.id)  # an older generation's wait (and its asks) ends here
        self.confirm_at[w.id] = now + self._cfg.confirm_timeout_s
        out.append(Persist(AllocationCommitted(alloc)))
        committed = _floor(self._committed.resources() - self._idle_total())
        if not committed.within(self.limit):
            raise InvariantBreach(f"{self._name} committed {committed} beyond {self.limit}")
        self._log.info("auction committed workload=%s generation=%d round=%s", w.id, gen, rid)
        return None

    def revoke(self, m: Revoke, sender: str, now: float, out: list[Effect]) -> None:
        alloc = self.allocs.get(m.workload_id)
        ours = (m.round_id, m.generation, sender)
        if alloc is not None and (alloc.round_id, alloc.generation, alloc.originator) == ours:
            if alloc.confirmed:
                self._log.warning("auction revoke-after-confirm workload=%s", m.workload_id)
            else:
                self.release_alloc(m.workload_id, "the originator withdrew the award", out)
        # Remembered either way: it may have overtaken its award, or the award may repeat.
        self._revoked[(m.round_id, m.generation)] = now + self._cfg.hold_ttl_s
        if m.round_id in self.holds:
            self.release_hold(m.round_id, "the originator withdrew the award", out)

    def settled(self, wid: str) -> None:
        """``wid``'s allocation is confirmed or gone: no confirmation is awaited."""
        self.confirm_at.pop(wid, None)
        self.confirm_asks.pop(wid, None)

    def release_hold(self, rid: str, why: str, out: list[Effect]) -> None:
        if self._drop_hold(rid) is not None:
            out.append(Persist(HoldReleased(rid, why)))

    def release_alloc(self, wid: str, why: str, out: list[Effect]) -> None:
        alloc = self._drop_alloc(wid)
        assert alloc is not None, wid
        self.settled(wid)
        out.append(Persist(AllocationReleased(wid, alloc.generation, why)))
        if alloc.confirmed:
            out.append(Stop(wid, alloc.generation, why))
        self._log.info(
            "auction released workload=%s generation=%d reason=%r", wid, alloc.generation, why
        )

    def reconcile(self, p: Placement, changed: bool, out: list[Effect]) -> None:
        """Bring holds and the allocation for ``p``'s workload in line with ``p``."""
        wid = p.workload_id
        for h in [h for h in self.holds.values() if h.workload_id == wid]:
            if changed or h.round_id == p.round:
                self.release_hold(h.round_id, f"placed on {p.owner}", out)
        alloc = self.allocs.get(wid)
        if p.removed:  # a tombstone: whoever held the workload lets it go
            if alloc is not None and alloc.generation <= p.generation:
                self.release_alloc(wid, "removed by an operator", out)
            return
        if alloc is None:
            if p.owner == self._name:
                self._log.error(
                    "auction owner-without-allocation workload=%s generation=%d", wid, p.generation
                )
            return
        if alloc.generation < p.generation:
            self.release_alloc(wid, f"generation {p.generation} placed on {p.owner}", out)
        elif alloc.generation == p.generation:
            if p.owner != self._name:
                # The view resolved two owners for this generation (Auctioneer._adopt):
                # the other side won, so this node lets its side go, stopping it if it
                # was already running, instead of stopping the daemon.
                self._log.warning(
                    "auction owner-conflict-lost workload=%s generation=%d round=%s winner=%s",
                    wid,
                    p.generation,
                    alloc.round_id,
                    p.owner,
                )
                self.release_alloc(
                    wid, f"generation {p.generation} is placed on {p.owner} (round {p.round})", out
                )
                return
            if not alloc.confirmed:
                done = dataclasses.replace(alloc, confirmed=True)
                self._put_alloc(done)
                self.settled(wid)
                out.append(Persist(AllocationCommitted(done)))
                out.append(Start(done))


def _floor(r: Resources) -> Resources:
    """``r`` with no dimension below zero (idle shares subtracted from a tally)."""
    return Resources(max(0.0, r.cpus), max(0, r.memory), max(0, r.disk))
