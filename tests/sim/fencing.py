"""The fencing core in the simulator: drifting clocks, a lagging membership, fake BMCs.

Theory of operation
-------------------
:class:`FencingSim` runs one :class:`~meshd.core.fencing.Fencer` per node on the
simulator's virtual clock (:mod:`.clock`) and faulty network (:mod:`.network`). It
models the shell's contract exactly: the effects of one step are applied with every
``Persist`` first (into the node's durable list, kept across crashes, encoded with the
core's codec), then the sends (every message encoded and decoded; votes "signed" with
a per-node key the receiving side checks, so a forged or altered vote fails), then the
rest. A restarted node's core is :meth:`~meshd.core.fencing.Fencer.restore`-d from
its records.

*Clocks.* Node ``i`` reads ``offset_i + rate_i * t`` with ``rate_i`` drawn within the
config's ``drift`` bound; every time the core sees (``now``, deadlines, timers) is its
own clock, converted back to real time only to schedule events and check invariants.

*Membership* is an oracle that lags like SWIM: a node holds a peer dead once it has
not reached it directly for ``detect_s`` (2.5 s: what SWIM takes at 16 nodes on the
LAN preset); dead and alive claims spread by gossip to reachable nodes each
``gossip_s``; a live node that meets a claim of its own death refutes it at a higher
incarnation. So a relayed claim can make a node "dead" in views that can still reach
it: its direct check (``CheckReach``) then says reachable and it does not vote.

*BMC* per node: the machine's power. ``PowerOff`` runs against it with the effect's
hard deadline (converted to real time with the coordinator's clock): it can take a
delay, time out, refuse, or report the wrong state; a verified Off kills the node's
process (the machine is off) and ``power_on`` brings it back at a higher incarnation.
A coordinator that crashes ends its BMC requests with it.

Invariants, checked on every event that could break them (:attr:`FencingSim.problems`):

* power-off windows of two different ballots for one (target, epoch) never overlap in
  real time;
* a ``PowerOff`` is only ever emitted with grants from a majority of the roster (the
  ground truth: the votes that left the voters), so a minority never powers off;
* every ``Fenced`` sent carries a majority of valid votes for its ballot and follows
  a verified Off or an operator's confirm of that ballot;
* no node emits ``Replace`` twice for one (target, epoch), nor before a verified Off or
  a confirm of that (target, epoch) exists.

``forget_grants`` models a shell that sends votes without writing them down: voters
that restart then grant a second ballot inside a lease, and the overlap check fires
(a test shows it), which is why every grant is a ``Persist`` first.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshd.config import FencingConfig
from meshd.core.fencing import (
    Alarm,
    Broadcast,
    CheckReach,
    Effect,
    Fenced,
    FenceFailed,
    Fencer,
    FenceVote,
    Granted,
    Persist,
    PowerOff,
    Replace,
    Send,
    SignedVote,
    codec,
)
from meshd.core.quorum import majority
from meshd.errors import EnvelopeError, FencingError
from tests.sim.clock import EventQueue
from tests.sim.network import LinkModel, Network

LIVE = ("alive", "suspect")
Key = tuple[str, int]


@dataclass
class Bmc:
    on: bool = True
    mode: str = "ok"  # ok | timeout | refuse | wrong-state
    delay: float = 0.0  # seconds from POST to Off


@dataclass
class Node:
    name: str
    rate: float
    offset: float
    secret: bytes
    up: bool = True
    boot: int = 0
    core: Fencer | None = None
    records: list[bytes] = field(default_factory=list)
    wake: float = math.inf
    powering: list[int] = field(default_factory=list)  # ids of this node's open windows


@dataclass
class Window:
    target: str
    epoch: int
    round: int
    coordinator: str
    start: float
    end: float = math.inf


class FencingSim:
    def __init__(
        self,
        seed: int,
        n: int,
        cfg: FencingConfig,
        link: LinkModel | None = None,
        *,
        detect_s: float = 2.5,
        gossip_s: float = 0.2,
        drift: bool = True,
    ) -> None:
        self.seed = seed
        self.cfg = cfg
        self.rng = random.Random(f"{seed}/sim")
        self.events = EventQueue(0.0)
        self.net = Network(random.Random(f"{seed}/net"), link)
        self.names = [f"n{i:02d}" for i in range(1, n + 1)]
        self.roster = frozenset(self.names)
        self.detect_s, self.gossip_s = detect_s, gossip_s
        d = cfg.drift if drift else 0.0
        self.nodes = {
            x: Node(
                x,
                rate=1 + self.rng.uniform(-d, d),
                offset=self.rng.uniform(0, 1000),
                secret=hashlib.sha256(f"{seed}/{x}".encode()).digest(),
            )
            for x in self.names
        }
        self.bmc = {x: Bmc() for x in self.names}
        # Membership oracle: views, own incarnations, when each peer was last reached.
        self.inc = dict.fromkeys(self.names, 1)
        self.view: dict[str, dict[str, tuple[str, int]]] = {
            i: {x: ("alive", 1) for x in self.names if x != i} for i in self.names
        }
        self.seen: dict[str, dict[str, float]] = {
            i: dict.fromkeys(self.names, 0.0) for i in self.names
        }
        # Ground truth for the invariants and the figures.
        self.problems: list[str] = []
        self.grants: dict[tuple[str, int, int, str], set[str]] = {}
        self.windows: list[Window] = []
        self.offs: set[tuple[str, int, int]] = set()  # verified Off per ballot
        self.confirmed: set[tuple[str, int, int]] = set()
        self.replaced: dict[tuple[str, str, int], int] = {}
        self.alarms: list[tuple[float, str, str, int, str]] = []
        self.dead_at: dict[Key, float] = {}  # first node to hold (target, epoch) dead
        self.off_at: dict[Key, float] = {}  # verified Off
        self.fenced_at: dict[Key, dict[str, float]] = {}  # who learnt Fenced when
        self.false_fences: list[str] = []
        self.power_offs = 0
        self.on_power_off: list[Callable[[str, Window], None]] = []
        self.forget_grants = False  # True: a shell that never writes its grants down
        self.log = logging.getLogger("meshd.sim.fencing")
        for x in self.names:
            self._boot(x)
        self.events.at(0.0, self._membership_round)

    # -- clocks ---------------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.events.now

    def local(self, x: str) -> float:
        nd = self.nodes[x]
        return nd.offset + nd.rate * self.now

    def real(self, x: str, t_local: float) -> float:
        nd = self.nodes[x]
        return (t_local - nd.offset) / nd.rate

    def describe(self) -> str:
        return f"seed={self.seed} t={self.now:.3f} (replay with MESHD_SIM_SEED={self.seed})"

    # -- processes --------------------------------------------------------------------------

    def _boot(self, x: str) -> None:
        nd = self.nodes[x]
        nd.up = True
        nd.boot += 1
        core = Fencer(self.cfg, x, logging.getLogger(f"meshd.sim.{x}"))
        nd.core = core
        now = self.local(x)
        out = core.restore([codec.load_record(r) for r in nd.records], now)
        out += core.set_roster(self.roster, now)
        for y, (state, inc) in sorted(self.view[x].items()):
            out += core.member(y, state, inc, now)
        self._apply(x, out)

    def crash(self, x: str) -> None:
        """The meshd process dies (the machine stays on): memory and timers are gone."""
        nd = self.nodes[x]
        if not nd.up:
            return
        nd.up = False
        nd.core = None
        nd.wake = math.inf
        for i in nd.powering:  # its BMC requests die with it
            self.windows[i].end = min(self.windows[i].end, self.now)
        nd.powering.clear()

    def restart(self, x: str) -> None:
        if self.nodes[x].up or not self.bmc[x].on:
            return
        self.inc[x] += 1  # SWIM: a restarted member refutes above what it was
        self._boot(x)

    def power_on(self, x: str) -> None:
        """The fenced machine is switched back on: meshd starts again from its store."""
        if self.bmc[x].on:
            return
        self.bmc[x].on = True
        self.restart(x)

    def up(self, x: str) -> bool:
        return self.nodes[x].up and self.bmc[x].on

    def reachable(self, a: str, b: str) -> bool:
        return (
            self.up(a) and self.up(b) and not self.net.blocked(a, b) and not self.net.blocked(b, a)
        )

    # -- membership oracle ------------------------------------------------------------------

    def _set_view(self, i: str, x: str, state: str, inc: int) -> None:
        self.view[i][x] = (state, inc)
        if state == "dead":
            self.dead_at.setdefault((x, inc), self.now)
        core = self.nodes[i].core
        if core is not None and self.nodes[i].up:
            self._apply(i, core.member(x, state, inc, self.local(i)))

    def _membership_round(self) -> None:
        live = [x for x in self.names if self.up(x)]
        for i in live:
            vi = self.view[i]
            for x in self.names:
                if x == i:
                    continue
                if self.reachable(i, x):
                    self.seen[i][x] = self.now
                    st, inc = vi[x]
                    if st == "dead" and inc >= self.inc[x]:
                        self.inc[x] = inc + 1  # x hears it is held dead: it refutes
                    if self.inc[x] > inc or st == "dead":
                        self._set_view(i, x, "alive", self.inc[x])
                elif vi[x][0] in LIVE and self.now - self.seen[i][x] > self.detect_s:
                    self._set_view(i, x, "dead", vi[x][1])
        for i in live:  # gossip with two random reachable peers, both ways
            peers = [j for j in live if j != i and self.reachable(i, j)]
            for j in self.rng.sample(peers, min(2, len(peers))):
                self._merge(i, j)
                self._merge(j, i)
        self.events.after(self.gossip_s, self._membership_round)

    def _merge(self, i: str, j: str) -> None:
        """``i`` learns ``j``'s claims (SWIM precedence, simplified)."""
        for x, (st, inc) in sorted(self.view[j].items()):
            if x == i:
                if st == "dead" and inc >= self.inc[i]:
                    self.inc[i] = inc + 1
                    self._set_view(j, i, "alive", self.inc[i])
                continue
            mine, my_inc = self.view[i][x]
            if inc > my_inc or (inc == my_inc and st == "dead" and mine in LIVE):
                self._set_view(i, x, st, inc)

    # -- effects ----------------------------------------------------------------------------

    def _apply(self, x: str, effects: list[Effect]) -> None:
        nd = self.nodes[x]
        for e in effects:  # every Persist of the step first, in one transaction
            if isinstance(e, Persist):
                if self.forget_grants and isinstance(e.record, Granted):
                    continue  # a broken shell, to show the promise matters
                nd.records.append(codec.dump_record(e.record))
        for e in effects:
            if isinstance(e, Send):
                self._send(x, e.to, e.msg, e.reliable)
            elif isinstance(e, Broadcast):
                if isinstance(e.msg, Fenced):
                    self._check_fenced(x, e.msg)
                for y in self.names:
                    if y != x:
                        self._send(x, y, e.msg, e.reliable)
        for e in effects:
            if isinstance(e, CheckReach):
                self._check_reach(x, e)
            elif isinstance(e, PowerOff):
                self._power_off(x, e)
            elif isinstance(e, Replace):
                if not any(b[:2] == (e.target, e.epoch) for b in (*self.offs, *self.confirmed)):
                    self.problems.append(
                        f"{x} re-placed {e.target}/{e.epoch} with no verified Off or confirm"
                    )
                key = (x, e.target, e.epoch)
                self.replaced[key] = self.replaced.get(key, 0) + 1
                if self.replaced[key] > 1:
                    self.problems.append(f"{x} re-placed {e.target} twice for epoch {e.epoch}")
                self.fenced_at.setdefault((e.target, e.epoch), {})[x] = self.now
            elif isinstance(e, Alarm):
                self.alarms.append((self.now, x, e.target, e.epoch, e.reason))
        self._schedule(x)

    def _schedule(self, x: str) -> None:
        nd = self.nodes[x]
        if nd.core is None:
            return
        t = nd.core.next_deadline()
        if math.isinf(t):
            return
        when = max(self.now, self.real(x, t))
        if when < nd.wake or nd.wake < self.now:
            nd.wake = when
            self.events.at(when, self._wake, x, nd.boot, when, t)

    def _wake(self, x: str, boot: int, when: float, due: float) -> None:
        nd = self.nodes[x]
        if not nd.up or nd.boot != boot or nd.wake != when or nd.core is None:
            return
        nd.wake = math.inf
        # Converting real time back can land a hair before ``due``: wake at it, not before.
        self._apply(x, nd.core.tick(max(self.local(x), due)))

    def sign(self, x: str, data: bytes) -> bytes:
        mac = hmac.new(self.nodes[x].secret, data, hashlib.sha256).digest()[:16]
        return x.encode() + b"|" + mac + data

    def verify(self, blob: bytes) -> SignedVote | None:
        voter_b, sep, rest = blob.partition(b"|")
        voter = voter_b.decode(errors="replace")
        if not sep or voter not in self.nodes or len(rest) < 16:
            return None
        mac, data = rest[:16], rest[16:]
        want = hmac.new(self.nodes[voter].secret, data, hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(mac, want):
            return None
        try:
            vote = codec.decode(data)
        except EnvelopeError:
            return None
        return SignedVote(voter, vote, blob) if isinstance(vote, FenceVote) else None

    def _send(self, src: str, dst: str, msg: Any, reliable: bool) -> None:
        data = codec.encode(msg)
        blob = b""
        if isinstance(msg, FenceVote):
            self.grants.setdefault((msg.target, msg.epoch, msg.round, msg.coordinator), set()).add(
                src
            )
            blob = self.sign(src, data)
        if dst == src:
            self.events.at(self.now, self._deliver, src, dst, data, blob)
            return
        for delay in self.net.delays(src, dst, reliable):
            self.events.after(delay, self._deliver, src, dst, data, blob)

    def _deliver(self, src: str, dst: str, data: bytes, blob: bytes) -> None:
        nd = self.nodes[dst]
        if not self.up(dst) or nd.core is None or (src != dst and self.net.blocked(src, dst)):
            return
        msg = codec.decode(data)
        votes: tuple[SignedVote, ...] = ()
        if isinstance(msg, FenceVote):
            v = self.verify(blob)
            votes = (v,) if v is not None and v.voter == src else ()
        elif isinstance(msg, Fenced | FenceFailed):
            votes = tuple(v for v in map(self.verify, msg.votes) if v is not None)
        self._apply(dst, nd.core.receive(msg, src, self.local(dst), votes))

    def _check_reach(self, x: str, e: CheckReach) -> None:
        loss = self.net.model.loss
        ok = self.reachable(x, e.target) and not (loss and self.rng.random() < loss**3)
        delay = 0.002 if ok else self.cfg.check_s / self.nodes[x].rate
        self.events.after(delay, self._reach_result, x, self.nodes[x].boot, e, ok)

    def _reach_result(self, x: str, boot: int, e: CheckReach, ok: bool) -> None:
        nd = self.nodes[x]
        if nd.up and nd.boot == boot and nd.core is not None:
            self._apply(x, nd.core.reach(e.target, e.epoch, ok, self.local(x)))

    # -- the BMC ----------------------------------------------------------------------------

    def _power_off(self, x: str, e: PowerOff) -> None:
        self.power_offs += 1
        granted = self.grants.get((e.target, e.epoch, e.round, x), set())
        if len(granted & self.roster) < majority(len(self.roster)):
            self.problems.append(
                f"{x} powers off {e.target}/{e.epoch} with grants from only {sorted(granted)}"
            )
        others = [y for y in self.names if y != e.target]
        reach = sum(self.reachable(y, e.target) for y in others)
        if self.up(e.target) and reach + 1 >= majority(len(self.roster)):
            self.false_fences.append(
                f"t={self.now:.3f} {x} fences {e.target}/{e.epoch}, reachable from {reach}"
            )
        w = Window(e.target, e.epoch, e.round, x, self.now)
        self.windows.append(w)
        wid = len(self.windows) - 1
        self.nodes[x].powering.append(wid)
        for other in self.windows[:-1]:
            if (
                (other.target, other.epoch) == (e.target, e.epoch)
                and (other.round, other.coordinator) != (e.round, x)
                and other.end > w.start
            ):
                self.problems.append(
                    f"power-off windows overlap for {e.target}/{e.epoch}: round {other.round} "
                    f"of {other.coordinator} [{other.start:.3f}, {other.end:.3f}] and round "
                    f"{e.round} of {x} from {w.start:.3f}"
                )
        for hook in self.on_power_off:
            hook(x, w)
        bmc = self.bmc[e.target]
        deadline = self.real(x, e.deadline)
        boot = self.nodes[x].boot
        if deadline <= self.now:
            self.problems.append(f"{x} got a PowerOff whose deadline already passed")
        if not bmc.on:
            self.events.after(0.005, self._bmc_done, x, boot, wid, e, "already-off", "")
        elif bmc.mode == "refuse":
            self.events.after(0.01, self._bmc_done, x, boot, wid, e, "failed", "refused: 403")
        elif bmc.mode == "ok" and self.now + bmc.delay + 0.005 < deadline:
            self.events.after(bmc.delay + 0.005, self._bmc_done, x, boot, wid, e, "off", "")
        else:
            why = {"timeout": "unreachable: timed out", "wrong-state": "wrong state: still On"}
            reason = why.get(bmc.mode, "deadline: not Off in time")
            self.events.at(deadline, self._bmc_done, x, boot, wid, e, "failed", reason)

    def _bmc_done(
        self, x: str, boot: int, wid: int, e: PowerOff, outcome: str, reason: str
    ) -> None:
        nd = self.nodes[x]
        if not nd.up or nd.boot != boot or wid not in nd.powering:
            return  # the coordinator died: its requests ended with it
        nd.powering.remove(wid)
        w = self.windows[wid]
        w.end = self.now
        if outcome == "off":
            bmc = self.bmc[e.target]
            bmc.on = False
            self.crash(e.target)
        if outcome in ("off", "already-off"):
            self.offs.add((e.target, e.epoch, e.round))
            self.off_at.setdefault((e.target, e.epoch), self.now)
        assert nd.core is not None
        self._apply(
            x, nd.core.power_result(e.target, e.epoch, e.round, outcome, self.local(x), reason)
        )

    def confirm(self, x: str, target: str) -> bool:
        """The operator's ``meshd fence confirm`` on ``x``; False when refused."""
        nd = self.nodes[x]
        if nd.core is None:
            return False
        status = {s["node"]: s for s in nd.core.status()}.get(target)
        try:
            out = nd.core.confirm(target, self.local(x))
        except FencingError:  # refused: the point of asking
            return False
        assert status is not None
        self.confirmed.add((target, int(str(status["epoch"])), int(str(status["round"]))))
        self._apply(x, out)
        return True

    def _check_fenced(self, x: str, msg: Fenced) -> None:
        voters = {
            v.voter
            for v in map(self.verify, msg.votes)
            if v is not None
            and (v.vote.target, v.vote.epoch, v.vote.round, v.vote.coordinator)
            == (msg.target, msg.epoch, msg.round, msg.coordinator)
        }
        if len(voters & self.roster) < majority(len(self.roster)):
            self.problems.append(f"{x} sent Fenced for {msg.target}/{msg.epoch} without a quorum")
        ballot = (msg.target, msg.epoch, msg.round)
        if ballot not in self.offs and ballot not in self.confirmed:
            self.problems.append(
                f"{x} sent Fenced for {msg.target}/{msg.epoch} round {msg.round} "
                "without a verified Off or a confirm"
            )

    # -- running ----------------------------------------------------------------------------

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        self.events.at(t, fn, *args)

    def run_until(self, t: float) -> None:
        self.events.run_until(t)
