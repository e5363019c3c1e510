"""The SWIM/Lifeguard core driven by hand: probes, ping-req, nacks, suspicion, join,
restart, leave, broadcasts, reclaim, datagram sizes and hostile input."""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd import config
from meshd.config import Config
from meshd.core.membership import (
    Deliver,
    Effect,
    Identity,
    MemberChanged,
    Membership,
    MemberState,
    Send,
    codec,
    swim,
)
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
    UserMsg,
)

A, S, D, L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
LOG = logging.getLogger("test.membership")
Drop = Callable[[str, str, Message], bool]


def addr_of(name: str) -> tuple[str, int]:
    return (f"10.0.0.{int(name[1:])}", 7420)


class Mesh:
    """Cores wired by zero-delay delivery; ``drop(src, dst, msg)`` loses messages."""

    def __init__(self, n: int, cfg: Config | None = None) -> None:
        self.cfg = cfg or config.sim()
        self.now = 0.0
        self.cores: dict[str, Membership] = {}
        self.by_addr: dict[tuple[str, int], str] = {}
        self.drop: Drop = lambda src, dst, msg: False
        self.sent: list[tuple[str, str, Message, bool]] = []
        self.changes: list[tuple[float, str, MemberChanged]] = []
        self.delivered: list[tuple[str, Deliver]] = []
        for i in range(1, n + 1):
            self.boot(f"n{i}")

    def boot(self, name: str) -> Membership:
        core = Membership(
            self.cfg.membership,
            Identity(name, f"id-{name}", addr_of(name)),
            random.Random(name),
            self.now,
            LOG,
        )
        self.cores[name] = core
        self.by_addr[addr_of(name)] = name
        return core

    def join_all(self) -> None:
        for name, core in self.cores.items():
            self.run(name, core.join([addr_of(n) for n in self.cores if n != name], self.now))

    def run(self, src: str, effects: list[Effect]) -> None:
        queue: deque[tuple[str, Effect]] = deque((src, e) for e in effects)
        while queue:
            who, e = queue.popleft()
            if isinstance(e, MemberChanged):
                self.changes.append((self.now, who, e))
            elif isinstance(e, Deliver):
                self.delivered.append((who, e))
            elif isinstance(e, Send):
                dst = self.by_addr.get(e.addr)
                if dst is None or dst not in self.cores or self.drop(who, dst, e.msg):
                    continue
                if not e.reliable:
                    assert codec.size(e.msg) <= self.cfg.membership.max_gossip_bytes
                self.sent.append((who, dst, e.msg, e.reliable))
                out = self.cores[dst].receive(e.msg, who, addr_of(who), self.now)
                queue.extend((dst, x) for x in out)

    def advance(self, until: float) -> None:
        spins = 0
        while True:
            name, core = min(self.cores.items(), key=lambda kv: kv[1].next_deadline())
            due = core.next_deadline()
            if due > until:
                break
            spins = spins + 1 if due <= self.now else 0
            assert spins < 10_000, f"{name} keeps asking to be woken at {due}"
            self.now = max(self.now, due)
            self.run(name, core.tick(self.now))
        self.now = until

    def state(self, observer: str, member: str) -> MemberState | None:
        m = self.cores[observer].member(member)
        return None if m is None else m.state

    def cut(self, *names: str) -> None:
        """Everything to and from ``names`` is lost (as if they crashed)."""
        gone = set(names)
        self.drop = lambda src, dst, msg: src in gone or dst in gone


def joined(n: int, cfg: Config | None = None) -> Mesh:
    mesh = Mesh(n, cfg)
    mesh.join_all()
    mesh.advance(1.0)
    for a in mesh.cores:
        for b in mesh.cores:
            assert a == b or mesh.state(a, b) is A
    return mesh


