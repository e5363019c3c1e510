"""The Redfish client against the real sushy-tools emulator (and a stand-in for iLO).

The emulator is the real thing (sushy-tools 2.2.0, fake driver, TLS, bcrypt Basic
auth); what it did is read from its own request log, not from our client's account.
iLO's session login and its 400 on ForceOff of an Off system come from
``ilo_fake.py``, a small server written from HPE's documentation.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from meshd.adapters.redfish import RedfishClient
from meshd.config.sections import BmcConfig
from meshd.core.bmc import BmcEndpoint

try:
    from tests.integration.ilo_fake import FakeIlo
    from tests.integration.sushy import Emulator, emulators, make_ca
except ImportError:  # tests/integration is not a package, so pytest put it on sys.path
    from ilo_fake import FakeIlo  # type: ignore[no-redef,import-not-found]
    from sushy import Emulator, emulators, make_ca  # type: ignore[no-redef,import-not-found]

__all__ = ["emulators"]  # the fixture, used by name

CFG = BmcConfig(request_timeout_s=2.0, retries=1, retry_backoff_s=0.05, poll_interval_s=0.1)
Make = Callable[..., Emulator]


def endpoint(emu: Emulator, system: str | None = None, **kw: object) -> BmcEndpoint:
    args: dict[str, object] = {"ca_file": str(emu.ca_file)}
    args.update(kw)
    return BmcEndpoint(emu.url, emu.user, emu.password, system=system, **args)  # type: ignore[arg-type]


def posts(emu: Emulator) -> list[str]:
    return [p for m, p, _ in emu.requests() if m == "POST"]


async def force_off(ep: BmcEndpoint, budget_s: float = 10.0, cfg: BmcConfig = CFG):  # type: ignore[no-untyped-def]
    return await RedfishClient(cfg).force_off(ep, time.monotonic() + budget_s)


async def read(ep: BmcEndpoint, budget_s: float = 10.0, cfg: BmcConfig = CFG):  # type: ignore[no-untyped-def]
    return await RedfishClient(cfg).power_state(ep, time.monotonic() + budget_s)


# -- finding the system -------------------------------------------------------------------


async def test_system_by_id_follows_the_redirect_to_the_uuid_path(emulators: Make) -> None:
    emu = emulators({"blade1": "On", "blade2": "Off"})
    got = await read(endpoint(emu, "blade2"))
    assert got.error is None
    assert got.power_state == "Off"
    assert got.system == f"/redfish/v1/Systems/{emu.uuid('blade2')}"
    assert ("GET", "/redfish/v1/Systems/blade2", 307) in emu.requests()


async def test_system_by_full_uri(emulators: Make) -> None:
    emu = emulators({"blade1": "On", "blade2": "Off"})
    got = await read(endpoint(emu, f"/redfish/v1/Systems/{emu.uuid('blade1')}"))
    assert (got.power_state, got.error) == ("On", None)


async def test_the_only_system_when_none_is_named(emulators: Make) -> None:
    emu = emulators({"solo": "On"})
    got = await read(endpoint(emu))
    assert (got.power_state, got.system) == ("On", f"/redfish/v1/Systems/{emu.uuid('solo')}")


async def test_several_systems_and_none_named_is_an_error_naming_them(emulators: Make) -> None:
    emu = emulators({"blade1": "On", "blade2": "On"})
    got = await read(endpoint(emu))
    assert got.power_state is None and got.reachable
    assert got.error is not None and "has 2 systems" in got.error and "--system" in got.error
    assert emu.uuid("blade1") in got.error and emu.uuid("blade2") in got.error
    outcome = await force_off(endpoint(emu))
    assert outcome.result == "failed" and not outcome.posted
    assert [emu.power("blade1"), emu.power("blade2")] == ["On", "On"]


async def test_an_unknown_system_says_so(emulators: Make) -> None:
    emu = emulators({"blade1": "On"})
    got = await read(endpoint(emu, "blade9"))
    assert got.error is not None and "has no system /redfish/v1/Systems/blade9" in got.error


# -- logging in, trusting the certificate ----------------------------------------------


async def test_a_wrong_password_is_a_clear_error(emulators: Make) -> None:
    emu = emulators({"blade1": "On"})
    ep = BmcEndpoint(emu.url, emu.user, "not-it", system="blade1", ca_file=str(emu.ca_file))
    got = await read(ep)
    assert got.reachable and got.power_state is None
    assert got.error is not None and "HTTP 401" in got.error and "password file" in got.error
    outcome = await force_off(ep)
    assert outcome.result == "failed" and not outcome.posted
    assert emu.power("blade1") == "On"


async def test_tls_is_verified_against_the_ca_file(emulators: Make, tmp_path: Path) -> None:
    emu = emulators({"blade1": "On"})
    assert (await read(endpoint(emu, "blade1"))).power_state == "On"
    other = tmp_path / "other-ca.pem"
    other.write_bytes(make_ca("someone else").cert_pem)
    refused = await read(endpoint(emu, "blade1", ca_file=str(other)))
    assert refused.power_state is None and not refused.reachable
    assert refused.error is not None and "certificate not trusted" in refused.error
    # No CA file: the system store, which doesn't know the test CA either.
    assert "certificate not trusted" in str(
        (await read(endpoint(emu, "blade1", ca_file=None))).error
    )
    # A refused certificate is not retried: one attempt, then the sentence.
    assert len(refused.attempts) == 1
    assert emu.requests() == [
        ("GET", "/redfish/v1/", 200),
        ("GET", "/redfish/v1/Systems/blade1", 307),
        ("GET", f"/redfish/v1/Systems/{emu.uuid('blade1')}", 200),
    ]


async def test_insecure_skips_verification_only_when_asked(emulators: Make) -> None:
    emu = emulators({"blade1": "On"})
    got = await read(endpoint(emu, "blade1", ca_file=None, insecure=True))
    assert (got.power_state, got.error) == ("On", None)


async def test_a_missing_ca_file_is_a_clear_error(emulators: Make, tmp_path: Path) -> None:
    emu = emulators({"blade1": "On"})
    got = await read(endpoint(emu, "blade1", ca_file=str(tmp_path / "nope.pem")))
    assert got.error is not None and "can't load the BMC's CA file" in got.error
    assert emu.requests() == []


# -- forcing off --------------------------------------------------------------------------


async def test_force_off_is_verified_off_through_the_reset_target(emulators: Make) -> None:
    emu = emulators({"blade1": "On", "blade2": "On"})
    outcome = await force_off(endpoint(emu, "blade1"))
    assert outcome.error is None
    assert (outcome.result, outcome.verified_off, outcome.posted) == ("verified_off", True, True)
    path = f"/redfish/v1/Systems/{emu.uuid('blade1')}"
    assert posts(emu) == [f"{path}/Actions/ComputerSystem.Reset"]
    assert (emu.power("blade1"), emu.power("blade2")) == ("Off", "On")
    # The last read before the verdict came after the POST and said Off.
    methods = [a.method for a in outcome.attempts]
    assert methods[-1] == "GET" and methods.index("POST") < len(methods) - 1


async def test_already_off_is_fenced_without_a_post(emulators: Make) -> None:
    emu = emulators({"blade1": "Off"})
    outcome = await force_off(endpoint(emu, "blade1"))
    assert (outcome.result, outcome.verified_off, outcome.posted) == ("already_off", True, False)
    assert posts(emu) == []
    assert all(m == "GET" for m, _, _ in emu.requests())


@pytest.mark.slow
async def test_force_off_with_the_stock_random_delay(emulators: Make) -> None:
    """The fake driver's stock 1-11 s: polling carries on until Off, within the deadline."""
    emu = emulators({"blade1": "On"}, delay_s=None)
    cfg = BmcConfig(request_timeout_s=2.0, retries=1, poll_interval_s=0.5)
    outcome = await force_off(endpoint(emu, "blade1"), budget_s=20.0, cfg=cfg)
    assert outcome.result == "verified_off", outcome.error
    assert emu.power("blade1") == "Off"
    reads_after_post = [a for a in outcome.attempts if a.method == "GET"][2:]
    assert len(reads_after_post) >= 2  # the change took at least a second to show


