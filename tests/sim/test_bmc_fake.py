"""The simulator's fake BMC keeps the real client's contract, in virtual time."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from meshd.config.sections import BmcConfig
from meshd.core.bmc import BmcEndpoint
from tests.sim.bmc import FakeBmc, FakeSystem
from tests.sim.loop import VirtualLoop

T = TypeVar("T")
CFG = BmcConfig(request_timeout_s=1.0, retries=2, retry_backoff_s=0.25, poll_interval_s=0.5)
EP = BmcEndpoint("https://bmc-blade1.lab", "admin", "pw", system="1")


def run(coro: Coroutine[Any, Any, T]) -> T:
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def fake(**kw: Any) -> tuple[FakeBmc, FakeSystem]:
    bmc = FakeBmc(CFG)
    return bmc, bmc.add(EP, FakeSystem(**kw))


def test_force_off_polls_until_off() -> None:
    bmc, sys_ = fake(off_delay_s=3.2)
    out = run(bmc.force_off(EP, 10.0))
    assert (out.result, out.posted, sys_.posts, sys_.power) == ("verified_off", True, 1, "Off")
    assert 3.2 <= out.elapsed_s <= 3.2 + CFG.poll_interval_s + 0.1


def test_already_off_sends_no_post() -> None:
    bmc, sys_ = fake(power="Off")
    out = run(bmc.force_off(EP, 10.0))
    assert (out.result, out.posted, sys_.posts) == ("already_off", False, 0)
    assert [m for _, m, _ in bmc.started] == ["GET"]


@pytest.mark.parametrize("mode", ["timeout", "unreachable", "wrong-state"])
def test_no_request_starts_after_the_deadline_and_the_answer_comes_by_it(mode: str) -> None:
    bmc, sys_ = fake(mode=mode)
    out = run(bmc.force_off(EP, 4.0))
    assert out.result == "failed" and out.error
    assert max(t for t, _, _ in bmc.started) < 4.0
    assert out.elapsed_s <= 4.0
    assert sys_.power == "On"


def test_timeouts_are_retried_a_bounded_number_of_times() -> None:
    bmc, _ = fake(mode="timeout")
    out = run(bmc.force_off(EP, 60.0))
    assert len(bmc.started) == 1 + CFG.retries
    assert out.result == "failed" and not out.posted


def test_a_refusal_is_an_answer_not_retried() -> None:
    bmc, _ = fake(mode="refuse", refuse_status=401)
    reading = run(bmc.power_state(EP, 10.0))
    assert reading.reachable and reading.power_state is None and "HTTP 401" in str(reading.error)
    assert len(bmc.started) == 1


def test_a_5xx_is_retried_then_reported() -> None:
    bmc, _ = fake(mode="refuse", refuse_status=503)
    out = run(bmc.force_off(EP, 10.0))
    assert out.result == "failed" and "HTTP 503" in str(out.error)
    assert len(bmc.started) == 1 + CFG.retries


def test_an_unknown_endpoint_is_unreachable() -> None:
    bmc = FakeBmc(CFG)
    reading = run(bmc.power_state(EP, 5.0))
    assert not reading.reachable and "can't reach" in str(reading.error)