def test_join_through_one_seed_learns_everyone() -> None:
    mesh = Mesh(4)
    for name in ("n2", "n3", "n4"):
        mesh.run(name, mesh.cores[name].join([addr_of("n1")], 0.0))
    mesh.advance(3.0)
    for a in mesh.cores:
        assert {m.name for m in mesh.cores[a].members()} == set(mesh.cores)
    news = [c for _, who, c in mesh.changes if who == "n4" and c.previous is None]
    assert {c.member.name for c in news} == {"n1", "n2", "n3"}


def test_healthy_mesh_probes_quietly() -> None:
    mesh = joined(4)
    mesh.advance(30.0)
    assert not [c for _, _, c in mesh.changes if c.member.state is not A]
    assert all(core.health == 0 for core in mesh.cores.values())
    pings = [m for _, _, m, _ in mesh.sent if isinstance(m, Ping)]
    # every node probes once per interval, round-robin
    assert len(pings) == pytest.approx(4 * 29 / mesh.cfg.membership.probe_interval_s, rel=0.1)


def test_indirect_probe_covers_a_broken_direct_path() -> None:
    mesh = joined(4)
    mesh.drop = lambda src, dst, msg: {src, dst} == {"n1", "n2"}
    mesh.advance(30.0)
    assert mesh.state("n1", "n2") is A
    assert not [c for _, who, c in mesh.changes if c.member.state is not A]
    reqs = [(s, d) for s, d, m, _ in mesh.sent if isinstance(m, PingReq)]
    assert reqs and all(s in ("n1", "n2") for s, _ in reqs)


def test_crashed_member_is_suspected_then_dead_within_the_bound() -> None:
    mesh = joined(5)
    t0 = mesh.now
    mesh.cut("n5")
    mesh.advance(t0 + 30)
    deaths = {who: t for t, who, c in mesh.changes if c.member.name == "n5" and c.member.state is D}
    assert set(deaths) == {"n1", "n2", "n3", "n4"}
    cfg = mesh.cfg
    _, hi = (
        cfg.membership.suspicion_mult * cfg.membership.probe_interval_s,
        cfg.membership.suspicion_max_mult * cfg.membership.probe_interval_s,
    )
    # first probe within a round of N-1 probes, one interval to fail, then at most hi
    bound = 4 * cfg.membership.probe_interval_s + cfg.membership.probe_interval_s + hi
    assert max(deaths.values()) - t0 <= bound
    suspects = [c for _, _, c in mesh.changes if c.member.name == "n5" and c.member.state is S]
    assert suspects, "dead only after suspect"


def test_nacks_tell_the_prober_it_is_healthy() -> None:
    mesh = joined(5)
    mesh.cut("n5")
    mesh.advance(mesh.now + 20)
    nacks = [m for _, _, m, _ in mesh.sent if isinstance(m, Nack)]
    assert nacks
    assert all(mesh.cores[n].health == 0 for n in ("n1", "n2", "n3", "n4"))


def test_missing_nacks_lower_our_own_health_and_slow_probing() -> None:
    mesh = joined(5)
    # n1 hears nothing back: every ack and nack addressed to it is lost
    mesh.drop = lambda src, dst, msg: dst == "n1" and isinstance(msg, Ack | Nack)
    t0 = mesh.now
    mesh.advance(t0 + 5)
    n1 = mesh.cores["n1"]
    assert n1.health > 0
    pings = [t for t, (s, _, m, _) in enumerate(mesh.sent) if s == "n1" and isinstance(m, Ping)]
    assert len(pings) < 5 / mesh.cfg.membership.probe_interval_s  # probing slowed down


def test_suspected_member_refutes_and_everyone_sees_it_alive() -> None:
    mesh = joined(4)
    mesh.run(
        "n1",
        mesh.cores["n1"].receive(
            Gossip(0, (Suspect("n2", 0, "n3"),)), "n3", addr_of("n3"), mesh.now
        ),
    )
    assert mesh.state("n1", "n2") is S
    mesh.advance(mesh.now + 3)
    assert mesh.cores["n2"].incarnation == 1
    for a in ("n1", "n3", "n4"):
        m = mesh.cores[a].member("n2")
        assert m is not None and (m.state, m.incarnation) == (A, 1)


