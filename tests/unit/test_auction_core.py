"""The auction core driven by hand: a few Auctioneers and a synchronous message queue.

Each test walks one path of DESIGN.md §6 and looks at effects, ledgers, views and
round records. The simulator (tests/sim/test_auction_sim.py) explores the rest.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import random
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

import meshd.core.auction
from meshd import config
from meshd.core.auction import (
    Accept,
    Auctioneer,
    Award,
    Bid,
    BidRequest,
    Broadcast,
    Capacity,
    Confirm,
    Decided,
    Digest,
    DurableState,
    Failed,
    HoldReleased,
    Persist,
    Placement,
    Refuse,
    Release,
    Resources,
    Revoke,
    Send,
    Start,
    Stop,
    Sync,
    Telemetry,
    Workload,
    codec,
)
from meshd.core.auction.capabilities import SIMULATED, Capabilities, Requirements
from meshd.core.auction.model import GiB, MiB
from meshd.core.auction.ranking import rank
from meshd.errors import ConfigError
from tests.factories import placement, workload

CAP = Capacity(8.0, 16 * GiB, 100 * GiB)
LOG = logging.getLogger("test.auction")
T0 = 1_700_000_000.0


def W(wid: str = "w1", cpus: float = 2, mem: int = 2 * GiB, **kw: Any) -> Workload:
    return workload(
        wid,
        tenant=kw.get("tenant"),
        resources=Resources(cpus, mem, 0),
        nodes=kw.get("nodes", frozenset()),
        avoid=kw.get("avoid", frozenset()),
    )


class Net:
    """Nodes, durable stores, and a FIFO of messages delivered by :meth:`pump`."""

    def __init__(
        self,
        n: int = 3,
        caps: dict[str, Capacity] | None = None,
        offers: dict[str, Capabilities] | None = None,
        **cfg: Any,
    ) -> None:
        self.cfg = config.sim().override({f"auction.{k}": v for k, v in cfg.items()}).auction
        self.now = T0
        self.names = [f"n{i}" for i in range(1, n + 1)]
        self.caps = caps or {}
        self.offers = offers or {}
        self.durable = {x: DurableState() for x in self.names}
        self.cores = {x: self._new(x) for x in self.names}
        self.queue: deque[tuple[str, str, Any]] = deque()
        self.down: set[str] = set()
        self.intercept: Callable[[str, str, Any], bool] = lambda src, dst, msg: True
        self.seen: dict[str, list[Any]] = {x: [] for x in self.names}
        self.sent: list[tuple[str, str, Any]] = []

    def _new(self, name: str) -> Auctioneer:
        cap, offers = self.caps.get(name, CAP), self.offers.get(name, SIMULATED)
        return Auctioneer(
            self.cfg, name, cap, random.Random(name), self.now, LOG, capabilities=offers
        )

    def apply(self, name: str, effects: list[Any]) -> None:
        for e in effects:
            if isinstance(e, Persist):
                self.durable[name].apply(e.record)
        for e in effects:
            self.seen[name].append(e)
            if isinstance(e, Send):
                self.sent.append((name, e.to, e.msg))
                self.queue.append((name, e.to, e.msg))
            elif isinstance(e, Broadcast):
                for other in self.names:
                    if other != name:
                        self.queue.append((name, other, e.msg))

    def submit(self, name: str, w: Workload, members: list[str] | None = None) -> str:
        alive = [x for x in self.names if x not in self.down] if members is None else members
        rid, effects = self.cores[name].submit(w, alive, self.now)
        self.apply(name, effects)
        return rid

    def pump(self) -> None:
        while self.queue:
            src, dst, msg = self.queue.popleft()
            if dst in self.down or not self.intercept(src, dst, msg):
                continue
            self.apply(dst, self.cores[dst].receive(msg, src, self.now))

    def advance(self, dt: float) -> None:
        self.now += dt
        for x in self.names:
            if x not in self.down:
                self.apply(x, self.cores[x].tick(self.now))
        self.pump()

    def crash(self, name: str) -> None:
        self.down.add(name)

    def restart(self, name: str) -> None:
        self.down.discard(name)
        cap, offers = self.caps.get(name, CAP), self.offers.get(name, SIMULATED)
        self.cores[name] = Auctioneer.restore(
            self.cfg,
            name,
            cap,
            random.Random(name + "'"),
            self.now,
            LOG,
            self.durable[name],
            capabilities=offers,
        )
        self.seen[name] = []

    def of(self, name: str, kind: type) -> list[Any]:
        return [e for e in self.seen[name] if isinstance(e, kind)]

    def views(self) -> set[tuple[tuple[str, str, int], ...]]:
        return {
            tuple(sorted((w, p.owner, p.generation) for w, p in c.placements().items()))
            for x, c in self.cores.items()
            if x not in self.down
        }


def test_happy_path() -> None:
    net = Net(3)
    rid = net.submit("n1", W(tenant="acme"))
    net.pump()
    [decided] = net.of("n1", Decided)
    p = decided.placement
    assert decided.round_id == rid and p.generation == 1 and p.originator == "n1"
    [rec] = net.cores["n1"].rounds()
    assert rec.state == "decided" and rec.winner == p.owner and len(rec.bids) == 3
    bids = {b.bidder: b for b in rec.bids}
    assert p.owner == rank({n: _bid(b) for n, b in bids.items()}, rid)[0]
    assert net.views() == {(("w1", p.owner, 1),)}
    for x in net.names:
        ledger = net.cores[x].ledger()
        assert not ledger.holds, x
        assert ledger.committed.cpus == (2.0 if x == p.owner else 0.0)
    [start] = net.of(p.owner, Start)
    assert start.allocation.confirmed and start.allocation.workload.tenant == "acme"
    assert net.durable[p.owner].allocations["w1"].confirmed


def test_a_pending_auction_ranks_its_bids_and_awards_only_once_fixed() -> None:
    """A spec whose NIC addresses are still being claimed: the round collects and ranks
    bids (they need no address) but awards nothing until ``fix`` gives the workload
    with them; the award, the placement and the round record carry the fixed one."""
    net = Net(3)
    w = W()
    aid, effects = net.cores["n1"].submit(w, net.names, net.now, pending=True)
    net.apply("n1", effects)
    net.pump()
    net.advance(1.0)  # well past the bid window
    assert not net.of("n1", Decided)
    assert not [m for _, _, m in net.sent if isinstance(m, Award)]
    [rec] = net.cores["n1"].rounds()
    assert rec.state == "closed" and len(rec.bids) == 3
    fixed = Workload(w.id, msgspec.structs.replace(w.spec, env={"fixed": "yes"}))
    net.apply("n1", net.cores["n1"].fix(aid, fixed, net.now))
    net.pump()
    [decided] = net.of("n1", Decided)
    assert decided.placement.workload == fixed
    assert net.views() == {(("w1", decided.placement.owner, 1),)}
    [start] = net.of(decided.placement.owner, Start)
    assert start.allocation.workload == fixed
    assert net.cores["n1"].fix(aid, fixed, net.now) == []  # over: nothing more


def test_a_pending_auction_fixed_before_its_round_closes_awards_at_the_close() -> None:
    net = Net(3)
    aid, effects = net.cores["n1"].submit(W(), net.names, net.now, pending=True)
    net.apply("n1", effects)
    net.apply("n1", net.cores["n1"].fix(aid, W(), net.now))  # before any bid came
    net.pump()
    assert len(net.of("n1", Decided)) == 1


def test_a_pending_auction_fixed_too_late_for_its_holds_asks_for_fresh_bids() -> None:
    """A claim that took so long that the bidders' holds would lapse before two awards
    are answered: the old bids are released and a new round is asked, not awarded
    (its awards would be refused for want of a hold)."""
    net = Net(3)
    aid, effects = net.cores["n1"].submit(W(), net.names, net.now, pending=True)
    net.apply("n1", effects)
    net.pump()
    net.advance(net.cfg.hold_ttl_s - 2 * net.cfg.award_timeout_s + 0.1)
    net.apply("n1", net.cores["n1"].fix(aid, W(), net.now))
    net.pump()
    net.advance(1.0)
    [decided] = net.of("n1", Decided)
    first, second = net.cores["n1"].rounds()[-2:]
    assert first.state == "waiting" and not first.awards
    assert second.state == "decided" and decided.placement.round == second.round_id
    assert not any(r == "refused" for r in (a.outcome for a in second.awards))
    for x in net.names:
        assert not net.cores[x].ledger().holds, x


def test_an_abandoned_pending_auction_fails_with_the_reason_and_frees_every_hold() -> None:
    net = Net(3)
    aid, effects = net.cores["n1"].submit(W(), net.names, net.now, pending=True)
    net.apply("n1", effects)
    net.pump()
    assert all(net.cores[x].ledger().holds for x in net.names)
    net.apply("n1", net.cores["n1"].abandon(aid, "network lan is full", net.now))
    net.pump()
    [failed] = net.of("n1", Failed)
    assert failed.round_id == aid and failed.reason == "network lan is full"
    assert not any(net.cores[x].ledger().holds for x in net.names)
    assert net.cores["n1"].rounds()[-1].state == "failed"
    assert not net.of("n1", Decided) and net.views() == {()}


def _bid(b: Any) -> Bid:
    return Bid("", b.score, b.reason, b.tenant_count, b.mem_free, b.workloads, b.busy)


def test_persist_comes_with_the_hold_before_the_bid() -> None:
    net = Net(2)
    net.submit("n1", W())
    *_, req = net.queue.popleft()
    effects = net.cores["n2"].receive(req, "n1", net.now)
    kinds = [
        type(e.record).__name__ if isinstance(e, Persist) else type(e).__name__ for e in effects
    ]
    assert kinds == ["HoldPlaced", "BidRecorded", "Send"]


def test_refuse_then_next_best() -> None:
    net = Net(3, {"n3": Capacity(4.0, 8 * GiB, 100 * GiB)})  # the tightest fit wins

    def squeeze(src: str, dst: str, msg: Any) -> bool:
        if isinstance(msg, Award) and dst == "n3":
            net.cores["n3"].set_telemetry(Telemetry(0.0, 512 * MiB, 100 * GiB))
        return True

    net.intercept = squeeze
    net.submit("n1", W())
    net.pump()
    [decided] = net.of("n1", Decided)
    assert decided.placement.owner != "n3" and decided.placement.generation == 2
    [rec] = net.cores["n1"].rounds()
    assert [(a.node, a.generation, a.outcome) for a in rec.awards] == [
        ("n3", 1, "refused"),
        (decided.placement.owner, 2, "accepted"),
    ]
    assert "not enough memory: 512 MiB free of 2 GiB asked" in rec.awards[0].reason
    assert not net.cores["n3"].ledger().holds


def test_silent_winner_then_next_best() -> None:
    net = Net(3, {"n3": Capacity(4.0, 8 * GiB, 100 * GiB)})
    net.intercept = lambda src, dst, msg: not (dst == "n3" and isinstance(msg, Award | Revoke))
    net.submit("n1", W())
    net.pump()
    assert not net.of("n1", Decided)
    assert net.cores["n1"].next_deadline() == pytest.approx(T0 + net.cfg.award_timeout_s)
    net.advance(net.cfg.award_timeout_s)
    [decided] = net.of("n1", Decided)
    assert decided.placement.generation == 2 and decided.placement.owner != "n3"
    revokes = [m for s, d, m in net.sent if isinstance(m, Revoke)]
    assert [(r.workload_id, r.generation) for r in revokes] == [("w1", 1)]
    rec = net.cores["n1"].rounds()[0]
    assert rec.awards[0].outcome == "silent"


def test_late_accept_of_a_withdrawn_award_is_revoked() -> None:
    net = Net(3, {"n3": Capacity(4.0, 8 * GiB, 100 * GiB)})
    held: list[Any] = []
    net.intercept = lambda src, dst, msg: (
        not (src == "n3" and isinstance(msg, Accept) and not held.append(msg))
    )
    net.submit("n1", W())
    net.pump()
    assert net.cores["n3"].ledger().allocations["w1"].generation == 1
    net.advance(net.cfg.award_timeout_s)  # n1 moves on; its Revoke reaches n3
    assert "w1" not in net.cores["n3"].ledger().allocations
    net.apply("n1", net.cores["n1"].receive(held[0], "n3", net.now))
    assert isinstance(net.queue[-1][2], Revoke)


def test_no_capacity_anywhere_fails_with_every_reason() -> None:
    net = Net(3)
    rid = net.submit("n2", W(cpus=12))
    net.pump()
    [failed] = net.of("n2", Failed)
    assert failed.round_id == rid
    assert failed.reason == (
        "no node has capacity for 12 cpus, 2 GiB memory (3 of 3 answered: "
        "n1: not enough cpu: 8 cpus free of 12 asked; n2: not enough cpu: 8 cpus free of "
        "12 asked; n3: not enough cpu: 8 cpus free of 12 asked)"
    )
    assert net.cores["n2"].rounds()[0].state == "failed"


def test_constraint_unsatisfiable_fails_at_once() -> None:
    net = Net(3)
    net.submit("n1", W(nodes=frozenset({"n7", "n8"})))
    [failed] = net.of("n1", Failed)
    assert failed.reason == "constraint unsatisfiable: no alive member among n7, n8"
    net.submit("n1", W("w2", avoid=frozenset({"n1", "n2", "n3"})))
    assert net.of("n1", Failed)[-1].reason == (
        "constraint unsatisfiable: no alive member outside n1, n2, n3"
    )
    assert not net.queue


QEMU_KVM = Capabilities(frozenset({"driver:fake", "driver:qemu", "kvm"}), {"rack": "a"})


def test_only_the_node_with_a_required_capability_bids_and_wins() -> None:
    net = Net(3, offers={"n3": QEMU_KVM})
    net.submit("n1", workload("w1", driver="qemu", requires=frozenset({"kvm"})))
    net.pump()
    [decided] = net.of("n1", Decided)
    assert decided.placement.owner == "n3"
    bids = {b.bidder: b for b in net.cores["n1"].rounds()[0].bids}
    assert bids["n1"].score == bids["n2"].score == -1
    assert bids["n1"].reason == "lacks driver:qemu, kvm"
    # Every node's view now holds the whole spec, the requirement included.
    for core in net.cores.values():
        assert core.placements()["w1"].spec.requires == frozenset({"kvm"})


def test_a_label_only_one_node_carries_places_the_workload_there() -> None:
    net = Net(3, offers={"n2": QEMU_KVM})
    net.submit("n1", workload("w1", labels={"rack": "a"}))
    net.pump()
    assert net.of("n1", Decided)[0].placement.owner == "n2"


def test_a_requirement_no_node_meets_is_refused_with_a_sentence_naming_it() -> None:
    net = Net(3, offers={"n3": QEMU_KVM})
    net.submit("n1", workload("w1", requires=frozenset({"arch:riscv64"})))
    net.pump()
    for _ in range(20):
        net.advance(net.cfg.window_s)
    [failed] = net.of("n1", Failed)
    assert failed.reason.startswith("no node meets the workload's requirements (")
    assert "n3: lacks arch:riscv64" in failed.reason
    first = net.cores["n1"].rounds()[0]
    assert {b.bidder: b.reason for b in first.bids} == dict.fromkeys(
        ("n1", "n2", "n3"), "lacks arch:riscv64"
    )


def test_anti_affinity_keeps_a_workload_off_the_node_running_the_named_one() -> None:
    net = Net(2)
    net.submit("n1", workload("db1", name="db", nodes=frozenset({"n2"})))
    net.pump()
    assert net.of("n1", Decided)[0].placement.owner == "n2"
    net.submit("n1", workload("db2", name="db-replica", anti_affinity=frozenset({"db"})))
    net.pump()
    assert net.of("n1", Decided)[1].placement.owner == "n1"
    bids = {b.bidder: b for b in net.cores["n1"].rounds()[-1].bids}
    assert bids["n2"].reason == "runs db (anti-affinity)"


def test_a_winner_rechecks_the_awarded_spec_against_its_capabilities() -> None:
    """An award whose spec differs from the request this node bid on (a forged or
    confused originator) is judged by the spec it carries: refused if it can't run it."""
    net = Net(2, offers={"n2": QEMU_KVM})
    core = net.cores["n1"]  # offers only driver:fake
    fake = workload("w1")
    req = BidRequest(
        "n9-000000000001", "w1", None, fake.resources, 0.25, Requirements.of(fake.spec)
    )
    [bid] = [e.msg for e in core.receive(req, "n9", net.now) if isinstance(e, Send)]
    assert bid.score > 0
    award = Award("n9-000000000001", workload("w1", driver="qemu"), 1, "n1")
    effects = core.receive(award, "n9", net.now)
    [refuse] = [e.msg for e in effects if isinstance(e, Send) and isinstance(e.msg, Refuse)]
    assert refuse.reason == "lacks driver:qemu"
    assert core.allocation("w1") is None


