"""The Redfish client: read a system's power state, force it off and verify it is Off.

Theory of operation
-------------------
DESIGN.md §7 and DMTF DSP0266 (the Redfish specification); fence-agents'
``fence_redfish`` does the same with ``requests``. One operation (``power_state`` or
``force_off``) is one aiohttp session against one BMC:

1. ``GET /redfish/v1/`` (the service root, readable without a login). If it offers a
   ``SessionService``, log in by ``POST`` to its Sessions collection and send the
   ``X-Auth-Token`` it answers (iLO 5 prefers sessions; each one holds a slot until it
   is deleted, so it is ``DELETE``-d afterwards); otherwise, or if the BMC answers the
   login with 404/405/501, HTTP Basic (sushy-tools has no SessionService).
2. Find the system: the configured Id or URI path (``Systems/<name>`` on sushy-tools
   answers 307 to the UUID path, which is followed), or the BMC's only member of
   ``Systems``. The system resource's ``@odata.id`` is its path from then on, and its
   ``Actions["#ComputerSystem.Reset"].target`` is where ForceOff goes: taken from the
   resource, never a guessed path.
3. ``force_off``: a system already ``Off`` is fenced without a POST (iLO answers 400 to
   ForceOff on an Off system). Otherwise ``POST {"ResetType": "ForceOff"}``, then read
   ``PowerState`` every ``poll_interval_s`` until ``Off``.

Time: the caller passes a deadline on the monotonic clock. No request starts once the
deadline has passed, and each request's timeout is clipped to what is left of it, so
no request can end after it. A request that times out, finds no connection or gets a
5xx is tried again up to ``retries`` times after a backoff; a 4xx is an answer. A BMC
that can't be reached, refuses, or never reports Off gives a ``failed`` outcome with a
sentence that says what to do: never a guess, and no exception reaches the caller.

Secrets: the password goes into one header of each request and nowhere else; log
lines, attempts and outcomes carry the URL, the system and statuses only.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from meshd.config.sections import BmcConfig
from meshd.core.bmc import (
    SYSTEMS_PATH,
    Attempt,
    BmcEndpoint,
    FenceOutcome,
    PowerReading,
    only_system,
)
from meshd.errors import ConfigError

if TYPE_CHECKING:
    from meshd.shell.ports import BmcPort

logger = logging.getLogger(__name__)

ROOT_PATH = "/redfish/v1/"
# Statuses that mean "no session login here": fall back to Basic.
_NO_SESSIONS = frozenset({404, 405, 501})


class _Failed(Exception):
    """Ends one operation with the sentence the outcome carries (never escapes)."""


@dataclass
class _Answer:
    status: int
    doc: Any
    headers: dict[str, str]


@dataclass
class _Call:
    """One operation's state: the session, the login, the clock, what was tried."""

    endpoint: BmcEndpoint
    deadline: float
    http: aiohttp.ClientSession
    ssl: ssl.SSLContext | bool
    auth: dict[str, str] = field(default_factory=dict)
    session_path: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    reachable: bool = False


@dataclass(frozen=True)
class _System:
    path: str
    power_state: str | None
    reset_target: str | None


