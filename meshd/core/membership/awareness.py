"""Local health: how much this node should distrust its own view of others.

Theory of operation
-------------------
Lifeguard (Dadgar et al. 2018, §4.1 "Local Health Aware Probe") observes that most
false suspicions come from a *slow prober* (CPU starved, dropping packets), not from
a dead target. It keeps a saturating counter, the Local Health Multiplier, in
``[0, awareness_max - 1]`` and stretches the probe timeout and the probe interval by
``score + 1``, so a sick node probes more slowly and waits longer before it accuses
anyone. The score moves on evidence about ourselves:

* ``+1`` for a failed probe when no indirect prober could be asked;
* ``+1`` per expected nack that did not arrive (Lifeguard §4.1: peers that answer
  nacks are healthy, so a missing nack points at our own network path);
* ``+1`` when we have to refute a suspicion about ourselves;
* ``-1`` for every successful probe;
* ``+1``, and one more per probe interval lost, when a tick comes more than
  ``membership.stall_s`` after the timer that asked for it: our own event loop
  stalled (a starved CPU, SIGSTOP, a clock jump). Lifeguard infers ill health only
  from missed acks and nacks; a loop that ran late is the most direct evidence there
  is, and on a machine shared by many busy processes it is the usual one. The probe
  in flight during such a stall is voided rather than failed, and the stall does not
  count against the members we suspect (``Membership._stalled``): accusations made
  while the accuser was stalled don't count.

This mirrors memberlist's ``awareness.go``. meshd departs only in also scaling the
direct-ack wait (memberlist leaves it fixed), as the Lifeguard paper does.
"""

from __future__ import annotations


class Awareness:
    """The Local Health Multiplier: a saturating score in ``[0, max_score - 1]``."""

    __slots__ = ("_max", "score")

    def __init__(self, max_score: int) -> None:
        if max_score < 1:
            raise ValueError("awareness_max must be at least 1")
        self._max = max_score
        self.score = 0

    def apply(self, delta: int) -> int:
        """Move the score by ``delta``, clamped to the range; returns the new score."""
        self.score = min(self._max - 1, max(0, self.score + delta))
        return self.score

    def scale(self, duration: float) -> float:
        """``duration`` stretched for our current health."""
        return duration * (self.score + 1)
