"""The ``drains`` table: the newest signed drain record per member (meshd.core.drain).

Rows hold the signed form as received, so a restarted node relays exactly what it
verified; the plain columns make ``meshd peers`` and debugging readable in SQL.
"""

from __future__ import annotations

from meshd.adapters.store.db import Store
from meshd.core.drain import DrainRecord


def save(store: Store, record: DrainRecord, signed: bytes) -> None:
    """Keep ``record`` unless the row holds a newer one (the merge rule, again in SQL,
    so two writers racing can't put an older record over a newer one)."""
    store.execute(
        "INSERT INTO drains (node, draining, version, by, signed) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (node) DO UPDATE SET draining = excluded.draining, "
        "version = excluded.version, by = excluded.by, signed = excluded.signed "
        "WHERE (excluded.version, excluded.by, excluded.draining) > "
        "(drains.version, drains.by, drains.draining)",
        (record.node, int(record.draining), record.version, record.by, signed),
    )


def load(store: Store) -> list[tuple[DrainRecord, bytes]]:
    rows = store.query("SELECT node, draining, version, by, signed FROM drains ORDER BY node")
    return [(DrainRecord(n, bool(d), v, b), bytes(s)) for n, d, v, b, s in rows]
