"""The envelope gate: what a peer's message must pass before any protocol sees it.

Every protocol on the mesh port (membership, the auction, later fencing) receives
through here, so they all drop the same way:

* a **datagram** was already opened by the mux (the mesh secret: outsiders, stale and
  replayed datagrams never get this far); the gate verifies it as a message signed by a
  mesh member (``meshd.core.envelope``, the compact form naming its author by node id),
  checks it is of the kind the channel expects, and decodes it. An author whose
  certificate we don't know yet sends us to fetch it from one TLS handshake with the
  sender (at most once a second per address); anything else invalid is counted and
  logged at debug level, never raised.
* a **reliable** message arrived over mTLS: the TLS client certificate names the
  sender; the gate checks that certificate (CA, validity, revocation), caches it, and
  decodes the body.
* a member heard of for the first time (by either path) is added to the durable roster
  from its certificate, so every node's roster converges on the enrolled set (the
  voting set for fencing).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from meshd.adapters import tls
from meshd.adapters.store import roster
from meshd.adapters.transport import Addr, DatagramMux
from meshd.core.envelope import Signer, Verifier
from meshd.core.keyring import KeyRing
from meshd.core.replay import ReplayGuard
from meshd.errors import EnvelopeError, IdentityError, MeshdError, UnknownAuthorError
from meshd.identity import pki
from meshd.identity.directory import Directory
from meshd.identity.enrolment import member_of
from meshd.metrics import Counter
from meshd.shell.context import NodeContext

logger = logging.getLogger(__name__)
T = TypeVar("T")
Spawn = Callable[[Coroutine[Any, Any, Any]], object]
CACHE_MAX = 4096  # certificates (and fetch times) remembered before starting afresh
# Certificate fetches (TLS handshakes) in flight at once: a node meeting a whole chassis
# at once (everyone restarted together) learns 60 certificates without a storm.
FETCHES_AT_ONCE = 4
# Every member's certificate in one answer (nodes only): how a node that meets many
# members at once (joining, or a chassis restarting together) learns them all.
CERTS_PATH = "/v1/mesh/certs"
BUNDLE_MAX_CERTS = 4096
_PEM_END = b"-----END CERTIFICATE-----"


class Gate:
    def __init__(self, ctx: NodeContext, spawn: Spawn) -> None:
        self.ctx = ctx
        self._spawn = spawn
        cfg, ident = ctx.cfg, ctx.ident
        sec = cfg.security
        skew, cache, senders = sec.max_clock_skew_s, sec.replay_cache_size, sec.replay_senders
        self.keys = KeyRing(sec.key_grace_s)  # filled by key_sync.KeySync.load
        self.mux = DatagramMux(self.keys, ReplayGuard(skew, cache, senders), ctx.metrics, ctx.clock)
        self.signer = Signer(ident.key, ident.cert)
        self.verifier = Verifier(ident.ca_cert, ctx.revocations, ReplayGuard(skew, cache, senders))
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
        self._fetching = asyncio.Semaphore(FETCHES_AT_ONCE)
        # One client context per identity (building one writes and loads the key chain).
        self._tls: tuple[object, ssl.SSLContext] | None = None
        # Certificates already verified and persisted, so a busy mTLS peer costs one
        # dict lookup per message instead of a chain verification.
        self._member_certs: dict[bytes, pki.CertInfo] = {}

    def sign(self, kind: str, body: bytes) -> bytes:
        """``body`` as a compact-signed message of ``kind`` from this node."""
        return self.signer.sign(kind, body, self.ctx.clock(), compact=True)

    def sign_full(self, kind: str, body: bytes) -> bytes:
        """``body`` signed in the full form: it carries our certificate."""
        return self.signer.sign(kind, body, self.ctx.clock())

    def knows(self, node_id: str) -> bool:
        return self.verifier.knows(node_id)

    def open_datagram(
        self, payload: bytes, addr: Addr, kind: str, decode: Callable[[bytes], T], dropped: Counter
    ) -> tuple[T, str] | None:
        """Verify a signed datagram of ``kind`` and decode it: (message, author) or None."""
        try:
            signed = self.verifier.verify(payload, self.ctx.clock())
            if signed.kind != kind:
                raise EnvelopeError(f"unexpected message kind {signed.kind!r}")
            if signed.cert_der and signed.cert_der not in self._member_certs:
                # A full-form datagram (a member introducing itself) carries its
                # certificate: record the member as any other way of learning it does
                # (the roster, the DHT's directory), not only the verifier's cache.
                self._learn_from_datagram(signed.cert_der)
            return decode(signed.body), signed.author
        except UnknownAuthorError:
            dropped.inc(reason="unknown_author")
            self.fetch_cert_soon(addr)
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
        info = self.learn_member(cert_der)
        if info is None:
            return None
        try:
            return decode(body), info
        except EnvelopeError as exc:
            dropped.inc(reason="invalid")
            logger.debug("dropped reliable %s message from=%s error=%s", kind, info.name, exc)
            return None

    def _learn_from_datagram(self, cert_der: bytes) -> None:
        try:
            self.learn_member(cert_der)
        except MeshdError as exc:  # the store can't write: the roster misses it for now
            logger.warning("can't record a member's certificate: %s", exc)

    def fetch_cert_soon(self, addr: Addr) -> None:
        """Learn an unknown sender's certificate from a TLS handshake (at most 1/s/addr)."""
        now = time.monotonic()
        if now - self._cert_fetches.get(addr, -1e9) < 1.0:
            return
        self._cert_fetches[addr] = now
        if len(self._cert_fetches) > CACHE_MAX:
            self._cert_fetches.clear()
        self._spawn(self._fetch_cert(addr))

    def _client_tls(self) -> ssl.SSLContext:
        ident = self.ctx.ident
        if self._tls is None or self._tls[0] is not ident:  # built again after a promote
            self._tls = (ident, tls.client_context(ident, ident.ca_cert))
        return self._tls[1]

    async def _fetch_cert(self, addr: Addr) -> None:
        async with self._fetching:
            await self._fetch_cert_now(addr)

    async def _fetch_cert_now(self, addr: Addr) -> None:
        tls_ctx = self._client_tls()
        try:
            timeout = max(1.0, self.ctx.cfg.membership.probe_interval_s * 4)
            async with asyncio.timeout(timeout):
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
            self.learn_member(der)

    def certs_bundle(self) -> bytes:
        """The certificates of every current member, PEM, one after the other."""
        return b"".join(m.cert_pem.encode() for m in roster.members(self.ctx.store) if m.cert_pem)

    def learn_bundle(self, body: bytes) -> int:
        """Learn each certificate of a member's :meth:`certs_bundle` (each checked
        against the CA and the revocations as any other); how many were new to us."""
        new = 0
        # One transaction (one fsync) for the roster rows of the whole bundle, not one
        # each: 63 fsyncs in a row would stall the loop on a busy disk.
        with self.ctx.store.transaction():
            for chunk in body.split(_PEM_END)[:BUNDLE_MAX_CERTS]:
                if not chunk.strip():
                    continue
                try:
                    pem = chunk + _PEM_END
                    der = pki.cert_der(pki.load_cert_pem(pem, "a member's bundle"))
                except IdentityError as exc:
                    logger.debug("skipped a certificate in a member's bundle: %s", exc)
                    continue
                if der in self._member_certs:
                    continue
                if self.learn_member(der) is not None:
                    new += 1
        return new

    def learn_member(self, cert_der: bytes) -> pki.CertInfo | None:
        """Check a member's certificate; persist the member the first time we hear it."""
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
        if len(self._member_certs) > CACHE_MAX:
            self._member_certs.clear()
        self._member_certs[cert_der] = info
        if self.directory.learn(cert.public_key(), info):  # type: ignore[arg-type]
            roster.upsert(self.ctx.store, member_of(cert, None, self.ctx.clock()))
            logger.info("learnt member name=%s node_id=%s", info.name, info.node_id)
        return info
