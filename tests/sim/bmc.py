"""The simulator's BMC: a :class:`~meshd.shell.ports.BmcPort` in virtual time.

It keeps the real client's contract (``meshd/adapters/redfish.py``) so the fencing
shell can't tell them apart by behaviour:

* an operation reads PowerState first; a system already Off is fenced without a POST;
* otherwise one ForceOff POST, then a read every ``poll_interval_s`` until Off;
* every request's timeout is ``request_timeout_s`` clipped to what is left of the
  deadline, no request starts once the deadline is reached, a request without an
  answer (or a 5xx) is tried again up to ``retries`` times after
  ``retry_backoff_s x 2^n``, a 4xx is an answer;
* nothing raises: a failure is a value with ``error`` set.

Each system (keyed by the endpoint's base URL and system path) has a power state, a
power-off delay, a request latency and a mode: ``ok``; ``timeout`` (requests get no
answer); ``refuse`` (every request answers ``refuse_status``); ``wrong-state``
(ForceOff is accepted and the power never changes); ``unreachable`` (connections are
refused at once). :attr:`FakeBmc.started` records when each request started, so a
test can check none began after its deadline. Time is the running loop's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

from meshd.config.sections import BmcConfig
from meshd.core.bmc import Attempt, BmcEndpoint, FenceOutcome, PowerReading

Mode = Literal["ok", "timeout", "refuse", "wrong-state", "unreachable"]


@dataclass
class FakeSystem:
    power: str = "On"
    off_delay_s: float = 0.0
    latency_s: float = 0.005
    mode: Mode = "ok"
    refuse_status: int = 403
    off_at: float | None = None  # when a pending ForceOff takes effect
    posts: int = 0


class _Stop(Exception):
    pass


@dataclass
class FakeBmc:
    cfg: BmcConfig = field(default_factory=BmcConfig)
    systems: dict[tuple[str, str | None], FakeSystem] = field(default_factory=dict)
    started: list[tuple[float, str, str]] = field(default_factory=list)  # (t, method, url)

    def add(self, endpoint: BmcEndpoint, system: FakeSystem) -> FakeSystem:
        self.systems[(endpoint.base_url, endpoint.system_path())] = system
        return system

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    # -- the port ---------------------------------------------------------------------

    async def power_state(self, endpoint: BmcEndpoint, deadline: float) -> PowerReading:
        start = self.now()
        attempts: list[Attempt] = []
        sys_ = self._system(endpoint)
        path = endpoint.system_path()
        try:
            state = await self._read(endpoint, sys_, deadline, attempts)
            if state is None:
                raise _Stop(_unreachable(endpoint, attempts))
            return PowerReading(path, state, True, self.now() - start, None, tuple(attempts))
        except _Stop as exc:
            reachable = any(a.status is not None for a in attempts)
            return PowerReading(
                path, None, reachable, self.now() - start, str(exc), tuple(attempts)
            )

    async def force_off(self, endpoint: BmcEndpoint, deadline: float) -> FenceOutcome:
        start = self.now()
        attempts: list[Attempt] = []
        sys_ = self._system(endpoint)
        path = endpoint.system_path()
        posted = False

        def outcome(verified: bool, already: bool, error: str | None) -> FenceOutcome:
            return FenceOutcome(
                path, verified, already, posted, self.now() - start, tuple(attempts), error
            )

        try:
            state = await self._read(endpoint, sys_, deadline, attempts)
            if state is None:
                raise _Stop(_unreachable(endpoint, attempts))
            if state == "Off":
                return outcome(True, True, None)
            posted = True
            status = await self._request(endpoint, sys_, "POST", deadline, attempts)
            if status is None:
                raise _Stop(_unreachable(endpoint, attempts))
            if status >= 400:
                raise _Stop(f"the BMC at {endpoint.base_url} answered HTTP {status} to POST")
            if sys_.mode == "ok":
                sys_.off_at = self.now() + sys_.off_delay_s
            last = state
            while True:
                state = await self._read(endpoint, sys_, deadline, attempts)
                if state == "Off":
                    return outcome(True, False, None)
                last = state or last
                if deadline - self.now() < self.cfg.poll_interval_s:
                    raise _Stop(
                        f"ForceOff was sent, but the BMC still reports PowerState {last} "
                        "at the deadline; the node may still be running"
                    )
                await asyncio.sleep(self.cfg.poll_interval_s)
        except _Stop as exc:
            return outcome(False, False, str(exc))

    # -- requests ---------------------------------------------------------------------

    def _system(self, endpoint: BmcEndpoint) -> FakeSystem:
        return self.systems.get((endpoint.base_url, endpoint.system_path())) or FakeSystem(
            mode="unreachable"
        )

    async def _read(
        self, ep: BmcEndpoint, sys_: FakeSystem, deadline: float, attempts: list[Attempt]
    ) -> str | None:
        status = await self._request(ep, sys_, "GET", deadline, attempts)
        if status is None:
            return None
        if status != 200:
            raise _Stop(f"the BMC at {ep.base_url} answered HTTP {status} to GET")
        if sys_.off_at is not None and self.now() >= sys_.off_at:
            sys_.power, sys_.off_at = "Off", None
        return sys_.power

    async def _request(
        self,
        ep: BmcEndpoint,
        sys_: FakeSystem,
        method: str,
        deadline: float,
        attempts: list[Attempt],
    ) -> int | None:
        """The status of one request, retried as the real client does; None: no answer.
        (A 5xx that stayed a 5xx through the retries is returned as it is.)"""
        path = ep.system_path() or "/redfish/v1/Systems"
        last: int | None = None
        for n in range(1 + self.cfg.retries):
            if n:
                backoff = self.cfg.retry_backoff_s * 2 ** (n - 1)
                if deadline - self.now() < backoff:
                    break
                await asyncio.sleep(backoff)
            left = deadline - self.now()
            if left <= 0:
                attempts.append(Attempt(method, path, None, "deadline reached", 0.0))
                break
            timeout = min(self.cfg.request_timeout_s, left)
            t0 = self.now()
            self.started.append((t0, method, ep.base_url))
            if sys_.mode == "unreachable":
                await asyncio.sleep(min(sys_.latency_s, timeout))
                attempts.append(Attempt(method, path, None, "can't connect", self.now() - t0))
                continue
            if sys_.mode == "timeout" or sys_.latency_s >= timeout:
                await asyncio.sleep(timeout)
                error = f"no answer within {timeout:.2f} s"
                attempts.append(Attempt(method, path, None, error, self.now() - t0))
                continue
            await asyncio.sleep(sys_.latency_s)
            status = sys_.refuse_status if sys_.mode == "refuse" else 200
            if method == "POST" and status < 400:
                sys_.posts += 1
                status = 204
            attempts.append(Attempt(method, path, status, None, self.now() - t0))
            last = status
            if status < 500:
                return status
        return last


def _unreachable(ep: BmcEndpoint, attempts: list[Attempt]) -> str:
    last = attempts[-1].error if attempts else "no answer"
    return f"can't reach the BMC at {ep.base_url} ({last})"
