"""Revocation: a CA-signed record that removes a node from the mesh for good.

A revocation names the certificate serial (what TLS and envelopes check), the node's
name and id (what the roster and operators see) and when it was decided. It is signed
by the mesh CA key, so any member can check it and relay it, and nobody but a CA holder
can make one. Records are persisted in the store and loaded into a
:class:`RevocationList` that the envelope verifier and the TLS API consult.

Wire form: ``signature (64 bytes) || canonical JSON``; the signature covers a domain
separation prefix plus the JSON, so a revocation can never be replayed as another kind
of signed object.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meshd.errors import IdentityError

_PREFIX = b"meshd-revocation-v1\x00"
_SIG_LEN = 64
_LEN_BYTES = 2  # records in a bundle are length-prefixed, big-endian
MAX_RECORD = 4096


@dataclass(frozen=True)
class Revocation:
    serial: str
    name: str
    node_id: str
    revoked_at: float
    reason: str


def sign(ca_key: Ed25519PrivateKey, rev: Revocation) -> bytes:
    payload = json.dumps(asdict(rev), sort_keys=True, separators=(",", ":")).encode()
    return ca_key.sign(_PREFIX + payload) + payload


def verify(blob: bytes, ca_cert: x509.Certificate) -> Revocation:
    """Check a revocation record against the mesh CA; raise IdentityError if it is not one."""
    if len(blob) <= _SIG_LEN:
        raise IdentityError("revocation record is truncated")
    sig, payload = blob[:_SIG_LEN], blob[_SIG_LEN:]
    key = ca_cert.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise IdentityError("the mesh CA key is not Ed25519")
    try:
        key.verify(sig, _PREFIX + payload)
    except InvalidSignature as exc:
        raise IdentityError("revocation record is not signed by the mesh CA") from exc
    try:
        raw = json.loads(payload)
        return Revocation(
            serial=str(raw["serial"]),
            name=str(raw["name"]),
            node_id=str(raw["node_id"]),
            revoked_at=float(raw["revoked_at"]),
            reason=str(raw["reason"]),
        )
    # OverflowError: float() of a huge JSON integer; RecursionError: absurdly deep JSON.
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        raise IdentityError("revocation record is malformed") from exc


class RevocationList:
    """The set of revoked certificates this node knows of (checked on every message)."""

    def __init__(self) -> None:
        self._serials: dict[str, Revocation] = {}
        self._node_ids: set[str] = set()

    def add(self, rev: Revocation) -> bool:
        """Record ``rev``; return True if it was new."""
        if rev.serial in self._serials:
            return False
        self._serials[rev.serial] = rev
        self._node_ids.add(rev.node_id)
        return True

    def is_revoked(self, serial: str, node_id: str = "") -> bool:
        # A removed node's key is dead too: a second certificate for the same key
        # (say, from a stale CA backup) must not bring it back.
        return serial in self._serials or (bool(node_id) and node_id in self._node_ids)

    def __len__(self) -> int:
        return len(self._serials)

    def __iter__(self) -> Iterator[Revocation]:
        return iter(self._serials.values())


def bundle(records: list[bytes]) -> bytes:
    """Several records in one body (anti-entropy): each is ``length (2 bytes) || record``."""
    out = bytearray()
    for r in records:
        if len(r) > MAX_RECORD:
            raise IdentityError(f"a revocation record of {len(r)} bytes is too large")
        out += len(r).to_bytes(_LEN_BYTES, "big") + r
    return bytes(out)


def unbundle(body: bytes) -> list[bytes]:
    """The records of a :func:`bundle`; IdentityError if the framing is broken."""
    records, i = [], 0
    while i < len(body):
        if i + _LEN_BYTES > len(body):
            raise IdentityError("revocation bundle is truncated")
        n = int.from_bytes(body[i : i + _LEN_BYTES], "big")
        i += _LEN_BYTES
        if n == 0 or n > MAX_RECORD or i + n > len(body):
            raise IdentityError("revocation bundle has a bad record length")
        records.append(bytes(body[i : i + n]))
        i += n
    return records
