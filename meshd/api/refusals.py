"""Failures of callers we don't know: counted always, logged as one short line, rarely.

Anyone who can reach the mesh port can fail a TLS handshake, send no certificate or
send bytes that are not HTTP, as often as they like. Each such failure increments
``meshd_api_refused_total{reason=...}`` and, at most once per ``interval_s`` per
reason, logs one line naming the reason, the peer and a short detail, with how many
were counted in between without a line. Never a traceback: nothing about our code is
wrong, and a traceback per bad packet lets a stranger fill the disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import http_exceptions

from meshd.metrics import Counter

logger = logging.getLogger(__name__)
# Longest detail logged: peer-supplied text is cut and escaped (repr) before logging.
DETAIL_CHARS = 120


class Refusals:
    def __init__(
        self, counter: Counter, interval_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.counter = counter
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def note(self, reason: str, peer: str, detail: object = "") -> bool:
        """Count one failure; log it unless ``reason`` was logged within the interval.

        Returns whether a line was logged.
        """
        self.counter.inc(reason=reason)
        now = self._clock()
        last = self._last.get(reason)
        if last is not None and now - last < self.interval_s:
            self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
            return False
        self._last[reason] = now
        unlogged = self._unlogged.pop(reason, 0)
        text = repr(str(detail))[1:-1][:DETAIL_CHARS]
        logger.warning(
            "api refused a connection reason=%s peer=%s detail=%s unlogged_since_last=%d",
            reason,
            peer or "unknown",
            text,
            unlogged,
        )
        return True


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """The logger aiohttp's connection handler gets.

    aiohttp logs a request it can't parse ("Error handling request") with a traceback
    at ERROR; those become one :class:`Refusals` line (reason ``malformed_request``).
    Anything else (an unhandled exception in aiohttp itself) is logged as aiohttp
    wants: that one is a bug worth a traceback.
    """

    def __init__(self, refusals: Refusals) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self.refusals = refusals

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, http_exceptions.HttpProcessingError):
            peer = str(args[0]) if args else ""
            self.refusals.note("malformed_request", peer, exc.message or type(exc).__name__)
            return
        super().log(level, msg, *args, **kwargs)
