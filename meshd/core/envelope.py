"""The envelope: the one way nodes seal what they send and sign what they assert.

Theory of operation
-------------------
Two layers, used together or apart (DESIGN.md §3):

*Sealing* (privacy and membership of the mesh). Every datagram between nodes is a
NaCl SecretBox (XSalsa20-Poly1305) under the 32-byte mesh secret::

    version (1) | nonce (24) | box( timestamp_ms (8) | payload )

The box's random 24-byte nonce doubles as the replay nonce. An outsider can neither
read nor forge a datagram; a replayed one is caught by :class:`ReplayGuard`, a stale or
far-future one by its timestamp. Overhead is 49 bytes.

*Signing* (authorship). A protocol message that asserts something (a bid, a placement,
a vote, a record) is signed by its author's Ed25519 node key and carries the author's
certificate, so any member can check it with nothing but the mesh CA certificate and
its revocation list, even when the message was relayed by somebody else::

    "MS" | version (1) | kind_len (1) | kind | timestamp_ms (8) | nonce (16)
         | cert_len (2) | cert DER | body_len (4) | body | signature (64)

The signature covers a domain-separation prefix and every byte before it. Certificate
chains are verified once per distinct certificate and cached; validity and revocation
are rechecked on every message, because both change with time.

*Compact* form (version 2): the certificate field holds the author's 20-byte node id
instead of its ~430-byte certificate, for datagrams that must fit one Ethernet frame
(membership). It verifies only where the author's certificate is already known — seen
in a full-form message, over mTLS, or in the roster (:meth:`Verifier.learn`); anywhere
else it raises :class:`UnknownAuthorError` so the caller can fetch the certificate.

Everything here is pure: ``now`` is passed in and nonces come from a callable (the OS
CSPRNG by default, a seeded source in the simulator).
"""

from __future__ import annotations

import heapq
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

import nacl.exceptions
import nacl.secret
import nacl.signing
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meshd.errors import EnvelopeError, IdentityError, ReplayError, UnknownAuthorError
from meshd.identity import pki
from meshd.identity.revocation import RevocationList

SEAL_VERSION = 1
SIGN_VERSION = 1
COMPACT_VERSION = 2
_NODE_ID_LEN = 20
SECRET_BYTES = nacl.secret.SecretBox.KEY_SIZE
SEAL_OVERHEAD = 1 + nacl.secret.SecretBox.NONCE_SIZE + nacl.secret.SecretBox.MACBYTES + 8
_SIGN_PREFIX = b"meshd-msg-v1\x00"
_SIG_LEN = 64
_NONCE_LEN = 16
_TS = struct.Struct(">Q")
_HEAD = struct.Struct(">2sBB")

RandomBytes = Callable[[int], bytes]


class ReplayGuard:
    """Remembers nonces seen inside a time window; refuses repeats and stale messages.

    Memory is bounded: when ``capacity`` is reached the oldest nonce is forgotten and
    the *floor* rises to its timestamp, so anything at or before the floor is refused
    as stale rather than risk accepting a replay we no longer remember. Nonces that
    fall out of the window raise the floor too, which matters only if ``now`` ever
    goes backwards (a wall-clock step).
    """

    def __init__(self, window_s: float, capacity: int) -> None:
        if window_s <= 0 or capacity <= 0:
            raise ValueError("replay window and capacity must be positive")
        self._window = window_s
        self._capacity = capacity
        self._seen: set[bytes] = set()
        self._heap: list[tuple[float, bytes]] = []
        self._floor = float("-inf")

    def check(self, nonce: bytes, ts: float, now: float) -> None:
        """Accept ``nonce`` stamped ``ts`` at ``now`` once, or raise ReplayError."""
        if ts < now - self._window:
            raise ReplayError(f"message is stale ({now - ts:.1f}s old)")
        if ts > now + self._window:
            raise ReplayError(f"message is {ts - now:.1f}s in the future; check the clocks")
        if ts <= self._floor:
            raise ReplayError("message is older than the replay memory")
        if nonce in self._seen:
            raise ReplayError("message was already seen (replay)")
        self._seen.add(nonce)
        heapq.heappush(self._heap, (ts, nonce))
        self._expire(now)

    def _expire(self, now: float) -> None:
        horizon = now - self._window
        while self._heap and (self._heap[0][0] < horizon or len(self._heap) > self._capacity):
            ts, old = heapq.heappop(self._heap)
            self._seen.discard(old)
            # Raise the floor for every forgotten nonce, stale ones too: the stale check
            # alone would let a forgotten nonce back in if the wall clock steps backwards.
            # While time moves forwards the floor stays below the horizon and costs nothing.
            self._floor = max(self._floor, ts)

    def __len__(self) -> int:
        return len(self._seen)


