"""Majority quorums over a durable voter roster.

Theory of operation
-------------------
Follows etcd raft's ``quorum`` package (``majority.go``): a decision needs a strict
majority of a fixed voter set, and a tally is WON, LOST or still PENDING. Two
majorities of one roster always share a voter; fencing's safety argument
(:mod:`meshd.core.fencing`) rests on exactly that.

The voter set is the **durable roster** (witnesses included, removed nodes not), never
the members that happen to be alive: counting only live members would let each side
of a partition call itself a majority. Votes from names outside the roster are
ignored, and a voter counts once however often it appears. Departures from raft: no
joint configurations (the roster changes by a separate, durable step), and an empty
roster never wins (raft treats the empty config as a trivial win, which for fencing
would mean powering nodes off with nobody's consent).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

__all__ = ["VoteResult", "majority", "vote_result"]


class VoteResult(enum.Enum):
    WON = "won"  # a majority of the roster voted yes
    LOST = "lost"  # a majority can no longer be reached, even if every silent voter says yes
    PENDING = "pending"  # neither yet: wait for more votes


def majority(n: int) -> int:
    """The smallest number of voters that is more than half of ``n`` voters."""
    if n < 0:
        raise ValueError(f"a roster can't have {n} voters")
    return n // 2 + 1


def vote_result(voters: Iterable[str], yes: Iterable[str], no: Iterable[str] = ()) -> VoteResult:
    """The tally of ``yes`` and ``no`` votes among ``voters``.

    Names outside ``voters`` are ignored and duplicates count once; a voter named in
    both ``yes`` and ``no`` counts as yes (a vote, once given, is a promise).
    """
    roster = frozenset(voters)
    if not roster:
        return VoteResult.LOST
    ayes = roster.intersection(yes)
    nays = roster.intersection(no) - ayes
    need = majority(len(roster))
    if len(ayes) >= need:
        return VoteResult.WON
    pending = len(roster) - len(ayes) - len(nays)
    if len(ayes) + pending >= need:
        return VoteResult.PENDING
    return VoteResult.LOST
