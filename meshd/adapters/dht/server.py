"""MeshDHT: the node's private DHT, kademlia's ``Server`` on the mesh port.

Theory of operation
-------------------
A Kademlia node (Maymounkov and Mazières, 2002) as packaged by ``kademlia.Server``,
with these departures (DESIGN.md §4; the LAB-NOTES defects in brackets):

* No socket of its own: the protocol rides the mesh port's DHT channel, so every
  datagram is sealed with the mesh secret and outsiders can neither read nor join.
  ``listen`` refuses; ``start`` wires the protocol to the ``DatagramMux``.
* Values are signed, versioned, expiring records, one per author under a key
  (``record``); ``put`` signs a new version, stores it locally and on the k closest
  nodes, and returns how many of those acknowledged (0 when every neighbour is dead,
  where kademlia's ``set_digest`` raised ValueError [2]). ``delete`` publishes a
  tombstone; ``get`` merges the record sets of several holders.
* Only the author republishes its records, at ``dht.republish_fraction`` of their TTL,
  from one background task; holders never do, so a dead author's records expire [7].
* ``bootstrap`` retries with exponential backoff while no seed answers: kademlia's
  returns ``[]`` once, silently, when the seed is not up yet [3].
* State is JSON (own records, versions, contacts); the pickle paths of ``save_state``
  and ``load_state`` are overridden [7].
* The membership layer feeds ``add_contact``/``remove_contact``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kademlia.network import Server
from kademlia.node import Node

from meshd.adapters.dht.crawling import NodeLookup, RecordLookup
from meshd.adapters.dht.protocol import DhtMetrics, DhtProtocol
from meshd.adapters.dht.record import (
    OVERHEAD,
    AuthorDirectory,
    Record,
    StaticDirectory,
    key_digest,
    newest_first,
    newest_per_author,
    sign,
    verify,
)
from meshd.adapters.dht.storage import OwnRecord, RecordStore, dump_state, parse_state
from meshd.adapters.transport import Addr, Channel, DatagramMux
from meshd.config import DhtConfig
from meshd.errors import DhtError, RecordError
from meshd.identity import pki
from meshd.metrics import Registry

logger = logging.getLogger(__name__)

T = TypeVar("T")
RPC_LIMIT = 8192  # rpcudp refuses requests whose msgpack body is larger
_RPC_FRAMING = 64  # msgpack array, method name and the two ids around a stored record


class MeshDHT(Server):  # type: ignore[misc]
    protocol: DhtProtocol
    storage: RecordStore

    def __init__(
        self,
        cfg: DhtConfig,
        node_id: str,
        signing_key: Ed25519PrivateKey,
        author: str,
        directory: AuthorDirectory,
        mux: DatagramMux,
        clock: Callable[[], float],
        registry: Registry,
    ) -> None:
        try:
            raw_id = bytes.fromhex(node_id)
        except ValueError as exc:
            raise DhtError(f"node id {node_id!r} is not hex") from exc
        if len(raw_id) != 20 or pki.node_id_of(signing_key.public_key()) != node_id:
            raise DhtError("the DHT node id must be the node key's id (40 hex characters)")
        if cfg.max_value_bytes + OVERHEAD + _RPC_FRAMING > RPC_LIMIT:
            raise DhtError("dht.max_value_bytes is too large: a record must fit one 8 KiB RPC")
        store = RecordStore(cfg.max_records, cfg.max_records_per_author)
        super().__init__(ksize=cfg.ksize, alpha=cfg.alpha, node_id=raw_id, storage=store)
        self.storage = store  # kademlia's `storage or ForgetfulStorage()`: an empty store is falsy
        self.cfg = cfg
        self.node_id = node_id
        self.author = pki.check_name(author)
        self.directory = directory
        self.mux = mux
        self.clock = clock
        self.metrics = DhtMetrics(registry, lambda: float(len(store)))
        self._key = signing_key
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._started = False
        self.protocol = self._create_protocol()

    def _create_protocol(self) -> DhtProtocol:
        return DhtProtocol(
            self.node, self.storage, self.cfg, self.directory, self.clock, self.metrics
        )

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- lifecycle -------------------------------------------------------------------

    async def listen(self, port: int, interface: str = "") -> None:
        raise DhtError("MeshDHT has no socket of its own: call start() on the mesh port's mux")

    async def start(self) -> None:
        if self._started:
            raise DhtError("the DHT was already started")
        self._started = True
        self.protocol.connection_made(self.mux.transport_for(Channel.DHT))
        self.mux.register(Channel.DHT, self.protocol.datagram_received)
        self._spawn(self._maintain())

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.protocol.close()

    # -- joining ---------------------------------------------------------------------

    async def bootstrap(self, seeds: list[Addr]) -> int:
        """Join through ``seeds``; retry with backoff while none answers, then give up.

        Attempts are spaced ``dht.bootstrap_initial_s``, doubling up to
        ``dht.bootstrap_max_s``; after one wait of the maximum, 0 is returned. Returns
        the number of contacts in the routing table (0 also when the only seed that
        answered is this node itself: it is the first).
        """
        return await self._bootstrap(seeds, forever=False)

    def bootstrap_forever(self, seeds: list[Addr]) -> asyncio.Task[int]:
        """Like :meth:`bootstrap`, in the background, until a seed answers."""
        return self._spawn(self._bootstrap(seeds, forever=True))

    async def _bootstrap(self, seeds: list[Addr], forever: bool) -> int:
        if not seeds:
            return 0
        delay = self.cfg.bootstrap_initial_s
        while True:
            found = await self._bootstrap_once(seeds)
            if found is not None:
                logger.info("dht bootstrapped contacts=%d", found)
                return found
            if not forever and delay > self.cfg.bootstrap_max_s:
                logger.warning("dht bootstrap gave up: no seed answered seeds=%s", seeds)
                return 0
            wait = min(delay, self.cfg.bootstrap_max_s)
            logger.warning("dht bootstrap: no seed answered seeds=%s retry_in=%.2fs", seeds, wait)
            await asyncio.sleep(wait)
            delay *= 2

    async def _bootstrap_once(self, seeds: list[Addr]) -> int | None:
        """Ping the seeds, then look ourselves up; None when no seed answered."""
        answers = await asyncio.gather(*(self.protocol.ping(addr, self.node.id) for addr in seeds))
        answered = False
        for addr, (ok, node_id) in zip(seeds, answers, strict=True):
            if ok and isinstance(node_id, bytes) and len(node_id) == 20:
                answered = True
                if node_id != self.node.id:  # our own address may be among the seeds
                    self.protocol.welcome_if_new(Node(node_id, addr[0], addr[1]))
        if not answered:
            return None
        peers = self.protocol.router.find_neighbors(self.node)
        await NodeLookup(self.protocol, self.node, peers, self.ksize, self.alpha).find()
        return len(self.protocol.router.contacts())

    async def bootstrap_node(self, addr: Addr) -> Node | None:
        ok, node_id = await self.protocol.ping(addr, self.node.id)
        if not ok or not isinstance(node_id, bytes) or len(node_id) != 20:
            return None
        return None if node_id == self.node.id else Node(node_id, addr[0], addr[1])

    def add_contact(self, node_id_hex: str, addr: Addr) -> None:
        """A contact the membership layer learnt; it is alive, whatever we thought."""
        node = Node(_raw_id(node_id_hex), addr[0], addr[1])
        self.protocol.router.remove_contact(node)  # it may have moved: its address wins
        self.protocol.welcome_if_new(node)

    def remove_contact(self, node_id_hex: str) -> None:
        """Membership declared the node dead: forget it and don't re-learn it for now."""
        self.protocol.mark_dead(Node(_raw_id(node_id_hex)))

    # -- records ---------------------------------------------------------------------

    async def put(self, key: str, value: bytes, ttl_s: float | None = None) -> int:
        """Publish ``value`` under ``key`` as this author; returns how many nodes took it.

        The record is also stored locally, and republished before it expires.
        """
        ttl = self.cfg.record_ttl_s if ttl_s is None else ttl_s
        if not ttl > 0:
            raise DhtError("a record's ttl must be positive")
        if len(value) > self.cfg.max_value_bytes:
            raise DhtError(
                f"value of {len(value)} bytes is over dht.max_value_bytes "
                f"({self.cfg.max_value_bytes})"
            )
        record = self._sign(key, value, self.clock() + ttl, deleted=False)
        return await self._publish(record, ttl, "put")

    async def set(self, key: str, value: bytes) -> bool:
        """kademlia's API: a put with the default TTL."""
        return await self.put(key, value) > 0

    async def delete(self, key: str) -> int:
        """Publish a tombstone for our record under ``key``; returns nodes that took it."""
        now = self.clock()
        expires_at = now + self.cfg.record_ttl_s
        own = self.storage.own(key)
        if own is not None:  # outlive every copy of the record it replaces
            expires_at = max(expires_at, own.record.expires_at)
        record = self._sign(key, b"", expires_at, deleted=True)
        return await self._publish(record, expires_at - now, "delete")

    async def get(self, key: str) -> list[Record]:
        """Verified, unexpired, not deleted records under ``key``: one per author."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            digest = key_digest(key)
        except UnicodeEncodeError as exc:
            raise DhtError("a DHT key must be valid Unicode") from exc
        # Verified again: the author may have been removed since we stored it.
        local = [
            r for r in self.storage.get(digest, self.clock()) if self.protocol.admit(r, digest)
        ]
        target = Node(digest)
        peers = self.protocol.router.find_neighbors(target)
        remote: list[Record] = []
        if peers:
            lookup = RecordLookup(self.protocol, target, peers, self.ksize, self.alpha, self.alpha)
            remote = await lookup.find()
        now = self.clock()
        merged = newest_per_author([*local, *remote]).values()
        found = [r for r in newest_first(merged) if not r.deleted and r.expires_at > now]
        self.metrics.gets.inc(result="found" if found else "not_found")
        self.metrics.get_seconds.observe(loop.time() - started)
        return found

    async def set_digest(self, dkey: bytes, record: Record) -> int:
        """Store ``record`` on the k closest nodes to ``dkey``; how many acknowledged.

        Never raises when no neighbour answers (kademlia's ``max([])``): returns 0.
        """
        if record.digest != dkey:
            raise DhtError("record is not for this key")
        target = Node(dkey)
        peers = self.protocol.router.find_neighbors(target)
        if not peers:
            return 0
        nodes = await NodeLookup(self.protocol, target, peers, self.ksize, self.alpha).find()
        results = await asyncio.gather(*(self.protocol.store_record(n, record) for n in nodes))
        return sum(results)

    def _sign(self, key: str, value: bytes, expires_at: float, *, deleted: bool) -> Record:
        try:
            return sign(
                self._key,
                key=key,
                author=self.author,
                author_id=self.node_id,
                version=self.storage.next_version(key, self.clock()),
                expires_at=expires_at,
                value=value,
                deleted=deleted,
            )
        except RecordError as exc:
            raise DhtError(f"can't publish under {key!r}: {exc}") from exc

    async def _publish(self, record: Record, ttl_s: float, what: str) -> int:
        now = self.clock()
        self.storage.remember_own(record, ttl_s, now)
        self.storage.put(record.digest, record, now)
        self._wake.set()  # the maintenance task re-plans its republishing
        stored = await self.set_digest(record.digest, record)
        self.metrics.puts.inc(op=what, result="stored" if stored else "local_only")
        if not stored:
            logger.warning("dht %s stored locally only key=%s", what, record.key)
        return stored

    # -- upkeep ----------------------------------------------------------------------

    async def _maintain(self) -> None:
        """Purge, forget dead contacts, republish own records, refresh lonely buckets."""
        cfg = self.cfg
        tick = min(cfg.refresh_interval_s, cfg.record_ttl_s * cfg.republish_fraction)
        next_refresh = self.clock() + cfg.refresh_interval_s
        while True:
            now = self.clock()
            wake = now + tick
            try:
                self.storage.purge(now)
                self.protocol.forget_dead(now)
                for own in self.storage.own_due(now, cfg.republish_fraction):
                    await self._republish(own)
                if now >= next_refresh:
                    next_refresh = now + cfg.refresh_interval_s
                    await self._refresh_table()
                due = self.storage.own_next_due(cfg.republish_fraction)
                wake = min(wake, next_refresh, wake if due is None else due)
            except Exception:  # upkeep must go on; the next round retries
                logger.exception("dht maintenance failed")
            now = self.clock()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, wake - now))

    async def _republish(self, own: OwnRecord) -> None:
        record = self._sign(
            own.record.key, own.record.value, self.clock() + own.ttl_s, deleted=False
        )
        await self._publish(record, own.ttl_s, "republish")

    def refresh_table(self, interval: float | None = None) -> None:
        self._spawn(self._refresh_table())

    async def _refresh_table(self) -> None:
        """Look up a random id in each lonely bucket (the paper's §2.3 refresh).

        Unlike kademlia, nobody else's records are republished here (defect 7).
        """
        lookups: list[Coroutine[Any, Any, list[Node]]] = []
        for rid in self.protocol.get_refresh_ids():
            target = Node(rid)
            peers = self.protocol.router.find_neighbors(target, self.alpha)
            lookups.append(NodeLookup(self.protocol, target, peers, self.ksize, self.alpha).find())
        await asyncio.gather(*lookups)

    # -- state (JSON; kademlia's pickle paths are overridden) ------------------------

    def save_state(self, fname: str | os.PathLike[str]) -> None:
        contacts = [(n.id.hex(), n.ip, n.port) for n in self.protocol.router.contacts()]
        text = dump_state(self.node_id, self.storage, contacts)
        path = Path(fname)
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, path)
        except OSError as exc:
            raise DhtError(f"can't save DHT state to {path}: {exc.strerror}") from exc

    def load_state(self, fname: str | os.PathLike[str]) -> list[Addr]:
        """Restore own records and versions; returns saved contacts to bootstrap from."""
        path = Path(fname)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise DhtError(f"can't read DHT state {path}: {exc}") from exc
        state = parse_state(text)
        if state.node_id != self.node_id:
            raise DhtError(f"DHT state {path} belongs to another node")
        me = StaticDirectory()
        me.add(self.author, self._key.public_key())
        for own in state.own:
            try:  # ours, by our key, whatever its age
                verify(own.record, me, float("-inf"), self.cfg.max_value_bytes)
            except RecordError as exc:
                raise DhtError(f"DHT state {path} holds a record that is not ours") from exc
        self.storage.restore(state.own, state.versions)
        self._wake.set()
        return [(host, port) for _, host, port in state.contacts]

    def save_state_regularly(self, fname: str | os.PathLike[str], frequency: float = 600) -> None:
        self._spawn(self._save_regularly(fname, frequency))

    async def _save_regularly(self, fname: str | os.PathLike[str], frequency: float) -> None:
        while True:
            try:
                self.save_state(fname)
            except DhtError as exc:
                logger.warning("%s", exc)
            await asyncio.sleep(frequency)


def _raw_id(node_id_hex: str) -> bytes:
    try:
        raw = bytes.fromhex(node_id_hex)
    except ValueError as exc:
        raise DhtError(f"node id {node_id_hex!r} is not hex") from exc
    if len(raw) != 20:
        raise DhtError(f"node id {node_id_hex!r} is not 40 hex characters")
    return raw
