"""What only a CA holder can do: issue join tokens, remove nodes, issue client certs.

Each act is recorded in the store before it is visible to anyone, so a token that was
printed is always known to the seed and a removal survives a restart. These functions
work on the store directly; the daemon calls them from its API and the CLI calls them
when no daemon runs (SQLite WAL lets both share the file).
"""

from __future__ import annotations

import logging

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshd.adapters.store import record_token, roster
from meshd.adapters.store import revocations as stored_revocations
from meshd.adapters.store.db import Store
from meshd.errors import IdentityError
from meshd.identity import pki, revocation, token
from meshd.identity.files import NodeIdentity
from meshd.identity.revocation import Revocation, RevocationList

logger = logging.getLogger(__name__)


def require_ca_key(ident: NodeIdentity, act: str) -> Ed25519PrivateKey:
    if ident.ca_key is None:
        raise IdentityError(
            f"node {ident.name} does not hold the mesh CA key, so it can't {act}; "
            "run this on a CA holder (the founder, or a node made one with "
            "`meshd ca promote`), or restore the CA key there with `meshd ca restore`"
        )
    return ident.ca_key


def issue_token(
    store: Store,
    ident: NodeIdentity,
    seeds: tuple[str, ...],
    ttl_s: float,
    now: float,
    replace: str | None = None,
) -> tuple[token.JoinToken, str]:
    """A join token, redeemable only at this node (its store alone knows the id).

    With ``replace``, the token also lets a new node take the name of a removed one.
    """
    ca_key = require_ca_key(ident, "issue join tokens")
    if not seeds:
        raise IdentityError(
            "no seed address is known for this node; start it with `meshd run` first, "
            "or pass --seed HOST:PORT"
        )
    if replace is not None:
        _check_replaceable(store, replace)
    tok, text = token.create(ca_key, ident.ca_cert, seeds, now, ttl_s, ident.name, replace)
    record_token(store, tok.id, tok.issued_at, tok.expires_at, ident.name, list(seeds))
    store.append_event(now, "token.created", tok.id[:8], {"expires_at": tok.expires_at})
    return tok, text


def _check_replaceable(store: Store, name: str) -> None:
    member = roster.get(store, pki.check_name(name))
    if member is None:
        raise IdentityError(
            f"no node named {name!r} was ever in this mesh; a plain `meshd token create` "
            "enrols a new name"
        )
    if member.removed_at is None:
        raise IdentityError(
            f"node {name!r} is still a member; remove it first with `meshd node remove {name}` "
            "(its certificate stays revoked), then create the --replace token"
        )


def remove_node(
    store: Store, ident: NodeIdentity, revoked: RevocationList, name: str, reason: str, now: float
) -> tuple[Revocation, bytes]:
    """Revoke ``name``: sign, persist, mark the roster; returns the record to gossip."""
    ca_key = require_ca_key(ident, "remove nodes")
    if name == ident.name:
        raise IdentityError(
            "a node can't remove itself; run `meshd node remove` on another CA holder"
        )
    member = roster.get(store, name)
    if member is None:
        raise IdentityError(f"no node named {name!r} is in this mesh's roster")
    if member.removed_at is not None:
        raise IdentityError(f"node {name!r} was already removed")
    info = pki.describe(pki.load_cert_pem(member.cert_pem.encode(), f"{name}'s certificate"))
    rev = Revocation(info.serial, name, info.node_id, now, reason)
    record = revocation.sign(ca_key, rev)
    with store.transaction(durable=True):
        stored_revocations.add(store, rev, record)
        roster.mark_removed(store, name, now, rev.node_id)
    store.append_event(now, "node.removed", name, {"serial": rev.serial, "reason": reason})
    revoked.add(rev)
    logger.info("node removed name=%s serial=%s", name, rev.serial)
    return rev, record


def load_revocations(store: Store, ca_cert: x509.Certificate) -> RevocationList:
    """Every persisted record, rechecked against the CA (a bad row is logged, skipped)."""
    out = RevocationList()
    for blob in stored_revocations.records(store):
        try:
            out.add(revocation.verify(blob, ca_cert))
        except IdentityError as exc:
            logger.error("ignoring a stored revocation that does not verify: %s", exc)
    return out


def issue_client_cert(
    ident: NodeIdentity, name: str, role: str, days: int, now: float
) -> tuple[Ed25519PrivateKey, x509.Certificate]:
    """A key and certificate for an API client (an operator or a tenant's automation)."""
    ca_key = require_ca_key(ident, "issue client certificates")
    key = pki.new_key()
    cert = pki.issue(ca_key, ident.ca_cert, key.public_key(), name, role, now, days)
    return key, cert
