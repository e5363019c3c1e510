"""The mesh UDP port: one socket, every datagram sealed, several protocols multiplexed.

Theory of operation
-------------------
A node has one UDP socket on its mesh port (the TCP API shares the port number).
Every datagram on it is sealed with the mesh's current key for the address it is sent
to (``meshd.core.envelope.Sealer``); the first byte of the sealed payload names the
channel (the DHT, membership, ...). A datagram that does not open — an outsider's, a
corrupt, a stale or a replayed one, one sealed for another node (a copy), one sealed
with a retired key — is dropped and counted by reason, never raised: bad input must
not disturb the loop. One sealed with a key this node lacks (the mesh rotated its key
while we were away) is dropped too, and reported to ``on_unknown_key`` so the node can
fetch the key from the sender over its authenticated channel.

Which addresses are "this node": the bound host, or with a wildcard bind every
address of the host's interfaces (re-read at most every few seconds when a datagram
names an address we don't know, so an address added later is picked up).

Protocols that expect an ``asyncio.DatagramTransport`` (rpcudp/kademlia) get a
:class:`ChannelTransport`, which looks like one but seals and tags what it sends.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from enum import IntEnum
from typing import Any, cast

import psutil

from meshd.core.envelope import Sealer, addressee
from meshd.core.keyring import KeyRing
from meshd.core.replay import ReplayGuard
from meshd.errors import EnvelopeError, MisaddressedError, ReplayError, UnknownKeyError
from meshd.metrics import Counter, Registry

logger = logging.getLogger(__name__)

Addr = tuple[str, int]
Handler = Callable[[bytes, Addr], None]
# Sealed datagrams are kept under the IPv4 UDP limit minus headers; kademlia caps
# its own payloads at ~8 KiB, membership at its configured size.
MAX_DATAGRAM = 65507
ADDRESS_REFRESH_S = 5.0  # at most this often, re-read the interfaces' addresses on a miss


def _interface_addresses() -> set[bytes]:
    out: set[bytes] = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            try:
                out.add(ipaddress.ip_address(a.address.split("%", 1)[0]).packed)
            except ValueError:
                continue  # a MAC address, or a family we don't speak
    return out


class Channel(IntEnum):
    DHT = 1
    MEMBERSHIP = 2
    AUCTION = 3
    FENCING = 4
    ADDRESSES = 5


class DatagramMux(asyncio.DatagramProtocol):
    def __init__(
        self,
        keys: KeyRing,
        guard: ReplayGuard,
        registry: Registry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self._sealer = Sealer(keys, guard, self._is_me)
        self._clock = clock
        self._handlers: dict[int, Handler] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._port = -1
        self._wildcard = True
        self._mine: set[bytes] = set()
        self._mine_read_at = -1e9
        # Called with the sender's address when a datagram names a key we lack.
        self.on_unknown_key: Callable[[Addr, bytes], None] | None = None
        reg = registry or Registry()
        self.dropped: Counter = reg.counter(
            "meshd_datagrams_dropped_total", "Datagrams dropped on the mesh port, by reason"
        )
        self.received: Counter = reg.counter(
            "meshd_datagrams_received_total", "Datagrams accepted, by channel"
        )
        self.sent: Counter = reg.counter("meshd_datagrams_sent_total", "Datagrams sent, by channel")
        self._last_warning = 0.0

    # -- set-up ----------------------------------------------------------------------

    async def bind(self, host: str, port: int) -> int:
        """Bind the UDP socket; returns the port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self._port = int(transport.get_extra_info("sockname")[1])
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None  # a host name: accept any of our addresses
        self._wildcard = ip is None or ip.is_unspecified
        if not self._wildcard:
            self._mine = {addressee((host, 0))[2:]}
        return self._port

    def _is_me(self, to: bytes) -> bool:
        """Does a datagram's addressee (``envelope.addressee``) name this socket?"""
        if len(to) < 2 or int.from_bytes(to[:2], "big") != self._port:
            return False
        ip = to[2:]
        if not ip or ip in self._mine:
            return True
        if not self._wildcard:
            return False
        now = time.monotonic()
        if now - self._mine_read_at < ADDRESS_REFRESH_S:
            return False
        self._mine_read_at = now
        self._mine = _interface_addresses()
        return ip in self._mine

    def register(self, channel: Channel, handler: Handler) -> None:
        if channel in self._handlers:
            raise RuntimeError(f"channel {channel.name} registered twice")
        self._handlers[channel] = handler

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # -- asyncio.DatagramProtocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector transport is a DatagramTransport by duck type only.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        peer: Addr = (addr[0], addr[1])
        try:
            payload = self._sealer.open(data, peer, self._clock())
        except ReplayError as exc:
            self._drop("replay", peer, exc)
            return
        except MisaddressedError as exc:
            self._drop("misaddressed", peer, exc)
            return
        except UnknownKeyError as exc:
            self._drop("unknown_key", peer, exc)
            if self.on_unknown_key is not None:
                self.on_unknown_key(peer, exc.key_id)
            return
        except EnvelopeError as exc:
            self._drop("unsealed", peer, exc)
            return
        if not payload:
            self._drop("empty", peer, None)
            return
        handler = self._handlers.get(payload[0])
        if handler is None:
            self._drop("unknown_channel", peer, None)
            return
        self.received.inc(channel=str(payload[0]))
        try:
            handler(payload[1:], peer)
        except Exception:  # a protocol bug must not stop the socket
            logger.exception("datagram handler failed channel=%s peer=%s", payload[0], peer)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: the RPC layer's timeouts handle them.
        logger.debug("udp error: %s", exc)

    def _drop(self, reason: str, peer: Addr, exc: Exception | None) -> None:
        self.dropped.inc(reason=reason)
        now = time.monotonic()
        if now - self._last_warning > 10.0:  # at most one line per 10 s under a flood
            self._last_warning = now
            logger.warning("dropped datagram reason=%s peer=%s:%s detail=%s", reason, *peer, exc)

    # -- sending ---------------------------------------------------------------------

    def send(self, channel: Channel, payload: bytes, addr: Addr) -> None:
        if self._transport is None:
            return
        sealed = self._sealer.seal(bytes((channel,)) + payload, addr, self._clock())
        if len(sealed) > MAX_DATAGRAM:
            logger.error("datagram too large to send channel=%s size=%d", channel.name, len(sealed))
            return
        self.sent.inc(channel=str(int(channel)))
        self._transport.sendto(sealed, addr)

    def transport_for(self, channel: Channel) -> ChannelTransport:
        return ChannelTransport(self, channel)


class ChannelTransport(asyncio.DatagramTransport):
    """What a datagram protocol sees as its transport: sends go sealed on one channel."""

    def __init__(self, mux: DatagramMux, channel: Channel) -> None:
        super().__init__()
        self._mux = mux
        self._channel = channel
        self._closed = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        if not self._closed and addr is not None:
            self._mux.send(self._channel, bytes(data), (addr[0], addr[1]))

    def close(self) -> None:
        self._closed = True

    def is_closing(self) -> bool:
        return self._closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default