class Sealer:
    """Seals and opens datagrams with the mesh secret."""

    def __init__(
        self,
        secret: bytes,
        guard: ReplayGuard,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        if len(secret) != SECRET_BYTES:
            raise EnvelopeError(f"the mesh secret must be {SECRET_BYTES} bytes")
        self._box = nacl.secret.SecretBox(secret)
        self._guard = guard
        self._random = random_bytes

    def seal(self, payload: bytes, now: float) -> bytes:
        nonce = self._random(nacl.secret.SecretBox.NONCE_SIZE)
        sealed = self._box.encrypt(_TS.pack(int(now * 1000)) + payload, nonce)
        return bytes((SEAL_VERSION,)) + bytes(sealed)

    def open(self, datagram: bytes, now: float) -> bytes:
        """Return the payload, or raise EnvelopeError (foreign, corrupt) / ReplayError."""
        if len(datagram) < SEAL_OVERHEAD:
            raise EnvelopeError("datagram too short to be sealed")
        if datagram[0] != SEAL_VERSION:
            raise EnvelopeError(f"unknown seal version {datagram[0]}")
        body = datagram[1:]
        try:
            plain = self._box.decrypt(body)
        except nacl.exceptions.CryptoError as exc:
            raise EnvelopeError("datagram does not open with the mesh secret") from exc
        ts = _TS.unpack_from(plain)[0] / 1000.0
        self._guard.check(body[: nacl.secret.SecretBox.NONCE_SIZE], ts, now)
        return plain[_TS.size :]


@dataclass(frozen=True)
class Signed:
    """A verified signed message."""

    author: str
    node_id: str
    role: str
    serial: str
    kind: str
    ts: float
    nonce: bytes
    body: bytes
    # The author's certificate as sent: lets a node add a member it first hears of
    # over the mesh to its durable roster.
    cert_der: bytes = b""


class Signer:
    """Signs messages as this node."""

    def __init__(
        self,
        key: Ed25519PrivateKey,
        cert: x509.Certificate,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        # Ed25519 through libsodium (pynacl): the same signatures as OpenSSL's, made
        # and checked ~30 % faster, on every datagram a node sends and receives.
        self._key = nacl.signing.SigningKey(
            key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
        )
        self._cert_der = pki.cert_der(cert)
        public = cert.public_key()
        if not isinstance(public, Ed25519PublicKey):
            raise EnvelopeError("a signer's certificate must hold an Ed25519 key")
        self._node_id = bytes.fromhex(pki.node_id_of(public))
        self._random = random_bytes

    def sign(self, kind: str, body: bytes, now: float, *, compact: bool = False) -> bytes:
        """Sign ``body``; ``compact`` names us by node id instead of carrying our cert."""
        kind_b = kind.encode()
        if not 0 < len(kind_b) < 256:
            raise ValueError("message kind must be 1..255 bytes")
        author = self._node_id if compact else self._cert_der
        head = b"".join(
            (
                _HEAD.pack(b"MS", COMPACT_VERSION if compact else SIGN_VERSION, len(kind_b)),
                kind_b,
                _TS.pack(int(now * 1000)),
                self._random(_NONCE_LEN),
                struct.pack(">H", len(author)),
                author,
                struct.pack(">I", len(body)),
                body,
            )
        )
        return head + self._key.sign(_SIGN_PREFIX + head).signature


@dataclass(frozen=True)
class _Parsed:
    compact: bool
    kind: str
    ts: float
    nonce: bytes
    cert_der: bytes
    body: bytes
    signed_part: bytes
    signature: bytes


def _parse(data: bytes) -> _Parsed:
    try:
        magic, version, kind_len = _HEAD.unpack_from(data, 0)
        if magic != b"MS":
            raise EnvelopeError("not a signed meshd message")
        if version not in (SIGN_VERSION, COMPACT_VERSION):
            raise EnvelopeError(f"unknown signed-message version {version}")
        if kind_len == 0:
            raise EnvelopeError("signed message has an empty kind")
        pos = _HEAD.size
        kind = data[pos : pos + kind_len].decode()
        pos += kind_len
        (ts_ms,) = _TS.unpack_from(data, pos)
        pos += _TS.size
        nonce = data[pos : pos + _NONCE_LEN]
        pos += _NONCE_LEN
        (cert_len,) = struct.unpack_from(">H", data, pos)
        pos += 2
        cert_der = data[pos : pos + cert_len]
        pos += cert_len
        (body_len,) = struct.unpack_from(">I", data, pos)
        pos += 4
        body = data[pos : pos + body_len]
        pos += body_len
    except (struct.error, UnicodeDecodeError) as exc:
        raise EnvelopeError("malformed signed message") from exc
    if len(body) != body_len or len(cert_der) != cert_len or len(nonce) != _NONCE_LEN:
        raise EnvelopeError("signed message is truncated")
    if len(data) != pos + _SIG_LEN:
        raise EnvelopeError("signed message has a bad length")
    compact = version == COMPACT_VERSION
    if compact and cert_len != _NODE_ID_LEN:
        raise EnvelopeError("compact signed message must name its author by a 20-byte id")
    return _Parsed(compact, kind, ts_ms / 1000.0, nonce, cert_der, body, data[:pos], data[pos:])


class Verifier:
    """Checks signed messages against the mesh CA and the revocation list."""

    def __init__(
        self,
        ca_cert: x509.Certificate,
        revocations: RevocationList,
        guard: ReplayGuard | None,
        cache_size: int = 4096,
    ) -> None:
        self._ca = ca_cert
        self._revocations = revocations
        self._guard = guard
        self._cache: dict[bytes, tuple[pki.CertInfo, nacl.signing.VerifyKey]] = {}
        self._cache_size = cache_size
        # Authors whose certificate we verified, by node id: what compact messages need.
        # Bounded by the mesh's size (one entry per member), not by traffic.
        self._authors: dict[str, tuple[pki.CertInfo, nacl.signing.VerifyKey]] = {}

    def learn(self, der: bytes, now: float) -> pki.CertInfo:
        """Verify a member's certificate and remember it for compact messages."""
        return self._cert(der, now)[0]

    def knows(self, node_id: str) -> bool:
        return node_id in self._authors

    def _cert(self, der: bytes, now: float) -> tuple[pki.CertInfo, nacl.signing.VerifyKey]:
        hit = self._cache.get(der)
        if hit is None:
            try:
                cert = pki.load_cert_der(der)
                info = pki.verify(cert, self._ca, now)
            except IdentityError as exc:
                raise EnvelopeError(f"author certificate refused: {exc}") from exc
            public = cert.public_key()
            assert isinstance(public, Ed25519PublicKey)  # pki.verify checked the key type
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            key = nacl.signing.VerifyKey(raw)
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            hit = (info, key)
            self._cache[der] = hit
            self._authors[info.node_id] = hit
        info = hit[0]
        if not info.not_before <= now <= info.not_after:
            raise EnvelopeError(f"author certificate for {info.name!r} has expired")
        return hit

    def _author(self, node_id: bytes, now: float) -> tuple[pki.CertInfo, nacl.signing.VerifyKey]:
        hit = self._authors.get(node_id.hex())
        if hit is None:
            raise UnknownAuthorError(node_id.hex())
        info = hit[0]
        if not info.not_before <= now <= info.not_after:
            raise EnvelopeError(f"author certificate for {info.name!r} has expired")
        return hit

    def verify(self, data: bytes, now: float, *, fresh: bool = True) -> Signed:
        """Return the verified message or raise EnvelopeError / ReplayError.

        ``fresh=False`` skips the timestamp and replay checks: for signed *records*
        (placements, service records) that are legitimately stored and relayed long
        after they were made; they carry their own versions and expiries.
        """
        msg = _parse(data)
        info, key = (
            self._author(msg.cert_der, now) if msg.compact else self._cert(msg.cert_der, now)
        )
        if self._revocations.is_revoked(info.serial, info.node_id):
            raise EnvelopeError(f"author {info.name!r} was removed from the mesh")
        try:
            key.verify(_SIGN_PREFIX + msg.signed_part, msg.signature)
        except nacl.exceptions.BadSignatureError as exc:
            raise EnvelopeError(f"signature by {info.name!r} does not verify") from exc
        if fresh and self._guard is not None:
            self._guard.check(info.node_id.encode() + msg.nonce, msg.ts, now)
        return Signed(
            author=info.name,
            node_id=info.node_id,
            role=info.role,
            serial=info.serial,
            kind=msg.kind,
            ts=msg.ts,
            nonce=msg.nonce,
            body=msg.body,
            cert_der=b"" if msg.compact else msg.cert_der,
        )
