"""A deterministic asyncio event loop in virtual time, with processes that can crash.

Theory of operation
-------------------
The node shells are asyncio code: futures, tasks, ``call_soon``, ``call_later``,
``asyncio.sleep``, ``wait_for``. To run many of them in one process, exactly
reproducibly, :class:`VirtualLoop` subclasses :class:`asyncio.BaseEventLoop` and
replaces only its notion of time and its I/O poll:

* ``time()`` is a virtual clock that starts at 0 and never moves by itself;
* the poll (``_selector.select(timeout)``) never waits: when nothing is ready it jumps
  the clock to the earliest timer, so a simulated minute costs what its callbacks
  cost. There are no file descriptors and no sockets; the simulated network is timers.

Everything else (the ready queue, the timer heap, tasks, futures) is asyncio's own
code, so the shells run exactly as in the daemon. Timers due at one instant run in an
order fixed by asyncio's heap (not always the order they were set, but the same
every time), and nothing here reads a real clock or an unseeded random, so the same
sequence of calls replays the same run.

**Processes.** A simulated node's meshd is a :class:`Process`: a
:class:`contextvars.Context` tagged with it. Code entered through :meth:`Process.run`
(or a task it spawns) carries the tag, and so does every callback, timer, task step
and future callback it schedules, because asyncio captures the current context when
a callback is scheduled. The loop wraps each such callback: once the process is
:meth:`~Process.kill`-ed its callbacks are skipped, as if the process had been
``SIGKILL``-ed: no ``finally`` block, no pending journal write, no timer runs again.
What it wrote to its store before stays; what it held in memory is gone.

Errors: an exception a callback lets escape (which asyncio would only log) is kept in
:attr:`VirtualLoop.errors`, so the simulator can fail the run on it; tasks of killed
processes that are garbage-collected while pending are expected and ignored.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_PROCESS: contextvars.ContextVar[Process | None] = contextvars.ContextVar(
    "sim_process", default=None
)


class Deadlock(RuntimeError):
    """Nothing is ready and no timer is set: the loop would wait forever."""


class Process:
    """One simulated meshd process: the context its callbacks run in."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.alive = True
        # Its tasks, kept even after a kill: a collected coroutine would run its
        # ``finally`` blocks, which a killed process never does.
        self.tasks: set[asyncio.Task[Any]] = set()
        self.context = contextvars.Context()
        self.context.run(_PROCESS.set, self)

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn(*args)`` as this process (what it schedules belongs to it)."""
        if _PROCESS.get() is self:
            return fn(*args)
        return self.context.run(fn, *args)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of this process."""
        return self.run(asyncio.get_running_loop().create_task, coro)

    def kill(self) -> None:
        """From now on, nothing this process scheduled runs."""
        self.alive = False


def current() -> Process | None:
    return _PROCESS.get()


class _Poll:
    """The I/O poll of a loop without I/O: advance virtual time instead of waiting."""

    def __init__(self, loop: VirtualLoop) -> None:
        self._loop = loop

    def select(self, timeout: float | None) -> list[Any]:
        loop = self._loop
        if timeout is None:
            raise Deadlock(f"nothing to run at t={loop.time():.6f} and no timer set")
        if timeout > 0:
            loop.advance_to_next_timer()
        return []

    def close(self) -> None:
        pass


class VirtualLoop(asyncio.BaseEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0
        self._clock_resolution = 1e-9  # not the host's: the same run everywhere
        self._selector = _Poll(self)
        self.errors: list[str] = []
        self.callbacks = 0
        self.set_exception_handler(self._on_error)

    # -- time -----------------------------------------------------------------------

    def time(self) -> float:
        return self._now

    def advance_to_next_timer(self) -> None:
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        while scheduled and scheduled[0].cancelled():
            heapq.heappop(scheduled)
            self._timer_cancelled_count -= 1  # type: ignore[attr-defined]
        if scheduled:
            self._now = max(self._now, scheduled[0].when())

    def run_until(self, t: float) -> None:
        """Run every callback due up to virtual time ``t``; the clock ends at ``t``."""
        if t < self._now:
            return
        handle = self.call_at(t, self.stop)
        try:
            self.run_forever()
        finally:
            handle.cancel()
        self._now = max(self._now, t)

    # -- scheduling: callbacks belong to the process that scheduled them -------------

    def create_task(self, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        task = super().create_task(coro, **kw)
        proc = _PROCESS.get() if kw.get("context") is None else kw["context"].get(_PROCESS)
        if proc is not None:
            proc.tasks.add(task)
            task.add_done_callback(proc.tasks.discard)
        return task

    def call_soon(  # type: ignore[override]
        self, callback: Callable[..., Any], *args: Any, context: contextvars.Context | None = None
    ) -> asyncio.Handle:
        return super().call_soon(self._guard(callback, context), *args, context=context)

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., Any],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return super().call_at(when, self._guard(callback, context), *args, context=context)

    def _guard(
        self, callback: Callable[..., Any], context: contextvars.Context | None
    ) -> Callable[..., Any]:
        proc = _PROCESS.get() if context is None else context.get(_PROCESS)
        if proc is None:
            return self._counted(callback)

        def guarded(*args: Any) -> None:
            if proc.alive:
                self.callbacks += 1
                callback(*args)

        return guarded

    def _counted(self, callback: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any) -> None:
            self.callbacks += 1
            callback(*args)

        return counted

    # -- no I/O ---------------------------------------------------------------------

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _write_to_self(self) -> None:
        pass  # call_soon_threadsafe: there are no other threads to wake us

    # -- errors ---------------------------------------------------------------------

    def _on_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if message.startswith("Task was destroyed but it is pending"):
            return  # a killed process's task, collected
        exc = context.get("exception")
        self.errors.append(f"t={self._now:.6f} {message}: {exc!r}")
