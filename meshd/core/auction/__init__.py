"""Placement by peer-to-peer reverse auction (DESIGN.md §6), as a pure core.

``Auctioneer`` (in :mod:`.auctioneer`) is the state machine, originator and bidder
at once; :mod:`.scoring` scores a request, :mod:`.ranking` orders bids (the
tie-break matrix), :mod:`.candidates` picks who is asked, :mod:`.codec` turns
messages and durable records into bytes, :mod:`.durable` folds persisted records into
the state ``Auctioneer.restore`` rebuilds from.
"""

from meshd.core.auction.auctioneer import Auctioneer
from meshd.core.auction.durable import (
    AllocationCommitted,
    AllocationReleased,
    BidRecorded,
    DurableState,
    FloorRecorded,
    HoldPlaced,
    HoldReleased,
    PlacementRecorded,
    Record,
    RoundRecorded,
)
from meshd.core.auction.effects import (
    Broadcast,
    Decided,
    Effect,
    Failed,
    Persist,
    Send,
    Start,
    Stop,
)
from meshd.core.auction.messages import (
    Accept,
    AuctionMsg,
    Award,
    Bid,
    BidRequest,
    Confirm,
    Digest,
    Refuse,
    Release,
    Revoke,
    Sync,
)
from meshd.core.auction.model import (
    Allocation,
    AwardRecord,
    BidRecord,
    Capacity,
    Constraints,
    Hold,
    InvariantBreach,
    Ledger,
    Placement,
    Resources,
    RoundRecord,
    Telemetry,
    Workload,
)

__all__ = [
    "Accept",
    "Allocation",
    "AllocationCommitted",
    "AllocationReleased",
    "AuctionMsg",
    "Auctioneer",
    "Award",
    "AwardRecord",
    "Bid",
    "BidRecord",
    "BidRecorded",
    "BidRequest",
    "Broadcast",
    "Capacity",
    "Confirm",
    "Constraints",
    "Decided",
    "Digest",
    "DurableState",
    "Effect",
    "Failed",
    "FloorRecorded",
    "Hold",
    "HoldPlaced",
    "HoldReleased",
    "InvariantBreach",
    "Ledger",
    "Persist",
    "Placement",
    "PlacementRecorded",
    "Record",
    "Refuse",
    "Release",
    "Resources",
    "Revoke",
    "RoundRecord",
    "RoundRecorded",
    "Send",
    "Start",
    "Stop",
    "Sync",
    "Telemetry",
    "Workload",
]
