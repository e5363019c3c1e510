"""Persisted mesh key records (CA-signed; see ``meshd.identity.mesh_key``).

Epoch 0 is the secret the node enrolled with (``mesh.secret`` in the identity
directory); this table holds the epochs made since, by node removals.
"""

from __future__ import annotations

from meshd.adapters.store.db import Store
from meshd.identity.mesh_key import KeyRecord


def add(store: Store, rec: KeyRecord, record: bytes, now: float) -> bool:
    """Persist a verified record; False if it was already known."""
    key_id = rec.key.key_id.hex()
    if store.scalar("SELECT 1 FROM mesh_keys WHERE key_id = ?", (key_id,)):
        return False
    store.execute(
        "INSERT INTO mesh_keys (key_id, epoch, installed_at, record) VALUES (?, ?, ?, ?)",
        (key_id, rec.key.epoch, now, record),
    )
    return True


def records(store: Store) -> list[tuple[bytes, float]]:
    """Every record with when it was installed here, oldest epoch first."""
    rows = store.query("SELECT record, installed_at FROM mesh_keys ORDER BY epoch, key_id")
    return [(bytes(r[0]), float(r[1])) for r in rows]