async def test_a_deadline_too_short_for_the_power_change_is_a_failure(emulators: Make) -> None:
    emu = emulators({"blade1": "On"}, delay_s=3)
    start = time.monotonic()
    outcome = await force_off(endpoint(emu, "blade1"), budget_s=1.0)
    assert time.monotonic() - start <= 1.0 + 0.2
    assert outcome.result == "failed" and outcome.posted
    assert outcome.error is not None and "still reports PowerState On" in outcome.error
    assert "meshd fence confirm" in outcome.error


# -- a BMC that isn't there ---------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_bmc_is_a_failed_outcome_within_the_deadline() -> None:
    ep = BmcEndpoint(f"https://127.0.0.1:{_closed_port()}", "u", "p", system="1", insecure=True)
    start = time.monotonic()
    outcome = await force_off(ep, budget_s=2.0)
    assert time.monotonic() - start <= 2.0 + 0.2
    assert outcome.result == "failed" and not outcome.posted
    assert outcome.error is not None and "can't reach the BMC" in outcome.error
    assert len(outcome.attempts) == 1 + CFG.retries  # bounded retries
    reading = await read(ep, budget_s=2.0)
    assert not reading.reachable and reading.power_state is None


class _Silent:
    """Accepts connections and never answers; remembers when each one came."""

    def __init__(self) -> None:
        self.connected: list[float] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> int:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connected.append(time.monotonic())
            await reader.read()  # until the client gives up
            writer.close()

        self.server = await asyncio.start_server(hold, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def test_no_request_starts_after_the_deadline() -> None:
    """Requests that time out are retried, but none starts (connects) past the deadline,
    and each one's timeout is clipped to what is left."""
    cfg = BmcConfig(request_timeout_s=0.4, retries=5, retry_backoff_s=0.05, poll_interval_s=0.1)
    silent = _Silent()
    async with silent as port:
        ep = BmcEndpoint(f"http://127.0.0.1:{port}", "u", "p", system="1", insecure=True)
        start = time.monotonic()
        deadline = start + 1.0
        outcome = await RedfishClient(cfg).force_off(ep, deadline)
        ended = time.monotonic()
    assert outcome.result == "failed"
    assert ended <= deadline + 0.1
    assert len(silent.connected) >= 2  # it did retry
    assert max(silent.connected) <= deadline
    assert outcome.attempts[-1].error == "deadline reached" or ended <= deadline + 0.1


# -- iLO's ways ---------------------------------------------------------------------------


@pytest.fixture
async def ilo() -> AsyncIterator[FakeIlo]:
    server = await FakeIlo().start()
    try:
        yield server
    finally:
        await server.close()


def ilo_endpoint(ilo: FakeIlo, password: str | None = None) -> BmcEndpoint:
    return BmcEndpoint(ilo.url, ilo.user, password or ilo.password, system="1", insecure=True)


async def test_a_session_is_used_and_deleted_afterwards(ilo: FakeIlo) -> None:
    outcome = await force_off(ilo_endpoint(ilo))
    assert outcome.result == "verified_off"
    assert ilo.power == "Off"
    authed = [(m, p, how) for m, p, _, how in ilo.log if p not in ("/redfish/v1/",)]
    assert authed[0][:2] == ("POST", "/redfish/v1/SessionService/Sessions")
    assert all(how == "session" for _, _, how in authed[1:]), authed
    assert authed[-1][0] == "DELETE" and len(ilo.deleted) == 1 and ilo.sessions == {}
    reading = await read(ilo_endpoint(ilo))
    assert reading.power_state == "Off" and len(ilo.deleted) == 2 and ilo.sessions == {}


async def test_a_refused_session_login_is_a_clear_error(ilo: FakeIlo) -> None:
    outcome = await force_off(ilo_endpoint(ilo, password="wrong"))
    assert outcome.result == "failed" and not outcome.posted
    assert outcome.error is not None and "HTTP 401" in outcome.error
    assert ilo.power == "On"


async def test_already_off_on_ilo_sends_no_post(ilo: FakeIlo) -> None:
    ilo.power = "Off"
    outcome = await force_off(ilo_endpoint(ilo))
    assert outcome.result == "already_off"
    assert not [entry for entry in ilo.log if entry[0] == "POST" and "Reset" in entry[1]]


async def test_ilo_400_because_it_went_off_meanwhile_is_verified_off(ilo: FakeIlo) -> None:
    ilo.power, ilo.report_on_reads = "Off", 1  # read On, then Off by the time we POST
    outcome = await force_off(ilo_endpoint(ilo))
    assert outcome.result == "verified_off" and outcome.posted
    assert [a.status for a in outcome.attempts if a.method == "POST"][-1] == 400


async def test_ilo_400_on_a_system_still_on_is_a_failure(ilo: FakeIlo) -> None:
    ilo.power, ilo.report_on_reads = "Off", 5  # keeps reading On: a refusal, not a success
    outcome = await force_off(ilo_endpoint(ilo))
    assert outcome.result == "failed"
    assert outcome.error is not None and "HTTP 400" in outcome.error
    assert "InvalidOperationForSystemState" in outcome.error


# -- the anchor agrees ----------------------------------------------------------------------


def fence_redfish_status(emu: Emulator, name: str) -> str:
    agent = shutil.which("fence_redfish")
    if agent is None:
        pytest.skip(
            "fence_redfish is not installed (Debian package fence-agents; as root: "
            "apt-get install fence-agents)"
        )
    proc = subprocess.run(
        [
            agent,
            "--ip",
            "127.0.0.1",
            "--ipport",
            str(emu.port),
            "--ssl",
            "--ssl-secure",
            "--username",
            emu.user,
            "--password-script",
            f"printf %s {emu.password}",
            "--systems-uri",
            f"/redfish/v1/Systems/{emu.uuid(name)}",
            "--action",
            "status",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "REQUESTS_CA_BUNDLE": str(emu.ca_file)},
    )
    assert proc.returncode in (0, 2), proc.stderr
    return proc.stdout.strip()


async def test_fence_redfish_agrees_on_the_power_state(emulators: Make) -> None:
    emu = emulators({"blade1": "On", "blade2": "Off"})
    assert fence_redfish_status(emu, "blade1") == "Status: ON"
    assert fence_redfish_status(emu, "blade2") == "Status: OFF"
    assert (await read(endpoint(emu, "blade1"))).power_state == "On"
    assert (await read(endpoint(emu, "blade2"))).power_state == "Off"
    assert (await force_off(endpoint(emu, "blade1"))).result == "verified_off"
    assert fence_redfish_status(emu, "blade1") == "Status: OFF"
