"""NIC addresses in the shell simulator: the real AddressShell under random faults.

Each seed builds a mesh of 3-5 nodes running the real shells (``start_shells`` wires the
address shell as the daemon does), with fencing (lagged membership, an enrolled roster,
fake BMCs), one network (sometimes a tiny one, so the pool fills), workloads with NICs
submitted from random nodes (some with a fixed address, some with the same one), some
removed and submitted again, and meanwhile crashes (some of an originator at one of
its next durable writes: an award, a pool's record, a grant), power losses (fenced,
then their workloads re-placed), partitions, cuts, lossy links. Checked all along (every 0.1 s of
virtual time):

* no address is held by two live workloads in any node's view, nor by two workloads
  running on any blades (operator-removed ones aside: see the NOTE);
* a workload keeps its addresses (hence, by :func:`meshd.core.nic.mac_for`, its MACs)
  in every view and generation, re-placements included;
* nodes' pools (:mod:`meshd.core.address_pool`; drawn on when the network is a /22)
  never share an address, and no address free in a node's pool is held by a live
  placement in any view;

and once healed and settled: every view agrees, and no node still grants an address to
a workload whose tombstone it holds (the address is back in the pool). A scripted test
fills a /30, is refused with "no free address", removes one and gets its address again.

``MESHD_SIM_SEED=<seed>`` replays one schedule; ``MESHD_SIM_ADDRESS_SEEDS=<n>`` runs n.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from meshd import config
from meshd.adapters.drivers.base import WorkloadState
from meshd.core.auction.model import GiB
from meshd.core.spec import Nic, SubmitRequest
from tests.sim.harness import ENV_SEED
from tests.sim.network import LinkModel
from tests.sim.shells import ShellSim, Submission

ENV_COUNT = "MESHD_SIM_ADDRESS_SEEDS"
SCHEDULES = 150  # seeds in CI: about 45 s on 2 shared cores
CHUNK = 10
CHECK_S = 0.1
OFFERS = frozenset({"network:lan"})


class AddressWatch:
    """The address invariants, checked every ``CHECK_S`` of virtual time."""

    def __init__(self, sim: ShellSim) -> None:
        self.sim = sim
        self.first: dict[str, tuple[str | None, ...]] = {}  # workload -> its NICs' ips
        self.problems: list[str] = []
        self._tick()

    def _note(self, text: str) -> None:
        problem = f"t={self.sim.now:.2f} {text}"
        if problem not in self.problems[-3:]:
            self.problems.append(problem)

    def _tick(self) -> None:
        self.check()
        self.sim.loop.call_later(CHECK_S, self._tick, context=self.sim._net_ctx)

    def check(self) -> None:
        sim = self.sim
        for name, node in sim.nodes.items():
            if node.placement is None or node.proc is None or not node.proc.alive:
                continue
            held: dict[str, str] = {}
            for wid, p in sorted(node.placement.core.placements().items()):
                ips = tuple(n.ip for n in p.spec.nics)
                if p.spec.nics and None in ips:
                    self._note(f"{name} views {wid} placed without an address")
                seen = self.first.setdefault(wid, ips)
                if seen != ips:
                    self._note(f"{wid} changed addresses {seen} -> {ips} (gen {p.generation})")
                if p.removed:
                    continue
                for ip in ips:
                    if ip is None:
                        continue
                    other = held.setdefault(ip, wid)
                    # A view that has not yet heard of a removal may still show the
                    # removed workload beside the next holder of its address.
                    stale = sim.removed.intersection((other, wid))
                    if other != wid and not stale:
                        self._note(f"{name}'s view gives {ip} to {other} and {wid}")
        self._check_pools()
        running: dict[str, str] = {}
        for name, node in sim.nodes.items():
            for wid, fw in sorted(node.host.workloads.items()):
                # A removed workload still running (its owner cut off, not yet told)
                # counts: its address must not answer on another guest meanwhile.
                if fw.state is not WorkloadState.RUNNING:
                    continue
                for ip in self.first.get(wid, ()):
                    if ip is None:
                        continue
                    other = running.setdefault(ip, wid)
                    if other != wid:
                        self._note(f"{ip} runs as {other} and {wid} (one on {name})")

    def _check_pools(self) -> None:
        sim = self.sim
        owner: dict[str, str] = {}  # pool address -> the node whose pool holds it
        free: dict[str, str] = {}
        views = []
        for name, node in sorted(sim.nodes.items()):
            if node.placement is None or node.placement.addresses is None:
                continue
            if node.proc is None or not node.proc.alive:
                continue
            views.append((name, node.placement.core.placements()))
            pools = node.placement.addresses.pools  # type: ignore[attr-defined]
            for network in pools.book.networks():
                for a in pools.book.free(network):
                    free[a] = name
            for a in pools.book._where:
                other = owner.setdefault(a, name)
                if other != name:
                    self._note(f"{a} is in the pools of {other} and {name}")
        for name, view in views:
            for wid, p in view.items():
                if p.removed or wid in sim.removed:
                    continue
                for nic in p.spec.nics:
                    holder = free.get(nic.ip or "")
                    if holder is not None:
                        self._note(f"{nic.ip} is free in {holder}'s pool, {name} views it on {wid}")

    def final(self) -> list[str]:
        sim = self.sim
        self.check()
        out = list(self.problems)
        for name in sim.live():
            node = sim.nodes[name]
            assert node.placement is not None and node.placement.addresses is not None
            view = node.placement.core.placements()
            table = node.placement.addresses.table  # type: ignore[attr-defined]
            for e in table.entries():
                p = view.get(e.holder)
                if p is not None and p.removed:
                    out.append(f"{name} still grants {e.address} to removed {e.holder}")
            out.extend(_index_differs(name, node.placement.addresses))
        return out


def _index_differs(name: str, shell: Any) -> list[str]:
    """What the node's index of its view's NICs (kept up as the view changes, skipping
    a placement whose NICs did not change) holds that a scan of the view would not."""
    if shell._holders is None:
        return []

    def index() -> tuple[Any, ...]:
        return (dict(shell._holders), dict(shell._ints), dict(shell._macs), set(shell._tombs))

    kept = index()
    shell._rebuild()
    scanned = index()
    return [
        f"{name}'s {what} index differs from a scan of its view"
        for what, a, b in zip(("address", "number", "MAC", "tombstone"), kept, scanned, strict=True)
        if a != b
    ]


def request(j: int, ip: str | None = None, key: str | None = None) -> SubmitRequest:
    return SubmitRequest(
        name=f"w{j}",
        cpus=0.5,
        memory=GiB,
        driver="fake",
        nics=(Nic("lan", ip),),
        idempotency_key=key or f"k{j}",
    )


def random_run(seed: int) -> tuple[ShellSim, AddressWatch, list[str]]:
    rng = random.Random(seed)
    n = rng.randint(3, 5)
    names = [f"n{i}" for i in range(1, n + 1)]
    cfg = config.sim().override(
        {
            "auction.sync_interval_s": 1.0,
            "addresses.claim_timeout_s": 0.5,
            "addresses.sweep_s": 1.0,
            "addresses.window": rng.choice([16, 2]),  # 2: originators collide often
            "addresses.pool": rng.choice([16, 48]),  # (a /24 or /29 keeps no pool)
        }
    )
    link = LinkModel(loss=rng.choice([0.0, 0.05, 0.2]), duplicate=rng.choice([0.0, 0.05]))
    caps = {x: (8.0, 16 * GiB, 100 * GiB) for x in names}
    sim = ShellSim(seed, caps, cfg, link, membership="lagged", fencing=True, offers=OFFERS)
    watch = AddressWatch(sim)
    for i, x in enumerate(names):
        sim.at(i * 0.01, sim.start, x)
    # /29: 6 hosts, it fills. /22: big enough for pools (3-5 nodes: 2 blocks each at most)
    subnet = rng.choice(["10.40.0.0/24", "10.40.0.0/29", *["10.40.0.0/22"] * 3])
    sim.at(0.2, sim.network, names[0], "lan", subnet)
    prefix = subnet.rsplit(".", 1)[0]
    for j in range(rng.randint(3, 9)):
        t = rng.uniform(2.0, 7.0)
        fixed = f"{prefix}.{rng.randint(2, 5)}" if rng.random() < 0.25 else None
        req = request(j, fixed)
        origin = rng.choice(names)
        sim.at(t, sim.submit, origin, req)
        if rng.random() < 0.15:  # the originator dies at one of its next durable writes
            sim.at(t, sim.arm_commit, origin, rng.randint(1, 3))
            sim.at(t + rng.uniform(0.5, 3.0), sim.start, origin)
        if rng.random() < 0.3:  # removed, then the same name again (new key): reuse
            t2 = t + rng.uniform(0.5, 4.0)
            sim.at(t2, sim.remove_named, rng.choice(names), req.name)
            sim.at(
                t2 + rng.uniform(0.5, 3.0), sim.submit, rng.choice(names), request(j, key=f"r{j}")
            )
    for _ in range(rng.randint(0, 4)):
        t = rng.uniform(2.0, 8.0)
        kind = rng.choice(["crash", "partition", "cut", "power"])
        x = rng.choice(names)
        if kind == "crash":
            sim.at(t, sim.crash, x)
            if rng.random() < 0.6:
                sim.at(t + rng.uniform(0.1, 3.0), sim.start, x)
        elif kind == "power":  # fenced, its workloads re-placed with their addresses
            sim.at(t, sim.power_loss, x)
        elif kind == "partition":
            shuffled = rng.sample(names, n)
            k = rng.randint(1, n - 1)
            sim.at(t, sim.partition, shuffled[:k], shuffled[k:])
            sim.at(t + rng.uniform(0.5, 4.0), sim.heal)
        else:
            a, b = rng.sample(names, 2)
            sim.at(t, sim.cut, a, b, rng.random() < 0.5)
    end = 14.0
    sim.at(end, sim.end_faults)
    end += cfg.fencing.lease_s + 2.0
    sim.at(end, sim.end_faults)
    timing = cfg.auction
    settle = timing.confirm_timeout_s + timing.hold_ttl_s + 4 * timing.sync_interval_s
    settle += 6.0 + 3 * cfg.fencing.takeover_s + 3 * cfg.addresses.sweep_s
    sim.run_until(end + settle)
    return sim, watch, watch.final()


def _seeds(chunk: int) -> list[int]:
    env = os.environ.get(ENV_SEED)
    if env:
        return [int(env)] if chunk == 0 else []
    return list(range(300_000 + chunk * CHUNK, 300_000 + (chunk + 1) * CHUNK))


def _run(seed: int, placed: list[int], lent: list[int]) -> Iterator[str]:
    sim, _, problems = random_run(seed)
    placed.append(sum(1 for s in sim.submissions if s.result and s.result["addresses"]))
    lent.append(sum(_lent(node) for node in sim.nodes.values()))
    try:
        if problems:
            text = f"{sim.describe()}:\n" + "\n".join(problems[:12])
            yield text + "\n-- commands --\n" + "\n".join(sim.trace[-60:])
    finally:
        sim.close()


@pytest.mark.parametrize("chunk", range(max(1, int(os.environ.get(ENV_COUNT, SCHEDULES)) // CHUNK)))
def test_addresses_stay_unique_and_follow_their_workloads_under_random_faults(
    chunk: int,
) -> None:
    placed: list[int] = []
    lent: list[int] = []
    failures = [r for seed in _seeds(chunk) for r in _run(seed, placed, lent)]
    assert not failures, failures[0]
    # Not vacuous: workloads with NICs were placed (a broken claimer fails them all),
    # some with addresses from pools (a run of ten seeds has a few /22 networks).
    assert sum(placed) > 0
    if not os.environ.get(ENV_SEED):
        assert sum(lent) > 0


def _lent(node: object) -> int:
    """Addresses a node's pools lent (its counter; 0 for a node never started)."""
    placement = getattr(node, "placement", None)
    pools = getattr(getattr(placement, "addresses", None), "pools", None)
    return 0 if pools is None else int(pools.assigned.value(source="pool"))


