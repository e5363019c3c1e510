"""Address pools in the shell simulator: blocks granted ahead of demand, lent locally.

Scripted cases on a /22 (big enough for pools: 3 nodes keep up to 2 blocks each with
``addresses.pool = 32``); the random schedules of ``test_address_sim`` check the
pools' invariants under faults.
"""

from __future__ import annotations

from meshd import config
from meshd.adapters.store import roster
from meshd.core.address_pool import UNKNOWN, node_of
from meshd.core.addresses import Claim, Release
from meshd.core.auction.model import GiB
from meshd.core.spec import Nic, SubmitRequest
from tests.sim.shells import ShellSim
from tests.sim.test_address_sim import OFFERS, AddressWatch, request

NAMES = ["n1", "n2", "n3"]
SUBNET = "10.40.0.0/22"


def _mesh(
    seed: int = 11, names: list[str] = NAMES, subnet: str = SUBNET, **store: bool
) -> ShellSim:
    cfg = config.sim().override(
        {"addresses.sweep_s": 0.5, "auction.sync_interval_s": 1.0, "addresses.pool": 32}
    )
    caps = {x: (64.0, 256 * GiB, 100 * GiB) for x in names}
    sim = ShellSim(seed, caps, cfg, membership="lagged", fencing=True, offers=OFFERS, **store)
    for i, x in enumerate(names):
        sim.at(i * 0.01, sim.start, x)
    sim.at(5.2, sim.network, "n1", "lan", subnet)
    sim.run_until(8.0)
    return sim


def _lent(sim: ShellSim, name: str) -> float:
    shell = sim.placement(name).addresses
    assert shell is not None
    return shell.pools.assigned.value(source="pool")  # type: ignore[attr-defined, no-any-return]


def _book(sim: ShellSim, name: str):  # type: ignore[no-untyped-def]
    return sim.placement(name).addresses.pools.book  # type: ignore[union-attr, attr-defined]


def _ip(sim: ShellSim, k: int) -> str:
    result = sim.submissions[k].result
    assert result is not None, sim.submissions[k].error
    return str(result["addresses"][0]["ip"])


def _fill(sim: ShellSim, origin: str, at: float) -> None:
    """One submission through ``origin`` (claimed: its pool is still empty), which
    starts the pool's top-up."""
    sim.at(at, sim.submit, origin, request(900 + len(sim.submissions), key=f"f{at}"))
    sim.run_until(at + 2.0)
    assert sim.submissions[-1].result is not None, sim.submissions[-1].error
    assert _book(sim, origin).free("lan"), "the pool was not topped up"


def test_a_pool_lends_addresses_with_no_claim_and_every_view_agrees() -> None:
    sim = _mesh()
    try:
        watch = AddressWatch(sim)
        _fill(sim, "n1", 8.1)
        shells = [sim.placement(x).addresses for x in NAMES]
        claims = sum(s.claims.value(kind="attempt") for s in shells if s is not None)
        for j in range(12):
            sim.at(10.2 + j * 0.01, sim.submit, "n1", request(j))
        sim.run_until(14.0)
        ips = [_ip(sim, k) for k in range(1, 13)]
        assert len(set(ips)) == 12
        assert _lent(sim, "n1") == 12
        # No claim per address: at most the block claims of a top-up.
        after = sum(s.claims.value(kind="attempt") for s in shells if s is not None)
        assert after - claims <= 2
        book = _book(sim, "n1")
        assert all(book.holder_of(ip) is not None for ip in ips)
        assert not set(ips) & set(book.free("lan"))
        for x in NAMES:  # every view carries them
            view = sim.placement(x).core.placements()
            assert {p.spec.nics[0].ip for p in view.values()} >= set(ips)
        # The voters list the blocks (state "pool"), not the addresses lent from them.
        rows = sim.placement("n2").addresses.in_use("lan")  # type: ignore[union-attr]
        pools = [r for r in rows if r["state"] == "pool"]
        assert pools and all(node_of(r["holder"]) == "n1" for r in pools)
        assert all(r["ip"].endswith("/28") for r in pools)
        assert not watch.final()
    finally:
        sim.close()


def test_a_fixed_address_in_another_nodes_pool_is_refused_and_in_its_own_is_lent() -> None:
    sim = _mesh()
    try:
        _fill(sim, "n1", 8.1)
        mine = _book(sim, "n1").free("lan")[3]
        sim.at(10.1, sim.submit, "n2", request(1, mine))
        sim.run_until(12.0)
        err = sim.submissions[-1].error
        assert err is not None and "node n1's pool" in err, err
        before = _lent(sim, "n1")
        sim.at(12.1, sim.submit, "n1", request(2, mine))
        sim.run_until(14.0)
        assert _ip(sim, len(sim.submissions) - 1) == mine
        assert _lent(sim, "n1") == before + 1
    finally:
        sim.close()


