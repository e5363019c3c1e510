"""What the auction core persists, and the state it is rebuilt from after a restart.

Every :class:`~meshd.core.auction.effects.Persist` effect carries one record below. All
records are *upserts* or *deletes* keyed as noted, so applying them in order to a
:class:`DurableState` (or to SQLite tables with those primary keys) yields exactly
what :meth:`Auctioneer.restore <meshd.core.auction.auctioneer.Auctioneer.restore>` needs:

===================  ===========================  ======================================
record               key                          effect on the store
===================  ===========================  ======================================
HoldPlaced           hold.round_id                upsert into holds
HoldReleased         round_id                     delete from holds (and its bid)
AllocationCommitted  allocation.workload.id       upsert into allocations (full spec)
AllocationReleased   workload_id                  delete from allocations
PlacementRecorded    placement.workload_id        upsert into the placement view
RoundRecorded        record.round_id              upsert into rounds (with bids, awards)
BidRecorded          round_id                     upsert the bid behind a hold
FloorRecorded        workload_id                  upsert: the highest generation awarded
===================  ===========================  ======================================

``BidRecorded`` keeps the bid behind a hold, so a restarted bidder answers a repeated
request identically; it goes with its hold (negative bids hold nothing and are not
recorded). Rounds may be pruned once final and old, but a round's awards are what
keep a restarted originator from handing one generation out twice: a shell that
prunes rounds records a ``FloorRecorded`` for each workload whose awarded generation
is above the one its view holds. Holds may be pruned once expired; nothing else.

Records are *promises* (allocations, rounds: on disk before the step's messages
leave) or :data:`KNOWLEDGE` (holds, bids, the view): a shell may write those a moment
late and lose the last of them in a crash. Safe, and checked by the simulator: an
award is always re-checked against the committed ledger, so a forgotten hold can't
overcommit, and anti-entropy restores the view from the owners.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshd.core.auction.model import Allocation, BidRecord, Hold, Placement, RoundRecord


@dataclass(frozen=True, slots=True)
class HoldPlaced:
    hold: Hold


@dataclass(frozen=True, slots=True)
class HoldReleased:
    round_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class AllocationCommitted:
    allocation: Allocation


@dataclass(frozen=True, slots=True)
class AllocationReleased:
    workload_id: str
    generation: int
    reason: str


@dataclass(frozen=True, slots=True)
class PlacementRecorded:
    placement: Placement


@dataclass(frozen=True, slots=True)
class RoundRecorded:
    record: RoundRecord


@dataclass(frozen=True, slots=True)
class BidRecorded:
    round_id: str
    originator: str
    workload_id: str
    bid: BidRecord


@dataclass(frozen=True, slots=True)
class FloorRecorded:
    """Generations up to ``generation`` of ``workload_id`` were awarded: never reuse them."""

    workload_id: str
    generation: int


Record = (
    HoldPlaced
    | HoldReleased
    | AllocationCommitted
    | AllocationReleased
    | PlacementRecorded
    | RoundRecorded
    | BidRecorded
    | FloorRecorded
)


@dataclass
class DurableState:
    """A node's durable auction state: the fold of every record it persisted."""

    holds: dict[str, Hold] = field(default_factory=dict)
    allocations: dict[str, Allocation] = field(default_factory=dict)
    placements: dict[str, Placement] = field(default_factory=dict)
    rounds: dict[str, RoundRecord] = field(default_factory=dict)
    bids: dict[str, BidRecorded] = field(default_factory=dict)
    floors: dict[str, int] = field(default_factory=dict)  # workload id -> generation
    # Stored records that could not be read back (a bug or a damaged disk): when any
    # is, the allocations may be incomplete, and the shell must not act on an absence.
    unreadable: int = 0

    def apply(self, record: Record) -> None:
        if isinstance(record, HoldPlaced):
            self.holds[record.hold.round_id] = record.hold
        elif isinstance(record, HoldReleased):
            self.holds.pop(record.round_id, None)
            self.bids.pop(record.round_id, None)
        elif isinstance(record, AllocationCommitted):
            self.allocations[record.allocation.workload.id] = record.allocation
        elif isinstance(record, AllocationReleased):
            self.allocations.pop(record.workload_id, None)
        elif isinstance(record, PlacementRecorded):
            self.placements[record.placement.workload_id] = record.placement
        elif isinstance(record, RoundRecorded):
            self.rounds[record.record.round_id] = record.record
        elif isinstance(record, FloorRecorded):
            wid = record.workload_id
            self.floors[wid] = max(self.floors.get(wid, 0), record.generation)
        else:
            self.bids[record.round_id] = record

    def empty(self) -> bool:
        return not (self.holds or self.allocations or self.placements or self.rounds or self.floors)


# What a crash may lose (see the module docstring); everything else is a promise.
KNOWLEDGE = (HoldPlaced, HoldReleased, BidRecorded, PlacementRecorded)
