"""Where the placement shell writes the auction core's records: now, or a moment later.

Two kinds of record reach the store:

* **promises** — an accepted allocation, its release, a round with its awards (a
  restarted originator must never hand one generation to two nodes). They are written
  before the step's messages leave, in one transaction, fsynced for the allocations.
* **knowledge** — holds, this node's bids, and this node's copy of the mesh-wide
  placement view. Losing the last moments of it to a crash breaks no promise: a
  forgotten hold makes a later award be re-checked against the ledger (committed
  allocations are what bound capacity), and the view comes back from its owners by
  anti-entropy. Each node receives one of these per decision, most of them for
  placements it has no part in, so they are grouped: written ``lag_s`` after the
  first of them, or as soon as a promise is written (in order, ahead of it, so a key
  never goes back in time), or at :meth:`flush` on shutdown.

A bidder's hold usually lives a few milliseconds: placed and released (with its bid)
within one group. Such a hold never touches the disk: the group is written as its net
effect, which is what applying it record by record would leave (a hold that reached
the disk in an earlier group is still deleted). That saves four statements per
bidder per decision.

The ``placement.recorded`` event of each placement is stamped when the placement was
recorded in memory, not when its row reached the disk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from meshd.adapters.store import auction_records
from meshd.adapters.store.db import Store
from meshd.core.auction.durable import (
    KNOWLEDGE,
    AllocationCommitted,
    AllocationReleased,
    BidRecorded,
    HoldPlaced,
    HoldReleased,
    PlacementRecorded,
    Record,
)

logger = logging.getLogger(__name__)

FSYNCED = (AllocationCommitted, AllocationReleased)
MAX_PENDING = 512  # records; a burst beyond this is written at once


class AuctionJournal:
    def __init__(self, store: Store, lag_s: float, clock: Callable[[], float] = time.time) -> None:
        self._store, self._lag_s, self._clock = store, lag_s, clock
        self._pending: list[tuple[float, Record]] = []  # (wall-clock time, record)
        self._timer: asyncio.TimerHandle | None = None
        self._held = auction_records.held_rounds(store)  # rounds with a hold row on disk

    def write(self, records: Sequence[Record], now: float) -> None:
        """Record a step's records: promises at once (with anything pending), else soon."""
        stamp = self._clock()
        if all(isinstance(r, KNOWLEDGE) for r in records) and len(self._pending) < MAX_PENDING:
            self._pending.extend((stamp, r) for r in records)
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self._lag_s, self._on_timer)
            return
        self._commit([*self._pending, *((stamp, r) for r in records)], now)

    def flush(self, now: float) -> None:
        """Write whatever is pending (shutdown, or a test that reads the store)."""
        if self._pending:
            self._commit(list(self._pending), now)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.flush(self._clock())
        except Exception:  # the store says what failed; the next write tries again
            logger.exception("writing auction records failed")

    def _commit(self, stamped: list[tuple[float, Record]], now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        store = self._store
        records = self._net([r for _, r in stamped])
        with store.transaction(durable=any(isinstance(r, FSYNCED) for _, r in stamped)):
            auction_records.write(store, records, now)
            for stamp, r in stamped:
                if isinstance(r, PlacementRecorded):
                    p = r.placement
                    store.append_event(
                        stamp,
                        "placement.recorded",
                        p.workload_id,
                        {"owner": p.owner, "generation": p.generation, "name": p.name},
                    )
        # Only once committed: a failed transaction keeps them pending for the next try.
        self._pending.clear()
        for r in records:
            if isinstance(r, HoldPlaced | BidRecorded):
                self._held.add(_round_of(r))
            elif isinstance(r, HoldReleased):
                self._held.discard(r.round_id)

    def _net(self, records: list[Record]) -> list[Record]:
        """``records`` without the holds (and bids) that are placed and released in it."""
        out: list[Record | None] = []
        fresh: dict[str, list[int]] = {}  # round id -> its hold/bid upserts in ``out``
        for r in records:
            if isinstance(r, HoldPlaced | BidRecorded):
                fresh.setdefault(_round_of(r), []).append(len(out))
            elif isinstance(r, HoldReleased):
                for i in fresh.pop(r.round_id, ()):
                    out[i] = None
                if r.round_id not in self._held:
                    continue  # nothing of it on disk: nothing to delete
            out.append(r)
        return [r for r in out if r is not None]


def _round_of(r: HoldPlaced | BidRecorded) -> str:
    return r.hold.round_id if isinstance(r, HoldPlaced) else r.round_id
