"""The real shells with a failing disk: nothing is promised that the disk lacks.

A write to a node's store can fail at any of its write points (tests/faults/store.py
fails it inside SQLite, as a full disk would). Whatever fails, the client is never told
"placed" unless the owner has the allocation on disk; after a restart the owner still
has it (or the mesh never named it the owner); the node refuses work while its store
can't write, says so, and resumes by itself; and nothing crashes.
"""

from __future__ import annotations

import pytest

from meshd import config
from meshd.adapters.store import auction_records
from meshd.core.auction.model import GiB
from meshd.core.spec import SubmitRequest
from tests.faults.store import Fault
from tests.sim.harness import seed_or
from tests.sim.shells import ShellSim

SETTLE = 25.0  # confirmation timeout, hold TTL, anti-entropy, a store probe or two


def _mesh(seed: int) -> ShellSim:
    cfg = config.sim().override({"auction.sync_interval_s": 1.0})
    sim = ShellSim(
        seed, {f"n{i}": (4.0, 8 * GiB, 100 * GiB) for i in (1, 2, 3)}, cfg, store_faults=True
    )
    for name in sim.nodes:
        sim.at(0.0, sim.start, name)
    return sim


def _request(name: str, nodes: frozenset[str] = frozenset()) -> SubmitRequest:
    return SubmitRequest(
        name=name, cpus=1.0, memory=GiB, driver="fake", nodes=nodes, idempotency_key=name
    )


def _promises_kept(sim: ShellSim) -> list[str]:
    """Every placement a client heard of (unless removed or re-placed since), and every
    placement any view names, is on its owner's disk (read from the store, not memory)."""
    problems: list[str] = []
    sim.flush()
    disks = {}
    for name in sim.live():
        store = sim.nodes[name].store
        assert store is not None
        disks[name] = auction_records.load(store).allocations
    live = sim.live()
    view = sim.placement(live[0]).core.placements() if live else {}
    for sub in sim.submissions:
        r = sub.result
        if r is None:
            continue
        now = view.get(r["workload"])
        if now is not None and (now.removed or now.generation > r["generation"]):
            continue  # removed by an operator, or re-placed since: a later decision
        alloc = disks.get(r["owner"], {}).get(r["workload"])
        if alloc is None or alloc.generation < r["generation"]:
            problems.append(
                f"{sub.request.name} was reported placed on {r['owner']} gen "
                f"{r['generation']}, whose disk holds {alloc}"
            )
    for name in sim.live():
        for wid, p in sim.placement(name).core.placements().items():
            if p.removed or p.owner not in disks:
                continue
            alloc = disks[p.owner].get(wid)
            if alloc is None or alloc.generation < p.generation:
                problems.append(
                    f"{name}'s view names {p.owner} owner of {p.name} gen {p.generation}; "
                    f"its disk holds {alloc}"
                )
    return problems


def _restart_all(sim: ShellSim, at: float) -> None:
    for name in sim.nodes:
        sim.at(at, sim.restart, name)


def test_a_full_disk_at_the_award_places_nothing_and_heals_by_itself() -> None:
    """The tester's failure: the winner's disk is full, so its first durable write (the
    accepted award) fails. The old shell had already changed its core: the resent award
    found the allocation in memory and was accepted with nothing on disk; the client
    heard "placed", every view named the winner, and a restart forgot it."""
    sim = _mesh(seed_or(7))
    try:
        sim.at(0.5, sim.disk_full, "n2")
        sim.at(0.6, sim.submit, "n1", _request("w1", frozenset({"n2"})))
        sim.run_until(3.0)
        (sub,) = sim.submissions
        assert sub.result is None, f"placed with a full disk: {sub.result}"
        assert sub.error is not None and "store can't write" in sub.error, sub.error
        shell = sim.placement("n2")
        assert shell.health.problem is not None and "full" in shell.health.problem
        assert not shell.core.ledger().allocations
        assert sim.violations == [], sim.violations
        # While the disk is full, n2 refuses with the reason, and submissions to it too.
        sim.at(3.1, sim.submit, "n1", _request("w2", frozenset({"n2"})))
        sim.at(3.1, sim.submit, "n2", _request("w3"))
        sim.run_until(8.0)
        w2, w3 = sorted(sim.submissions[1:], key=lambda x: x.request.name)
        assert w2.result is None and w2.error is not None
        assert "store can't write" in w2.error, w2.error
        assert w3.result is None and w3.error is not None
        assert w3.error.startswith("this node's store can't write"), w3.error
        # Space is freed: n2 finds out by itself (a probe write) and takes work again.
        sim.at(8.0, sim.disk_ok, "n2")
        sim.run_until(8.0 + 2 * sim.cfg.store.probe_max_s)
        assert sim.placement("n2").health.problem is None
        sim.at(sim.now, sim.submit, "n1", _request("w4", frozenset({"n2"})))
        sim.run_until(sim.now + 5.0)
        w4 = sim.submissions[-1]
        assert w4.result is not None and w4.result["owner"] == "n2", w4.error
        assert _promises_kept(sim) == []
        _restart_all(sim, sim.now + 0.1)
        sim.run_until(sim.now + SETTLE)
        problems = sim.final_problems() + _promises_kept(sim)
        assert problems == [], f"{sim.describe()}: {problems}"
    finally:
        sim.close()


