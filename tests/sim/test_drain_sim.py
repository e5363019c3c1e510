"""Maintenance drains on the real shells (``meshd node drain``): the simulator of
:mod:`tests.sim.shells` with its fake mesh port, lossy network and crashes.

A drained node's workloads are auctioned again (same ids and specs, next generation)
by the node that accepted the command; no originator offers the drained node anything
and its own bidder refuses; the drain record reaches every node, those that were down
or cut off included (gossip, then push-pull anti-entropy), and an undrain issued after
the drain wins everywhere. Random schedules add crashes, partitions, cut links and
loss while the drain runs; after healing and settling, nothing is placed on the
drained node, no workload ran twice at one generation (the simulator's own checks),
and every node agrees on the drain.
"""

from __future__ import annotations

import os
import random

import pytest

from meshd import config
from meshd.core.auction.capabilities import Requirements
from meshd.core.auction.messages import BidRequest
from meshd.core.auction.model import GiB, Resources
from meshd.core.spec import SubmitRequest
from tests.sim.harness import ENV_SEED, seed_or
from tests.sim.network import LinkModel
from tests.sim.shells import ShellSim

SCHEDULES = 40  # random drain schedules in CI (about 10 s on 2 shared cores)
FAULT_END = 6.0


def _request(
    name: str, nodes: frozenset[str] = frozenset(), restart: str = "reschedule"
) -> SubmitRequest:
    return SubmitRequest(
        name=name,
        cpus=1.0,
        memory=GiB,
        driver="fake",
        nodes=nodes,
        idempotency_key=name,
        restart=restart,
    )


def _sim(seed: int, n: int = 3, link: LinkModel | None = None) -> ShellSim:
    cfg = config.sim().override({"auction.sync_interval_s": 1.0})
    caps = {f"n{i}": (8.0, 16 * GiB, 100 * GiB) for i in range(1, n + 1)}
    sim = ShellSim(seed, caps, cfg, link or LinkModel())
    for name in sim.nodes:
        sim.at(0.0, sim.start, name)
    return sim


def _placed_on(sim: ShellSim, observer: str, node: str) -> list[str]:
    return [p.name for p in sim.placement(observer).placed_on(node)]


def _owner_gen(sim: ShellSim, observer: str, name: str) -> tuple[str, int]:
    (p,) = [p for p in sim.placement(observer).core.placements().values() if p.name == name]
    return p.owner, p.generation


def test_drain_moves_every_workload_and_the_drained_node_bids_on_nothing() -> None:
    sim = _sim(seed_or(5))
    try:
        # A drain moves restart = none too: a planned move, not a dead node.
        sim.at(0.5, sim.submit, "n1", _request("a"))
        sim.at(0.5, sim.submit, "n1", _request("b"))
        sim.at(0.5, sim.submit, "n1", _request("c", restart="none"))
        sim.run_until(4.0)
        target, _ = _owner_gen(sim, "n1", "a")
        before = {w: _owner_gen(sim, "n1", w) for w in "abc"}
        on = "n3" if target != "n3" else "n2"
        sim.at(4.0, sim.drain, on, target)
        sim.run_until(12.0)
        for name in sim.live():
            assert _placed_on(sim, name, target) == [], (name, sim.describe())
            assert sim.placement(name).drains.draining(target), name
        for w, (owner, gen) in before.items():
            now = _owner_gen(sim, "n1", w)
            assert now == ((owner, gen) if owner != target else (now[0], gen + 1)), (w, now)
            assert now[0] != target
        assert sim.nodes[target].host.workloads == {}, sim.describe()
        # The drained node's bidder says why it bids nothing.
        req = BidRequest("r-x", "w-x", None, Resources(1.0, GiB, 0), 0.2, Requirements())
        bid = sim.placement(target).core._book.bid(req, on, sim.clock(), [])
        assert bid.score <= 0 and "draining" in bid.reason, bid
        # An originator that knows of the drain offers the drained node nothing.
        sim.at(12.0, sim.submit, on, _request("f"))
        sim.run_until(14.0)
        rounds = [r for r in sim.placement(on).core.rounds() if r.workload_name == "f"]
        assert rounds and all(target not in r.candidates for r in rounds), rounds
        assert sim.final_problems() == []
        # Undrained from another node: it bids again, and a workload may go there.
        sim.at(14.0, sim.drain, on, target, False)
        sim.at(15.0, sim.submit, on, _request("e", frozenset({target})))
        sim.run_until(19.0)
        for name in sim.live():
            assert not sim.placement(name).drains.draining(target), name
        assert _owner_gen(sim, "n1", "e") == (target, 1), sim.describe()
        assert sim.final_problems() == []
    finally:
        sim.close()


def test_pinned_workloads_stay_when_no_other_node_may_run_them() -> None:
    """A workload that names only the drained node can't move: it stays placed (and
    running) there, and the drain reports it still placed."""
    sim = _sim(seed_or(6))
    try:
        sim.at(0.5, sim.submit, "n1", _request("pinned", frozenset({"n2"})))
        sim.run_until(3.0)
        sim.at(3.0, sim.drain, "n1", "n2")
        sim.run_until(10.0)
        assert _placed_on(sim, "n1", "n2") == ["pinned"]
        assert sim.placement("n1").drain_state("n2")["placed"] != []
        assert sim.final_problems() == []
    finally:
        sim.close()