def test_restarted_node_refutes_its_death_and_rejoins() -> None:
    mesh = joined(4)
    mesh.cut("n4")
    mesh.advance(mesh.now + 20)
    assert all(mesh.state(a, "n4") is D for a in ("n1", "n2", "n3"))
    old = mesh.cores["n1"].member("n4")
    assert old is not None
    mesh.drop = lambda src, dst, msg: False
    fresh = mesh.boot("n4")  # nothing persisted: incarnation 0
    mesh.run("n4", fresh.join([addr_of("n1")], mesh.now))
    mesh.advance(mesh.now + 3)
    assert fresh.incarnation > old.incarnation
    assert all(mesh.state(a, "n4") is A for a in ("n1", "n2", "n3"))


def test_restarted_seed_without_seeds_finds_the_mesh_through_its_probers() -> None:
    mesh = joined(4)
    mesh.boot("n1")  # restarted before anyone noticed, knows nobody, joins nobody
    mesh.advance(mesh.now + 5)
    assert {m.name for m in mesh.cores["n1"].members()} == set(mesh.cores)
    assert all(mesh.state(a, "n1") is A for a in ("n2", "n3", "n4"))


def test_graceful_leave() -> None:
    mesh = joined(4)
    n4 = mesh.cores["n4"]
    mesh.run("n4", n4.leave(mesh.now))
    mesh.advance(mesh.now + 5)
    assert all(mesh.state(a, "n4") is L for a in ("n1", "n2", "n3"))
    assert n4.pending_broadcasts() == 0
    assert n4.next_deadline() == math.inf
    before = len(mesh.sent)
    mesh.run("n4", n4.tick(mesh.now + 10))
    assert len(mesh.sent) == before
    with pytest.raises(RuntimeError):
        n4.broadcast("x", b"", mesh.now)


def test_broadcast_is_delivered_once_to_every_other_node() -> None:
    mesh = joined(5)
    origin = mesh.cores["n1"]
    assert origin.broadcast("placement", b"w1->n3", mesh.now) == []
    assert origin.next_deadline() <= mesh.now  # gossip goes out at once
    mesh.advance(mesh.now + 5)
    got = sorted(who for who, _ in mesh.delivered)
    assert got == ["n2", "n3", "n4", "n5"]
    assert {(d.kind, d.payload, d.origin) for _, d in mesh.delivered} == {
        ("placement", b"w1->n3", "n1")
    }
    # a late duplicate is ignored
    dup = [
        m
        for _, _, m, _ in mesh.sent
        if isinstance(m, Gossip | Ping | Ack) and any(isinstance(u, UserMsg) for u in m.updates)
    ]
    assert dup
    mesh.run("n2", mesh.cores["n2"].receive(dup[0], "n3", addr_of("n3"), mesh.now))
    assert len(mesh.delivered) == 4


def test_broadcast_must_fit_a_datagram() -> None:
    mesh = joined(2)
    with pytest.raises(ValueError, match="max_gossip_bytes"):
        mesh.cores["n1"].broadcast("big", b"x" * mesh.cfg.membership.max_gossip_bytes, mesh.now)


def test_a_newer_broadcast_with_the_same_key_replaces_the_queued_one() -> None:
    mesh = joined(3)
    n1 = mesh.cores["n1"]
    queued = n1.pending_broadcasts()
    n1.broadcast("state", b"w1 starting", mesh.now, key="w1")
    n1.broadcast("state", b"w1 running", mesh.now, key="w1")
    n1.broadcast("state", b"w2 running", mesh.now, key="w2")
    n1.broadcast("other", b"w1 kept: another kind", mesh.now, key="w1")
    assert n1.pending_broadcasts() == queued + 3
    mesh.advance(mesh.now + 5)
    got = {d.payload for who, d in mesh.delivered if who == "n2"}
    assert got == {b"w1 running", b"w2 running", b"w1 kept: another kind"}


