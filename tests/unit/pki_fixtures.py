"""Shared meshes, nodes and helpers for the envelope, PKI and revocation unit tests.

Key generation and certificate issuance cost a little, and hypothesis calls a test
hundreds of times, so every mesh is built once per process (``functools.cache``) and
shared read-only. Time is the fixed :data:`NOW`; nonces come from seeded sources.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshd.core.envelope import ReplayGuard, Sealer, Signer, Verifier, addressee
from meshd.core.keyring import KeyRing, MeshKey
from meshd.identity import pki
from meshd.identity.revocation import RevocationList

NOW = 1_700_000_000.0
DAY = 86_400.0
DOMAIN = "lab.example"
OTHER_DOMAIN = "other.example"
WINDOW_S = 30.0
CERT_DAYS = 30
CA_DAYS = 3650


@dataclass(frozen=True)
class Node:
    name: str
    role: str
    key: Ed25519PrivateKey
    cert: x509.Certificate

    @property
    def der(self) -> bytes:
        return pki.cert_der(self.cert)

    @property
    def info(self) -> pki.CertInfo:
        return pki.describe(self.cert)


@dataclass(frozen=True)
class Mesh:
    domain: str
    ca_key: Ed25519PrivateKey
    ca_cert: x509.Certificate
    nodes: dict[str, Node] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def issue(
        self,
        name: str,
        role: str = "node",
        *,
        key: Ed25519PrivateKey | None = None,
        now: float = NOW,
        days: int = CERT_DAYS,
    ) -> Node:
        """A fresh node certificate (not cached; pass ``key`` to reuse a key)."""
        key = key or pki.new_key()
        cert = pki.issue(self.ca_key, self.ca_cert, key.public_key(), name, role, now, days)
        return Node(name, role, key, cert)


def _build(domain: str, members: tuple[tuple[str, str], ...]) -> Mesh:
    ca_key, ca_cert = pki.create_ca(domain, NOW, CA_DAYS)
    mesh = Mesh(domain, ca_key, ca_cert)
    for name, role in members:
        mesh.nodes[name] = mesh.issue(name, role)
    return mesh


@functools.cache
def mesh() -> Mesh:
    """The mesh under test: two nodes, an admin client and a tenant client."""
    return _build(
        DOMAIN,
        (("alpha", "node"), ("beta", "node"), ("ops", "admin"), ("acme-ci", "tenant:acme")),
    )


@functools.cache
def twin_mesh() -> Mesh:
    """Another mesh with the *same* domain (so the same CA name) but its own CA key."""
    return _build(DOMAIN, (("alpha", "node"), ("mallory", "node")))


@functools.cache
def foreign_mesh() -> Mesh:
    """Another mesh with another domain."""
    return _build(OTHER_DOMAIN, (("alpha", "node"),))


def seeded_bytes(seed: int) -> random.Random:
    """A deterministic stand-in for os.urandom: pass ``seeded_bytes(n).randbytes``."""
    return random.Random(seed)


def secret(seed: int) -> bytes:
    return seeded_bytes(seed).randbytes(32)


# Where the test sealers live: each sends to HERE, and accepts what is sealed for HERE,
# from PEER; tests of the addressee give their own.
HERE = ("127.0.0.1", 7000)
PEER = ("127.0.0.1", 7001)


class Pipe:
    """A real :class:`Sealer` at ``HERE``: ``seal`` sends to ``HERE``, ``open`` takes
    what came from ``PEER`` (so the envelope tests keep their one-line calls)."""

    def __init__(self, sealer: Sealer, guard: ReplayGuard, keys: KeyRing) -> None:
        self.sealer, self._guard, self.keys = sealer, guard, keys

    def seal(self, payload: bytes, now: float, to: tuple[str, int] = HERE) -> bytes:
        return self.sealer.seal(payload, to, now)

    def open(self, datagram: bytes, now: float, sender: tuple[str, int] = PEER) -> bytes:
        return self.sealer.open(datagram, sender, now)


def sealer(
    seed: int = 1,
    *,
    window_s: float = WINDOW_S,
    capacity: int = 4096,
    key_seed: int = 0,
    at: tuple[str, int] = HERE,
    grace_s: float = 15.0,
) -> Pipe:
    """A sealer with its own replay memory at ``at``; sharing ``key_seed``, one key."""
    keys = KeyRing(grace_s)
    keys.add(MeshKey(0, secret(key_seed)), 0.0)
    guard = ReplayGuard(window_s, capacity)
    me = addressee(at)
    return Pipe(Sealer(keys, guard, me.__eq__, seeded_bytes(seed).randbytes), guard, keys)


def signer(node: Node, seed: int = 1) -> Signer:
    return Signer(node.key, node.cert, seeded_bytes(seed).randbytes)


def verifier(
    of: Mesh | None = None,
    revocations: RevocationList | None = None,
    *,
    guarded: bool = True,
    window_s: float = WINDOW_S,
    capacity: int = 4096,
    cache_size: int = 4096,
) -> Verifier:
    """A verifier for ``of`` (default: :func:`mesh`); ``guarded=False`` has no replay guard."""
    m = mesh() if of is None else of
    # Not ``revocations or ...``: an empty RevocationList is falsy (it has __len__).
    revoked = RevocationList() if revocations is None else revocations
    guard = ReplayGuard(window_s, capacity) if guarded else None
    return Verifier(m.ca_cert, revoked, guard, cache_size)


def flip(data: bytes, pos: int, bit: int) -> bytes:
    out = bytearray(data)
    out[pos] ^= 1 << bit
    return bytes(out)
