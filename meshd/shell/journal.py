"""Where the placement shell writes the auction core's records: now, or a moment later.

Two kinds of record reach the store:

* **promises** — an accepted allocation, its release, a round with its awards (a
  restarted originator must never hand one generation to two nodes). They are written
  before the step's messages leave, in one transaction, fsynced for the allocations
  and for a round as it awards (so not even a power cut forgets a generation).
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

A write that fails (disk full, I/O error, read-only) raises and leaves the journal as
it was: what was pending stays pending, the failed step's records are not kept (the
placement shell discards that step, see ``meshd.shell.placement``). A failed timed
write is reported to ``failed`` and tried again with the next write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Sequence

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
    RoundRecorded,
)
from meshd.core.auction.model import AWARDING
from meshd.errors import StoreError

logger = logging.getLogger(__name__)

FSYNCED = (AllocationCommitted, AllocationReleased)


def _fsynced(r: Record) -> bool:
    """Allocations, and a round while it awards: the generation an originator handed
    out must survive a power cut too, or after one it could hand the same generation
    to a second node (a process crash alone loses nothing either way: WAL)."""
    return isinstance(r, FSYNCED) or (isinstance(r, RoundRecorded) and r.record.state == AWARDING)


MAX_PENDING = 512  # records; a burst beyond this is written at once


class AuctionJournal:
    def __init__(
        self,
        store: Store,
        lag_s: float,
        clock: Callable[[], float] = time.time,
        failed: Callable[[StoreError], None] | None = None,
    ) -> None:
        self._store, self._lag_s, self._clock = store, lag_s, clock
        self._failed = failed
        self._pending: list[tuple[float, Record]] = []  # (wall-clock time, record)
        self._timer: asyncio.TimerHandle | None = None
        self._held = auction_records.held_rounds(store)  # rounds with a hold row on disk

    @property
    def backlog(self) -> int:
        """Records waiting to be written."""
        return len(self._pending)

    @property
    def full(self) -> bool:
        """Whether a knowledge-only step would now be written at once, not later."""
        return len(self._pending) >= MAX_PENDING

    def pending(self) -> Iterator[Record]:
        """The records not yet on disk, oldest first (they fold onto what the store holds)."""
        return (r for _, r in self._pending)

    def defer(self, records: Sequence[Record]) -> None:
        """Queue records to be written with the next write, whatever their kind.

        Only for records that a restart would derive again from the store (those a
        freshly restored core owes, such as its abandoned rounds): losing them in a
        crash loses nothing, so they need not reach the disk before anything is sent.
        """
        stamp = self._clock()
        self._pending.extend((stamp, r) for r in records)
        if self._pending and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._lag_s, self._on_timer)

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
        except StoreError as exc:  # the store says what failed; the next write tries again
            if self._failed is not None:
                self._failed(exc)
            else:
                logger.error("writing auction records failed: %s", exc)
        except Exception:  # a bug must not end the timed writes for good
            logger.exception("writing auction records failed")

    def _commit(self, stamped: list[tuple[float, Record]], now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        store = self._store
        records = self._net([r for _, r in stamped])
        with store.transaction(durable=any(_fsynced(r) for _, r in stamped)):
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
