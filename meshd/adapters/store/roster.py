"""The roster: every node enrolled in the mesh and not removed — the voting set.

Quorum decisions (fencing) count the roster, not the nodes that happen to be alive,
so it lives in the store and survives restarts.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshd.adapters.store.db import Store


@dataclass(frozen=True)
class Member:
    name: str
    node_id: str
    cert_pem: str
    role: str
    address: str | None
    enrolled_at: float
    removed_at: float | None

    def as_json(self) -> dict[str, str | float | None]:
        return {
            "name": self.name,
            "node_id": self.node_id,
            "role": self.role,
            "address": self.address,
            "enrolled_at": self.enrolled_at,
            "removed_at": self.removed_at,
        }


# Queries are built from this constant only (never from input), hence the S608 waivers.
_COLUMNS = "name, node_id, cert_pem, role, address, enrolled_at, removed_at"
_SELECT = f"SELECT {_COLUMNS} FROM roster"  # noqa: S608


def upsert(store: Store, m: Member) -> None:
    """Insert or refresh a member; a removal, once recorded, is never undone here.

    A *new key* under a removed name is another node: a replacement the CA enrolled
    with ``meshd token create --replace`` (callers pass only CA-verified, unrevoked
    certificates). It takes the row, as a member, with its own enrolment time; the old
    node stays refused by its revocation, which is kept apart from the roster.
    """
    store.execute(
        f"INSERT INTO roster ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "  # noqa: S608
        "ON CONFLICT (name) DO UPDATE SET "
        "enrolled_at = CASE WHEN roster.node_id = excluded.node_id "
        "THEN roster.enrolled_at ELSE excluded.enrolled_at END, "
        "removed_at = CASE WHEN roster.node_id = excluded.node_id "
        "THEN COALESCE(roster.removed_at, excluded.removed_at) ELSE excluded.removed_at END, "
        "node_id = excluded.node_id, "
        "cert_pem = excluded.cert_pem, role = excluded.role, "
        "address = CASE WHEN roster.node_id = excluded.node_id "
        "THEN COALESCE(excluded.address, roster.address) ELSE excluded.address END",
        (m.name, m.node_id, m.cert_pem, m.role, m.address, m.enrolled_at, m.removed_at),
    )


def get(store: Store, name: str) -> Member | None:
    row = store.query_one(_SELECT + " WHERE name = ?", (name,))
    return None if row is None else Member(*row)


def members(store: Store, include_removed: bool = False) -> list[Member]:
    where = "" if include_removed else " WHERE removed_at IS NULL"
    return [Member(*r) for r in store.query(_SELECT + where + " ORDER BY name")]


def mark_removed(store: Store, name: str, when: float, node_id: str | None = None) -> None:
    """Mark ``name`` removed; with ``node_id``, only if the row is still that node's (a
    late revocation of a replaced node must not remove its replacement)."""
    if node_id is None:
        store.execute(
            "UPDATE roster SET removed_at = ? WHERE name = ? AND removed_at IS NULL", (when, name)
        )
        return
    store.execute(
        "UPDATE roster SET removed_at = ? WHERE name = ? AND node_id = ? AND removed_at IS NULL",
        (when, name, node_id),
    )


def set_address(store: Store, name: str, address: str) -> None:
    store.execute("UPDATE roster SET address = ? WHERE name = ?", (address, name))