def _settled(names: list[str], subnet: str, seed: int = 7) -> ShellSim:
    cfg = config.sim().override({"addresses.sweep_s": 0.5, "auction.sync_interval_s": 1.0})
    caps = {x: (8.0, 16 * GiB, 100 * GiB) for x in names}
    sim = ShellSim(seed, caps, cfg, membership="lagged", fencing=True, offers=OFFERS)
    for i, x in enumerate(names):
        sim.at(i * 0.01, sim.start, x)
    sim.at(5.2, sim.network, names[0], "lan", subnet)
    sim.run_until(8.0)
    return sim


def test_a_full_pool_is_refused_and_a_removed_workload_gives_its_address_back() -> None:
    names = ["n1", "n2", "n3"]
    sim = _settled(names, "10.40.0.0/30")  # two host addresses
    try:
        watch = AddressWatch(sim)
        sim.at(8.1, sim.submit, "n1", request(1))
        sim.at(8.1, sim.submit, "n2", request(2))
        sim.run_until(11.0)
        placed = [s for s in sim.submissions if s.result is not None]
        assert len(placed) == 2, [s.error for s in sim.submissions]
        sim.at(11.1, sim.submit, "n3", request(3))
        sim.run_until(14.0)
        third = sim.submissions[-1]
        assert third.result is None
        assert third.error is not None
        assert "network lan (10.40.0.0/30) has no free address left" in third.error
        # Its auction collected bids while the claim ran; refused, it left no hold.
        for x in names:
            assert not sim.placement(x).core.ledger().holds, x
        view = sim.placement("n1").core.placements()
        gone = placed[0].result
        assert gone is not None
        freed = view[gone["workload"]].spec.nics[0].ip
        sim.at(14.1, sim.remove, "n2", gone["workload"])
        sim.run_until(18.0)
        sim.at(18.1, sim.submit, "n3", request(4))
        sim.run_until(22.0)
        fourth = sim.submissions[-1]
        assert fourth.result is not None, fourth.error
        ip = sim.placement("n1").core.placements()[fourth.result["workload"]].spec.nics[0].ip
        assert ip == freed
        assert not watch.final()
    finally:
        sim.close()


