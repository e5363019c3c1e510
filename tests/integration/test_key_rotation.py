"""Removal locks a node out of every layer; a member's flood can't silence another.

With real daemons on 127.0.0.1 (``local`` preset), and an attacker in this process
holding what a removed blade still holds (its node key, its certificate and the mesh
key it enrolled with):

* before the removal, the attacker's DHT client is answered (the control: the test
  can tell a working attack from a broken one);
* ``meshd node remove`` rotates the mesh key: every remaining member reports the new
  epoch within seconds, and after the grace period the removed node's key opens
  nothing and reaches nothing (its DHT requests go unanswered, on every member);
* a member flooding another with datagrams stamped just inside the allowed clock skew
  (which used to push the receiver's one replay floor past the present, so it dropped
  every genuine datagram and was declared dead) raises only its own floor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from meshd import config
from meshd.adapters.dht import MeshDHT
from meshd.adapters.dht.record import StaticDirectory
from meshd.adapters.transport import Addr, Channel, DatagramMux
from meshd.core.keyring import KeyRing, MeshKey
from meshd.core.replay import ReplayGuard
from meshd.identity import files
from meshd.metrics import Registry
from tests.integration.daemon import Daemon, Mesh, wait_for
from tests.integration.test_mesh import all_see, states

GRACE_S = 1.0
SETTLE_S = 20.0


def _configure(nodes: list[Daemon], extra: str) -> None:
    for d in nodes:
        with (d.data_dir / "meshd.toml").open("a") as f:
            f.write(extra)


@pytest.fixture
def four(mesh_factory: Mesh) -> Iterator[list[Daemon]]:
    alpha = mesh_factory.found("alpha")  # its defaults: it rotates, the others receive
    others = mesh_factory.join_many(["beta", "gamma", "delta"], via=alpha, start=False)
    _configure(others, f"\n[security]\nkey_grace_s = {GRACE_S}\nreplay_cache_size = 512\n")
    mesh_factory.start_all(others)
    nodes = [alpha, *others]
    wait_for("all four alive", lambda: all_see(nodes, {d.name: "alive" for d in nodes}), SETTLE_S)
    yield nodes


def _addr(d: Daemon) -> Addr:
    host, port = d.address.rsplit(":", 1)
    return (host, int(port))


async def _dht_answers(stolen: files.NodeIdentity, seeds: list[Addr]) -> int:
    """How many of ``seeds`` answer a DHT client holding ``stolen``'s keys."""
    cfg = config.local()
    keys = KeyRing(cfg.security.key_grace_s)
    keys.add(MeshKey(0, stolen.mesh_secret), time.time())
    mux = DatagramMux(keys, ReplayGuard(30, 1024), Registry())
    await mux.bind("127.0.0.1", 0)
    directory = StaticDirectory()
    directory.add(stolen.name, stolen.key.public_key())
    dht = MeshDHT(
        cfg.dht, stolen.node_id, stolen.key, stolen.name, directory, mux, time.time, Registry()
    )
    await dht.start()
    try:
        answered = 0
        for seed in seeds:
            ok, _ = await dht.protocol.ping(seed, dht.node.id)
            answered += bool(ok)
        return answered
    finally:
        dht.stop()
        mux.close()


def test_a_removed_node_is_locked_out_of_every_layer(four: list[Daemon]) -> None:
    alpha, beta, gamma, delta = four
    stolen = files.load(delta.data_dir, time.time())
    members = [alpha, beta, gamma]
    assert asyncio.run(_dht_answers(stolen, [_addr(d) for d in members])) == 3  # control
    assert all(d.status()["key_epoch"] == 0 for d in four)

    removed_at = time.monotonic()
    out = alpha.api("DELETE", "/v1/roster/delta")
    assert out["key_epoch"] == 1
    wait_for(
        "every member to hold the new key",
        lambda: all(d.status()["key_epoch"] == 1 for d in members),
        10.0,
    )
    took = time.monotonic() - removed_at
    assert delta.status()["key_epoch"] == 0  # the removed node never got it
    time.sleep(GRACE_S + 0.5)
    # The old key opens nothing new and reaches nothing: not the DHT (beta and gamma
    # retire the old key after GRACE_S; alpha keeps the default grace)...
    assert asyncio.run(_dht_answers(stolen, [_addr(beta), _addr(gamma)])) == 0
    # ...nor membership: delta is out of everyone's view, and the rest see each other.
    wait_for(
        "delta out of every member's view",
        lambda: all(states(d).get("delta") in {"dead", "left"} for d in members),
        SETTLE_S,
    )
    assert all_see(members, {d.name: "alive" for d in members})
    print(f"key rotation reached every member in {took:.2f}s")


async def _flood(key: bytes, target: Addr, count: int, ahead_s: float) -> None:
    keys = KeyRing(15.0)
    keys.add(MeshKey(0, key), time.time())
    mux = DatagramMux(keys, ReplayGuard(30, 16), Registry(), clock=lambda: time.time() + ahead_s)
    await mux.bind("127.0.0.1", 0)
    try:
        for i in range(count):
            mux.send(Channel.MEMBERSHIP, b"x", target)
            if i % 200 == 0:
                await asyncio.sleep(0.001)  # let the socket drain
    finally:
        mux.close()


def test_a_flood_stamped_in_the_future_does_not_silence_its_target(four: list[Daemon]) -> None:
    alpha, beta = four[:2]
    key = files.load(alpha.data_dir, time.time()).mesh_secret
    # 29 s ahead: inside the allowed skew (30 s), so each is accepted and remembered.
    asyncio.run(_flood(key, _addr(beta), 20_000, 29.0))
    deadline = time.monotonic() + 8.0
    while time.monotonic() < deadline:  # beta keeps hearing everyone, everyone hears beta
        everyone = {d.name: "alive" for d in four}
        assert all_see(four, everyone), {d.name: states(d) for d in four}
        time.sleep(0.5)
