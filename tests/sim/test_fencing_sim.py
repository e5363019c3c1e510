"""Fencing in the simulator: scripted scenarios and random fault schedules (tests/sim/fencing.py).

Every failure message carries the seed; ``MESHD_SIM_SEED=<seed>`` replays exactly that
schedule (and only it). ``MESHD_SIM_FENCING_SEEDS=<count>`` runs more random schedules
(the default keeps the file well under a minute on one core).
"""

from __future__ import annotations

import os
import random

import pytest

from meshd.config import FencingConfig
from meshd.core.fencing import Fencer
from tests.sim.fencing import FencingSim, Window
from tests.sim.network import LinkModel

ENV_SEED = "MESHD_SIM_SEED"
ENV_COUNT = "MESHD_SIM_FENCING_SEEDS"
SCHEDULES = 1000
CHUNK = 100
# Short leases so takeovers and expiries happen inside a 40 s run.
CFG = FencingConfig(check_s=0.2, lease_s=4.0, takeover_s=1.0, resend_s=0.05, drift=0.01)


def _report(sim: FencingSim) -> str:
    return f"{sim.describe()}:\n" + "\n".join(sim.problems[:12])


# -- scripted scenarios ------------------------------------------------------------------


def test_a_crashed_node_is_fenced_once_and_everyone_learns_it() -> None:
    sim = FencingSim(1, 5, CFG)
    sim.at(1.0, sim.crash, "n03")
    sim.run_until(10.0)
    assert not sim.problems, _report(sim)
    assert not sim.bmc["n03"].on
    (key,) = sim.off_at
    assert key[0] == "n03"
    assert sorted(sim.fenced_at[key]) == ["n01", "n02", "n04", "n05"]
    assert sim.off_at[key] - sim.dead_at[key] < 1.0  # a LAN round, not a timeout


@pytest.mark.parametrize(
    "groups",
    [
        [["n01", "n02"], ["n03", "n04", "n05"]],
        [["n01"], ["n02", "n03", "n04", "n05"]],
        [["n01"], ["n02"], ["n03", "n04", "n05"]],
        [["n05"], ["n01", "n02", "n03", "n04"]],
    ],
    ids=["2|3", "1|4", "1|1|3", "4|1"],
)
def test_a_minority_never_powers_off_even_when_it_reaches_every_bmc(
    groups: list[list[str]],
) -> None:
    sim = FencingSim(2, 5, CFG)
    coordinators: list[str] = []
    sim.on_power_off.append(lambda x, w: coordinators.append(x))
    sim.at(1.0, sim.net.partition, *groups)
    sim.run_until(20.0)
    assert not sim.problems, _report(sim)
    majority_side = set(groups[-1]) if len(groups[-1]) >= 3 else set(groups[0])
    assert coordinators and set(coordinators) <= majority_side
    for x in sim.names:  # the majority fenced every node cut off from it
        assert sim.bmc[x].on == (x in majority_side), x


def test_a_two_two_split_fences_nobody() -> None:
    sim = FencingSim(3, 4, CFG)
    sim.at(1.0, sim.net.partition, ["n01", "n02"], ["n03", "n04"])
    sim.run_until(30.0)
    assert not sim.problems, _report(sim)
    assert sim.power_offs == 0
    assert all(b.on for b in sim.bmc.values())


def test_a_node_reachable_by_others_is_not_fenced_on_one_nodes_word() -> None:
    """One link cut: n01 declares n02 dead and gossip spreads it, but the others can
    still reach n02, check it themselves and do not vote."""
    sim = FencingSim(4, 5, CFG)
    sim.at(1.0, sim.net.cut, "n01", "n02", True)
    sim.run_until(20.0)
    assert not sim.problems, _report(sim)
    assert sim.power_offs == 0 and sim.dead_at


def test_a_refuted_death_ends_the_episode() -> None:
    sim = FencingSim(5, 3, CFG)
    sim.bmc["n03"].mode = "refuse"
    sim.at(1.0, sim.crash, "n03")
    sim.at(3.6, sim.restart, "n03")  # back before anyone could hold it dead for long
    sim.run_until(15.0)
    assert not sim.problems, _report(sim)
    core = sim.nodes["n01"].core
    assert core is not None and core.state("n03") == "alive"


