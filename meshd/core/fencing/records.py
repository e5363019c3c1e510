"""The fencing core's durable records, and the state they fold into after a restart.

=============  ===========================================================================
record         written when
=============  ===========================================================================
Granted        before a vote leaves: this node granted (or renewed) a ballot at ``at``
BallotStarted  before a coordinator's first request: it owns ``round`` (never reused)
Decided        before ``Fencing``/``PowerOff``: this coordinator holds a quorum
Outcome        before it is announced or acted on: ``fenced``, ``failed``,
               ``confirmed`` or ``abandoned`` (a restarted coordinator's open ballot)
=============  ===========================================================================

Times are the node's own clock as the shell passes it to the core.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OUTCOMES = ("fenced", "failed", "confirmed", "abandoned")


@dataclass(frozen=True, slots=True)
class Granted:
    target: str
    epoch: int
    round: int
    coordinator: str
    at: float


@dataclass(frozen=True, slots=True)
class BallotStarted:
    target: str
    epoch: int
    round: int


@dataclass(frozen=True, slots=True)
class Decided:
    target: str
    epoch: int
    round: int
    deadline: float
    votes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Outcome:
    target: str
    epoch: int
    round: int
    coordinator: str
    kind: str  # one of OUTCOMES
    detail: str  # evidence or reason
    votes: tuple[bytes, ...] = ()


Record = Granted | BallotStarted | Decided | Outcome
Key = tuple[str, int]  # (target, epoch)


@dataclass
class DurableState:
    """What the records promise: the latest grant, the highest own round, open decisions
    and the last outcome, per (target, epoch)."""

    grants: dict[Key, Granted] = field(default_factory=dict)
    rounds: dict[Key, int] = field(default_factory=dict)
    decided: dict[Key, Decided] = field(default_factory=dict)
    outcomes: dict[Key, Outcome] = field(default_factory=dict)


def fold(records: list[Record]) -> DurableState:
    st = DurableState()
    for r in records:
        key = (r.target, r.epoch)
        if isinstance(r, Granted):
            old = st.grants.get(key)
            if old is None or r.at >= old.at:
                st.grants[key] = r
        elif isinstance(r, BallotStarted):
            st.rounds[key] = max(st.rounds.get(key, -1), r.round)
        elif isinstance(r, Decided):
            st.decided[key] = r
            st.rounds[key] = max(st.rounds.get(key, -1), r.round)
        else:
            prev = st.outcomes.get(key)
            # A success is final: a later abandon or failure never hides it.
            if prev is None or prev.kind not in ("fenced", "confirmed"):
                st.outcomes[key] = r
    return st
