"""Whether this node's store can write, and how the node finds out that it can again.

A node promises nothing it has not written: a bid's hold, an accepted award and a
decided round reach the store before the message that announces them leaves. When a
write fails (the disk is full, the device reports I/O errors, the mount went
read-only), the node can keep no new promise, so it makes none: the placement shell
learns of the failure here (:meth:`StoreHealth.failed`), discards what the failed step
changed in memory, and refuses bids, awards and submissions with a sentence naming
the store's problem until a write succeeds again.

Nobody tells a node that its disk has room again, so it asks: a probe write
(``meshd.adapters.store.probe``) ``store.probe_s`` after the failure, then twice as
late each time up to ``store.probe_max_s``. ``GET /v1/health`` probes too, on every
request, so an operator who freed space sees the node recover at once. One log line
says when the store stopped writing and one when it writes again; the gauge
``meshd_store_writable`` says which it is now.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from meshd.adapters.store import probe
from meshd.adapters.store.db import Store
from meshd.config.sections import StoreConfig
from meshd.errors import StoreError
from meshd.metrics import Registry

logger = logging.getLogger(__name__)
Listener = Callable[[str | None], None]  # called with the problem, or None once writable


class StoreHealth:
    def __init__(
        self, store: Store, cfg: StoreConfig, clock: Callable[[], float], metrics: Registry
    ) -> None:
        self._store, self._cfg, self._clock = store, cfg, clock
        self.problem: str | None = None  # why the store can't write; None while it can
        self.since: float | None = None  # wall-clock time the problem began
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._failures = metrics.counter(
            "meshd_store_write_failures_total", "Writes to the store that failed, by where"
        )
        metrics.gauge(
            "meshd_store_writable",
            "1 while the store can write; 0 while the node refuses work because it can't",
            lambda: 0.0 if self.problem else 1.0,
        )

    @property
    def writable(self) -> bool:
        return self.problem is None

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def as_json(self) -> dict[str, Any]:
        return {"writable": self.problem is None, "problem": self.problem, "since": self.since}

    def failed(self, exc: StoreError | str, where: str = "placement") -> None:
        """A write failed: the node stops promising until a probe write succeeds."""
        self._failures.inc(where=where)
        if self.problem is not None:
            logger.debug("store write failed again where=%s error=%s", where, exc)
            return
        self.problem, self.since = str(exc), self._clock()
        logger.error(
            "store can't write; this node refuses bids, awards and submissions until it can: %s",
            self.problem,
        )
        self._notify()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._probe_until_writable())

    def check(self) -> str | None:
        """Probe now (``GET /v1/health``): the problem, or None if a write just succeeded."""
        try:
            probe.probe(self._store, self._cfg.reserve_bytes, self._clock())
        except StoreError as exc:
            self.failed(exc, "probe")
            return self.problem
        if self.problem is not None:
            self._recovered()
        return None

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _probe_until_writable(self) -> None:
        delay = self._cfg.probe_s
        while self.problem is not None:
            await asyncio.sleep(delay)
            if self.writable:  # a health check found it writable meanwhile
                return
            try:
                probe.probe(self._store, self._cfg.reserve_bytes, self._clock())
            except StoreError as exc:
                logger.debug("store probe failed next_in_s=%.1f error=%s", delay, exc)
                self._failures.inc(where="probe")
                delay = min(delay * 2, self._cfg.probe_max_s)
                continue
            except Exception:  # a bug must not leave the node refusing work for ever
                logger.exception("store probe failed")
                delay = min(delay * 2, self._cfg.probe_max_s)
                continue
            self._recovered()
            delay = self._cfg.probe_s  # a listener may have failed again meanwhile

    def _recovered(self) -> None:
        began = self.since if self.since is not None else self._clock()
        self.problem = self.since = None
        logger.warning(
            "store writes again after %.1f s; this node bids and accepts awards again",
            self._clock() - began,
        )
        self._notify()

    def _notify(self) -> None:
        problem = self.problem
        for listener in list(self._listeners):
            try:
                listener(problem)
            except StoreError as exc:  # a listener's own write failed: still unwritable
                self.failed(exc)
            except Exception:  # one listener's bug must not hide the state from the rest
                logger.exception("a store health listener failed")