class RedfishClient:
    """The daemon's :class:`~meshd.shell.ports.BmcPort`: Redfish over aiohttp."""

    def __init__(self, cfg: BmcConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock

    def deadline(self) -> float:
        """The default deadline of an operation starting now (``bmc.deadline_s``)."""
        return self.clock() + self.cfg.deadline_s

    # -- the port ---------------------------------------------------------------------

    async def power_state(self, endpoint: BmcEndpoint, deadline: float) -> PowerReading:
        start = self.clock()
        call: _Call | None = None
        system: str | None = None
        state: str | None = None
        error: str | None = None
        try:
            call = self._start(endpoint, deadline)
            await self._login(call)
            found = await self._system(call)
            system, state = found.path, found.power_state
            if state is None:
                error = f"the BMC's system {found.path} reports no PowerState"
        except _Failed as exc:
            error = str(exc)
        finally:
            await self._finish(call)
        return self._reading(endpoint, call, start, system, state, error)

    async def force_off(self, endpoint: BmcEndpoint, deadline: float) -> FenceOutcome:
        start = self.clock()
        call: _Call | None = None
        system: str | None = None
        verified = already = posted = False
        error: str | None = None
        try:
            call = self._start(endpoint, deadline)
            await self._login(call)
            found = await self._system(call)
            system = found.path
            if found.power_state == "Off":
                verified = already = True
            elif found.reset_target is None:
                raise _Failed(
                    f"the BMC's system {found.path} offers no #ComputerSystem.Reset "
                    "action, so it can't be powered off remotely; power the node off "
                    "by hand, then `meshd fence confirm NODE`"
                )
            else:
                posted = True
                answer = await self._request(
                    call, "POST", found.reset_target, {"ResetType": "ForceOff"}
                )
                if answer is not None and answer.status >= 400:
                    # iLO answers 400 when the system went Off meanwhile: read before judging.
                    if await self._read_state(call, found.path) != "Off":
                        raise _Failed(_refusal(call, "POST", found.reset_target, answer))
                else:
                    await self._poll_until_off(call, found.path)
                verified = True
        except _Failed as exc:
            error = str(exc)
        finally:
            await self._finish(call)
        return self._outcome(endpoint, call, start, system, verified, already, posted, error)

    # -- one operation ----------------------------------------------------------------

    def _start(self, endpoint: BmcEndpoint, deadline: float) -> _Call:
        ctx = _tls(endpoint)
        # One connection at a time, none kept: a BMC is called rarely, and a fresh
        # connection never reuses one the BMC dropped silently (sushy's dev server
        # closes every connection anyway).
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1, force_close=True),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return _Call(endpoint, deadline, http, ctx)

    async def _finish(self, call: _Call | None) -> None:
        """Delete the login session (when one was made) and close the connection."""
        if call is None:
            return
        try:
            await self._logout(call)
        finally:
            await call.http.close()

    async def _login(self, call: _Call) -> None:
        ep = call.endpoint
        basic = base64.b64encode(f"{ep.user}:{ep.password}".encode()).decode()
        root = await self._request(call, "GET", ROOT_PATH, auth=False)
        if root is None:
            raise _Failed(_unreachable(call))
        sessions = _sessions_path(root.doc) if root.status == 200 else None
        if sessions is not None:
            answer = await self._request(
                call, "POST", sessions, {"UserName": ep.user, "Password": ep.password}, auth=False
            )
            if answer is None:
                raise _Failed(_unreachable(call))
            token = answer.headers.get("X-Auth-Token")
            if answer.status in (200, 201) and token:
                call.auth = {"X-Auth-Token": token}
                location = answer.headers.get("Location") or _odata_id(answer.doc)
                call.session_path = _path_of(location) if location else None
                return
            if answer.status not in _NO_SESSIONS:
                raise _Failed(_refusal(call, "POST", sessions, answer))
        call.auth = {"Authorization": f"Basic {basic}"}

    async def _logout(self, call: _Call) -> None:
        path, call.session_path = call.session_path, None
        if path is None:
            return
        if await self._request(call, "DELETE", path, retry=False) is None:
            logger.info(
                "bmc session not deleted url=%s (it expires on the BMC by itself)",
                call.endpoint.base_url,
            )

    async def _system(self, call: _Call) -> _System:
        ep = call.endpoint
        path = ep.system_path()
        if path is None:
            listing = await self._expect(call, "GET", SYSTEMS_PATH)
            members = [
                p for p in (_odata_id(m) for m in _list(listing.doc, "Members")) if p is not None
            ]
            try:
                path = only_system(members, ep.base_url)
            except ConfigError as exc:
                raise _Failed(str(exc)) from None
        answer = await self._expect(call, "GET", path)
        doc = answer.doc if isinstance(answer.doc, dict) else {}
        canonical = _odata_id(doc) or path
        state = doc.get("PowerState")
        reset = doc.get("Actions", {}).get("#ComputerSystem.Reset", {})
        target = reset.get("target") if isinstance(reset, dict) else None
        return _System(
            path=_path_of(canonical),
            power_state=state if isinstance(state, str) else None,
            reset_target=_path_of(target) if isinstance(target, str) else None,
        )

    async def _read_state(self, call: _Call, path: str) -> str | None:
        answer = await self._request(call, "GET", path)
        if answer is None or answer.status != 200 or not isinstance(answer.doc, dict):
            return None
        state = answer.doc.get("PowerState")
        return state if isinstance(state, str) else None

    async def _poll_until_off(self, call: _Call, path: str) -> None:
        last: str | None = None
        misses = 0
        while True:
            state = await self._read_state(call, path)
            if state == "Off":
                return
            if state is None:
                misses += 1
                if misses > self.cfg.retries:
                    raise _Failed(
                        f"ForceOff was sent, but the BMC at {call.endpoint.base_url} stopped "
                        f"answering PowerState reads ({_last_error(call)}); the node may "
                        "still be running: check it by hand, then `meshd fence confirm NODE`"
                    )
            else:
                last, misses = state, 0
            wait = self.cfg.poll_interval_s
            if call.deadline - self.clock() < wait:
                raise _Failed(
                    f"ForceOff was sent, but the BMC still reports PowerState "
                    f"{last or 'unknown'} for {path} at the deadline; the node may still "
                    "be running: check it by hand, then `meshd fence confirm NODE`"
                )
            await asyncio.sleep(wait)

    async def _expect(self, call: _Call, method: str, path: str) -> _Answer:
        """A 200 answer, or _Failed with the sentence that fits what came instead."""
        answer = await self._request(call, method, path)
        if answer is None:
            raise _Failed(_unreachable(call))
        if answer.status != 200:
            raise _Failed(_refusal(call, method, path, answer))
        return answer

    async def _request(
        self,
        call: _Call,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        auth: bool = True,
        retry: bool = True,
    ) -> _Answer | None:
        """One request, tried again on no answer or a 5xx; None when none came in time."""
        tries = 1 + (self.cfg.retries if retry else 0)
        answer: _Answer | None = None
        for n in range(tries):
            if n:
                backoff = self.cfg.retry_backoff_s * 2 ** (n - 1)
                if call.deadline - self.clock() < backoff:
                    break
                await asyncio.sleep(backoff)
            left = call.deadline - self.clock()
            if left <= 0:
                call.attempts.append(Attempt(method, path, None, "deadline reached", 0.0))
                break
            answer, transient = await self._once(call, method, path, body, auth, left)
            if not transient:
                return answer
        return answer

    async def _once(
        self,
        call: _Call,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        auth: bool,
        left: float,
    ) -> tuple[_Answer | None, bool]:
        """(answer, worth trying again)."""
        timeout = min(self.cfg.request_timeout_s, left)
        headers = {"Accept": "application/json", **(call.auth if auth else {})}
        t0 = self.clock()
        url = call.endpoint.base_url + path
        error: str | None = None
        try:
            async with call.http.request(
                method,
                url,
                json=body,
                headers=headers,
                ssl=call.ssl,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=True,
                max_redirects=3,
            ) as resp:
                raw = await resp.read()
                answer = _Answer(resp.status, _decode(raw), dict(resp.headers))
        except TimeoutError:
            error = f"no answer within {timeout:.2f} s"
        except aiohttp.ClientConnectorCertificateError as exc:
            error = f"TLS certificate not trusted: {_reason(exc.certificate_error)}"
            call.attempts.append(Attempt(method, path, None, error, self.clock() - t0))
            return None, False
        except aiohttp.ClientSSLError as exc:
            error = f"TLS failed: {_reason(exc)}"
            call.attempts.append(Attempt(method, path, None, error, self.clock() - t0))
            return None, False
        except aiohttp.ClientConnectorError as exc:
            error = f"can't connect: {_reason(exc.os_error)}"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {_reason(exc)}"
        if error is not None:
            call.attempts.append(Attempt(method, path, None, error, self.clock() - t0))
            return None, True
        call.reachable = True
        call.attempts.append(Attempt(method, path, answer.status, None, self.clock() - t0))
        return answer, answer.status >= 500

    # -- results ----------------------------------------------------------------------

    def _reading(
        self,
        endpoint: BmcEndpoint,
        call: _Call | None,
        start: float,
        system: str | None,
        state: str | None,
        error: str | None,
    ) -> PowerReading:
        elapsed = self.clock() - start
        attempts = tuple(call.attempts) if call is not None else ()
        reachable = call is not None and call.reachable
        logger.info(
            "bmc power_state url=%s system=%s state=%s elapsed_ms=%.0f error=%s",
            endpoint.base_url,
            system,
            state,
            elapsed * 1000,
            error,
        )
        return PowerReading(system, state, reachable, elapsed, error, attempts)

    def _outcome(
        self,
        endpoint: BmcEndpoint,
        call: _Call | None,
        start: float,
        system: str | None,
        verified: bool,
        already: bool,
        posted: bool,
        error: str | None,
    ) -> FenceOutcome:
        elapsed = self.clock() - start
        outcome = FenceOutcome(
            system=system,
            verified_off=verified,
            already_off=already,
            posted=posted,
            elapsed_s=elapsed,
            attempts=tuple(call.attempts) if call is not None else (),
            error=error,
        )
        log = logger.info if verified else logger.warning
        log(
            "bmc force_off url=%s system=%s result=%s posted=%s elapsed_ms=%.0f error=%s",
            endpoint.base_url,
            system,
            outcome.result,
            posted,
            elapsed * 1000,
            error,
        )
        return outcome