def test_a_fixed_address_taken_is_refused_naming_its_holder() -> None:
    sim = _settled(["n1", "n2", "n3"], "10.40.0.0/24")
    try:
        sim.at(8.1, sim.submit, "n1", request(1, "10.40.0.9"))
        sim.run_until(10.0)
        assert sim.submissions[0].result is not None, sim.submissions[0].error
        sim.at(10.1, sim.submit, "n3", request(2, "10.40.0.9"))
        sim.run_until(13.0)
        err = sim.submissions[1].error
        assert err is not None
        wid = sim.submissions[0].result["workload"]  # type: ignore[index]
        assert f"address 10.40.0.9 on network lan is held by workload w1 ({wid})" in err
    finally:
        sim.close()


def test_claims_go_to_a_bare_majority_once_and_a_denial_widens_them() -> None:
    """On a whole mesh each NIC costs one claim, sent to a bare majority (this node and
    two peers of five), and is never resent: a reply that does not end the attempt
    resends nothing (it once resent to every silent voter on each reply). A fixed
    address one of the asked voters denies is then asked of the rest, and refused
    naming its holder."""
    names = ["n1", "n2", "n3", "n4", "n5"]
    sim = _settled(names, "10.40.0.0/24")
    try:
        for j in range(12):
            sim.at(8.1 + j * 0.05, sim.submit, names[j % 5], request(j))
        sim.run_until(12.0)
        assert all(s.result is not None for s in sim.submissions), [
            s.error for s in sim.submissions
        ]
        shells = [sim.placement(x).addresses for x in names]
        count = [s.claims for s in shells if s is not None]
        granted = [s.granted for s in shells if s is not None]
        assert sum(c.value(kind="attempt") for c in count) == 12
        assert sum(c.value(kind="resend") for c in count) == 0
        assert sum(g.value() for g in granted) == 12 * 3  # a bare majority of 5
        # Only the voters asked hold the grant; a claim of that address by another node
        # is denied by those it asks that hold it, then asked of the rest: refused.
        taken = sim.submissions[0].result["addresses"][0]["ip"]  # type: ignore[index]
        sim.at(12.1, sim.submit, "n4", request(99, taken))
        sim.run_until(14.0)
        err = sim.submissions[-1].error
        assert err is not None and f"address {taken} on network lan is held by" in err, err
    finally:
        sim.close()


