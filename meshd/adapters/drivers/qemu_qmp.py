"""One QMP connection to one QEMU, and what it hears (``qemu.qmp``).

Theory of operation
-------------------
QMP is how meshd learns what happens to a VM while it runs: ``SHUTDOWN`` (the guest
powered off, or QEMU was told to quit), ``GUEST_PANICKED`` (a guest with the pvpanic
driver crashed), and ``STOP`` followed by a ``query-status`` of ``internal-error`` (the
accelerator gave up: what kvm_pvm does to stock kernels). Two tasks per connection:
one reads events, one waits for the connection to drop, which is how QEMU's exit is
noticed (QEMU closes the socket as it exits; the event stream itself never ends).

A QEMU monitor serves one client at a time; a second one is queued without a
greeting, so every connect is bounded and a VM whose monitor is held elsewhere is
still found by its pid. ``qemu.qmp`` raises ``EOFError`` from ``disconnect()`` when
the server hung up first; that is the normal end here, not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient, QMPError, Runstate

from meshd.errors import DriverError

logger = logging.getLogger(__name__)
# Runstates (query-status) in which the guest will not run again by itself.
FAILED_RUNSTATES = {
    "internal-error": "QEMU stopped the guest after an accelerator internal error",
    "guest-panicked": "the guest kernel panicked",
    "io-error": "the guest is paused after a disk I/O error",
}


class QmpSession:
    """QMP to one VM. ``on_failure(sentence)`` when the guest can no longer run;
    ``on_exit()`` once when QEMU hangs up (it exited), unless :meth:`close` came first."""

    def __init__(
        self,
        wid: str,
        command_timeout_s: float,
        on_failure: Callable[[str], None],
        on_exit: Callable[[], Awaitable[None]],
    ) -> None:
        self.wid = wid
        self.command_timeout_s = command_timeout_s
        self.on_failure = on_failure
        self.on_exit = on_exit
        self.client = QMPClient(f"meshd-{wid}")
        self.shutdown: dict[str, Any] | None = None  # the SHUTDOWN event's data
        self.failure: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    async def open(self, sock: Path, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(self.client.connect(str(sock)), timeout_s)
        except TimeoutError as exc:
            raise DriverError(
                f"QMP at {sock} did not greet within {timeout_s:g} s (held by another client?)"
            ) from exc
        except (QMPError, OSError) as exc:
            raise DriverError(f"cannot connect to QMP at {sock}: {exc}") from exc
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._events()), loop.create_task(self._hangup())]

    async def execute(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        try:
            return await asyncio.wait_for(self.client.execute(cmd, args), self.command_timeout_s)
        except (QMPError, OSError, EOFError, TimeoutError) as exc:
            raise DriverError(f"QMP {cmd} failed for workload {self.wid}: {exc!r}") from exc

    async def runstate(self) -> str | None:
        """QEMU's runstate (``running``, ``paused``, ``internal-error``...), None if unknown."""
        if self.client.runstate != Runstate.RUNNING:
            return None
        try:
            res = await self.execute("query-status")
        except DriverError:
            return None
        return str(res.get("status")) if isinstance(res, dict) else None

    @staticmethod
    def failure_of(runstate: str | None) -> str | None:
        """Why a guest in ``runstate`` will not run again by itself; None if it may."""
        return FAILED_RUNSTATES.get(runstate) if runstate is not None else None

    @property
    def connected(self) -> bool:
        return self.client.runstate == Runstate.RUNNING and not self._closing

    async def close(self) -> None:
        """Hang up without touching the VM (a daemon restart, a stop we drive)."""
        if self._closing:
            return
        self._closing = True
        current = asyncio.current_task()
        for t in self._tasks:
            if t is not current:
                t.cancel()
        await asyncio.gather(*(t for t in self._tasks if t is not current), return_exceptions=True)
        await self._disconnect()

    async def _disconnect(self) -> None:
        if self.client.runstate == Runstate.IDLE:
            return
        with contextlib.suppress(QMPError, OSError, EOFError):
            await self.client.disconnect()

    def _fail(self, sentence: str) -> None:
        if self.failure is None:
            self.failure = sentence
            self.on_failure(sentence)

    async def _events(self) -> None:
        async for event in self.client.events:
            name = event["event"]
            raw = event.get("data")
            data = dict(raw) if isinstance(raw, dict) else {}
            logger.debug("qmp event wid=%s event=%s data=%s", self.wid, name, data)
            if name == "SHUTDOWN":
                self.shutdown = data
            elif name == "GUEST_PANICKED":
                self._fail(FAILED_RUNSTATES["guest-panicked"])
            elif name == "STOP":
                state = await self.runstate()
                if state in FAILED_RUNSTATES:
                    self._fail(FAILED_RUNSTATES[state])

    async def _hangup(self) -> None:
        while self.client.runstate == Runstate.RUNNING:
            await self.client.runstate_changed()
        if self._closing:
            return
        self._closing = True
        for t in self._tasks[:1]:
            t.cancel()
        await self._disconnect()
        await self.on_exit()
