"""The node's mesh side: membership on the mesh port, with the DHT and mDNS beside it.

This is the thin asyncio shell around the pure membership core (DESIGN.md §2). It
composes the mesh's other concerns, each in its own module: the envelope gate every
peer message passes (``gate``), the mTLS client (``peer_client``), revocation
anti-entropy (``revocation_sync``) and this node's service names (``service_names``).

* **In**: a datagram on the membership channel is opened by the mux (mesh secret),
  then verified by the gate as a message signed by a mesh member, decoded
  (``membership.codec``) and handed to the core with the *authenticated* sender name.
  Push-pull state arrives over the mTLS API (``POST /v1/mesh/message``), where the TLS
  client certificate names the sender. Anything that fails is dropped and counted.
* **Out**: the core's effects are carried out in order — persist (new members into
  the durable roster, state changes into the event log, one transaction), then send
  (datagrams signed and sealed; reliable messages over mTLS), then act (DHT contacts,
  broadcast handlers, name republishing).
* **Time**: the core runs on the monotonic clock; a timer task calls ``tick`` at the
  core's ``next_deadline`` and is woken early when a message arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshd.adapters.dht import MeshDHT
from meshd.adapters.mdns import MdnsDiscovery
from meshd.adapters.store import roster
from meshd.adapters.transport import Addr, Channel
from meshd.core import names
from meshd.core.membership import (
    Deliver,
    Effect,
    MemberChanged,
    Membership,
    MemberState,
    Send,
    codec,
)
from meshd.core.membership.messages import Ack, Gossip, Message, Nack, PushPull
from meshd.core.membership.state import Identity
from meshd.errors import EnvelopeError, MeshdError
from meshd.identity import pki
from meshd.metrics import Counter
from meshd.shell.alarm import Alarm
from meshd.shell.bus import MemberStateChanged
from meshd.shell.context import NodeContext
from meshd.shell.gate import CERTS_PATH, Gate
from meshd.shell.introductions import Introductions
from meshd.shell.key_sync import KeySync, fetch_from
from meshd.shell.peer_client import PeerClient
from meshd.shell.revocation_sync import REVOCATION_KIND, RevocationSync
from meshd.shell.service_names import ServiceNames

logger = logging.getLogger(__name__)
T = TypeVar("T")
SWIM_KIND = "swim"
BroadcastHandler = Callable[[bytes, str], None]


class Mesh:
    def __init__(
        self,
        ctx: NodeContext,
        ca_key: Callable[[], Ed25519PrivateKey | None] | None = None,
    ) -> None:
        self.ctx = ctx
        self._tasks: set[asyncio.Task[Any]] = set()
        self._certs_task: asyncio.Task[Any] | None = None
        self._certs_at = -1e9
        # Where to ask first for every member's certificate: the seeds we join through
        # (the seed in a join token enrolled us, and knows whom else it enrolled).
        self._cert_sources: list[Addr] = []
        self._introductions = Introductions()
        self.gate = Gate(ctx, self._spawn)
        self.mux = self.gate.mux
        self.peer_client = PeerClient(ctx)
        self.revocations = RevocationSync(
            ctx,
            self.peer_client.post,
            self._random_peer_addr,
            self._leave_for_good,
            self._forget_removed,
        )
        self.keys = KeySync(
            ctx,
            self.gate.keys,
            self.peer_client.post,
            self.peer_client.get,
            self._member_addrs,
            self.revocations.receive,
            self._spawn,
            ca_key or (lambda: ctx.ident.ca_key),
        )
        self.keys.load()
        self.mux.on_unknown_key = self.keys.fetch_soon
        self.names = ServiceNames(ctx, lambda: self.dht, lambda: self.address, self.live_names)
        self.membership: Membership | None = None
        self.dht: MeshDHT | None = None
        self.mdns: MdnsDiscovery | None = None
        self.address: Addr = ("", 0)
        self._handlers: dict[str, BroadcastHandler] = {REVOCATION_KIND: self.revocations.receive}
        self._alarm: Alarm | None = None
        self._republish_at: float | None = None
        m = ctx.metrics
        self.dropped = m.counter(
            "meshd_membership_dropped_total", "Membership messages dropped, by reason"
        )
        self.changes = m.counter("meshd_member_changes_total", "Member state changes, by state")
        m.gauge("meshd_members_alive", "Live members including this node", self._alive_count)

    # -- life cycle -----------------------------------------------------------------

    @staticmethod
    def mono() -> float:
        return time.monotonic()

    async def bind(self, host: str, port: int) -> int:
        return await self.mux.bind(host, port)

    async def start(self, advertise: Addr) -> None:
        """Open the mesh port's protocols: we answer from now on, but nobody is told
        of us until :meth:`join` (the daemon joins once everything else is started, so
        a member that others know of never spends seconds still starting up)."""
        ctx, cfg, ident = self.ctx, self.ctx.cfg, self.ctx.ident
        self.address = advertise
        self.mux.register(Channel.MEMBERSHIP, self._on_datagram)
        self.peer_client.start()
        self.dht = MeshDHT(
            cfg.dht,
            ident.node_id,
            ident.key,
            ident.name,
            self.gate.directory,
            self.mux,
            ctx.clock,
            ctx.metrics,
        )
        self.dht.protocol.on_stranger = self.gate.fetch_cert_soon
        await self.dht.start()
        self.membership = Membership(
            cfg.membership,
            Identity(ident.name, ident.node_id, advertise),
            random.Random(),  # noqa: S311 - protocol jitter, not secrets
            self.mono(),
            logging.getLogger("meshd.core.membership"),
        )
        self._alarm = Alarm(
            "membership",
            self._tick,
            self._next_deadline,
            self.mono,
            cfg.membership.probe_interval_s,
        )
        self._alarm.rearm()

    def join(self, seeds: list[Addr]) -> None:
        """Join through ``seeds`` (membership, the DHT, the mesh keys) and start
        discovery; the last step of a node's start."""
        assert self.membership is not None and self.dht is not None
        cfg, ident, advertise = self.ctx.cfg, self.ctx.ident, self.address
        self._cert_sources = list(seeds[:3])
        if seeds:
            self._apply(self.membership.join(seeds, self.mono()))
            self._rearm()
            task = self.dht.bootstrap_forever(seeds)  # the DHT keeps its own reference
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if cfg.mdns:
            self.mdns = MdnsDiscovery(
                cfg.mdns,
                ident.name,
                ident.node_id,
                ident.mesh_secret,
                advertise,
                self._on_mdns_found,
                cooperating=cfg.preset != "lan",
            )
            # Registration probes the LAN for ~1.2 s; the node is useful meanwhile.
            self._spawn(self._start_mdns(self.mdns))
        self._schedule_republish(0.0)
        self._spawn(self.revocations.run())
        if seeds:  # a key rotated while we were down (or before we joined)
            self._spawn(fetch_from(self.keys, seeds, cfg.security.enrol_timeout_s))
        if self.keys.rotation_owed():  # a removal made while the daemon was down
            self.keys.rotate("a removal made while this node's daemon was down")

    async def _start_mdns(self, mdns: MdnsDiscovery) -> None:
        try:
            await mdns.start()
        except Exception:  # discovery failing must not take the node down; seeds still work
            logger.exception("mdns discovery failed to start")

    async def stop(self) -> None:
        if self.membership is not None:
            self._apply(self.membership.leave(self.mono()))
            # Let the Left update go out on a couple of gossip rounds (bounded).
            deadline = self.mono() + max(0.5, self.ctx.cfg.membership.gossip_interval_s * 3)
            while self.membership.pending_broadcasts() and self.mono() < deadline:  # noqa: ASYNC110 - the timer task drains the queue; we only bound the wait
                await asyncio.sleep(self.ctx.cfg.membership.gossip_interval_s / 2)
        if self.mdns is not None:
            with contextlib.suppress(Exception):
                await self.mdns.stop()
        if self._alarm is not None:
            self._alarm.stop()
        for task in list(self._tasks):
            task.cancel()
        if self.dht is not None:
            self.dht.stop()
        await self.peer_client.close()
        self.mux.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the loop: receive, tick, apply effects -------------------------------------

    def _next_deadline(self) -> float:
        assert self.membership is not None
        d = self.membership.next_deadline()
        return d if self._republish_at is None else min(d, self._republish_at)

    def _tick(self) -> None:
        assert self.membership is not None
        self._apply(self.membership.tick(self.mono()))
        if self._republish_at is not None and self.mono() >= self._republish_at:
            self._republish_at = None
            self._spawn(self.names.republish())

    def _rearm(self) -> None:
        if self._alarm is not None:
            self._alarm.rearm()

    def open_datagram(
        self, payload: bytes, addr: Addr, kind: str, decode: Callable[[bytes], T], dropped: Counter
    ) -> tuple[T, str] | None:
        """A protocol's datagram through the envelope gate (``gate.Gate.open_datagram``)."""
        return self.gate.open_datagram(payload, addr, kind, decode, dropped)

    def open_reliable(
        self,
        body: bytes,
        cert_der: bytes,
        kind: str,
        decode: Callable[[bytes], T],
        dropped: Counter,
    ) -> tuple[T, pki.CertInfo] | None:
        """A protocol's mTLS message through the gate (``gate.Gate.open_reliable``)."""
        return self.gate.open_reliable(body, cert_der, kind, decode, dropped)

    def sign(self, kind: str, body: bytes) -> bytes:
        return self.gate.sign(kind, body)

    # -- the rest of the mesh port of the other shells (meshd.shell.ports.MeshPort) ----

    def sign_record(self, kind: str, body: bytes, portable: bool = False) -> bytes:
        return self.gate.sign_full(kind, body) if portable else self.gate.sign(kind, body)

    def open_record(self, kind: str, signed: bytes) -> tuple[bytes, str] | None:
        # Records are relayed long after they were made: no freshness or replay check
        # (fresh=False); they carry their own versions (meshd.core.drain).
        try:
            opened = self.gate.verifier.verify(signed, self.ctx.clock(), fresh=False)
            if opened.kind != kind:
                raise EnvelopeError(f"unexpected record kind {opened.kind!r}")
        except EnvelopeError as exc:  # UnknownAuthorError too: anti-entropy brings it again
            logger.debug("dropped a signed %s record: %s", kind, exc)
            return None
        return opened.body, opened.author

    def on_datagram(
        self,
        channel: Channel,
        kind: str,
        decode: Callable[[bytes], T],
        handler: Callable[[T, str], None],
        dropped: Counter,
    ) -> None:
        """Hand each valid signed datagram of ``kind`` on ``channel`` to ``handler``."""

        def receive(payload: bytes, addr: Addr) -> None:
            opened = self.open_datagram(payload, addr, kind, decode, dropped)
            if opened is not None:
                handler(*opened)

        self.mux.register(channel, receive)

    def send_datagram(self, channel: Channel, name: str, signed: bytes) -> None:
        addr = self.address_of(name)
        if addr is not None:
            self.mux.send(channel, signed, addr)

    async def post_to(self, name: str, path: str, body: bytes) -> None:
        addr = self.address_of(name)
        if addr is not None:
            await self.post(addr, path, body)

    def _on_datagram(self, payload: bytes, addr: Addr) -> None:
        opened = self.open_datagram(payload, addr, SWIM_KIND, codec.decode, self.dropped)
        if opened is not None:
            self._deliver(opened[0], opened[1], addr)

    def on_broadcast(self, kind: str, handler: BroadcastHandler) -> None:
        if kind in self._handlers:
            raise RuntimeError(f"broadcast kind {kind!r} has a handler already")
        self._handlers[kind] = handler

    def address_of(self, name: str) -> Addr | None:
        if self.membership is None:
            return None
        m = self.membership.member(name)
        return None if m is None else m.address

    def receive_reliable(self, body: bytes, cert_der: bytes, remote: str) -> None:
        """A message posted to ``/v1/mesh/message`` by an authenticated member."""
        opened = self.open_reliable(body, cert_der, SWIM_KIND, codec.decode, self.dropped)
        if opened is None:
            return
        msg, info = opened
        addr: Addr = (remote, 0)
        if isinstance(msg, PushPull):
            addr = next((r.addr for r in msg.records if r.name == info.name), addr)
        self._deliver(msg, info.name, addr)

    def _deliver(self, msg: Message, sender: str, addr: Addr) -> None:
        if self.membership is None:
            return
        if isinstance(msg, Ack | Nack):  # it verified a datagram of ours: it knows us
            self._introductions.verified_by(addr)
        self._apply(self.membership.receive(msg, sender, addr, self.mono()))
        self._rearm()

    def _apply(self, effects: list[Effect]) -> None:
        if not effects:
            return
        changes = [e for e in effects if isinstance(e, MemberChanged)]
        if changes:  # persist first: what we announce must survive a crash
            with self.ctx.store.transaction(durable=False):
                for ch in changes:
                    self._persist_change(ch)
        for e in effects:
            if isinstance(e, Send):
                self._send(e)
        for e in effects:
            if isinstance(e, MemberChanged):
                self._act_on_change(e)
            elif isinstance(e, Deliver):
                handler = self._handlers.get(e.kind)
                if handler is None:
                    logger.debug("no handler for broadcast kind=%s", e.kind)
                    continue
                try:
                    handler(e.payload, e.origin)
                except Exception:
                    logger.exception("broadcast handler failed kind=%s", e.kind)

    def _learn_certs_soon(self, node_id: str, addr: Addr) -> None:
        """Learn an unknown member's certificate: every member's at once from it (one
        request, ``GET /v1/mesh/certs``) when no such fetch is under way, else from its
        TLS handshake. Meeting a whole chassis at once then costs a few requests, not
        one handshake per member, and no ping from a member we can't verify yet goes
        unanswered for long."""
        if self._certs_task is not None and not self._certs_task.done():
            return  # the bundle under way most likely holds it
        now = time.monotonic()
        if now - self._certs_at < 1.0:
            self.gate.fetch_cert_soon(addr)
            return
        self._certs_at = now
        self._certs_task = self._spawn(self._learn_certs(node_id, addr))

    async def _learn_certs(self, node_id: str, addr: Addr) -> None:
        # A seed first (once each): on a fresh chassis only the seed that enrolled
        # everyone knows everyone; then the member that was news to us.
        # A seed stays first until it has answered: a seed busy with a whole chassis
        # joining at once may time out, and the others may know nobody yet.
        for source in [*self._cert_sources, addr]:
            body = await self.peer_client.get(source, CERTS_PATH)
            if body is not None:
                try:
                    new = self.gate.learn_bundle(body)
                except MeshdError as exc:  # the store can't write: learnt again later
                    logger.warning("can't record members' certificates: %s", exc)
                    return
                logger.debug("learnt certificates peer=%s:%s new=%d", *source, new)
                if source in self._cert_sources:
                    self._cert_sources = []
            if self.gate.knows(node_id):
                return
        self.gate.fetch_cert_soon(addr)

    def _persist_change(self, ch: MemberChanged) -> None:
        m = ch.member
        if ch.previous is None or m.state is MemberState.ALIVE:
            roster.set_address(self.ctx.store, m.name, f"{m.address[0]}:{m.address[1]}")
        self.ctx.store.append_event(
            self.ctx.clock(),
            f"member.{m.state}",
            m.name,
            {"incarnation": m.incarnation, "previous": str(ch.previous) if ch.previous else None},
        )

    def _act_on_change(self, ch: MemberChanged) -> None:
        m = ch.member
        self.changes.inc(state=str(m.state))
        if m.name == self.ctx.ident.name:
            return
        logger.info(
            "member %s name=%s address=%s:%s incarnation=%d",
            m.state,
            m.name,
            *m.address,
            m.incarnation,
        )
        self.ctx.bus.publish(
            MemberStateChanged(
                m.name,
                str(m.state),
                m.incarnation,
                None if ch.previous is None else str(ch.previous),
            )
        )
        if not m.state.live:  # it may come back reinstalled: introduce us again
            self._introductions.forget(m.address)
        elif not self.gate.knows(m.node_id):
            # Learn its certificate now, not when its first compact message is dropped
            # (a lost first bid would stall an auction until its deadline).
            self._learn_certs_soon(m.node_id, m.address)
        if self.dht is None:
            return
        if m.state.live:
            self.dht.add_contact(m.node_id, m.address)
            if ch.previous is None or not ch.previous.live:
                self._schedule_republish(0.5)  # a newcomer may now be a closest node
        else:
            self.dht.remove_contact(m.node_id)

    def _send(self, e: Send) -> None:
        body = codec.encode(e.msg)
        if e.reliable:
            self._spawn(self._post(e.addr, body))
            return
        self._introduce(e.addr)
        self.mux.send(Channel.MEMBERSHIP, self.gate.sign(SWIM_KIND, body), e.addr)

    def _introduce(self, addr: Addr) -> None:
        """Our certificate ahead of a compact datagram (see :mod:`.introductions`)."""
        if self.membership is not None and self._introductions.due(addr, self.mono()):
            hello = codec.encode(Gossip(self.membership.incarnation, ()))
            self.mux.send(Channel.MEMBERSHIP, self.gate.sign_full(SWIM_KIND, hello), addr)

    async def _post(self, addr: Addr, body: bytes) -> None:
        await self.post(addr, "/v1/mesh/message", body)

    async def post(self, addr: Addr, path: str, body: bytes) -> None:
        """Send ``body`` to a member's mesh-internal route over mTLS (fire and forget)."""
        await self.peer_client.post(addr, path, body)

    # -- discovery ------------------------------------------------------------------

    def _on_mdns_found(self, name: str, addr: Addr) -> None:
        if self.membership is None or name == self.ctx.ident.name:
            return
        m = self.membership.member(name)
        if m is None or not m.state.live:
            self._apply(self.membership.join([addr], self.mono()))
            if self.dht is not None:
                self._spawn(self.dht.bootstrap([addr]))

    # -- broadcasts -----------------------------------------------------------------

    def broadcast(self, kind: str, payload: bytes, key: str | None = None) -> None:
        """Gossip to every member; a newer broadcast of ``kind`` and ``key`` replaces
        the one still queued (see :meth:`Membership.broadcast`)."""
        if self.membership is not None:
            self._apply(self.membership.broadcast(kind, payload, self.mono(), key))
            self._rearm()

    def _forget_removed(self, node_id: str) -> None:
        """A removed node leaves the DHT's routing table at once."""
        if self.dht is not None:
            self.dht.remove_contact(node_id)

    def _member_addrs(self) -> list[Addr]:
        """The addresses of the members we know, alive or not, except us and the removed
        (a rotation must never be pushed to the node it locks out)."""
        if self.membership is None:
            return []
        me, revoked = self.ctx.ident.name, self.ctx.revocations
        return [
            m.address
            for m in self.membership.members()
            if m.name != me and m.address[1] and not revoked.is_revoked("", m.node_id)
        ]

    def rotate_key(self, reason: str) -> int:
        """Rotate the mesh key (a CA holder removed a node); returns the new epoch."""
        return self.keys.rotate(reason).epoch

    def receive_keys(self, body: bytes, origin: str) -> int:
        """Keys (and revocations) a member pushed (``POST /v1/mesh/keys``)."""
        return self.keys.receive_bundle(body, origin)

    def keys_bundle(self) -> bytes:
        """What ``GET /v1/mesh/keys`` answers a member."""
        return self.keys.bundle()

    def receive_revocations(self, body: bytes, origin: str) -> None:
        """Records a member pushed (``POST /v1/mesh/revocations``); each is CA-checked."""
        self.revocations.receive_bundle(body, origin)

    def _leave_for_good(self) -> None:
        """This node was removed from the mesh: announce that it leaves, then go quiet."""
        if self.membership is not None:
            self._apply(self.membership.leave(self.mono()))

    # -- views ----------------------------------------------------------------------

    def _alive_count(self) -> float:
        return float(self.membership.live_count()) if self.membership else 1.0

    def peers(self) -> list[dict[str, Any]]:
        if self.membership is None:
            return []
        return [
            {
                "name": m.name,
                "address": f"{m.address[0]}:{m.address[1]}",
                "state": str(m.state),
                "incarnation": m.incarnation,
                "node_id": m.node_id,
            }
            for m in sorted(self.membership.members(), key=lambda m: m.name)
        ]

    def live_names(self) -> set[str]:
        if self.membership is None:
            return {self.ctx.ident.name}
        return {m.name for m in self.membership.members() if m.state.live}

    def live_peers(self) -> set[str]:
        """Live members other than this node."""
        return self.live_names() - {self.ctx.ident.name}

    def random_peer(self, rng: random.Random) -> str | None:
        """One live member other than this node, for anti-entropy; None when alone."""
        peers = sorted(self.live_peers())
        return rng.choice(peers) if peers else None

    def _random_peer_addr(self, rng: random.Random) -> Addr | None:
        peer = self.random_peer(rng)
        return self.address_of(peer) if peer is not None else None

    # -- names ----------------------------------------------------------------------

    def _schedule_republish(self, delay: float) -> None:
        at = self.mono() + delay
        if self._republish_at is None or at < self._republish_at:
            self._republish_at = at
            self._rearm()

    async def add_service(
        self, name: str, port: int, proto: str, host: str | None = None
    ) -> dict[str, Any]:
        return await self.names.add(name, port, proto, host)

    async def remove_service(self, name: str) -> None:
        await self.names.remove(name)

    async def resolve(self, text: str) -> list[names.Instance]:
        return await self.names.resolve(text)