def test_a_flood_of_broadcasts_keeps_the_queue_bounded() -> None:
    """Gossip sends a few datagrams a second; a queue of more than it can send would
    only cost time (each datagram is filled from its least-sent tier)."""
    mesh = joined(2)
    n1 = mesh.cores["n1"]
    for i in range(3 * swim._MAX_QUEUE):
        n1.broadcast("flood", i.to_bytes(4, "big"), mesh.now)
    assert n1.pending_broadcasts() <= swim._MAX_QUEUE


def test_dead_members_are_forgotten_after_reclaim() -> None:
    mesh = joined(4, config.sim().override({"membership.dead_reclaim_s": 30.0}))
    mesh.cut("n4")
    mesh.advance(mesh.now + 20)
    assert mesh.state("n1", "n4") is D
    mesh.advance(mesh.now + 40)
    assert mesh.state("n1", "n4") is None


def test_datagrams_fit_even_with_a_long_queue() -> None:
    mesh = joined(3)
    n1 = mesh.cores["n1"]
    many = tuple(
        Alive(f"m{i:03d}-" + "x" * 40, "f" * 40, ("10.1.2.3", 7420), 0) for i in range(200)
    )
    for i in range(0, 200, 10):
        mesh.run("n1", n1.receive(Gossip(0, many[i : i + 10]), "n2", addr_of("n2"), mesh.now))
    assert n1.pending_broadcasts() >= 200
    mesh.advance(mesh.now + 3)  # Mesh.run asserts every datagram's size
    big = [m for s, _, m, r in mesh.sent if s == "n1" and not r]
    assert max(codec.size(m) for m in big) > mesh.cfg.membership.max_gossip_bytes // 2


def test_ping_for_another_name_is_not_acked() -> None:
    mesh = joined(2)
    out = mesh.cores["n2"].receive(Ping(7, 0, "someone-else"), "n1", addr_of("n1"), mesh.now)
    assert not [e for e in out if isinstance(e, Send) and isinstance(e.msg, Ack)]


def test_ack_from_the_wrong_sender_does_not_complete_a_probe() -> None:
    mesh = joined(3)
    n1 = mesh.cores["n1"]
    mesh.drop = lambda src, dst, msg: True  # hold everything: we deliver by hand
    pings: list[Send] = []
    while not pings:
        t = n1.next_deadline()
        pings = [e for e in n1.tick(t) if isinstance(e, Send) and isinstance(e.msg, Ping)]
    ping = pings[0]
    assert isinstance(ping.msg, Ping)
    target = mesh.by_addr[ping.addr]
    other = "n3" if target == "n2" else "n2"
    n1.receive(Ack(ping.msg.seq, 0), other, addr_of(other), t)
    assert n1.next_deadline() <= t + mesh.cfg.membership.probe_timeout_s  # still waiting
    n1.receive(Ack(ping.msg.seq, 0), target, addr_of(target), t)
    assert n1.next_deadline() > t + mesh.cfg.membership.probe_timeout_s


def test_message_from_a_stranger_starts_a_push_pull() -> None:
    mesh = joined(2)
    out = mesh.cores["n1"].receive(Gossip(0, ()), "n9", ("10.0.0.9", 7420), mesh.now)
    assert [e.addr for e in out if isinstance(e, Send) and e.reliable] == [("10.0.0.9", 7420)]
    # rate-limited
    out = mesh.cores["n1"].receive(Gossip(0, ()), "n9", ("10.0.0.9", 7420), mesh.now)
    assert out == []


