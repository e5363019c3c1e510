"""Guests' networking on this node: bridges, taps, DHCP, metadata (issue 13, items 3-5).

Theory of operation
-------------------
A workload's NICs come with their addresses fixed in the spec (the originator's
allocator did it before the auction), so everything here follows from the spec and the
network records (:mod:`meshd.core.guest_net`):

* before the driver starts a workload, :meth:`GuestNetworks.attach` makes sure each
  NIC's network is set up here (its bridge exists, or is created with
  ``[guests] create_bridges``; a fixed bridge MAC; this node's own address on the
  network, from the allocator, and 169.254.169.254/32 on the bridge; the nftables guard;
  ``bridge-nf-call-*`` off; one dnsmasq per bridge), then adds the NIC's tap to the
  bridge and its ``MAC,IP,hostname`` to that dnsmasq's hosts file (SIGHUP), and
  announces the NIC's (IP, MAC) on the bridge (gratuitous ARP or unsolicited NA,
  ``[guests] announce_count`` times): a peer still holding the address at an old MAC
  (a reused address) replaces it at once, instead of after its entry ages out (~30 s),
  and switches learn where a moved guest now is.
  A tap that already exists is left alone: a meshd that restarts reattaches without
  touching its running guests.
* when the workload stops or is destroyed, :meth:`detach` removes its lines, frees
  their leases (``dhcp_release``) and deletes its taps.
* the metadata server on 169.254.169.254 answers a request only if its source address
  is a NIC of a guest attached here, the MAC the bridge's neighbour table has for that
  address is that NIC's, and the bridge learnt that MAC on that NIC's own tap: a guest
  that spoofs another's address (or address and MAC) gets 403, as does anything else.
* ``network:NAME`` is offered in bids while this node can attach NAME (its bridge
  exists, or it may create it); checked every ``[guests] check_interval_s``, so the
  auctioneer's capabilities follow networks as they come and go.
* with ``[guests] prepare`` (the default) a network whose bridge exists here is set up
  as soon as it is offered, so the first guest on it starts as fast as the next
  (setting up costs ~0.3 s, most of it dnsmasq binding); a failure is logged once and
  tried again every check. A bridge meshd would create (``create_bridges``) is made with
  the first guest that needs it: a blade allowed to create bridges offers every network,
  and setting them all up would take an address from each pool for nothing. A
  network set up here and no longer offered (removed, or its bridge gone) with no guest
  of ours on it is wound down: its dnsmasq stops (the bridge, the node's address on it
  and the guard stay: an operator's bridge is the operator's).

The node's own address on a network comes from the address allocator (branch
h13-addr) through :class:`NodeAddresses`; the tests give a fixed one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import msgspec

from meshd.adapters import host_net
from meshd.adapters.announcer import Announcer
from meshd.adapters.dnsmasq import Dnsmasq
from meshd.adapters.metadata_http import MetadataServer
from meshd.config import GuestsConfig
from meshd.core import guest_net
from meshd.core.guest_net import GuestFacts, GuestNic, HostEntry
from meshd.core.network import Address, Network
from meshd.core.spec import WorkloadSpec
from meshd.errors import DriverError, MeshdError

logger = logging.getLogger(__name__)
NetworkLookup = Callable[[str], Network | None]
# Drivers whose guests sit behind taps; for the others (process, fake) a NIC is only
# its address: nothing to set up on the host.
TAP_DRIVERS = frozenset({"qemu", "firecracker"})


class NodeAddresses(Protocol):
    """This node's own address on a network (the allocator's ``node_address``)."""

    async def node_address(self, network: str) -> Address: ...


@dataclass
class _Guest:
    wid: str
    name: str
    spec: WorkloadSpec
    nics: list[GuestNic]


@dataclass
class _Segment:
    net: Network
    node_ip: Address
    dnsmasq: Dnsmasq | None


def _no_networks(_: str) -> Network | None:
    return None


def _same(a: Network, b: Network) -> bool:
    """The same segment setup (a record re-signed with the same fields changes nothing)."""
    return (a.subnet, a.gateway, a.bridge, a.vlan, a.dns) == (
        b.subnet,
        b.gateway,
        b.bridge,
        b.vlan,
        b.dns,
    )


class GuestNetworks:
    def __init__(
        self,
        cfg: GuestsConfig,
        workdir: Path,
        node: str,
        domain: str,
        sign: guest_net.Signer,
        addresses: NodeAddresses | None,
    ) -> None:
        self.cfg = cfg
        self.dir = workdir
        self.node, self.domain, self.sign = node, domain, sign
        self.addresses = addresses
        self.lookup: NetworkLookup = _no_networks
        self.names: Callable[[], list[Network]] = list
        self.on_offers: Callable[[frozenset[str]], None] = lambda _: None
        self._guests: dict[str, _Guest] = {}
        self._segments: dict[str, _Segment] = {}  # network name -> what is set up here
        self._lock = asyncio.Lock()
        self._offers: frozenset[str] = frozenset()
        self._uplinks: list[str] | None = None  # as the loaded guard lists them
        self.metadata: MetadataServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._unprepared: dict[str, str] = {}  # network -> why it is not set up yet
        self.announcer = Announcer(cfg.announce_count, cfg.announce_interval_s)

    # -- life cycle ---------------------------------------------------------------------

    def use_networks(self, lookup: NetworkLookup, every: Callable[[], list[Network]]) -> None:
        self.lookup, self.names = lookup, every

    async def start(self) -> None:
        """Follow which networks this node can attach, and set them up (module doc;
        a node with no network to attach binds nothing)."""
        self.refresh_offers()
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def _start_metadata(self) -> None:
        """Serve metadata; if the port is taken, say so and go on (the guests still get
        their addresses; the next network set up here tries again)."""
        server = MetadataServer(self.identify, self.sign, self.cfg.metadata_port)
        try:
            await server.start()
        except OSError as exc:
            await server.stop()
            logger.error(
                "cannot serve metadata on 169.254.169.254:%s (%s): free the port, or set "
                "[guests] metadata = false",
                self.cfg.metadata_port,
                exc,
            )
            return
        self.metadata = server

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        await self.announcer.close()
        if self.metadata is not None:
            await self.metadata.stop()
            self.metadata = None
        for seg in self._segments.values():
            if seg.dnsmasq is not None:
                await seg.dnsmasq.stop()
        self._segments.clear()

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.check_interval_s)
            self.refresh_offers()
            try:
                if self.cfg.prepare:
                    await self._prepare_offered()
                if self._segments:
                    async with self._lock:
                        await self._wind_down()
                        await self._guard()
            except Exception:  # a bug here must not end the checks for good
                logger.exception("setting up or winding down guests' networks failed")

    async def _prepare_offered(self) -> None:
        """Set up every offered network not set up yet (module doc)."""
        for offer in sorted(self._offers):
            name = offer.removeprefix("network:")
            net = self.lookup(name)
            if name in self._segments or net is None or not host_net.bridge_exists(net.bridge):
                continue
            try:
                await self.prepare(name)
            except (DriverError, OSError, MeshdError) as exc:
                why = str(exc)
                if self._unprepared.get(name) != why:
                    logger.warning(
                        "network %s is not set up here yet (tried again every %s s): %s",
                        name,
                        self.cfg.check_interval_s,
                        why,
                    )
                self._unprepared[name] = why
            else:
                self._unprepared.pop(name, None)
                logger.info("network set up here name=%s", name)

    async def _wind_down(self) -> None:
        """Stop the DHCP of networks set up here, no longer offered, with no guest."""
        in_use = {n.network for g in self._guests.values() for n in g.nics}
        for name in list(self._segments):
            if f"network:{name}" in self._offers or name in in_use:
                continue
            seg = self._segments.pop(name)
            if seg.dnsmasq is not None:
                await seg.dnsmasq.stop()
            logger.info("network wound down here name=%s", name)

    async def _guard(self) -> None:
        """(Re)load the nftables guard if the uplinks of meshd's bridges changed (an
        operator may add one at any time); a failure is logged and tried again."""
        bridges = sorted({s.net.bridge for s in self._segments.values()})
        uplinks = host_net.uplinks_of(bridges)
        if uplinks == self._uplinks:
            return
        try:
            await host_net.apply_guard(uplinks, self.cfg.tool_timeout_s, self.dir)
        except (DriverError, OSError) as exc:
            logger.error("the guests' nftables guard is not loaded: %s", exc)
            return
        self._uplinks = uplinks

    def offers(self) -> frozenset[str]:
        """``network:NAME`` for each live network this node can attach."""
        out = set()
        for net in self.names():
            if not net.removed and (self.cfg.create_bridges or host_net.bridge_exists(net.bridge)):
                out.add(f"network:{net.name}")
        return frozenset(out)

    def refresh_offers(self) -> None:
        try:
            offers = self.offers()
        except Exception:  # a capability check must never stop the loop
            logger.exception("checking which networks this node can attach failed")
            return
        if offers != self._offers:
            self._offers = offers
            logger.info("networks offered=%s", ",".join(sorted(offers)) or "-")
            self.on_offers(offers)

    # -- attach and detach ------------------------------------------------------------------

    async def attach(self, wid: str, spec: WorkloadSpec) -> list[GuestNic]:
        """Set up every NIC of ``wid`` here before its driver starts it (DriverError:
        the sentence saying what is missing; what this call made is undone)."""
        if not spec.nics or spec.driver not in TAP_DRIVERS:
            return []
        try:
            nics = guest_net.nics_of(wid, spec)
        except ValueError as exc:
            raise DriverError(str(exc)) from exc
        async with self._lock:
            made: list[str] = []
            try:
                for nic in nics:
                    seg = await self._segment(nic.network)
                    if await host_net.tap_up(nic.tap, seg.net.bridge, self.cfg.tool_timeout_s):
                        made.append(nic.tap)
            except (DriverError, OSError, MeshdError) as exc:
                for tap in made:
                    await host_net.tap_down(tap, self.cfg.tool_timeout_s)
                if isinstance(exc, DriverError):
                    raise
                raise DriverError(f"cannot attach workload {wid}'s NICs: {exc}") from exc
            self._guests[wid] = _Guest(wid, spec.name, spec, nics)
            self._update_hosts({n.network for n in nics})
            for nic in nics:  # only our own guests' addresses, on their own bridges
                bridge = self._segments[nic.network].net.bridge
                self.announcer.start(wid, bridge, nic.ip, nic.mac)
        return nics

    async def detach(self, wid: str, spec: WorkloadSpec | None = None) -> None:
        """Remove ``wid``'s taps, DHCP lines and leases (idempotent)."""
        await self.announcer.forget(wid)  # its addresses are no longer ours to announce
        async with self._lock:
            guest = self._guests.pop(wid, None)
            if guest is None and spec is not None and spec.nics:
                try:
                    guest = _Guest(wid, spec.name, spec, guest_net.nics_of(wid, spec))
                except ValueError:
                    guest = None
            if guest is None:
                return
            self._update_hosts({n.network for n in guest.nics})
            for nic in guest.nics:
                seg = self._segments.get(nic.network)
                if seg is not None and seg.dnsmasq is not None:
                    await seg.dnsmasq.release(nic.ip, nic.mac)
                await host_net.tap_down(nic.tap, self.cfg.tool_timeout_s)

    async def prepare(self, network: str) -> None:
        """Set ``network`` up here now (bridge, address, guard, DHCP), before any NIC."""
        async with self._lock:
            await self._segment(network)

    def with_network_config(self, wid: str, spec: WorkloadSpec) -> WorkloadSpec:
        """``spec`` with a NoCloud network-config for its NICs (QEMU guests with NICs
        whose spec gives none; cloud-init then applies the same static addresses DHCP
        would hand out). Only for a guest cloud-init may run in: one that boots a disk
        image or is given user-data or meta-data. A kernel and initrd alone get no seed
        disk (building one costs a genisoimage run and the guest a disk to probe, for
        nothing to read it) and take their address from DHCP. Unchanged if a network is
        unknown here: attach says why."""
        if spec.driver != "qemu" or not spec.nics or spec.network_config is not None:
            return spec
        if spec.image is None and spec.user_data is None and spec.meta_data is None:
            return spec
        try:
            nics = guest_net.nics_of(wid, spec)
        except ValueError:
            return spec
        networks = {n.network: self.lookup(n.network) for n in nics}
        known = {k: v for k, v in networks.items() if v is not None}
        if len(known) != len(networks):
            return spec
        return msgspec.structs.replace(spec, network_config=guest_net.network_config(nics, known))

    def guest_address(self, wid: str) -> Address | None:
        """The address of ``wid``'s first NIC, if it has one here (services publish it)."""
        guest = self._guests.get(wid)
        return guest.nics[0].ip if guest and guest.nics else None

    async def _segment(self, network: str) -> _Segment:
        seg = self._segments.get(network)
        net = self.lookup(network)
        if net is None:
            raise DriverError(f"no network named {network} here: `meshd network ls` lists them")
        if seg is not None and _same(seg.net, net) and host_net.bridge_exists(net.bridge):
            return seg
        t = self.cfg.tool_timeout_s
        self.dir.mkdir(parents=True, exist_ok=True)
        host_net.bridge_nf_off()
        note = await host_net.ensure_bridge(
            net.bridge,
            guest_net.bridge_mac(self.node, net.name),
            self.cfg.create_bridges,
            self.cfg.uplink or None,
            net.vlan,
            t,
        )
        if note:
            logger.warning("network %s: %s", net.name, note)
        if self.addresses is None:
            raise DriverError(
                f"this node has no address on network {net.name}: no address allocator"
            )
        node_ip = await self.addresses.node_address(net.name)
        await host_net.ensure_address(net.bridge, node_ip, net.subnet.prefixlen, t)
        if self.cfg.metadata and self.metadata is None:
            await self._start_metadata()
        bridges = sorted({s.net.bridge for s in self._segments.values()} | {net.bridge})
        uplinks = host_net.uplinks_of(bridges)
        await host_net.apply_guard(uplinks, t, self.dir)
        self._uplinks = uplinks
        if seg is not None and seg.dnsmasq is not None:
            await seg.dnsmasq.stop()
        dns = None
        if self.cfg.dhcp and net.subnet.version == 4:
            dns = Dnsmasq(
                net.bridge,
                net,
                node_ip,
                self.dir / "dhcp",
                binary=self.cfg.dnsmasq,
                lease_s=self.cfg.lease_s,
                timeout_s=t,
                check_s=self.cfg.check_interval_s,
            )
            await dns.start(self._entries(net.name))
        seg = _Segment(net, node_ip, dns)
        self._segments[network] = seg
        return seg

    def _entries(self, network: str) -> list[HostEntry]:
        return [
            HostEntry(n.mac, n.ip, guest_net.hostname_of(g.name))
            for g in self._guests.values()
            for n in g.nics
            if n.network == network
        ]

    def _update_hosts(self, networks: set[str]) -> None:
        for network in networks:
            seg = self._segments.get(network)
            if seg is not None and seg.dnsmasq is not None:
                seg.dnsmasq.set_hosts(self._entries(network))

    # -- metadata -------------------------------------------------------------------------

    async def identify(self, source: str) -> GuestFacts | None:
        """The guest that sent a request from ``source``, proven by the bridge's
        neighbour table and fdb (see the module docstring); None: nobody of ours."""
        source = source.removeprefix("::ffff:")
        for guest in list(self._guests.values()):
            for nic in guest.nics:
                if str(nic.ip) != source:
                    continue
                seg = self._segments.get(nic.network)
                if seg is None:
                    return None
                macs = guest_net.macs_of_ip(host_net.arp_table(), nic.ip, seg.net.bridge)
                if macs != {nic.mac}:
                    logger.warning(
                        "metadata: %s answers as %s, not %s", source, sorted(macs), nic.mac
                    )
                    return None
                fdb, port_names = host_net.forwarding_table(seg.net.bridge)
                ports = guest_net.ports_of_mac(fdb, nic.mac, port_names)
                if ports != {nic.tap}:
                    logger.warning(
                        "metadata: %s (%s) is on ports %s, not %s",
                        source,
                        nic.mac,
                        sorted(ports),
                        nic.tap,
                    )
                    return None
                return GuestFacts(
                    instance_id=guest.wid,
                    name=guest.name,
                    node=self.node,
                    domain=self.domain,
                    hostname=guest_net.hostname_of(guest.name),
                    local_ip=nic.ip,
                    mac=nic.mac,
                    user_data=guest.spec.user_data,
                    public_keys=guest_net.public_keys_of(guest.spec.user_data),
                )
        return None
