"""This node's address pools on a real node: filled by majority claims, lent locally.

What a pool is and when a lent address comes back is the pure
:mod:`meshd.core.address_pool`; this shell carries it out for :class:`AddressShell
<meshd.shell.addresses.AddressShell>` (reached through the :class:`Claims` port):

* **Filling.** Once a network is asked for, its pool is topped up to its target
  (``[addresses] pool``, bounded by the network's size) whenever half of it is lent:
  one majority claim per missing block, side by side (their datagrams and each voter's
  grant writes shared), each for its own holder ``pool:TAG:NODE``. What they win is
  written to the store (meta ``address-pool``, one fsynced transaction) before any of
  it is lent; if that write fails, the blocks are forgotten and given back.
* **Lending** (:meth:`Pools.lend`) is synchronous: no message, no write (the
  auction's round record carries the address; the core says why that is enough). A
  node lends only while its view has matched a member's (a fresh start might not know
  a placement holding one of its addresses).
* **Starting** (:meth:`Pools.start`): the whole pool counts as lent (the core's
  ``adopt``), and grants of this node's pool holders that its store does not know (a
  crash between winning and writing them down) are given back.
* **Settling** (each sweep): lent addresses come back by the core's rules; the blocks
  of a network that is gone, changed its subnet or keeps no pool any more are
  retired, and given back once nothing lent from them is held.
* **Giving back.** When a claim of this node finds a network full, its free blocks on
  that network are given back at once. A voter that asks about an old block this node
  does not hold (``disowns``: its Release was lost) is told so.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import msgspec
import orjson

from meshd.core import address_pool as core
from meshd.core.address_pool import PoolBook
from meshd.core.addresses import BLOCK_SIZE, Entry, canonical, reserved
from meshd.core.network import Network
from meshd.core.spec import Nic, WorkloadSpec
from meshd.errors import MeshdError, NotFoundError, StoreError
from meshd.shell.context import NodeContext

logger = logging.getLogger(__name__)

META_KEY = "address-pool"


class Claims(Protocol):
    """What the pools need of the address shell."""

    name: str

    async def claim_block(self, holder: str, net: Network) -> str: ...

    def give_back(self, holder: str, addresses: list[str]) -> None: ...

    def in_view(self) -> dict[str, str]: ...

    def held(self) -> Mapping[str, str]: ...

    def view_synced(self) -> bool: ...

    def voter_count(self) -> int: ...

    def own_grants(self) -> list[Entry]: ...

    def state_of(self, workload_id: str) -> str: ...

    def network(self, name: str) -> Network: ...


class Pools:
    def __init__(self, ctx: NodeContext, claims: Claims) -> None:
        self.ctx = ctx
        self.claims = claims
        raw = ctx.store.get_meta(META_KEY)
        try:
            doc: object = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError as exc:
            doc = None
            logger.error("address pool record unreadable: %s", exc)
        self.book, bad = PoolBook.from_doc(doc)
        # A record this node can't read whole: it tells no voter that a block of its is
        # not its own (it might be lending from it), so such blocks stay held until this
        # node leaves the roster, rather than risk an address twice.
        self._trusted = not bad
        if bad:
            logger.error(
                "address pool record partly unreadable (kept what could be read; blocks of "
                "this node it does not list stay held until it leaves the roster): %s",
                "; ".join(bad[:5]),
            )
        self._adopted = False
        self._filling: set[str] = set()
        self._winning: set[str] = set()  # pool holders being claimed, or won and unwritten
        # network name -> (the record it was computed from, reserved addresses, hosts)
        self._shapes: dict[str, tuple[Network, frozenset[str], int]] = {}
        self._checked_subnet: dict[str, tuple[Network, int]] = {}  # network -> (record, book.added)
        self._tasks: set[asyncio.Task[Any]] = set()
        m = ctx.metrics
        self.assigned = m.counter(
            "meshd_addresses_assigned_total",
            "NIC addresses this node fixed for its submissions, by where they came from",
        )
        m.gauge(
            "meshd_address_pool_addresses",
            "Addresses in this node's pools, by network and state (free, lent, or retiring: "
            "of a network removed or changed, going back once nothing holds them)",
            collect=self._sizes,
        )

    def _sizes(self) -> Iterator[tuple[dict[str, str], float]]:
        total: dict[str, int] = {}
        for network, _ in self.book.blocks.values():
            total[network] = total.get(network, 0) + BLOCK_SIZE
        for network, n in sorted(total.items()):
            if network.startswith(core.RETIRED):
                yield {"network": network[len(core.RETIRED) :], "state": "retiring"}, n
                continue
            free = self.book.free_count(network)
            yield {"network": network, "state": "free"}, free
            yield {"network": network, "state": "lent"}, n - free

    def start(self) -> None:
        """Count the whole pool as lent (see the core's ``adopt``)."""
        self._adopt()

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def ints(self) -> set[int]:
        """Every pool address of this node, as integers (its claims skip them)."""
        return self.book.ints()

    def holder_of(self, address: str) -> str | None:
        return self.book.holder_of(address)

    # -- lending ------------------------------------------------------------------------

    def lend(self, workload_id: str, spec: WorkloadSpec) -> WorkloadSpec | None:
        """``spec`` with every NIC's address lent from this node's pools, or None (the
        caller claims instead) if some NIC can't be served from them; a fixed address is
        served only if it is free in this node's own pool. Starts a top-up as needed."""
        if not self.claims.view_synced():
            return None
        self._adopt()
        now = self.ctx.clock()
        live = self.claims.in_view()
        got: dict[int, str] = {}
        # Fixed addresses first, so that no automatic NIC takes one the spec asks for.
        order = sorted(range(len(spec.nics)), key=lambda i: spec.nics[i].ip is None)
        for i in order:
            nic = spec.nics[i]
            if nic.ip is None:
                skip = self._reserved(nic.network)
                ip = self.book.take(nic.network, workload_id, now, live, skip)
            else:
                fixed = canonical(nic.ip)
                ok = self.book.take_fixed(nic.network, fixed, workload_id, now, live)
                ip = fixed if ok else None
            self._top_up(nic.network)
            if ip is None:
                self.book.give_back(workload_id, got.values())
                return None
            got[i] = ip
        self.assigned.inc(len(got), source="pool")
        nics = tuple(Nic(nic.network, got[i]) for i, nic in enumerate(spec.nics))
        return msgspec.structs.replace(spec, nics=nics)

    def returned(self, workload_id: str, spec: WorkloadSpec) -> None:
        """The submission failed before its auction started: its addresses go straight
        back to the pool (nothing left this node with them)."""
        self.book.give_back(workload_id, [n.ip for n in spec.nics if n.ip is not None])

    # -- filling ------------------------------------------------------------------------

    def _shape(self, net: Network) -> tuple[frozenset[str], int]:
        """A network's addresses no NIC gets (a block may hold its gateway, say), and
        its usable hosts; per network record, on the submit path."""
        shape = self._shapes.get(net.name)
        if shape is None or shape[0] != net:
            skip = frozenset(str(a) for a in reserved(net))
            shape = self._shapes[net.name] = (net, skip, net.subnet.num_addresses - len(skip))
            while len(self._shapes) > 64:
                del self._shapes[next(iter(self._shapes))]
        return shape[1], shape[2]

    def _reserved(self, network: str) -> frozenset[str]:
        try:
            return self._shape(self.claims.network(network))[0]
        except NotFoundError:
            return frozenset()

    def _target(self, net: Network) -> int:
        hosts = self._shape(net)[1]
        return core.target(self.ctx.cfg.addresses.pool, hosts, self.claims.voter_count())

    def _top_up(self, network: str) -> None:
        if network in self._filling:
            return
        try:
            net = self.claims.network(network)
        except NotFoundError:
            return
        target = self._target(net)
        if target == 0 or self.book.free_count(network) > target * BLOCK_SIZE // 2:
            return
        self._filling.add(network)
        task = asyncio.get_running_loop().create_task(self._fill(net, target))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fill(self, net: Network, target: int) -> None:
        holders: list[str] = []
        try:
            want = -(-(target * BLOCK_SIZE - self.book.free_count(net.name)) // BLOCK_SIZE)
            holders = [core.holder(uuid.uuid4().hex[:12], self.claims.name) for _ in range(want)]
            self._winning.update(holders)
            results = await asyncio.gather(
                *(self.claims.claim_block(h, net) for h in holders), return_exceptions=True
            )
            for r in results:
                if isinstance(r, asyncio.CancelledError):
                    raise r
            won = [(r, h) for r, h in zip(results, holders, strict=True) if isinstance(r, str)]
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, MeshdError):
                    logger.error("topping up an address pool failed", exc_info=r)
            if won:
                self._keep(net, won)
        finally:
            self._filling.discard(net.name)
            self._winning.difference_update(holders)

    def _keep(self, net: Network, won: list[tuple[str, str]]) -> None:
        try:
            same = self.claims.network(net.name).subnet == net.subnet
        except NotFoundError:
            same = False
        if not same:  # removed or re-subnetted while the claims ran
            for text, h in won:
                self.claims.give_back(h, [text])
            return
        for text, h in won:
            self.book.add(net.name, text, h)
        try:
            self._write()
        except StoreError as exc:
            logger.error("address pool not kept, it could not be written: %s", exc)
            for text, h in won:
                self.book.forget(h)  # (nothing was lent from them: no await since)
                self.claims.give_back(h, [text])
            return
        logger.debug("address pool topped up network=%s won=%d", net.name, len(won))

    def _write(self) -> None:
        with self.ctx.store.transaction():
            self.ctx.store.set_meta(META_KEY, orjson.dumps(self.book.to_doc()).decode())

    def give_back_free(self, network: str, why: str, keep: int = 0) -> None:
        """Give this node's free blocks on ``network`` back to the mesh (keeping at
        least ``keep`` free addresses)."""
        dropped = self.book.drop_free_blocks(network, keep)
        if not dropped:
            return
        try:
            self._write()
        except StoreError as exc:
            logger.warning("address pool kept (giving back failed to write): %s", exc)
            for text, h in dropped:
                self.book.add(network, text, h)
            return
        for text, h in dropped:
            self.claims.give_back(h, [text])
        logger.info("address pool given back network=%s count=%d (%s)", network, len(dropped), why)

    # -- settling -----------------------------------------------------------------------

    def _adopt(self) -> None:
        if self._adopted:
            return
        self._adopted = True
        self.book.adopt(self.claims.held(), self.ctx.clock())
        # Grants of our pool holders the book does not know: won just before a crash,
        # never written down. Never lent, so given back.
        if not self._trusted:
            return
        for e in self.claims.own_grants():
            if core.node_of(e.holder) == self.claims.name and e.holder not in self.book.blocks:
                self.claims.give_back(e.holder, [e.address])

    def settle(self, ttl_s: float) -> None:
        """Return what nothing can hold any more; give back pools of networks gone."""
        self._adopt()
        back = self.book.settle(self.ctx.clock(), ttl_s, self.claims.held(), self.claims.state_of)
        if back:
            logger.debug("pool addresses back count=%d", len(back))
        for network in self.book.networks():
            if network.startswith(core.RETIRED):
                self.give_back_free(network, "the network was removed or changed")
                continue
            try:
                net = self.claims.network(network)
            except NotFoundError:
                net = None
            target = 0 if net is None else self._target(net)
            if net is None or target == 0:
                # Removed, or pools turned off (`addresses.pool = 0`): retire them all.
                self.book.retire(network, lambda _: False)
                continue
            if self._checked_subnet.get(network) != (net, self.book.added):
                # (Only when the network's record or the blocks changed: each block's
                # subnet check parses it.)
                self.book.retire(network, _inside(net))
                self._checked_subnet[network] = (net, self.book.added)
            if self.book.free_count(network) > (target + 1) * BLOCK_SIZE:
                # More than the target free (a restart topped up while its old blocks
                # counted as lent): the surplus goes back, whole free blocks.
                self.give_back_free(network, "more than the pool's target", target * BLOCK_SIZE)

    def disowns(self, pool_holder: str) -> bool:
        """Whether ``pool_holder`` (one of this node's) names no block this node holds or
        is claiming: a voter that asks (``Ask``) may free its grant."""
        if not self._trusted:
            return False
        return pool_holder not in self.book.blocks and pool_holder not in self._winning


def _inside(net: Network) -> Callable[[str], bool]:
    """Whether an address lies in ``net``'s subnet."""

    def inside(address: str) -> bool:
        return ipaddress.ip_address(address) in net.subnet

    return inside
