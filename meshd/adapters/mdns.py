"""mDNS discovery: announce ``_meshd._udp.local.`` and join the mesh members we hear.

mDNS only *finds* peers; it never decides liveness (a SIGKILLed node stays listed for
tens of seconds, see LAB-NOTES). Joining what we find goes through the membership
protocol, whose datagrams are sealed and signed, so a fake announcement can at worst
make us send a few datagrams nobody answers.

Still, we only act on announcements from this mesh: the TXT record carries a tag,
``HMAC-SHA256(mesh secret, name | host:port)`` truncated to 128 bits. Outsiders can't
make one, and a replayed announcement can't point at another address. The tag says
nothing about the mesh to outsiders beyond "some meshd is here".

zeroconf is bound to the one interface holding the configured address, IPv4 only, so
nothing is multicast on other networks. It is imported when discovery starts: a node
without ``--mdns`` never loads it (~4 MiB of RSS and ~30 ms of start-up with ctypes
and ifaddr).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import psutil

from meshd.errors import DiscoveryError

if TYPE_CHECKING:
    from zeroconf import ServiceStateChange, Zeroconf
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

logger = logging.getLogger(__name__)

SERVICE_TYPE = "_meshd._udp.local."
Addr = tuple[str, int]


def tag(secret: bytes, name: str, host: str, port: int) -> str:
    msg = f"meshd-mdns-v1\x00{name}\x00{host}:{port}".encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()[:32]


def check_interface_address(addr: str) -> None:
    """Refuse an --mdns address no local interface holds (we'd multicast nowhere)."""
    try:
        ipaddress.IPv4Address(addr)
    except ValueError as exc:
        raise DiscoveryError(f"--mdns needs an IPv4 address of this host, got {addr!r}") from exc
    for addrs in psutil.net_if_addrs().values():
        if any(a.family == socket.AF_INET and a.address == addr for a in addrs):
            return
    raise DiscoveryError(f"no network interface on this host holds {addr}; check --mdns")


class MdnsDiscovery:
    def __init__(
        self,
        interface_addr: str,
        name: str,
        node_id: str,
        secret: bytes,
        announce: Addr,
        on_found: Callable[[str, Addr], None],
        cooperating: bool = False,
    ) -> None:
        self._iface = interface_addr
        self._name = name
        self._secret = secret
        self._announce = announce
        self._on_found = on_found
        self._cooperating = cooperating
        self._instance = f"{name}-{node_id[:12]}.{SERVICE_TYPE}"
        self._azc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.found: dict[str, Addr] = {}
        self.rejected = 0

    async def start(self) -> None:
        from zeroconf import IPVersion  # noqa: PLC0415 - only nodes with --mdns load zeroconf
        from zeroconf.asyncio import (  # noqa: PLC0415
            AsyncServiceBrowser,
            AsyncServiceInfo,
            AsyncZeroconf,
        )

        check_interface_address(self._iface)
        host, port = self._announce
        self._azc = AsyncZeroconf(interfaces=[self._iface], ip_version=IPVersion.V4Only)
        self._info = AsyncServiceInfo(
            SERVICE_TYPE,
            self._instance,
            addresses=[socket.inet_aton(host)],
            port=port,
            properties={"v": "1", "n": self._name, "t": tag(self._secret, self._name, host, port)},
            server=f"{self._instance.split('.')[0]}.local.",
        )
        # Probing (RFC 6762 §8.1) costs ~1.2 s but guards against name clashes; the
        # instance name embeds the node id, so tests may skip it (cooperating=True).
        registered = await self._azc.async_register_service(
            self._info, cooperating_responders=self._cooperating
        )
        await registered
        self._browser = AsyncServiceBrowser(
            self._azc.zeroconf, SERVICE_TYPE, handlers=[self._on_change]
        )
        logger.info(
            "mdns announcing instance=%s interface=%s address=%s:%s",
            self._instance,
            self._iface,
            host,
            port,
        )

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        if self._azc is not None:
            if self._info is not None:
                # Awaiting the returned task is what sends the goodbye packets.
                await (await self._azc.async_unregister_service(self._info))
            await self._azc.async_close()
            self._azc = None

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        from zeroconf import ServiceStateChange  # noqa: PLC0415 - loaded by start()

        if state_change is ServiceStateChange.Removed or name == self._instance:
            return
        task = asyncio.get_running_loop().create_task(self._resolve(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, instance: str) -> None:
        from zeroconf import IPVersion  # noqa: PLC0415 - loaded by start()

        if self._azc is None:
            return
        info = await self._azc.async_get_service_info(SERVICE_TYPE, instance, timeout=3000)
        if info is None or info.port is None:
            return
        props = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
        peer_name = props.get("n", "")
        for host in info.parsed_addresses(IPVersion.V4Only):
            expected = tag(self._secret, peer_name, host, info.port)
            if hmac.compare_digest(expected, props.get("t", "")):
                addr = (host, info.port)
                if self.found.get(peer_name) != addr:
                    self.found[peer_name] = addr
                    logger.info("mdns found member name=%s address=%s:%s", peer_name, *addr)
                    self._on_found(peer_name, addr)
                return
        self.rejected += 1
        logger.info("mdns ignored an announcement from another mesh instance=%s", instance)
