"""Routing table and lookups: where meshd's Kademlia finds nodes and records.

Theory of operation
-------------------
The table is kademlia's (k-buckets split per the Kademlia paper §2.4 and §4.2), with
three overrides:

* ``find_neighbors`` returns the k closest of *all* contacts by XOR distance. kademlia's
  ``TableTraverser`` walks buckets outwards from the key's bucket and stops as soon as it
  steps into an empty bucket on one side when the other side is exhausted (defect 1:
  ``[]`` though the table has contacts). A sorted scan is exact and cheap at our sizes.
* ``add_contact`` keeps a reference to the ping it sends to a full bucket's head
  (kademlia fires and forgets it).
* ``lonely_buckets`` uses the configured refresh interval, not a hard-coded hour.

The lookups follow the paper's iterative node lookup (§2.3) with its *loose*
parallelism, which kademlia's ``SpiderCrawl`` does not implement: kademlia sends alpha
queries and gathers the whole round, so one dead peer holds up every lookup that asks
it for the full RPC timeout. Here a query that has been outstanding longer than the
stall time (:class:`RoundTrip`: a smoothed RTT bound, far below the RPC timeout) stops
counting against alpha, and the next closest candidate is asked meanwhile; the late
query still runs to its answer or timeout in the background, so a dead peer is still
found out and marked. Contacts a peer names are ignored while they are marked dead (defect 4).

:class:`RecordLookup` replaces kademlia's "most common value" with the multi-writer
merge: every verified record from every responder is kept, newest per author. It stops
once ``want`` responders returned records, or a stall time after the first did.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import ipaddress
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Coroutine, Iterable
from typing import Any, Protocol, TypeVar

from kademlia.node import Node
from kademlia.routing import RoutingTable

from meshd.adapters.dht.record import Record, supersedes

logger = logging.getLogger(__name__)
T = TypeVar("T")


class DhtProtocol(Protocol):
    """What crawling and the routing table need of the RPC layer
    (``meshd.adapters.dht.protocol.DhtProtocol`` is one); named by shape so the RPC layer can
    build its routing table and crawlers without the two modules importing each other."""

    source_node: Node
    rtt: RoundTrip

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]: ...

    def is_dead(self, node_id: bytes) -> bool: ...

    def accept_record(self, blob: Any, digest: bytes) -> Record | None: ...

    async def store_record(self, node: Node, record: Record) -> bool: ...

    async def call_ping(self, node_to_ask: Node) -> Answer: ...

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> Answer: ...

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> Answer: ...


Answer = tuple[bool, Any]


class MeshRoutingTable(RoutingTable):  # type: ignore[misc]
    def __init__(
        self, protocol: DhtProtocol, ksize: int, node: Node, refresh_interval_s: float
    ) -> None:
        self.refresh_interval_s = refresh_interval_s
        super().__init__(protocol, ksize, node)

    def contacts(self) -> list[Node]:
        return [n for bucket in self.buckets for n in bucket.nodes.values()]

    def find_neighbors(
        self, node: Node, k: int | None = None, exclude: Node | None = None
    ) -> list[Node]:
        self.buckets[self.get_bucket_for(node)].touch_last_updated()  # for refresh
        target = node.long_id
        candidates = (
            n
            for n in self.contacts()
            if n.id != node.id and (exclude is None or not n.same_home_as(exclude))
        )
        return heapq.nsmallest(k or self.ksize, candidates, key=lambda n: n.long_id ^ target)

    def add_contact(self, node: Node) -> None:
        index = self.get_bucket_for(node)
        bucket = self.buckets[index]
        if bucket.add_node(node):
            return
        # The paper's §4.2 split rule, as in kademlia; a full bucket pings its head.
        if bucket.has_in_range(self.node) or bucket.depth() % 5 != 0:
            self.split_bucket(index)
            self.add_contact(node)
        else:
            self.protocol.spawn(self.protocol.call_ping(bucket.head()))

    def lonely_buckets(self) -> list[Any]:
        horizon = time.monotonic() - self.refresh_interval_s
        return [b for b in self.buckets if b.last_updated < horizon]


class RoundTrip:
    """Smoothed RTT (RFC 6298's estimator) giving a lookup's *stall* time.

    A query unanswered after ``srtt + 4 * rttvar`` is probably lost or dead; the lookup
    stops waiting on it (it keeps its full RPC timeout in the background). Bounded to
    [timeout/50, timeout/10] so neither a burst of fast answers nor a slow loop makes it
    useless; before any sample it is timeout/10.
    """

    def __init__(self, timeout_s: float) -> None:
        self._floor = timeout_s / 50
        self._ceiling = timeout_s / 10
        self._srtt: float | None = None
        self._rttvar = 0.0

    def observe(self, rtt: float) -> None:
        if self._srtt is None:
            self._srtt, self._rttvar = rtt, rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt

    def stall_s(self) -> float:
        if self._srtt is None:
            return self._ceiling
        return min(self._ceiling, max(self._floor, self._srtt + 4 * self._rttvar))


def parse_contacts(data: Any, limit: int) -> list[Node]:
    """Contacts from a FIND_NODE answer; malformed entries are skipped.

    Addresses must be IP literals: a host name would make the socket resolve it,
    blocking the loop, on a peer's say-so.
    """
    if not isinstance(data, list):
        return []
    nodes = []
    for entry in data[:limit]:
        if not (isinstance(entry, list) and len(entry) == 3):
            continue
        node_id, ip, port = entry
        if not (isinstance(node_id, bytes) and len(node_id) == 20 and isinstance(ip, str)):
            continue
        if type(port) is not int or not 0 < port < 65536:
            continue
        if _is_ip(ip):
            nodes.append(Node(node_id, ip, port))
    return nodes


@functools.lru_cache(maxsize=4096)
def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class Lookup(ABC):
    """The iterative lookup engine shared by node and record lookups."""

    def __init__(
        self, protocol: DhtProtocol, target: Node, peers: Iterable[Node], ksize: int, alpha: int
    ) -> None:
        self.protocol = protocol
        self.target = target
        self.ksize = ksize
        self.alpha = alpha
        self._known: dict[bytes, Node] = {}
        self._queried: set[bytes] = set()
        self._answered: set[bytes] = set()
        self._offer(peers)

    def _offer(self, nodes: Iterable[Node]) -> None:
        own: bytes = self.protocol.source_node.id
        for node in nodes:
            if node.id == own or node.id in self._known or node.id in self._queried:
                continue
            if self.protocol.is_dead(node.id):
                continue  # a third party's stale word does not bring a dead contact back
            self._known[node.id] = node

    def _closest(self) -> list[Node]:
        target = self.target.long_id
        return heapq.nsmallest(self.ksize, self._known.values(), key=lambda n: n.long_id ^ target)

    def _converged(self) -> bool:
        return all(n.id in self._answered for n in self._closest())

    @abstractmethod
    def _ask(self, node: Node) -> Coroutine[Any, Any, Answer]:
        """Start the RPC this lookup sends to ``node``."""

    @abstractmethod
    def _handle(self, node: Node, data: Any, now: float) -> None:
        """Take in ``node``'s answer."""

    def _done(self, now: float, stall: float) -> bool:
        return self._converged()

    def _wake_at(self, stall: float) -> float | None:
        return None

    async def _query(self, node: Node) -> Answer:
        try:
            return await self._ask(node)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in handling one answer must not sink the lookup
            logger.exception("dht query failed peer=%s", node)
            return False, None

    async def _crawl(self) -> None:
        loop = asyncio.get_running_loop()
        pending: dict[asyncio.Task[Answer], tuple[Node, float]] = {}
        while True:
            now = loop.time()
            stall = self.protocol.rtt.stall_s()
            if not self._done(now, stall):
                active = sum(1 for _, sent in pending.values() if now - sent < stall)
                for node in self._closest():
                    if active >= self.alpha:
                        break
                    if node.id not in self._queried:
                        self._queried.add(node.id)
                        pending[self.protocol.spawn(self._query(node))] = (node, now)
                        active += 1
            if not pending or self._done(now, stall):
                return  # queries still pending finish in the background
            deadlines = [sent + stall for _, sent in pending.values() if now - sent < stall]
            extra = self._wake_at(stall)
            if extra is not None:
                deadlines.append(extra)
            timeout = max(0.0, min(deadlines) - now) if deadlines else None
            done, _ = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                node, _ = pending.pop(task)
                ok, data = task.result()
                if ok:
                    self._answered.add(node.id)
                    self._handle(node, data, loop.time())
                else:
                    self._known.pop(node.id, None)


class NodeLookup(Lookup):
    """FIND_NODE until the k closest known nodes have all answered."""

    async def find(self) -> list[Node]:
        await self._crawl()
        return [n for n in self._closest() if n.id in self._answered]

    def _ask(self, node: Node) -> Coroutine[Any, Any, Answer]:
        call: Coroutine[Any, Any, Answer] = self.protocol.call_find_node(node, self.target)
        return call

    def _handle(self, node: Node, data: Any, now: float) -> None:
        self._offer(parse_contacts(data, 2 * self.ksize))


class RecordLookup(Lookup):
    """FIND_VALUE, merging the record sets of every responder (newest per author)."""

    MAX_BLOBS = 256  # records looked at per answer; an honest answer fits in 8 KiB

    def __init__(
        self,
        protocol: DhtProtocol,
        target: Node,
        peers: Iterable[Node],
        ksize: int,
        alpha: int,
        want: int,
    ) -> None:
        super().__init__(protocol, target, peers, ksize, alpha)
        self.want = want
        self.records: dict[str, Record] = {}
        self.hits = 0
        self._first_hit: float | None = None
        self._without: list[Node] = []
        self._verdicts: dict[bytes, bool] = {}

    async def find(self) -> list[Record]:
        await self._crawl()
        self._repair()
        return list(self.records.values())

    def _ask(self, node: Node) -> Coroutine[Any, Any, Answer]:
        call: Coroutine[Any, Any, Answer] = self.protocol.call_find_value(node, self.target)
        return call

    def _handle(self, node: Node, data: Any, now: float) -> None:
        if not isinstance(data, dict):
            self._without.append(node)
            self._offer(parse_contacts(data, 2 * self.ksize))
            return
        blobs = data.get("records")
        valid = 0
        for blob in blobs[: self.MAX_BLOBS] if isinstance(blobs, list) else []:
            if not isinstance(blob, bytes):
                continue
            ok = self._verdicts.get(blob)
            if ok is None:  # each distinct blob is verified once per lookup
                record = self.protocol.accept_record(blob, self.target.id)
                ok = self._verdicts[blob] = record is not None
                if record is not None and supersedes(record, self.records.get(record.author_id)):
                    self.records[record.author_id] = record
            valid += ok
        if valid:
            self.hits += 1
            if self._first_hit is None:
                self._first_hit = now
        else:
            self._without.append(node)

    def _done(self, now: float, stall: float) -> bool:
        if self.hits >= self.want:
            return True
        if self._first_hit is not None and now - self._first_hit >= stall:
            return True
        return self._converged()

    def _wake_at(self, stall: float) -> float | None:
        return None if self._first_hit is None else self._first_hit + stall

    def _repair(self) -> None:
        """Cache the merged set on the closest node that lacked it (the paper's §2.3)."""
        if not self.records or not self._without:
            return
        target = self.target.long_id
        nearest = min(self._without, key=lambda n: n.long_id ^ target)
        for record in self.records.values():
            self.protocol.spawn(self.protocol.store_record(nearest, record))