def test_mark_is_a_local_state_change() -> None:
    mesh = joined(2)
    n1 = mesh.cores["n1"]
    out = n1.mark("n2", D, mesh.now)
    assert [(e.member.state, e.previous) for e in out if isinstance(e, MemberChanged)] == [(D, A)]
    assert n1.mark("n2", D, mesh.now) == []
    assert n1.mark("nobody", D, mesh.now) == []
    assert n1.mark("n1", D, mesh.now) == []


def test_tick_early_is_harmless() -> None:
    mesh = joined(3)
    n1 = mesh.cores["n1"]
    deadline = n1.next_deadline()
    assert n1.tick(mesh.now) == [] or deadline <= mesh.now
    assert n1.next_deadline() == deadline


# -- hostile input ---------------------------------------------------------------------

INT = st.one_of(st.integers(-5, 5), st.integers(2**32 - 3, 2**32 + 3), st.integers(-(2**70), 2**70))
NAME = st.sampled_from(["n1", "n2", "n3", "zz", "", "n2" * 200])
ADDR = st.tuples(st.sampled_from(["10.0.0.1", "", "::1"]), st.integers(-1, 70000))
UPDATE = st.one_of(
    st.builds(Alive, NAME, st.sampled_from(["id-n2", "bogus", ""]), ADDR, INT),
    st.builds(Suspect, NAME, INT, NAME),
    st.builds(Dead, NAME, INT, NAME),
    st.builds(Left, NAME, INT),
    st.builds(UserMsg, NAME, INT, st.text(max_size=5), st.binary(max_size=20)),
)
UPDATES = st.lists(UPDATE, max_size=6).map(tuple)
MESSAGE = st.one_of(
    st.builds(Ping, INT, INT, NAME, UPDATES),
    st.builds(Ack, INT, INT, UPDATES),
    st.builds(Nack, INT, INT, UPDATES),
    st.builds(PingReq, INT, INT, NAME, ADDR, UPDATES),
    st.builds(Gossip, INT, UPDATES),
    st.builds(
        PushPull,
        st.lists(
            st.builds(
                Record, NAME, st.text(max_size=4), ADDR, INT, st.sampled_from(list(MemberState))
            ),
            max_size=5,
        ).map(tuple),
        st.booleans(),
        st.booleans(),
    ),
)


@given(st.lists(st.tuples(MESSAGE, NAME), min_size=1, max_size=20), st.binary(max_size=64))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_hostile_messages_never_raise(batch: list[tuple[Message, str]], garbage: bytes) -> None:
    mesh = joined(3)
    n1 = mesh.cores["n1"]
    t = mesh.now
    for msg, sender in batch:
        t += 0.05
        n1.receive(msg, sender, addr_of("n2"), t)
        n1.tick(t)
    try:
        n1.receive(codec.decode(garbage), "n2", addr_of("n2"), t)
    except Exception as exc:  # only the codec may refuse, and only with EnvelopeError
        assert type(exc).__name__ == "EnvelopeError"
    for _ in range(50):
        t = max(t, n1.next_deadline())
        n1.tick(t)
    assert n1.incarnation <= 2**32 - 1


# -- joins that don't storm, and strangers --------------------------------------------


def _lone(name: str = "n1", now: float = 0.0) -> Membership:
    cfg = config.lan().membership
    return Membership(cfg, Identity(name, f"id-{name}", addr_of(name)), random.Random(1), now, LOG)


def test_join_contacts_join_fanout_seeds_at_a_time_and_the_next_ones_on_retry() -> None:
    core = _lone()
    seeds = [addr_of(f"n{i}") for i in range(2, 12)]  # ten remembered addresses
    fanout = config.lan().membership.join_fanout
    first = [e.addr for e in core.join(seeds, 0.0) if isinstance(e, Send)]
    assert first == seeds[:fanout]
    # nobody answered: the retry (while alone) goes to the next ones, not the same
    retry: list[tuple[str, int]] = []
    for _ in range(10):
        out = core.tick(core.next_deadline())
        retry = [e.addr for e in out if isinstance(e, Send) and isinstance(e.msg, PushPull)]
        if retry:
            break
    assert retry == seeds[fanout : 2 * fanout]


