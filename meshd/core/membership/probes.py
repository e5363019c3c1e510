"""Whom to probe next, and the probes and relays in flight (SWIM §4.3).

Members are probed in a shuffled round-robin: every live member once per pass, the
order reshuffled each pass, a newcomer inserted at a random place in the current one
(so it is probed within one pass, not at a predictable point). This bounds the time
until a failed member is first probed by everyone, where SWIM's original random pick
only bounds it in expectation.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Probe:
    """Our probe of ``target``: direct ping, then ping-reqs at ``timeout_at``."""

    __slots__ = ("end_at", "helpers", "indirect_sent", "nacks", "seq", "target", "timeout_at")

    def __init__(self, target: str, seq: int, timeout_at: float, end_at: float) -> None:
        self.target = target
        self.seq = seq
        self.timeout_at = timeout_at
        self.end_at = end_at
        self.indirect_sent = False
        self.helpers: list[str] = []
        self.nacks: set[str] = set()


class Relay:
    """A ping-req we relay for ``requester``: its ack goes back under ``seq``."""

    __slots__ = ("requester", "seq", "target")

    def __init__(self, requester: tuple[str, int], seq: int, target: str) -> None:
        self.requester = requester
        self.seq = seq
        self.target = target


class ProbeOrder:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._order: list[str] = []
        self._idx = 0

    def insert(self, name: str) -> None:
        """A member became live: probe it within the current pass, at a random place."""
        pos = self._rng.randint(0, len(self._order))
        self._order.insert(pos, name)
        if pos < self._idx:
            self._idx += 1

    def next(self, is_live: Callable[[str], bool], members: Callable[[], list[str]]) -> str | None:
        """The next live member to probe; a finished pass starts a fresh shuffle of
        ``members()``. None when there is nobody to probe."""
        for _ in range(2):
            while self._idx < len(self._order):
                name = self._order[self._idx]
                self._idx += 1
                if is_live(name):
                    return name
            fresh = members()
            self._rng.shuffle(fresh)
            self._order = fresh
            self._idx = 0
            if not fresh:
                return None
        return None