def test_an_award_copied_to_another_node_commits_nothing_there() -> None:
    """The award names its winner: a copy delivered to any other node (its signature
    verifies anywhere) is dropped there, without an answer."""
    net = Net(3)
    net.intercept = lambda src, dst, msg: not isinstance(msg, Award)  # keep awards back
    net.submit("n1", W(nodes=frozenset({"n2", "n3"})))
    net.pump()
    [award] = [m for src, dst, m in net.sent if isinstance(m, Award)]
    victim = "n3" if award.winner == "n2" else "n2"
    effects = net.cores[victim].receive(award, "n1", net.now)
    assert effects == []
    assert net.cores[victim].allocation(award.workload.id) is None


def test_an_award_for_a_round_this_node_never_bid_in_is_refused() -> None:
    core = Auctioneer(config.sim().auction, "n2", CAP, random.Random(1), T0, LOG)
    [refuse] = core.receive(Award("r7", W(), 1, "n2"), "n1", T0)
    assert refuse.msg.reason == "this node made no positive bid in that round"
    assert not core.ledger().allocations


def test_deadline_closes_with_partial_bids() -> None:
    net = Net(4)
    net.intercept = lambda src, dst, msg: not (dst == "n4" and isinstance(msg, BidRequest))
    net.submit("n1", W())
    net.pump()
    assert not net.of("n1", Decided)
    assert net.cores["n1"].next_deadline() == pytest.approx(T0 + net.cfg.window_s)
    net.advance(net.cfg.window_s)
    [decided] = net.of("n1", Decided)
    assert decided.placement.owner != "n4"
    rec = net.cores["n1"].rounds()[0]
    assert len(rec.candidates) == 4 and len(rec.bids) == 3


