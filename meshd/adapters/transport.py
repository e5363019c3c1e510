"""The mesh UDP port: one socket, every datagram sealed, several protocols multiplexed.

Theory of operation
-------------------
A node has one UDP socket on its mesh port (the TCP API shares the port number).
Every datagram on it is sealed with the mesh secret (``meshd.core.envelope.Sealer``); the
first byte of the sealed payload names the channel (the DHT, membership, ...). A
datagram that does not open — an outsider's, a corrupt, a stale or a replayed one —
is dropped and counted by reason, never raised: bad input must not disturb the loop.

Protocols that expect an ``asyncio.DatagramTransport`` (rpcudp/kademlia) get a
:class:`ChannelTransport`, which looks like one but seals and tags what it sends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from enum import IntEnum
from typing import Any, cast

from meshd.core.envelope import Sealer
from meshd.errors import EnvelopeError, ReplayError
from meshd.metrics import Counter, Registry

logger = logging.getLogger(__name__)

Addr = tuple[str, int]
Handler = Callable[[bytes, Addr], None]
# Sealed datagrams are kept under the IPv4 UDP limit minus headers; kademlia caps
# its own payloads at ~8 KiB, membership at its configured size.
MAX_DATAGRAM = 65507


class Channel(IntEnum):
    DHT = 1
    MEMBERSHIP = 2
    AUCTION = 3


class DatagramMux(asyncio.DatagramProtocol):
    def __init__(
        self,
        sealer: Sealer,
        registry: Registry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sealer = sealer
        self._clock = clock
        self._handlers: dict[int, Handler] = {}
        self._transport: asyncio.DatagramTransport | None = None
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
        return int(transport.get_extra_info("sockname")[1])

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
            payload = self._sealer.open(data, self._clock())
        except ReplayError as exc:
            self._drop("replay", peer, exc)
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
        sealed = self._sealer.seal(bytes((channel,)) + payload, self._clock())
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
