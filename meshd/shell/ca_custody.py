"""The daemon's side of ``meshd ca promote`` and ``meshd ca restore``.

The sender (a CA holder, asked by its operator) checks the target is a current,
unrevoked member, posts the sealed key and the CA-signed promotion record to the
target's ``POST /v1/mesh/ca`` over mutual TLS, and accepts the answer only if it
carries the target's acknowledgement signed with the CA key: only the node that
opened the sealed box can make it, so a wrong server can't fake a promotion.

The receiver checks the record (see :mod:`meshd.identity.custody`), writes
``identity/ca.key`` 0600 and starts acting as a CA holder at once: the node's
``ident`` is replaced, so the API's enrolment, token and removal routes use the key
without a restart. Shells keep the identity they were built with; none of them signs
with the CA key.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from meshd.adapters import tls
from meshd.adapters.store import roster
from meshd.adapters.store.db import Store
from meshd.adapters.transport import Addr
from meshd.errors import DaemonError, IdentityError
from meshd.identity import authority, custody, files, pki
from meshd.identity.files import NodeIdentity
from meshd.identity.revocation import RevocationList

logger = logging.getLogger(__name__)

PROMOTE_PATH = "/v1/mesh/ca"
_ACK_PREFIX = b"meshd-ca-promotion-ack-v1\x00"


def _ack(ca_key: Any, record: bytes) -> str:
    return base64.b64encode(ca_key.sign(_ACK_PREFIX + record)).decode()


def _check_ack(ident: NodeIdentity, record: bytes, ack: object) -> bool:
    key = ident.ca_cert.public_key()
    try:
        sig = base64.b64decode(str(ack), validate=True)
        assert isinstance(key, Ed25519PublicKey)
        key.verify(sig, _ACK_PREFIX + record)
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


async def promote(
    ident: NodeIdentity,
    store: Store,
    revocations: RevocationList,
    address_of: Callable[[str], Addr | None],
    name: str,
    now: float,
    timeout_s: float,
) -> dict[str, Any]:
    """Make member ``name`` a CA holder; returns what happened, raises with a sentence."""
    ca_key = authority.require_ca_key(ident, "promote other nodes")
    if name == ident.name:
        raise IdentityError(f"{name} already holds the CA key")
    member = roster.get(store, pki.check_name(name))
    if member is None or member.removed_at is not None:
        raise IdentityError(f"no current member named {name!r}; see `meshd node ls`")
    target = pki.load_cert_pem(member.cert_pem.encode(), f"{name}'s roster certificate")
    info = pki.verify(target, ident.ca_cert, now)
    if revocations.is_revoked(info.serial, info.node_id):
        raise IdentityError(f"{name} was removed from this mesh and can't hold the CA key")
    addr = address_of(name)
    if addr is None and member.address:
        host, _, port = member.address.rpartition(":")
        addr = (host.strip("[]"), int(port)) if port.isdigit() else None
    if addr is None:
        raise DaemonError(f"no address is known for {name}; is it running?")
    body = custody.offer(ca_key, ident.ca_cert, target, ident.name, now)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=tls.client_context(ident, ident.ca_cert)),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )
    url = f"https://{addr[0]}:{addr[1]}{PROMOTE_PATH}"
    try:
        async with session, session.post(url, json=body) as resp:
            try:
                answer = await resp.json()
            except (aiohttp.ContentTypeError, ValueError):
                answer = {}
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise DaemonError(f"could not reach {name} at {addr[0]}:{addr[1]}: {exc}") from exc
    if status != 200:
        reason = answer.get("error") if isinstance(answer, dict) else None
        raise IdentityError(f"{name} refused the promotion: {reason or f'HTTP {status}'}")
    record = base64.b64decode(body["promotion"])
    if not isinstance(answer, dict) or not _check_ack(ident, record, answer.get("ack")):
        raise IdentityError(
            f"the node at {addr[0]}:{addr[1]} did not prove it opened the key; "
            f"is {name} really there?"
        )
    store.append_event(now, "ca.promoted", name, {"node_id": info.node_id, "by": ident.name})
    logger.info("promoted to CA holder name=%s node_id=%s", name, info.node_id)
    return {"node": name, "node_id": info.node_id, "by": ident.name, "promoted_at": now}


def receive(
    data_dir: Path,
    ident: NodeIdentity,
    store: Store,
    body: dict[str, Any],
    sender: str,
    now: float,
    max_age_s: float,
) -> tuple[NodeIdentity, dict[str, Any]]:
    """Accept a promotion sent by member ``sender``; returns the new identity and answer."""
    ca_key, promo = custody.accept(
        body, ident.key, ident.ca_cert, ident.info, sender, now, max_age_s
    )
    if ident.ca_key is None:
        ident = files.save_ca_key(data_dir, ident, ca_key)
        store.append_event(now, "ca.received", ident.name, {"by": sender})
        logger.info("this node is now a CA holder by=%s", sender)
    record = base64.b64decode(str(body["promotion"]))
    return ident, {"node": promo.node, "node_id": promo.node_id, "ack": _ack(ca_key, record)}


def reload(data_dir: Path, ident: NodeIdentity, now: float) -> NodeIdentity:
    """Pick up a CA key written by ``meshd ca restore`` while the daemon runs."""
    on_disk = files.load(data_dir, now)
    if on_disk.ca_key is None:
        raise IdentityError(f"no CA key in {files.identity_dir(data_dir)}")
    if not custody.matches_ca(on_disk.ca_key, ident.ca_cert):
        raise IdentityError("the CA key on disk is not this mesh's CA key")
    if ident.ca_key is None:
        logger.info("CA key loaded from disk; this node is now a CA holder")
    return dataclasses.replace(ident, ca_key=on_disk.ca_key)