def test_nobody_answers() -> None:
    net = Net(3, max_rounds=1)
    net.submit("n1", W(nodes=frozenset({"n2", "n3"})))
    net.queue.clear()
    net.advance(net.cfg.window_s)
    assert net.of("n1", Failed)[0].reason == "no candidate answered within 250 ms"


def test_holds_expire_and_are_released_on_tick() -> None:
    net = Net(2)
    net.submit("n1", W(nodes=frozenset({"n2"})))
    _, _, req = net.queue.popleft()
    net.apply("n2", net.cores["n2"].receive(req, "n1", net.now))
    net.crash("n1")  # the originator never closes the round
    hold = next(iter(net.cores["n2"].ledger().holds.values()))
    assert hold.expires_at == T0 + net.cfg.hold_ttl_s
    assert net.cores["n2"].next_deadline() == hold.expires_at
    net.advance(net.cfg.hold_ttl_s)
    assert not net.cores["n2"].ledger().holds and not net.durable["n2"].holds
    assert [
        e.record.reason for e in net.of("n2", Persist) if isinstance(e.record, HoldReleased)
    ] == ["expired"]


def test_busy_bidders_are_retried_then_told_no() -> None:
    net = Net(3, {"n3": Capacity(2.0, 8 * GiB, 100 * GiB)})
    only3 = frozenset({"n3"})
    net.submit("n1", W("w1", nodes=only3))
    net.submit("n2", W("w2", nodes=only3))  # n3 holds for w1 when w2's request arrives
    net.pump()
    assert net.of("n1", Decided) and not net.of("n2", Failed)
    first = net.cores["n2"].rounds()[0]
    assert first.state == "waiting" and first.bids[0].busy
    net.advance(2 * net.cfg.window_s)
    [failed] = net.of("n2", Failed)
    assert "not enough cpu: 0 cpus free of 2 asked" in failed.reason
    assert len(net.cores["n2"].rounds()) == 2


