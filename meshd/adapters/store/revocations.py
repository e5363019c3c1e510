"""Persisted revocation records (CA-signed; see ``meshd.identity.revocation``)."""

from __future__ import annotations

from meshd.adapters.store.db import Store
from meshd.identity.revocation import Revocation


def add(store: Store, rev: Revocation, record: bytes) -> bool:
    """Persist a verified record; returns False if it was already known."""
    known = store.scalar("SELECT 1 FROM revocations WHERE serial = ?", (rev.serial,))
    if known:
        return False
    store.execute(
        "INSERT INTO revocations (serial, name, node_id, revoked_at, record) "
        "VALUES (?, ?, ?, ?, ?)",
        (rev.serial, rev.name, rev.node_id, rev.revoked_at, record),
    )
    return True


def records(store: Store) -> list[bytes]:
    return [bytes(r[0]) for r in store.query("SELECT record FROM revocations ORDER BY revoked_at")]
