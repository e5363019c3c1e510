"""The ``address_grants`` table: the addresses this node granted as a voter
(:class:`meshd.core.addresses.VoterTable`), written before the grant is sent."""

from __future__ import annotations

from collections.abc import Iterable

from meshd.adapters.store.db import Store
from meshd.core.addresses import Entry


def save(store: Store, entry: Entry) -> None:
    store.execute(
        "INSERT INTO address_grants (address, network, holder, granted_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (address) DO UPDATE SET network = excluded.network, "
        "holder = excluded.holder, granted_at = excluded.granted_at",
        (entry.address, entry.network, entry.holder, entry.granted_at),
    )


def drop(store: Store, addresses: Iterable[str]) -> None:
    for address in addresses:
        store.execute("DELETE FROM address_grants WHERE address = ?", (address,))


def load(store: Store) -> list[Entry]:
    rows = store.query(
        "SELECT address, network, holder, granted_at FROM address_grants ORDER BY address"
    )
    return [Entry(str(a), str(n), str(h), float(t)) for a, n, h, t in rows]
