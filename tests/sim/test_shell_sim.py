"""The real placement shell and workload runner under random fault schedules.

Each seed builds a mesh of 3-6 nodes (:mod:`tests.sim.shells`: the real shells, real
SQLite stores, fake mesh port and fake driver, virtual time), submits workloads
through ``PlacementShell.submit``, retries and removes some, and meanwhile crashes and
restarts nodes (at random moments, or right after a node handled a message, was told
to start or stop a workload, or made a promise durable), fills disks up and frees them
(every write fails: disk full, I/O error or read-only), partitions, cuts links and
heals. Then everything
heals, every node runs again, the mesh settles, and the invariants of
:meth:`~tests.sim.shells.ShellSim.final_problems` must hold, as must the step checks
made all along.

Every failure message carries the seed; ``MESHD_SIM_SEED=<seed>`` replays exactly that
schedule (and only it), with its command trace in the report. ``MESHD_SIM_SHELL_SEEDS``
runs that many seeds instead of the CI share (a longer exploration).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from meshd import config
from meshd.adapters.drivers.base import WorkloadState
from meshd.core.auction.model import NOTHING, GiB, Resources
from meshd.core.spec import Service, SubmitRequest
from meshd.shell.bus import DrainingChanged, WorkloadAssigned, WorkloadReleased
from tests.faults.store import Fault
from tests.sim.harness import ENV_SEED, seed_or
from tests.sim.network import LinkModel
from tests.sim.shells import ShellSim

ENV_COUNT = "MESHD_SIM_SHELL_SEEDS"
SCHEDULES = 125  # seeds in CI per membership model: about 35 s in all on 2 shared cores
CHUNK = 25
FAULT_END = 6.0
FAULT_END_FENCING = 12.0  # deaths detected (1-4 s), fenced, their workloads moved


def random_run(
    seed: int, membership: str = "lagged", fencing: bool = False
) -> tuple[ShellSim, list[str]]:
    """A random mesh, workloads, and faults until t=6; then heal, start all, settle.

    ``membership``: ``lagged`` (each node's view follows the truth a detection delay
    later, as with SWIM) or ``oracle`` (every node knows at once who is up).
    """
    rng = random.Random(seed)
    n = rng.randint(3, 6)
    names = [f"n{i}" for i in range(1, n + 1)]
    cfg = config.sim().override(
        {
            "auction.sync_interval_s": 1.0,
            "auction.full_mesh_max": rng.choice([8, 8, 3]),
            # Sometimes keep only the last two rounds: pruning runs under crashes too.
            "auction.rounds_keep": rng.choice([1000, 1000, 2]),
        }
    )
    link = LinkModel(
        loss=rng.choice([0.0, 0.0, 0.05, 0.2]),
        duplicate=rng.choice([0.0, 0.05]),
        copy=rng.choice([0.0, 0.0, 0.1]),  # datagrams copied to other nodes by an attacker
    )
    caps = {
        x: (float(rng.choice([2, 4, 8])), rng.choice([4, 8, 16]) * GiB, 100 * GiB) for x in names
    }
    sim = ShellSim(seed, caps, cfg, link, membership=membership, store_faults=True, fencing=fencing)
    if fencing:  # some BMCs fail: nothing of theirs may move
        frng = random.Random(f"{seed}/bmc-modes")
        for sys_ in sim.systems.values():
            sys_.mode = frng.choice(["ok", "ok", "ok", "timeout", "refuse", "wrong-state"])
    for i, x in enumerate(names):
        sim.at(i * 0.01, sim.start, x)
    t, origin = 0.0, names[0]
    for j in range(rng.randint(2, 8)):
        burst = j > 0 and rng.random() < 0.3  # with the previous one: a batch
        t = t if burst else rng.uniform(0.1, 4.0)
        services = (Service(name=f"s{j}", port=8000 + j),) if rng.random() < 0.3 else ()
        request = SubmitRequest(
            name=f"w{j}",
            cpus=rng.choice([0.5, 1.0, 2.0, 4.0]),
            memory=rng.choice([1, 2, 4]) * GiB,
            driver="fake",
            tenant=rng.choice([None, "a", "b"]),
            services=services,
            idempotency_key=f"k{j}",
        )
        origin = origin if burst else rng.choice(names)
        sim.at(t, sim.submit, origin, request)
        if rng.random() < 0.2:  # an operator removes it, from any node, placed or not yet
            sim.at(t + rng.uniform(0.0, 3.0), sim.remove_named, rng.choice(names), request.name)
        if rng.random() < 0.3:  # the client retries on the same node, with the same key
            sim.at(t + rng.uniform(0.1, 5.0), sim.submit, origin, request)
    for _ in range(rng.randint(0, 6)):
        t = rng.uniform(0.0, 5.0)
        kind = rng.choice(["crash", "partition", "cut", "heal", "step", "step", "event", "commit"])
        x = rng.choice(names)
        if kind == "crash":
            sim.at(t, sim.crash, x)
        elif kind == "partition":
            shuffled = rng.sample(names, n)
            k = rng.randint(1, n - 1)
            sim.at(t, sim.partition, shuffled[:k], shuffled[k:])
        elif kind == "cut":
            a, b = rng.sample(names, 2)
            sim.at(t, sim.cut, a, b, rng.random() < 0.5)
        elif kind == "heal":
            sim.at(t, sim.heal)
        elif kind == "step":  # crash right after the k-th message it handles from now
            sim.at(t, sim.arm_step, x, rng.randint(1, 40), rng.choice(["mid", "after"]))
        elif kind == "event":  # crash right after it is told to start or stop a workload
            event = rng.choice([WorkloadAssigned, WorkloadReleased])
            sim.at(t, sim.arm_event, x, event)
        else:  # crash the moment a promise is on disk, before the step sends anything
            sim.at(t, sim.arm_commit, x, rng.randint(1, 3))
        if kind != "heal" and rng.random() < 0.6:
            sim.at(t + rng.uniform(0.05, 3.0), sim.start, x)
    # Disks that fill up and are freed again, from their own generator (so the other
    # faults of a seed stay what they were before disks could fail).
    drng = random.Random(f"{seed}/disk")
    for _ in range(drng.choice([0, 0, 1, 2])):
        x, t = drng.choice(names), drng.uniform(0.0, 5.0)
        sim.at(t, sim.disk_full, x, drng.choice(list(Fault)))
        sim.at(t + drng.uniform(0.2, 3.0), sim.disk_ok, x)
    end = FAULT_END
    if fencing:  # blades that lose power, or whose daemon dies and stays dead, long
        end = FAULT_END_FENCING  # enough for the mesh to fence them
        for _ in range(frng.randint(1, 2)):
            x, t = rng.choice(names), rng.uniform(0.0, 4.0)
            sim.at(t, rng.choice([sim.power_loss, sim.crash]), x)
    timing = cfg.auction
    settle = timing.confirm_timeout_s + timing.hold_ttl_s + 4 * timing.sync_interval_s
    settle += cfg.store.probe_max_s  # a node whose disk was freed finds out by a probe
    if membership == "lagged":
        settle += 2.0  # the last views to learn that everyone is back
    if fencing:  # a death detected late, its fence, the re-placement's auction
        settle += 4.0 + 3 * cfg.fencing.takeover_s
    sim.at(end, sim.end_faults)
    if fencing:  # a fence decided before the heal completes (up to its lease): the
        # blade it took down is started again, like every other, and rejoins
        end += cfg.fencing.lease_s + 2.0
        sim.at(end, sim.end_faults)
    sim.run_until(end + settle)
    return sim, sim.final_problems()


def _report(sim: ShellSim, problems: list[str]) -> str:
    text = f"{sim.describe()}:\n" + "\n".join(problems[:12])
    return text + "\n-- commands --\n" + "\n".join(sim.trace[-60:])


def _seeds(chunk: int, count: int = CHUNK, base: int = 0) -> list[int]:
    """This chunk's seeds; ``MESHD_SIM_SEED`` replays one seed (in the first chunk only)."""
    env = os.environ.get(ENV_SEED)
    if env:
        return [int(env)] if chunk == 0 else []
    return list(range(base + chunk * count, base + (chunk + 1) * count))


