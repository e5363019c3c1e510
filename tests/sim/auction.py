"""The auction core in the simulator: capacities, telemetry, durable stores, faults, checks.

Theory of operation
-------------------
:class:`Fleet` plugs the :class:`~meshd.core.auction.Auctioneer` into a
:class:`~tests.sim.harness.Simulation` on the ``"auction"`` channel, next to membership
(or, for the thousands of random schedules, next to an *oracle* membership — the
harness's truth of who is up — which is what SWIM converges to and is far cheaper).
Each node gets a fake :class:`~meshd.core.auction.Capacity` and fake telemetry derived
from its committed ledger (or overridden by a scenario).

The shell's contract is modelled exactly: the effects of one step are applied with
every ``Persist`` first — into a per-node :class:`~meshd.core.auction.DurableState` that
the fleet keeps across crashes, filled *only* by those records; like the shell's
journal, records in ``durable.KNOWLEDGE`` (holds, bids, the view) reach it only
``auction.journal_lag_s`` later or ahead of the next promise, and a crash in between
loses them — then the sends
(``Send`` through the faulty network, ``Broadcast`` to every member directly and by
membership gossip), then the rest. A restarted node's core is
:meth:`~meshd.core.auction.Auctioneer.restore`-d from that store. A shell that got the
order wrong is modelled too (``crash ... torn``): the sends of a step leave and the
node dies before its records are written; the invariants then break, which is the
proof that persist-before-send matters.

Faults can be timed (the harness's crash, restart, partition, cut, heal) or
*triggered*: "crash n3 right after it sends its Accept" (:meth:`Fleet.arm`), so a
crash lands on a protocol step whatever the timings. ``mid`` crashes between the
durable write and the sends of that step; ``after`` once the step is done.

Invariants (:meth:`Fleet.step_problems` after every step of every node, and
:meth:`Fleet.final_problems` once the network healed and everyone restarted):

* no node's committed ledger exceeds capacity x overcommit;
* no running node holds a hold past its expiry;
* one owner per (workload, generation), over every commitment and placement ever made;
* after healing: all nodes hold the same view; each placed workload's owner holds its
  confirmed allocation; no other allocation exists; no hold is left; every decided or
  started workload is placed (nothing accepted is lost); the durable store of every
  node equals its core's state.

Scenario scripts for the auction (directives, commands) are in :mod:`.auction_script`.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshd.config import Config
from meshd.core.auction import (
    AllocationCommitted,
    AllocationReleased,
    Auctioneer,
    Award,
    Bid,
    BidRequest,
    Broadcast,
    Capacity,
    Confirm,
    Decided,
    DurableState,
    Failed,
    HoldPlaced,
    HoldReleased,
    Persist,
    Placement,
    PlacementRecorded,
    Resources,
    RoundRecorded,
    Send,
    Start,
    Stop,
    Telemetry,
    Workload,
)
from meshd.core.auction import codec as auction_codec
from meshd.core.auction.candidates import Batch
from meshd.core.auction.durable import KNOWLEDGE
from meshd.core.auction.messages import Accept, AuctionMsg, Digest, Refuse, Release, Revoke, Sync
from meshd.core.auction.model import GiB, Ledger, total
from meshd.core.membership import Deliver
from tests import factories
from tests.sim.harness import MEMBERSHIP, SimNode, Simulation

AUCTION = "auction"
GOSSIP_KIND = "auction"
DEFAULT_CAPACITY = Capacity(8.0, 16 * GiB, 100 * GiB)
AUCTION_MESSAGES = ("BidRequest", "Bid", "Release", "Award", "Accept", "Refuse", "Revoke")


def describe(msg: AuctionMsg) -> str:
    """One trace word-group per message."""
    if isinstance(msg, BidRequest):
        return f"request {msg.round_id} {msg.workload_id}"
    if isinstance(msg, Bid):
        why = f" ({msg.reason})" if msg.score < 0 else ""
        return f"bid {msg.round_id} {msg.score}{why}"
    if isinstance(msg, Award):
        return f"award {msg.round_id} {msg.workload.id} gen {msg.generation}"
    if isinstance(msg, Accept):
        return f"accept {msg.round_id} gen {msg.generation}"
    if isinstance(msg, Refuse):
        return f"refuse {msg.round_id} gen {msg.generation}: {msg.reason}"
    if isinstance(msg, Revoke):
        return f"revoke {msg.round_id} gen {msg.generation}"
    if isinstance(msg, Release):
        return f"release {msg.round_id}"
    if isinstance(msg, Confirm):
        p = msg.placement
        return f"confirm {p.workload_id} -> {p.owner} gen {p.generation}"
    if isinstance(msg, Digest):
        return f"digest{' reply' if msg.reply else ''}"
    return f"sync {len(msg.placements)}{' reply' if msg.reply else ''}"


def event_of(e: Any) -> str | None:
    """The trigger name of an effect (see :meth:`Fleet.arm`)."""
    if isinstance(e, Send):
        m = e.msg
        if isinstance(m, Bid):
            return "bid" if m.score > 0 else "nobid"
        names = {BidRequest: "request", Award: "award", Accept: "accept", Refuse: "refuse"}
        return names.get(type(m)) or ("revoke" if isinstance(m, Revoke) else None)
    if isinstance(e, Broadcast):
        return "confirm"
    if isinstance(e, Persist) and isinstance(e.record, AllocationCommitted):
        return "commit"
    return {Decided: "decided", Failed: "failed", Start: "start"}.get(type(e))


@dataclass
class Trigger:
    node: str
    event: str
    action: Callable[[], None] | None  # None: crash the node
    mode: str = "after"  # after | mid | torn (with action None)


@dataclass
class Outcome:
    workload: str
    originator: str
    placement: Placement | None = None
    reason: str | None = None


class AuctionNode:
    """The harness-facing adapter: a core plus the shell's step discipline."""

    def __init__(self, fleet: Fleet, node: SimNode, core: Auctioneer, rng: random.Random) -> None:
        self.fleet, self.node, self.core, self.rng = fleet, node, core, rng
        self.next_sync = fleet.sim.now + rng.uniform(0, fleet.cfg.auction.sync_interval_s)
        self.batch = (-1.0, Batch())

    def receive(self, msg: AuctionMsg, sender: str, addr: Any, now: float) -> list[Any]:
        self.fleet.feed(self)
        return self.fleet.step(self, self.core.receive(msg, sender, now))

    def tick(self, now: float) -> list[Any]:
        self.fleet.feed(self)
        out: list[Any] = self.core.tick(now)
        if now >= self.next_sync:
            self.next_sync = now + self.fleet.cfg.auction.sync_interval_s
            target = self.fleet.sync_target(self.node.name, self.rng)
            if target is not None:
                out += self.core.anti_entropy(target)
        return self.fleet.step(self, out)

    def next_deadline(self) -> float:
        return min(self.core.next_deadline(), self.next_sync)

    def submit(self, w: Workload, members: list[str]) -> list[Any]:
        self.fleet.feed(self)
        now = self.fleet.sim.now
        if self.batch[0] != now:  # submissions of one instant share a sample, as in the shell
            self.batch = (now, Batch())
        aid, effects = self.core.submit(w, members, now, batch=self.batch[1])
        self.fleet.outcomes.setdefault(aid, Outcome(w.id, self.node.name))
        return self.fleet.step(self, effects)

    def remove(self, workload_id: str) -> list[Any]:
        """An operator's ``meshd workload rm`` here; nothing if this node sees it unplaced."""
        self.fleet.feed(self)
        try:
            _, effects = self.core.remove(workload_id, self.fleet.sim.now)
        except KeyError:
            return []
        return self.fleet.step(self, effects)


