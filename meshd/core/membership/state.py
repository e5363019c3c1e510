"""What a node knows about one member: its state, incarnation and address.

Theory of operation
-------------------
SWIM (Das et al. 2002, §4.2) gives each member an *incarnation number* that only the
member itself may raise; every claim about a member ("alive", "suspect", "dead")
carries the incarnation it refers to, and a newer incarnation beats an older claim.
memberlist adds ``left`` (a graceful goodbye, final like ``dead``). The precedence
rules themselves live in :mod:`meshd.core.membership.swim`; this module only names the
states and says which of them count as *live* (probed, gossiped to, counted in N).

:class:`NameSet` indexes member names (one set per state in the core) so that random
choices — gossip targets, ping-req helpers — cost O(1), never a scan of the members.

The enum is open for extension: a later issue adds ``fenced`` (powered off through
its BMC), which is neither live nor refutable by gossip. Code that branches on a state
asks ``state.live`` rather than listing states, so a new state is safe by default.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

# Incarnations travel as unsigned 32-bit integers; a claim outside that range is
# refused, and a claim at the very top can't be refuted (logged, not believed).
INCARNATION_MAX = 2**32 - 1

Address = tuple[str, int]


class MemberState(Enum):
    """A member's state as one node sees it. The value is the wire code."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3

    @property
    def live(self) -> bool:
        """Probed, gossiped to and counted in N: alive or merely suspected."""
        return self in _LIVE

    def __str__(self) -> str:
        return self.name.lower()


_LIVE = frozenset({MemberState.ALIVE, MemberState.SUSPECT})


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this node is on the mesh: its name, node id and advertised address."""

    name: str
    node_id: str
    address: Address


@dataclass(frozen=True, slots=True)
class Member:
    """One node's view of one member; a new snapshot replaces the old on every change.

    ``since`` is the local time of the last state change (not of the last message).
    """

    name: str
    node_id: str
    address: Address
    state: MemberState
    incarnation: int
    since: float


class NameSet:
    """Member names with O(1) add, remove and uniform random choice (swap-remove list).

    The core keeps one per state, so picking random gossip targets or ping-req helpers
    never scans the member list.
    """

    __slots__ = ("_pos", "items")

    def __init__(self) -> None:
        self.items: list[str] = []
        self._pos: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, x: str) -> bool:
        return x in self._pos

    def add(self, x: str) -> None:
        if x not in self._pos:
            self._pos[x] = len(self.items)
            self.items.append(x)

    def discard(self, x: str) -> None:
        i = self._pos.pop(x, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self._pos[last] = i


def sample_names(
    rng: random.Random, sets: Iterable[NameSet], k: int, exclude: str | None = None
) -> list[str]:
    """Up to ``k`` distinct random names from the union of disjoint ``sets``."""
    groups = [s.items for s in sets if s.items]
    total = sum(len(g) for g in groups)
    if k <= 0 or total == 0:
        return []
    if total <= 2 * k + 2:
        pool = [x for g in groups for x in g if x != exclude]
        return rng.sample(pool, min(k, len(pool)))
    chosen: list[str] = []
    while len(chosen) < k:
        i = rng.randrange(total)
        for g in groups:
            if i < len(g):
                x = g[i]
                break
            i -= len(g)
        if x != exclude and x not in chosen:
            chosen.append(x)
    return chosen