def test_idempotent_resubmit() -> None:
    net = Net(3)
    rid = net.submit("n1", W())
    again, effects = net.cores["n1"].submit(W(), net.names, net.now)
    assert (again, effects) == (rid, [])  # still in flight: same auction, nothing new
    net.pump()
    placed = net.of("n1", Decided)[0].placement
    again, effects = net.cores["n1"].submit(W(), net.names, net.now)
    assert effects == [Decided(placed.round, placed)]


def test_witness_never_bids_positive() -> None:
    cfg = config.sim().auction
    core = Auctioneer(cfg, "w", CAP, random.Random(1), T0, LOG, witness=True)
    [*_, send] = core.receive(BidRequest("r", "w1", None, Resources(1, 1, 0), 0.25), "n1", T0)
    assert send.msg.score == -1 and send.msg.reason == "witness runs no workloads"


def test_restore_rebuilds_ledger_view_and_generations() -> None:
    net = Net(3, {"n3": Capacity(4.0, 8 * GiB, 100 * GiB)})
    net.intercept = lambda src, dst, msg: not (src == "n3" and isinstance(msg, Accept))
    net.submit("n1", W())
    net.pump()  # n3 committed; its Accept is lost
    before = net.cores["n3"].ledger()
    net.crash("n1")
    net.crash("n3")
    net.restart("n3")
    assert net.cores["n3"].ledger().allocations == before.allocations
    net.restart("n1")
    net.advance(0)  # the restored originator marks its round abandoned
    assert net.cores["n1"].rounds()[0].state == "abandoned"
    # A resubmit does not reuse generation 1: n3 may still hold it.
    net.intercept = lambda src, dst, msg: True
    net.submit("n1", W())
    net.pump()
    assert net.of("n1", Decided)[0].placement.generation >= 2
    net.advance(net.cfg.confirm_timeout_s)
    assert len(net.views()) == 1
    owners = [x for x in net.names if "w1" in net.cores[x].ledger().allocations]
    assert len(owners) == 1