def _lent_away(sim: ShellSim, at: float) -> tuple[str, str, str]:
    """n1's pool filled, then five submissions through n1 from ``at``; (workload, owner,
    address) of the first one placed on another node."""
    _fill(sim, "n1", 8.1)
    for j in range(1, 6):
        sim.at(at + j * 0.01, sim.submit, "n1", request(j))
    sim.run_until(12.0)
    k = next(
        k
        for k, s in enumerate(sim.submissions[1:], 1)
        if s.result is not None and s.result["owner"] != "n1"
    )
    result = sim.submissions[k].result
    assert result is not None
    return str(result["workload"]), str(result["owner"]), _ip(sim, k)


def test_a_removed_workloads_pool_address_comes_back_to_its_pool() -> None:
    sim = _mesh()
    try:
        _fill(sim, "n1", 8.1)
        sim.at(10.1, sim.submit, "n1", request(1))
        sim.run_until(12.0)
        ip = _ip(sim, 1)
        wid = sim.submissions[1].result["workload"]  # type: ignore[index]
        assert ip not in _book(sim, "n1").free("lan")
        sim.at(12.1, sim.remove, "n2", wid)
        sim.run_until(16.0)  # torn down by its owner, then the next sweep settles it
        assert ip in _book(sim, "n1").free("lan")
    finally:
        sim.close()


def test_an_originator_that_crashes_at_the_award_keeps_the_address_lent() -> None:
    """The award's round record (fsynced, carrying the address) is the only record of
    the lending: n1 dies the moment it is on disk, before the award leaves. Restarted,
    it counts every address of its pool as lent until it sees otherwise (that one for
    ``grant_ttl_s``: its placement might still show up), and lends none of them again
    meanwhile; it tops up with new blocks instead."""
    sim = _mesh()
    try:
        _fill(sim, "n1", 8.1)
        before = set(_book(sim, "n1").free("lan"))
        sim.at(10.1, sim.arm_commit, "n1", 1)
        sim.at(10.1, sim.submit, "n1", request(1))
        sim.run_until(10.6)
        assert sim.nodes["n1"].proc is None or not sim.nodes["n1"].proc.alive
        assert any("committed: crash" in r for r in sim.trace), sim.trace[-10:]
        sim.at(10.7, sim.start, "n1")
        sim.run_until(14.0)
        book = _book(sim, "n1")
        assert before <= set(book.lent), "a restarted node lends what it may have lent"
        for j in range(2, 8):
            sim.at(14.1 + j * 0.01, sim.submit, "n1", request(j))
        sim.run_until(17.0)
        ips = [_ip(sim, k) for k in range(2, 8)]
        assert not set(ips) & before
        assert len(set(ips)) == 6
        # After grant_ttl_s nothing is held for nobody: what no placement holds is back
        # in the pool, or back with the mesh (surplus blocks given back).
        ttl = sim.placement("n1").ctx.cfg.addresses.grant_ttl_s
        sim.run_until(17.0 + ttl + 3.0)
        lent = _book(sim, "n1").lent
        assert not [a for a in before if a in lent and lent[a].workload == UNKNOWN]
    finally:
        sim.close()


def test_a_pool_that_can_not_be_written_is_given_back() -> None:
    """The top-up won its blocks but could not write them down (the disk failed): it
    keeps none and gives the grants back, so no voter holds them for a pool that
    does not know it has them."""
    sim = _mesh(store_faults=True)
    try:
        sim.at(8.1, sim.submit, "n1", request(1))
        sim.run_until(8.101)
        sim.disk_full("n1")
        sim.run_until(10.0)
        sim.disk_ok("n1")
        sim.run_until(12.0)
        assert not _book(sim, "n1").free("lan")
        for x in ("n2", "n3"):
            rows = sim.placement(x).addresses.in_use("lan")  # type: ignore[union-attr]
            assert not [r for r in rows if r["state"] == "pool"], (x, rows)
    finally:
        sim.close()


