"""The auction core's durable records: one row per (kind, key), the record as JSON.

The core says what to persist with typed records (``meshd.core.auction.durable``); each is
an upsert or a delete under a key, so the table always holds exactly the state
``Auctioneer.restore`` needs, and folding the rows back gives it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable

from meshd.adapters.store.db import Store
from meshd.core.auction import codec
from meshd.core.auction import durable as d
from meshd.core.auction.fields import LEGACY
from meshd.core.auction.model import FINAL_STATES
from meshd.errors import EnvelopeError

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
    if isinstance(record, d.FloorRecorded):
        return "floor", record.workload_id, False
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


def prune_rounds(
    store: Store, keep: int, limit: int, placed_generation: Callable[[str], int], now: float
) -> int:
    """Delete up to ``limit`` final round records older than the newest ``keep``.

    A pruned round's awarded generations must stay spent, so each workload whose
    highest awarded generation is above ``placed_generation`` (its generation in the
    view, 0 if none) gets a floor record in the same transaction. Returns how many
    rounds were deleted.
    """
    rows = store.query(
        "SELECT key, data FROM auction_records WHERE kind = 'round' "
        "ORDER BY updated_at DESC LIMIT ? OFFSET ?",
        (limit, keep),
    )
    floors: dict[str, int] = {}
    gone: list[str] = []
    for key, data in rows:
        try:
            rec = codec.load_record(bytes(data))
        except EnvelopeError as exc:
            logger.error("unreadable auction record kind=round key=%s error=%s", key, exc)
            continue
        if not isinstance(rec, d.RoundRecorded):
            logger.error("auction record kind=round key=%s holds a %s", key, type(rec).__name__)
            continue
        r = rec.record
        if r.state not in FINAL_STATES:
            continue  # still running: the originator rewrites it as it goes
        top = max((aw.generation for aw in r.awards), default=0)
        if top > max(placed_generation(r.workload_id), floors.get(r.workload_id, 0)):
            floors[r.workload_id] = top
        gone.append(str(key))
    if not gone:
        return 0
    with store.transaction():
        raised = [d.FloorRecorded(w, g) for w, g in sorted(floors.items()) if g > _floor(store, w)]
        write(store, raised, now)
        for key in gone:
            store.execute("DELETE FROM auction_records WHERE kind = 'round' AND key = ?", (key,))
    return len(gone)


def _floor(store: Store, workload_id: str) -> int:
    row = store.query_one(
        "SELECT data FROM auction_records WHERE kind = 'floor' AND key = ?", (workload_id,)
    )
    if row is None:
        return 0
    rec = codec.load_record(bytes(row[0]))
    return rec.generation if isinstance(rec, d.FloorRecorded) else 0


def load(store: Store) -> d.DurableState:
    """Fold every stored record into the state the core restores from (oldest first)."""
    state = d.DurableState()
    rows = store.query("SELECT kind, key, data FROM auction_records ORDER BY updated_at")
    for kind, key, data in rows:
        try:
            state.apply(codec.load_record(bytes(data)))
        except EnvelopeError as exc:
            # Only meshd writes this table; a bad row means a bug or a damaged disk.
            logger.error("unreadable auction record kind=%s key=%s error=%s", kind, key, exc)
            state.unreadable += 1
    _mend_legacy(state)
    return state


def _mend_legacy(state: d.DurableState) -> None:
    """Placements recorded before the view carried specs take this node's allocation's
    spec where it has one (exact); others keep the partial spec until anti-entropy or a
    new generation brings the real one."""
    for wid, p in list(state.placements.items()):
        if LEGACY not in p.spec.labels:
            continue
        alloc = state.allocations.get(wid)
        if alloc is not None:
            state.placements[wid] = dataclasses.replace(p, workload=alloc.workload)
        else:
            logger.warning("placement recorded by meshd 0.1 lacks its spec workload=%s", wid)