def test_a_node_that_was_down_learns_the_drain_and_the_later_undrain_wins() -> None:
    sim = _sim(seed_or(7))
    kept: list[bytes] = []

    def keep_drain_record() -> None:
        table = sim.placement("n1").drains.table
        kept.extend(
            s for r, s in zip(table.records(), table.signed(), strict=True) if r.node == "n2"
        )

    try:
        sim.at(1.0, sim.crash, "n3")
        sim.at(1.5, sim.drain, "n1", "n2")
        sim.at(2.0, keep_drain_record)
        sim.at(2.5, sim.drain, "n2", "n2", False)  # undrained by another node, later
        sim.at(3.0, sim.drain, "n1", "n3")  # n3 is down: it learns its own drain later
        sim.at(4.0, sim.start, "n3")
        sim.run_until(12.0)
        for name in sim.live():
            drains = sim.placement(name).drains
            assert not drains.draining("n2"), name
            assert drains.draining("n3"), name
        # A replayed old record (n2's drain, before the undrain) changes nothing.
        assert len(kept) == 1
        proc = sim.nodes["n3"].proc
        assert proc is not None
        record = proc.run(sim.placement("n3").drains.receive, kept[0], "n1")
        assert record is not None and record.draining
        assert not sim.placement("n3").drains.draining("n2")
        # A restarted node reads the same from its store.
        sim.at(12.0, sim.restart, "n1")
        sim.run_until(13.0)
        assert sim.placement("n1").drains.draining("n3")
        assert not sim.placement("n1").drains.draining("n2")
        assert sim.final_problems() == []
    finally:
        sim.close()


def test_a_placement_made_before_the_drain_spread_is_moved_off_by_the_drainer() -> None:
    """n1 drains n2 while cut off; n3, not knowing, places a workload on n2. Once the
    partition heals, n1 (which accepted the drain) moves it off, at the next generation."""
    sim = _sim(seed_or(8))
    try:
        sim.at(0.5, sim.partition, ["n1"], ["n2", "n3"])
        sim.at(1.0, sim.drain, "n1", "n2")
        sim.at(3.0, sim.submit, "n3", _request("late", frozenset({"n1", "n2"})))
        sim.run_until(5.0)
        assert _owner_gen(sim, "n3", "late") == ("n2", 1), sim.describe()
        assert not sim.placement("n3").drains.draining("n2")
        sim.at(5.0, sim.heal)
        sim.run_until(20.0)
        for name in sim.live():
            assert _owner_gen(sim, name, "late") == ("n1", 2), (name, sim.describe())
        assert sim.final_problems() == []
    finally:
        sim.close()


def random_drain(seed: int) -> tuple[ShellSim, list[str]]:
    rng = random.Random(seed)
    n = rng.randint(3, 5)
    names = [f"n{i}" for i in range(1, n + 1)]
    link = LinkModel(loss=rng.choice([0.0, 0.05, 0.2]), duplicate=rng.choice([0.0, 0.05]))
    sim = _sim(seed, n, link)
    for j in range(rng.randint(2, 6)):
        sim.at(rng.uniform(0.1, 2.0), sim.submit, rng.choice(names), _request(f"w{j}"))
    target = rng.choice(names)
    on = rng.choice(names)
    t_drain = rng.uniform(2.0, 4.0)
    sim.at(t_drain, sim.drain, on, target)
    undrain = rng.random() < 0.3
    for _ in range(rng.randint(0, 4)):
        t = rng.uniform(0.0, 5.0)
        kind = rng.choice(["crash", "partition", "cut", "heal"])
        x = rng.choice(names)
        if kind == "crash":
            sim.at(t, sim.crash, x)
            sim.at(t + rng.uniform(0.1, 2.0), sim.start, x)
        elif kind == "partition":
            k = rng.randint(1, n - 1)
            shuffled = rng.sample(names, n)
            sim.at(t, sim.partition, shuffled[:k], shuffled[k:])
        elif kind == "cut":
            a, b = rng.sample(names, 2)
            sim.at(t, sim.cut, a, b, rng.random() < 0.5)
        else:
            sim.at(t, sim.heal)
    sim.at(FAULT_END, sim.end_faults)
    # The operator's drain waits until nothing is placed there; what a fault stranded
    # (an auction that found no live candidate) is moved by running it again.
    retry = rng.choice(names)
    sim.at(FAULT_END + 4.0, sim.drain, retry, target)
    if undrain:
        sim.at(FAULT_END + 12.0, sim.drain, rng.choice(names), target, False)
    sim.run_until(FAULT_END + 20.0)
    problems = sim.final_problems()
    for name in sim.live():
        if sim.placement(name).drains.draining(target) == undrain:
            problems.append(f"{name} thinks {target} {'is' if undrain else 'is not'} drained")
        if not undrain and _placed_on(sim, name, target):
            problems.append(f"{name} still places {_placed_on(sim, name, target)} on {target}")
    return sim, problems


def _seeds() -> list[int]:
    env = os.environ.get(ENV_SEED)
    return [int(env)] if env else list(range(SCHEDULES))


@pytest.mark.parametrize("seed", _seeds())
def test_drain_under_random_faults(seed: int) -> None:
    sim, problems = random_drain(seed)
    try:
        assert not problems, (
            f"{sim.describe()}:\n" + "\n".join(problems[:12]) + "\n" + "\n".join(sim.trace[-40:])
        )
    finally:
        sim.close()
