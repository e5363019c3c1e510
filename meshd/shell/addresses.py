"""NIC addresses on a real node: the voter's durable table and the claimer, on the mesh.

What a grant is and when a claim wins is the pure :mod:`meshd.core.addresses`; this
shell carries it out:

* **Messages** are signed datagrams of kind ``address`` on :attr:`Channel.ADDRESSES`,
  sent and received through the mesh port as the fencing shell sends its votes
  (``MeshPort.sign`` / ``send_datagram`` / ``on_datagram``); what one loop turn sends
  a member leaves as one bundle. A node's own vote skips the network but not the loop.
* **A grant is on disk before it is sent** (``address_grants``, migration 9); if the
  write fails, no answer leaves; a loop turn's grants share one transaction. A voter
  whose placement view has not yet matched a member's (``PlacementShell.synced``) does
  not vote (it might not know a placement that holds the address): it answers
  ``Abstain``, and the claimer offers it its view digest out of turn.
* **The view** is indexed as the placement shell records placements
  (``PlacementShell.view_listeners``), so a claim never scans it.
* **Release**: in the placement shell's replicated view, every live placement's NICs
  back their addresses, a tombstone frees them. The sweep (every
  ``addresses.sweep_s``) frees what tombstones, the roster and ``grant_ttl_s`` say
  (:meth:`VoterTable.sweep`); while this node sees no majority of the roster live it
  frees nothing by age (its view may be stale).
* :meth:`AddressShell.assign` (called by ``PlacementShell.submit`` while the auction
  collects bids; it awards only with the addresses) returns the spec with every NIC's
  ``ip`` set, or raises a 4xx error with one sentence; a NIC that fails releases the
  ones already won, so nothing is half-made.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import uuid
import zlib
from collections import ChainMap, OrderedDict
from collections.abc import Callable, Container, Mapping
from typing import Any

import msgspec

from meshd.adapters.store import address_grants, roster
from meshd.adapters.transport import Channel
from meshd.core import addresses as core
from meshd.core.addresses import (
    Abstain,
    Ask,
    Claim,
    Claimer,
    Deny,
    Entry,
    Grant,
    Msg,
    Release,
    TornDown,
    VoterTable,
)
from meshd.core.auction.model import Placement
from meshd.core.network import Address, Network
from meshd.core.nic import mac_for
from meshd.core.quorum import majority
from meshd.core.spec import Nic, WorkloadSpec
from meshd.errors import (
    AddressConflictError,
    AddressError,
    EnvelopeError,
    MeshdError,
    NetworkFullError,
    NotFoundError,
    StoreError,
)
from meshd.shell.address_pool import Pools
from meshd.shell.bus import WorkloadGone
from meshd.shell.context import NodeContext
from meshd.shell.networks import Networks
from meshd.shell.ports import MeshPort

logger = logging.getLogger(__name__)

KIND = "address"
RESENDS = 4  # resends of a claim to silent voters within claim_timeout_s
TIME_EPS = 1e-3  # seconds: times this close are the same time (uvloop keeps milliseconds)
ENDED_KEEP = 256  # ended claims remembered, to give back a grant that comes late
TORN_KEEP = 4096  # owners' TornDown remembered until freed (one forgotten: asked again)
POOL_ASK_S = 60.0  # how often a voter asks a node about one of its old pool blocks
View = Callable[[], Mapping[str, Placement]]


def _row(holder: str, name: str | None, ip: str, index: int | None, state: str) -> dict[str, Any]:
    """One row of :meth:`AddressShell.in_use` (``network show``'s ``addresses``)."""
    mac = None if index is None else mac_for(holder, index)
    return {"holder": holder, "name": name, "ip": ip, "mac": mac, "state": state}


def nics_json(workload_id: str, spec: WorkloadSpec) -> list[dict[str, Any]]:
    """A workload's addresses as the API shows them (``addresses`` in its JSON)."""
    return [
        {"network": nic.network, "ip": nic.ip, "mac": mac_for(workload_id, i)}
        for i, nic in enumerate(spec.nics)
    ]


class _AnyOf:
    """Membership in any of several containers, without copying them."""

    def __init__(self, *parts: Container[int]) -> None:
        self._parts = parts

    def __contains__(self, item: object) -> bool:
        return any(item in part for part in self._parts)


class AddressShell:
    def __init__(
        self,
        ctx: NodeContext,
        mesh: MeshPort,
        networks: Networks,
        view: View,
        synced: Callable[[], bool],
        nudge: Callable[[str], None],
    ) -> None:
        self.ctx = ctx
        self.mesh = mesh
        self.networks = networks
        self._view = view
        self._synced = synced
        # Offer a member this node's view digest out of turn: a voter that has not yet
        # compared views with anyone (a fresh start) does not vote until it has.
        self._nudge = nudge
        self._nudged: dict[str, float] = {}  # voter -> when it was last offered a digest
        self._outbox: dict[str, list[Msg]] = {}  # this loop turn's messages, by member
        self._due: dict[str, float] = {}  # member -> when its queued messages leave
        self._flush_at: asyncio.Handle | None = None  # the next time some are due
        self._flush_due = 0.0
        self.name = ctx.ident.name
        self.table = VoterTable(address_grants.load(ctx.store))
        self._rng = ctx.new_random()  # candidate order, not secrets
        self._claims: dict[str, tuple[Claimer, asyncio.Event]] = {}
        # claim prefix -> (its current attempt, the voters that attempt was sent to)
        self._asked: dict[str, tuple[str, set[str]]] = {}
        self._ended: OrderedDict[str, Claimer] = OrderedDict()  # claim prefix -> claimer
        # Grants decided this loop turn, not yet on disk: (entry, what it replaced,
        # the answer to send once written).
        self._unwritten: list[tuple[Entry, Entry | None, tuple[str, Grant]]] = []
        # The view's NICs, indexed (kept by view_changed; None: rebuild on next use).
        self._holders: dict[str, str] | None = None  # address -> workload
        self._ints: dict[int, str] = {}  # the same addresses as integers
        self._macs: dict[str, str] = {}  # MAC -> workload
        self._tombs: dict[str, None] = {}  # the view's removed workloads (same upkeep)
        # workload -> the NICs indexed for it, and (address, number, MAC) of each
        self._by_wid: dict[str, tuple[tuple[Nic, ...], tuple[tuple[str, int, str], ...]]] = {}
        # Per network, an address no free one lies below (from this node's view): the
        # candidate walk starts there. Lowered whenever an address may have come free.
        self._low: dict[str, int] = {}
        # Workloads whose tombstone just came, with their NICs' addresses: freed together
        # at the end of the loop turn (view_changed may run inside the view's transaction).
        self._tombstoned: dict[str, tuple[str, ...]] = {}
        # Removed workloads whose last owner said it tore them down: holder -> that owner.
        self._torn: OrderedDict[str, str] = OrderedDict()
        self._pool_asked: dict[str, float] = {}  # pool holder -> when its node was asked
        # Whether this node may still run a workload (the runner's word) and whether a
        # member is fenced (the fencing shell's): wired by start_shells/start_fencing.
        self.holds: Callable[[str], bool] = lambda _: False
        self.fenced: Callable[[str], bool] = lambda _: False
        # Whether this node has other submissions in flight (the placement shell's
        # word): a claim then lingers to share datagrams with the ones behind it.
        self.busy: Callable[[], bool] = lambda: False
        self._voter_cache: tuple[float, frozenset[str]] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped = False
        m = ctx.metrics
        self.dropped = m.counter("meshd_addresses_dropped_total", "Address messages dropped")
        self.granted = m.counter(
            "meshd_addresses_granted_total", "Address claims this node granted"
        )
        self.freed = m.counter("meshd_addresses_freed_total", "Grants this node freed, by reason")
        self.claims = m.counter(
            "meshd_address_claims_total",
            "Address claims this node sent to its voters: a new candidate (attempt) or a "
            "resend to voters that had not answered",
        )
        # This node's pools (addresses granted ahead of demand, lent without asking).
        self.pools = Pools(ctx, self)

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        self.mesh.on_datagram(
            Channel.ADDRESSES, KIND, core.decode_all, self._on_bundle, self.dropped
        )
        self._spawn(self._sweep_periodically())
        self.ctx.bus.subscribe(WorkloadGone, self._on_gone)
        self.pools.start()

    def stop(self) -> None:
        self._stopped = True
        self.pools.stop()
        for task in list(self._tasks):
            task.cancel()
        for claimer, event in self._claims.values():
            claimer.refusal = (
                claimer.refusal or "meshd is stopping; the address claim was abandoned"
            )
            event.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _voters(self) -> frozenset[str]:
        """The roster's nodes (read from the store at most once a second)."""
        now = asyncio.get_running_loop().time()
        if self._voter_cache is None or now - self._voter_cache[0] > 1.0:
            names = {m.name for m in roster.members(self.ctx.store) if m.role == "node"}
            self._voter_cache = (now, frozenset({*names, self.name}))
        return self._voter_cache[1]

    # -- what the pools use (meshd.shell.address_pool.Claims) ----------------------------

    async def claim_block(self, holder: str, net: Network) -> str:
        """Claim a whole free block of ``net`` for pool holder ``holder``; its text."""
        return core.block_text(await self._claim(holder, net, None, set(), block=True))

    def give_back(self, holder: str, addresses: list[str]) -> None:
        self._release(holder, addresses)

    def view_synced(self) -> bool:
        return self._synced()

    def voter_count(self) -> int:
        return len(self._voters())

    def own_grants(self) -> list[Entry]:
        return self.table.entries()

    def network(self, name: str) -> Network:
        return self.networks.get(name)

    def held(self) -> Mapping[str, str]:
        """address -> workload, of every live placement's NICs in this node's view and of
        every removed workload's that its owner may still run (``runs_nowhere``)."""
        running = self._may_still_run(self._roster_names())
        if not running:
            return self.in_view()
        return ChainMap(self.in_view(), {a: wid for a, (wid, _) in running.items()})

    def _may_still_run(self, names: Container[str]) -> dict[str, tuple[str, str]]:
        """address -> (workload, network) of the NICs of every removed workload in the
        view that its owner may still run."""
        out: dict[str, tuple[str, str]] = {}
        for p in self._removed():
            if not p.spec.nics or self._runs_nowhere(p, names):
                continue
            for nic in p.spec.nics:
                if nic.ip is not None:
                    with contextlib.suppress(ValueError):  # (not an address: nothing held)
                        out[core.key(nic.ip)[0]] = (p.workload_id, nic.network)
        return out

    def _removed(self) -> list[Placement]:
        """The view's tombstones (from the index: a sweep must not walk the whole view)."""
        self.in_view()  # the indexes are current
        view = self._view()
        return [p for p in map(view.get, self._tombs) if p is not None and p.removed]

    def state_of(self, workload_id: str) -> str:
        """``live``, ``removed`` (a tombstone nothing can run any more), ``running`` (a
        tombstone its owner may still run) or ``unknown`` (not in this node's view)."""
        p = self._view().get(workload_id)
        if p is None:
            return "unknown"
        if not p.removed:
            return "live"
        return "removed" if self._runs_nowhere(p, self._roster_names()) else "running"

    # -- what the view holds -----------------------------------------------------------

    def in_view(self) -> dict[str, str]:
        """address -> holder of every live placement's NICs in this node's view."""
        if self._holders is None:
            self._rebuild()
        assert self._holders is not None
        return self._holders

    def view_changed(self, placement: Placement | None) -> None:
        """The placement shell's word that the view took ``placement`` in (None: the
        core was rebuilt): the indexes follow it without scanning the view."""
        if placement is not None and placement.removed and placement.spec.nics:
            self._free_soon(placement)
        if placement is None or self._holders is None:
            self._holders = None
            return
        wid = placement.workload_id
        if placement.removed:
            self._tombs[wid] = None
        else:
            self._tombs.pop(wid, None)
        indexed = self._by_wid.get(wid)
        nics = placement.workload.spec.nics
        if (
            indexed is not None
            and not placement.removed
            and indexed[0] == nics
            and all(self._holders.get(text) == wid for text, _, _ in indexed[1])
        ):
            return  # a new state or generation of the same NICs: the index holds them
        for text, number, mac in self._by_wid.pop(wid, ((), ()))[1]:
            if self._holders.get(text) == wid:
                del self._holders[text]
                self._ints.pop(number, None)
                self._low.clear()  # rare (a removal, a move): start from the bottom again
            if self._macs.get(mac) == wid:
                del self._macs[mac]
        self._add(placement)

    def _rebuild(self) -> None:
        self._low.clear()
        self._holders, self._ints, self._macs, self._by_wid = {}, {}, {}, {}
        self._tombs = {}
        for p in self._view().values():
            if p.removed:
                self._tombs[p.workload_id] = None
            self._add(p)

    def _add(self, p: Placement) -> None:
        if p.removed or not p.workload.spec.nics:
            return
        assert self._holders is not None
        wid = p.workload_id
        held = []
        for i, nic in enumerate(p.workload.spec.nics):
            mac = mac_for(wid, i)
            self._macs[mac] = wid
            if nic.ip is None:
                continue
            text, number = core.key(nic.ip)
            self._holders[text] = wid
            self._ints[number] = wid
            held.append((text, number, mac))
        self._by_wid[wid] = (p.workload.spec.nics, tuple(held))

    def in_use(self, network: str) -> list[dict[str, Any]]:
        """What holds an address on ``network``, each row with its ``state``: live
        placements (``placed``), nodes (``node``), then what this node's own votes
        still hold for: a removed workload whose owner has not torn it down yet
        (``removed``: an owner cut off from the mesh may still run it) or a holder its
        view does not know (``claimed``: a submission under way, or one that failed
        before its release reached this node; freed after ``grant_ttl_s``)."""
        rows: list[dict[str, Any]] = []
        view = self._view()
        for p in sorted(view.values(), key=lambda p: (p.name, p.workload_id)):
            if p.removed:
                continue
            for i, nic in enumerate(p.spec.nics):
                if nic.network == network and nic.ip is not None:
                    rows.append(_row(p.workload_id, p.name, nic.ip, i, "placed"))
        nodes = self._roster_names()
        held: list[dict[str, Any]] = []
        for e in self.table.entries():
            if e.network != network:
                continue
            if e.holder.startswith(core.POOL_PREFIX):
                if core.node_holder(e.holder) in nodes:
                    held.append(_row(e.holder, None, e.address, None, "pool"))
                continue
            node = e.holder.removeprefix(core.NODE_PREFIX)
            if node != e.holder:
                if node in nodes:
                    rows.append(_row(e.holder, None, e.address, None, "node"))
                continue
            gone = view.get(e.holder)
            if gone is None:
                held.append(_row(e.holder, None, e.address, None, "claimed"))
            elif gone.removed:
                nics = gone.spec.nics
                index = next((i for i, n in enumerate(nics) if n.ip == e.address), None)
                held.append(_row(e.holder, gone.name, e.address, index, "removed"))
        return rows + sorted(held, key=lambda r: (r["state"], r["ip"]))

    def _describe(self, holder: str) -> str:
        p = self._view().get(holder)
        if p is not None and not p.removed:
            return f"workload {p.name} ({holder})"
        return core.holder_text(holder)

    # -- the claimer's side --------------------------------------------------------------

    def lend(self, workload_id: str, spec: WorkloadSpec) -> WorkloadSpec | None:
        """``spec`` with every NIC's address lent from this node's pools (no message, no
        write: the auction's round record carries them), or None if the pools can't
        serve every NIC (then :meth:`assign` claims them). Raises as :meth:`assign`
        does for a request that is wrong whoever serves it."""
        if not spec.nics:
            return spec
        self._checked(workload_id, spec)
        return self.pools.lend(workload_id, spec)

    def returned(self, workload_id: str, spec: WorkloadSpec) -> None:
        """The auction of a spec :meth:`lend` gave could not start: its addresses go
        straight back to the pool (nothing left this node with them)."""
        self.pools.returned(workload_id, spec)

    def _checked(
        self, workload_id: str, spec: WorkloadSpec
    ) -> list[tuple[Network, Address | None]]:
        """Each NIC's network and fixed address, checked (4xx errors, one sentence)."""
        nets = [self._network(nic.network) for nic in spec.nics]
        fixed = [
            None if nic.ip is None else core.check_fixed(net, nic.ip)
            for nic, net in zip(spec.nics, nets, strict=True)
        ]
        asked = [str(a) for a in fixed if a is not None]
        if len(set(asked)) != len(asked):
            raise AddressError("two NICs ask for the same address: give each its own")
        self._check_macs(workload_id, len(spec.nics))
        return list(zip(nets, fixed, strict=True))

    async def assign(self, workload_id: str, spec: WorkloadSpec) -> WorkloadSpec:
        """``spec`` with every NIC's address fixed by a majority of the roster.

        Raises (4xx, one sentence): an unknown network (404), a fixed address outside
        its subnet or reserved (400), taken, a full pool, no majority (409). Addresses
        won for earlier NICs are released when a later one fails."""
        if not spec.nics:
            return spec
        checked = self._checked(workload_id, spec)
        nets = [net for net, _ in checked]
        fixed = [ip for _, ip in checked]
        won: list[Address] = []
        try:
            for net, ip in zip(nets, fixed, strict=True):
                won.append(await self._claim(workload_id, net, ip, {int(a) for a in won}))
        except (MeshdError, asyncio.CancelledError) as exc:
            self._release(workload_id, [str(a) for a in won])
            self._low.clear()  # those may be free again
            if isinstance(exc, NetworkFullError):
                for net in nets:
                    self.pools.give_back_free(net.name, "a claim found the network full")
            raise
        self.pools.assigned.inc(len(won), source="claim")
        nics = tuple(Nic(nic.network, str(a)) for nic, a in zip(spec.nics, won, strict=True))
        return msgspec.structs.replace(spec, nics=nics)

    def release(self, workload_id: str, spec: WorkloadSpec) -> None:
        """The submission failed after ``assign`` or ``lend``: free its grants (those no
        placement backs) on every voter now, rather than after ``grant_ttl_s``. Lent
        addresses stay lent: the pool takes them back by its own rules."""
        ips = [nic.ip for nic in spec.nics if nic.ip is not None]
        self._release(workload_id, [ip for ip in ips if self.pools.holder_of(ip) is None])
        self._low.clear()  # those may be free again

    async def node_address(self, network: str) -> Address:
        """This node's own address on ``network`` (holder ``node:NAME``), claimed once
        and kept across restarts."""
        holder = core.NODE_PREFIX + self.name
        key = f"node-address:{network}"
        known = self.ctx.store.get_meta(key)
        net = self._network(network)
        if known and ipaddress.ip_address(known) in net.subnet:
            return ipaddress.ip_address(known)
        # None yet, or one from a removed network of this name with another subnet.
        address = await self._claim(holder, net, None, set())
        self.ctx.store.set_meta(key, str(address))
        return address

    def _network(self, name: str) -> Network:
        try:
            return self.networks.get(name)
        except NotFoundError:
            raise NotFoundError(
                f"no network named {name}: `meshd network ls` lists them, "
                f"`meshd network create {name} --subnet CIDR` defines it"
            ) from None

    def _check_macs(self, workload_id: str, count: int) -> None:
        self.in_view()
        for i in range(count):
            other = self._macs.get(mac_for(workload_id, i))
            if other is not None and other != workload_id:
                p = self._view().get(other)
                name = p.name if p is not None else other
                raise AddressConflictError(
                    f"the MAC address derived for this workload collides with workload "
                    f"{name} ({other}): submit it again (it gets a new id)"
                )

    def _taken(self) -> _AnyOf:
        self.in_view()
        return _AnyOf(self.table.address_ints(), self._ints, self.pools.ints())

    async def _claim(
        self,
        holder: str,
        net: Network,
        fixed: Address | None,
        also_taken: set[int],
        block: bool = False,
    ) -> Address:
        """An address (``block``: the first address of a whole block) for ``holder``."""
        cfg = self.ctx.cfg.addresses
        loop = asyncio.get_running_loop()
        if fixed is None:
            # Not what this node's other claims are trying right now either: concurrent
            # submissions through one node would otherwise draw the same candidates.
            trying = {
                n
                for c, _ in self._claims.values()
                if c.current
                for n in core.claim_numbers(c.current.address)
            }
            taken = _AnyOf(self._taken(), also_taken, trying)
            if block:
                pool = core.block_candidates(net, taken, self._rng, cfg.attempts)
            else:
                pool, self._low[net.name] = core.candidates(
                    net, taken, self._rng, cfg.window, self._low.get(net.name, 0), cfg.attempts
                )
        else:
            pool = [fixed]
        pool_low = min((int(a) for a in pool), default=0)  # the claimer pops what it tries
        claimer = Claimer(
            uuid.UUID(int=self._rng.getrandbits(128)).hex[:16],
            net,
            holder,
            self._voters(),
            pool,
            fixed is not None,
            # A block gets one candidate per holder, so that a voter that kept a lost one
            # (its Release lost) holds it for a holder its node can disown.
            1 if fixed is not None or block else cfg.attempts,
            cfg.claim_timeout_s,
            self._describe,
            block=block,
        )
        event = asyncio.Event()
        self._claims[claimer.claim_prefix] = (claimer, event)
        try:
            # While other submissions or claims of ours are in flight, a new claim waits
            # (addresses.batch_linger_s) to leave with those that come close behind it:
            # one datagram each way and one grant transaction per voter for all of them.
            linger = cfg.batch_linger_s if self.busy() or len(self._claims) > 1 else 0.0
            self._broadcast(claimer, claimer.begin(loop.time()), linger)
            # Voters silent a quarter of claim_timeout_s after an attempt (or its last
            # resend) left get it again; a reply that does not end the attempt resends
            # nothing.
            step = cfg.claim_timeout_s / RESENDS
            attempt, resend_at = "", 0.0
            while not claimer.done:
                cur = claimer.current
                if cur is not None and cur.claim != attempt:  # a new attempt left
                    attempt = cur.claim
                    resend_at = claimer.deadline - cfg.claim_timeout_s + step + linger
                event.clear()
                wait = resend_at - loop.time()
                if wait > TIME_EPS:  # (a float a hair short of resend_at: due now)
                    # (asyncio.timeout, not wait_for: wait_for on 3.11 drops a cancel
                    # that comes as the event is set, and the claim runs on.)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await event.wait()
                now = loop.time()
                moved = claimer.tick(now)
                if moved is not None:
                    self._broadcast(claimer, moved)
                elif claimer.current is not None and now >= resend_at - TIME_EPS:
                    self.claims.inc(kind="resend")
                    resend_at = now + step
                    self._asked.pop(claimer.claim_prefix, None)  # every voter asked now
                    for name in claimer.silent():
                        self._send(name, claimer.current)
        except asyncio.CancelledError:
            if not self._stopped and claimer.current is not None:
                # The client went away mid-attempt: give back what the voters may have
                # granted it now, rather than after grant_ttl_s.
                self._release(holder, [*claimer.lost, claimer.current.address])
            raise
        finally:
            self._claims.pop(claimer.claim_prefix, None)
            self._asked.pop(claimer.claim_prefix, None)
            # Kept a while, so a grant that arrives after the claim ended is given back.
            self._ended[claimer.claim_prefix] = claimer
            while len(self._ended) > ENDED_KEEP:
                self._ended.popitem(last=False)
        self._release(holder, claimer.lost)
        gave_up = claimer.won is None or claimer.lost or claimer.tried > 1
        if gave_up and net.name in self._low and not block:
            # What it tried and gave up may be free: the walk starts at or below it. (Below
            # the pool's lowest, every address was taken or tried when it was drawn.)
            self._low[net.name] = min(self._low[net.name], pool_low)
        if claimer.won is None:
            refusal = claimer.refusal or "the address claim failed"
            raise NetworkFullError(refusal) if claimer.full else AddressConflictError(refusal)
        logger.debug("address fixed holder=%s network=%s ip=%s", holder, net.name, claimer.won)
        return claimer.won

    def _broadcast(self, claimer: Claimer, claim: Claim | None, linger: float = 0.0) -> None:
        """Send a new attempt to a bare majority of the voters: this node and the live
        peers ranked first this second (so the claims that leave together go to the
        same ones, in one datagram each). The others are asked if one of those denies
        or abstains, or all at the first resend: a majority of grants is what wins,
        whoever gives them. A node's own address is claimed from every voter."""
        if claim is None:
            return
        self.claims.inc(kind="attempt")
        live = self.mesh.live_names()
        need = majority(len(claimer.voters))
        slot = int(asyncio.get_running_loop().time())
        ranked = sorted(
            (v for v in claimer.voters if v in live),
            key=lambda v: (v != self.name, zlib.crc32(f"{v}:{slot}".encode())),
        )
        # A node's own address goes to every voter: each lists it (`network show`).
        bare = len(ranked) >= need and not claimer.holder.startswith(core.NODE_PREFIX)
        asked = set(ranked[:need]) if bare else set(claimer.voters)
        self._asked[claimer.claim_prefix] = (claim.claim, asked)
        for name in sorted(asked):
            self._send(name, claim, linger)

    def _widen(self, claimer: Claimer) -> None:
        """Ask the voters the current attempt has not asked yet (one of those asked
        denied or abstained: a majority may need them)."""
        cur = claimer.current
        held = self._asked.get(claimer.claim_prefix)
        if cur is None or held is None or held[0] != cur.claim:
            return
        rest = claimer.voters - held[1]
        self._asked[claimer.claim_prefix] = (cur.claim, set(claimer.voters))
        for name in sorted(rest):
            self._send(name, cur)

    def _release(self, holder: str, addresses: list[str]) -> None:
        if not addresses:
            return
        for name in sorted(self._voters()):
            for address in addresses:
                self._send(name, Release(address, holder))

    def _send(self, to: str, msg: Msg, linger: float = 0.0) -> None:
        """Queue ``msg`` for ``to``: what leaves together leaves as one signed bundle (as
        the auction's outbox does), within ``linger`` seconds (0: at the end of this loop
        turn); a member's messages leave when its earliest is due. This node's own
        messages take the same road, so its votes on claims that leave together are
        written in one transaction too."""
        self._outbox.setdefault(to, []).append(msg)
        loop = asyncio.get_running_loop()
        due = loop.time() + linger
        if due < self._due.get(to, math.inf):
            self._due[to] = due
        if self._flush_at is not None and due >= self._flush_due:
            return
        if self._flush_at is not None:
            self._flush_at.cancel()
        self._flush_due = due
        self._flush_at = (
            loop.call_later(linger, self._flush) if linger else loop.call_soon(self._flush)
        )

    def _flush(self) -> None:
        self._flush_at = None
        now = asyncio.get_running_loop().time()
        ready = [to for to, due in self._due.items() if due <= now + TIME_EPS]
        for to in ready:
            del self._due[to]
            msgs = self._outbox.pop(to)
            if to == self.name:
                for msg in msgs:
                    self._on_msg(msg, self.name)
                continue
            for body in core.encode_all(msgs):
                self.mesh.send_datagram(Channel.ADDRESSES, to, self.mesh.sign(KIND, body))
        if self._due and self._flush_at is None:
            self._flush_due = min(self._due.values())
            self._flush_at = asyncio.get_running_loop().call_at(self._flush_due, self._flush)

    def _on_bundle(self, msgs: list[Msg], author: str) -> None:
        for msg in msgs:
            self._on_msg(msg, author)

    # -- the voter's side -----------------------------------------------------------------

    def _on_msg(self, msg: Msg, author: str) -> None:
        if self._stopped:
            return
        try:
            if isinstance(msg, Claim):
                self._vote(msg, author)
            elif isinstance(msg, Grant | Deny):
                prefix = msg.claim.rpartition(".")[0]
                held = self._claims.get(prefix)
                of = held[0] if held is not None else self._ended.get(prefix)
                back = None if of is None else of.late(author, msg)
                if back is not None:  # a grant for an attempt given up: give it back
                    self._send(author, back)
                elif held is not None:
                    claimer, event = held
                    moved = claimer.receive(author, msg, asyncio.get_running_loop().time())
                    if moved is not None:
                        self._broadcast(claimer, moved)
                    elif isinstance(msg, Deny):
                        self._widen(claimer)
                    event.set()
            elif isinstance(msg, Abstain):
                self._on_abstain(author)
                held = self._claims.get(msg.claim.rpartition(".")[0])
                if held is not None:
                    self._widen(held[0])
            elif isinstance(msg, TornDown):
                self._on_torn_down(msg.holder, author)
            elif isinstance(msg, Ask):
                if core.node_holder(msg.holder) is not None:
                    # About one of our pools' blocks: say so if it is not ours any more.
                    mine = core.node_holder(msg.holder) == self.name
                    pool = msg.holder.startswith(core.POOL_PREFIX)
                    if mine and pool and self.pools.disowns(msg.holder):
                        self._send(author, TornDown(msg.holder))
                elif not self.holds(msg.holder):
                    self._send(author, TornDown(msg.holder))
            else:
                self._on_release(msg, author)
        except (EnvelopeError, ValueError) as exc:
            self.dropped.inc(reason="invalid")
            logger.debug("dropped an address message from=%s error=%s", author, exc)

    def _vote(self, claim: Claim, author: str) -> None:
        node = core.node_holder(claim.holder)
        mine = node == author if node is not None else not claim.holder.startswith(core.POOL_PREFIX)
        if not mine:
            raise EnvelopeError("a node claims an address only for itself")
        if ("/" in claim.address) != claim.holder.startswith(core.POOL_PREFIX):
            raise EnvelopeError("a node's pool claims blocks of addresses, and only it does")
        if not self._synced():
            self.dropped.inc(reason="not-synced")
            self._send(author, Abstain(claim.claim))
            return
        decision = self.table.decide(claim, self.ctx.clock(), self.in_view())
        if not isinstance(decision, Entry):
            self._send(author, decision)
            return
        grant = Grant(claim.claim, decision.address)
        held = self.table.get(decision.address)
        if held is not None and held.holder == decision.holder:
            if any(e.address == decision.address for e, _, _ in self._unwritten):
                self._unwritten.append((decision, held, (author, grant)))  # after the write
            else:
                self._send(author, grant)  # on disk already: a repeated claim
            return
        # Held in memory at once, so the next claim this turn sees it; written with the
        # turn's other grants in one durable transaction, and only then answered.
        self.table.put(decision)
        self._unwritten.append((decision, held, (author, grant)))
        if len(self._unwritten) == 1:
            asyncio.get_running_loop().call_soon(self._write_grants)

    def _write_grants(self) -> None:
        batch, self._unwritten = self._unwritten, []
        if not batch or self._stopped:
            return
        try:
            with self.ctx.store.transaction():
                for entry, _, _ in batch:
                    address_grants.save(self.ctx.store, entry)
        except StoreError as exc:
            # An unrecorded grant is no grant: say nothing, the claimers move on.
            logger.error("address grants not given, they could not be written: %s", exc)
            for entry, before, _ in reversed(batch):
                if before is None:
                    self.table.drop(entry.address)
                else:
                    self.table.put(before)
            return
        self.granted.inc(len(batch))
        for _, _, (author, grant) in batch:
            self._send(author, grant)

    def _on_abstain(self, voter: str) -> None:
        """``voter`` has not compared views with anyone yet: offer it ours (at most once
        a second per voter), so it can vote on the claim's next resend."""
        now = asyncio.get_running_loop().time()
        if voter != self.name and now - self._nudged.get(voter, -1e9) >= 1.0:
            self._nudged[voter] = now
            self._nudge(voter)

    def _on_release(self, release: Release, author: str) -> None:
        node = core.node_holder(release.holder)
        if node is not None and node != author:
            raise EnvelopeError("a node gives back only its own addresses")
        if node is None and self.state_of(release.holder) == "running":
            return  # a removed workload its owner may still run keeps its address
        if self.table.releasable(release, self.in_view()):
            self._free([core.canonical(release.address)], "released")

    def _free(self, addresses: list[str], reason: str, keep: list[Entry] | None = None) -> None:
        """Free ``addresses`` (one transaction), writing ``keep`` in their place."""
        try:
            with self.ctx.store.transaction():
                address_grants.drop(self.ctx.store, addresses)
                for entry in keep or ():
                    address_grants.save(self.ctx.store, entry)
        except StoreError as exc:
            logger.warning("freeing addresses failed (kept for now): %s", exc)
            return
        for a in addresses:
            self.table.drop(a)
        for entry in keep or ():
            self.table.put(entry)
        self._low.clear()
        self.freed.inc(len(addresses), reason=reason)
        logger.debug("addresses freed reason=%s count=%d", reason, len(addresses))

    # -- removed workloads: their addresses once nothing can run them -------------------

    def _runs_nowhere(self, tombstone: Placement, roster_names: Container[str]) -> bool:
        wid = tombstone.workload_id
        owner = tombstone.owner or None
        torn_by = self._torn.get(wid)
        if owner == self.name and not self.holds(wid):
            torn_by = owner  # our own runner's word (kept across a restart of ours)
        return core.runs_nowhere(
            owner,
            roster_names,
            torn_by,
            owner is not None and owner != self.name and self.fenced(owner),
        )

    def _roster_names(self) -> set[str]:
        """Every enrolled member's name (witnesses too), read from the store."""
        return {m.name for m in roster.members(self.ctx.store)}

    def _on_gone(self, event: WorkloadGone) -> None:
        """The runner destroyed a workload here: if it was removed with addresses, tell
        every voter (this one too) that nothing of it runs here any more."""
        tomb = self._view().get(event.workload_id)
        if tomb is None or not tomb.removed or tomb.owner != self.name or not tomb.spec.nics:
            return
        for name in sorted(self._voters()):
            self._send(name, TornDown(event.workload_id))

    def _on_torn_down(self, holder: str, author: str) -> None:
        if holder.startswith(core.POOL_PREFIX):
            # The pool's node says the block is not its own (a lost Release, a crash
            # before it wrote the block down): only its word counts.
            if core.node_holder(holder) == author:
                self._disown(holder)
            return
        tomb = self._view().get(holder)
        if tomb is None or not tomb.removed or tomb.owner != author:
            return  # only the last owner of a removed workload has a say (or not yet seen)
        self._torn[holder] = author
        while len(self._torn) > TORN_KEEP:
            self._torn.popitem(last=False)  # forgotten: the sweep asks again
        self._free_soon(tomb)

    def _free_soon(self, tombstone: Placement) -> None:
        """Free a removed workload's grants as soon as nothing can run it (its tombstone
        with its owner's word, or its owner fenced or gone from the roster), rather than
        at the next sweep: a claim of one of its addresses made meanwhile would be denied
        here. The sweep stays the backstop, and asks owners whose word is missing."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a core rebuild at start): the sweep frees them
        try:
            ips = tuple(core.canonical(n.ip) for n in tombstone.spec.nics if n.ip is not None)
        except ValueError:
            return  # not an address: nothing of it can be granted here
        if not ips:
            return
        if not self._tombstoned:
            loop.call_soon(self._free_tombstoned)
        self._tombstoned[tombstone.workload_id] = ips

    def _free_tombstoned(self) -> None:
        pending, self._tombstoned = self._tombstoned, {}
        if self._stopped:
            return
        free = []
        names = self._roster_names()
        view = self._view()
        for wid, ips in pending.items():
            tomb = view.get(wid)
            if tomb is None or not tomb.removed or not self._runs_nowhere(tomb, names):
                continue  # its owner may still run it: its TornDown (or the sweep) frees it
            for ip in ips:
                entry = self.table.get(ip)
                if entry is not None and entry.holder == wid:
                    free.append(ip)
        if free:
            self._free(free, "removed")

    def sweep(self) -> None:
        """Free the grants tombstones, the roster and age say to free (see the core)."""
        names = self._roster_names()
        removed, waiting = set(), set()
        holders = {e.holder for e in self.table.entries()}
        for p in self._removed():
            wid = p.workload_id
            if wid not in holders:
                continue
            if self._runs_nowhere(p, names):
                removed.add(wid)
                continue
            waiting.add(wid)
            if p.owner != self.name:
                self._send(p.owner, Ask(wid))  # its TornDown may have been lost
        voters = self._voters()
        live = voters & set(self.mesh.live_names())
        ttl = self.ctx.cfg.addresses.grant_ttl_s
        if len(live) < majority(len(voters)) or not self._synced():
            ttl = float("inf")  # a stale view must not free what a placement may back
        backed = self.in_view()
        now = self.ctx.clock()
        free = self.table.sweep(now, ttl, backed, removed, names, waiting)
        if free:
            self._free([e.address for e in free], "sweep", self._still_running(free, names, now))
        self._ask_pools(now, live)
        # (ttl: lent addresses whose workload this view does not know wait for it.)
        self.pools.settle(ttl)

    def _still_running(self, freed: list[Entry], names: Container[str], now: float) -> list[Entry]:
        """Grants to write in place of freed blocks (their node left the roster): one for
        each address of theirs a removed workload's owner may still run. A lent address
        has no grant of its own; the block was what kept it from being granted again."""
        firsts = {
            (b.version, b.first)
            for b in (core.block_of(e.address) for e in freed if "/" in e.address)
        }
        if not firsts:
            return []
        keep = []
        for address, (wid, network) in self._may_still_run(names).items():
            ip = ipaddress.ip_address(address)
            if (ip.version, int(ip) & ~(core.BLOCK_SIZE - 1)) in firsts:
                keep.append(Entry(address, network, wid, now))
        return keep

    def _disown(self, holder: str) -> None:
        """Free a pool block its node says it does not hold (keeping what a removed
        workload's owner may still run, as when the node leaves the roster)."""
        gone = self.table.pool_entries(holder)
        if gone:
            keep = self._still_running(gone, self._roster_names(), self.ctx.clock())
            self._free([e.address for e in gone], "disowned", keep)

    def _ask_pools(self, now: float, live: Container[str]) -> None:
        """Ask each live node about its pools' blocks granted here longer than
        ``grant_ttl_s`` ago (at most every ``POOL_ASK_S``): a block whose node does not
        know it (its Release lost, a crash before it wrote the block down) is freed on
        the node's word (``TornDown``)."""
        ttl = self.ctx.cfg.addresses.grant_ttl_s
        holders = self.table.pool_holders()
        for h in [h for h in self._pool_asked if h not in holders]:
            del self._pool_asked[h]  # freed since
        for holder in sorted(holders):
            node = core.node_holder(holder)
            granted = min(e.granted_at for e in self.table.pool_entries(holder))
            if node is None or now - granted <= ttl:
                continue
            if now - self._pool_asked.get(holder, -1e18) < POOL_ASK_S:
                continue
            if node == self.name:
                if self.pools.disowns(holder):
                    self._disown(holder)
            elif node in live:
                self._pool_asked[holder] = now
                self._send(node, Ask(holder))

    async def _sweep_periodically(self) -> None:
        while not self._stopped:
            await asyncio.sleep(self.ctx.cfg.addresses.sweep_s)
            try:
                self.sweep()
            except MeshdError as exc:
                logger.warning("sweeping address grants failed: %s", exc)
            except Exception:  # a bug must not end the sweep for good
                logger.exception("sweeping address grants failed")
