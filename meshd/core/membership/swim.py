"""The membership state machine: SWIM failure detection with Lifeguard refinements.

Theory of operation
-------------------
*Probing* (SWIM, Das et al. 2002, §3 and §4.3). Every ``probe_interval`` this node
pings the next member of a shuffled round-robin list (reshuffled every pass, new
members inserted at a random place), so every member is probed by everyone within a
bounded time. No ack within ``probe_timeout`` → ask ``indirect_probes`` random alive
members to ping it for us (``PingReq``); they forward the target's ack, or a *nack*
when they could not reach it (Lifeguard §4.1), so we can tell "the target is down"
from "my own network is bad". No ack by the end of the interval → *suspect* the target
at the incarnation we know and broadcast ``Suspect``.

*Suspicion* (SWIM §4.2, Lifeguard §4.2, :mod:`.suspicion`). A suspected member becomes
dead when its timer expires; the timer starts long and shrinks as distinct members
confirm the suspicion. A member that hears itself suspected or declared dead at an
incarnation ≥ its own *refutes*: it raises its incarnation above the claim and
broadcasts ``Alive``.

*Precedence* (SWIM §4.2, memberlist ``state.go``), for a member currently at
incarnation ``i``:

* ``Alive(j)`` wins iff ``j > i`` (from any state, so a dead member that refutes is
  back); an unknown name is a new member;
* ``Suspect(j)`` on an alive member wins iff ``j >= i``; on a suspect one it is a
  confirmation (``j == i``) or restarts the evidence (``j > i``); on dead/left, ignored;
* ``Dead(j)``/``Left(j)`` on a live member win iff ``j >= i``; final otherwise;
* about ourselves: ``Alive(j)`` with ``j > i`` (or ``j == i`` and another address),
  and ``Suspect``/``Dead``/``Left`` with ``j >= i``, make us refute — unless we left.

*Local health* (Lifeguard §4.1, :mod:`.awareness`) stretches our probe timeout and
interval when we miss nacks, fail probes, have to refute, or find that our own timers
ring late (our loop stalled: then the probe in flight is void and the stall does not
count against the members we suspect).

*Dissemination* (SWIM §4.4, :mod:`.broadcasts`). Updates are piggybacked on every ping,
ack, nack and ping-req, and every ``gossip_interval`` (only when something is queued)
sent to ``gossip_nodes`` random live or recently dead members. Each is sent
``retransmit_mult·ceil(log10(N+1))`` times; a newer update about a member replaces a
queued older one. The general :meth:`Membership.broadcast` facility rides the same
queue, deduplicated by ``(origin, id)``.

*Anti-entropy* (memberlist push-pull). Every ``push_pull_interval`` (scaled up beyond
32 members as memberlist does) exchange full state with one random alive member over
the reliable channel, and — like Serf's reconnect — with one random dead one, so
partitions heal once the network does. ``join`` is a push-pull with the seeds, retried
with backoff until one of them answers (not merely until we know somebody: members
that met one another without a seed would stay an island), and again whenever no seed
is among the members we hold alive.

Where meshd departs from memberlist and the papers
--------------------------------------------------
* Every datagram carries the *sender's own* incarnation and the shell authenticates
  the sender, so a message from a member at a higher incarnation counts as its
  ``Alive``, and a message from a member we hold at a higher incarnation or as
  suspect/dead earns it a direct correction so it refutes at once. A restarted node
  (incarnation 0, nothing persisted) learns its old incarnation from the first
  member it talks to and refutes above it.
* At the probe timeout the prober also pings the target directly once more, next to
  the ping-reqs (memberlist falls back to TCP here): a direct retry crosses two
  lossy hops, an indirect probe four. Under 10 % loss this cuts false suspicions ~5x.
* The prober tells the suspect directly when it suspects it, and pings of a suspect
  carry the suspicion (Lifeguard's "buddy system"), so refutation starts in one hop.
* A node that receives a ``Suspect``/``Dead`` claim older than the ``Alive`` it holds
  sends the newer ``Alive`` straight back to whoever relayed it (rate-limited). The
  epidemic otherwise leaves a tail — ~1 node in 50,000 misses a refutation it needed
  under 10 % loss — and that node would declare a live member dead; the stale
  relayer is exactly that node.
* The first gossip round after the queue was empty goes out at once (not at the next
  interval boundary); the interval only rate-limits sustained gossip.
* Merging a push-pull, a remote ``dead`` record is a suspicion (memberlist does the
  same) attributed to the sender.
* A message from an unknown sender triggers a push-pull with it (at most one per
  probe interval), which is how a restarted seed with no seeds of its own finds the
  mesh again.
* ``join`` contacts ``join_fanout`` seeds at a time (the next ones on each retry), not
  every address given: a restarted node is given every roster address it remembers,
  and a chassis restarting together must not exchange full state pairwise.
* ``mark`` sets a state locally without gossip: the hook later issues (fencing) use.

Nothing here does IO, reads a clock or uses global randomness: the shell passes
``now`` and a seeded ``random.Random`` and carries out the returned effects.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
from collections import deque
from collections.abc import Iterable

from meshd.config import MembershipConfig
from meshd.core.membership import codec, suspicion, timings
from meshd.core.membership.awareness import Awareness
from meshd.core.membership.broadcasts import BroadcastQueue
from meshd.core.membership.effects import Deliver, Effect, MemberChanged, Send
from meshd.core.membership.messages import (
    Ack,
    Alive,
    Dead,
    Gossip,
    Left,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Record,
    Suspect,
    Update,
    UserMsg,
)
from meshd.core.membership.probes import Probe, ProbeOrder, Relay
from meshd.core.membership.state import (
    INCARNATION_MAX,
    Address,
    Identity,
    Member,
    MemberState,
    NameSet,
    sample_names,
)

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)
_SEQ_MASK = 0xFFFFFFFF
# Bounds on what peers can make us hold: ping-reqs in flight, queued broadcasts,
# remembered broadcast ids. Sizes, not timings.
_MAX_RELAYS = 1024
_MAX_QUEUE = 1024
_MAX_SEEN = 65536


# -- helpers ------------------------------------------------------------------------


def _ok_int(x: object) -> bool:
    return type(x) is int and 0 <= x <= INCARNATION_MAX


# -- the core -----------------------------------------------------------------------


class Membership:
    """One node's SWIM/Lifeguard membership: feed it messages and ticks, run its effects.

    Drive it like this: call :meth:`receive` for every decoded membership message,
    and :meth:`tick` whenever the clock reaches :meth:`next_deadline` (calling it
    early is harmless). Re-read :meth:`next_deadline` after every call: a received
    message can move it earlier (something new to gossip is due at once).
    """

    def __init__(
        self,
        cfg: MembershipConfig,
        me: Identity,
        rng: random.Random,
        now: float,
        log: logging.Logger,
    ) -> None:
        self._cfg = cfg
        self._me = me
        self._name = me.name
        self._rng = rng
        self._log = log
        self._inc = 0
        self._left = False
        self._members: dict[str, Member] = {
            me.name: Member(me.name, me.node_id, me.address, ALIVE, 0, now)
        }
        self._sets: dict[MemberState, NameSet] = {s: NameSet() for s in MemberState}
        self._suspicions: dict[str, suspicion.Suspicion] = {}
        self._susp_heap: list[tuple[float, int, str]] = []
        self._heap_tie = 0
        self._queue = BroadcastQueue()
        self._awareness = Awareness(cfg.awareness_max)
        self._seq = rng.getrandbits(32)
        self._probe: Probe | None = None
        self._probe_order = ProbeOrder(rng)
        # Stagger the first probe and push-pull so nodes started together don't beat
        # in lockstep.
        self._next_probe = now + rng.uniform(0, cfg.probe_interval_s)
        self._next_gossip = now
        self._next_push_pull = now + rng.uniform(0, cfg.push_pull_interval_s)
        self._relays: dict[int, Relay] = {}
        self._relay_heap: list[tuple[float, int]] = []
        self._reclaim_heap: list[tuple[float, str, float]] = []
        self._gossip_dead = NameSet()
        self._gossip_dead_heap: list[tuple[float, str, float]] = []
        # Broadcast ids seen, and (expiry, key) in arrival order to forget them.
        self._seen: set[tuple[str, int]] = set()
        self._seen_fifo: deque[tuple[float, tuple[str, int]]] = deque()
        self._told: dict[str, float] = {}
        self._seeds: tuple[Address, ...] = ()
        self._seed_next = 0
        self._seed_answered = False  # a seed replied to our push-pull (_retry_join)
        # Members we hold at an incarnation only their datagrams told (_heard): their
        # address comes with their own Alive at that incarnation.
        self._addr_pending: set[str] = set()
        self._settled = False  # the exchange soon after joining is scheduled (_retry_join)
        self._settle_at = math.inf  # ...and due then (apart from the periodic push-pull)
        self._join_retry_at = math.inf
        self._next_stranger_pp = now
        # When the shell should tick us next, as of our last run: how late a tick comes
        # is measured against it (see tick).
        self._expect = math.inf
        self.stalls = 0  # ticks that came late enough to mean our own loop stalled
        self._join_backoff = cfg.probe_interval_s
        self._announce()

    # -- public API ------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def incarnation(self) -> int:
        return self._inc

    @property
    def health(self) -> int:
        """Lifeguard's local health score (0 is healthy)."""
        return self._awareness.score

    def members(self) -> list[Member]:
        """Every member this node knows, itself included, in the order first learnt."""
        return list(self._members.values())

    def member(self, name: str) -> Member | None:
        return self._members.get(name)

    def live_count(self) -> int:
        """N: live members including ourselves (unless we left)."""
        return len(self._sets[ALIVE]) + len(self._sets[SUSPECT]) + (0 if self._left else 1)

    def pending_broadcasts(self) -> int:
        """Updates still waiting to be gossiped (after :meth:`leave`, wait for 0)."""
        return len(self._queue)

    def join(self, seeds: Iterable[Address], now: float) -> list[Effect]:
        """Push-pull with the seeds; retried until a seed answers (see _retry_join)."""
        self._seeds = tuple((str(h), int(p)) for h, p in seeds if (h, p) != self._me.address)
        self._seed_next = 0
        self._seed_answered = False
        self._join_backoff = self._cfg.probe_interval_s
        self._join_retry_at = now + self._join_backoff
        out: list[Effect] = []
        self._push_seeds(out)
        return out

    def receive(self, msg: Message, sender: str, addr: Address, now: float) -> list[Effect]:
        """Handle one message that the shell authenticated as coming from ``sender``."""
        out: list[Effect] = []
        msg_: object = msg  # peers can send anything the codec lets through
        if not sender or sender == self._name:
            self._log.debug("drop reason=bad-sender sender=%r", sender)
        elif isinstance(msg_, Ping):
            self._on_ping(msg_, sender, addr, now, out)
        elif isinstance(msg_, Ack):
            self._on_ack(msg_, sender, addr, now, out)
        elif isinstance(msg_, Gossip):
            self._on_gossip(msg_, sender, addr, now, out)
        elif isinstance(msg_, PingReq):
            self._on_pingreq(msg_, sender, addr, now, out)
        elif isinstance(msg_, Nack):
            self._on_nack(msg_, sender, addr, now, out)
        elif isinstance(msg_, PushPull):
            self._on_pushpull(msg_, sender, addr, now, out)
        else:
            self._log.debug("drop reason=unknown-message type=%s from=%s", type(msg), sender)
        # When the next tick should come now (a deadline moved into the past is due at
        # once, not late). Once the expected tick is overdue a receive may only bring
        # it forward: the first datagram read after a stall must not hide the stall
        # from the tick that follows it.
        expect = max(self._due(), now)
        self._expect = expect if now < self._expect else min(self._expect, expect)
        return out

    def tick(self, now: float) -> list[Effect]:
        """Run every timer that is due: probes, suspicions, relays, gossip, push-pull."""
        out: list[Effect] = []
        late = now - self._expect
        if late > self._cfg.stall_s:
            self._stalled(now, late)
        self._expire_suspicions(now, out)
        self._expire_relays(now, out)
        p = self._probe
        if p is not None and not p.indirect_sent and now >= p.timeout_at:
            self._indirect(p, out)
        p = self._probe
        if p is not None and now >= p.end_at:
            self._probe_failed(p, now, out)
        if self._probe is None and now >= self._next_probe and not self._left:
            self._start_probe(now, out)
        if len(self._queue) and now >= self._next_gossip and self._has_targets():
            self._next_gossip = now + self._cfg.gossip_interval_s
            self._gossip(now, out)
        if now >= self._next_push_pull and not self._left:
            self._next_push_pull = now + timings.push_pull_interval(self._cfg, self.live_count())
            self._push_pull(out)
        if now >= self._settle_at:
            self._settle_at = math.inf
            if not self._left:
                self._push_pull(out)
        if now >= self._join_retry_at and not self._left:
            self._retry_join(now, out)
        self._housekeeping(now)
        self._expect = max(self._due(), now)
        return out

    def _due(self) -> float:
        """When the earliest timer that measures time came due: the moment the shell was
        asked to tick us (gossip is excluded: its first round is due "now" on purpose)."""
        d = math.inf if self._left else min(self._next_probe, self._next_push_pull)
        p = self._probe
        if p is not None:
            d = min(d, p.end_at if p.indirect_sent else p.timeout_at)
        if self._susp_heap:
            d = min(d, self._susp_heap[0][0])
        if self._relay_heap:
            d = min(d, self._relay_heap[0][0])
        return d

    def _stalled(self, now: float, late: float) -> None:
        """Our own loop ran ``late`` seconds behind (Lifeguard's local health, driven
        by our own lateness): what we measured meanwhile is about us, not the others.

        * the probe in flight is void: its ack may be sitting unread in our socket;
        * the stall does not count against the members we suspect: their timers move
          on by its length (at most twice their longest timeout in all), and one that
          came due waits a probe interval more for the refutations queued behind it;
        * ping-reqs we relay are dropped without a nack (a nack would say the target
          is unreachable, and we don't know that);
        * the local health score rises by one, and one more per probe interval lost.
        """
        self.stalls += 1
        self._awareness.apply(1 + int(late / self._cfg.probe_interval_s))
        self._log.debug(
            "loop stalled late_s=%.3f health=%d probe=%s",
            late,
            self._awareness.score,
            self._probe.target if self._probe is not None else None,
        )
        if self._probe is not None:
            self._probe = None
            self._next_probe = min(self._next_probe, now)
        grace = self._cfg.probe_interval_s
        for name, sus in self._suspicions.items():
            if sus.pause(late, now, grace):
                self._push_suspicion(name, sus)
        relays = self._relay_heap
        while relays and relays[0][0] <= now:
            self._relays.pop(heapq.heappop(relays)[1], None)

    def next_deadline(self) -> float:
        """The time by which :meth:`tick` must next run."""
        d = math.inf if self._left else min(self._next_probe, self._next_push_pull)
        p = self._probe
        if p is not None:
            d = min(d, p.end_at if p.indirect_sent else p.timeout_at)
        if len(self._queue) and self._has_targets():
            d = min(d, self._next_gossip)
        if self._susp_heap:
            d = min(d, self._susp_heap[0][0])
        if self._relay_heap:
            d = min(d, self._relay_heap[0][0])
        if not self._left:
            d = min(d, self._join_retry_at, self._settle_at)
        return d

    def broadcast(
        self, kind: str, payload: bytes, now: float, key: str | None = None
    ) -> list[Effect]:
        """Gossip ``payload`` to every other member, once each (best effort, epidemic).

        A ``key`` names what the payload is the latest version of (a workload's state):
        a newer broadcast of one kind and key replaces the older one still queued here.
        Raises ValueError if it can't fit one datagram, RuntimeError after :meth:`leave`.
        """
        if self._left:
            raise RuntimeError("can't broadcast after leaving the mesh")
        u = UserMsg(self._name, self._rng.getrandbits(64), kind, bytes(payload))
        size = codec.update_size(u)
        if codec.GOSSIP_BASE + size > self._cfg.max_gossip_bytes:
            raise ValueError(
                f"broadcast of {len(payload)} bytes does not fit max_gossip_bytes "
                f"({self._cfg.max_gossip_bytes})"
            )
        self._remember(u, now)
        self._queue.push(u, size, key=None if key is None else ("user", kind, key), born=now)
        self._bound_queue()
        return []

    def leave(self, now: float) -> list[Effect]:
        """Say goodbye: broadcast ``Left``, stop probing; keep ticking until drained."""
        if self._left:
            return []
        out: list[Effect] = []
        self._left = True
        self._probe = None
        me = self._members[self._name]
        self._members[self._name] = Member(me.name, me.node_id, me.address, LEFT, self._inc, now)
        out.append(MemberChanged(self._members[self._name], me.state))
        self._log.info("leaving inc=%d", self._inc)
        u = Left(self._name, self._inc)
        self._queue.push(u, codec.update_size(u), key=self._name)
        self._next_gossip = now + self._cfg.gossip_interval_s
        self._gossip(now, out)
        return out

    def mark(self, name: str, state: MemberState, now: float) -> list[Effect]:
        """Set ``name``'s state locally, without gossip (hook for later cores)."""
        m = self._members.get(name)
        if m is None or name == self._name or m.state is state:
            return []
        out: list[Effect] = []
        self._set(name, state, m.incarnation, now, out)
        return out

    # -- receiving -------------------------------------------------------------------

    def _on_ping(
        self, msg: Ping, sender: str, addr: Address, now: float, out: list[Effect]
    ) -> None:
        self._updates(msg.updates, sender, addr, now, out)
        self._heard(sender, msg.inc, addr, now, out)
        if msg.target != self._name:
            self._log.debug("drop reason=ping-for-other target=%s from=%s", msg.target, sender)
            return
        if not _ok_int(msg.seq):
            self._log.debug("drop reason=bad-seq from=%s", sender)
            return
        out.append(Send(addr, Ack(msg.seq, self._inc, self._fill(codec.ACK_BASE))))

    def _on_ack(self, msg: Ack, sender: str, addr: Address, now: float, out: list[Effect]) -> None:
        self._updates(msg.updates, sender, addr, now, out)
        self._heard(sender, msg.inc, addr, now, out)
        p = self._probe
        if p is not None and msg.seq == p.seq and (sender == p.target or sender in p.helpers):
            self._probe = None
            self._awareness.apply(-1)
            return
        relay = self._relays.get(msg.seq)
        if relay is not None and relay.target == sender:
            del self._relays[msg.seq]
            fwd = Ack(relay.seq, self._inc, self._fill(codec.ACK_BASE))
            out.append(Send(relay.requester, fwd))
            return
        self._log.debug("drop reason=unexpected-ack seq=%s from=%s", msg.seq, sender)

    def _on_nack(
        self, msg: Nack, sender: str, addr: Address, now: float, out: list[Effect]
    ) -> None:
        self._updates(msg.updates, sender, addr, now, out)
        self._heard(sender, msg.inc, addr, now, out)
        p = self._probe
        if p is not None and msg.seq == p.seq and sender in p.helpers:
            p.nacks.add(sender)
        else:
            self._log.debug("drop reason=unexpected-nack seq=%s from=%s", msg.seq, sender)

    def _on_pingreq(
        self, msg: PingReq, sender: str, addr: Address, now: float, out: list[Effect]
    ) -> None:
        self._updates(msg.updates, sender, addr, now, out)
        self._heard(sender, msg.inc, addr, now, out)
        if not _ok_int(msg.seq):
            self._log.debug("drop reason=bad-seq from=%s", sender)
            return
        if msg.target == self._name:
            out.append(Send(addr, Ack(msg.seq, self._inc, self._fill(codec.ACK_BASE))))
            return
        if len(self._relays) >= _MAX_RELAYS:
            self._log.debug("drop reason=too-many-relays from=%s", sender)
            return
        known = self._members.get(msg.target)
        target_addr = known.address if known is not None else msg.target_addr
        seq = self._next_seq()
        self._relays[seq] = Relay(addr, msg.seq, msg.target)
        heapq.heappush(self._relay_heap, (now + self._cfg.probe_timeout_s, seq))
        ping = Ping(seq, self._inc, msg.target, self._fill(codec.ping_base(msg.target)))
        out.append(Send(target_addr, ping))

    def _on_gossip(
        self, msg: Gossip, sender: str, addr: Address, now: float, out: list[Effect]
    ) -> None:
        self._updates(msg.updates, sender, addr, now, out)
        self._heard(sender, msg.inc, addr, now, out)

    def _on_pushpull(
        self, msg: PushPull, sender: str, addr: Address, now: float, out: list[Effect]
    ) -> None:
        if len(msg.records) > codec.MAX_RECORDS:
            self._log.debug("drop reason=push-pull-too-large from=%s", sender)
            return
        reply_to = addr
        for r in msg.records:
            if r.name == sender and r.state is ALIVE:
                reply_to = r.addr
            self._merge(r, sender, now, out)
        if msg.reply and reply_to in self._seeds:
            self._seed_answered = True
        if not msg.reply and not self._left:
            out.append(Send(reply_to, PushPull(self._records(), reply=True), reliable=True))

    def _merge(self, r: Record, sender: str, now: float, out: list[Effect]) -> None:
        if r.state is ALIVE:
            self._on_alive(Alive(r.name, r.node_id, r.addr, r.inc), now, out)
        elif r.state is LEFT:
            self._on_dead(Dead(r.name, r.inc, r.name), now, out, left=True)
        elif r.state in (SUSPECT, DEAD):
            # A remote "dead" is only a suspicion here: it may be stale, and this way
            # the member still gets its chance to refute.
            self._on_suspect(Suspect(r.name, r.inc, sender), now, out)

    def _updates(
        self, updates: Iterable[object], sender: str, addr: Address, now: float, out: list[Effect]
    ) -> None:
        stale: list[Update] = []
        for u in updates:
            if isinstance(u, Alive):
                self._on_alive(u, now, out)
            elif isinstance(u, Suspect):
                self._on_suspect(u, now, out, stale)
            elif isinstance(u, Dead):
                self._on_dead(u, now, out, stale=stale)
            elif isinstance(u, Left):
                self._on_dead(Dead(u.name, u.inc, u.name), now, out, left=True)
            elif isinstance(u, UserMsg):
                self._on_user(u, now, out)
            else:
                self._log.debug("drop reason=unknown-update type=%s from=%s", type(u), sender)
        if stale and self._may_tell(sender, now):
            # The sender spreads an accusation that was already refuted: set it
            # straight, or it may declare a live member dead.
            out.append(Send(addr, Gossip(self._inc, self._fill(codec.GOSSIP_BASE, tuple(stale)))))

    def _heard(self, sender: str, inc: int, addr: Address, now: float, out: list[Effect]) -> None:
        """The authenticated sender speaks for itself: ``inc`` is its own incarnation."""
        m = self._members.get(sender)
        if m is None:
            # Someone we don't know talks to us: exchange state with it (that is how
            # a restarted node with nothing persisted finds the mesh again).
            # At most one such exchange per probe interval: when a whole chassis starts
            # together everybody is a stranger to everybody for a moment, and one
            # full-state exchange per pair would be a storm.
            if not self._left and now >= self._next_stranger_pp and self._may_tell(sender, now):
                self._next_stranger_pp = now + self._cfg.probe_interval_s
                out.append(Send(addr, PushPull(self._records()), reliable=True))
            return
        if not _ok_int(inc):
            return
        if inc > m.incarnation:
            # It speaks at a newer incarnation, so it is alive; but a restart may have
            # moved it to another address, which only its own Alive says. So take the
            # incarnation, gossip nothing, and take the address from its Alive when it
            # comes at this incarnation (else we would hold, and spread, the old one).
            self._set(sender, ALIVE, inc, now, out)
            self._addr_pending.add(sender)
        elif (inc < m.incarnation or m.state is not ALIVE) and self._may_tell(sender, now):
            claim = self._claim(m)
            if claim is not None:
                out.append(Send(addr, Gossip(self._inc, (claim,))))

    @staticmethod
    def _alive_of(m: Member) -> Alive:
        return Alive(m.name, m.node_id, m.address, m.incarnation)

    def _claim(self, m: Member) -> Update | None:
        """What we believe about ``m``, phrased so that ``m`` itself would refute it."""
        if m.state is ALIVE:
            return self._alive_of(m)
        if m.state is SUSPECT:
            return Suspect(m.name, m.incarnation, self._name)
        if m.state is DEAD:
            return Dead(m.name, m.incarnation, self._name)
        if m.state is LEFT:
            return Left(m.name, m.incarnation)
        return None

    def _may_tell(self, name: str, now: float) -> bool:
        """Rate-limit unsolicited corrections and push-pulls: one per probe interval."""
        last = self._told.get(name)
        if last is not None and now - last < self._cfg.probe_interval_s:
            return False
        self._told[name] = now
        return True

    # -- precedence rules ------------------------------------------------------------

    def _on_alive(self, a: Alive, now: float, out: list[Effect]) -> None:
        if not _ok_int(a.inc) or not a.name:
            self._log.debug("drop reason=bad-alive name=%r inc=%r", a.name, a.inc)
            return
        if a.name == self._name:
            if self._left or a.inc < self._inc:
                return
            if a.inc == self._inc and a.node_id == self._me.node_id and a.addr == self._me.address:
                return
            self._refute(a.inc, now, out)
            return
        m = self._members.get(a.name)
        if m is None:
            self._set(a.name, ALIVE, a.inc, now, out, a.node_id, a.addr)
            self._enqueue(a)
            return
        if a.inc == m.incarnation and a.name in self._addr_pending and a.node_id == m.node_id:
            self._addr_pending.discard(a.name)  # its own word on where it is now
            if a.addr != m.address:
                self._set(a.name, m.state, a.inc, now, out, a.node_id, a.addr)
                self._enqueue(a)
            return
        if a.inc <= m.incarnation:
            return
        if a.node_id != m.node_id:
            # Names are bound to one key forever: this is a stale or misconfigured peer.
            self._log.debug("drop reason=node-id-mismatch name=%s", a.name)
            return
        self._addr_pending.discard(a.name)
        self._set(a.name, ALIVE, a.inc, now, out, a.node_id, a.addr)
        self._enqueue(a)

    def _accused(
        self,
        claim: Suspect | Dead,
        now: float,
        out: list[Effect],
        stale: list[Update] | None,
    ) -> Member | None:
        """The member a Suspect/Dead claim is about, if the claim should be acted on.

        Drops malformed claims, refutes claims about ourselves, and answers a claim
        older than the Alive we hold with that Alive (via ``stale``).
        """
        if not _ok_int(claim.inc) or not claim.name or not claim.origin:
            kind = type(claim).__name__.lower()
            self._log.debug("drop reason=bad-%s name=%r inc=%r", kind, claim.name, claim.inc)
            return None
        if claim.name == self._name:
            if not self._left and claim.inc >= self._inc:
                self._refute(claim.inc, now, out)
            return None
        m = self._members.get(claim.name)
        if m is None:
            return None
        if claim.inc < m.incarnation:
            if stale is not None and m.state is ALIVE:
                stale.append(self._alive_of(m))
            return None
        return m

    def _on_suspect(
        self, s: Suspect, now: float, out: list[Effect], stale: list[Update] | None = None
    ) -> None:
        m = self._accused(s, now, out, stale)
        if m is None:
            return
        sus = self._suspicions.get(s.name)
        if sus is not None:
            if s.inc > sus.inc:
                sus.restart(s.origin, s.inc)
                self._set(s.name, SUSPECT, s.inc, now, out)
            elif not sus.confirm(s.origin):
                return
            self._push_suspicion(s.name, sus)
            self._enqueue(s)
            if s.origin == self._name:
                self._tell_suspect(m, s, out)
            return
        if m.state is not ALIVE:
            return
        n = self.live_count()
        lo, hi = suspicion.bounds(
            n, self._cfg.probe_interval_s, self._cfg.suspicion_mult, self._cfg.suspicion_max_mult
        )
        k = suspicion.wanted(self._cfg.suspicion_confirmations, n)
        sus = suspicion.Suspicion(s.origin, s.inc, k, lo, hi, now)
        self._suspicions[s.name] = sus
        self._push_suspicion(s.name, sus)
        self._set(s.name, SUSPECT, s.inc, now, out)
        self._enqueue(s)
        if s.origin == self._name:
            self._tell_suspect(m, s, out)

    def _on_dead(
        self,
        d: Dead,
        now: float,
        out: list[Effect],
        *,
        left: bool = False,
        stale: list[Update] | None = None,
    ) -> None:
        m = self._accused(d, now, out, stale)
        if m is None or not m.state.live:
            return
        self._set(d.name, LEFT if left else DEAD, d.inc, now, out)
        self._enqueue(Left(d.name, d.inc) if left else d)

    def _on_user(self, u: UserMsg, now: float, out: list[Effect]) -> None:
        key = (u.origin, u.id)
        if key in self._seen or not u.origin:
            return
        self._remember(u, now)
        if not self._left:
            self._queue.push(u, codec.update_size(u), born=now)
            self._bound_queue()
        if u.origin != self._name:
            out.append(Deliver(u.kind, u.payload, u.origin))

    def _refute(self, accused: int, now: float, out: list[Effect]) -> None:
        if accused >= INCARNATION_MAX:
            self._log.warning("can't refute a claim at incarnation %d (out of range)", accused)
            return
        self._inc = max(self._inc, accused) + 1
        self._awareness.apply(1)
        me = self._members[self._name]
        self._members[self._name] = Member(
            me.name, me.node_id, me.address, me.state, self._inc, me.since
        )
        self._log.info("refute accused_inc=%d inc=%d", accused, self._inc)
        self._announce()

    # -- state bookkeeping -----------------------------------------------------------

    def _set(
        self,
        name: str,
        state: MemberState,
        inc: int,
        now: float,
        out: list[Effect],
        node_id: str | None = None,
        addr: Address | None = None,
    ) -> None:
        """Record ``name``'s new state/incarnation; keep every index and timer in step."""
        old = self._members.get(name)
        if old is None:
            assert node_id is not None and addr is not None, "a new member needs id and address"
            m = Member(name, node_id, addr, state, inc, now)
            self._members[name] = m
            self._sets[state].add(name)
            self._entered(name, None, state, now)
            self._log.info("member name=%s state=%s inc=%d new", name, state, inc)
            out.append(MemberChanged(m, None))
            return
        changed = state is not old.state
        new_addr = addr if addr is not None else old.address
        m = Member(
            name,
            node_id if node_id is not None else old.node_id,
            new_addr,
            state,
            inc,
            now if changed else old.since,
        )
        self._members[name] = m
        if changed:
            self._sets[old.state].discard(name)
            self._sets[state].add(name)
            self._entered(name, old.state, state, now)
            self._log.info("member name=%s state=%s->%s inc=%d", name, old.state, state, inc)
            out.append(MemberChanged(m, old.state))
        elif new_addr != old.address:
            out.append(MemberChanged(m, old.state))

    def _entered(self, name: str, old: MemberState | None, state: MemberState, now: float) -> None:
        if state is not SUSPECT:
            self._suspicions.pop(name, None)
        if state.live:
            self._gossip_dead.discard(name)
            if old is None or not old.live:
                self._probe_order.insert(name)
        elif old is None or old.live:
            heapq.heappush(self._reclaim_heap, (now + self._cfg.dead_reclaim_s, name, now))
            # Keep gossiping to the newly dead for a while: if it is in fact alive it
            # learns of its death and refutes (memberlist's GossipToTheDeadTime).
            self._gossip_dead.add(name)
            heapq.heappush(
                self._gossip_dead_heap, (now + timings.gossip_dead_s(self._cfg), name, now)
            )

    def _announce(self) -> None:
        me = self._me
        self._enqueue(Alive(me.name, me.node_id, me.address, self._inc))

    def _enqueue(self, u: Alive | Suspect | Dead | Left) -> None:
        if self._left and u.name != self._name:
            return
        self._queue.push(u, codec.update_size(u), key=u.name)
        self._bound_queue()

    def _bound_queue(self) -> None:
        # Gossip carries ~gossip_nodes/gossip_interval_s datagrams of updates a second:
        # more queued than that can send within their retransmits only costs time (each
        # datagram is filled from the least-sent tier). Drop the most-sent first.
        if len(self._queue) > _MAX_QUEUE:
            self._queue.prune(_MAX_QUEUE)

    def _remember(self, u: UserMsg, now: float) -> None:
        key = (u.origin, u.id)
        self._seen.add(key)
        self._seen_fifo.append((now + timings.dedup_s(self._cfg), key))
        if len(self._seen_fifo) > _MAX_SEEN:
            self._seen.discard(self._seen_fifo.popleft()[1])

    def _push_suspicion(self, name: str, sus: suspicion.Suspicion) -> None:
        self._heap_tie += 1
        heapq.heappush(self._susp_heap, (sus.deadline, self._heap_tie, name))

    def _records(self) -> tuple[Record, ...]:
        return tuple(
            Record(m.name, m.node_id, m.address, m.incarnation, m.state)
            for m in self._members.values()
        )

    # -- timers ----------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & _SEQ_MASK
        return self._seq

    def _fill(self, base: int, first: tuple[Update, ...] = ()) -> tuple[Update, ...]:
        """Piggyback as many queued updates as fit a datagram after ``base`` bytes."""
        if not len(self._queue):
            return first
        room = self._cfg.max_gossip_bytes - base - sum(codec.update_size(u) for u in first)
        return first + tuple(
            self._queue.take(room, timings.transmit_limit(self._cfg, self.live_count()))
        )

    def _next_target(self) -> str | None:
        def live(name: str) -> bool:
            m = self._members.get(name)
            return m is not None and m.state.live

        return self._probe_order.next(
            live, lambda: self._sets[ALIVE].items + self._sets[SUSPECT].items
        )

    def _start_probe(self, now: float, out: list[Effect]) -> None:
        interval = self._awareness.scale(self._cfg.probe_interval_s)
        self._next_probe = now + interval
        target = self._next_target()
        if target is None:
            return
        m = self._members[target]
        seq = self._next_seq()
        timeout = self._awareness.scale(self._cfg.probe_timeout_s)
        self._probe = Probe(target, seq, now + timeout, now + interval)
        # Lifeguard's buddy system: a suspect learns of its suspicion from our ping.
        first: tuple[Update, ...] = ()
        if m.state is SUSPECT:
            first = (Suspect(target, m.incarnation, self._name),)
        ping = Ping(seq, self._inc, target, self._fill(codec.ping_base(target), first))
        out.append(Send(m.address, ping))

    def _indirect(self, p: Probe, out: list[Effect]) -> None:
        p.indirect_sent = True
        m = self._members.get(p.target)
        if m is None or not m.state.live:
            self._probe = None
            return
        # A second direct ping under the same seq: the direct path has two hops to
        # the indirect path's four, so under random loss it is the likelier to get
        # through (memberlist retries over TCP at this point).
        ping = Ping(p.seq, self._inc, p.target, self._fill(codec.ping_base(p.target)))
        out.append(Send(m.address, ping))
        p.helpers = sample_names(
            self._rng, (self._sets[ALIVE],), self._cfg.indirect_probes, p.target
        )
        base = codec.pingreq_base(p.target, m.address)
        for h in p.helpers:
            req = PingReq(p.seq, self._inc, p.target, m.address, self._fill(base))
            out.append(Send(self._members[h].address, req))

    def _probe_failed(self, p: Probe, now: float, out: list[Effect]) -> None:
        self._probe = None
        expected = len(p.helpers)
        self._awareness.apply(expected - len(p.nacks) if expected else 1)
        m = self._members.get(p.target)
        if m is None or not m.state.live:
            return
        self._log.debug(
            "probe failed target=%s helpers=%d nacks=%d", p.target, expected, len(p.nacks)
        )
        self._on_suspect(Suspect(p.target, m.incarnation, self._name), now, out)

    def _tell_suspect(self, m: Member, s: Suspect, out: list[Effect]) -> None:
        out.append(Send(m.address, Gossip(self._inc, self._fill(codec.GOSSIP_BASE, (s,)))))

    def _expire_suspicions(self, now: float, out: list[Effect]) -> None:
        heap = self._susp_heap
        while heap and heap[0][0] <= now:
            deadline, _, name = heapq.heappop(heap)
            sus = self._suspicions.get(name)
            if sus is None or sus.deadline != deadline:
                continue  # refuted, confirmed to an earlier deadline, or already dead
            m = self._members[name]
            if sus.confirmations < sus.k and not sus.last_call:
                self._last_call(m, sus, now, out)
                continue
            self._log.info(
                "suspicion expired name=%s inc=%d confirmations=%d",
                name,
                sus.inc,
                sus.confirmations,
            )
            self._on_dead(Dead(name, m.incarnation, self._name), now, out)

    def _last_call(
        self, m: Member, sus: suspicion.Suspicion, now: float, out: list[Effect]
    ) -> None:
        """A suspicion few others confirmed runs out: ping the suspect once more (the
        ping carries the suspicion) and wait a probe timeout. Its ack speaks for its own
        incarnation, so a member that refuted while every copy of the refutation's
        gossip missed us (the epidemic's tail, which the simulator hit under freezes and
        10 % loss) is alive again here instead of dead. A member many confirmed dead
        gets no extra wait."""
        sus.last_call = True
        sus.hold_until(now + self._awareness.scale(self._cfg.probe_timeout_s))
        self._push_suspicion(m.name, sus)
        first = (Suspect(m.name, m.incarnation, self._name),)
        ping = Ping(self._next_seq(), self._inc, m.name, self._fill(codec.ping_base(m.name), first))
        out.append(Send(m.address, ping))

    def _expire_relays(self, now: float, out: list[Effect]) -> None:
        heap = self._relay_heap
        while heap and heap[0][0] <= now:
            _, seq = heapq.heappop(heap)
            relay = self._relays.pop(seq, None)
            if relay is not None:
                out.append(
                    Send(relay.requester, Nack(relay.seq, self._inc, self._fill(codec.ACK_BASE)))
                )

    def _has_targets(self) -> bool:
        return bool(self._sets[ALIVE] or self._sets[SUSPECT] or self._gossip_dead)

    def _gossip(self, now: float, out: list[Effect]) -> None:
        sets = (self._sets[ALIVE], self._sets[SUSPECT], self._gossip_dead)
        limit = timings.transmit_limit(self._cfg, self.live_count())
        room = self._cfg.max_gossip_bytes - codec.GOSSIP_BASE
        for name in sample_names(self._rng, sets, self._cfg.gossip_nodes):
            m = self._members.get(name)
            if m is None:
                continue
            updates = self._queue.take(room, limit)
            if not updates:
                break
            out.append(Send(m.address, Gossip(self._inc, tuple(updates))))

    def _push_pull(self, out: list[Effect]) -> None:
        records: tuple[Record, ...] | None = None
        for group in (self._sets[ALIVE], self._sets[DEAD]):
            for name in sample_names(self._rng, (group,), 1):
                records = records or self._records()
                out.append(Send(self._members[name].address, PushPull(records), reliable=True))

    def _push_seeds(self, out: list[Effect]) -> None:
        """Push-pull with the next ``join_fanout`` seeds (in turn, wrapping around)."""
        if self._seeds:
            records = self._records()
            count = min(self._cfg.join_fanout, len(self._seeds))
            for i in range(count):
                addr = self._seeds[(self._seed_next + i) % len(self._seeds)]
                out.append(Send(addr, PushPull(records, join=True), reliable=True))
            self._seed_next = (self._seed_next + count) % len(self._seeds)

    def _retry_join(self, now: float, out: list[Effect]) -> None:
        if not self._seeds:
            self._join_retry_at = math.inf
            return
        alone = len(self._sets[ALIVE]) + len(self._sets[SUSPECT]) == 0
        if alone or not self._seed_answered:
            # Alone; or we met members, but no seed has answered us yet: a seed busy
            # with a whole chassis starting at once may have dropped our exchange, and
            # members that met one another without it form an island nobody else hears
            # of (seen: the seed and one node, apart from 62 others, for good).
            self._push_seeds(out)
            if alone:
                self._settled = False
            self._join_retry_at = now + self._join_backoff
            self._join_backoff = min(self._join_backoff * 2, self._cfg.push_pull_interval_s)
            if alone:
                return
        else:
            # Joined; look again later (a partition may leave us alone again).
            self._join_backoff = self._cfg.probe_interval_s
            self._join_retry_at = now + self._cfg.push_pull_interval_s
            if not self._seed_alive():  # like Serf's reconnect, with our seeds
                self._push_seeds(out)
        if not self._settled:  # just joined: one more full-state exchange soon
            self._settled = True
            self._settle_at = now + timings.settle_push_pull_s(self._cfg)

    def _seed_alive(self) -> bool:
        """Whether any seed is the address of a member we hold alive or suspect."""
        seeds = set(self._seeds)
        return any(
            self._members[n].address in seeds
            for group in (self._sets[ALIVE], self._sets[SUSPECT])
            for n in group.items
        )

    def _housekeeping(self, now: float) -> None:
        """Forget what has aged out. Coarse: runs on whatever tick comes next."""
        heap = self._reclaim_heap
        while heap and heap[0][0] <= now:
            _, name, since = heapq.heappop(heap)
            m = self._members.get(name)
            if m is not None and not m.state.live and m.since == since and name != self._name:
                del self._members[name]
                self._addr_pending.discard(name)
                self._sets[m.state].discard(name)
                self._gossip_dead.discard(name)
                self._told.pop(name, None)
                self._log.info("member forgotten name=%s state=%s", name, m.state)
        heap = self._gossip_dead_heap
        while heap and heap[0][0] <= now:
            _, name, since = heapq.heappop(heap)
            m = self._members.get(name)
            if m is None or m.since == since:
                self._gossip_dead.discard(name)
        fifo = self._seen_fifo
        while fifo and fifo[0][0] <= now:
            self._seen.discard(fifo.popleft()[1])
        self._queue.expire(now - timings.dedup_s(self._cfg))
        if len(self._told) > 2 * len(self._members) + 64:
            horizon = now - self._cfg.probe_interval_s
            self._told = {k: t for k, t in self._told.items() if t > horizon}