def _run(seed: int, membership: str = "lagged", fencing: bool = False) -> Iterator[str]:
    sim, problems = random_run(seed, membership, fencing)
    try:
        if problems:
            yield _report(sim, problems)
    finally:
        sim.close()


def _chunks() -> int:
    return max(1, int(os.environ.get(ENV_COUNT, SCHEDULES)) // CHUNK)


@pytest.mark.parametrize("membership", ["lagged", "oracle"])
@pytest.mark.parametrize("chunk", range(_chunks()))
def test_real_shells_keep_the_invariants_under_random_faults(chunk: int, membership: str) -> None:
    base = 0 if membership == "lagged" else 100_000
    failures = [r for seed in _seeds(chunk, base=base) for r in _run(seed, membership)]
    assert not failures, failures[0]


@pytest.mark.parametrize("chunk", range(_chunks()))
def test_real_fencing_shells_keep_the_invariants_under_random_faults(chunk: int) -> None:
    """The fencing shell with the placement and the runner, BMCs that work or time out,
    refuse, or never report Off, under crashes, partitions and full disks: a workload
    never runs on two blades at once across generations (so nothing moved before its
    blade was verified off), and every other invariant of the placement holds."""
    failures = [r for seed in _seeds(chunk, base=200_000) for r in _run(seed, "lagged", True)]
    assert not failures, failures[0]


def test_same_seed_same_run() -> None:
    """Replaying a seed replays the run: the same commands, messages and outcomes."""

    def fingerprint(seed: int) -> tuple[object, ...]:
        sim, problems = random_run(seed)
        try:
            return (
                sim.trace,
                sim.delivered,
                sim.loop.callbacks,
                [(s.origin, s.result and s.result["owner"], s.error) for s in sim.submissions],
                problems,
            )
        finally:
            sim.close()

    assert fingerprint(3) == fingerprint(3)
    assert fingerprint(3) != fingerprint(4)


# -- bugs in the real shells this simulator found (each failed before its fix) -------------


def _three(seed: int) -> ShellSim:
    cfg = config.sim().override({"auction.sync_interval_s": 1.0})
    sim = ShellSim(seed, {f"n{i}": (4.0, 8 * GiB, 100 * GiB) for i in (1, 2, 3)}, cfg)
    for name in sim.nodes:
        sim.at(0.0, sim.start, name)
    return sim


def _request(name: str, nodes: frozenset[str] = frozenset()) -> SubmitRequest:
    return SubmitRequest(
        name=name, cpus=1.0, memory=GiB, driver="fake", nodes=nodes, idempotency_key=name
    )


def test_every_node_sees_the_running_state_of_a_workload() -> None:
    """The runner announces ``starting`` and ``running`` at one instant (the fake driver
    starts at once; a coarse clock does the same): with equal stamps the later state
    lost the last-writer-wins merge on every other node, for good. (Random seed 1.)"""
    sim = _three(seed_or(1))
    try:
        sim.at(0.5, sim.submit, "n1", _request("w1"))
        sim.run_until(5.0)
        (sub,) = sim.submissions
        assert sub.result is not None, sub.error
        wid, gen = sub.result["workload"], sub.result["generation"]
        for name in sim.live():
            assert sim.runner(name).state_of(wid, gen)[0] == "running", (name, sim.describe())
        assert sim.final_problems() == []
    finally:
        sim.close()


def test_a_stop_cut_short_by_a_crash_is_finished_after_the_restart() -> None:
    """The owner persisted the release of a removed workload, then died before its
    runner destroyed it: restarted, it found no allocation and never stopped the
    workload, which ran on unaccounted for. The runner now destroys what a driver holds
    that no allocation names. (Random seeds 10 and 16.)"""
    sim = _three(seed_or(2))
    try:
        sim.at(0.5, sim.submit, "n1", _request("w1", nodes=frozenset({"n2"})))
        sim.at(2.0, sim.arm_event, "n2", WorkloadReleased)
        sim.at(2.1, sim.remove_named, "n1", "w1")
        sim.at(3.0, sim.start, "n2")
        sim.run_until(10.0)
        assert "    2.100 crash n2" in sim.trace, sim.trace  # before its runner acted
        assert sim.nodes["n2"].host.workloads == {}, sim.describe()
        assert sim.final_problems() == []
    finally:
        sim.close()


@pytest.mark.parametrize("seed", [1, 16])  # 10 found the second too, before main's layout
def test_the_random_seeds_that_found_them(seed: int) -> None:
    failures = list(_run(seed, "oracle"))
    assert not failures, failures[0]


def test_a_removed_workload_keeps_its_capacity_counted_until_it_is_destroyed() -> None:
    """The owner's ledger lets a removed workload go when the tombstone arrives; its
    resources stay counted (the runner's ``DrainingChanged``) until the driver has
    destroyed it, so nothing is offered again before the process is gone."""
    sim = _three(seed_or(3))
    seen: list[Resources] = []
    try:
        sim.at(0.5, sim.submit, "n1", _request("w1", nodes=frozenset({"n2"})))
        sim.run_until(2.0)
        sim.runner("n2").ctx.bus.subscribe(DrainingChanged, lambda e: seen.append(e.resources))
        sim.at(2.1, sim.remove_named, "n1", "w1")
        sim.run_until(6.0)
        assert seen == [Resources(1.0, GiB, 0), NOTHING], seen
        assert sim.placement("n2").core._book.draining == NOTHING
        assert sim.nodes["n2"].host.workloads == {}
        assert sim.final_problems() == []
    finally:
        sim.close()


def _placed(sim: ShellSim, on: str, name: str) -> tuple[str, str, int]:
    (p,) = [p for p in sim.placement(on).core.placements().values() if p.name == name]
    return p.workload_id, p.owner, p.generation


def test_a_powered_off_nodes_workloads_run_again_on_survivors_at_the_next_generation() -> None:
    """After fencing, one survivor re-places the dead node's workloads: the same ids and
    specs at the next generation; one with ``restart = none`` stays, recorded lost."""
    sim = _three(seed_or(3))
    try:
        sim.at(0.5, sim.submit, "n1", _request("web", nodes=frozenset({"n2", "n3"})))
        keep = _request("batch", nodes=frozenset({"n2"}))
        sim.at(0.6, sim.submit, "n1", SubmitRequest(**{**_fields(keep), "restart": "none"}))
        sim.run_until(3.0)
        wid, owner, gen = _placed(sim, "n1", "web")
        sim.at(3.1, sim.power_off, owner)
        sim.at(3.5, sim.replace_from, "n1", owner)
        sim.run_until(8.0)
        survivor = ({"n2", "n3"} - {owner}).pop()
        for name in sim.live():
            assert _placed(sim, name, "web") == (wid, survivor, gen + 1), sim.describe()
        assert sim.runner(survivor).state_of(wid, gen + 1)[0] == "running", sim.describe()
        if owner == "n2":  # batch ran there too; restart = none: not moved
            assert _placed(sim, "n1", "batch")[1:] == ("n2", 1)
        sim.at(8.0, sim.start, owner)  # powered back on: a fresh start, its copies gone
        sim.run_until(12.0)
        assert sim.final_problems() == []
    finally:
        sim.close()


def _fields(r: SubmitRequest) -> dict[str, object]:
    return {f: getattr(r, f) for f in r.__struct_fields__}


def test_a_blade_cut_off_from_a_quorum_stops_its_workloads_and_resumes_them() -> None:
    """Self-fence (``fencing.self_fence``): its BMC unreachable, the majority can't power
    it off; the blade itself stops what it runs once cut off for self_fence_after_s, and
    starts it again when it is back with a quorum and the workload is still its own."""
    cfg = config.sim().override(
        {
            "auction.sync_interval_s": 1.0,
            "fencing.self_fence": True,
            "fencing.self_fence_after_s": 3,
        }
    )
    sim = ShellSim(
        seed_or(5),
        {f"n{i}": (4.0, 8 * GiB, 100 * GiB) for i in (1, 2, 3)},
        cfg,
        membership="lagged",
        fencing=True,
    )
    try:
        for name in sim.nodes:
            sim.at(0.0, sim.start, name)
        sim.at(0.5, sim.submit, "n1", _request("web", nodes=frozenset({"n3"})))
        sim.systems["n3"].mode = "unreachable"
        sim.at(3.0, sim.partition, ["n1", "n2"], ["n3"])
        sim.run_until(3.0)
        (wid,) = list(sim.nodes["n3"].host.workloads)
        running = WorkloadState.RUNNING
        assert sim.nodes["n3"].host.workloads[wid].state is running, sim.describe()
        sim.run_until(5.0)  # cut off, not yet for 3 s: it runs on
        assert sim.nodes["n3"].host.workloads[wid].state is running, sim.describe()
        sim.run_until(12.0)  # views lost (1-4 s), then 3 s: stopped
        assert sim.nodes["n3"].host.workloads[wid].state is not running, sim.describe()
        assert sim.power_offs == []  # its BMC never answered: nobody powered it off
        sim.at(12.0, sim.heal)
        sim.run_until(20.0)
        assert sim.nodes["n3"].host.workloads[wid].state is running, sim.describe()
        assert sim.final_problems() == []
    finally:
        sim.close()