def test_originator_crash_after_award_winner_confirms_itself() -> None:
    net = Net(3, {"n3": Capacity(4.0, 8 * GiB, 100 * GiB)})
    net.submit("n1", W())
    net.intercept = lambda src, dst, msg: not (dst == "n1" and isinstance(msg, Accept))
    net.pump()
    net.crash("n1")
    t = net.cfg.confirm_timeout_s
    net.advance(t)
    # First the winner asks the originator again, twice, half a timeout apart.
    asks = [m for src, dst, m in net.sent if src == "n3" and dst == "n1" and isinstance(m, Accept)]
    assert len(asks) == 2 and not net.of("n3", Start)
    net.advance(t / 2)
    assert len([m for src, _, m in net.sent if src == "n3" and isinstance(m, Accept)]) == 3
    assert not net.of("n3", Start)
    net.advance(t / 2)  # nobody answered: the winner confirms it itself
    assert net.of("n3", Start)
    assert net.cores["n2"].placements()["w1"].owner == "n3"


def test_a_winner_back_from_a_crash_asks_before_it_confirms_and_learns_of_the_revoke() -> None:
    small = Capacity(1.0, 8 * GiB, 100 * GiB)  # n3 is the only node with room
    net = Net(3, {"n1": small, "n2": small})
    rid = net.submit("n1", W())
    # n3 commits, then crashes before its Accept leaves; the Revoke finds it down.
    net.intercept = lambda src, dst, msg: not (src == "n3" and isinstance(msg, Accept))
    net.pump()
    net.crash("n3")
    net.intercept = lambda src, dst, msg: True
    net.advance(net.cfg.award_timeout_s)
    assert any(isinstance(m, Revoke) for src, _, m in net.sent if src == "n1")
    net.advance(net.cfg.window_s * 2)
    assert net.of("n1", Failed) and [f.round_id for f in net.of("n1", Failed)] == [rid]
    net.restart("n3")
    assert "w1" in net.cores["n3"].ledger().allocations  # still committed on disk
    for _ in range(4):
        net.advance(net.cfg.confirm_timeout_s)
    # It asked n1, which answered Revoke: nothing was self-confirmed or started.
    assert "w1" not in net.cores["n3"].ledger().allocations
    assert not net.of("n3", Start) and not net.of("n3", Broadcast)
    assert all("w1" not in c.placements() for c in net.cores.values())


def test_sync_merges_and_answers() -> None:
    core = Auctioneer(config.sim().auction, "n9", CAP, random.Random(1), T0, LOG)
    p1 = placement("w1", "w1", "n2", 1, "r1", "n1", T0, Resources(1, 1, 0), None)
    p2 = placement("w1", "w1", "n3", 2, "r2", "n1", T0, Resources(1, 1, 0), None)
    [reply] = [e for e in core.receive(Sync((p2,)), "n1", T0) if isinstance(e, Send)]
    assert reply.msg == Sync((p2,), True)
    assert core.receive(Sync((p1,), True), "n1", T0) == []  # older: ignored
    assert core.placements()["w1"] == p2
    # A stale Confirm is answered with the newer placement at once, as a datagram.
    [e] = core.receive(Confirm(p1), "n4", T0)
    assert e == Send("n4", Confirm(p2), False)


def _placed(wid: str, owner: str, gen: int = 1) -> Placement:
    return placement(wid, wid, owner, gen, f"r-{wid}-{gen}", "n1", T0, Resources(1, 1, 0), None)


def test_digest_exchange_sends_only_the_differing_buckets() -> None:
    a = Auctioneer(config.sim().auction, "na", CAP, random.Random(1), T0, LOG)
    b = Auctioneer(config.sim().auction, "nb", CAP, random.Random(2), T0, LOG)
    common = [_placed(f"w{i}", "n2") for i in range(200)]
    a.receive(Sync(tuple(common), True), "n1", T0)
    b.receive(Sync(tuple(reversed(common)), True), "n1", T0)
    # Same view: a Digest is answered with nothing at all.
    [start] = a.anti_entropy("nb")
    assert isinstance(start, Send) and not start.reliable  # 32 sums: one datagram
    assert b.receive(start.msg, "na", T0) == []
    # a learns one newer placement and one new workload; b one new workload.
    a.receive(Sync((_placed("w7", "n3", 2), _placed("only-a", "n4")), True), "n1", T0)
    b.receive(Sync((_placed("only-b", "n5"),), True), "n1", T0)
    sends = [e for e in b.receive(a.anti_entropy("nb")[0].msg, "na", T0) if isinstance(e, Send)]
    digest = next(e.msg for e in sends if isinstance(e.msg, Digest))
    sync = next(e.msg for e in sends if isinstance(e.msg, Sync))
    assert digest.reply and sync.reply
    assert "only-b" in {p.workload_id for p in sync.placements}
    assert len(sync.placements) < 30  # a few buckets of 200 placements, not the view
    a_out = a.receive(sync, "nb", T0) + a.receive(digest, "nb", T0)
    # A reply Digest is not answered with another Digest.
    back = [e.msg for e in a_out if isinstance(e, Send)]
    assert all(isinstance(m, Sync) and m.reply for m in back)
    for m in back:
        b.receive(m, "na", T0)
    assert dict(a.placements()) == dict(b.placements())
    assert a.placements()["w7"].generation == 2
    assert a.anti_entropy("x") == b.anti_entropy("x")


