"""What the fencing core asks the shell to do, as frozen values.

The shell carries out the effects of one step (one call into the core) in this order:
**every** :class:`Persist` of the step in **one** durable transaction first; then the
:class:`Send`/:class:`Broadcast` (a vote is signed with the node key on the way out);
then the rest. A grant, a ``fencing`` decision or a ``fenced`` outcome never leaves
the node before it is on disk.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshd.core.fencing.messages import FenceMsg
from meshd.core.fencing.records import Record


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``msg`` to member ``to`` (``to`` may be this node: its own vote)."""

    to: str
    msg: FenceMsg
    reliable: bool = False


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send ``msg`` to every roster member but the target (reliable or datagram)."""

    msg: FenceMsg
    reliable: bool = False


@dataclass(frozen=True, slots=True)
class Persist:
    record: Record


@dataclass(frozen=True, slots=True)
class CheckReach:
    """Check directly (not through gossip) whether ``target`` answers, within
    ``check_s``; report with :meth:`~meshd.core.fencing.fencer.Fencer.reach`."""

    target: str
    epoch: int


@dataclass(frozen=True, slots=True)
class PowerOff:
    """Power ``target`` off through its BMC and verify it is Off; every BMC request must
    have ended by ``deadline`` (this node's clock, the ``now`` the core is given).
    Report with :meth:`~meshd.core.fencing.fencer.Fencer.power_result`."""

    target: str
    epoch: int
    round: int
    deadline: float


@dataclass(frozen=True, slots=True)
class Replace:
    """``target`` is fenced for ``epoch``: re-place its workloads (once per epoch)."""

    target: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Alarm:
    """Fencing ``target`` failed; ``reason`` says why. Nothing is re-placed."""

    target: str
    epoch: int
    reason: str


Effect = Send | Broadcast | Persist | CheckReach | PowerOff | Replace | Alarm