@dataclass
class Fleet:
    """The auction layer of one simulation (see the module docstring)."""

    sim: Simulation
    membership: bool = False
    capacities: dict[str, Capacity] = field(default_factory=dict)
    witnesses: set[str] = field(default_factory=set)
    durable: dict[str, DurableState] = field(default_factory=dict)
    telemetry: dict[str, Telemetry] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    started: dict[str, int] = field(default_factory=dict)  # workload -> highest gen started
    owners: dict[tuple[str, int], str] = field(default_factory=dict)
    triggers: list[Trigger] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    messages: Counter[str] = field(default_factory=Counter)
    datagram_max: int = 0
    check_steps: bool = True
    journal: dict[str, list[Any]] = field(default_factory=dict)  # knowledge not yet durable

    def __post_init__(self) -> None:
        sim = self.sim
        self.cfg: Config = sim.cfg
        if not self.membership:
            sim.factories.pop(MEMBERSHIP, None)
        sim.factories[AUCTION] = self.factory
        sim.codecs[AUCTION] = (
            auction_codec.encode,
            auction_codec.decode,
            auction_codec.MAX_DATAGRAM,
        )
        h = sim.effect_handlers
        h[Send] = lambda node, channel, e: self._send(node, e.to, e.msg, e.reliable)
        h[Broadcast] = self._on_broadcast
        h[Persist] = self._on_persist
        for t in (Decided, Failed, Start, Stop):
            h[t] = self._on_outcome
        sim.listeners.append(self._on_gossip)

    # -- building ----------------------------------------------------------------------

    def factory(self, sim: Simulation, node: SimNode) -> tuple[AuctionNode, list[Any]]:
        rng = random.Random(f"{sim.seed}/{node.name}/{node.boot}/auction")
        log = logging.getLogger(f"meshd.sim.{node.name}.auction")
        durable = self.durable.setdefault(node.name, DurableState())
        self.journal.pop(node.name, None)  # what the crashed process had not written
        cap = self.capacities.get(node.name, DEFAULT_CAPACITY)
        witness = node.name in self.witnesses
        if durable.empty() and not durable.bids:
            core = Auctioneer(self.cfg.auction, node.name, cap, rng, sim.now, log, witness)
        else:
            core = Auctioneer.restore(
                self.cfg.auction, node.name, cap, rng, sim.now, log, durable, witness
            )
        return AuctionNode(self, node, core, rng), []

    def core(self, name: str) -> Auctioneer:
        adapter = self.sim.nodes[name].cores[AUCTION]
        assert isinstance(adapter, AuctionNode)
        return adapter.core

    def members(self, name: str) -> list[str]:
        """Who ``name`` believes alive, itself included."""
        if self.membership:
            return [m.name for m in self.sim.membership(name).members() if m.state.live]
        return self.sim.running()

    def sync_target(self, name: str, rng: random.Random) -> str | None:
        others = [m for m in self.members(name) if m != name]
        return rng.choice(others) if others else None

    # -- commands ----------------------------------------------------------------------

    def submit(self, originator: str, w: Workload) -> None:
        node = self.sim.nodes[originator]
        if not node.up:
            return
        self.sim._cmd(f"submit {originator} {w.id} {w.resources.describe()}")
        members = self.members(originator)
        self.sim.inject(originator, AUCTION, lambda a: a.submit(w, members))

    def remove(self, node: str, workload_id: str) -> None:
        if not self.sim.nodes[node].up:
            return
        self.sim._cmd(f"remove {node} {workload_id}")
        self.sim.inject(node, AUCTION, lambda a: a.remove(workload_id))

    def set_telemetry(self, name: str, t: Telemetry | None) -> None:
        if t is None:
            self.telemetry.pop(name, None)
        else:
            self.telemetry[name] = t

    def arm(
        self, node: str, event: str, action: Callable[[], None] | None, mode: str = "after"
    ) -> None:
        """Once ``node`` emits ``event`` in a step, run ``action`` (None: crash ``node``).

        Events: request, bid, nobid, award, accept, refuse, revoke, confirm, commit,
        decided, failed, start. Modes for a crash: ``after`` the step, ``mid`` (records
        written, nothing sent), ``torn`` (sent, records lost: a broken shell).
        """
        self.triggers.append(Trigger(node, event, action, mode))

    # -- the step discipline -----------------------------------------------------------

    def feed(self, a: AuctionNode) -> None:
        name = a.node.name
        t = self.telemetry.get(name)
        if t is None:
            ledger = a.core.ledger()
            cap = ledger.capacity
            t = Telemetry(
                0.5 * ledger.committed.cpus / cap.cpus,
                cap.memory - ledger.committed.memory,
                cap.disk - ledger.committed.disk,
            )
        a.core.set_telemetry(t)

    def step(self, a: AuctionNode, effects: list[Any]) -> list[Any]:
        persists = [e for e in effects if isinstance(e, Persist)]
        rest = [e for e in effects if not isinstance(e, Persist)]
        if self.check_steps:
            self.step_problems(a)
        fired = self._fired(a.node.name, effects)
        if fired is None:
            return persists + rest
        self.triggers.remove(fired)
        name = a.node.name
        if fired.action is not None:
            self.sim.at(self.sim.now, fired.action)
            return persists + rest
        if fired.mode == "after":
            self.sim.at(self.sim.now, self.sim.crash, name)
            return persists + rest
        node = self.sim.nodes[name]
        if fired.mode == "mid":
            self.sim._run(node, AUCTION, persists)
        else:  # torn: what was sent is out, what was to be written is lost
            self.sim._run(node, AUCTION, [e for e in rest if isinstance(e, Send | Broadcast)])
        self.sim._cmd(f"crash {name} ({fired.mode} {fired.event})")
        self.sim._down(node)
        return []

    def _fired(self, name: str, effects: list[Any]) -> Trigger | None:
        if not self.triggers:
            return None
        events = {ev for e in effects if (ev := event_of(e)) is not None}
        return next((t for t in self.triggers if t.node == name and t.event in events), None)

    # -- effect handlers ---------------------------------------------------------------

    def _send(self, node: SimNode, to: str, msg: AuctionMsg, reliable: bool) -> None:
        sim = self.sim
        kind = type(msg).__name__
        sim.sent[kind] += 1
        self.messages[kind] += 1
        if sim.trace_enabled and not isinstance(msg, Sync | Digest):
            sim._record(node.name, f"-> {to} {describe(msg)}")
        if to not in sim.nodes:
            return
        payload: Any = msg
        if sim.codec:
            payload = auction_codec.encode(msg)
            sim.sent_bytes += len(payload)
            if not reliable:
                self.datagram_max = max(self.datagram_max, len(payload))
                if len(payload) > auction_codec.MAX_DATAGRAM:
                    self.violations.append(
                        f"{node.name} sent a {len(payload)}-byte {kind} datagram"
                    )
        for delay in sim.net.delays(node.name, to, reliable):
            sim.events.at(sim.now + delay, sim._deliver, node.name, to, AUCTION, payload)
        if not reliable:
            for other, delay in sim.net.strays(node.name, to, list(sim.nodes)):
                sim.events.at(sim.now + delay, sim._deliver, node.name, other, AUCTION, payload)

    def _on_broadcast(self, node: SimNode, channel: str, e: Broadcast) -> None:
        sim = self.sim
        if sim.trace_enabled:
            sim._record(node.name, f"broadcast {describe(e.msg)}")
        for m in self.members(node.name):
            if m != node.name:
                self._send(node, m, e.msg, True)
        if self.membership:
            data = auction_codec.encode(e.msg)
            sim.inject(node.name, MEMBERSHIP, lambda c: c.broadcast(GOSSIP_KIND, data, sim.now))

    def _on_gossip(self, t: float, name: str, channel: str, e: Any) -> None:
        if isinstance(e, Deliver) and e.kind == GOSSIP_KIND:
            msg = auction_codec.decode(e.payload)
            self.sim.inject(
                name, AUCTION, lambda a: a.fleet.step(a, a.core.receive(msg, e.origin, t))
            )

    def _on_persist(self, node: SimNode, channel: str, e: Persist) -> None:
        r = e.record
        if isinstance(r, KNOWLEDGE):
            pending = self.journal.setdefault(node.name, [])
            if not pending:
                lag = self.cfg.auction.journal_lag_s
                self.sim.events.after(lag, self._write_journal, node, node.boot)
            pending.append(r)
        else:
            self._write_journal(node, node.boot)  # in order, ahead of the promise
            self.durable.setdefault(node.name, DurableState()).apply(r)
        if isinstance(r, AllocationCommitted):
            a = r.allocation
            self._owner(a.workload.id, a.generation, node.name, node.name)
        elif isinstance(r, PlacementRecorded):
            p = r.placement
            self._owner(p.workload_id, p.generation, p.owner, node.name)
        if self.sim.trace_enabled:
            text = _fmt_record(r)
            if text:
                self.sim._record(node.name, text)

    def _owner(self, wid: str, gen: int, owner: str, seen_by: str) -> None:
        prev = self.owners.setdefault((wid, gen), owner)
        if prev != owner:
            self.violations.append(
                f"t={self.sim.now:.3f} {seen_by}: {wid} gen {gen} owned by {prev} and {owner}"
            )

    def _on_outcome(self, node: SimNode, channel: str, e: Any) -> None:
        sim = self.sim
        if isinstance(e, Decided):
            p = e.placement
            o = self.outcomes.setdefault(e.round_id, Outcome(p.workload_id, node.name))
            o.placement = p
            text = f"decided {e.round_id} {p.workload_id} -> {p.owner} gen {p.generation}"
        elif isinstance(e, Failed):
            self.outcomes.setdefault(e.round_id, Outcome("?", node.name)).reason = e.reason
            text = f"failed {e.round_id}: {e.reason}"
        elif isinstance(e, Start):
            a = e.allocation
            self.started[a.workload.id] = max(self.started.get(a.workload.id, 0), a.generation)
            text = f"start {a.workload.id} gen {a.generation}"
        else:
            text = f"stop {e.workload_id} gen {e.generation} ({e.reason})"
        if sim.trace_enabled:
            sim._record(node.name, text)

    # -- invariants --------------------------------------------------------------------

    def step_problems(self, a: AuctionNode) -> None:
        self.violations += ledger_problems(a.node.name, a.core.ledger(), self.sim.now)

    def _write_journal(self, node: SimNode, boot: int) -> None:
        if node.boot != boot or not node.up:
            return  # that process crashed: its pending records are gone
        durable = self.durable.setdefault(node.name, DurableState())
        for r in self.journal.pop(node.name, []):
            durable.apply(r)

    def final_problems(self) -> list[str]:
        """Whole-mesh checks, once the network healed and every node runs again."""
        for n in self.sim.running():
            self._write_journal(self.sim.nodes[n], self.sim.nodes[n].boot)
        problems = list(self.violations)
        live = self.sim.running()
        decided: list[tuple[str, int]] = []
        for aid, o in self.outcomes.items():
            if o.placement is not None and o.reason is not None:
                problems.append(f"{aid} both decided and failed: {o.reason}")
            if o.placement is not None:
                decided.append((o.placement.workload_id, o.placement.generation))
        problems += mesh_problems(
            {n: self.core(n) for n in live}, self.durable, decided, self.started
        )
        return problems