def test_the_same_submission_twice_while_it_claims_joins_the_first() -> None:
    """A client's retry (the same idempotency key) while the first submission is still
    claiming its address: it waits for that auction and gets the same placement and
    address; one claim is made, not two."""
    sim = _settled(["n1", "n2", "n3"], "10.40.0.0/24")
    try:
        sim.at(8.1, sim.submit, "n2", request(1, key="same"))
        sim.at(8.1005, sim.submit, "n2", request(1, key="same"))
        sim.run_until(10.0)
        first, again = sim.submissions
        assert first.result is not None and again.result is not None, (first.error, again.error)
        assert first.result["workload"] == again.result["workload"]
        assert first.result["addresses"] == again.result["addresses"]
        shells = [sim.placement(x).addresses for x in ("n1", "n2", "n3")]
        assert sum(s.claims.value(kind="attempt") for s in shells if s is not None) == 1
    finally:
        sim.close()


def test_a_minority_can_not_allocate() -> None:
    sim = _settled(["n1", "n2", "n3"], "10.40.0.0/24")
    try:
        sim.systems["n1"].mode = "refuse"  # its fence fails: n1 stays up, cut off
        sim.at(8.1, sim.partition, ["n1"], ["n2", "n3"])
        sim.run_until(13.0)
        sim.at(13.1, sim.submit, "n1", request(1))
        sim.run_until(25.0)
        err = sim.submissions[0].error
        assert err is not None and "no majority answered the address claim" in err, err
    finally:
        sim.close()


