"""Custody of the mesh CA key: handing it to another member, and an offline backup.

Theory of operation
-------------------
The founder is the first CA holder; ``meshd ca promote NODE`` makes another one, so
enrolment and revocation survive the founder (DESIGN.md §3, "No single CA holder").
Every holder holds *the same* key: tokens, certificates and revocations signed by any
holder verify against the one CA certificate every member already has, so nothing
else in the mesh changes when a holder is added.

A promotion travels as one POST over mutual TLS from the holder to the member, and
carries two things:

* a **promotion record** signed by the CA key, naming the receiver (name and node id),
  the sender and the time. It is how the receiver knows the sender is a CA holder:
  node certificates all carry the role ``node`` (roles are fixed at enrolment), so
  only the signature proves custody. It names the receiver, so it can't be replayed
  to another node, and it is fresh (within ``security.max_clock_skew_s``).
* the **CA key, sealed to the receiver's node key** (its Ed25519 key converted to
  X25519, a NaCl SealedBox). TLS already hides it on the wire; the sealing means that
  even a connection that reached the wrong server would carry nothing it can open.

The receiver also checks that the key it opened is the private half of the CA
certificate before it writes ``identity/ca.key`` (0600, like the founder's).

The **backup** is the CA key sealed with a passphrase (Argon2id, then SecretBox),
with the CA fingerprint in the clear so a restore can say which mesh a file is for.
Restoring writes ``ca.key`` on a member of that mesh; the CA certificate, the mesh
secret and the roster come from being a member, not from the backup.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.public import PrivateKey, PublicKey, SealedBox

from meshd.errors import IdentityError
from meshd.identity import pki

_PROMOTION_PREFIX = b"meshd-ca-promotion-v1\x00"
_SIG_LEN = 64
BACKUP_KIND = "meshd-ca-backup"
# Argon2id cost of a backup: the "moderate" libsodium preset (about 1 s and 256 MiB),
# stored in the file so a restore needs no flag. Tests pass the minimum.
BACKUP_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_MODERATE
BACKUP_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_MODERATE
MIN_PASSPHRASE = 8


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: object, what: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise IdentityError(f"{what} is not valid base64") from exc


def _raw_private(key: Ed25519PrivateKey) -> bytes:
    seed = key.private_bytes_raw()
    return seed + pki.public_raw(key.public_key())


def matches_ca(key: Ed25519PrivateKey, ca_cert: x509.Certificate) -> bool:
    """Whether ``key`` is the private half of the mesh CA certificate."""
    ca_pub = ca_cert.public_key()
    return isinstance(ca_pub, Ed25519PublicKey) and pki.public_raw(ca_pub) == pki.public_raw(
        key.public_key()
    )


# -- promotion -----------------------------------------------------------------------


@dataclass(frozen=True)
class Promotion:
    node: str
    node_id: str
    by: str
    at: float


def offer(
    ca_key: Ed25519PrivateKey,
    ca_cert: x509.Certificate,
    target_cert: x509.Certificate,
    sender: str,
    now: float,
) -> dict[str, Any]:
    """The body of a promotion: the signed record and the CA key sealed to the target."""
    if not matches_ca(ca_key, ca_cert):
        raise IdentityError("this node's CA key does not match the mesh CA certificate")
    info = pki.describe(target_cert)
    payload = json.dumps(
        {"v": 1, "node": info.name, "node_id": info.node_id, "by": sender, "at": round(now, 3)},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    record = ca_key.sign(_PROMOTION_PREFIX + payload) + payload
    target_pub = target_cert.public_key()
    assert isinstance(target_pub, Ed25519PublicKey)  # describe() checked it
    curve = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(pki.public_raw(target_pub))
    sealed = SealedBox(PublicKey(curve)).encrypt(ca_key.private_bytes_raw())
    return {"promotion": _b64(record), "sealed_key": _b64(sealed)}


def verify_promotion(record: bytes, ca_cert: x509.Certificate) -> Promotion:
    """Check a promotion record's CA signature and shape."""
    if len(record) <= _SIG_LEN:
        raise IdentityError("the promotion record is truncated")
    sig, payload = record[:_SIG_LEN], record[_SIG_LEN:]
    ca_pub = ca_cert.public_key()
    if not isinstance(ca_pub, Ed25519PublicKey):
        raise IdentityError("the mesh CA key is not Ed25519")
    try:
        ca_pub.verify(sig, _PROMOTION_PREFIX + payload)
    except InvalidSignature as exc:
        raise IdentityError(
            "the promotion is not signed by the mesh CA key; only a CA holder can promote"
        ) from exc
    try:
        raw = json.loads(payload)
        if raw.get("v") != 1:
            raise IdentityError(f"unsupported promotion version {raw.get('v')!r}")
        return Promotion(str(raw["node"]), str(raw["node_id"]), str(raw["by"]), float(raw["at"]))
    except IdentityError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        raise IdentityError("the promotion record is malformed") from exc


