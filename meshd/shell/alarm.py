"""An alarm for a pure core's timers: one event-loop timer, set to the earliest deadline.

A core says when it must next be ticked (``next_deadline()``); the shell calls
:meth:`Alarm.rearm` after every step it feeds the core. Re-arming for a later time than
the one already set changes nothing (ticking early is harmless for every core), so a
burst of messages costs one comparison each rather than a task wake-up and a
``wait_for`` per message. After it rings, the alarm re-arms itself, at least every
``longest`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Alarm:
    """Calls ``fire`` when ``deadline()`` (on ``clock``) comes, or ``longest`` s at most."""

    def __init__(
        self,
        name: str,
        fire: Callable[[], None],
        deadline: Callable[[], float],
        clock: Callable[[], float],
        longest: float,
    ) -> None:
        self._name, self._fire, self._deadline, self._clock = name, fire, deadline, clock
        self._longest = longest
        self._handle: asyncio.Handle | None = None
        self._due = 0.0  # loop time the handle rings at (uvloop's handles don't say)
        self._stopped = False

    def rearm(self) -> None:
        """Ring at the core's next deadline unless already set to ring earlier."""
        if self._stopped:
            return
        loop = asyncio.get_running_loop()
        delay = min(max(0.0, self._deadline() - self._clock()), self._longest)
        due = loop.time() + delay
        if self._handle is not None:
            if self._due <= due:
                return
            self._handle.cancel()
        self._handle, self._due = loop.call_at(due, self._ring), due

    def stop(self) -> None:
        self._stopped = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _ring(self) -> None:
        self._handle = None
        try:
            self._fire()
        except Exception:  # a bug in one tick must not stop the timers for good
            logger.exception("%s tick failed", self._name)
        self.rearm()
