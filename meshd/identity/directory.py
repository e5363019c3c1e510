"""Who is who in the mesh, for checking signatures: the roster plus what we learn live.

Backs the DHT's ``AuthorDirectory`` (records carry only the author's node id, not its
certificate, to stay small) and answers "is this a member we already know?" for the
membership shell, which persists a member the first time it hears from it.
"""

from __future__ import annotations

import logging

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from meshd.adapters.store import roster
from meshd.adapters.store.db import Store
from meshd.errors import IdentityError
from meshd.identity import pki
from meshd.identity.revocation import RevocationList

logger = logging.getLogger(__name__)


class Directory:
    def __init__(self, revocations: RevocationList) -> None:
        self._revocations = revocations
        self._by_id: dict[str, tuple[str, str, Ed25519PublicKey]] = {}
        self._by_name: dict[str, str] = {}

    @classmethod
    def from_store(cls, store: Store, revocations: RevocationList) -> Directory:
        d = cls(revocations)
        for m in roster.members(store):
            try:
                cert = pki.load_cert_pem(m.cert_pem.encode(), f"{m.name}'s roster certificate")
                d.learn(cert.public_key(), pki.describe(cert))  # type: ignore[arg-type]
            except IdentityError as exc:
                logger.error("skipping a bad roster entry name=%s error=%s", m.name, exc)
        return d

    def learn(self, key: Ed25519PublicKey, info: pki.CertInfo) -> bool:
        """Remember a verified member; returns True if it is new."""
        new = info.node_id not in self._by_id
        self._by_id[info.node_id] = (info.name, info.serial, key)
        self._by_name[info.name] = info.node_id
        return new

    def knows(self, node_id: str) -> bool:
        return node_id in self._by_id

    def key_for(self, author_id: str) -> Ed25519PublicKey | None:
        hit = self._by_id.get(author_id)
        if hit is None or self._revocations.is_revoked(hit[1], author_id):
            return None
        return hit[2]

    def name_for(self, author_id: str) -> str | None:
        hit = self._by_id.get(author_id)
        return None if hit is None else hit[0]

    def node_id_for(self, name: str) -> str | None:
        return self._by_name.get(name)