def test_a_claim_stops_when_its_auction_fails_first() -> None:
    """The auction of a NIC submission no node can take fails after its bid window; a
    claim that cannot end by then (its node is cut off from the majority) stops there
    with the auction's sentence, instead of claiming on for addresses nothing could use
    (before, it answered only when the claim gave up, with the claim's sentence)."""
    sim = _settled(["n1", "n2", "n3"], "10.40.0.0/24")
    try:
        sim.systems["n1"].mode = "refuse"  # its fence fails: n1 stays up, cut off
        sim.at(8.1, sim.partition, ["n1"], ["n2", "n3"])
        sim.run_until(13.0)
        huge = msgspec.structs.replace(request(1), memory=1 << 50)
        sim.at(13.1, sim.submit, "n1", huge)
        sim.run_until(25.0)
        sub = sim.submissions[0]
        assert sub.error is not None and "majority" not in sub.error, sub.error
        assert "no node" in sub.error, sub.error
        cfg = sim.placement("n1").ctx.cfg
        assert sub.ended is not None
        assert sub.ended - sub.at < cfg.addresses.claim_timeout_s * cfg.addresses.attempts / 2
        assert not sim.placement("n1").addresses.table.entries()  # its own grant given back
    finally:
        sim.close()


def test_a_submission_cancelled_while_it_claims_leaves_no_grant_and_no_hold() -> None:
    """The client goes away (its request task is cancelled) while the claim waits on
    slow voters: every grant of the claim is given back, those that arrive after the
    cancellation too, and the auction it started is abandoned with its holds; the
    address is then free for the next submission."""
    names = ["n1", "n2", "n3"]
    sim = _settled(names, "10.40.0.0/24")
    try:
        for peer in ("n2", "n3"):
            sim.net.set_link("n1", peer, LinkModel(delay=(0.2, 0.25)))
        sim.at(8.1, sim.submit, "n1", request(1, "10.40.0.9"))
        sim.run_until(8.2)
        first = sim.submissions[0]
        assert first.task is not None and first.result is None and first.error is None
        first.task.cancel()
        sim.run_until(11.0)
        assert first.task.cancelled()
        wid = sim.placement("n1").core.placements()
        assert not wid, wid
        for x in names:
            left = [
                e for e in sim.placement(x).addresses.table.entries() if e.holder != "node:" + x
            ]
            assert not [e for e in left if not e.holder.startswith("node:")], (x, left)
            assert not sim.placement(x).core.ledger().holds, x
        sim.at(11.1, sim.submit, "n3", request(2, "10.40.0.9"))
        sim.run_until(14.0)
        assert sim.submissions[1].result is not None, sim.submissions[1].error
    finally:
        sim.close()


