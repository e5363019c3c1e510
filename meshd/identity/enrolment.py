"""Founding a mesh, and joining one with a token (both sides of the exchange).

Joining (DESIGN.md §3), in the style of kubeadm's token discovery:

1. The joiner reads the token (no key needed) for the seed address and the CA
   fingerprint, makes its own Ed25519 key and a CSR naming itself.
2. It fetches the CA certificate from the seed over TLS *without* trusting anything
   yet, and accepts it only if its SHA-256 matches the token's fingerprint.
3. It opens a *new* TLS connection that trusts only that CA and posts the token and
   the CSR. The seed checks the token (signature, mesh, expiry), claims it and adds
   the joiner to its roster in one durable transaction, and answers with the signed
   certificate, the CA certificate, the mesh secret and its roster.
4. The joiner checks the certificate (issued by the pinned CA, for its own key and
   name) before writing its identity to disk.

The joiner keeps its key on disk (``identity/join.key``) before the CSR leaves. If it
dies after the seed signed it in but before it stored the answer, the same command
run again sends the same key, and the seed answers again with the same certificate
instead of refusing the used token and the taken name. A different key is still
refused (see :func:`serve`).

The private key never leaves the joiner; the token travels only to a server that
proved it holds a certificate from the pinned CA.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from meshd.adapters import tls
from meshd.adapters.store import claim_token, roster, token_used_by
from meshd.adapters.store.db import Store
from meshd.config import SecurityConfig
from meshd.core.envelope import SECRET_BYTES
from meshd.errors import EnrolmentError, IdentityError, TokenError
from meshd.identity import pki, token
from meshd.identity.files import NodeIdentity
from meshd.units import parse_hostport

logger = logging.getLogger(__name__)


def found(
    name: str, domain: str, cfg: SecurityConfig, now: float, addresses: Sequence[str] = ()
) -> NodeIdentity:
    """A new mesh: CA, this node's key and certificate (naming ``addresses`` too), and a
    random mesh secret."""
    pki.check_name(name)
    ca_key, ca_cert = pki.create_ca(domain, now, cfg.ca_validity_days)
    key = pki.new_key()
    cert = pki.issue(
        ca_key, ca_cert, key.public_key(), name, "node", now, cfg.cert_validity_days, addresses
    )
    info = pki.verify(cert, ca_cert, now)
    return NodeIdentity(key, cert, ca_cert, os.urandom(SECRET_BYTES), ca_key, info)


def member_of(cert: x509.Certificate, address: str | None, now: float) -> roster.Member:
    info = pki.describe(cert)
    return roster.Member(
        name=info.name,
        node_id=info.node_id,
        cert_pem=pki.cert_pem(cert).decode(),
        role=info.role,
        address=address,
        enrolled_at=now,
        removed_at=None,
    )


# -- the seed's side -----------------------------------------------------------------


def serve(
    store: Store,
    ident: NodeIdentity,
    cfg: SecurityConfig,
    token_text: str,
    csr_pem: str,
    address: str | None,
    now: float,
    addresses: Sequence[str] = (),
) -> dict[str, Any]:
    """Check a join request and, if it is good, sign the joiner in. Raises on refusal.

    ``addresses`` are the joiner's IP addresses, named in its certificate.

    Three cases beyond a plain first join:

    * **a retry**: the name is in the roster with the very key of this CSR (the joiner
      died before it stored our answer). The holder of that key *is* that node, so it
      gets the same certificate again, with the token it used or with a new one.
    * **a replacement**: the name belonged to a removed node and the token was made
      with ``--replace NAME``; the new node takes the name, the old certificate stays
      revoked (its serial and key remain in the revocation list).
    * otherwise a taken name is refused, saying how to replace it.
    """
    if ident.ca_key is None:
        raise EnrolmentError(
            f"node {ident.name} does not hold the mesh CA key and can't enrol nodes; "
            "use a token created on a CA holder"
        )
    tok = token.verify(token_text, ident.ca_cert, now)
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except (ValueError, x509.InvalidVersion) as exc:
        raise EnrolmentError("the certificate request is not a PEM CSR") from exc
    name, public_key = pki.csr_name(csr)
    with store.transaction(durable=True):
        existing = roster.get(store, name)
        again = (
            existing is not None and existing.removed_at is None and _same_key(existing, public_key)
        )
        if again:
            assert existing is not None
            cert = pki.load_cert_pem(existing.cert_pem.encode(), f"{name}'s roster certificate")
            _claim(store, tok, now, name, retry=True)
        else:
            _check_name_free(existing, name, tok)
            if existing is not None and _same_key(existing, public_key):
                raise EnrolmentError(
                    f"this key belonged to the removed node {name!r} and stays revoked; "
                    "the replacement must make a new key (a fresh data directory)"
                )
            cert = pki.issue(
                ident.ca_key,
                ident.ca_cert,
                public_key,
                name,
                "node",
                now,
                cfg.cert_validity_days,
                addresses,
            )
            _claim(store, tok, now, name, retry=False)
            # Under a removed name, the new key takes the row (see roster.upsert).
            roster.upsert(store, member_of(cert, address, now))
    if again:
        store.append_event(now, "node.enrol_retried", name, {"token": tok.id[:8]})
        logger.info("enrolment answered again name=%s token=%s", name, tok.id[:8])
    else:
        info = pki.describe(cert)
        event = "node.replaced" if existing is not None else "node.enrolled"
        store.append_event(now, event, name, {"node_id": info.node_id})
        logger.info("node enrolled name=%s node_id=%s token=%s", name, info.node_id, tok.id[:8])
    return {
        "cert": pki.cert_pem(cert).decode(),
        "ca_cert": pki.cert_pem(ident.ca_cert).decode(),
        "mesh_secret": base64.b64encode(ident.mesh_secret).decode(),
        "domain": ident.domain,
        "roster": [{"cert": m.cert_pem, "address": m.address} for m in roster.members(store)],
    }


def _same_key(member: roster.Member, public_key: Any) -> bool:
    try:
        cert = pki.load_cert_pem(member.cert_pem.encode(), f"{member.name}'s roster certificate")
    except IdentityError:
        return False
    return pki.public_raw(cert.public_key()) == pki.public_raw(public_key)  # type: ignore[arg-type]


def _check_name_free(existing: roster.Member | None, name: str, tok: token.JoinToken) -> None:
    if existing is not None and existing.removed_at is None:
        raise EnrolmentError(
            f"a node named {name!r} is already in this mesh; choose another name, or remove "
            f"the old one (meshd node remove {name}) and enrol the new one with a token from "
            f"`meshd token create --replace {name}`"
        )
    if existing is not None and tok.replace != name:
        raise EnrolmentError(
            f"the name {name!r} belonged to a removed node; to enrol a replacement under "
            f"that name, use a token from `meshd token create --replace {name}` on a CA holder"
        )
    if tok.replace is not None and tok.replace != name:
        raise EnrolmentError(
            f"this token may only enrol a replacement named {tok.replace!r}, not {name!r}"
        )


def _claim(store: Store, tok: token.JoinToken, now: float, name: str, retry: bool) -> None:
    """Claim the token for ``name``; a retry may present the token it already used."""
    status = claim_token(store, tok.id, now, name)
    if status == "used" and retry and token_used_by(store, tok.id) == name:
        return
    if status == "unknown":
        raise TokenError(
            "this join token was not issued by this seed (a token is redeemed only at the "
            "CA holder that created it)"
        )
    if status == "used":
        raise TokenError("this join token was already used; ask for a new one")
    if status == "expired":
        raise TokenError("join token has expired; ask for a new one with `meshd token create`")


# -- the joiner's side ---------------------------------------------------------------


@dataclass(frozen=True)
class Joined:
    identity: NodeIdentity
    members: list[roster.Member]
    seeds: tuple[str, ...]


async def _fetch_ca(session: aiohttp.ClientSession, seed: str, fp: str) -> x509.Certificate:
    ctx = tls.insecure_client_context()
    async with session.get(f"https://{seed}/v1/enrol/ca", ssl=ctx) as resp:
        if resp.status != 200:
            raise EnrolmentError(f"seed {seed} answered {resp.status} for its CA certificate")
        body = await resp.json()
    ca = pki.load_cert_pem(str(body.get("ca_cert", "")).encode(), f"CA certificate from {seed}")
    if pki.fingerprint(ca) != fp:
        raise EnrolmentError(
            f"seed {seed} presented a CA certificate that does not match the token's "
            "fingerprint; refusing to join (wrong seed, or someone in between)"
        )
    return ca


async def _post(
    session: aiohttp.ClientSession, seed: str, ca: x509.Certificate, req: dict[str, Any]
) -> dict[str, Any]:
    ctx = tls.client_context(None, ca)
    async with session.post(f"https://{seed}/v1/enrol", json=req, ssl=ctx) as resp:
        try:
            body: dict[str, Any] = await resp.json()
        except (aiohttp.ContentTypeError, ValueError) as exc:
            raise EnrolmentError(f"seed {seed} sent a malformed answer") from exc
        if resp.status == TokenError.http_status:
            raise TokenError(str(body.get("error", "the seed refused the token")))
        if resp.status != 200:
            raise EnrolmentError(str(body.get("error", f"seed {seed} answered {resp.status}")))
        return body


def _accept(
    answer: dict[str, Any], key: Any, name: str, ca: x509.Certificate, now: float
) -> tuple[NodeIdentity, list[roster.Member]]:
    try:
        cert = pki.load_cert_pem(str(answer["cert"]).encode(), "the issued certificate")
        secret = base64.b64decode(str(answer["mesh_secret"]), validate=True)
        rows = list(answer.get("roster", []))
    except (KeyError, binascii.Error, TypeError) as exc:
        raise EnrolmentError("the seed's answer is missing fields") from exc
    info = pki.verify(cert, ca, now)
    if info.name != name or pki.public_raw(cert.public_key()) != pki.public_raw(key.public_key()):  # type: ignore[arg-type]
        raise EnrolmentError("the seed issued a certificate for another name or key")
    if len(secret) != SECRET_BYTES:
        raise EnrolmentError("the seed sent a mesh secret of the wrong size")
    members = []
    for row in rows:
        try:
            mcert = pki.load_cert_pem(str(row["cert"]).encode(), "a roster certificate")
            pki.verify(mcert, ca, now)
        except (IdentityError, KeyError, TypeError) as exc:
            logger.warning("dropping a bad roster entry from the seed: %s", exc)
            continue
        members.append(member_of(mcert, row.get("address"), now))
    return NodeIdentity(key, cert, ca, secret, None, info), members


async def join(
    token_text: str,
    name: str,
    domain: str | None,
    address: str | None,
    cfg: SecurityConfig,
    now: float,
    key: Ed25519PrivateKey | None = None,
    on_refused: Callable[[], None] | None = None,
    addresses: Sequence[str] = (),
) -> Joined:
    """Enrol through the token's seeds, trying each in turn; nothing is written to disk.

    ``key`` is the joiner's key, kept on disk by the caller before this is called
    (``files.join_key``), so that a join whose answer was lost can be asked again;
    ``on_refused`` runs when a seed answered with a refusal (the key is of no more use).
    """
    tok = check_join(token_text, name, domain, now)
    if address is not None:
        host, port = parse_hostport(address, "listen")
        # Only an address peers can dial is worth telling the seed; the real one is
        # learnt once the node runs (port 0 and wildcards are resolved at bind time).
        address = None if port == 0 or host in ("0.0.0.0", "::") else address  # noqa: S104
    key = key or pki.new_key()
    csr = pki.make_csr(key, name, tok.domain)
    req = {
        "token": token_text,
        "csr": csr.public_bytes(Encoding.PEM).decode(),
        "address": address,
        "addresses": list(addresses),
    }
    timeout = aiohttp.ClientTimeout(total=cfg.enrol_timeout_s)
    errors = []
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for seed in tok.seeds:
            try:
                ca = await _fetch_ca(session, seed, tok.ca_fingerprint)
                try:
                    answer = await _post(session, seed, ca, req)
                except IdentityError:
                    if on_refused is not None:
                        on_refused()
                    raise
                ident, members = _accept(answer, key, name, ca, now)
                return Joined(ident, members, tok.seeds)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                why = _unreachable(exc, cfg.enrol_timeout_s)
                errors.append(f"{seed}: {why}")
                # The final sentence names every seed and why; this is for --log-level debug.
                logger.debug("seed unreachable seed=%s error=%s", seed, why)
    raise EnrolmentError(
        "could not reach any seed in the token (" + "; ".join(errors) + "); "
        "check that the seed's meshd is running and reachable, then run the same command "
        "again (it reuses this joiner's key, so a join the seed already accepted completes)"
    )


def _unreachable(exc: BaseException, timeout_s: float) -> str:
    """Why a seed could not be reached, in words (aiohttp's own text names the SSL
    context object: "ssl:<ssl.SSLContext object at 0x...>")."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        exc = exc.os_error
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()  # "connection refused", "no route to host"
    return str(exc) or type(exc).__name__


def check_join(token_text: str, name: str, domain: str | None, now: float) -> token.JoinToken:
    """What a joiner can check alone, before it makes a key or contacts anyone."""
    pki.check_name(name)
    tok = token.parse(token_text)
    if domain is not None and domain != tok.domain:
        raise TokenError(f"this token is for mesh {tok.domain}, not {domain}")
    if now >= tok.expires_at:
        raise TokenError("join token has expired; ask for a new one with `meshd token create`")
    return tok
