"""What the auction core asks the shell to do, as frozen values.

The shell carries out the effects of one step (one ``submit``/``receive``/``tick``
call) in this order: **every** :class:`Persist` of the step in **one** durable
transaction first; then the :class:`Send`/:class:`Broadcast`; then the rest
(:class:`Decided`, :class:`Failed`, :class:`Start`, :class:`Stop`). A message that
announces a commitment (a bid's hold, an accepted award, a decided placement) must
never leave before the commitment is on disk: the simulator proves a torn step breaks
the invariants.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshd.core.auction.durable import Record
from meshd.core.auction.messages import AuctionMsg, Confirm
from meshd.core.auction.model import Allocation, Placement


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``msg`` to member ``to``: over the reliable channel, or as one datagram."""

    to: str
    msg: AuctionMsg
    reliable: bool


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send ``msg`` to every member directly (reliable) and by membership gossip."""

    msg: Confirm


@dataclass(frozen=True, slots=True)
class Persist:
    """Write ``record`` durably (see :mod:`meshd.core.auction.durable` for the kinds)."""

    record: Record


@dataclass(frozen=True, slots=True)
class Decided:
    """The auction ``round_id`` (as ``submit`` returned it) placed the workload."""

    round_id: str
    placement: Placement


@dataclass(frozen=True, slots=True)
class Failed:
    """The auction ``round_id`` could not place the workload; ``reason`` says why."""

    round_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Start:
    """Run this workload here: its placement on this node is confirmed."""

    allocation: Allocation


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop this workload here: a newer generation placed it elsewhere."""

    workload_id: str
    generation: int
    reason: str


Effect = Send | Broadcast | Persist | Decided | Failed | Start | Stop
