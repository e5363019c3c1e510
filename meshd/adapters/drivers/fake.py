"""The ``fake`` driver: workloads that exist only in memory, for unit tests and the simulator.

Theory of operation
-------------------
The fake splits what the process driver keeps on disk and in the kernel into two
objects. A :class:`FakeHost` is the machine: the workloads created on it and whether
they run. It outlives a daemon restart and loses every running workload when it is
powered off (as a fenced node does). A :class:`FakeDriver` is one meshd's view of the
host. Give a second driver the same host to simulate a restart: its ``reattach`` finds
what the first one started, and reports what died while "meshd was away".

Nothing touches the disk or starts a process, and no coroutine ever suspends, so a
synchronous simulator can drive them with :func:`run_now`. Time comes from the host's
``clock`` (give it the simulator's virtual clock); delayed crashes use the driver's
``schedule`` (e.g. ``EventQueue.after``), or the running asyncio loop by default.

Knobs, plain attributes a test or a scenario sets:

- ``driver.refuse[id or name] = sentence``: ``create`` raises ``DriverError(sentence)``.
- ``driver.fail_start[id or name] = sentence``: ``start`` returns *failed*.
- ``host.crash(wid, exit_code, detail)`` / ``driver.crash_after(wid, delay_s, ...)``: the
  workload dies; the watching driver, if any, is told through ``on_change``.
- ``host.power_off()``: every running workload dies and no driver is told (its meshd
  died with it).

Like the process driver, ``on_change`` is called whenever a watched workload stops
running, including after ``stop``; ``start``, ``create`` and ``reattach`` report only
through their return value. ``calls`` records every operation for traces.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from meshd.adapters.drivers.base import Driver, OnChange, Status, WorkloadState
from meshd.core.spec import WorkloadSpec
from meshd.errors import DriverError

T = TypeVar("T")
Schedule = Callable[[float, Callable[[], None]], object]


def run_now(coro: Awaitable[T]) -> T:
    """The result of a coroutine that never suspends (every fake driver call)."""
    if not isinstance(coro, Coroutine):
        raise TypeError("run_now needs a coroutine")
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("the coroutine suspended; run_now is only for the fake driver")


@dataclass
class FakeWorkload:
    """One workload as the host knows it."""

    spec: WorkloadSpec
    state: WorkloadState = WorkloadState.STOPPED
    pid: int | None = None
    started_at: float | None = None
    exit_code: int | None = None
    detail: str = "created, not started"
    console: list[str] = field(default_factory=list)

    def status(self) -> Status:
        return Status(self.state, self.pid, self.detail, self.started_at, self.exit_code)


class FakeHost:
    """The machine: workloads that outlive any one FakeDriver."""

    def __init__(self, clock: Callable[[], float] = time.time, first_pid: int = 1000) -> None:
        self.clock = clock
        self.workloads: dict[str, FakeWorkload] = {}
        self.watchers: dict[str, FakeDriver] = {}  # wid -> the driver told when it dies
        self._next_pid = first_pid

    def next_pid(self) -> int:
        self._next_pid += 1
        return self._next_pid

    def crash(self, wid: str, exit_code: int = 1, detail: str = "") -> None:
        """The workload dies now; its watching driver (if any) calls on_change."""
        state = WorkloadState.STOPPED if exit_code == 0 else WorkloadState.FAILED
        self.end(wid, state, exit_code, detail)

    def end(self, wid: str, state: WorkloadState, exit_code: int, detail: str = "") -> None:
        w = self.workloads.get(wid)
        if w is None or w.state is not WorkloadState.RUNNING:
            return
        watcher = self.watchers.pop(wid, None)
        w.state, w.exit_code = state, exit_code
        w.detail = detail or f"exited with code {exit_code}"
        if watcher is None:
            w.detail = f"exited while meshd was away ({w.detail})"
        w.console.append(f"[fake] {w.detail}")
        if watcher is not None:
            watcher.on_change(wid, w.status())

    def power_off(self) -> list[str]:
        """Every running workload dies with the machine; nobody is told. Returns their ids."""
        gone = [wid for wid, w in self.workloads.items() if w.state is WorkloadState.RUNNING]
        for wid in gone:
            self.watchers.pop(wid, None)
            self.crash(wid, -9, "host powered off")
        return gone


class FakeDriver(Driver):
    """An in-memory driver over a :class:`FakeHost`; see the module doc."""

    def __init__(
        self,
        root: Path,
        on_change: OnChange,
        *,
        host: FakeHost | None = None,
        name: str = "fake",  # answer to another driver's name, to stand in for it
        schedule: Schedule | None = None,
    ) -> None:
        super().__init__(root, on_change)
        self.name = name
        self.host = host if host is not None else FakeHost()
        self.schedule = schedule
        self.refuse: dict[str, str] = {}
        self.fail_start: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []

    def log_path(self, wid: str) -> Path:
        return self.dir_of(wid) / "console.log"

    def console(self, wid: str) -> list[str]:
        return list(self._get(wid).console)

    def detach(self) -> None:
        """Stop watching (the daemon exits); workloads keep running on the host."""
        for wid in [w for w, d in self.host.watchers.items() if d is self]:
            del self.host.watchers[wid]

    def crash_after(self, wid: str, delay_s: float, exit_code: int = 1, detail: str = "") -> None:
        def crash() -> None:
            self.host.crash(wid, exit_code, detail)

        if self.schedule is not None:
            self.schedule(delay_s, crash)
        else:
            asyncio.get_running_loop().call_later(delay_s, crash)

    async def create(self, wid: str, spec: WorkloadSpec) -> Status:
        self.calls.append(("create", wid))
        if spec.driver != self.name:
            raise DriverError(f"workload {wid} is for the {spec.driver!r} driver")
        if not wid or "/" in wid:
            raise DriverError(f"workload id {wid!r} is not a safe name")
        reason = self.refuse.get(wid) or self.refuse.get(spec.name)
        if reason is not None:
            raise DriverError(reason)
        existing = self.host.workloads.get(wid)
        if existing is not None:
            if existing.spec != spec:
                raise DriverError(f"workload {wid} already exists with a different spec")
            return existing.status()
        self.host.workloads[wid] = FakeWorkload(spec)
        return Status(WorkloadState.STOPPED, detail="created, not started")

    async def start(self, wid: str) -> Status:
        self.calls.append(("start", wid))
        w = self._get(wid)
        if w.state is WorkloadState.RUNNING:
            self.host.watchers[wid] = self
            return w.status()
        reason = self.fail_start.get(wid) or self.fail_start.get(w.spec.name)
        if reason is not None:
            w.state, w.pid, w.exit_code, w.detail = WorkloadState.FAILED, None, None, reason
            return w.status()
        w.state, w.pid, w.started_at = (
            WorkloadState.RUNNING,
            self.host.next_pid(),
            self.host.clock(),
        )
        w.exit_code, w.detail = None, f"running as pid {w.pid}"
        w.console.append(f"[fake] started {w.spec.command or w.spec.name}")
        self.host.watchers[wid] = self
        return w.status()

    async def stop(self, wid: str, timeout_s: float) -> Status:
        self.calls.append(("stop", wid))
        w = self._get(wid)
        if w.state is WorkloadState.RUNNING:
            self.host.watchers[wid] = self  # stop is watched: on_change follows, as for processes
            self.host.end(wid, WorkloadState.STOPPED, -15, "stopped by meshd (killed by SIGTERM)")
        return w.status()

    async def destroy(self, wid: str) -> None:
        self.calls.append(("destroy", wid))
        if wid in self.host.workloads:
            await self.stop(wid, 0.0)
            del self.host.workloads[wid]

    async def status(self, wid: str) -> Status:
        return self._get(wid).status()

    async def list(self) -> list[str]:
        return sorted(wid for wid, w in self.host.workloads.items() if w.spec.driver == self.name)

    async def reattach(self, wid: str) -> Status:
        self.calls.append(("reattach", wid))
        w = self._get(wid)
        if w.state is WorkloadState.RUNNING:
            self.host.watchers[wid] = self
        return w.status()

    def _get(self, wid: str) -> FakeWorkload:
        w = self.host.workloads.get(wid)
        if w is None:
            raise DriverError(f"no {self.name} workload {wid!r} on this node")
        return w