def _tls(endpoint: BmcEndpoint) -> ssl.SSLContext | bool:
    """The TLS trust of an endpoint: its CA file, the system store, or none (insecure)."""
    if endpoint.insecure:
        return False
    try:
        return ssl.create_default_context(cafile=endpoint.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise _Failed(
            f"can't load the BMC's CA file {endpoint.ca_file}: {_reason(exc)}; "
            "run `meshd bmc set` again with a PEM CA certificate"
        ) from None


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc) or type(exc).__name__
    return text[:200]


def _odata_id(doc: Any) -> str | None:
    if isinstance(doc, dict) and isinstance(doc.get("@odata.id"), str):
        return str(doc["@odata.id"])
    return None


def _list(doc: Any, key: str) -> list[Any]:
    value = doc.get(key) if isinstance(doc, dict) else None
    return value if isinstance(value, list) else []


def _path_of(uri: str) -> str:
    """A path from a URI that may be absolute (``https://bmc/redfish/...``)."""
    if uri.startswith(("https://", "http://")):
        rest = uri.split("://", 1)[1]
        return "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    return uri


def _sessions_path(root: Any) -> str | None:
    """The Sessions collection of a service root that offers a SessionService."""
    if not isinstance(root, dict) or "SessionService" not in root:
        return None
    links = root.get("Links")
    sessions = links.get("Sessions") if isinstance(links, dict) else None
    return _path_of(_odata_id(sessions) or "/redfish/v1/SessionService/Sessions")


