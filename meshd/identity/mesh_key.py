"""A mesh key record: a new sealing key epoch, signed by the mesh CA.

A CA holder makes one each time it removes a node (``meshd.shell.key_sync``). The
record holds the key itself, so it is a secret: it travels only over a member's own
mTLS channel (and sits in each member's store), never in a sealed datagram. The CA's
signature lets any member relay it to another (a member that was away fetches it from
whoever it hears first) without being able to forge one.

Wire form: ``signature (64 bytes) || canonical JSON`` with a domain-separation prefix,
like a revocation; bundles reuse the revocation framing.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meshd.core.keyring import MeshKey
from meshd.errors import EnvelopeError, IdentityError
from meshd.identity.revocation import bundle, unbundle

__all__ = ["KeyRecord", "bundle", "sign", "unbundle", "verify"]

_PREFIX = b"meshd-mesh-key-v1\x00"
_SIG_LEN = 64


@dataclass(frozen=True)
class KeyRecord:
    key: MeshKey
    made_at: float
    made_by: str  # the CA holder that rotated
    reason: str  # e.g. "removed beta"


def sign(ca_key: Ed25519PrivateKey, rec: KeyRecord) -> bytes:
    payload = json.dumps(
        {
            "epoch": rec.key.epoch,
            "secret": base64.b64encode(rec.key.secret).decode(),
            "made_at": rec.made_at,
            "made_by": rec.made_by,
            "reason": rec.reason,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    return ca_key.sign(_PREFIX + payload) + payload


def verify(blob: bytes, ca_cert: x509.Certificate) -> KeyRecord:
    """Check a key record against the mesh CA; IdentityError if it is not one."""
    if len(blob) <= _SIG_LEN:
        raise IdentityError("mesh key record is truncated")
    sig, payload = blob[:_SIG_LEN], blob[_SIG_LEN:]
    ca = ca_cert.public_key()
    if not isinstance(ca, Ed25519PublicKey):
        raise IdentityError("the mesh CA key is not Ed25519")
    try:
        ca.verify(sig, _PREFIX + payload)
    except InvalidSignature as exc:
        raise IdentityError("mesh key record is not signed by the mesh CA") from exc
    try:
        raw = json.loads(payload)
        epoch = raw["epoch"]
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise TypeError("epoch")
        key = MeshKey(epoch, base64.b64decode(str(raw["secret"]), validate=True))
        return KeyRecord(key, float(raw["made_at"]), str(raw["made_by"]), str(raw["reason"]))
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError, EnvelopeError) as exc:
        raise IdentityError(f"mesh key record is malformed: {exc}") from exc
