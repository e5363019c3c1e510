"""The envelope: the one way nodes seal what they send and sign what they assert.

Theory of operation
-------------------
Two layers, used together or apart (DESIGN.md §3):

*Sealing* (privacy and membership of the mesh). Every datagram between nodes is a
NaCl SecretBox (XSalsa20-Poly1305) under the mesh's current key
(:mod:`meshd.core.keyring`: a new key epoch each time a node is removed)::

    version (1) | key id (4) | nonce (24)
        | box( timestamp_ms (8) | addressee_len (1) | addressee | payload )

An outsider (and, once the key has rotated, a removed node) can neither read nor
forge a datagram. The *addressee* is the port and IP the sender sent it to
(:func:`addressee`): a datagram copied to any other node is dropped there as
misaddressed. The box's random 24-byte nonce doubles as the replay nonce, checked per
source address by :class:`~meshd.core.replay.ReplayGuard` with the timestamp (stale,
far-future and replayed datagrams are dropped). Overhead is 60 bytes (72 over IPv6).

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

import ipaddress
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

from meshd.core.keyring import KEY_ID_BYTES, KeyRing
from meshd.core.replay import ReplayGuard
from meshd.errors import EnvelopeError, IdentityError, MisaddressedError, UnknownAuthorError
from meshd.identity import pki
from meshd.identity.revocation import RevocationList

__all__ = ["ReplayGuard", "Sealer", "Signed", "Signer", "Verifier", "addressee"]

SEAL_VERSION = 2
SIGN_VERSION = 1
COMPACT_VERSION = 2
_NODE_ID_LEN = 20
SECRET_BYTES = nacl.secret.SecretBox.KEY_SIZE
_BOX_NONCE = nacl.secret.SecretBox.NONCE_SIZE
# version, key id, nonce, MAC, timestamp, addressee length; then the addressee: a port
# (2) and an IPv4 (4) or IPv6 (16) address, or no address for a host name.
_SEAL_FIXED = 1 + KEY_ID_BYTES + _BOX_NONCE + nacl.secret.SecretBox.MACBYTES + 8 + 1
SEAL_OVERHEAD = _SEAL_FIXED + 6  # over IPv4
SEAL_OVERHEAD_MAX = _SEAL_FIXED + 18  # over IPv6
_SEAL_MIN = _SEAL_FIXED + 2
_SIGN_PREFIX = b"meshd-msg-v1\x00"
_SIG_LEN = 64
_NONCE_LEN = 16
_TS = struct.Struct(">Q")
_HEAD = struct.Struct(">2sBB")

RandomBytes = Callable[[int], bytes]


def addressee(addr: tuple[str, int]) -> bytes:
    """How a sealed datagram names where it was sent: port (2 bytes) and IP (4 or 16;
    none for a host name, which then binds the port only)."""
    port = struct.pack(">H", addr[1])
    try:
        ip = ipaddress.ip_address(addr[0].split("%", 1)[0])
    except ValueError:
        return port
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return port + ip.packed


class Sealer:
    """Seals and opens datagrams with the mesh's keys, each bound to its addressee."""

    def __init__(
        self,
        keys: KeyRing,
        guard: ReplayGuard,
        is_me: Callable[[bytes], bool],
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        self._keys = keys
        self._guard = guard
        self._is_me = is_me
        self._random = random_bytes
        self._to: dict[tuple[str, int], bytes] = {}

    def seal(self, payload: bytes, to: tuple[str, int], now: float) -> bytes:
        """``payload`` sealed for the node at ``to`` (valid there only)."""
        name = self._to.get(to)
        if name is None:
            name = addressee(to)
            if len(self._to) >= 4096:
                self._to.clear()
            self._to[to] = name
        key_id, box = self._keys.current_box()
        nonce = self._random(_BOX_NONCE)
        plain = b"".join((_TS.pack(int(now * 1000)), bytes((len(name),)), name, payload))
        return bytes((SEAL_VERSION,)) + key_id + bytes(box.encrypt(plain, nonce))

    def open(self, datagram: bytes, sender: tuple[str, int], now: float) -> bytes:
        """Return the payload, or raise EnvelopeError (foreign, corrupt, misaddressed,
        sealed with a key we lack: :class:`UnknownKeyError`) or ReplayError."""
        if len(datagram) < _SEAL_MIN:
            raise EnvelopeError("datagram too short to be sealed")
        if datagram[0] != SEAL_VERSION:
            raise EnvelopeError(
                f"unknown seal version {datagram[0]} (an older or newer meshd? "
                "every node of a mesh must run a release with the same seal version)"
            )
        box = self._keys.box_for(datagram[1 : 1 + KEY_ID_BYTES], now)
        body = datagram[1 + KEY_ID_BYTES :]
        try:
            plain = box.decrypt(body)
        except nacl.exceptions.CryptoError as exc:
            raise EnvelopeError("datagram does not open with the mesh key it names") from exc
        ts = _TS.unpack_from(plain)[0] / 1000.0
        end = _TS.size + 1 + plain[_TS.size]
        if len(plain) < end or not self._is_me(plain[_TS.size + 1 : end]):
            raise MisaddressedError("datagram was sealed for another node")
        self._guard.check(sender, body[:_BOX_NONCE], ts, now)
        return plain[end:]


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
            self._guard.check(info.node_id, msg.nonce, msg.ts, now)
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
