"""The private DHT on real sockets: 20-30 nodes in one process on 127.0.0.1 (port 0).

Each node has its own sealed ``DatagramMux`` (its own replay memory) and its own
metrics registry, as a daemon would. Proves what the rest of meshd relies on: put/get
from anywhere, multi-writer keys, delete, expiry, refusal of forged records, gets that
survive 20 % of nodes stopping, and that a node with another mesh secret can neither
join, read nor write.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import random
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import umsgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kademlia.node import Node

from meshd import config
from meshd.adapters.dht import DhtError, MeshDHT, Record, StaticDirectory
from meshd.adapters.dht import record as rec
from meshd.adapters.dht.crawling import parse_contacts
from meshd.adapters.transport import Channel, DatagramMux
from meshd.config import Config
from meshd.core.keyring import KeyRing, MeshKey
from meshd.core.replay import ReplayGuard
from meshd.identity import pki
from meshd.metrics import Registry

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Member:
    name: str
    key: Ed25519PrivateKey
    dht: MeshDHT
    mux: DatagramMux
    registry: Registry
    port: int

    @property
    def addr(self) -> tuple[str, int]:
        return (HOST, self.port)

    @property
    def node_id(self) -> str:
        return self.dht.node_id

    @property
    def node(self) -> Node:
        return Node(bytes.fromhex(self.node_id), HOST, self.port)

    def metric(self, name: str, **labels: str) -> float:
        counters = {
            "dropped": self.dht.metrics.dropped,
            "refused": self.dht.metrics.refused,
            "timeouts": self.dht.metrics.rpc_timeouts,
            "mux_dropped": self.mux.dropped,
        }
        return counters[name].value(**labels)


@dataclass
class DhtMesh:
    """Many DHT nodes in this process; every one is stopped by :meth:`close`."""

    cfg: Config = field(default_factory=config.local)
    secret: bytes = b"\x01" * 32
    directory: StaticDirectory = field(default_factory=StaticDirectory)
    members: list[Member] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    _all: list[Member] = field(default_factory=list)

    async def add(
        self,
        name: str | None = None,
        *,
        secret: bytes | None = None,
        directory: StaticDirectory | None = None,
        cfg: Config | None = None,
        port: int = 0,
        key: Ed25519PrivateKey | None = None,
        join: bool = True,
    ) -> Member:
        name = name or f"n{len(self._all)}"
        key = key or pki.new_key()
        directory = self.directory if directory is None else directory
        directory.add(name, key.public_key())
        cfg = cfg or self.cfg
        registry = Registry()
        guard = ReplayGuard(cfg.security.max_clock_skew_s, cfg.security.replay_cache_size)
        keys = KeyRing(cfg.security.key_grace_s)
        keys.add(MeshKey(0, secret or self.secret), time.time())
        mux = DatagramMux(keys, guard, registry)
        bound = await mux.bind(HOST, port)
        node_id = pki.node_id_of(key.public_key())
        dht = MeshDHT(cfg.dht, node_id, key, name, directory, mux, time.time, registry)
        await dht.start()
        member = Member(name, key, dht, mux, registry, bound)
        self._all.append(member)
        if join and self.members:
            seeds = self.rng.sample(self.members, min(3, len(self.members)))
            assert await dht.bootstrap([m.addr for m in seeds]) > 0
        if secret is None:
            self.members.append(member)
        return member

    async def grow(self, n: int) -> DhtMesh:
        for _ in range(n):
            await self.add()
        return self

    def stop(self, member: Member) -> None:
        """Abruptly: the socket closes, nothing is said to anyone."""
        member.mux.close()
        member.dht.stop()
        if member in self.members:
            self.members.remove(member)

    def pick(self, *exclude: Member) -> Member:
        return self.rng.choice([m for m in self.members if m not in exclude])

    def close(self) -> None:
        for m in self._all:
            m.mux.close()
            m.dht.stop()


@pytest.fixture
async def mesh() -> AsyncIterator[DhtMesh]:
    m = DhtMesh()
    try:
        yield m
    finally:
        m.close()
        await asyncio.sleep(0)


def forge(
    signer: Ed25519PrivateKey,
    author: str,
    author_id: str,
    *,
    key: str = "svc",
    value: bytes = b"evil",
    expires_at: float | None = None,
) -> Record:
    return rec.sign(
        signer,
        key=key,
        author=author,
        author_id=author_id,
        version=int(time.time() * 1000) + 10_000,
        expires_at=time.time() + 60 if expires_at is None else expires_at,
        value=value,
    )


# -- put and get ------------------------------------------------------------------------


async def test_put_get_from_random_nodes(mesh: DhtMesh) -> None:
    await mesh.grow(25)
    for i in range(20):
        stored = await mesh.pick().dht.put(f"key-{i}", f"value-{i}".encode())
        assert stored == mesh.cfg.dht.ksize  # the k closest of 24 others took it
    for _ in range(60):
        i = mesh.rng.randrange(20)
        [got] = await mesh.pick().dht.get(f"key-{i}")
        assert got.value == f"value-{i}".encode()
    assert await mesh.pick().dht.get("never-put") == []
    total = sum(len(m.dht.storage) for m in mesh.members)
    assert total >= 20 * (mesh.cfg.dht.ksize + 1)  # k holders and the author, at least


async def test_multi_writer_one_record_per_author(mesh: DhtMesh) -> None:
    await mesh.grow(20)
    a, b, c = mesh.members[2], mesh.members[9], mesh.members[15]
    for m in (a, b, c):
        assert await m.dht.put("svc/blog", f"{m.name}:80".encode()) > 0
    reader = mesh.pick(a, b, c)
    got = await reader.dht.get("svc/blog")
    assert {(r.author, r.value) for r in got} == {
        (m.name, f"{m.name}:80".encode()) for m in (a, b, c)
    }
    old_a = next(r for r in got if r.author == a.name)

    assert await a.dht.put("svc/blog", b"moved:81") > 0
    got = await mesh.pick(a).dht.get("svc/blog")
    assert len(got) == 3
    new_a = next(r for r in got if r.author == a.name)
    assert new_a.value == b"moved:81" and new_a.version > old_a.version
    assert {r.value for r in got if r.author != a.name} == {
        b"%s:80" % m.name.encode() for m in (b, c)
    }


async def test_delete_leaves_other_authors(mesh: DhtMesh) -> None:
    await mesh.grow(20)
    a, b = mesh.members[3], mesh.members[11]
    await a.dht.put("svc/db", b"a")
    await b.dht.put("svc/db", b"b")
    assert await a.dht.delete("svc/db") > 0
    for reader in (a, b, mesh.pick(a, b)):
        assert [r.author for r in await reader.dht.get("svc/db")] == [b.name]
    # The tombstone is one version: a new put brings the author back.
    await a.dht.put("svc/db", b"a2")
    got = await mesh.pick(a, b).dht.get("svc/db")
    assert {(r.author, r.value) for r in got} == {(a.name, b"a2"), (b.name, b"b")}


async def test_records_expire_when_their_author_is_gone(mesh: DhtMesh) -> None:
    await mesh.grow(20)
    author = mesh.members[5]
    assert await author.dht.put("short", b"lived", ttl_s=1.0) > 0
    reader = mesh.pick(author)
    assert len(await reader.dht.get("short")) == 1
    mesh.stop(author)
    await asyncio.sleep(1.3)
    assert await reader.dht.get("short") == []
    # Holders purged it and none republished it (kademlia's holders republish forever).
    for m in mesh.members:
        m.dht.storage.purge(time.time())
        assert m.dht.storage.get(rec.key_digest("short"), time.time()) == []


async def test_live_author_republishes_before_expiry(mesh: DhtMesh) -> None:
    await mesh.grow(20)
    author = mesh.members[4]
    await author.dht.put("heartbeat", b"up", ttl_s=1.0)
    [first] = await mesh.pick(author).dht.get("heartbeat")
    await asyncio.sleep(2.2)  # > 2 TTLs: only republishing keeps it
    [later] = await mesh.pick(author).dht.get("heartbeat")
    assert later.value == b"up" and later.version > first.version
    assert author.dht.metrics.puts.value(op="republish", result="stored") >= 3


# -- refusing what members did not say --------------------------------------------------


async def test_forged_records_are_refused_and_never_returned(mesh: DhtMesh) -> None:
    await mesh.grow(20)
    alice, target = mesh.members[1], mesh.members[7]
    outsider_key = pki.new_key()
    outsider_id = pki.node_id_of(outsider_key.public_key())
    revoked = await mesh.add("revoked")
    legit = forge(alice.key, alice.name, alice.node_id, value=b"fine")
    now = time.time()
    cases = {
        "unknown_author": forge(outsider_key, "outsider", outsider_id),
        "revoked": forge(revoked.key, revoked.name, revoked.node_id),
        "tampered": Record(**{**legit.__dict__, "value": b"evil"}),
        "impersonated": forge(outsider_key, alice.name, alice.node_id),
        "renamed": forge(alice.key, "bob", alice.node_id),
        "expired": forge(alice.key, alice.name, alice.node_id, expires_at=now - 1),
        "oversized": forge(alice.key, alice.name, alice.node_id, value=b"x" * 5000),
    }
    mesh.directory.revoke(revoked.node_id)
    for what, record in cases.items():
        assert not await alice.dht.protocol.store_record(target.node, record), what
    # A valid record sent under another key's digest is refused too.
    ok, answer = await alice.dht.protocol.call_store(
        target.node, rec.key_digest("other"), rec.encode(legit)
    )
    assert ok and answer is False
    reasons = (
        "unknown_author",
        "signature",
        "author_mismatch",
        "expired",
        "too_large",
        "wrong_key",
    )
    assert all(target.metric("refused", reason=r) >= 1 for r in reasons)
    assert target.dht.storage.get(rec.key_digest("svc"), time.time()) == []
    # Stored on every other holder by hand, none of them comes back from get either.
    for m in mesh.members:
        for record in cases.values():
            m.dht.storage.put(record.digest, record, time.time() - 3600)
    got = await mesh.pick().dht.get("svc")
    assert got == []


async def test_revoking_an_author_hides_its_records(mesh: DhtMesh) -> None:
    await mesh.grow(20)
    author = mesh.members[6]
    await author.dht.put("svc/x", b"1")
    assert await mesh.pick(author).dht.get("svc/x")
    mesh.directory.revoke(author.node_id)
    assert await mesh.pick(author).dht.get("svc/x") == []


async def test_malformed_requests_are_dropped_and_counted(mesh: DhtMesh) -> None:
    await mesh.grow(5)
    victim = mesh.members[2]
    attacker = await mesh.add("insider", join=False)  # a member sending junk

    def send(payload: bytes) -> None:
        attacker.mux.send(Channel.DHT, payload, victim.addr)

    mid = bytes(20)
    nid = bytes.fromhex(attacker.node_id)
    send(b"\x00")  # short
    send(b"\x00" + mid + b"\xc1")  # reserved msgpack code
    send(b"\x00" + mid + b"\x91" * 50_000)  # nesting deep enough to overflow the stack
    send(b"\x07" + mid + umsgpack.packb(["ping", [nid]]))  # unknown kind
    send(b"\x00" + mid + umsgpack.packb({"ping": 1}))  # not [method, args]
    send(b"\x00" + mid + umsgpack.packb(["stun", []]))  # kademlia has rpc_stun; not ours
    send(b"\x00" + mid + umsgpack.packb(["store_everything", [nid]]))
    send(b"\x00" + mid + umsgpack.packb(["ping", [nid, nid]]))  # wrong arity
    send(b"\x00" + mid + umsgpack.packb(["find_node", [nid, "not bytes"]]))
    send(b"\x00" + mid + umsgpack.packb(["store", [nid, nid, 42]]))
    send(b"\x01" + mid + umsgpack.packb("unsolicited"))
    await asyncio.sleep(0.2)
    for reason, n in {
        "short": 1,
        "undecodable": 2,
        "unknown_kind": 1,
        "malformed": 1,
        "unknown_method": 2,
        "bad_arguments": 3,
        "unexpected_response": 1,
    }.items():
        assert victim.metric("dropped", reason=reason) == n, reason
    # ... and the victim still works.
    assert await victim.dht.put("still", b"alive") > 0
    assert (await mesh.pick(victim, attacker).dht.get("still"))[0].value == b"alive"


# -- failures ---------------------------------------------------------------------------


async def test_gets_survive_a_fifth_of_the_nodes_stopping(mesh: DhtMesh) -> None:
    await mesh.grow(30)
    for i in range(20):
        await mesh.pick().dht.put(f"k{i}", f"v{i}".encode())
    for victim in mesh.rng.sample(mesh.members, 6):
        mesh.stop(victim)
    started = time.monotonic()
    for _ in range(40):
        i = mesh.rng.randrange(20)
        got = await mesh.pick().dht.get(f"k{i}")
        assert [r.value for r in got] == [f"v{i}".encode()]
    # 40 gets; dead peers cost a stall, never a whole RPC timeout per hop.
    assert time.monotonic() - started < 40 * mesh.cfg.dht.rpc_timeout_s


async def test_put_with_every_neighbour_dead_stores_locally(mesh: DhtMesh) -> None:
    await mesh.grow(3)
    lone = mesh.members[0]
    for m in mesh.members[1:]:
        mesh.stop(m)
    assert await lone.dht.put("k", b"v") == 0  # kademlia raised ValueError (defect 2)
    assert [r.value for r in await lone.dht.get("k")] == [b"v"]


# -- outsiders --------------------------------------------------------------------------


async def test_another_mesh_secret_can_neither_join_read_nor_write(mesh: DhtMesh) -> None:
    await mesh.grow(8)
    await mesh.members[0].dht.put("secret/key", b"members only")
    quick = mesh.cfg.override({"dht.bootstrap_initial_s": 0.05, "dht.bootstrap_max_s": 0.1})
    outsider = await mesh.add(
        "outsider", secret=b"\x02" * 32, directory=StaticDirectory(), cfg=quick, join=False
    )
    seeds = [m.addr for m in mesh.members[:3]]
    assert await outsider.dht.bootstrap(seeds) == 0
    # Sealed with a key no member holds: dropped unopened (and never fetched: its sender
    # holds no certificate the mTLS API would accept).
    assert sum(m.metric("mux_dropped", reason="unknown_key") for m in mesh.members[:3]) >= 3
    # Even knowing every address, it reads nothing and writes nothing.
    for m in mesh.members:
        outsider.dht.add_contact(m.node_id, m.addr)
    assert await outsider.dht.get("secret/key") == []
    assert await outsider.dht.put("secret/key", b"outsider was here") == 0
    got = await mesh.pick().dht.get("secret/key")
    assert [r.value for r in got] == [b"members only"]
    assert all(m.metric("refused", reason="unknown_author") == 0 for m in mesh.members)
    assert all(len(m.dht.protocol.router.contacts()) <= len(mesh.members) for m in mesh.members)
    assert not any(
        c.id == bytes.fromhex(outsider.node_id)
        for m in mesh.members
        for c in m.dht.protocol.router.contacts()
    )


# -- bootstrap and state ----------------------------------------------------------------


async def test_bootstrap_forever_waits_for_a_late_seed(
    mesh: DhtMesh, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    joiner = await mesh.add("joiner", join=False)
    task = joiner.dht.bootstrap_forever([(HOST, port)])
    await asyncio.sleep(1.2)
    assert not task.done()
    seed = await mesh.add("seed", port=port, join=False)
    assert await asyncio.wait_for(task, 5.0) >= 1
    assert any(c.port == seed.port for c in joiner.dht.protocol.router.contacts())
    assert any(r.levelname == "WARNING" and str(port) in r.getMessage() for r in caplog.records)


async def test_state_is_json_and_restores_own_records(mesh: DhtMesh, tmp_path: Path) -> None:
    await mesh.grow(10)
    author = mesh.members[3]
    await author.dht.put("svc/a", b"1")
    await author.dht.put("svc/b", b"2")
    await author.dht.delete("svc/b")
    path = tmp_path / "dht.json"
    author.dht.save_state(path)
    doc = json.loads(path.read_text())
    assert {o["ttl_s"] for o in doc["own"]} == {mesh.cfg.dht.record_ttl_s}
    assert len(doc["contacts"]) == len(author.dht.protocol.router.contacts())
    own_a = author.dht.storage.own("svc/a")
    assert own_a is not None
    mesh.stop(author)

    again = await mesh.add(author.name, key=author.key, join=False)  # a restart
    seeds = again.dht.load_state(path)
    assert len(seeds) == len(doc["contacts"])
    assert await again.dht.bootstrap(seeds) > 0
    own = again.dht.storage.own("svc/a")
    assert own is not None and own.record.value == b"1"
    # Versions keep growing across the restart, deletes included.
    assert again.dht.storage.next_version("svc/b", 0.0) > doc["versions"]["svc/b"]
    assert again.dht.storage.next_version("svc/a", 0.0) > own_a.record.version


async def test_state_refuses_pickle_and_other_nodes_files(mesh: DhtMesh, tmp_path: Path) -> None:
    a = await mesh.add("a", join=False)
    b = await mesh.add("b", join=False)
    pickled = tmp_path / "state.pickle"
    pickled.write_bytes(pickle.dumps({"ksize": 20, "alpha": 3, "id": b"x", "neighbors": []}))
    with pytest.raises(DhtError):
        a.dht.load_state(pickled)
    a.dht.save_state(tmp_path / "a.json")
    with pytest.raises(DhtError, match="another node"):
        b.dht.load_state(tmp_path / "a.json")
    assert a.dht.load_state(tmp_path / "missing.json") == []
    with pytest.raises(DhtError, match="no socket"):
        await a.dht.listen(0)


async def test_storage_bounds_refuse_new_keys(mesh: DhtMesh) -> None:
    small = mesh.cfg.override({"dht.max_records": 3})
    holder = await mesh.add("holder", cfg=small, join=False)
    writer = await mesh.add("writer", join=False)
    writer.dht.add_contact(holder.node_id, holder.addr)
    assert [await writer.dht.put(f"k{i}", b"v") for i in range(5)] == [1, 1, 1, 0, 0]
    assert len(holder.dht.storage) == 3
    assert holder.metric("refused", reason="full") == 2
    assert await writer.dht.put("k0", b"newer") == 1  # replacing needs no room


async def test_find_value_reply_fits_rpcudp_limit_newest_first(mesh: DhtMesh) -> None:
    await mesh.grow(3)
    holder = mesh.members[0]
    writers = [await mesh.add(f"w{i}", join=False) for i in range(4)]
    for w in writers:
        w.dht.add_contact(holder.node_id, holder.addr)
        await w.dht.put("big", bytes([len(w.name)]) * 3000)
    records = holder.dht.storage.get(rec.key_digest("big"), time.time())
    assert len(records) == 4
    reply = holder.dht.protocol.rpc_find_value(
        (HOST, 1), bytes.fromhex(writers[0].node_id), rec.key_digest("big")
    )
    blobs = reply["records"]
    assert sum(map(len, blobs)) <= 8000 and len(umsgpack.packb(reply)) < 8192
    assert [rec.decode(b) for b in blobs] == records[: len(blobs)]  # the newest
    assert len(blobs) == 2


async def test_a_claimed_id_does_not_repoint_a_contact(mesh: DhtMesh) -> None:
    await mesh.grow(4)
    victim, honest = mesh.members[0], mesh.members[1]
    liar = await mesh.add("liar", join=False)
    honest_id = bytes.fromhex(honest.node_id)

    def address_of(node_id: bytes) -> tuple[str, int] | None:
        for c in victim.dht.protocol.router.contacts():
            if c.id == node_id:
                return (c.ip, c.port)
        return None

    assert address_of(honest_id) == honest.addr
    answered, _ = await liar.dht.protocol.ping(victim.addr, honest_id)  # "I am honest"
    assert answered
    assert address_of(honest_id) == honest.addr
    # The membership layer's word does move a contact.
    victim.dht.add_contact(honest.node_id, liar.addr)
    assert address_of(honest_id) == liar.addr


def test_contacts_from_answers_are_checked() -> None:
    good = [b"\x01" * 20, "127.0.0.1", 7420]
    answer = [
        good,
        [b"\x02" * 20, "example.com", 7420],  # a host name would block the loop
        [b"\x03" * 19, "127.0.0.1", 7420],
        [b"\x04" * 20, "127.0.0.1", True],
        [b"\x05" * 20, "127.0.0.1", 0],
        [b"\x06" * 20, "::1", 7420],
        "junk",
        [b"\x07" * 20, "127.0.0.1"],
    ]
    assert [n.id[0] for n in parse_contacts(answer, 100)] == [1, 6]
    assert parse_contacts({"records": []}, 100) == []
    assert len(parse_contacts([good] * 50, 40)) == 40


async def test_put_refuses_bad_input_and_metrics_are_exported(mesh: DhtMesh) -> None:
    await mesh.grow(3)
    node = mesh.members[0]
    with pytest.raises(DhtError, match=r"dht\.max_value_bytes"):
        await node.dht.put("k", b"x" * (mesh.cfg.dht.max_value_bytes + 1))
    with pytest.raises(DhtError, match="ttl"):
        await node.dht.put("k", b"x", ttl_s=0)
    with pytest.raises(DhtError):
        await node.dht.put("k" * 600, b"x")
    with pytest.raises(DhtError):
        await node.dht.get("\ud800")
    assert await node.dht.put("k", b"x") == 2
    assert await node.dht.get("k")
    text = node.registry.render()
    for line in (
        'meshd_dht_puts_total{op="put",result="stored"} 1',
        'meshd_dht_gets_total{result="found"} 1',
        "meshd_dht_records 1",
        "meshd_dht_rpc_timeouts_total",
        "meshd_dht_dropped_total",
        "meshd_dht_get_seconds_count",
    ):
        assert line in text, line


def test_node_id_must_be_the_signing_keys() -> None:
    cfg = config.local()
    key, other = pki.new_key(), pki.new_key()
    keys = KeyRing(15.0)
    keys.add(MeshKey(0, b"\x01" * 32), time.time())
    mux = DatagramMux(keys, ReplayGuard(30, 16))
    for node_id in ("not hex", pki.node_id_of(other.public_key()), "ab" * 19):
        with pytest.raises(DhtError):
            MeshDHT(cfg.dht, node_id, key, "n", StaticDirectory(), mux, time.time, Registry())
    big = cfg.dht.replace(max_value_bytes=8000)
    with pytest.raises(DhtError, match="8 KiB"):
        MeshDHT(
            big,
            pki.node_id_of(key.public_key()),
            key,
            "n",
            StaticDirectory(),
            mux,
            time.time,
            Registry(),
        )


async def test_membership_removes_and_restores_contacts(mesh: DhtMesh) -> None:
    await mesh.grow(6)
    node, gone = mesh.members[0], mesh.members[4]
    gone_id = bytes.fromhex(gone.node_id)
    node.dht.remove_contact(gone.node_id)
    assert node.dht.protocol.is_dead(gone_id)
    # Other peers still name it in their answers; it is not asked, and not re-learnt.
    assert await node.dht.get("anything") == []
    assert gone_id not in {c.id for c in node.dht.protocol.router.contacts()}
    assert node.metric("timeouts") == 0
    # It comes back when it talks to us itself, or when membership says so.
    answered, _ = await gone.dht.protocol.ping(node.addr, gone_id)
    assert answered and not node.dht.protocol.is_dead(gone_id)
    node.dht.remove_contact(gone.node_id)
    node.dht.add_contact(gone.node_id, gone.addr)
    assert gone_id in {c.id for c in node.dht.protocol.router.contacts()}
    with pytest.raises(DhtError):
        node.dht.add_contact("xyz", gone.addr)


async def test_only_current_members_are_served_and_routed(mesh: DhtMesh) -> None:
    """Holding the mesh key is not enough: a request whose sender id is not a current,
    unrevoked member goes unanswered, and such an id enters no routing table."""
    await mesh.grow(4)
    target = mesh.members[0]
    # A stranger: the mesh key, a node key the members' directory doesn't know.
    stranger = await mesh.add("stranger", directory=StaticDirectory(), join=False)
    ok, _ = await stranger.dht.protocol.ping(target.addr, stranger.dht.node.id)
    assert not ok and target.metric("dropped", reason="not_a_member") >= 1
    # A member that is removed: answered before, refused (and forgotten) after.
    removed = mesh.members[1]
    ok, _ = await removed.dht.protocol.ping(target.addr, removed.dht.node.id)
    assert ok
    mesh.directory.revoke(removed.node_id)
    ok, _ = await removed.dht.protocol.ping(target.addr, removed.dht.node.id)
    assert not ok
    # Neither is named in a FIND_NODE answer, nor kept as a contact.
    near = target.dht.protocol.rpc_find_node(
        ("127.0.0.1", 1), mesh.members[2].dht.node.id, b"\0" * 20
    )
    named = {bytes(n[0]) for n in near}
    assert removed.dht.node.id not in named and stranger.dht.node.id not in named
