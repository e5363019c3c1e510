"""A small Redfish server standing in for HPE iLO 5, which can't run here.

It does the two things iLO does that sushy-tools doesn't (LAB-NOTES, "Redfish";
HPE's iLO 5 Redfish API reference, "Authentication and sessions"):

* a ``SessionService``: ``POST /redfish/v1/SessionService/Sessions`` with
  ``{"UserName", "Password"}`` answers 201 with an ``X-Auth-Token`` header and the
  session's ``Location``; requests carry the token; ``DELETE`` of the session ends it.
  Basic auth is accepted too (iLO takes both), and every request records which was
  used, so a test can tell the client preferred the session;
* ``ForceOff`` on a system that is already Off answers **400** with iLO's
  ``iLO.2.x.InvalidOperationForSystemState`` message.

``report_on_reads`` makes the system read ``On`` that many times while it is really
Off: the race in which a node goes down by itself between our read and our POST. It
serves plain http on 127.0.0.1, port 0 (a client reaches it with ``insecure``).
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

SYSTEM = "/redfish/v1/Systems/1"
RESET = f"{SYSTEM}/Actions/ComputerSystem.Reset"
SESSIONS = "/redfish/v1/SessionService/Sessions"


@dataclass
class FakeIlo:
    user: str = "Administrator"
    password: str = "ilo-pw-93kq"
    power: str = "On"
    report_on_reads: int = 0
    sessions: dict[str, str] = field(default_factory=dict)  # token -> session path
    deleted: list[str] = field(default_factory=list)
    log: list[tuple[str, str, int, str]] = field(default_factory=list)  # method, path, status, auth
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> FakeIlo:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/redfish/v1/", self.root)
        app.router.add_post(SESSIONS, self.login)
        app.router.add_delete(SESSIONS + "/{id}", self.logout)
        app.router.add_get("/redfish/v1/Systems", self.systems)
        app.router.add_get(SYSTEM, self.system)
        app.router.add_post(RESET, self.reset)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        how = self._auth(request)
        if how is None and request.path not in ("/redfish/v1/", SESSIONS):
            resp: web.StreamResponse = _error(401, "Base.1.4.NoValidSession")
        else:
            resp = await handler(request)
        self.log.append((request.method, request.path, resp.status, how or "none"))
        return resp

    def _auth(self, request: web.Request) -> str | None:
        token = request.headers.get("X-Auth-Token")
        if token is not None:
            return "session" if token in self.sessions else None
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
            return "basic" if (user, pw) == (self.user, self.password) else None
        return None

    async def root(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "@odata.id": "/redfish/v1/",
                "Systems": {"@odata.id": "/redfish/v1/Systems"},
                "SessionService": {"@odata.id": "/redfish/v1/SessionService"},
                "Links": {"Sessions": {"@odata.id": SESSIONS}},
            }
        )

    async def login(self, request: web.Request) -> web.Response:
        body = await request.json()
        if (body.get("UserName"), body.get("Password")) != (self.user, self.password):
            return _error(401, "Base.1.4.NoValidSession")
        token = secrets.token_hex(16)
        path = f"{SESSIONS}/{secrets.token_hex(4)}"
        self.sessions[token] = path
        return web.json_response(
            {"@odata.id": path},
            status=201,
            headers={"X-Auth-Token": token, "Location": f"{self.url}{path}"},
        )

    async def logout(self, request: web.Request) -> web.Response:
        for token, path in list(self.sessions.items()):
            if path == request.path:
                del self.sessions[token]
                self.deleted.append(path)
                return web.json_response({})
        return _error(404, "Base.1.4.ResourceMissingAtURI")

    async def systems(self, request: web.Request) -> web.Response:
        return web.json_response({"Members": [{"@odata.id": SYSTEM}]})

    async def system(self, request: web.Request) -> web.Response:
        power = self.power
        if self.report_on_reads > 0:
            self.report_on_reads -= 1
            power = "On"
        return web.json_response(
            {
                "@odata.id": SYSTEM,
                "Id": "1",
                "PowerState": power,
                "Actions": {
                    "#ComputerSystem.Reset": {
                        "target": RESET,
                        "ResetType@Redfish.AllowableValues": ["On", "ForceOff"],
                    }
                },
            }
        )

    async def reset(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("ResetType") != "ForceOff":
            return _error(400, "Base.1.4.PropertyValueNotInList")
        if self.power == "Off":
            return _error(400, "iLO.2.14.InvalidOperationForSystemState")
        self.power = "Off"
        return web.json_response({"error": {"code": "iLO.0.10.ExtendedInfo"}})


def _error(status: int, message_id: str) -> web.Response:
    return web.json_response(
        {
            "error": {
                "code": "iLO.0.10.ExtendedInfo",
                "message": "See @Message.ExtendedInfo for more information.",
                "@Message.ExtendedInfo": [{"MessageId": message_id}],
            }
        },
        status=status,
    )