def test_a_failed_fence_alarms_and_only_an_operator_confirm_replaces() -> None:
    sim = FencingSim(6, 3, CFG)
    sim.bmc["n03"].mode = "timeout"
    sim.at(1.0, sim.crash, "n03")
    sim.run_until(12.0)
    assert not sim.problems, _report(sim)
    assert sim.alarms and not sim.fenced_at
    assert not sim.confirm("n03", "n01")  # the target's own word counts for nothing
    assert sim.confirm("n02", "n03")
    sim.run_until(14.0)
    assert not sim.problems, _report(sim)
    (key,) = sim.fenced_at
    assert sorted(sim.fenced_at[key]) == ["n01", "n02"]


def test_a_coordinator_crashing_mid_fence_hands_over_without_overlap() -> None:
    sim = FencingSim(7, 5, CFG)
    sim.bmc["n05"].delay = 2.0  # a slow BMC: the coordinator dies while it waits

    def kill_first(x: str, w: Window) -> None:
        if len(sim.windows) == 1:
            sim.events.after(0.5, sim.crash, x)
            sim.events.after(1.5, sim.restart, x)

    sim.on_power_off.append(kill_first)
    sim.at(1.0, sim.crash, "n05")
    sim.run_until(20.0)
    assert not sim.problems, _report(sim)
    assert len({(w.round, w.coordinator) for w in sim.windows}) >= 2
    assert not sim.bmc["n05"].on


def _slow_cut_coordinator(sim: FencingSim) -> None:
    """The coordinator is cut off from everyone right after it decides, but keeps
    talking to the (slow) BMC: the others take over as soon as leases allow. (Their
    BMCs refuse, so the majority's fence of the cut-off coordinator leaves it running.)"""
    sim.bmc["n05"].delay = 30.0
    for x in sim.names[:-1]:
        sim.bmc[x].mode = "refuse"

    def isolate(x: str, w: Window) -> None:
        if len(sim.windows) == 1:
            sim.events.after(0.01, sim.net.partition, [x])

    sim.on_power_off.append(isolate)
    sim.at(1.0, sim.crash, "n05")
    sim.run_until(30.0)


def test_a_cut_off_slow_coordinator_and_its_successor_never_overlap() -> None:
    sim = FencingSim(8, 5, CFG)
    _slow_cut_coordinator(sim)
    assert not sim.problems, _report(sim)
    assert len(sim.windows) >= 2  # the successor did power off, after the first window


