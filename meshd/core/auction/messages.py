"""Auction messages between nodes (DESIGN.md §6), before signing and sealing.

The shell authenticates the sender of every message and passes its name to
:meth:`~meshd.core.auction.auctioneer.Auctioneer.receive`, so no message names its own
author. Which channel carries what:

=============  =========  ==============================================================
message        channel    meaning
=============  =========  ==============================================================
BidRequest     datagram   originator → candidate: bid for these resources in ``window``
Bid            datagram   candidate → originator: a score 1..1000, or -1 and why
Release        datagram   originator → bidder: drop your hold for this round
Award          datagram(*)originator → winner: the full workload; commit it (re-sent)
Accept         datagram   winner → originator: committed durably at ``generation``
Refuse         datagram   winner → originator: can't host it after all, and why
Revoke         reliable   originator → a silent winner: that award is withdrawn
Confirm        broadcast  the placement, to every member (direct and by gossip)
Digest         (*)        anti-entropy: the view's bucket sums (``reply`` on the answer)
Sync           (*)        anti-entropy: the placements of the buckets that differ
=============  =========  ==============================================================

Datagrams may carry several messages to one node (a bundle, ``codec.bundle``; the
placement shell's outbox makes them). (*) An ``Award``, ``Digest`` or ``Sync`` that
does not fit one datagram (a large spec, a large view) goes over the reliable channel. Either
way the originator re-sends an award until the winner answers, and the winner
answers every copy, so the award/answer pair survives a lost datagram. A ``Confirm``
sent to one node (correcting a stale one, answering a repeated ``Accept``) is a
datagram too when it fits: gossip and anti-entropy back it up.

``Confirm`` is the placement confirmation the design calls "Placement"; it carries a
:class:`~meshd.core.auction.model.Placement`, whose name the message can't reuse.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshd.core.auction.capabilities import NO_REQUIREMENTS, Requirements
from meshd.core.auction.model import Placement, Resources, Workload


@dataclass(frozen=True, slots=True)
class BidRequest:
    round_id: str
    workload_id: str
    tenant: str | None
    resources: Resources
    window: float  # seconds the originator waits for bids (informational)
    # What a candidate must have or be to bid (meshd.core.auction.capabilities).
    requirements: Requirements = NO_REQUIREMENTS


@dataclass(frozen=True, slots=True)
class Bid:
    """A score, and the facts the tie-break needs, so every node ranks bids alike."""

    round_id: str
    score: int  # 1..1000, or -1
    reason: str  # why -1 (empty otherwise)
    tenant_count: int  # workloads of the request's tenant here (committed + held)
    mem_free: int  # bytes of memory free here before this workload
    workloads: int  # workloads here in total (committed + held): neighbour density
    busy: bool = False  # -1 only because concurrent rounds hold capacity: retry later


@dataclass(frozen=True, slots=True)
class Release:
    round_id: str


@dataclass(frozen=True)
class Award:
    round_id: str
    workload: Workload
    generation: int
    # The node awarded: a copy of this (signed, sealed) award delivered anywhere else is
    # dropped there, so a datagram copied on the LAN can't make a node commit.
    winner: str


@dataclass(frozen=True, slots=True)
class Accept:
    round_id: str
    workload_id: str
    generation: int


@dataclass(frozen=True, slots=True)
class Refuse:
    round_id: str
    workload_id: str
    generation: int
    reason: str


@dataclass(frozen=True, slots=True)
class Revoke:
    round_id: str
    workload_id: str
    generation: int


@dataclass(frozen=True, slots=True)
class Confirm:
    placement: Placement


@dataclass(frozen=True, slots=True)
class Digest:
    """The sender's view as bucket sums (:mod:`~meshd.core.auction.digest`: 32 to 4,096)."""

    sums: tuple[int, ...]
    reply: bool = False  # an answer: don't answer it with another Digest


@dataclass(frozen=True, slots=True)
class Sync:
    """Placements for the receiver to merge: a whole view, or the buckets that differ.

    A ``Sync`` without ``reply`` (a whole view, as older nodes push it) is answered
    with this node's whole view.
    """

    placements: tuple[Placement, ...]
    reply: bool = False


AuctionMsg = BidRequest | Bid | Release | Award | Accept | Refuse | Revoke | Confirm | Digest | Sync