# -- invariants, shared with the simulator of the real shells (tests/sim/shells.py) ------


def ledger_problems(name: str, ledger: Ledger, now: float) -> list[str]:
    """What is wrong with one node's ledger at ``now`` (checked after every step)."""
    problems: list[str] = []
    if not ledger.committed.within(ledger.limit):
        problems.append(f"t={now:.3f} {name} committed {ledger.committed} > {ledger.limit}")
    # The bidder keeps running totals; they must equal the ledger summed afresh.
    for kept, items in (
        (ledger.committed, ledger.allocations.values()),
        (ledger.held, ledger.holds.values()),
    ):
        fresh = total(items)
        if (kept.memory, kept.disk) != (fresh.memory, fresh.disk) or abs(
            kept.cpus - fresh.cpus
        ) > 1e-6:
            problems.append(f"t={now:.3f} {name} running total {kept} != {fresh}")
    for h in ledger.holds.values():
        if h.expires_at < now:
            problems.append(f"t={now:.3f} {name} still holds {h.round_id} past expiry")
    return problems


def mesh_problems(
    cores: Mapping[str, Auctioneer],
    durable: Mapping[str, DurableState],
    decided: Iterable[tuple[str, int]],
    started: Mapping[str, int],
) -> list[str]:
    """Whole-mesh checks over the live nodes' ``cores`` once the mesh has settled.

    ``durable`` is what each node's store holds (all written); ``decided`` the
    (workload, generation) originators reported placed; ``started`` the highest generation of each
    workload any node was told to start.
    """
    problems: list[str] = []
    live = list(cores)
    views = {
        n: {w: (p.owner, p.generation) for w, p in cores[n].placements().items()} for n in live
    }
    removed = {n: {w for w, p in cores[n].placements().items() if p.removed} for n in live}
    first = views[live[0]] if live else {}
    for n in live:
        if views[n] != first:
            diff = sorted(set(views[n].items()) ^ set(first.items()))[:4]
            problems.append(f"{n}'s view differs from {live[0]}'s: {diff}")
        if removed[n] != removed[live[0]]:
            problems.append(f"{n} and {live[0]} disagree on what was removed")
    for n in live:
        core = cores[n]
        ledger = core.ledger()
        for wid, alloc in ledger.allocations.items():
            want = first.get(wid)
            if live and wid in removed[live[0]]:
                problems.append(f"{n} still holds {wid} gen {alloc.generation}, removed")
            elif want != (n, alloc.generation):
                problems.append(f"{n} holds {wid} gen {alloc.generation}, view says {want}")
            elif not alloc.confirmed:
                problems.append(f"{n} never confirmed {wid} gen {alloc.generation}")
        if ledger.holds:
            problems.append(f"{n} still holds {sorted(ledger.holds)}")
        d = durable[n]
        if d.allocations != dict(ledger.allocations) or d.holds != dict(ledger.holds):
            problems.append(f"{n}: durable allocations/holds differ from the core's")
        if d.placements != dict(core.placements()):
            problems.append(f"{n}: durable placement view differs from the core's")
    for wid, (owner, gen) in first.items():
        if live and wid in removed[live[0]]:
            continue  # a tombstone: nobody holds it
        if owner in views and wid not in cores[owner].ledger().allocations:
            problems.append(f"{wid} placed on {owner} gen {gen}, which holds no allocation")
    for wid, gen in decided:
        if first.get(wid, ("", -1))[1] < gen:
            problems.append(f"decided {wid} gen {gen} lost: {first.get(wid)}")
    for wid, gen in started.items():
        if first.get(wid, ("", -1))[1] < gen:
            problems.append(f"started {wid} gen {gen} lost: {first.get(wid)}")
    return problems


