"""Services this node publishes: the durable list its names are re-published from."""

from __future__ import annotations

from typing import Any

from meshd.adapters.store.db import Store


def upsert(store: Store, name: str, port: int, proto: str, now: float) -> None:
    store.execute(
        "INSERT INTO services (name, port, proto, published_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET port = excluded.port, proto = excluded.proto, "
        "published_at = excluded.published_at",
        (name, port, proto, now),
    )


def remove(store: Store, name: str) -> bool:
    existed = store.scalar("SELECT 1 FROM services WHERE name = ?", (name,)) is not None
    store.execute("DELETE FROM services WHERE name = ?", (name,))
    return existed


def all_services(store: Store) -> list[dict[str, Any]]:
    return store.query_dicts("SELECT name, port, proto, published_at FROM services ORDER BY name")