def test_at_one_generation_a_removal_wins_whatever_arrives_first() -> None:
    live = placement("w1", "w1", "n2", 3, "r1", "n1", T0, Resources(1, 1, 0), None)
    gone = dataclasses.replace(live, owner="n5", round="n7-rm", originator="n7", removed=True)
    gone2 = dataclasses.replace(gone, owner="n4", round="n8-rm")
    views = []
    for order in ([live, gone, gone2], [gone2, live, gone], [gone, gone2, live]):
        core = Auctioneer(config.sim().auction, "n9", CAP, random.Random(1), T0, LOG)
        for p in order:
            core.receive(Confirm(p), "n1", T0)  # no breach: a removal is nobody's to run
        views.append(core.placements()["w1"])
    assert views == [gone2, gone2, gone2]  # the same entry everywhere: digests agree


def test_a_removal_at_the_generation_a_node_holds_releases_it() -> None:
    net = Net(3, {"n3": Capacity(4.0, 8 * GiB, 100 * GiB)})
    net.submit("n1", W())
    net.pump()
    placed = net.cores["n2"].placements()["w1"]
    assert placed.owner == "n3" and "w1" in net.cores["n3"].ledger().allocations
    gone = dataclasses.replace(placed, round="n2-rm", originator="n2", removed=True)
    net.apply("n3", net.cores["n3"].receive(Confirm(gone), "n2", net.now))
    assert "w1" not in net.cores["n3"].ledger().allocations
    assert net.of("n3", Stop)


def test_an_accept_for_a_round_too_old_to_remember_is_answered() -> None:
    net = Net(3, {"n3": Capacity(4.0, 8 * GiB, 100 * GiB)}, rounds_keep=1)
    net.submit("n1", W())
    net.intercept = lambda src, dst, msg: not (src == "n3" and isinstance(msg, Accept))
    net.pump()
    award = next(m for src, dst, m in net.sent if isinstance(m, Award) and dst == "n3")
    net.advance(net.cfg.award_timeout_s)  # n3 is passed over: gen 2 elsewhere
    net.intercept = lambda src, dst, msg: True
    net.advance(0.1)
    assert net.cores["n1"].placements()["w1"].owner != "n3"
    net.submit("n1", W("w2"))  # n1 now remembers only w2's round
    net.pump()
    assert award.round_id not in {r.round_id for r in net.cores["n1"].rounds()}
    late = Accept(award.round_id, "w1", award.generation)
    net.apply("n1", net.cores["n1"].receive(late, "n3", net.now))
    assert net.sent[-1] == ("n1", "n3", Revoke(award.round_id, "w1", award.generation))
    # A round id that is not n1's is not n1's to answer.
    assert net.cores["n1"].receive(Accept("n9-00000000abcd", "w1", 1), "n3", net.now) == []


def test_a_large_view_is_compared_in_small_buckets() -> None:
    a = Auctioneer(config.sim().auction, "na", CAP, random.Random(1), T0, LOG)
    b = Auctioneer(config.sim().auction, "nb", CAP, random.Random(2), T0, LOG)
    common = tuple(_placed(f"w{i}", "n2") for i in range(5000))
    a.receive(Sync(common, True), "n1", T0)
    b.receive(Sync(common, True), "n1", T0)
    a.receive(Sync((_placed("late", "n3"),), True), "n1", T0)  # one confirmation in flight
    [start] = a.anti_entropy("nb")
    assert isinstance(start.msg, Digest) and len(start.msg.sums) == 256
    assert start.reliable  # 256 sums do not fit a datagram
    out = [e for e in b.receive(start.msg, "na", T0) if isinstance(e, Send)]
    reply = next(e.msg for e in out if isinstance(e.msg, Digest))
    assert len(reply.sums) == 256  # answered at the sender's count
    back = [e.msg for e in a.receive(reply, "nb", T0) if isinstance(e, Send)]
    [sync] = back
    assert isinstance(sync, Sync) and len(sync.placements) < 60  # one bucket, not 5,000/32
    b.receive(sync, "na", T0)
    assert "late" in b.placements()


def test_two_owners_for_one_generation_resolve_the_same_way_in_either_order() -> None:
    p = placement("w1", "w1", "n5", 1, "r9", "n7", T0, Resources(1, 1, 0), None)
    q = placement("w1", "w1", "n2", 1, "r1", "n1", T0, p.resources, None)
    kept = set()
    for first, second in ((p, q), (q, p)):
        core = Auctioneer(config.sim().auction, "n9", CAP, random.Random(1), T0, LOG)
        core.receive(Confirm(first), "n1", T0)
        core.receive(Confirm(second), "n7", T0)  # no breach, no stop: the view chooses
        kept.add(core.placements()["w1"].owner)
    assert kept == {"n2"}  # the smaller (owner, round), whichever arrived first


def test_the_losing_owner_of_a_generation_releases_and_stops_its_side() -> None:
    net = Net(3)
    net.submit("n1", W())
    net.pump()
    placed = net.of("n1", Decided)[-1].placement
    owner = placed.owner
    # Another originator (a partition, say) confirmed generation 1 on a node that sorts
    # first: the first owner meets it, lets its side go and stops it; nothing breaks.
    rival = dataclasses.replace(placed, owner="n0", round="r-rival", originator="n0")
    net.apply(owner, net.cores[owner].receive(Confirm(rival), "n0", net.now))
    [stop] = net.of(owner, Stop)
    assert (stop.workload_id, stop.generation) == (placed.workload_id, 1)
    assert placed.workload_id not in net.cores[owner].ledger().allocations