def test_a_removed_network_gives_the_pools_back() -> None:
    sim = _mesh()
    try:
        _fill(sim, "n1", 8.1)
        sim.at(10.1, sim.remove, "n2", sim.submissions[0].result["workload"])  # type: ignore[index]
        sim.run_until(12.0)
        sim.at(12.1, sim.network, "n1", "lan", None)
        sim.run_until(16.0)
        assert not _book(sim, "n1").networks()
        for x in NAMES:
            table = sim.placement(x).addresses.table  # type: ignore[union-attr]
            assert not [e for e in table.entries() if node_of(e.holder)], x
    finally:
        sim.close()


def test_a_pool_claim_for_another_node_or_a_block_for_a_workload_is_dropped() -> None:
    sim = _mesh()
    try:
        shell = sim.placement("n3").addresses
        assert shell is not None
        for forged in (
            Claim("x.1", "10.40.1.0/28", "lan", "pool:abc:n1"),
            Claim("x.2", "10.40.1.0/28", "lan", "w1"),
            Claim("x.3", "10.40.1.0/28", "lan", "pool:n2"),
        ):
            sim.nodes["n3"].proc.run(shell._on_msg, forged, "n2")  # type: ignore[union-attr, attr-defined]
        assert shell.table.get("10.40.1.0/28") is None  # type: ignore[attr-defined]
        assert shell.dropped.value(reason="invalid") == 3  # type: ignore[attr-defined]
    finally:
        sim.close()


def test_a_release_of_a_pool_block_counts_only_from_its_node() -> None:
    """A member (n2) sending Release(block, pool:…:n1) frees nothing: only n1 gives
    its blocks back (before, the voters freed it and n1 lent from it on, so a fixed
    claim through n3 and a lend through n1 got one address)."""
    sim = _mesh()
    try:
        _fill(sim, "n1", 8.1)
        book = _book(sim, "n1")
        pool_holder = book.holder_of(book.free("lan")[3])
        assert pool_holder is not None
        block = book.blocks[pool_holder][1]
        kept = 0
        for voter in ("n2", "n3"):
            shell = sim.placement(voter).addresses
            assert shell is not None
            had = shell.table.get(block)  # type: ignore[attr-defined]
            sim.nodes[voter].proc.run(shell._on_msg, Release(block, pool_holder), "n2")  # type: ignore[union-attr, attr-defined]
            assert shell.table.get(block) == had, voter  # type: ignore[attr-defined]
            assert shell.dropped.value(reason="invalid") == 1  # type: ignore[attr-defined]
            kept += had is not None
        assert kept  # (a bare majority granted it: n1 and one of these)
    finally:
        sim.close()


def test_a_block_whose_release_was_lost_is_freed_on_its_nodes_word() -> None:
    """n1 gives its blocks back (the network removed) but every Release is lost. The
    voters ask n1 about blocks older than grant_ttl_s, and n1's answer (TornDown:
    not mine) frees them."""
    sim = _mesh()
    try:
        _fill(sim, "n1", 8.1)
        wid = sim.submissions[0].result["workload"]  # type: ignore[index]
        sim.at(10.1, sim.remove, "n2", wid)
        sim.run_until(12.0)
        held = _book(sim, "n1").holders()
        n1 = sim.placement("n1").addresses
        assert held and n1 is not None
        n1.give_back = lambda holder, addresses: None  # type: ignore[method-assign]  # lost
        sim.at(12.1, sim.network, "n1", "lan", None)
        sim.run_until(16.0)
        assert not _book(sim, "n1").holders()

        def holding() -> list[str]:
            out = []
            for x in ("n2", "n3"):
                table = sim.placement(x).addresses.table  # type: ignore[union-attr]
                out += [f"{x}:{e.address}" for e in table.entries() if e.holder in held]
            return out

        assert holding()  # the Releases were lost
        cfg = sim.placement("n1").ctx.cfg.addresses
        sim.run_until(16.0 + cfg.grant_ttl_s + 70.0)
        assert not holding()
    finally:
        sim.close()


def test_a_network_recreated_with_another_subnet_lends_inside_it() -> None:
    sim = _mesh()
    try:
        _fill(sim, "n1", 8.1)
        sim.at(10.2, sim.submit, "n1", request(1))  # lent: its block stays with n1 a while
        sim.run_until(10.8)
        sim.at(10.9, sim.network, "n1", "lan", None)
        sim.at(11.0, sim.network, "n1", "lan", "10.41.0.0/22")
        sim.run_until(14.0)
        for j in range(2, 6):
            sim.at(14.1 + j * 0.01, sim.submit, "n1", request(j))
        sim.run_until(17.0)
        assert all(_ip(sim, k).startswith("10.41.") for k in range(2, 6))
    finally:
        sim.close()


