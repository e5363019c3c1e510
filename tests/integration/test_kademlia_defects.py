"""Regression tests for the defects of kademlia 2.2.3 / rpcudp 5.0.1 (LAB-NOTES.md).

Each defect has one scenario, run twice: against the bare ``kademlia`` package, marked
``xfail(strict=True)`` — so the suite fails the day the defect stops reproducing, and
the meshd workaround can be reconsidered — and against meshd's DHT, which must pass.
Scenarios are deterministic where the defect allows: routing tables are built by hand
(defect 1), node ids are chosen (defect 5), attributes are probed directly (defect 6).
"""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st
from kademlia.network import Server
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from kademlia.routing import KBucket, RoutingTable
from kademlia.storage import ForgetfulStorage
from kademlia.utils import digest

from meshd import config
from meshd.adapters.dht import DhtError, StaticDirectory
from meshd.adapters.dht import record as rec
from meshd.adapters.dht.crawling import MeshRoutingTable
from meshd.adapters.dht.protocol import DhtMetrics, DhtProtocol
from meshd.adapters.dht.storage import RecordStore
from meshd.identity import pki
from meshd.metrics import Registry

try:
    from tests.integration.test_dht import HOST, DhtMesh, free_port
except ImportError:  # tests/integration is not a package, so pytest put it on sys.path
    from test_dht import HOST, DhtMesh, free_port  # type: ignore[no-redef,import-not-found]

RPC_TIMEOUT = config.local().dht.rpc_timeout_s


def nid(n: int) -> bytes:
    return n.to_bytes(20, "big")


class EveryIdAMember(StaticDirectory):
    """These tests are about kademlia's defects, with synthetic node ids: every id is a
    current member (the DHT serves and routes only members; test_dht covers that)."""

    def __init__(self) -> None:
        super().__init__()
        self._anyone = pki.new_key().public_key()

    def key_for(self, author_id: str) -> Ed25519PublicKey | None:
        return super().key_for(author_id) or self._anyone


def meshd_protocol(node_id: bytes, directory: StaticDirectory | None = None) -> DhtProtocol:
    cfg = config.local()
    store = RecordStore(cfg.dht.max_records, cfg.dht.max_records_per_author)
    metrics = DhtMetrics(Registry(), lambda: float(len(store)))
    return DhtProtocol(
        Node(node_id), store, cfg.dht, directory or EveryIdAMember(), time.time, metrics
    )


@pytest.fixture
async def mesh() -> AsyncIterator[DhtMesh]:
    m = DhtMesh()
    try:
        yield m
    finally:
        m.close()
        await asyncio.sleep(0)


@pytest.fixture
async def bare() -> AsyncIterator[Callable[..., Any]]:
    """Start bare kademlia servers on 127.0.0.1; all are stopped afterwards."""
    servers: list[Server] = []

    async def start(port: int = 0, timeout: float | None = None) -> Server:
        server = Server(ksize=20, alpha=3)
        await server.listen(port, HOST)
        if timeout is not None:
            server.protocol._wait_timeout = timeout
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for s in servers:
            s.stop()
        await asyncio.sleep(0)


def port_of(server: Server) -> int:
    return int(server.transport.get_extra_info("sockname")[1])


# -- defect 1: the table traverser stops early -------------------------------------------


def empty_neighbour_buckets(table: RoutingTable) -> Node:
    """Contacts in the low half; the key in an empty bucket next to another empty one."""
    half = 2**159
    table.buckets = [
        KBucket(0, half - 1, 20),
        KBucket(half, half + 2**158 - 1, 20),
        KBucket(half + 2**158, 2**160, 20),
    ]
    for i in range(2, 7):
        table.buckets[0].add_node(Node(nid(i), HOST, 1000 + i))
    return Node(nid(2**160 - 5))


D1 = (
    "kademlia defect 1: find_neighbors returns [] when the key's bucket and its neighbour are empty"
)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=D1)
def test_defect1_bare_find_neighbors_misses_contacts() -> None:
    table = RoutingTable(None, 20, Node(nid(1)))
    key = empty_neighbour_buckets(table)
    assert len(table.find_neighbors(key)) == 5


def test_defect1_meshd_find_neighbors_sees_every_contact() -> None:
    table = MeshRoutingTable(None, 20, Node(nid(1)), 600.0)  # type: ignore[arg-type]
    key = empty_neighbour_buckets(table)
    by_distance = sorted(range(2, 7), key=lambda i: i ^ key.long_id)
    assert [n.id for n in table.find_neighbors(key)] == [nid(i) for i in by_distance]


class _NoPing:
    """Stands in for the protocol when a full bucket would ping its head."""

    def call_ping(self, node: Node) -> None:
        return None

    def spawn(self, coro: None) -> None:
        return None


