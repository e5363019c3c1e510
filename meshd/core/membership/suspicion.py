"""The suspicion timer: how long a suspected member has to refute before it is dead.

Theory of operation
-------------------
SWIM (§4.2) lets a suspected member refute within a fixed timeout. Lifeguard
(Dadgar et al. 2018, §4.2 "Local Health Aware Suspicion") starts the timer *long* and
shrinks it as other members independently confirm the suspicion: a real failure is
confirmed quickly by many probers, a false one (our own slow path, one lost packet)
rarely is, so true failures are declared fast and false ones get time to be refuted.

With ``C`` confirmations received out of the ``K`` wanted, the timeout is::

    timeout(C) = max(lo, hi - (hi - lo) * log(C + 1) / log(K + 1))

``lo`` and ``hi`` scale with the cluster (:func:`bounds`) because dissemination takes
O(log N) rounds. A confirmation counts once per distinct originator of a ``Suspect``
(the member that failed its probe, not whoever relayed the gossip); the originator of
the first one is not a confirmation (our own suspicion gossiped back to us is not new
evidence).

Where meshd departs from memberlist: ``hi`` is its own multiple of
``log10(N)·probe_interval`` (``suspicion_max_mult``) rather than a multiple of ``lo``,
``N`` is floored at 10 rather than 1 (so a 3-node lab waits as long as a 10-node one:
with few members there are few confirmations to speed things up anyway) and
timeouts are not rounded to milliseconds. ``K`` is capped at ``N - 2`` (nobody but the
target and the first suspecter can confirm), and with ``K = 0`` the timer is ``lo``.
"""

from __future__ import annotations

import math


def bounds(n: int, probe_interval_s: float, mult: float, max_mult: float) -> tuple[float, float]:
    """(lo, hi) suspicion timeouts for a cluster of ``n`` live members."""
    scale = math.log10(max(n, 10)) * probe_interval_s
    return mult * scale, max_mult * scale


def timeout(confirmations: int, k: int, lo: float, hi: float) -> float:
    """The whole suspicion timeout after ``confirmations`` of the ``k`` wanted."""
    if k < 1:
        return lo
    frac = math.log(confirmations + 1) / math.log(k + 1)
    return max(lo, hi - frac * (hi - lo))


def wanted(k_cfg: int, n: int) -> int:
    """Confirmations that bring the timer to its minimum in a cluster of ``n``."""
    return max(0, min(k_cfg, n - 2))


class Suspicion:
    """One member's suspicion timer, started at ``start`` by ``origin``'s claim."""

    __slots__ = (
        "_first",
        "_floor",
        "_seen",
        "confirmations",
        "deadline",
        "hi",
        "inc",
        "k",
        "last_call",
        "lo",
        "start",
    )

    def __init__(self, origin: str, inc: int, k: int, lo: float, hi: float, start: float) -> None:
        self.inc = inc
        self.k = k
        self.lo = lo
        self.hi = hi
        self.start = start
        self._first = start  # start before any pause
        self.last_call = False  # the suspect was pinged once more as the timer ran out
        self.confirmations = 0
        self._seen = {origin}
        self._floor = start  # a postponed deadline holds against later confirmations
        self.deadline = start + timeout(0, k, lo, hi)

    def confirm(self, origin: str) -> bool:
        """Count ``origin``'s independent confirmation; True if it was new evidence.

        The deadline only ever moves earlier (never before a :meth:`pause` allows); it may
        already be in the past, in which case the caller's next tick declares the
        member dead.
        """
        if self.confirmations >= self.k or origin in self._seen:
            return False
        self._seen.add(origin)
        self.confirmations += 1
        computed = self.start + timeout(self.confirmations, self.k, self.lo, self.hi)
        self.deadline = max(self._floor, computed)
        return True

    def pause(self, seconds: float, now: float, grace: float) -> bool:
        """Our own loop stalled (or our clock jumped) for ``seconds``: that time does not
        count against the suspect, and a deadline it made pass waits ``grace`` more for
        the refutations queued behind the stall. False, unchanged, once the pauses
        would add up to more than twice the longest timeout."""
        if self.start + seconds > self._first + 2 * self.hi:
            return False
        self.start += seconds
        self.deadline += seconds
        if self.deadline < now + grace:
            self._floor = max(self._floor, now + grace)
            self.deadline = self._floor
        return True

    def hold_until(self, until: float) -> None:
        """Keep the suspect alive in our view until ``until`` at least."""
        self._floor = max(self._floor, until)
        self.deadline = max(self.deadline, until)

    def restart(self, origin: str, inc: int) -> None:
        """A claim at a newer incarnation: the evidence so far was about an older one."""
        self.inc = inc
        self.confirmations = 0
        self._seen = {origin}
        self.deadline = max(self._floor, self.start + timeout(0, self.k, self.lo, self.hi))
