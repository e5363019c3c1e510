"""The HTTP API: one aiohttp application served on the unix socket and on mTLS TCP.

Who may call what
-----------------
* The unix socket (``DATA_DIR/meshd.sock``, mode 0600) is the local operator: file
  permissions are the authentication, every route is allowed.
* TCP is always TLS. Two routes are open to anyone who can reach the port, because a
  joiner has no certificate yet: ``GET /v1/enrol/ca`` and ``POST /v1/enrol`` (the
  token is the credential). Every other route needs a client certificate from the
  mesh CA that is not revoked; the certificate's role decides: ``node`` and ``admin``
  may do everything, ``tenant:<name>`` only what :data:`TENANT_ROUTES` lists.
* A workload's lifecycle routes run on its owner; another node relays them there once,
  marked with :data:`FORWARDED_HEADER`, a mark honoured only from a ``node`` peer.

Errors are JSON ``{"error": "<one sentence>"}``. A :class:`~meshd.errors.MeshdError`
answers with the status its class declares (``http_status``, all in
``meshd/errors.py``); a handler bug is a 500 that says to read the daemon's log, and
never takes the daemon down.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import msgspec
import orjson
from aiohttp import web

from meshd.adapters import tls
from meshd.adapters.redfish import RedfishClient
from meshd.adapters.store import roster, services
from meshd.adapters.store.db import Store
from meshd.api.openapi import document
from meshd.api.refusals import Refusals
from meshd.api.relay import stream_back
from meshd.config import Config
from meshd.core import network as network_core
from meshd.core import spec
from meshd.core.bmc import BmcEndpoint
from meshd.errors import (
    BadRequest,
    ConfigError,
    DaemonError,
    IdentityError,
    MeshdError,
    NetworkConflictError,
    NotFoundError,
)
from meshd.identity import authority, enrolment, pki
from meshd.identity import bmc as bmc_files
from meshd.identity.files import NodeIdentity
from meshd.identity.revocation import RevocationList
from meshd.metrics import Registry
from meshd.shell import ca_custody
from meshd.shell.drains import DRAINS_PATH
from meshd.shell.fencing import BMC_PATH, FENCE_PATH, FencingShell
from meshd.shell.gate import CERTS_PATH
from meshd.shell.key_sync import KEYS_PATH
from meshd.shell.mesh import Mesh
from meshd.shell.networks import NETWORKS_PATH
from meshd.shell.placement import PlacementShell
from meshd.shell.revocation_sync import REVOCATION_KIND, REVOCATIONS_PATH
from meshd.shell.workloads import WorkloadRunner

logger = logging.getLogger(__name__)


class NodeView(Protocol):
    """What the API reads of its node. The node (the composition root) builds the API,
    so the API names the node by this shape instead of importing it. ``mesh``,
    ``placement`` and ``runner`` are None until start-up has built them."""

    cfg: Config
    ident: NodeIdentity
    store: Store
    clock: Callable[[], float]
    metrics: Registry
    revocations: RevocationList
    address: str
    mesh: Mesh | None
    placement: PlacementShell | None
    runner: WorkloadRunner | None
    fencing: FencingShell | None

    def status(self) -> dict[str, Any]: ...

    def health_checks(self) -> dict[str, str]: ...


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC_ROUTES = frozenset({("GET", "/v1/enrol/ca"), ("POST", "/v1/enrol")})
# The routes whose bodies carry data (user-data, mesh messages) may send up to
# api.max_body_bytes; every other route api.max_small_body_bytes. Bigger: 413, unread.
LARGE_BODY_ROUTES = frozenset(
    {
        ("POST", "/v1/workloads"),
        ("POST", "/v1/mesh/message"),
        ("POST", "/v1/mesh/auction"),
        ("POST", REVOCATIONS_PATH),
        ("POST", DRAINS_PATH),
        ("POST", NETWORKS_PATH),
    }
)
TENANT_ROUTES = frozenset(
    {
        ("GET", "/v1/health"),
        ("GET", "/v1/openapi.json"),
        ("GET", "/v1/resolve"),
        # Its own workloads only: a submission is the tenant's, a listing shows only its
        # workloads, and one of another tenant's ids is answered as unknown.
        ("POST", "/v1/workloads"),
        ("GET", "/v1/workloads"),
        ("GET", "/v1/workloads/{id}"),
        ("DELETE", "/v1/workloads/{id}"),
        ("POST", "/v1/workloads/{id}/stop"),
        ("POST", "/v1/workloads/{id}/start"),
        ("GET", "/v1/workloads/{id}/logs"),
    }
)
# Mesh-internal routes: only another node (role `node`) may call them.
NODE_ROUTES = frozenset(
    {
        ("POST", "/v1/mesh/message"),
        ("POST", "/v1/mesh/auction"),
        ("POST", REVOCATIONS_PATH),
        ("POST", DRAINS_PATH),
        ("POST", NETWORKS_PATH),
        ("POST", KEYS_PATH),
        ("GET", KEYS_PATH),
        ("GET", CERTS_PATH),
        ("POST", ca_custody.PROMOTE_PATH),
        ("POST", FENCE_PATH),
        ("POST", BMC_PATH),
    }
)
# Handing out the CA key: the local operator or an admin certificate, never a node
# (any member could otherwise ask a holder to promote it).
# The BMC's routes too: its login powers this node off.
OPERATOR_ROUTES = frozenset(
    {
        ("POST", "/v1/ca/promote"),
        ("POST", "/v1/ca/reload"),
        ("GET", "/v1/bmc"),
        ("POST", "/v1/bmc"),
        ("POST", "/v1/bmc/check"),
        # The operator's word that a node is off: the mesh then runs its VMs elsewhere.
        ("POST", "/v1/fence/confirm"),
    }
)
# What a member's `node` certificate may not do on another node: a node's certificate
# is for the mesh's own traffic (mesh routes, reads, workload calls relayed to their
# owner), not for an operator's acts, so a compromised member can't remove nodes, mint
# join tokens or publish services in another node's name.
NOT_FOR_NODES = frozenset(
    {
        ("DELETE", "/v1/roster/{name}"),
        ("POST", "/v1/nodes/{name}/drain"),
        ("POST", "/v1/nodes/{name}/undrain"),
        ("POST", "/v1/networks"),
        ("DELETE", "/v1/networks/{name}"),
        ("POST", "/v1/tokens"),
        ("POST", "/v1/services"),
        ("DELETE", "/v1/services/{name}"),
    }
)
# The mark a node puts on a request it relays to a workload's owner. A node that gets
# a marked request and is not the owner answers at once instead of relaying it again,
# so two nodes that briefly disagree on the owner can't bounce it between them. Only a
# peer with a `node` certificate can set the mark: from anyone else it is ignored.
FORWARDED_HEADER = "X-Meshd-Forwarded"


@dataclass(frozen=True)
class Peer:
    """Who is calling: ``local`` over the unix socket, else the certificate's holder."""

    name: str
    role: str
    local: bool