@settings(max_examples=60, deadline=None)
@given(
    own=st.integers(0, 2**160 - 1),
    ids=st.lists(st.integers(0, 2**160 - 1), min_size=0, max_size=120, unique=True),
    key=st.integers(0, 2**160 - 1),
    k=st.integers(1, 25),
)
def test_defect1_meshd_find_neighbors_is_the_brute_force_k_closest(
    own: int, ids: list[int], key: int, k: int
) -> None:
    table = MeshRoutingTable(_NoPing(), 8, Node(nid(own)), 600.0)  # type: ignore[arg-type]
    for i in ids:
        if i != own:
            table.add_contact(Node(nid(i), HOST, 1))
    held = [n.long_id for n in table.contacts()]
    want = sorted((i for i in held if i != key), key=lambda i: i ^ key)[:k]
    assert [n.long_id for n in table.find_neighbors(Node(nid(key)), k)] == want


# -- defect 2: set_digest raises when every neighbour is dead ---------------------------

D2 = "kademlia defect 2: set_digest raises ValueError (max of []) when all neighbours are dead"


@pytest.mark.xfail(strict=True, raises=ValueError, reason=D2)
async def test_defect2_bare_set_with_only_dead_neighbours(bare: Callable[..., Any]) -> None:
    server = await bare(timeout=RPC_TIMEOUT)
    server.protocol.router.add_contact(Node(nid(42), HOST, free_port()))
    assert await server.set("k", "v") is False


async def test_defect2_meshd_put_with_only_dead_neighbours(mesh: DhtMesh) -> None:
    node = await mesh.add("lone", join=False)
    node.dht.add_contact(nid(42).hex(), (HOST, free_port()))
    assert await node.dht.put("k", b"v") == 0
    assert [r.value for r in await node.dht.get("k")] == [b"v"]  # kept locally


# -- defect 3: bootstrap against a seed that is not up yet ------------------------------

D3 = "kademlia defect 3: bootstrap against a late seed returns [] once, without retrying"


async def start_later(delay: float, start: Callable[[], Any]) -> Any:
    await asyncio.sleep(delay)
    return await start()


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=D3)
async def test_defect3_bare_bootstrap_before_the_seed_listens(bare: Callable[..., Any]) -> None:
    joiner = await bare(timeout=RPC_TIMEOUT)
    port = free_port()
    seed = asyncio.ensure_future(start_later(1.0, lambda: bare(port=port)))
    found = await joiner.bootstrap([(HOST, port)])
    await seed
    assert found, "bootstrap gave up before the seed started"


async def test_defect3_meshd_bootstrap_before_the_seed_listens(mesh: DhtMesh) -> None:
    joiner = await mesh.add("joiner", join=False)
    port = free_port()
    seed = asyncio.ensure_future(start_later(1.0, lambda: mesh.add("seed", port=port, join=False)))
    started = time.monotonic()
    found = await joiner.dht.bootstrap([(HOST, port)])
    assert found >= 1
    assert time.monotonic() - started < 5.0
    assert [c.port for c in joiner.dht.protocol.router.contacts()] == [(await seed).port]


# -- defect 4: dead contacts come back, and each costs a 5 s timeout --------------------

D4 = "kademlia defect 4: a dead peer costs every lookup the fixed 5 s RPC timeout"


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=D4)
async def test_defect4_bare_get_with_a_stopped_node(bare: Callable[..., Any]) -> None:
    servers = [await bare()]
    for _ in range(5):
        s = await bare()
        await s.bootstrap([(HOST, port_of(servers[0]))])
        servers.append(s)
    servers[3].stop()
    started = time.monotonic()
    assert await servers[1].get("missing") is None
    assert time.monotonic() - started < 2 * RPC_TIMEOUT


@pytest.mark.timeout(60)
async def test_defect4_meshd_get_with_a_stopped_node(mesh: DhtMesh) -> None:
    await mesh.grow(6)
    getter, dead = mesh.members[1], mesh.members[3]
    dead_id = bytes.fromhex(dead.node_id)
    assert any(c.id == dead_id for c in getter.dht.protocol.router.contacts())
    mesh.stop(dead)
    started = time.monotonic()
    assert await getter.dht.get("missing") == []
    assert time.monotonic() - started < 2 * RPC_TIMEOUT  # ~ one RPC timeout, not 5 s
    assert getter.metric("timeouts") == 1
    assert getter.dht.protocol.is_dead(dead_id)
    # Peers still list the dead node and name it in their answers; it stays out.
    assert any(
        c.id == dead_id
        for m in mesh.members
        if m is not getter
        for c in m.dht.protocol.router.contacts()
    )
    started = time.monotonic()
    for key in ("missing", "other", "third"):
        assert await getter.dht.get(key) == []
    assert time.monotonic() - started < RPC_TIMEOUT
    assert getter.metric("timeouts") == 1
    assert not any(c.id == dead_id for c in getter.dht.protocol.router.contacts())


# -- defect 5: welcome_if_new hashes the key twice --------------------------------------

D5 = "kademlia defect 5: welcome_if_new re-hashes the stored key and replicates to wrong nodes"


