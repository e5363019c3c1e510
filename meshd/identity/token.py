"""Join tokens: single-use, expiring, CA-signed invitations into a mesh.

A token is ``meshd1.<payload>.<signature>``, both parts base64url without padding.
The payload is canonical JSON::

    {"v": 1, "id": <128-bit hex>, "domain": "lab.example", "ca": <CA SHA-256>,
     "seeds": ["10.0.0.1:7420"], "iat": <issued, unix s>, "exp": <expiry, unix s>,
     "by": <issuing node>}

and, on a token made with ``meshd token create --replace NAME``, ``"replace": NAME``:
the CA's word that NAME, which a removed node had, may be enrolled again (the old
certificate stays revoked). Seeds that predate the field ignore it and refuse the
name, which is the safe side.

The joiner can read the payload without any key: it learns the seed to contact and
the CA fingerprint to pin TLS to. The seed checks everything: the signature by the
mesh CA (forgery), the CA fingerprint and domain (a token for another mesh), the
expiry, and — atomically in its store — that the id was issued and never used.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meshd.errors import TokenError
from meshd.identity import pki

PREFIX = "meshd1"
_SIGN_PREFIX = b"meshd-join-token-v1\x00"
_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_FP_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class JoinToken:
    id: str
    domain: str
    ca_fingerprint: str
    seeds: tuple[str, ...]
    issued_at: float
    expires_at: float
    issued_by: str
    replace: str | None = None


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def create(
    ca_key: Ed25519PrivateKey,
    ca_cert: x509.Certificate,
    seeds: tuple[str, ...],
    now: float,
    ttl_s: float,
    issued_by: str,
    replace: str | None = None,
) -> tuple[JoinToken, str]:
    """Make and sign a token; the caller records its id in the store before handing it out."""
    if ttl_s <= 0:
        raise TokenError("a token's time to live must be positive")
    if not seeds:
        raise TokenError("a token needs at least one seed address")
    if replace is not None:
        pki.check_name(replace)
    tok = JoinToken(
        id=os.urandom(16).hex(),
        domain=pki.ca_domain(ca_cert),
        ca_fingerprint=pki.fingerprint(ca_cert),
        seeds=seeds,
        issued_at=now,
        expires_at=now + ttl_s,
        issued_by=issued_by,
        replace=replace,
    )
    fields: dict[str, object] = {
        "v": 1,
        "id": tok.id,
        "domain": tok.domain,
        "ca": tok.ca_fingerprint,
        "seeds": list(tok.seeds),
        "iat": round(tok.issued_at, 3),
        "exp": round(tok.expires_at, 3),
        "by": tok.issued_by,
    }
    if replace is not None:
        fields["replace"] = replace
    payload = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    sig = ca_key.sign(_SIGN_PREFIX + payload)
    return tok, f"{PREFIX}.{_b64e(payload)}.{_b64e(sig)}"


def _split(text: str) -> tuple[bytes, bytes]:
    parts = text.strip().split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise TokenError("malformed join token: expected meshd1.<payload>.<signature>")
    try:
        return _b64d(parts[1]), _b64d(parts[2])
    except (binascii.Error, ValueError) as exc:
        raise TokenError("malformed join token: bad base64") from exc


def parse(text: str) -> JoinToken:
    """Read a token without verifying it (the joiner has no CA yet); checks its shape."""
    payload, sig = _split(text)
    if len(sig) != 64:
        raise TokenError("malformed join token: bad signature length")
    try:
        raw = json.loads(payload)
        if raw.get("v") != 1:
            raise TokenError(f"unsupported join token version {raw.get('v')!r}")
        tok = JoinToken(
            id=str(raw["id"]),
            domain=str(raw["domain"]),
            ca_fingerprint=str(raw["ca"]),
            seeds=tuple(str(s) for s in raw["seeds"]),
            issued_at=float(raw["iat"]),
            expires_at=float(raw["exp"]),
            issued_by=str(raw["by"]),
            replace=None if raw.get("replace") is None else str(raw["replace"]),
        )
    except TokenError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TokenError("malformed join token: bad payload") from exc
    if not _ID_RE.match(tok.id) or not _FP_RE.match(tok.ca_fingerprint) or not tok.seeds:
        raise TokenError("malformed join token: bad id, fingerprint or seeds")
    if tok.replace is not None and not pki.NAME_RE.match(tok.replace):
        raise TokenError("malformed join token: bad name to replace")
    return tok


def verify(text: str, ca_cert: x509.Certificate, now: float) -> JoinToken:
    """Check a token at the seed: shape, mesh, signature and expiry (not single use)."""
    tok = parse(text)
    if tok.ca_fingerprint != pki.fingerprint(ca_cert) or tok.domain != pki.ca_domain(ca_cert):
        raise TokenError(
            f"this token is for another mesh ({tok.domain}, CA {tok.ca_fingerprint[:16]}...), "
            f"not {pki.ca_domain(ca_cert)}"
        )
    payload, sig = _split(text)
    key = ca_cert.public_key()
    assert isinstance(key, Ed25519PublicKey)
    try:
        key.verify(sig, _SIGN_PREFIX + payload)
    except InvalidSignature as exc:
        raise TokenError("join token signature is invalid (forged or altered token)") from exc
    if now >= tok.expires_at:
        raise TokenError("join token has expired; ask for a new one with `meshd token create`")
    return tok