def relayed_by_node(peer: Peer, headers: Mapping[str, str]) -> bool:
    """Whether another node relayed this request here (see :data:`FORWARDED_HEADER`)."""
    return not peer.local and peer.role == "node" and FORWARDED_HEADER in headers


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Api:
    def __init__(self, node: NodeView) -> None:
        self.node = node
        self._cert_cache: dict[bytes, pki.CertInfo] = {}
        self._forward_session: aiohttp.ClientSession | None = None
        m = node.metrics
        self.requests = m.counter("meshd_api_requests_total", "API requests by route and status")
        self.latency = m.histogram("meshd_api_request_seconds", "API request latency")
        self.refused = m.counter("meshd_api_refused_total", "TCP API requests refused, by reason")
        self.enrolments = m.counter("meshd_enrolments_total", "Enrolment requests by result")
        self.refusals = Refusals(self.refused, node.cfg.api.refusal_log_interval_s)

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._observe, self._errors, self._limit, self._auth],
            client_max_size=self.node.cfg.api.max_body_bytes,
        )
        app.router.add_get("/v1/health", self.health)
        app.router.add_get("/v1/node", self.node_info)
        app.router.add_get("/v1/openapi.json", self.openapi)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/v1/roster", self.roster_list)
        app.router.add_delete("/v1/roster/{name}", self.roster_remove)
        app.router.add_post("/v1/tokens", self.token_create)
        app.router.add_get("/v1/events", self.events)
        app.router.add_get("/v1/peers", self.peers)
        app.router.add_get("/v1/services", self.services_list)
        app.router.add_post("/v1/services", self.services_add)
        app.router.add_delete("/v1/services/{name}", self.services_remove)
        app.router.add_get("/v1/resolve", self.resolve)
        app.router.add_post("/v1/mesh/message", self.mesh_message)
        app.router.add_post(REVOCATIONS_PATH, self.mesh_revocations)
        app.router.add_post(KEYS_PATH, self.mesh_keys_push)
        app.router.add_get(KEYS_PATH, self.mesh_keys_fetch)
        app.router.add_get(CERTS_PATH, self.mesh_certs_fetch)
        app.router.add_post("/v1/mesh/auction", self.mesh_auction)
        app.router.add_post(DRAINS_PATH, self.mesh_drains)
        app.router.add_post("/v1/nodes/{name}/drain", self.node_drain)
        app.router.add_post("/v1/nodes/{name}/undrain", self.node_undrain)
        app.router.add_get("/v1/nodes/{name}/drain", self.node_drain_state)
        app.router.add_post(NETWORKS_PATH, self.mesh_networks)
        app.router.add_post("/v1/networks", self.networks_create)
        app.router.add_get("/v1/networks", self.networks_list)
        app.router.add_get("/v1/networks/{name}", self.networks_show)
        app.router.add_delete("/v1/networks/{name}", self.networks_remove)
        app.router.add_post("/v1/workloads", self.workloads_submit)
        app.router.add_get("/v1/workloads", self.workloads_list)
        app.router.add_get("/v1/workloads/{id}", self.workload_show)
        app.router.add_delete("/v1/workloads/{id}", self.workload_remove)
        app.router.add_post("/v1/workloads/{id}/stop", self.workload_stop)
        app.router.add_post("/v1/workloads/{id}/start", self.workload_start)
        app.router.add_get("/v1/workloads/{id}/logs", self.workload_logs)
        app.router.add_get("/v1/auctions", self.auctions_list)
        app.router.add_get("/v1/auctions/{round}", self.auctions_show)
        app.router.add_get("/v1/enrol/ca", self.enrol_ca)
        app.router.add_post("/v1/enrol", self.enrol)
        app.router.add_post("/v1/ca/promote", self.ca_promote)
        app.router.add_post("/v1/ca/reload", self.ca_reload)
        app.router.add_post(ca_custody.PROMOTE_PATH, self.mesh_ca)
        app.router.add_get("/v1/bmc", self.bmc_show)
        app.router.add_post("/v1/bmc", self.bmc_set)
        app.router.add_post("/v1/bmc/check", self.bmc_check)
        app.router.add_get("/v1/fence", self.fence_status)
        app.router.add_post("/v1/fence/confirm", self.fence_confirm)
        app.router.add_post(FENCE_PATH, self.mesh_fence)
        app.router.add_post(BMC_PATH, self.mesh_bmc)
        return app

    # -- middlewares -----------------------------------------------------------------

    @web.middleware
    async def _observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        status = 500
        # A followed log is a stream that lasts until the client hangs up: no deadline.
        streaming = (request.path.endswith("/logs") or request.path == "/v1/events") and (
            request.query.get("follow", "").lower() in _YES  # checked by the handler
        )
        limit = None if streaming else self.node.cfg.api.request_timeout_s
        try:
            resp = await asyncio.wait_for(handler(request), limit)
            status = resp.status
            return resp
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            route = request.match_info.route.resource
            path = route.canonical if route is not None else "unmatched"
            self.requests.inc(route=path, code=str(status))
            self.latency.observe(time.perf_counter() - start, route=path)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except MeshdError as exc:
            return error(exc.http_status, str(exc))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status == 413:
                return _too_large(request, self._body_limit(request))
            resp = error(exc.status, f"{exc.reason.lower()}: {request.method} {request.path}")
            if "Allow" in exc.headers:  # a 405 names the methods the path has (RFC 9110)
                resp.headers["Allow"] = exc.headers["Allow"]
            return resp
        except TimeoutError:
            logger.warning("api request timed out path=%s", request.path)
            return error(504, "the request took too long and was abandoned")
        except (ConnectionResetError, aiohttp.ClientPayloadError) as exc:
            # The caller went away mid-request (a member stopping or timing out while it
            # posts, a client that interrupted `logs --follow`): normal, not an error.
            logger.debug("caller went away path=%s error=%s", request.path, exc)
            return error(400, "the request was cut short by its sender")
        except Exception:
            logger.exception("api handler failed path=%s", request.path)
            return error(500, "internal error in meshd; the daemon's log has the details")

    def _body_limit(self, request: web.Request) -> int:
        a = self.node.cfg.api
        large = (request.method, request.path) in LARGE_BODY_ROUTES
        return a.max_body_bytes if large else a.max_small_body_bytes

    @web.middleware
    async def _limit(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse a body bigger than its route takes before reading it (413)."""
        limit = self._body_limit(request)
        if request.content_length is not None and request.content_length > limit:
            return _too_large(request, limit)
        return await handler(request.clone(client_max_size=limit))

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        if ssl_object is None:
            request["peer"] = Peer("local", "admin", local=True)
            return await handler(request)
        if (request.method, request.path) in PUBLIC_ROUTES:
            request["peer"] = Peer("anonymous", "anonymous", local=False)
            return await handler(request)
        der = ssl_object.getpeercert(binary_form=True)
        if not der:
            self.refusals.note("no_certificate", request.remote or "", request.path)
            return error(401, "a client certificate from this mesh's CA is required")
        info = self._verify_peer(der, request.remote or "")
        if info is None:
            return error(403, "the client certificate is not valid for this mesh")
        if self.node.revocations.is_revoked(info.serial, info.node_id):
            self.refused.inc(reason="revoked")
            return error(403, f"{info.name} was removed from this mesh")
        route = request.match_info.route.resource
        template = route.canonical if route is not None else request.path
        if info.role.startswith("tenant:"):
            if (request.method, template) not in TENANT_ROUTES:
                self.refused.inc(reason="role")
                return error(403, f"role {info.role} may not call {request.method} {request.path}")
            wid = request.match_info.get("id")
            if wid is not None and not self._tenant_owns(info.role, wid):
                return error(404, f"no workload {wid} is known in this mesh")
        if (request.method, request.path) in NODE_ROUTES and info.role != "node":
            self.refused.inc(reason="role")
            return error(403, f"only mesh nodes may call {request.path}")
        if info.role == "node" and (request.method, template) in NOT_FOR_NODES:
            self.refused.inc(reason="role")
            return error(
                403,
                f"a node certificate may not call {request.method} {template}; "
                "use the node's local socket or an admin certificate",
            )
        if (request.method, request.path) in OPERATOR_ROUTES and info.role != "admin":
            self.refused.inc(reason="role")
            return error(403, f"only the local operator or an admin may call {request.path}")
        request["peer"] = Peer(info.name, info.role, local=False)
        request["peer_cert"] = der
        return await handler(request)

    def _verify_peer(self, der: bytes, remote: str) -> pki.CertInfo | None:
        info = self._cert_cache.get(der)
        now = self.node.clock()
        if info is None:
            try:
                info = pki.verify(pki.load_cert_der(der), self.node.ident.ca_cert, now)
            except IdentityError as exc:
                self.refusals.note("bad_certificate", remote, exc)
                return None
            if len(self._cert_cache) > 1024:
                self._cert_cache.clear()
            self._cert_cache[der] = info
        if not info.not_before <= now <= info.not_after:
            self.refusals.note("bad_certificate", remote, f"{info.name}'s certificate expired")
            return None
        return info

    # -- handlers --------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        checks = self.node.health_checks()
        ok = all(v == "ok" for v in checks.values())
        body: dict[str, Any] = {"status": "ok" if ok else "degraded", "checks": checks}
        if not ok:  # one sentence for clients that print only the error
            body["error"] = "; ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok")
        return web.json_response(body, status=200 if ok else 503)

    async def node_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.node.status())

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(document())

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            text=self.node.metrics.render(), content_type="text/plain", charset="utf-8"
        )

    async def roster_list(self, request: web.Request) -> web.Response:
        members = roster.members(self.node.store, include_removed=True)
        return web.json_response([m.as_json() for m in members])

    async def roster_remove(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        reason = request.query.get("reason", "removed by operator")
        rev, record = authority.remove_node(
            self.node.store, self.node.ident, self.node.revocations, name, reason, self.node.clock()
        )
        epoch = None
        if self.node.mesh is not None:
            self.node.mesh.broadcast(REVOCATION_KIND, record)
            # The removed node holds the mesh key: rotate it, so nothing sealed from now
            # on opens for it (the new key goes to each member over its own mTLS).
            epoch = self.node.mesh.rotate_key(f"removed {rev.name}")
        return web.json_response(
            {
                "name": rev.name,
                "serial": rev.serial,
                "revoked_at": rev.revoked_at,
                "key_epoch": epoch,
            }
        )

    async def token_create(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        ttl = body.get("ttl_s", self.node.cfg.security.token_ttl_s)
        seeds = body.get("seeds") or [self.node.address]
        if (
            not isinstance(ttl, int | float)
            or not isinstance(seeds, list)
            or not all(isinstance(s, str) for s in seeds)
        ):
            raise ConfigError("ttl_s must be a number of seconds and seeds a list of HOST:PORT")
        replace = body.get("replace")
        if "replace" in body and not isinstance(replace, str):
            raise BadRequest("replace must be the name of a removed node")
        tok, text = authority.issue_token(
            self.node.store,
            self.node.ident,
            tuple(str(s) for s in seeds),
            float(ttl),
            self.node.clock(),
            replace,
        )
        return web.json_response(
            {"token": text, "id": tok.id, "expires_at": tok.expires_at, "seeds": list(tok.seeds)}
        )

    async def events(self, request: web.Request) -> web.StreamResponse:
        since = _int_query(request, "since", 0, 0, 2**63 - 1)
        limit = _int_query(request, "limit", 100, 1, 1000)
        if not _follows(request):
            return web.json_response(self.node.store.events(limit=limit, since_id=since))
        return await self._follow_events(request, since)

    async def _follow_events(self, request: web.Request, since: int) -> web.StreamResponse:
        """``?follow=1``: every event after ``since`` as JSON lines, then each new one as
        it is written, until the client hangs up (a stream, not a poll)."""
        store = self.node.store
        news = asyncio.Event()
        store.event_listeners.append(news.set)
        out = web.StreamResponse()
        out.content_type = "application/x-ndjson"
        try:
            await out.prepare(request)
            cursor = since
            while request.transport is not None and not request.transport.is_closing():
                news.clear()
                rows = store.events(limit=500, since_id=cursor)
                for row in rows:
                    await out.write(orjson.dumps(row) + b"\n")
                    cursor = row["id"]
                if len(rows) == 500:
                    continue  # more are waiting
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(news.wait(), EVENTS_IDLE_CHECK_S)
        finally:
            store.event_listeners.remove(news.set)
        return out

    def _mesh(self) -> Mesh:
        if self.node.mesh is None:
            raise DaemonError("the mesh is not running yet; retry in a moment")
        return self.node.mesh

    async def peers(self, request: web.Request) -> web.Response:
        rows = self._mesh().peers()
        fencing = self.node.fencing
        if fencing is not None:  # dead -> fencing -> fenced | fence-failed
            for row in rows:
                row["state"] = fencing.state(row["name"]) or row["state"]
        drained = self.node.placement.drains.drained() if self.node.placement else frozenset()
        for row in rows:
            row["draining"] = row["name"] in drained
        return web.json_response(rows)

    async def services_list(self, request: web.Request) -> web.Response:
        return web.json_response(services.all_services(self.node.store))

    async def services_add(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        name, port, proto = body.get("name"), body.get("port"), body.get("proto", "tcp")
        if not isinstance(name, str) or not isinstance(port, int) or not isinstance(proto, str):
            raise BadRequest("a service needs a name (string), a port (integer) and a proto")
        return web.json_response(await self._mesh().add_service(name, port, proto))

    async def services_remove(self, request: web.Request) -> web.Response:
        await self._mesh().remove_service(request.match_info["name"])
        return web.json_response({"removed": request.match_info["name"]})

    async def resolve(self, request: web.Request) -> web.Response:
        name = request.query.get("name", "")
        found = await self._mesh().resolve(name)
        if not found:
            raise NotFoundError(f"nothing found for {name}")
        return web.json_response([dataclasses.asdict(i) for i in found])

    async def mesh_message(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._mesh().receive_reliable(body, _peer_cert(request), request.remote or "")
        return web.Response(status=204)

    async def mesh_revocations(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            self._mesh().receive_revocations(body, request["peer"].name)
        except IdentityError as exc:
            raise BadRequest(f"malformed revocation bundle: {exc}") from exc
        return web.Response(status=204)

    async def mesh_keys_push(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            self._mesh().receive_keys(body, request["peer"].name)
        except IdentityError as exc:
            raise BadRequest(f"malformed mesh key bundle: {exc}") from exc
        return web.Response(status=204)

    async def mesh_keys_fetch(self, request: web.Request) -> web.Response:
        # Only a current member gets here (_auth checks the caller's certificate against
        # the revocations, which every key bundle carries ahead of its keys).
        return web.Response(
            body=self._mesh().keys_bundle(), content_type="application/octet-stream"
        )

    async def mesh_certs_fetch(self, request: web.Request) -> web.Response:
        # Only a current member gets here (_auth): the certificates of every member.
        body = self._mesh().gate.certs_bundle()
        return web.Response(body=body, content_type="application/x-pem-file")

    def _states(self) -> Callable[[str, int], tuple[str, str]]:
        """Each workload's state for one answer: the owner's gossiped state, except that
        a workload whose owner is not a live member is ``unknown`` (its last word may be
        ``running``, but nobody can vouch for it) until it is fenced and moved."""
        runner, mesh, fencing = self.node.runner, self.node.mesh, self.node.fencing
        live = mesh.live_names() if mesh is not None else None
        placement = self._placement()

        def state_of(wid: str, generation: int) -> tuple[str, str]:
            owner = placement.owner_of(wid)
            if live is not None and owner is not None and owner not in live:
                st = (fencing.state(owner) if fencing is not None else None) or "not alive"
                if st == "fence-failed":
                    return "unknown", (
                        f"its owner {owner} is fence-failed: make sure {owner} is off, then "
                        f"`meshd fence confirm {owner}` moves it"
                    )
                return "unknown", f"its owner {owner} is {st}; it moves once {owner} is fenced"
            return ("pending", "") if runner is None else runner.state_of(wid, generation)

        return state_of

    def _placement(self) -> PlacementShell:
        if self.node.placement is None:
            raise DaemonError("placement is not running yet; retry in a moment")
        return self.node.placement

    async def mesh_auction(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._placement().receive_reliable(body, _peer_cert(request))
        return web.Response(status=204)

    async def mesh_drains(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._placement().drains.receive_bundle(body, request["peer"].name)
        return web.Response(status=204)

    def _member(self, request: web.Request) -> str:
        """A current member's name: in this node's roster, or a member its membership
        knows (the roster of a node that did not enrol it may lag), never removed."""
        name = request.match_info["name"]
        member = roster.get(self.node.store, name)
        revoked = self.node.revocations.is_revoked
        known = member is not None or any(
            p["name"] == name and not revoked("", p["node_id"]) for p in self._mesh().peers()
        )
        if not known or (member is not None and member.removed_at is not None):
            raise NotFoundError(
                f"no member named {name!r} in this mesh's roster; `meshd node ls` lists them"
            )
        return name

    async def node_drain(self, request: web.Request) -> web.Response:
        return web.json_response(await self._placement().drain(self._member(request), True))

    async def node_undrain(self, request: web.Request) -> web.Response:
        return web.json_response(await self._placement().drain(self._member(request), False))

    async def node_drain_state(self, request: web.Request) -> web.Response:
        return web.json_response(self._placement().drain_state(self._member(request)))

    async def mesh_networks(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._placement().networks.receive_bundle(body, request["peer"].name)
        return web.Response(status=204)

    async def networks_create(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        unknown = set(body) - {"name", "subnet", "gateway", "bridge", "vlan", "dns"}
        if unknown:
            raise BadRequest(f"unknown network fields: {', '.join(sorted(unknown))}")
        name, subnet = body.get("name"), body.get("subnet")
        if not isinstance(name, str) or not isinstance(subnet, str):
            raise BadRequest("a network needs a name and a subnet, both text")
        dns = body.get("dns", [])
        if not isinstance(dns, list) or not all(isinstance(d, str) for d in dns):
            raise BadRequest("dns must be a list of IP addresses as text")
        created = self._placement().networks.create(
            network_core.check_name(name),
            subnet,
            gateway=body.get("gateway"),
            bridge=body.get("bridge"),
            vlan=body.get("vlan"),
            dns=dns,
        )
        return web.json_response(created.to_json(), status=201)

    async def networks_list(self, request: web.Request) -> web.Response:
        nets = self._placement().networks.networks()
        return web.json_response({"networks": [n.to_json() for n in nets]})

    async def networks_show(self, request: web.Request) -> web.Response:
        placement = self._placement()
        held = placement.networks.get(request.match_info["name"])
        users = placement.addresses.in_use(held.name) if placement.addresses else []
        return web.json_response({**held.to_json(), "addresses": users})

    async def networks_remove(self, request: web.Request) -> web.Response:
        placement = self._placement()
        name = placement.networks.get(request.match_info["name"]).name
        users = placement.addresses.in_use(name) if placement.addresses else []
        # Nodes' own addresses (DHCP and metadata on the bridge) are the network's
        # plumbing, set up as soon as it is offered: only workloads keep it.
        users = [u for u in users if u["state"] == "placed"]
        if users:
            some = ", ".join(str(u["name"] or u["holder"]) for u in users[:3])
            more = f" and {len(users) - 3} more" if len(users) > 3 else ""
            raise NetworkConflictError(
                f"network {name} is still in use by {some}{more}: remove those workloads "
                f"first (`meshd network show {name}` lists what holds an address on it)"
            )
        tomb = placement.networks.remove(name)
        return web.json_response({"name": tomb.name, "removed": True, "version": tomb.version})

    async def workloads_submit(self, request: web.Request) -> web.Response:
        submission = spec.parse_submission(await request.read())
        tenant = _tenant(request)
        if tenant is not None:
            if submission.tenant not in (None, tenant):
                raise IdentityError(
                    f"a tenant:{tenant} certificate submits for tenant {tenant} only, "
                    f"not {submission.tenant}"
                )
            submission = msgspec.structs.replace(submission, tenant=tenant)
        return web.json_response(await self._placement().submit(submission))

    async def workloads_list(self, request: web.Request) -> web.Response:
        rows = self._placement().workloads(self._states())
        tenant = _tenant(request)
        if tenant is not None:
            rows = [r for r in rows if r["tenant"] == tenant]
        return web.json_response(rows)

    def _tenant_owns(self, role: str, wid: str) -> bool:
        placement = self.node.placement
        if placement is None:
            return False
        p = placement.core_placements().get(wid)
        return p is not None and not p.removed and f"tenant:{p.tenant}" == role

    # -- workload lifecycle: done by the owner, forwarded there from any node ------------

    async def _on_owner(
        self, request: web.Request, local: Callable[[], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        wid = request.match_info["id"]
        owner = self._placement().owner_of(wid)
        if owner is None:
            raise NotFoundError(f"no workload {wid} is known in this mesh")
        if owner == self.node.ident.name:
            return await local()
        if relayed_by_node(request["peer"], request.headers):
            logger.warning(
                "not forwarding a relayed request again workload=%s from=%s owner=%s",
                wid,
                request["peer"].name,
                owner,
            )
            raise DaemonError(f"workload {wid} moved while the request was forwarded; retry")
        assert self.node.mesh is not None
        addr = self.node.mesh.address_of(owner)
        if addr is None:
            raise DaemonError(f"the owner of {wid}, {owner}, is not reachable")
        return await self._forward(request, addr)

    async def _forward(self, request: web.Request, addr: tuple[str, int]) -> web.StreamResponse:
        """Relay the request to the owner's mTLS API as this node; stream the answer back."""
        if self._forward_session is None:
            ident = self.node.ident
            self._forward_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=tls.client_context(ident, ident.ca_cert)),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            )
        url = f"https://{addr[0]}:{addr[1]}{request.rel_url}"
        try:
            async with self._forward_session.request(
                request.method, url, data=await request.read(), headers={FORWARDED_HEADER: "1"}
            ) as resp:
                return await stream_back(request, resp)
        except (aiohttp.ClientError, OSError) as exc:
            raise DaemonError(f"the workload's owner at {addr[0]}:{addr[1]} failed: {exc}") from exc

    def _runner(self) -> WorkloadRunner:
        if self.node.runner is None:
            raise DaemonError("workloads are not running yet; retry in a moment")
        return self.node.runner

    async def workload_show(self, request: web.Request) -> web.Response:
        # Any node answers from its own replicated view, owner alive or not.
        wid = request.match_info["id"]
        return web.json_response(self._placement().workload(wid, self._states()))

    async def workload_remove(self, request: web.Request) -> web.Response:
        # Any node may remove: the tombstone reaches the owner, which tears it down.
        return web.json_response(self._placement().remove(request.match_info["id"]))

    async def workload_stop(self, request: web.Request) -> web.StreamResponse:
        wid = request.match_info["id"]
        timeout = _stop_timeout(request.query.get("timeout"), self.node.cfg.drivers.stop_timeout_s)

        async def local() -> web.StreamResponse:
            return web.json_response(await self._runner().stop_workload(wid, timeout))

        return await self._on_owner(request, local)

    async def workload_start(self, request: web.Request) -> web.StreamResponse:
        wid = request.match_info["id"]

        async def local() -> web.StreamResponse:
            return web.json_response(await self._runner().start_workload(wid))

        return await self._on_owner(request, local)

    async def workload_logs(self, request: web.Request) -> web.StreamResponse:
        wid = request.match_info["id"]
        follow = _follows(request)

        async def local() -> web.StreamResponse:
            return await stream_file(request, Path(self._runner().log_path(wid)), follow)

        return await self._on_owner(request, local)

    async def auctions_list(self, request: web.Request) -> web.Response:
        return web.json_response(self._placement().auctions())

    async def auctions_show(self, request: web.Request) -> web.Response:
        doc = self._placement().auction(request.match_info["round"])
        if doc is None:
            raise NotFoundError(f"no auction round {request.match_info['round']} is known here")
        return web.json_response(doc)

    async def enrol_ca(self, request: web.Request) -> web.Response:
        return web.json_response({"ca_cert": pki.cert_pem(self.node.ident.ca_cert).decode()})

    async def enrol(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        tok, csr, address = body.get("token"), body.get("csr"), body.get("address")
        addresses = body.get("addresses", [])
        if (
            not isinstance(tok, str)
            or not isinstance(csr, str)
            or not (address is None or isinstance(address, str))
            or not isinstance(addresses, list)
            or not all(isinstance(a, str) for a in addresses)
        ):
            self.enrolments.inc(result="malformed")
            raise BadRequest(
                "an enrolment request needs token and csr (PEM) strings; address must be "
                "a HOST:PORT string and addresses a list of IP strings when given"
            )
        try:
            answer = enrolment.serve(
                self.node.store,
                self.node.ident,
                self.node.cfg.security,
                tok,
                csr,
                address,
                self.node.clock(),
                addresses,
            )
        except MeshdError as exc:
            self.enrolments.inc(result="refused")
            logger.warning("enrolment refused peer=%s reason=%s", request.remote, exc)
            raise
        self.enrolments.inc(result="ok")
        return web.json_response(answer)

    # -- CA custody (meshd ca promote / restore) ----------------------------------------

    async def ca_promote(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        name = body.get("node")
        if not isinstance(name, str):
            raise BadRequest("a promotion needs node: the name of the member to promote")
        mesh = self.node.mesh
        doc = await ca_custody.promote(
            self.node.ident,
            self.node.store,
            self.node.revocations,
            mesh.address_of if mesh is not None else (lambda _name: None),
            name,
            self.node.clock(),
            self.node.cfg.security.enrol_timeout_s,
        )
        return web.json_response(doc)

    async def mesh_ca(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        peer = request["peer"]
        try:
            ident, answer = ca_custody.receive(
                self.node.cfg.data_dir,
                self.node.ident,
                self.node.store,
                body,
                peer.name,
                self.node.clock(),
                self.node.cfg.security.max_clock_skew_s,
            )
        except IdentityError as exc:
            logger.warning("refused a CA promotion from=%s reason=%s", peer.name, exc)
            raise
        self.node.ident = ident
        return web.json_response(answer)

    async def ca_reload(self, request: web.Request) -> web.Response:
        self.node.ident = ca_custody.reload(
            self.node.cfg.data_dir, self.node.ident, self.node.clock()
        )
        return web.json_response({"ca_holder": self.node.ident.is_ca_holder})

    # -- this node's BMC (meshd bmc set / check); the password never leaves the store --

    async def bmc_show(self, request: web.Request) -> web.Response:
        endpoint = bmc_files.load(self.node.cfg.data_dir)
        if endpoint is None:
            return web.json_response({"configured": False})
        return web.json_response({"configured": True, **endpoint.public()})

    async def bmc_set(self, request: web.Request) -> web.Response:
        endpoint = BmcEndpoint.from_json(await _json_body(request))
        stored = await asyncio.to_thread(bmc_files.save, self.node.cfg.data_dir, endpoint)
        public = stored.public()
        if self.node.fencing is not None and self.node.mesh is not None:
            # The node that fences this one needs it, once this one is dead.
            asyncio.get_running_loop().create_task(
                self.node.fencing.endpoints.share_with(
                    self.node.mesh, sorted(self.node.mesh.live_peers())
                )
            )
        self.node.store.append_event(self.node.clock(), "bmc.set", self.node.ident.name, public)
        logger.info("bmc set url=%s system=%s", public["url"], public["system"])
        return web.json_response({"configured": True, **public})

    async def bmc_check(self, request: web.Request) -> web.Response:
        endpoint = bmc_files.load(self.node.cfg.data_dir)
        if endpoint is None:
            raise NotFoundError(
                "no BMC is set for this node; run `meshd bmc set --url URL --user USER "
                "--password-file FILE`"
            )
        cfg = self.node.cfg
        # Within the API's own bound on a request, so the caller gets the answer.
        budget = min(cfg.bmc.deadline_s, max(cfg.api.request_timeout_s - 1.0, 1.0))
        client = RedfishClient(cfg.bmc)
        reading = await client.power_state(endpoint, client.clock() + budget)
        doc = {"url": endpoint.base_url, **reading.as_json()}
        summary = {k: doc[k] for k in ("url", "system", "power_state", "reachable", "error")}
        self.node.store.append_event(
            self.node.clock(), "bmc.checked", self.node.ident.name, summary
        )
        return web.json_response(doc)

    # -- fencing (meshd fence status / confirm; the mesh's own fencing traffic) ------------

    def _fencing(self) -> FencingShell:
        if self.node.fencing is None:
            raise DaemonError("fencing is not running yet; retry in a moment")
        return self.node.fencing

    async def fence_status(self, request: web.Request) -> web.Response:
        return web.json_response(self._fencing().status())

    async def fence_confirm(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        name = body.get("node")
        if not isinstance(name, str) or not name:
            raise BadRequest('say which node is off: {"node": NAME}')
        return web.json_response(self._fencing().confirm(name))

    async def mesh_fence(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._fencing().receive_reliable(body, _peer_cert(request))
        return web.Response(status=204)

    async def mesh_bmc(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            self._fencing().endpoints.receive(body, request["peer"].name)
        except MeshdError as exc:
            raise BadRequest(f"malformed BMC endpoint: {exc}") from exc
        return web.Response(status=204)


def _peer_cert(request: web.Request) -> bytes:
    """The calling node's certificate: mesh-internal routes are for nodes over TCP only."""
    der = request.get("peer_cert")
    if not isinstance(der, bytes):
        raise BadRequest(f"{request.path} is for mesh nodes over the mesh TCP port only")
    return der


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within ``low..high``, else a 400 naming it."""
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {text[:40]!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}")
    return value


# A followed event stream looks again this often even without news, to notice a client
# that hung up (a closed socket is only seen when we look).
EVENTS_IDLE_CHECK_S = 5.0


_YES, _NO = ("1", "true", "yes"), ("", "0", "false", "no")


def _tenant(request: web.Request) -> str | None:
    """The tenant a ``tenant:NAME`` certificate speaks for; None for everyone else."""
    peer: Peer | None = request.get("peer")
    if peer is None or not peer.role.startswith("tenant:"):
        return None
    return peer.role.removeprefix("tenant:")


def _follows(request: web.Request) -> bool:
    value = request.query.get("follow", "").lower()
    if value not in _YES + _NO:
        raise BadRequest(f"follow must be true or false (1/0, yes/no), not {value[:20]!r}")
    return value in _YES


def _too_large(request: web.Request, limit: int) -> web.Response:
    return error(
        413,
        f"the request body is larger than {limit} bytes, the most {request.method} "
        f"{request.path} accepts (api.max_body_bytes, api.max_small_body_bytes)",
    )


async def stream_file(request: web.Request, path: Path, follow: bool) -> web.StreamResponse:
    """The last 64 KiB of ``path``; with ``follow``, keep sending what is appended.

    Reads are of a local log file in 64 KiB steps (page cache, microseconds): not worth
    a thread per chunk, hence the ASYNC240 waivers.
    """
    if not path.exists():  # noqa: ASYNC240
        raise NotFoundError("the workload has no log yet")
    out = web.StreamResponse()
    out.content_type = "text/plain"
    await out.prepare(request)
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 65536))  # noqa: ASYNC240
        while True:
            chunk = f.read(65536)
            if chunk:
                await out.write(chunk)
                continue
            if not follow or request.transport is None or request.transport.is_closing():
                break
            await asyncio.sleep(0.25)
    await out.write_eof()
    return out


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest("the request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


MAX_STOP_TIMEOUT_S = 3600.0


def _stop_timeout(text: str | None, default: float) -> float:
    """``?timeout=SECONDS`` of a workload stop: finite, 0..1 h (a stop must end)."""
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"timeout must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or not 0 <= value <= MAX_STOP_TIMEOUT_S:
        raise BadRequest(f"timeout must be between 0 and {MAX_STOP_TIMEOUT_S:g} seconds")
    return value