def test_an_automatic_and_a_fixed_nic_through_the_pools_node_both_come_from_it() -> None:
    sim = _mesh()
    try:
        _fill(sim, "n1", 8.1)
        first = _book(sim, "n1").free("lan")[0]
        req = SubmitRequest(
            name="two",
            cpus=0.5,
            memory=GiB,
            driver="fake",
            nics=(Nic("lan", None), Nic("lan", first)),
            idempotency_key="two",
        )
        sim.at(10.2, sim.submit, "n1", req)
        sim.run_until(12.0)
        result = sim.submissions[-1].result
        assert result is not None, sim.submissions[-1].error
        auto, fixed = (a["ip"] for a in result["addresses"])
        assert fixed == first and auto != first
    finally:
        sim.close()


def test_removing_the_pool_node_keeps_what_a_cut_off_owner_still_runs() -> None:
    """A lent address has no grant of its own: its block keeps it from being granted
    again. When the pool's node is removed from the roster, each voter frees the block
    but keeps a grant for each address of it a removed workload's owner may still run
    (here: cut off, its tombstone waits for its word), so a fixed claim of it is
    refused, naming the workload (before, it was granted and the address ran twice)."""
    names = ["n1", "n2", "n3", "n4", "n5"]
    sim = _mesh(names=names, subnet="10.40.0.0/20")
    try:
        watch = AddressWatch(sim)
        wid, owner, victim = _lent_away(sim, 10.2)
        others = [x for x in names if x not in ("n1", owner)]
        sim.at(12.0, sim.crash, "n1")  # the pool's node is dead for good
        for x in names:
            if x != owner:
                sim.at(12.1, sim.cut, owner, x, True)  # the owner is cut off, still runs it
        sim.at(12.15, sim.remove, others[0], wid)

        def node_rm() -> None:  # `meshd node rm n1`, as the live nodes' rosters record it
            for x in names:
                store = sim.nodes[x].store
                if store is not None and x != owner:
                    with store.transaction():
                        roster.mark_removed(store, "n1", sim.now)

        sim.at(12.2, node_rm)
        sim.at(14.0, sim.submit, others[0], request(50, victim))
        sim.run_until(15.0)
        err = sim.submissions[-1].error
        assert err is not None and f"is held by workload {wid}" in err, err
        assert not [p for p in watch.problems if "runs as" in p]
    finally:
        sim.close()


def test_a_restarted_node_keeps_an_address_a_cut_off_owner_may_still_run() -> None:
    """n1 lent X to w, placed on another blade; that blade is cut off (its BMC refuses:
    not fenced) and w removed, so its owner may still run it. n1 restarts: X counts as
    held for w, not for nobody, so it is not lent again after grant_ttl_s."""
    sim = _mesh()
    try:
        wid, owner, ip = _lent_away(sim, 10.1)
        sim.systems[owner].mode = "refuse"  # its fence fails: it stays up, cut off
        others = [x for x in NAMES if x != owner]
        sim.at(12.1, sim.partition, [owner], others)
        sim.at(12.2, sim.remove, "n1", wid)
        sim.at(13.0, sim.restart, "n1")
        ttl = sim.placement("n1").ctx.cfg.addresses.grant_ttl_s
        sim.run_until(13.0 + ttl + 5.0)
        book = _book(sim, "n1")
        assert ip in book.lent and book.lent[ip].workload == wid, book.lent.get(ip)
        assert wid in sim.nodes[owner].host.workloads  # it does still run there
    finally:
        sim.close()


def test_a_restart_does_not_leave_the_pool_bigger_than_its_target() -> None:
    """After a restart the whole pool counts as lent, so it tops up; once the old
    addresses come back (grant_ttl_s), the surplus blocks are given back."""
    sim = _mesh()
    try:
        _fill(sim, "n1", 8.1)
        sim.at(10.0, sim.restart, "n1")
        sim.at(11.0, sim.submit, "n1", request(1))  # claimed; starts a top-up
        sim.run_until(13.0)
        book = _book(sim, "n1")
        target = 2 * 16  # addresses.pool = 32 on a /22 among three nodes
        assert len(book.blocks) > 2  # the old blocks (lent) and the new
        ttl = sim.placement("n1").ctx.cfg.addresses.grant_ttl_s
        sim.run_until(13.0 + ttl + 5.0)
        book = _book(sim, "n1")
        assert book.free_count("lan") <= target + 16, book.free_count("lan")
        assert len(book.blocks) <= 3
    finally:
        sim.close()