def test_supersede_moves_the_workload_and_stops_the_old_owner() -> None:
    net = Net(3, {"n3": Capacity(4.0, 8 * GiB, 100 * GiB)})
    net.submit("n1", W())
    net.pump()
    assert net.of("n3", Start)
    w = W(avoid=frozenset({"n3"}))
    _, effects = net.cores["n1"].submit(w, net.names, net.now, supersede=True)
    net.apply("n1", effects)
    net.pump()
    moved = net.of("n1", Decided)[-1].placement
    assert moved.owner != "n3" and moved.generation == 2
    [stop] = net.of("n3", Stop)
    assert (stop.workload_id, stop.generation) == ("w1", 1)
    assert "w1" not in net.cores["n3"].ledger().allocations


def test_large_mesh_asks_a_sample() -> None:
    net = Net(40, full_mesh_max=8)
    net.submit("n1", W())
    asked = {d for s, d, m in net.sent if isinstance(m, BidRequest)}
    assert 10 <= len(asked) <= 11  # ceil(2 * log2 40) = 11, maybe the originator among them
    net.pump()
    assert net.of("n1", Decided)


# -- purity and config -----------------------------------------------------------------

ROOT = Path(meshd.core.auction.__file__).parent
FORBIDDEN = {"asyncio", "socket", "apsw", "aiohttp", "time", "zeroconf", "psutil", "threading"}