def test_strangers_earn_one_full_state_exchange_per_probe_interval() -> None:
    core = _lone()
    core.join([addr_of("n2")], 0.0)
    pushes = []
    for i in range(3, 13):  # ten members we never heard of ping us at once
        out = core.receive(Ping(1, 0, "n1", ()), f"n{i}", addr_of(f"n{i}"), 0.01)
        pushes += [e for e in out if isinstance(e, Send) and isinstance(e.msg, PushPull)]
    assert len(pushes) == 1
    interval = config.lan().membership.probe_interval_s
    out = core.receive(Ping(1, 0, "n1", ()), "n20", addr_of("n20"), 0.01 + interval)
    assert [e for e in out if isinstance(e, Send) and isinstance(e.msg, PushPull)]


def test_a_late_tick_voids_the_probe_and_raises_local_health() -> None:
    mesh = joined(4)
    core = mesh.cores["n1"]
    mesh.drop = lambda src, dst, msg: True  # nothing arrives: every probe would fail
    while core._probe is None:
        mesh.advance(core.next_deadline())
    late = core.next_deadline() + 2.0  # our loop ran 2 s late
    mesh.now = late
    mesh.run("n1", core.tick(late))
    assert core.stalls == 1
    assert core.health >= 1
    assert all(m.state is A for m in core.members())  # no accusation from the stall


def test_members_that_met_without_their_seed_keep_asking_it_and_no_island_stays() -> None:
    # A chassis starting at once: the seed n1 is too busy to answer n3 and n4, which
    # meet each other without it, while n2 gets through. Once the seed answers again,
    # the two groups must become one (before, n3 stopped asking n1 as soon as it knew
    # anybody: {n1, n2} and {n3, n4} never heard of each other).
    mesh = Mesh(4)
    seed = addr_of("n1")
    busy = True
    mesh.drop = lambda src, dst, msg: busy and "n1" in (src, dst) and "n2" not in (src, dst)
    mesh.run("n2", mesh.cores["n2"].join([seed], mesh.now))
    mesh.run("n3", mesh.cores["n3"].join([seed], mesh.now))
    mesh.run("n4", mesh.cores["n4"].join([seed, addr_of("n3")], mesh.now))
    mesh.advance(5.0)
    assert mesh.state("n3", "n4") is A and mesh.state("n1", "n2") is A
    assert mesh.state("n3", "n1") is None and mesh.state("n1", "n3") is None
    busy = False
    mesh.advance(5.0 + 2 * mesh.cfg.membership.push_pull_interval_s)
    for a in mesh.cores:
        for b in mesh.cores:
            assert a == b or mesh.state(a, b) is A, (a, b, mesh.state(a, b))


def test_a_restarted_member_at_a_new_address_is_held_there_whichever_word_comes_first() -> None:
    # n2 restarts on another port. Its first datagram (an introduction, a ping) says
    # incarnation 1 before its Alive does: n1 held incarnation 1 at the old address,
    # ignored the Alive at the same incarnation, and sent n2's work to a closed port.
    mesh = joined(3)
    core = mesh.cores["n1"]
    moved = ("10.0.0.2", 7999)
    now = mesh.now + 0.1
    out = core.receive(Gossip(1, ()), "n2", moved, now)
    assert not any(isinstance(e, Send) and isinstance(e.msg, Gossip) for e in out)  # no rumour
    m = core.member("n2")
    assert m is not None and m.state is A and m.incarnation == 1
    core.receive(Gossip(0, (Alive("n2", "id-n2", moved, 1),)), "n3", addr_of("n3"), now + 0.1)
    m = core.member("n2")
    assert m is not None and m.address == moved and m.incarnation == 1
