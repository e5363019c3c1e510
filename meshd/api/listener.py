"""One listening socket of the API, served under a connection budget and deadlines.

Why not aiohttp's own sites: they accept every connection, give a TLS handshake
asyncio's default minute, and wait for request headers for ever. A few hundred
strangers that open a TCP connection and then send nothing (or half a handshake, or a
header byte a second) would hold a descriptor each until the process runs out, and
then the local operator's CLI could not connect to the unix socket either.

So each socket gets a :class:`Listener` that accepts connections itself and
* refuses (closes at once) a connection beyond ``max_total`` open ones, or beyond
  ``max_per_peer`` from one address (TCP only). The unix socket has its own listener
  and budget, so no TCP flood can lock out the local CLI;
* gives the TLS handshake ``handshake_timeout_s``;
* closes a connection whose first request's headers have not all arrived
  ``header_timeout_s`` after it was set up (after the handshake, on TCP). Later
  requests on a kept-alive connection are bounded by aiohttp's keep-alive timeout,
  which closes a connection that is not in a request.
Every refusal and timeout goes through :class:`~meshd.api.refusals.Refusals`: a
counter and a rare one-line log, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshd.api.refusals import Refusals

logger = logging.getLogger(__name__)
# Bytes that end an HTTP/1.x header block.
_HEADERS_END = b"\r\n\r\n"
# After accept() fails for want of descriptors, wait this long before trying again
# (the alternative is a busy loop that starves the connections we are serving).
_ACCEPT_BACKOFF_S = 0.1


@dataclass(frozen=True)
class Budget:
    """How many connections a listener holds open, and how long each may stay silent."""

    max_total: int
    # None: no per-address limit (the unix socket: every client is the local operator).
    max_per_peer: int | None
    # None: plain connections (the unix socket).
    handshake_timeout_s: float | None
    header_timeout_s: float


class _Slot:
    """One accepted connection's place in the budget, given back exactly once."""

    def __init__(self, listener: Listener, peer: str) -> None:
        self._listener = listener
        self.peer = peer
        self._held = True

    def free(self) -> None:
        if self._held:
            self._held = False
            self._listener._release(self.peer)


class _Tracked(asyncio.Protocol):
    """aiohttp's protocol, plus the header deadline and the slot given back on close."""

    def __init__(self, inner: asyncio.Protocol, slot: _Slot, listener: Listener) -> None:
        self._inner = inner
        self._slot = slot
        self._listener = listener
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._listener.budget.header_timeout_s, self._expired)
        self._inner.connection_made(transport)

    def _expired(self) -> None:
        self._timer = None
        self._listener.refusals.note(
            "header_timeout",
            self._slot.peer,
            f"no complete request headers within {self._listener.budget.header_timeout_s:g} s",
        )
        if self._transport is not None:
            self._transport.close()
            abort = getattr(self._transport, "abort", None)
            if abort is not None:
                abort()

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            if _HEADERS_END in self._tail + data:
                self._timer.cancel()
                self._timer = None
            else:
                self._tail = (self._tail + data)[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._slot.free()
        self._inner.connection_lost(exc)


class Listener:
    """Accepts on ``sock`` within ``budget`` and hands each connection to ``factory``."""

    def __init__(
        self,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        budget: Budget,
        refusals: Refusals,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.sock = sock
        self.factory = factory
        self.budget = budget
        self.refusals = refusals
        self.ssl_context = ssl_context
        self.open = 0
        self.peak = 0
        self._per_peer: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self.sock.setblocking(False)
        self._task = asyncio.get_running_loop().create_task(self._accept_loop())

    async def close(self) -> None:
        """Stop accepting and drop connections still in their handshake."""
        tasks = [t for t in (self._task, *self._handshakes) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.sock.close()

    def _release(self, peer: str) -> None:
        self.open -= 1
        left = self._per_peer.get(peer, 0) - 1
        if left > 0:
            self._per_peer[peer] = left
        else:
            self._per_peer.pop(peer, None)

    def _admit(self, peer: str) -> str | None:
        """Why a new connection from ``peer`` is refused, or None to take it."""
        if self.open >= self.budget.max_total:
            return f"{self.open} connections open, the most this listener holds"
        cap = self.budget.max_per_peer
        if cap is not None and self._per_peer.get(peer, 0) >= cap:
            return f"{cap} connections open from this address, the most one peer may hold"
        return None

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(self.sock)
            except (ConnectionAbortedError, InterruptedError):
                continue
            except OSError as exc:  # EMFILE/ENFILE: no descriptor for a new connection
                self.refusals.note("accept_failed", "", exc.strerror or exc)
                await asyncio.sleep(_ACCEPT_BACKOFF_S)
                continue
            peer = _peer_of(addr)
            why = self._admit(peer)
            if why is not None:
                conn.close()
                self.refusals.note("over_budget", peer, why)
                continue
            self.open += 1
            self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
            self.peak = max(self.peak, self.open)
            task = loop.create_task(self._serve(conn, _Slot(self, peer)))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _serve(self, conn: socket.socket, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        try:
            if self.ssl_context is None:
                await loop.connect_accepted_socket(
                    lambda: _Tracked(self.factory(), slot, self), sock=conn
                )
            else:
                # The budget must hold even if the loop's own handshake timer were
                # missing: wait_for bounds the wait, then the socket is closed below.
                limit = self.budget.handshake_timeout_s
                await asyncio.wait_for(
                    loop.connect_accepted_socket(
                        lambda: _Tracked(self.factory(), slot, self),
                        sock=conn,
                        ssl=self.ssl_context,
                        ssl_handshake_timeout=limit,
                    ),
                    None if limit is None else limit + 1.0,
                )
        except asyncio.CancelledError:
            conn.close()
            slot.free()
            raise
        except (OSError, TimeoutError, ValueError) as exc:
            conn.close()
            slot.free()
            self.refusals.note("handshake_failed", slot.peer, _reason(exc))


def _peer_of(addr: Any) -> str:
    if isinstance(addr, tuple) and addr:
        return str(addr[0])
    return "local"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return str(exc) or type(exc).__name__