def test_a_node_address_is_claimed_once_kept_across_a_restart_and_listed() -> None:
    sim = _settled(["n1", "n2", "n3"], "10.40.0.0/24")
    got: list[str] = []

    def ask(name: str) -> None:
        node = sim.nodes[name]
        assert node.proc is not None and node.placement is not None
        shell = node.placement.addresses
        assert shell is not None

        async def run() -> None:
            got.append(str(await shell.node_address("lan")))  # type: ignore[attr-defined]

        node.proc.spawn(run())

    try:
        sim.at(8.1, ask, "n1")
        sim.run_until(10.0)
        sim.at(10.1, sim.crash, "n1")
        sim.at(10.5, sim.start, "n1")
        sim.at(12.0, ask, "n1")
        sim.at(12.0, ask, "n2")
        sim.at(12.1, sim.submit, "n3", request(1))
        sim.run_until(16.0)
        assert len(got) == 3 and got[0] == got[1] != got[2], got
        placed = sim.submissions[0].result
        assert placed is not None and placed["addresses"][0]["ip"] not in got
        shell = sim.placement("n3").addresses
        listed = {(u["holder"], u["ip"]) for u in shell.in_use("lan")}  # type: ignore[union-attr]
        assert ("node:n1", got[0]) in listed and ("node:n2", got[2]) in listed, listed
    finally:
        sim.close()


def reclaim_after_removal(
    removed_at: float, *, slow: bool = True, tries: int = 8, every_s: float = 0.5, seed: int = 7
) -> tuple[list[Submission], list[str]]:
    """The integration scenario (tests/integration/test_addresses.py): a fixed address
    held by w1, w1 removed, then the same address claimed again by new submissions (new
    ids) from n1, ``tries`` of them ``every_s`` apart. The nodes start apart, so their
    sweeps (which free a tombstoned holder's grants) run out of phase: a claim may meet
    one voter that freed the address and two that did not yet. With ``slow``, n2 answers
    slowly (a busy node): its grant arrives after the two denials that refused the claim.
    (benchmarks/bench_address_reclaim.py measures it.)

    Returns the later submissions, and each grant left (after the submissions settled)
    to a holder no live placement is: a refused submission's."""
    names = ["n1", "n2", "n3"]
    cfg = config.sim().override({"addresses.sweep_s": 2.0, "auction.sync_interval_s": 1.0})
    caps = {x: (8.0, 16 * GiB, 100 * GiB) for x in names}
    sim = ShellSim(seed, caps, cfg, membership="lagged", fencing=True, offers=OFFERS)
    try:
        if slow:
            sim.net.set_link("n1", "n2", LinkModel(delay=(0.05, 0.08)))
        for i, x in enumerate(names):
            sim.at(i * 0.7, sim.start, x)
        sim.at(5.2, sim.network, "n1", "lan", "10.40.0.0/24")
        sim.at(8.1, sim.submit, "n2", request(1, "10.40.0.9"))
        sim.at(removed_at, sim.remove_named, "n1", "w1")
        for k in range(tries):
            again = request(2, "10.40.0.9", f"r{k}")
            sim.at(removed_at + 0.05 + k * every_s, sim.submit, "n1", again)
        sim.run_until(removed_at + 0.05 + tries * every_s + 2.0)
        assert sim.submissions[0].result is not None, sim.submissions[0].error
        left = []
        for name in names:
            node = sim.nodes[name]
            assert node.placement is not None and node.placement.addresses is not None
            view = node.placement.core.placements()
            for e in node.placement.addresses.table.entries():  # type: ignore[attr-defined]
                p = view.get(e.holder)
                if p is None or p.removed:
                    left.append(f"{name} grants {e.address} to {e.holder}")
        return sim.submissions[1:], left
    finally:
        sim.close()


@pytest.mark.parametrize("slow", [False, True])
@pytest.mark.parametrize("offset", [k / 8 for k in range(16)])  # over one sweep period
def test_a_refused_claim_leaves_no_grant_and_a_removed_address_comes_back(
    offset: float, slow: bool
) -> None:
    """A claim refused while the voters' sweeps disagree must leave no grant behind: a
    slow voter's grant to a refused submission used to hold the address until
    ``grant_ttl_s`` (120 s) and deny the next claims, each of which could leave its own
    on another voter, until every voter held it for a different refused submission."""
    tries, left = reclaim_after_removal(12.0 + offset, slow=slow)
    errors = [s.error for s in tries]
    assert not left, (left, errors)
    won = [i for i, s in enumerate(tries) if s.result is not None]
    assert won and won[0] <= 5, errors  # within two sweeps and a claim
    for error in errors[: won[0]]:
        assert error is not None and "is held by" in error, error


