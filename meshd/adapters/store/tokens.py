"""Join-token bookkeeping for enrolment: issue, consume exactly once, list.

The token's signature and mesh binding are checked by ``meshd.identity``; this module
only records which token ids exist and makes "use it once" hold across processes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from meshd.adapters.store.db import Store

TokenStatus = Literal["ok", "unknown", "used", "expired"]


# The agreed signature with the enrolment code, positional as the column order.
def record_token(
    store: Store,
    id: str,
    created_at: float,
    expires_at: float,
    created_by: str,
    seeds: Sequence[str],
) -> None:
    """Remember an issued token; a duplicate id raises StoreError."""
    store.execute(
        "INSERT INTO tokens (id, created_at, expires_at, created_by, seeds) VALUES (?, ?, ?, ?, ?)",
        (id, created_at, expires_at, created_by, json.dumps(list(seeds))),
    )


def claim_token(store: Store, id: str, now: float, used_by: str) -> TokenStatus:
    """Like :func:`consume_token`, inside the caller's transaction.

    Enrolment claims the token and adds the roster entry in one transaction, so a
    refusal for another reason (say, a name already taken) leaves the token unused.
    """
    if not store.in_transaction:
        raise RuntimeError("claim_token() must run inside Store.transaction()")
    claimed = store.query_one(
        "UPDATE tokens SET used_at = ?, used_by = ? "
        "WHERE id = ? AND used_at IS NULL AND expires_at > ? RETURNING id",
        (now, used_by, id, now),
    )
    if claimed is not None:
        return "ok"
    row = store.query_one("SELECT used_at FROM tokens WHERE id = ?", (id,))
    if row is None:
        return "unknown"
    # A used token reports "used" even once expired: it tells the operator more.
    return "used" if row[0] is not None else "expired"


def token_used_by(store: Store, id: str) -> str | None:
    """The name that redeemed token ``id``, or None (unknown or unused)."""
    row = store.query_one("SELECT used_by FROM tokens WHERE id = ? AND used_at IS NOT NULL", (id,))
    return None if row is None else str(row[0])


def consume_token(store: Store, id: str, now: float, used_by: str) -> TokenStatus:
    """Mark the token used by ``used_by``; "ok" for exactly one caller, ever.

    The conditional UPDATE is the claim: under BEGIN IMMEDIATE no other process can
    change the row between it and the follow-up read that explains a refusal.
    """
    with store.transaction(durable=True):
        return claim_token(store, id, now, used_by)


def list_tokens(store: Store) -> list[dict[str, Any]]:
    """Every recorded token, oldest first, with ``seeds`` decoded to a list."""
    rows = store.query_dicts(
        "SELECT id, created_at, expires_at, created_by, seeds, used_at, used_by "
        "FROM tokens ORDER BY created_at, id"
    )
    for row in rows:
        row["seeds"] = json.loads(row["seeds"])
    return rows