def welcome_ids(dkey: bytes) -> tuple[bytes, bytes, bytes]:
    """(this node, a known neighbour, a new node) such that only the new one should get it.

    This node and the new node are next to the key; the neighbour is next to the
    *re-hashed* key, which is what kademlia measures from by mistake.
    """
    me = int.from_bytes(dkey, "big") ^ 1
    neighbour = int.from_bytes(digest(dkey), "big") ^ 1
    newcomer = int.from_bytes(dkey, "big") ^ 2
    return nid(me), nid(neighbour), nid(newcomer)


async def record_welcome(protocol: Any, dkey: bytes) -> list[bytes]:
    _, neighbour, newcomer = welcome_ids(dkey)
    sent: list[bytes] = []

    async def call_store(node: Node, key: bytes, value: Any) -> tuple[bool, Any]:
        assert key == dkey
        sent.append(node.id)
        return True, True

    protocol.call_store = call_store
    protocol.router.add_contact(Node(neighbour, HOST, 2001))
    protocol.welcome_if_new(Node(newcomer, HOST, 2002))
    for _ in range(3):
        await asyncio.sleep(0)
    return sent


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=D5)
async def test_defect5_bare_welcome_replicates_by_the_right_key() -> None:
    dkey = digest("svc/blog")
    storage = ForgetfulStorage()
    storage[dkey] = b"value"
    protocol = KademliaProtocol(Node(welcome_ids(dkey)[0]), storage, 20)
    assert await record_welcome(protocol, dkey) == [welcome_ids(dkey)[2]]


async def test_defect5_meshd_welcome_replicates_by_the_right_key() -> None:
    dkey = rec.key_digest("svc/blog")
    key = pki.new_key()
    directory = EveryIdAMember()
    author_id = directory.add("alpha", key.public_key())
    record = rec.sign(
        key,
        key="svc/blog",
        author="alpha",
        author_id=author_id,
        version=1,
        expires_at=time.time() + 60,
        value=b"value",
    )
    protocol = meshd_protocol(welcome_ids(dkey)[0], directory)
    protocol.storage.put(dkey, record, time.time())
    assert await record_welcome(protocol, dkey) == [welcome_ids(dkey)[2]]


# -- defect 6: any attribute is a remote call -------------------------------------------

D6 = "kademlia defect 6: rpcudp's __getattr__ turns any unknown attribute into a remote stub"


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=D6)
def test_defect6_bare_typo_is_a_remote_call() -> None:
    protocol = KademliaProtocol(Node(nid(1)), ForgetfulStorage(), 20)
    assert not hasattr(protocol, "some_typo"), f"a typo became {protocol.some_typo!r}"


def test_defect6_meshd_typo_raises() -> None:
    protocol = meshd_protocol(nid(1))
    assert not hasattr(protocol, "some_typo")
    with pytest.raises(AttributeError, match="some_typo"):
        protocol.some_typo  # noqa: B018
    assert not hasattr(protocol, "fnd_value")
    assert callable(protocol.find_value)  # the calls we make are explicit methods


# -- defect 7 (parts): pickle, and any rpc_* callable by anyone -------------------------

D7 = "kademlia defect 7: load_state unpickles and any rpc_* method is callable remotely"


async def refuses(load: Callable[[], Any]) -> bool:
    try:
        result = load()
        if asyncio.iscoroutine(result):
            result = await result
    except Exception:
        return True
    if isinstance(result, Server):
        result.stop()
    return False


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=D7)
async def test_defect7_bare_load_state_unpickles(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_bytes(pickle.dumps({"ksize": 20, "alpha": 3, "id": nid(9), "neighbors": []}))
    assert await refuses(lambda: Server.load_state(path, 0, HOST))


async def test_defect7_meshd_load_state_refuses_pickle(mesh: DhtMesh, tmp_path: Path) -> None:
    node = await mesh.add("n", join=False)
    path = tmp_path / "state"
    path.write_bytes(pickle.dumps({"ksize": 20, "alpha": 3, "id": nid(9), "neighbors": []}))
    assert await refuses(lambda: node.dht.load_state(path))
    with pytest.raises(DhtError):
        node.dht.load_state(path)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=D7)
async def test_defect7_bare_answers_any_rpc_method(bare: Callable[..., Any]) -> None:
    a, b = await bare(timeout=RPC_TIMEOUT), await bare(timeout=RPC_TIMEOUT)
    answered, _ = await a.protocol.stun((HOST, port_of(b)))
    assert not answered


async def test_defect7_meshd_answers_only_its_rpcs(mesh: DhtMesh) -> None:
    a, b = await mesh.add("a", join=False), await mesh.add("b", join=False)
    answered, _ = await a.dht.protocol._request("stun", b.addr)
    assert not answered
    assert b.metric("dropped", reason="unknown_method") == 1
    answered, node_id = await a.dht.protocol.ping(b.addr, bytes.fromhex(a.node_id))
    assert answered and node_id == bytes.fromhex(b.node_id)
