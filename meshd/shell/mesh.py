"""The node's mesh side: the UDP port, membership, the DHT, names and discovery.

This is the thin asyncio shell around the pure membership core (DESIGN.md §2):

* **In**: a datagram on the membership channel is opened by the mux (mesh secret),
  then verified as a message signed by a mesh member (``meshd.core.envelope``), decoded
  (``membership.codec``) and handed to the core with the *authenticated* sender name.
  Push-pull state arrives over the mTLS API (``POST /v1/mesh/message``), where the TLS
  client certificate names the sender. Anything that fails is dropped and counted.
* **Out**: the core's effects are carried out in order — persist (new members into
  the durable roster, state changes into the event log, one transaction), then send
  (datagrams signed and sealed; reliable messages over mTLS), then act (DHT contacts,
  broadcast handlers, name republishing).
* **Time**: the core runs on the monotonic clock; a timer task calls ``tick`` at the
  core's ``next_deadline`` and is woken early when a message arrives.

Names: each service this node publishes is a signed multi-writer DHT record under
``svc/<domain>/<service>``; resolution filters instances by the membership view, so a
dead node's names stop resolving the moment it is declared dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp

from meshd.adapters.dht import MeshDHT
from meshd.adapters.mdns import MdnsDiscovery
from meshd.adapters.store import revocations as stored_revocations
from meshd.adapters.store import roster, services
from meshd.adapters.transport import Addr, Channel, DatagramMux
from meshd.api import tls
from meshd.core import names
from meshd.core.envelope import ReplayGuard, Sealer, Signer, Verifier
from meshd.core.membership import (
    Deliver,
    Effect,
    MemberChanged,
    Membership,
    MemberState,
    Send,
    codec,
)
from meshd.core.membership.messages import Message, PushPull
from meshd.core.membership.state import Identity
from meshd.errors import (
    EnvelopeError,
    IdentityError,
    NamingError,
    NotFoundError,
    UnknownAuthorError,
)
from meshd.identity import pki, revocation
from meshd.identity.directory import Directory
from meshd.metrics import Counter
from meshd.shell.alarm import Alarm
from meshd.shell.context import NodeContext

logger = logging.getLogger(__name__)
T = TypeVar("T")
SWIM_KIND = "swim"
REVOCATION_KIND = "revocation"
REVOCATIONS_PATH = "/v1/mesh/revocations"
BroadcastHandler = Callable[[bytes, str], None]


class Mesh:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        cfg, ident = ctx.cfg, ctx.ident
        self.mux = DatagramMux(
            Sealer(
                ident.mesh_secret,
                ReplayGuard(cfg.security.max_clock_skew_s, cfg.security.replay_cache_size),
            ),
            ctx.metrics,
            ctx.clock,
        )
        self.signer = Signer(ident.key, ident.cert)
        self.verifier = Verifier(
            ident.ca_cert,
            ctx.revocations,
            ReplayGuard(cfg.security.max_clock_skew_s, cfg.security.replay_cache_size),
        )
        self.directory = Directory.from_store(ctx.store, ctx.revocations)
        self.directory.learn(ident.key.public_key(), ident.info)
        # Compact datagrams name their author by id: prime the verifier with the roster.
        for member in roster.members(ctx.store):
            try:
                self.verifier.learn(
                    pki.cert_der(pki.load_cert_pem(member.cert_pem.encode(), "")), ctx.clock()
                )
            except (IdentityError, EnvelopeError) as exc:
                logger.warning("roster certificate of %s refused: %s", member.name, exc)
        self._cert_fetches: dict[Addr, float] = {}
        # Certificates already verified and persisted, so a busy mTLS peer costs one
        # dict lookup per message instead of a chain verification.
        self._member_certs: dict[bytes, pki.CertInfo] = {}
        self.membership: Membership | None = None
        self.dht: MeshDHT | None = None
        self.mdns: MdnsDiscovery | None = None
        self.address: Addr = ("", 0)
        self._handlers: dict[str, BroadcastHandler] = {REVOCATION_KIND: self._on_revocation}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._alarm: Alarm | None = None
        self._http: aiohttp.ClientSession | None = None
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

    async def start(self, advertise: Addr, seeds: list[Addr]) -> None:
        ctx, cfg, ident = self.ctx, self.ctx.cfg, self.ctx.ident
        self.address = advertise
        self.mux.register(Channel.MEMBERSHIP, self._on_datagram)
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context(ident, ident.ca_cert)),
            timeout=aiohttp.ClientTimeout(total=max(2.0, cfg.membership.probe_interval_s * 4)),
        )
        self.dht = MeshDHT(
            cfg.dht,
            ident.node_id,
            ident.key,
            ident.name,
            self.directory,
            self.mux,
            ctx.clock,
            ctx.metrics,
        )
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
        if seeds:
            self._apply(self.membership.join(seeds, self.mono()))
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
        self._spawn(self._sync_revocations())

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
        if self._http is not None:
            await self._http.close()
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
            self._spawn(self._republish_services())

    def _rearm(self) -> None:
        if self._alarm is not None:
            self._alarm.rearm()

    def open_datagram(
        self, payload: bytes, addr: Addr, kind: str, decode: Callable[[bytes], T], dropped: Counter
    ) -> tuple[T, str] | None:
        """Verify a signed datagram of ``kind`` and decode it: (message, author) or None.

        Every protocol on the mesh port drops the same way: an unknown author sends us
        off to learn its certificate, anything else invalid is counted and logged.
        """
        try:
            signed = self.verifier.verify(payload, self.ctx.clock())
            if signed.kind != kind:
                raise EnvelopeError(f"unexpected message kind {signed.kind!r}")
            return decode(signed.body), signed.author
        except UnknownAuthorError:
            dropped.inc(reason="unknown_author")
            self._fetch_cert_soon(addr)
        except EnvelopeError as exc:
            dropped.inc(reason="invalid")
            logger.debug("dropped %s datagram peer=%s:%s error=%s", kind, *addr, exc)
        return None

    def open_reliable(
        self,
        body: bytes,
        cert_der: bytes,
        kind: str,
        decode: Callable[[bytes], T],
        dropped: Counter,
    ) -> tuple[T, pki.CertInfo] | None:
        """Decode a message a member posted over mTLS: (message, sender) or None."""
        info = self._learn_member(cert_der)
        if info is None:
            return None
        try:
            return decode(body), info
        except EnvelopeError as exc:
            dropped.inc(reason="invalid")
            logger.debug("dropped reliable %s message from=%s error=%s", kind, info.name, exc)
            return None

    def _on_datagram(self, payload: bytes, addr: Addr) -> None:
        opened = self.open_datagram(payload, addr, SWIM_KIND, codec.decode, self.dropped)
        if opened is not None:
            self._deliver(opened[0], opened[1], addr)

    def learn_sender_soon(self, addr: Addr) -> None:
        self._fetch_cert_soon(addr)

    def learn_member(self, cert_der: bytes) -> pki.CertInfo | None:
        return self._learn_member(cert_der)

    def on_broadcast(self, kind: str, handler: BroadcastHandler) -> None:
        if kind in self._handlers:
            raise RuntimeError(f"broadcast kind {kind!r} has a handler already")
        self._handlers[kind] = handler

    def address_of(self, name: str) -> Addr | None:
        if self.membership is None:
            return None
        m = self.membership.member(name)
        return None if m is None else m.address

    def _fetch_cert_soon(self, addr: Addr) -> None:
        """Learn an unknown sender's certificate from a TLS handshake (at most 1/s/addr)."""
        now = self.mono()
        if now - self._cert_fetches.get(addr, -1e9) < 1.0:
            return
        self._cert_fetches[addr] = now
        if len(self._cert_fetches) > 4096:
            self._cert_fetches.clear()
        self._spawn(self._fetch_cert(addr))

    async def _fetch_cert(self, addr: Addr) -> None:
        tls_ctx = tls.client_context(self.ctx.ident, self.ctx.ident.ca_cert)
        try:
            async with asyncio.timeout(max(1.0, self.ctx.cfg.membership.probe_interval_s * 4)):
                _, writer = await asyncio.open_connection(addr[0], addr[1], ssl=tls_ctx)
        except (OSError, TimeoutError) as exc:
            logger.debug("can't fetch the certificate of %s:%s: %s", *addr, exc)
            return
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        finally:
            writer.close()
        if der:
            self._learn_member(der)

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
        self._apply(self.membership.receive(msg, sender, addr, self.mono()))
        self._rearm()

    def _learn_member(self, cert_der: bytes) -> pki.CertInfo | None:
        """Persist a member we hear from for the first time (its cert is CA-verified)."""
        known = self._member_certs.get(cert_der)
        if (
            known is not None
            and known.not_before <= self.ctx.clock() <= known.not_after
            and not self.ctx.revocations.is_revoked(known.serial, known.node_id)
        ):
            return known
        try:
            cert = pki.load_cert_der(cert_der)
            info = pki.verify(cert, self.ctx.ident.ca_cert, self.ctx.clock())
        except IdentityError as exc:
            logger.warning("refused a member certificate: %s", exc)
            return None
        if self.ctx.revocations.is_revoked(info.serial, info.node_id):
            return None
        if not self.verifier.knows(info.node_id):
            self.verifier.learn(cert_der, self.ctx.clock())
        if len(self._member_certs) > 4096:
            self._member_certs.clear()
        self._member_certs[cert_der] = info
        if self.directory.learn(cert.public_key(), info):  # type: ignore[arg-type]
            from meshd.identity.enrolment import member_of  # noqa: PLC0415 - avoid a cycle

            roster.upsert(self.ctx.store, member_of(cert, None, self.ctx.clock()))
            logger.info("learnt member name=%s node_id=%s", info.name, info.node_id)
        return info

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
        if m.state.live and not self.verifier.knows(m.node_id):
            # Learn its certificate now, not when its first compact message is dropped
            # (a lost first bid would stall an auction until its deadline).
            self._fetch_cert_soon(m.address)
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
        signed = self.signer.sign(SWIM_KIND, body, self.ctx.clock(), compact=True)
        self.mux.send(Channel.MEMBERSHIP, signed, e.addr)

    async def _post(self, addr: Addr, body: bytes) -> None:
        await self.post(addr, "/v1/mesh/message", body)

    async def post(self, addr: Addr, path: str, body: bytes) -> None:
        """Send ``body`` to a member's mesh-internal route over mTLS (fire and forget)."""
        if self._http is None:
            return
        url = f"https://{addr[0]}:{addr[1]}{path}"
        try:
            async with self._http.post(
                url, data=body, headers={"Content-Type": "application/octet-stream"}
            ) as resp:
                if resp.status >= 300:
                    logger.debug("%s refused peer=%s:%s status=%s", path, *addr, resp.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            logger.debug("%s failed peer=%s:%s error=%s", path, *addr, exc)

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

    async def _sync_revocations(self) -> None:
        """Anti-entropy for removals: push every known record to one random member."""
        rng = random.Random()  # noqa: S311 - peer choice and jitter
        while True:
            interval = self.ctx.cfg.membership.revocation_sync_interval_s
            await asyncio.sleep(interval * rng.uniform(0.8, 1.2))
            records = stored_revocations.records(self.ctx.store)
            peer = self.random_peer(rng)
            addr = self.address_of(peer) if peer is not None else None
            if records and addr is not None:
                await self.post(addr, REVOCATIONS_PATH, revocation.bundle(records))

    def receive_revocations(self, body: bytes, origin: str) -> None:
        """Records a member pushed (``POST /v1/mesh/revocations``); each is CA-checked."""
        for record in revocation.unbundle(body):
            self._on_revocation(record, origin)

    def _on_revocation(self, payload: bytes, origin: str) -> None:
        try:
            rev = revocation.verify(payload, self.ctx.ident.ca_cert)
        except IdentityError as exc:
            logger.warning("dropped a revocation from %s: %s", origin, exc)
            return
        if self.ctx.revocations.add(rev):
            stored_revocations.add(self.ctx.store, rev, payload)
            roster.mark_removed(self.ctx.store, rev.name, rev.revoked_at)
            logger.info("node removed by the CA name=%s serial=%s", rev.name, rev.serial)
            if rev.name == self.ctx.ident.name:
                # Every member now drops what we send; say so loudly and go quiet.
                logger.error("this node was removed from the mesh; stopping membership")
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

    # -- names ----------------------------------------------------------------------

    def _schedule_republish(self, delay: float) -> None:
        at = self.mono() + delay
        if self._republish_at is None or at < self._republish_at:
            self._republish_at = at
            self._rearm()

    def _instance(self, name: str, port: int, proto: str) -> names.Instance:
        return names.Instance(name, self.ctx.ident.name, self.address[0], port, proto)

    async def _republish_services(self) -> None:
        for svc in services.all_services(self.ctx.store):
            await self._publish(self._instance(svc["name"], svc["port"], svc["proto"]))

    async def _publish(self, inst: names.Instance) -> None:
        if self.dht is None:
            return
        key = names.record_key(self.ctx.ident.domain, inst.service)
        await self.dht.put(key, inst.encode())

    async def add_service(self, name: str, port: int, proto: str) -> dict[str, Any]:
        names.check_service(name)
        if not 1 <= port <= 65535 or proto not in names.PROTOS:
            raise NamingError("a service needs a port 1-65535 and proto tcp or udp")
        services.upsert(self.ctx.store, name, port, proto, self.ctx.clock())
        await self._publish(self._instance(name, port, proto))
        return {"name": name, "port": port, "proto": proto}

    async def remove_service(self, name: str) -> None:
        if not services.remove(self.ctx.store, name):
            raise NotFoundError(f"this node publishes no service named {name!r}")
        if self.dht is not None:
            await self.dht.delete(names.record_key(self.ctx.ident.domain, name))

    async def resolve(self, text: str) -> list[names.Instance]:
        query = names.parse(text)
        if query.domain != self.ctx.ident.domain:
            raise NamingError(
                f"{text} is in domain {query.domain}; this mesh is {self.ctx.ident.domain}"
            )
        if self.dht is None:
            return []
        found: list[names.Instance] = []
        for rec in await self.dht.get(query.key):
            try:
                inst = names.Instance.decode(rec.value)
            except NamingError:
                continue
            if inst.node == rec.author:  # a node can only publish its own instances
                found.append(inst)
        return names.select(
            query,
            found,
            self.live_names(),
            self.ctx.ident.name,
            random.Random(),  # noqa: S311 - load spreading
        )