@pytest.mark.parametrize("module", sorted(p.name for p in ROOT.glob("*.py")))
def test_auction_modules_are_pure(module: str) -> None:
    tree = ast.parse((ROOT / module).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not {a.name.split(".")[0] for a in node.names} & FORBIDDEN, module
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            assert node.module.split(".")[0] not in FORBIDDEN, module
            assert node.module not in ("random", "os"), module
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "random":
                assert node.attr == "Random", f"{module} uses random.{node.attr}"
            assert node.value.id != "os", module


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"auction.window_s": 0}, "auction.window_s must be positive"),
        ({"auction.sample_d": -1.0}, "auction.sample_d must be positive"),
        ({"auction.max_rounds": 0}, "auction.max_rounds must be positive"),
        ({"auction.memory_overcommit": 0.0}, "auction.memory_overcommit must be positive"),
        ({"auction.hold_ttl_s": 2.0}, "auction.hold_ttl_s must exceed"),
        ({"auction.confirm_timeout_s": 0.5}, "auction.confirm_timeout_s must exceed"),
    ],
)
def test_placement_knobs_are_validated(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.sim().override(changes).validate()


def test_placement_defaults() -> None:
    cfg = config.lan()
    a = cfg.auction
    assert (a.window_s, a.max_rounds, a.cpu_overcommit) == (0.25, 2, 1.0)
    assert a.hold_ttl_s > a.window_s + 2 * a.award_timeout_s


def test_a_revoke_that_overtakes_its_award_makes_the_award_refused() -> None:
    core = Auctioneer(config.sim().auction, "n2", CAP, random.Random(1), T0, LOG)
    assert core.receive(Revoke("r1", "w1", 1), "n1", T0) == []
    [refuse] = core.receive(Award("r1", W(), 1, "n2"), "n1", T0)
    assert refuse.msg.reason == "the award was withdrawn"
    assert not core.ledger().allocations


def test_release_only_from_the_holds_originator() -> None:
    core = Auctioneer(config.sim().auction, "n2", CAP, random.Random(1), T0, LOG)
    core.receive(BidRequest("r1", "w1", None, Resources(1, GiB, 0), 0.25), "n1", T0)
    assert "r1" in core.ledger().holds
    assert core.receive(Release("r1"), "n3", T0) == []
    assert "r1" in core.ledger().holds
    core.receive(Release("r1"), "n1", T0)
    assert not core.ledger().holds


def test_a_round_that_places_nothing_releases_its_positive_bidders() -> None:
    net = Net(4, {"n2": Capacity(4.0, 8 * GiB, 100 * GiB)}, max_rounds=1)
    net.intercept = lambda src, dst, msg: not isinstance(msg, Award)  # awardees stay silent
    net.submit("n1", W(avoid=frozenset({"n1"})))
    net.pump()
    net.advance(net.cfg.award_timeout_s)  # the winner falls silent...
    net.advance(net.cfg.award_timeout_s)  # ...and so does the next-best
    assert "no award was accepted" in net.of("n1", Failed)[0].reason
    # The silent awardees dropped theirs on Revoke, the third bidder on Release.
    assert any(isinstance(m, Release) for s, d, m in net.sent)
    for x in ("n2", "n3", "n4"):
        assert not net.cores[x].ledger().holds, x


def test_remove_tombstones_everywhere_releases_the_owner_and_allows_a_new_placement() -> None:
    net = Net(3)
    net.submit("n1", W())
    net.pump()
    [decided] = net.of("n1", Decided)
    owner = decided.placement.owner
    remover = next(x for x in net.names if x != owner)
    tomb, effects = net.cores[remover].remove("w1", net.now)
    net.apply(remover, effects)
    net.pump()
    assert tomb.removed and tomb.generation == 2 and tomb.owner == owner
    for x in net.names:
        placed = net.cores[x].placements()["w1"]
        assert placed.removed and placed.generation == 2, x
        assert not net.cores[x].ledger().allocations, x
    [stop] = net.of(owner, Stop)
    assert stop.workload_id == "w1"
    assert net.durable[owner].placements["w1"].removed  # survives a restart
    with pytest.raises(KeyError):
        net.cores[remover].remove("w1", net.now)  # already removed
    # The same id may be placed again, above the tombstone's generation.
    net.submit("n1", W())
    net.pump()
    assert net.cores["n1"].placements()["w1"].generation == 3
    assert not net.cores["n1"].placements()["w1"].removed


def test_tombstones_round_trip_through_the_codec() -> None:
    p = placement("w1", "web", "n2", 4, "n1-abc", "n1", T0, Resources(1.0, 1 << 20, 0), None)
    tomb = dataclasses.replace(p, removed=True)
    for pl in (p, tomb):
        assert codec.decode(codec.encode(Confirm(pl))) == Confirm(pl)


def test_capacity_a_removal_frees_is_offered_only_once_its_workload_is_destroyed() -> None:
    net = Net(2, {"n2": Capacity(2.0, 8 * GiB, 100 * GiB)})
    only2 = frozenset({"n2"})
    net.submit("n1", W("w1", nodes=only2))
    net.pump()
    w1 = net.of("n1", Decided)[-1].placement
    # w1 is removed: n2's ledger lets it go, but its process is still being destroyed.
    _, effects = net.cores["n1"].remove("w1", net.now)
    net.apply("n1", effects)
    net.pump()
    net.cores["n2"].set_draining(w1.workload.resources)
    assert "w1" not in net.cores["n2"].ledger().allocations
    net.submit("n1", W("w2", nodes=only2))
    net.pump()
    first = net.cores["n1"].rounds()[-1]
    assert first.bids[0].score < 0 and first.bids[0].busy  # "retry": it frees soon
    net.cores["n2"].set_draining(Resources(0.0, 0, 0))  # the runner saw it gone
    net.advance(2 * net.cfg.window_s)
    assert net.of("n1", Decided)[-1].placement.workload_id == "w2"


def test_a_stopped_workload_lends_cpu_and_memory_and_takes_them_back_only_if_free() -> None:
    net = Net(1)
    net.submit("n1", W("big", cpus=6, mem=12 * GiB))
    net.pump()
    core = net.cores["n1"]
    assert core.ledger().committed.cpus == 6.0
    # Running: 4 more CPUs don't fit on 8.
    net.submit("n1", W("more", cpus=4, mem=2 * GiB))
    net.pump()
    assert "more" not in core.placements()
    assert core.resume_fits("big") is None  # not idle: nothing to take back
    # Stopped: it lends its CPU and memory (not its disk); the same request is placed.
    core.set_idle({"big": Resources(6.0, 12 * GiB, 0)})
    net.submit("n1", W("more2", cpus=4, mem=2 * GiB))
    net.pump()
    assert core.placements()["more2"].owner == "n1"
    # Starting it again would need what it lent, now promised to more2: refused.
    why = core.resume_fits("big")
    assert why is not None and "not enough cpu" in why and "start it again" in why
    # Once more2 is gone, it fits again.
    core.set_idle({"big": Resources(6.0, 12 * GiB, 0)})
    _, effects = core.remove("more2", net.now)
    net.apply("n1", effects)
    net.pump()
    assert core.resume_fits("big") is None


def test_idle_shares_never_let_a_commit_exceed_the_limit() -> None:
    net = Net(1)
    net.submit("n1", W("a", cpus=8, mem=16 * GiB))
    net.pump()
    core = net.cores["n1"]
    core.set_idle({"a": Resources(8.0, 16 * GiB, 0)})
    net.submit("n1", W("b", cpus=8, mem=16 * GiB))
    net.pump()
    assert core.placements()["b"].owner == "n1"  # a's share is lent, the ledger's net fits
    core.set_idle({})  # a running again would be over: the runner asks first (resume_fits)
    net.submit("n1", W("c", cpus=1, mem=1 * GiB))
    net.pump()
    assert "c" not in core.placements()  # nothing is offered past the limit


def test_what_idle_workloads_lend_is_a_running_tally_equal_to_a_fresh_sum() -> None:
    """A bid reads the idle share in O(1) (a tally kept as allocations and the idle map
    change), not by summing every stopped workload: after each random step it must
    equal the sum over idle workloads that hold an allocation here."""
    rng = random.Random(5)
    net = Net(1)
    core = net.cores["n1"]
    book = core._book
    idle: dict[str, Resources] = {}
    names: list[str] = []
    for k in range(300):
        live = [w for w, p in core.placements().items() if not p.removed]
        step = rng.random()
        if step < 0.3 or not names:
            names.append(f"w{k}")
            net.submit("n1", W(names[-1], cpus=0.25, mem=GiB // 4))
            net.pump()
        elif step < 0.45 and live:
            net.apply("n1", core.remove(rng.choice(live), net.now)[1])
            net.pump()
        elif step < 0.8:
            wid = rng.choice(names)
            idle[wid] = Resources(rng.choice([0.25, 0.5]), GiB // 4, rng.choice([0, 1]))
            core.set_idle(idle)
        else:
            idle.pop(rng.choice(names), None)
            core.set_idle(idle)
        fresh = sum((r for w, r in book.idle.items() if w in book.allocs), Resources(0.0, 0, 0))
        got = book._idle_total()
        assert (round(got.cpus, 6), got.memory, got.disk) == (
            round(fresh.cpus, 6),
            fresh.memory,
            fresh.disk,
        )
