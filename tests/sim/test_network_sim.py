"""Networks on the real shells (``meshd network create|rm``): the simulator of
:mod:`tests.sim.shells` with its fake mesh port, lossy network and crashes.

Random schedules create and remove networks on random nodes while nodes crash and
restart, partitions form and heal, links are cut and datagrams are lost or duplicated.
After the faults end and the mesh settles, every live node holds the same record for
every network name, and that record is the last-writer-wins merge of everything any
node accepted: nothing an operator was told succeeded is lost, nothing refused appears.
"""

from __future__ import annotations

import os
import random

import pytest

from meshd import config
from meshd.core.auction.model import GiB
from meshd.core.network import Network, NetworkTable
from tests.sim.harness import ENV_SEED, seed_or
from tests.sim.network import LinkModel
from tests.sim.shells import ShellSim

SCHEDULES = 30  # random schedules in CI
FAULT_END = 6.0
NAMES = ["lan", "dmz", "storage", "v6"]
SUBNETS = ["10.40.0.0/24", "10.40.0.0/16", "10.41.0.0/24", "10.42.0.0/24", "fd00:40::/64"]


def _sim(seed: int, n: int, link: LinkModel | None = None) -> ShellSim:
    cfg = config.sim().override({"auction.sync_interval_s": 1.0})
    caps = {f"n{i}": (8.0, 16 * GiB, 100 * GiB) for i in range(1, n + 1)}
    sim = ShellSim(seed, caps, cfg, link or LinkModel())
    for name in sim.nodes:
        sim.at(0.0, sim.start, name)
    return sim


def _view(sim: ShellSim, node: str) -> dict[str, Network]:
    return {r.name: r for r in sim.placement(node).networks.table.records()}


def _expected(sim: ShellSim) -> dict[str, Network]:
    t = NetworkTable()
    for r in sim.network_records:
        t.merge(r, b"")
    return {r.name: r for r in t.records()}


def _problems(sim: ShellSim) -> list[str]:
    want = _expected(sim)
    out = []
    for node in sim.live():
        got = _view(sim, node)
        if got != want:
            out.append(f"{node} holds {sorted(got.values(), key=str)} not {want}")
    return out


def test_a_network_created_during_a_partition_reaches_the_other_side_and_a_crashed_node() -> None:
    sim = _sim(seed_or(3), 3)
    try:
        sim.at(0.5, sim.crash, "n3")
        sim.at(0.6, sim.partition, ["n1"], ["n2", "n3"])
        sim.at(1.0, sim.network, "n1", "lan", "10.40.0.0/24")
        sim.at(1.5, sim.network, "n2", "dmz", "10.50.0.0/24")
        sim.at(4.0, sim.heal)
        sim.at(5.0, sim.start, "n3")
        sim.at(12.0, sim.network, "n3", "lan", None)
        sim.run_until(20.0)
        assert len(sim.network_records) == 3, sim.trace
        for node in sim.live():
            assert [n.name for n in sim.placement(node).networks.networks()] == ["dmz"], node
        assert not _problems(sim)
    finally:
        sim.close()


def random_networks(seed: int) -> tuple[ShellSim, list[str]]:
    rng = random.Random(seed)
    n = rng.randint(3, 5)
    names = [f"n{i}" for i in range(1, n + 1)]
    link = LinkModel(loss=rng.choice([0.0, 0.05, 0.2]), duplicate=rng.choice([0.0, 0.05]))
    sim = _sim(seed, n, link)
    for _ in range(rng.randint(3, 10)):
        subnet = None if rng.random() < 0.35 else rng.choice(SUBNETS)
        sim.at(
            rng.uniform(0.1, FAULT_END), sim.network, rng.choice(names), rng.choice(NAMES), subnet
        )
    for _ in range(rng.randint(0, 4)):
        t = rng.uniform(0.0, FAULT_END - 1.0)
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
    sim.run_until(FAULT_END + 15.0)
    return sim, sim.final_problems() + _problems(sim)


def _seeds() -> list[int]:
    env = os.environ.get(ENV_SEED)
    return [int(env)] if env else list(range(SCHEDULES))


@pytest.mark.parametrize("seed", _seeds())
def test_networks_converge_under_random_faults(seed: int) -> None:
    sim, problems = random_networks(seed)
    try:
        assert not problems, (
            f"{sim.describe()}:\n" + "\n".join(problems[:12]) + "\n" + "\n".join(sim.trace[-40:])
        )
    finally:
        sim.close()