def _fmt_record(r: Any) -> str | None:
    if isinstance(r, HoldPlaced):
        return f"persist hold {r.hold.round_id}"
    if isinstance(r, HoldReleased):
        return f"persist unhold {r.round_id} ({r.reason})"
    if isinstance(r, AllocationCommitted):
        a = r.allocation
        what = "confirmed" if a.confirmed else "commit"
        return f"persist {what} {a.workload.id} gen {a.generation}"
    if isinstance(r, AllocationReleased):
        return f"persist release {r.workload_id} gen {r.generation} ({r.reason})"
    if isinstance(r, PlacementRecorded):
        p = r.placement
        return f"persist placement {p.workload_id} -> {p.owner} gen {p.generation}"
    if isinstance(r, RoundRecorded):
        rec = r.record
        return f"persist round {rec.round_id} {rec.state}"
    return None  # bid history


def auction_sim(
    seed: int,
    n: int,
    cfg: Config | None = None,
    link: Any = None,
    *,
    membership: bool = False,
    capacities: dict[str, Capacity] | None = None,
    trace: bool = True,
    codec: bool = False,
    stagger: float = 0.0,
    start: bool = True,
) -> tuple[Simulation, Fleet]:
    """A simulation of ``n`` nodes running the auction core (and membership, if asked)."""
    sim = Simulation(seed, n, cfg, link, trace=trace, codec=codec, start=False)
    fleet = Fleet(sim, membership, dict(capacities or {}))
    if start:
        for i, name in enumerate(list(sim.nodes)):
            sim.events.at(i * stagger, sim.start, name)
    return sim, fleet


def workload(
    wid: str,
    cpus: float = 1.0,
    memory: int = GiB,
    disk: int = 0,
    tenant: str | None = None,
    nodes: frozenset[str] = frozenset(),
    avoid: frozenset[str] = frozenset(),
) -> Workload:
    return factories.workload(
        wid, tenant=tenant, resources=Resources(cpus, memory, disk), nodes=nodes, avoid=avoid
    )