@pytest.mark.parametrize("slow", [False, True])
@pytest.mark.parametrize("offset", [k / 4 for k in range(8)])  # over one sweep period
def test_a_removed_workloads_address_is_free_once_its_owner_tore_it_down(
    offset: float, slow: bool
) -> None:
    """Voters free a removed workload's grants when its tombstone and its owner's word
    that it tore the guest down (``TornDown``) reach them, not at their next sweep: a
    claim of the address half a second after ``workload rm`` wins, wherever in the
    sweep period the removal falls (with the sweep alone it waited for every voter's
    sweep, up to ``sweep_s``, and a claim before the owner's teardown is refused)."""
    tries, left = reclaim_after_removal(12.0 + offset, slow=slow, tries=3)
    assert not left, left
    won = [i for i, s in enumerate(tries) if s.result is not None]
    assert won and won[0] <= 1, [s.error for s in tries]


def test_a_removed_workload_on_a_cut_off_owner_keeps_its_address_until_torn_down() -> None:
    """``workload rm`` while the workload's owner is cut off and can't be fenced (its BMC
    refuses): the guest still runs there, so its address is not handed out again
    (claims of it are refused naming the removed workload) until the owner is back,
    has torn it down and said so (``TornDown``); then the next claim wins. No address
    ever runs on two guests."""
    names = ["n1", "n2", "n3"]
    cfg = config.sim().override({"addresses.sweep_s": 1.0, "auction.sync_interval_s": 1.0})
    caps = {x: (8.0, 16 * GiB, 100 * GiB) for x in names}
    sim = ShellSim(11, caps, cfg, membership="lagged", fencing=True, offers=OFFERS)
    watch = AddressWatch(sim)
    cut_off: list[str] = []

    def isolate_owner() -> None:
        shell = sim.nodes["n1"].placement
        assert shell is not None
        (owner,) = [p.owner for p in shell.core.placements().values() if p.name == "w1"]
        cut_off.append(owner)
        sim.systems[owner].mode = "refuse"  # never fenced: only its own word frees it
        sim.partition([owner], [x for x in names if x != owner])

    try:
        for i, x in enumerate(names):
            sim.at(i * 0.7, sim.start, x)
        sim.at(5.2, sim.network, "n1", "lan", "10.40.0.0/24")
        sim.at(8.1, sim.submit, "n1", request(1, "10.40.0.9"))
        sim.at(11.0, isolate_owner)
        sim.run_until(11.5)
        majority_side = [x for x in names if x not in cut_off]
        sim.at(12.0, sim.remove_named, majority_side[0], "w1")
        before = [13.0 + k * 0.5 for k in range(6)]
        after = [17.5 + k * 0.5 for k in range(6)]
        for k, t in enumerate(before + after):
            sim.at(t, sim.submit, majority_side[k % 2], request(2, "10.40.0.9", f"r{k}"))
        sim.at(16.0, sim.heal)
        sim.run_until(15.9)
        # `network show` on the majority side lists the address as held for the removed
        # workload (by what each node granted), not as placed and not as free.
        rows = [
            (u["ip"], u["name"], u["state"])
            for x in majority_side
            for u in sim.placement(x).addresses.in_use("lan")  # type: ignore[union-attr]
            if u["ip"] == "10.40.0.9"
        ]
        assert rows and set(rows) == {("10.40.0.9", "w1", "removed")}, rows
        sim.run_until(22.0)
        assert sim.submissions[0].result is not None, sim.submissions[0].error
        tries = sim.submissions[1:]
        for s in tries[: len(before)]:
            assert s.error is not None and "is held by" in s.error, (s.result, s.error)
        won = [s for s in tries[len(before) :] if s.result is not None]
        assert won, [s.error for s in tries]
        assert won[0].result is not None
        assert won[0].result["addresses"][0]["ip"] == "10.40.0.9"
        problems = watch.final()
        assert not problems, problems
    finally:
        sim.close()