def accept(
    body: dict[str, Any],
    node_key: Ed25519PrivateKey,
    ca_cert: x509.Certificate,
    me: pki.CertInfo,
    sender: str,
    now: float,
    max_age_s: float,
) -> tuple[Ed25519PrivateKey, Promotion]:
    """The receiver's checks; returns the CA key to store. Raises IdentityError."""
    promo = verify_promotion(_unb64(body.get("promotion"), "the promotion record"), ca_cert)
    if promo.node != me.name or promo.node_id != me.node_id:
        raise IdentityError(f"the promotion names {promo.node}, not this node ({me.name})")
    if promo.by != sender:
        raise IdentityError(f"the promotion was signed for {promo.by} to send but {sender} sent it")
    if abs(now - promo.at) > max_age_s:
        raise IdentityError("the promotion is stale or from the future; check the clocks")
    raw = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(_raw_private(node_key))
    try:
        seed = SealedBox(PrivateKey(raw)).decrypt(_unb64(body.get("sealed_key"), "the sealed key"))
        ca_key = Ed25519PrivateKey.from_private_bytes(seed)
    except (nacl.exceptions.CryptoError, ValueError) as exc:
        raise IdentityError("the sealed CA key does not open with this node's key") from exc
    if not matches_ca(ca_key, ca_cert):
        raise IdentityError("the key sent is not the mesh CA key")
    return ca_key, promo


# -- backup --------------------------------------------------------------------------


def seal_backup(
    ca_key: Ed25519PrivateKey,
    ca_cert: x509.Certificate,
    passphrase: bytes,
    opslimit: int = BACKUP_OPSLIMIT,
    memlimit: int = BACKUP_MEMLIMIT,
) -> bytes:
    """The CA key encrypted under ``passphrase``: a small JSON document."""
    if len(passphrase) < MIN_PASSPHRASE:
        raise IdentityError(f"the passphrase must be at least {MIN_PASSPHRASE} characters")
    if not matches_ca(ca_key, ca_cert):
        raise IdentityError("this node's CA key does not match the mesh CA certificate")
    salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
    box_key = nacl.pwhash.argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, passphrase, salt, opslimit=opslimit, memlimit=memlimit
    )
    sealed = nacl.secret.SecretBox(box_key).encrypt(pki.key_pem(ca_key))
    doc = {
        "kind": BACKUP_KIND,
        "v": 1,
        "domain": pki.ca_domain(ca_cert),
        "ca_fingerprint": pki.fingerprint(ca_cert),
        "ca_cert": pki.cert_pem(ca_cert).decode(),
        "kdf": "argon2id",
        "opslimit": opslimit,
        "memlimit": memlimit,
        "salt": _b64(salt),
        "box": _b64(bytes(sealed)),
    }
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def open_backup(blob: bytes, passphrase: bytes, ca_cert: x509.Certificate) -> Ed25519PrivateKey:
    """The CA key in a backup, if it is this mesh's and the passphrase is right."""
    try:
        doc = json.loads(blob)
        if not isinstance(doc, dict) or doc.get("kind") != BACKUP_KIND or doc.get("v") != 1:
            raise IdentityError("this file is not a meshd CA backup")
        fp, ops, mem = str(doc["ca_fingerprint"]), int(doc["opslimit"]), int(doc["memlimit"])
        salt, box = _unb64(doc["salt"], "the backup's salt"), _unb64(doc["box"], "the backup")
    except IdentityError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise IdentityError("this file is not a meshd CA backup") from exc
    if fp != pki.fingerprint(ca_cert):
        raise IdentityError(
            f"this backup is of another mesh's CA ({doc.get('domain')}, {fp[:16]}...), "
            f"not of {pki.ca_domain(ca_cert)}"
        )
    try:
        box_key = nacl.pwhash.argon2id.kdf(
            nacl.secret.SecretBox.KEY_SIZE, passphrase, salt, opslimit=ops, memlimit=mem
        )
        pem = nacl.secret.SecretBox(box_key).decrypt(box)
    except (nacl.exceptions.CryptoError, ValueError) as exc:
        raise IdentityError("the passphrase does not open this backup") from exc
    key = pki.load_key_pem(pem, "the key in the backup")
    if not matches_ca(key, ca_cert):
        raise IdentityError("the key in the backup is not this mesh's CA key")
    return key
