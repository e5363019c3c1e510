"""Fencing a dead node by quorum (DESIGN.md §7), as a pure core.

``Fencer`` (in :mod:`.fencer`) is one node's state machine (voter and coordinator at
once; its docstring holds the theory of operation and the safety argument);
:mod:`.messages` and :mod:`.effects` are its inputs and outputs, :mod:`.records` its
durable promises, :mod:`.codec` turns messages and records into bytes. The majority
arithmetic is :mod:`meshd.core.quorum`.
"""

from meshd.core.fencing import codec
from meshd.core.fencing.effects import (
    Alarm,
    Broadcast,
    CheckReach,
    Effect,
    Persist,
    PowerOff,
    Replace,
    Send,
)
from meshd.core.fencing.fencer import POWER_OUTCOMES, STATES, Fencer
from meshd.core.fencing.messages import (
    Fenced,
    FenceFailed,
    FenceMsg,
    FenceRequest,
    FenceVote,
    Fencing,
    Release,
    SignedVote,
)
from meshd.core.fencing.records import BallotStarted, Decided, Granted, Outcome, Record

__all__ = [
    "POWER_OUTCOMES",
    "STATES",
    "Alarm",
    "BallotStarted",
    "Broadcast",
    "CheckReach",
    "Decided",
    "Effect",
    "FenceFailed",
    "FenceMsg",
    "FenceRequest",
    "FenceVote",
    "Fenced",
    "Fencer",
    "Fencing",
    "Granted",
    "Outcome",
    "Persist",
    "PowerOff",
    "Record",
    "Release",
    "Replace",
    "Send",
    "SignedVote",
    "codec",
]
