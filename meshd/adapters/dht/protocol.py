"""The DHT's RPC protocol: kademlia's ``KademliaProtocol``, hardened for a private mesh.

Theory of operation
-------------------
The four RPCs of the Kademlia paper (§2.3: PING, STORE, FIND_NODE, FIND_VALUE) over
rpcudp's framing (type byte, 20-byte message id, msgpack ``[method, args]``), carried
on the mesh port's DHT channel, where every datagram is sealed with the mesh secret
(``meshd.adapters.transport``). Where meshd departs from kademlia/rpcudp 2.2.3/5.0.1:

* Only the explicit set :data:`RPC_NAMES` is callable by peers, each with checked
  argument types; anything else — unknown methods, wrong arity, garbage msgpack — is
  dropped and counted, and nothing a peer sends can raise out of the handler. Requests
  are served synchronously in ``datagram_received`` instead of in a fire-and-forget
  task per datagram (defect 7).
* Unknown attributes raise ``AttributeError``: rpcudp's ``__getattr__`` turns any typo
  into a remote-call stub (defect 6). The calls we make are explicit methods.
* STORE accepts only records that verify (``record.verify``) and merges them into the
  key's record set; FIND_VALUE answers the whole set, newest first, capped under
  rpcudp's 8 KiB.
* ``welcome_if_new`` replicates to a new node by the stored key digest (kademlia
  hashes it a second time: defect 5), and moves known senders to the bucket's tail.
* RPC timeout ``dht.rpc_timeout_s`` (rpcudp: 5 s). A peer that times out leaves the
  routing table at once and is remembered dead for ``dht.dead_contact_s``: lookups
  ignore it when third parties name it, until it talks to us itself (defect 4).
* Every task is kept in :attr:`DhtProtocol.tasks` until it ends (defect 7).
* Only members: a request whose sender id is not a current, unrevoked member in the
  directory is dropped unserved (``not_a_member``; an id we haven't met yet sends the
  node to learn its certificate, ``on_stranger``), and only members enter the routing
  table or are named in a FIND_NODE answer. With the mesh key rotated on removal
  (DESIGN.md §3), a removed node can neither open the DHT's datagrams nor be routed to.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import umsgpack
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from rpcudp.exceptions import MalformedMessage
from rpcudp.protocol import RPCProtocol

from meshd.adapters.dht.crawling import MeshRoutingTable, RoundTrip
from meshd.adapters.dht.record import AuthorDirectory, Record, decode, encode, verify
from meshd.adapters.dht.storage import RecordStore
from meshd.config import DhtConfig
from meshd.errors import RecordError
from meshd.metrics import Registry

logger = logging.getLogger(__name__)

T = TypeVar("T")
REQUEST = 0
RESPONSE = 1
MSG_ID_LEN = 20
# Encoded records per FIND_VALUE answer: under rpcudp's 8 KiB request cap, so an answer
# is never larger than the biggest request and always fits a datagram.
REPLY_BUDGET = 8000


def _is_id(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == 20


def _is_bytes(value: Any) -> bool:
    return isinstance(value, bytes)


# The only RPCs a peer may call, with a type check per argument (after the sender).
RPC_ARGS: dict[str, tuple[Callable[[Any], bool], ...]] = {
    "ping": (_is_id,),
    "store": (_is_id, _is_id, _is_bytes),
    "find_node": (_is_id, _is_id),
    "find_value": (_is_id, _is_id),
}
RPC_NAMES = frozenset(RPC_ARGS)


class DhtMetrics:
    """The DHT's counters in the node's registry."""

    def __init__(self, registry: Registry, records: Callable[[], float]) -> None:
        self.gets = registry.counter("meshd_dht_gets_total", "DHT gets, by result")
        self.puts = registry.counter("meshd_dht_puts_total", "DHT puts and deletes, by result")
        self.get_seconds = registry.histogram("meshd_dht_get_seconds", "DHT get latency")
        self.rpc_timeouts = registry.counter(
            "meshd_dht_rpc_timeouts_total", "DHT RPCs that got no answer in time"
        )
        self.dropped = registry.counter(
            "meshd_dht_dropped_total",
            "DHT datagrams dropped (malformed, unknown method, unexpected answer), by reason",
        )
        self.refused = registry.counter(
            "meshd_dht_records_refused_total", "Records refused (invalid or storage full)"
        )
        self.records = registry.gauge("meshd_dht_records", "Records held by this node", records)


class DhtProtocol(KademliaProtocol):  # type: ignore[misc]
    source_node: Node
    storage: RecordStore
    router: MeshRoutingTable
    transport: asyncio.DatagramTransport | None
    _outstanding: dict[bytes, tuple[asyncio.Future[tuple[bool, Any]], asyncio.TimerHandle]]

    def __init__(
        self,
        node: Node,
        store: RecordStore,
        cfg: DhtConfig,
        directory: AuthorDirectory,
        clock: Callable[[], float],
        metrics: DhtMetrics,
    ) -> None:
        super().__init__(node, store, cfg.ksize)
        self._wait_timeout = cfg.rpc_timeout_s
        self.router = MeshRoutingTable(self, cfg.ksize, node, cfg.refresh_interval_s)
        self.cfg = cfg
        self.directory = directory
        self.clock = clock
        self.metrics = metrics
        self.rtt = RoundTrip(cfg.rpc_timeout_s)
        self.tasks: set[asyncio.Task[Any]] = set()
        self._dead: dict[bytes, float] = {}
        self._closed = False
        # Called with the address of a request whose sender id we don't know (yet).
        self.on_stranger: Callable[[tuple[str, int]], None] | None = None

    def is_member(self, node_id: bytes) -> bool:
        """A current, unrevoked member (the directory knows its key)."""
        return self.directory.key_for(node_id.hex()) is not None

    def __getattr__(self, name: str) -> Any:
        # rpcudp answers *any* missing attribute with a remote-call stub (defect 6).
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- tasks and lifecycle ---------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("dht task failed", exc_info=task.exception())

    def close(self) -> None:
        self._closed = True
        for task in list(self.tasks):
            task.cancel()
        for future, timer in list(self._outstanding.values()):
            timer.cancel()
            if not future.done():
                future.set_result((False, None))
        self._outstanding.clear()
        if self.transport is not None:
            self.transport.close()

    # -- calls we make (explicit: no __getattr__ stubs) ------------------------------

    async def ping(self, address: Any, nodeid: bytes) -> tuple[bool, Any]:
        return await self._request("ping", address, nodeid)

    async def store(
        self, address: Any, nodeid: bytes, key: bytes, value: bytes
    ) -> tuple[bool, Any]:
        return await self._request("store", address, nodeid, key, value)

    async def find_node(self, address: Any, nodeid: bytes, key: bytes) -> tuple[bool, Any]:
        return await self._request("find_node", address, nodeid, key)

    async def find_value(self, address: Any, nodeid: bytes, key: bytes) -> tuple[bool, Any]:
        return await self._request("find_value", address, nodeid, key)

    async def _request(self, name: str, address: Any, *args: Any) -> tuple[bool, Any]:
        if self._closed or self.transport is None:
            return False, None
        loop = asyncio.get_running_loop()
        sent = loop.time()
        try:
            # rpcudp's own sender: framing, message id, timeout timer (see _timeout).
            future = RPCProtocol.__getattr__(self, name)(address, *args)
        except MalformedMessage as exc:
            logger.error("dht request too large method=%s: %s", name, exc)
            return False, None
        ok, data = await future
        if ok:
            self.rtt.observe(loop.time() - sent)
        return bool(ok), data

    async def store_record(self, node: Node, record: Record) -> bool:
        ok, data = await self.call_store(node, record.digest, encode(record))
        return bool(ok) and data is True

    def _timeout(self, msg_id: bytes) -> None:
        entry = self._outstanding.pop(msg_id, None)
        if entry is None:
            return
        self.metrics.rpc_timeouts.inc()
        if not entry[0].done():
            entry[0].set_result((False, None))

    # -- datagrams in ----------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self._closed:
            return
        address = (addr[0], addr[1])
        if len(data) <= 1 + MSG_ID_LEN:
            self._drop("short", address)
            return
        kind, msg_id = data[0], data[1 : 1 + MSG_ID_LEN]
        try:
            payload = umsgpack.unpackb(data[1 + MSG_ID_LEN :])
        except Exception:  # noqa: BLE001 - umsgpack raises a dozen types on hostile bytes
            self._drop("undecodable", address)
            return
        if kind == REQUEST:
            self._serve(msg_id, payload, address)
        elif kind == RESPONSE:
            self._accept_response(msg_id, payload, address)
        else:
            self._drop("unknown_kind", address)

    async def _solve_datagram(self, datagram: bytes, address: Any) -> None:
        self.datagram_received(datagram, address)  # rpcudp's path, made safe

    async def _accept_request(self, msg_id: bytes, data: Any, address: Any) -> None:
        self._serve(msg_id, data, address)

    def _accept_response(self, msg_id: bytes, data: Any, address: Any) -> None:
        entry = self._outstanding.pop(msg_id, None)
        if entry is None:  # late (after its timeout) or never asked for
            self._drop("unexpected_response", address)
            return
        future, timer = entry
        timer.cancel()
        if not future.done():
            future.set_result((True, data))

    def _serve(self, msg_id: bytes, data: Any, address: tuple[str, int]) -> None:
        if not (isinstance(data, list) and len(data) == 2):
            self._drop("malformed", address)
            return
        name, args = data
        checks = RPC_ARGS.get(name) if isinstance(name, str) else None
        if checks is None:
            self._drop("unknown_method", address)
            return
        if not (
            isinstance(args, list)
            and len(args) == len(checks)
            and all(check(arg) for check, arg in zip(checks, args, strict=True))
        ):
            self._drop("bad_arguments", address)
            return
        if not self.is_member(args[0]):
            self._drop("not_a_member", address)
            if self.on_stranger is not None:
                self.on_stranger(address)
            return
        try:
            reply = umsgpack.packb(getattr(self, f"rpc_{name}")(address, *args))
        except Exception:  # a bug serving one peer must not take the node down
            logger.exception("dht rpc failed method=%s peer=%s:%s", name, *address)
            self._drop("handler_error", address)
            return
        if self.transport is not None:
            self.transport.sendto(bytes((RESPONSE,)) + msg_id + reply, address)

    def _drop(self, reason: str, address: tuple[str, int]) -> None:
        self.metrics.dropped.inc(reason=reason)
        logger.debug("dropped dht datagram reason=%s peer=%s:%s", reason, *address)

    # -- RPCs peers may call (rpc_ping is kademlia's) --------------------------------

    def rpc_store(self, sender: Any, nodeid: bytes, key: bytes, value: bytes) -> bool:
        self.welcome_if_new(Node(nodeid, sender[0], sender[1]))
        record = self.accept_record(value, key)
        if record is None:
            return False
        outcome = self.storage.put(key, record, self.clock())
        if not outcome.accepted:
            self.metrics.refused.inc(reason=outcome.value)
        return bool(outcome.accepted)

    def rpc_find_node(self, sender: Any, nodeid: bytes, key: bytes) -> list[tuple[Any, ...]]:
        source = Node(nodeid, sender[0], sender[1])
        self.welcome_if_new(source)
        near = self.router.find_neighbors(Node(key), exclude=source)
        return [tuple(n) for n in near if self.is_member(n.id)]

    def rpc_find_value(self, sender: Any, nodeid: bytes, key: bytes) -> Any:
        records = [
            r
            for r in self.storage.get(key, self.clock())
            if self.directory.key_for(r.author_id) is not None  # revoked since stored
        ]
        if not records:
            return self.rpc_find_node(sender, nodeid, key)
        self.welcome_if_new(Node(nodeid, sender[0], sender[1]))
        blobs, size = [], 0
        for record in records:  # newest first
            blob = encode(record)
            if size + len(blob) > REPLY_BUDGET:
                break
            blobs.append(blob)
            size += len(blob)
        return {"records": blobs}

    def accept_record(self, blob: Any, digest: bytes) -> Record | None:
        """Decode and verify a record a peer sent for ``digest``; None (counted) if bad."""
        try:
            record = decode(blob)
        except RecordError as exc:
            self.metrics.refused.inc(reason=exc.reason)
            return None
        return record if self.admit(record, digest) else None

    def admit(self, record: Record, digest: bytes) -> bool:
        """Is ``record`` valid now, by a current member, for ``digest``? Counts refusals."""
        try:
            verify(record, self.directory, self.clock(), self.cfg.max_value_bytes)
            if record.digest != digest:
                raise RecordError("wrong_key", "record is not for the key it was sent under")
        except RecordError as exc:
            self.metrics.refused.inc(reason=exc.reason)
            logger.debug("refused dht record reason=%s: %s", exc.reason, exc)
            return False
        return True

    # -- routing table upkeep --------------------------------------------------------

    def welcome_if_new(self, node: Node) -> None:
        """Add a node that talked to us; replicate to it what it should hold (§2.5)."""
        if node.id == self.source_node.id or not self.is_member(node.id):
            return  # only current members enter the routing table
        self._dead.pop(node.id, None)  # it talked to us directly: it is alive
        bucket = self.router.buckets[self.router.get_bucket_for(node)]
        known = bucket.nodes.get(node.id) or bucket.replacement_nodes.get(node.id)
        if known is not None:
            # The paper's move-to-tail, which kademlia skips. Only from the address we
            # know: a sender's claimed id must not re-point a contact elsewhere. A node
            # waiting in the replacement cache was welcomed (and replicated to) before.
            if known.same_home_as(node):
                self.router.add_contact(known)
            return
        now = self.clock()
        known = [n.long_id for n in self.router.contacts()]
        for digest in self.storage.digests():
            # By the stored digest: kademlia hashes it a second time here (defect 5).
            if self._should_replicate(node, int.from_bytes(digest, "big"), known):
                for record in self.storage.get(digest, now):
                    self.spawn(self.store_record(node, record))
        self.router.add_contact(node)

    def _should_replicate(self, new: Node, key: int, known: list[int]) -> bool:
        """The paper's §2.5 rule: we are closer to the key than any contact, and the new
        node is closer than the k-th closest contact. Cheap first test: most keys we
        hold have a closer contact than us, and one scan tells.
        """
        distances = [i ^ key for i in known if i != key]
        if not distances:
            return True
        if self.source_node.long_id ^ key >= min(distances):
            return False
        return bool(new.long_id ^ key < heapq.nsmallest(self.router.ksize, distances)[-1])

    def handle_call_response(self, result: tuple[bool, Any], node: Node) -> tuple[bool, Any]:
        if not result[0]:
            self.mark_dead(node)
            return result
        self.welcome_if_new(node)
        return result

    def mark_dead(self, node: Node) -> None:
        logger.debug("dht contact unresponsive, removed peer=%s", node)
        self.router.remove_contact(node)
        self._dead[node.id] = self.clock() + self.cfg.dead_contact_s

    def is_dead(self, node_id: bytes) -> bool:
        until = self._dead.get(node_id)
        if until is None:
            return False
        if until <= self.clock():
            del self._dead[node_id]
            return False
        return True

    def forget_dead(self, now: float) -> None:
        for node_id, until in list(self._dead.items()):
            if until <= now:
                del self._dead[node_id]
