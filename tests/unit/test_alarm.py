"""The shells' timer: rings at the earliest deadline asked for, on asyncio and uvloop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import uvloop

from meshd.shell.alarm import Alarm

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


class Core:
    """A stand-in core: a settable deadline, and the times it was ticked."""

    def __init__(self) -> None:
        self.deadline = float("inf")
        self.ticks: list[float] = []
        self.fail = False

    def tick(self) -> None:
        self.ticks.append(time.monotonic())
        self.deadline = float("inf")
        if self.fail:
            raise RuntimeError("a bug in one tick")


def run(loop_name: str, body: Callable[[Core, Alarm], object]) -> Core:
    core = Core()

    async def main() -> None:
        alarm = Alarm("test", core.tick, lambda: core.deadline, time.monotonic, 10.0)
        await body(core, alarm)  # type: ignore[misc]
        alarm.stop()

    loop = LOOPS[loop_name]()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return core


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_an_earlier_deadline_moves_the_alarm_forward(loop_name: str) -> None:
    async def body(core: Core, alarm: Alarm) -> None:
        start = time.monotonic()
        core.deadline = start + 5.0
        alarm.rearm()
        core.deadline = start + 0.05
        alarm.rearm()
        await asyncio.sleep(0.3)
        assert len(core.ticks) == 1
        assert 0.04 <= core.ticks[0] - start < 0.25

    run(loop_name, body)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_later_deadline_does_not_postpone_it(loop_name: str) -> None:
    async def body(core: Core, alarm: Alarm) -> None:
        start = time.monotonic()
        core.deadline = start + 0.05
        alarm.rearm()
        core.deadline = start + 5.0
        alarm.rearm()
        await asyncio.sleep(0.3)
        assert len(core.ticks) == 1 and core.ticks[0] - start < 0.25

    run(loop_name, body)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_due_deadline_rings_on_the_next_loop_turn(loop_name: str) -> None:
    async def body(core: Core, alarm: Alarm) -> None:
        core.deadline = time.monotonic() - 1.0  # overdue: uvloop returns a plain Handle
        alarm.rearm()
        alarm.rearm()
        await asyncio.sleep(0.02)
        assert len(core.ticks) == 1

    run(loop_name, body)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_failing_tick_is_logged_and_the_alarm_keeps_ringing(
    loop_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(core: Core, alarm: Alarm) -> None:
        core.fail = True
        core.deadline = time.monotonic()
        alarm.rearm()
        await asyncio.sleep(0.02)
        core.fail = False
        core.deadline = time.monotonic() + 0.02
        alarm.rearm()
        await asyncio.sleep(0.2)
        assert len(core.ticks) == 2

    run(loop_name, body)
    assert "test tick failed" in caplog.text


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_stopped_alarm_never_rings(loop_name: str) -> None:
    async def body(core: Core, alarm: Alarm) -> None:
        core.deadline = time.monotonic() + 0.02
        alarm.rearm()
        alarm.stop()
        alarm.rearm()
        await asyncio.sleep(0.1)
        assert core.ticks == []

    run(loop_name, body)