def test_the_overlap_check_catches_a_coordinator_that_outlives_its_lease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The invariant is not vacuous: a deadline beyond the lease breaks it."""
    real_init = Fencer.__init__

    def long_window(self: Fencer, *args: object, **kw: object) -> None:
        real_init(self, *args, **kw)  # type: ignore[arg-type]
        self._window = self.cfg.lease_s * 3

    monkeypatch.setattr(Fencer, "__init__", long_window)
    sim = FencingSim(8, 5, CFG)
    _slow_cut_coordinator(sim)
    assert any("overlap" in p for p in sim.problems)


def _voters_restart_after_the_decision(sim: FencingSim) -> None:
    """As above, and every voter of the first ballot restarts right after it voted."""

    def restart_voters(x: str, w: Window) -> None:
        if len(sim.windows) == 1:
            for v in sorted(sim.grants[(w.target, w.epoch, w.round, x)] - {x}):
                sim.events.after(0.02, sim.crash, v)
                sim.events.after(0.1, sim.restart, v)

    sim.on_power_off.append(restart_voters)
    _slow_cut_coordinator(sim)


def test_restarted_voters_keep_their_grants_so_windows_never_overlap() -> None:
    sim = FencingSim(10, 5, CFG)
    _voters_restart_after_the_decision(sim)
    assert not sim.problems, _report(sim)
    assert len(sim.windows) >= 2


def test_voters_that_forget_their_grants_let_two_coordinators_overlap() -> None:
    """Persist-before-send is load-bearing: without the grant records, it breaks."""
    sim = FencingSim(10, 5, CFG)
    sim.forget_grants = True
    _voters_restart_after_the_decision(sim)
    assert any("overlap" in p for p in sim.problems)


def test_a_fenced_node_powered_back_on_rejoins_and_is_not_fenced_twice() -> None:
    sim = FencingSim(9, 3, CFG)
    sim.at(1.0, sim.crash, "n02")
    sim.at(10.0, sim.power_on, "n02")
    sim.run_until(20.0)
    assert not sim.problems, _report(sim)
    assert sim.bmc["n02"].on and sim.nodes["n02"].up
    assert len(sim.off_at) == 1
    core = sim.nodes["n01"].core
    assert core is not None and core.state("n02") == "alive"


# -- random schedules --------------------------------------------------------------------


def _shapes(names: list[str], rng: random.Random) -> list[list[str]]:
    order = rng.sample(names, len(names))
    n = len(names)
    cuts = {
        3: [[1, 2]],
        4: [[2, 2], [1, 3], [1, 1, 2]],
        5: [[2, 3], [1, 4], [1, 1, 3], [1, 2, 2]],
    }[n]
    sizes = rng.choice(cuts)
    groups, i = [], 0
    for s in sizes:
        groups.append(order[i : i + s])
        i += s
    return groups


def random_run(seed: int, duration: float = 40.0) -> FencingSim:
    rng = random.Random(f"{seed}/schedule")
    n = rng.choice([3, 4, 5, 5])
    loss = rng.choice([0.0, 0.01, 0.05, 0.1])
    delay = rng.choice([(0.0002, 0.002), (0.001, 0.05), (0.01, 0.3)])
    sim = FencingSim(seed, n, CFG, LinkModel(loss=loss, delay=delay, duplicate=0.02))
    for x in sim.names:
        sim.bmc[x].mode = rng.choices(["ok", "timeout", "refuse", "wrong-state"], [7, 1, 1, 1])[0]
        sim.bmc[x].delay = rng.choice([0.0, 0.0, rng.uniform(0, 2), rng.uniform(2, 6)])
    for _ in range(rng.randint(1, 3)):
        t = rng.uniform(0.5, 15)
        kind = rng.choice(["crash", "partition", "flap", "crash"])
        if kind == "crash":
            x = rng.choice(sim.names)
            sim.at(t, sim.crash, x)
            if rng.random() < 0.5:
                sim.at(t + rng.uniform(0.5, 15), sim.restart, x)
        elif kind == "partition":
            sim.at(t, sim.net.partition, *_shapes(sim.names, rng))
            sim.at(t + rng.uniform(1, 15), sim.net.heal)
        else:
            for _ in range(rng.randint(2, 10)):
                a, b = rng.sample(sim.names, 2)
                start = t + rng.uniform(0, 10)
                sim.at(start, sim.net.cut, a, b, True)
                sim.at(start + rng.uniform(0.2, 5), sim.net.uncut, a, b, True)

    def on_power_off(x: str, w: Window) -> None:
        if rng.random() < 0.3:  # the coordinator dies mid-fence, and maybe comes back
            sim.events.after(rng.uniform(0, 1), sim.crash, x)
            if rng.random() < 0.7:
                sim.events.after(rng.uniform(1, 10), sim.restart, x)
        if rng.random() < 0.5:  # the fenced machine is switched back on later
            sim.events.after(rng.uniform(3, 15), sim.power_on, w.target)

    sim.on_power_off.append(on_power_off)

    def operator() -> None:
        for _, _, target, _, _ in sim.alarms[-3:]:
            if rng.random() < 0.5:
                sim.confirm(rng.choice(sim.names), target)
        sim.events.after(2.0, operator)

    sim.at(5.0, operator)
    sim.run_until(duration)
    return sim


def _seeds(chunk: int) -> list[int]:
    env = os.environ.get(ENV_SEED)
    if env:
        return [int(env)] if chunk == 0 else []
    return list(range(chunk * CHUNK, (chunk + 1) * CHUNK))


def _chunks() -> int:
    return max(1, int(os.environ.get(ENV_COUNT, SCHEDULES)) // CHUNK)


@pytest.mark.parametrize("chunk", range(_chunks()))
def test_random_schedules_keep_the_invariants(chunk: int) -> None:
    for seed in _seeds(chunk):
        sim = random_run(seed)
        assert not sim.problems, _report(sim)