def _placement_run(seed: int, fail: tuple[str, int, str] | None) -> tuple[ShellSim, dict[str, int]]:
    """One placement from n1 (and a second, to see the mesh still places); with
    ``fail`` = (node, k, how), that node's k-th write from the submission fails
    (``once``) or it and every later one until 3 s later (``full``)."""
    sim = _mesh(seed)
    before: dict[str, int] = {}

    def arm() -> None:
        before.update({n: sim.disk(n).writes for n in sim.nodes})
        if fail is not None:
            node, k, how = fail
            if how == "once":
                sim.fail_write(node, k)
            else:
                sim.disk(node).fail_from(k)
                heal_later(node)

    def heal_later(node: str) -> None:  # the disk is freed 3 s after it filled up
        if sim.disk(node).failures:
            sim.at(sim.now + 3.0, sim.disk_ok, node)
        else:
            sim.at(sim.now + 0.05, heal_later, node)

    sim.at(0.5, arm)
    sim.at(0.5, sim.submit, "n1", _request("w1"))
    sim.at(6.0, sim.submit, "n3", _request("w2"))
    sim.run_until(12.0)
    return sim, {n: sim.disk(n).writes - before[n] for n in sim.nodes}


def _write_points() -> list[tuple[str, int]]:
    sim, counts = _placement_run(seed_or(11), None)
    try:
        assert all(s.result is not None for s in sim.submissions), sim.submissions
        assert sim.violations == []
    finally:
        sim.close()
    return [(node, k) for node, count in sorted(counts.items()) for k in range(1, count + 1)]


WRITE_POINTS = _write_points()


def test_a_clean_placement_has_write_points_on_every_node() -> None:
    nodes = {node for node, _ in WRITE_POINTS}
    assert nodes == {"n1", "n2", "n3"}, WRITE_POINTS


@pytest.mark.parametrize("how", ["once", "full"])
@pytest.mark.parametrize(("node", "k"), WRITE_POINTS)
def test_any_failed_write_of_a_placement_keeps_every_promise(node: str, k: int, how: str) -> None:
    sim, _ = _placement_run(seed_or(11), (node, k, how))
    try:
        assert sim.disk(node).failures >= 1, "the chosen write never failed"
        problems = list(sim.violations) + _promises_kept(sim)
        _restart_all(sim, sim.now + 0.1)
        sim.run_until(sim.now + SETTLE)
        problems += sim.final_problems() + _promises_kept(sim)
        assert problems == [], f"{sim.describe()} fail {node} write {k} {how}: {problems}"
        # The mesh still places, through the node whose write failed too.
        sim.at(sim.now, sim.submit, node, _request("w3"))
        sim.run_until(sim.now + 5.0)
        assert sim.submissions[-1].result is not None, sim.submissions[-1].error
    finally:
        sim.close()


@pytest.mark.parametrize("kind", [Fault.IOERR, Fault.READONLY])
def test_io_errors_and_read_only_stores_are_refused_alike(kind: Fault) -> None:
    sim = _mesh(seed_or(5))
    try:
        sim.at(0.5, sim.disk_full, "n3", kind)
        sim.at(0.6, sim.submit, "n1", _request("w1", frozenset({"n3"})))
        sim.run_until(4.0)
        (sub,) = sim.submissions
        assert sub.result is None and sub.error is not None
        assert "store can't write" in sub.error, sub.error
        assert sim.violations == []
        sim.at(4.0, sim.disk_ok, "n3")
        _restart_all(sim, 40.0)
        sim.run_until(40.0 + SETTLE)
        problems = sim.final_problems() + _promises_kept(sim)
        assert problems == [], f"{sim.describe()}: {problems}"
    finally:
        sim.close()
