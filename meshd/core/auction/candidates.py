"""Who is asked to bid: everyone in a small mesh, a random sample in a large one.

Theory of operation
-------------------
Sparrow (Ousterhout et al., SOSP 2013) places each task by probing a few random
workers — the *power of d choices* (Mitzenmacher): asking d random servers instead
of one shrinks the worst queue exponentially — and *batch sampling*, d·m probes for
a job of m tasks. Its probes ask "how long is your queue?" for identical slots.

meshd's workloads are single, heterogeneous and must *fit* (CPU, memory, disk), so a
handful of probes can miss the few blades with room. It therefore asks

* **everyone** eligible when the mesh has at most ``auction.full_mesh_max`` eligible
  members (a round then costs a few dozen datagrams at most, and the decision is the
  best the mesh can make);
* otherwise a uniform random sample of ``ceil(d · log2 N)`` (``auction.sample_d``):
  the chance that a sample misses every fitting node falls geometrically with the
  sample size, and log2 N grows slowly enough that a round stays O(log N) messages;
* and when a round finds no fit, the next round **widens**: the sample doubles, and
  the last round (``auction.max_rounds``) asks every eligible member. A "no" from
  the whole mesh is then a true "no" — never an unlucky sample.

Auctions that one originator starts together (a :class:`Batch`: the shell's
submissions of one moment) share their first-round sample, Sparrow's batch sampling
in meshd's terms: each workload still has its own auction, but their requests and
bids to and from the same few members travel in the same datagrams. Later rounds
(widening, busy retries) draw afresh.

Eligible means alive (the shell passes membership's live members) and allowed by the
workload's static constraints. Nodes that already answered -1 or failed an award in
this auction are excluded from later rounds. The sample draws from a seeded
``random.Random`` over the sorted names, so it is deterministic given the seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from meshd.core.auction.model import Constraints


@dataclass(frozen=True, slots=True)
class Selection:
    candidates: list[str]  # sorted
    exhaustive: bool  # every eligible member not excluded was asked
    eligible: int  # how many members the constraints allow


def eligible(members: Iterable[str], constraints: Constraints) -> list[str]:
    """Sorted, distinct members that the constraints allow."""
    return sorted({m for m in members if constraints.allows(m)})


def sample_size(n: int, d: float) -> int:
    """``ceil(d · log2 n)``, at least 1 and at most ``n``."""
    if n <= 1:
        return n
    return min(n, max(1, math.ceil(d * math.log2(n))))


def select(
    members: Iterable[str],
    constraints: Constraints,
    attempt: int,
    full_mesh_max: int,
    d: float,
    max_rounds: int,
    rng: random.Random,
    exclude: Collection[str] = (),
) -> Selection:
    """The candidates for round ``attempt`` (1-based) of an auction (pure, given rng)."""
    allowed = eligible(members, constraints)
    pool = [m for m in allowed if m not in exclude]
    n = len(allowed)
    if n <= full_mesh_max or attempt >= max_rounds:
        return Selection(pool, True, n)
    k = sample_size(n, d) * 2 ** (attempt - 1)
    if k >= len(pool):
        return Selection(pool, True, n)
    return Selection(sorted(rng.sample(pool, k)), False, n)


class Batch:
    """First-round selections shared by the auctions one originator starts together."""

    def __init__(self) -> None:
        self._first: dict[tuple[Constraints, tuple[str, ...]], Selection] = {}

    def select(
        self,
        members: tuple[str, ...],
        constraints: Constraints,
        attempt: int,
        full_mesh_max: int,
        d: float,
        max_rounds: int,
        rng: random.Random,
        exclude: Collection[str] = (),
    ) -> Selection:
        """:func:`select`, the same for round 1 of the same members and constraints."""
        if attempt != 1 or exclude:
            return select(members, constraints, attempt, full_mesh_max, d, max_rounds, rng, exclude)
        key = (constraints, members)
        sel = self._first.get(key)
        if sel is None:
            sel = self._first[key] = select(
                members, constraints, 1, full_mesh_max, d, max_rounds, rng
            )
        return sel
