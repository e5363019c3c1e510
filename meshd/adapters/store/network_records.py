"""The ``networks`` table: the newest signed record per network name (meshd.core.network).

Rows hold the signed form as received, so a restarted node relays exactly what it
verified; ``body`` is the record's encoding, the last key of the merge order.
"""

from __future__ import annotations

from meshd.adapters.store.db import Store
from meshd.core import network
from meshd.core.network import Network


def save(store: Store, record: Network, signed: bytes) -> None:
    """Keep ``record`` unless the row holds a newer one (the merge rule, again in SQL,
    so two writers racing can't put an older record over a newer one)."""
    store.execute(
        "INSERT INTO networks (name, removed, version, by, body, signed) "
        "VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET removed = excluded.removed, "
        "version = excluded.version, by = excluded.by, body = excluded.body, "
        "signed = excluded.signed "
        "WHERE (excluded.version, excluded.by, excluded.removed, excluded.body) > "
        "(networks.version, networks.by, networks.removed, networks.body)",
        (
            record.name,
            int(record.removed),
            record.version,
            record.by,
            network.encode(record),
            signed,
        ),
    )


def load(store: Store) -> list[tuple[Network, bytes]]:
    rows = store.query("SELECT body, signed FROM networks ORDER BY name")
    return [(network.decode(bytes(b)), bytes(s)) for b, s in rows]
