"""The auction core's durable records: one row per (kind, key), the record as JSON.

The core says what to persist with typed records (``meshd.auction.durable``); each is
an upsert or a delete under a key, so the table always holds exactly the state
``Auctioneer.restore`` needs, and folding the rows back gives it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from meshd.auction import codec
from meshd.auction import durable as d
from meshd.errors import EnvelopeError
from meshd.store.db import Store

logger = logging.getLogger(__name__)


def _row(record: d.Record) -> tuple[str, str, bool]:
    """(kind, key, is_delete) for a record."""
    if isinstance(record, d.HoldPlaced):
        return "hold", record.hold.round_id, False
    if isinstance(record, d.HoldReleased):
        return "hold", record.round_id, True
    if isinstance(record, d.AllocationCommitted):
        return "allocation", record.allocation.workload.id, False
    if isinstance(record, d.AllocationReleased):
        return "allocation", record.workload_id, True
    if isinstance(record, d.PlacementRecorded):
        return "placement", record.placement.workload_id, False
    if isinstance(record, d.RoundRecorded):
        return "round", record.record.round_id, False
    return "bid", record.round_id, False


def write(store: Store, records: Iterable[d.Record], now: float) -> None:
    """Apply records in order; the caller holds the (durable) transaction."""
    for record in records:
        kind, key, delete = _row(record)
        if delete:
            store.execute("DELETE FROM auction_records WHERE kind = ? AND key = ?", (kind, key))
            if isinstance(record, d.HoldReleased):  # the bid behind it goes too
                store.execute("DELETE FROM auction_records WHERE kind = 'bid' AND key = ?", (key,))
        else:
            store.execute(
                "INSERT INTO auction_records (kind, key, data, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (kind, key) DO UPDATE SET data = excluded.data, "
                "updated_at = excluded.updated_at",
                (kind, key, codec.dump_record(record), now),
            )


def held_rounds(store: Store) -> set[str]:
    """Round ids that have a hold (or its bid) on disk."""
    rows = store.query("SELECT key FROM auction_records WHERE kind IN ('hold', 'bid')")
    return {str(key) for (key,) in rows}


def load(store: Store) -> d.DurableState:
    """Fold every stored record into the state the core restores from."""
    state = d.DurableState()
    for kind, key, data in store.query("SELECT kind, key, data FROM auction_records"):
        try:
            state.apply(codec.load_record(bytes(data)))
        except EnvelopeError as exc:
            # Only meshd writes this table; a bad row means a bug or a damaged disk.
            logger.error("unreadable auction record kind=%s key=%s error=%s", kind, key, exc)
    return state