def _last_error(call: _Call) -> str:
    for attempt in reversed(call.attempts):
        if attempt.error is not None:
            return attempt.error
        if attempt.status is not None and attempt.status >= 400:
            return f"HTTP {attempt.status}"
    return "no answer"


def _unreachable(call: _Call) -> str:
    return (
        f"can't reach the BMC at {call.endpoint.base_url} ({_last_error(call)}); check its "
        "address, the network and its certificate (--ca-file, --insecure); if the node is "
        "off, say so with `meshd fence confirm NODE`"
    )


def _message(doc: Any) -> str:
    """The BMC's own words from a Redfish error body, if it sent some."""
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return ""
    infos = err.get("@Message.ExtendedInfo")
    if isinstance(infos, list) and infos and isinstance(infos[0], dict):
        text = infos[0].get("Message") or infos[0].get("MessageId")
        if isinstance(text, str):
            return text[:200]
    text = err.get("message")
    return text[:200] if isinstance(text, str) else ""


def _refusal(call: _Call, method: str, path: str, answer: _Answer) -> str:
    ep = call.endpoint
    said = _message(answer.doc)
    said = f" ({said})" if said else ""
    if answer.status == 401:
        return (
            f"the BMC at {ep.base_url} refused user {ep.user!r}'s login (HTTP 401){said}; "
            "check the user and the password file, then run `meshd bmc set` again"
        )
    if answer.status == 403:
        return (
            f"the BMC at {ep.base_url} does not let user {ep.user!r} {method} {path} "
            f"(HTTP 403){said}; give that user the power control privilege"
        )
    if answer.status == 404 and path.startswith(SYSTEMS_PATH):
        return (
            f"the BMC at {ep.base_url} has no system {path} (HTTP 404); name an existing "
            "one with `meshd bmc set --system ID`, or leave --system out if it has only one"
        )
    return f"the BMC at {ep.base_url} answered HTTP {answer.status} to {method} {path}{said}"


if TYPE_CHECKING:

    def _is_a_bmc_port(client: RedfishClient) -> BmcPort:
        return client  # mypy --strict checks the client against the port here
