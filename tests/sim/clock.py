"""Virtual time: a clock and an event queue, deterministic to the last tie.

Events are ``(time, counter, fn, args)`` in a heap; the counter breaks ties in
scheduling order, so two runs with the same seed execute the same events in the same
order. Nothing here reads a real clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any


class EventQueue:
    """A virtual clock driven by a heap of scheduled callbacks."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._counter = 0
        self.executed = 0

    def __len__(self) -> int:
        return len(self._heap)

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` at virtual time ``t`` (never earlier than now)."""
        self._counter += 1
        heapq.heappush(self._heap, (max(t, self.now), self._counter, fn, args))

    def after(self, dt: float, fn: Callable[..., None], *args: Any) -> None:
        self.at(self.now + dt, fn, *args)

    def run_until(self, t_end: float) -> None:
        """Execute every event due at or before ``t_end``; the clock ends at ``t_end``."""
        heap = self._heap
        pop = heapq.heappop
        n = 0
        while heap and heap[0][0] <= t_end:
            t, _, fn, args = pop(heap)
            self.now = t
            fn(*args)
            n += 1
        self.executed += n
        self.now = max(self.now, t_end)

    def next_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None
