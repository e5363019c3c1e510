"""Workload lifecycle requests are forwarded to the owner once, never round in circles.

Two real :class:`~meshd.api.server.Api` instances serve mTLS on 127.0.0.1 (port 0) in
this process; everything behind them is a fake, so each node's view of who owns a
workload is whatever the test says. When the views disagree (alpha says beta owns it,
beta says alpha), the request that beta receives from alpha must end at beta with one
sentence, promptly, instead of bouncing between them until a timeout.

The forwarded mark (the ``X-Meshd-Forwarded`` header) counts only from a peer with a
``node`` certificate: an operator or tenant who sends it is treated like anyone else.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from meshd import config
from meshd.adapters import tls
from meshd.api.server import Api, Peer, relayed_by_node
from meshd.identity import pki
from meshd.identity.files import NodeIdentity
from meshd.metrics import Registry

DOMAIN = "lab.example"
WID = "w-1"
# Long enough that a loop could not finish inside it on any machine, short enough that
# today's bug shows up as a timeout rather than a hung test.
REQUEST_TIMEOUT_S = 4.0
# The mark a node puts on a request it relays (a wire contract between versions).
FORWARDED_HEADER = "X-Meshd-Forwarded"


@dataclass
class FakePlacement:
    owners: dict[str, str]
    asked: int = 0

    def owner_of(self, wid: str) -> str | None:
        self.asked += 1
        return self.owners.get(wid)


@dataclass
class FakeMesh:
    addresses: dict[str, tuple[str, int]]

    def address_of(self, name: str) -> tuple[str, int] | None:
        return self.addresses.get(name)


@dataclass
class FakeRunner:
    stopped: list[str] = field(default_factory=list)

    async def stop_workload(self, wid: str, timeout: float) -> dict[str, Any]:
        self.stopped.append(wid)
        return {"id": wid, "state": "stopped"}


class NoRevocations:
    def is_revoked(self, serial: str, node_id: str = "") -> bool:
        return False


@dataclass
class FakeNode:
    """What :class:`Api` reads of a node on the routes under test."""

    ident: NodeIdentity
    placement: FakePlacement
    mesh: FakeMesh
    runner: FakeRunner = field(default_factory=FakeRunner)
    metrics: Registry = field(default_factory=Registry)
    cfg: config.Config = field(
        default_factory=lambda: config.local().override(
            {"api.request_timeout_s": REQUEST_TIMEOUT_S}
        )
    )
    revocations: NoRevocations = field(default_factory=NoRevocations)

    def clock(self) -> float:
        return time.time()


@dataclass
class Cluster:
    nodes: dict[str, FakeNode]
    admin: NodeIdentity
    addresses: dict[str, tuple[str, int]]

    def url(self, name: str, path: str) -> str:
        host, port = self.addresses[name]
        return f"https://{host}:{port}{path}"

    def session(self, ident: NodeIdentity) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context(ident, ident.ca_cert)),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S + 5),
        )


def _identities(names_roles: list[tuple[str, str]]) -> dict[str, NodeIdentity]:
    now = time.time()
    ca_key, ca_cert = pki.create_ca(DOMAIN, now - 60, 1)
    out = {}
    for name, role in names_roles:
        key = pki.new_key()
        cert = pki.issue(ca_key, ca_cert, key.public_key(), name, role, now - 60, 1)
        out[name] = NodeIdentity(key, cert, ca_cert, b"\0" * 32, None, pki.describe(cert))
    return out


@pytest.fixture
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    """alpha and beta serving their APIs; ``owners`` (by node) is the test's parameter."""
    owners: dict[str, dict[str, str]] = request.param
    ids = _identities([("alpha", "node"), ("beta", "node"), ("ops", "admin")])
    addresses: dict[str, tuple[str, int]] = {}
    nodes = {
        name: FakeNode(ids[name], FakePlacement(owners[name]), FakeMesh(addresses))
        for name in ("alpha", "beta")
    }
    apis = {name: Api(node) for name, node in nodes.items()}  # type: ignore[arg-type]
    runners: list[web.AppRunner] = []
    try:
        for name, api in apis.items():
            runner = web.AppRunner(api.app(), access_log=None)
            runners.append(runner)
            await runner.setup()
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            addresses[name] = ("127.0.0.1", sock.getsockname()[1])
            site = web.SockSite(runner, sock, ssl_context=tls.server_context(ids[name]))
            await site.start()
        yield Cluster(nodes, ids["ops"], addresses)
    finally:
        for api in apis.values():
            if api._forward_session is not None:
                await api._forward_session.close()
        for runner in runners:
            await runner.cleanup()


DISAGREE = {"alpha": {WID: "beta"}, "beta": {WID: "alpha"}}
BETA_OWNS = {"alpha": {WID: "beta"}, "beta": {WID: "beta"}}


@pytest.mark.parametrize("cluster", [DISAGREE], indirect=True)
async def test_nodes_that_disagree_on_the_owner_answer_at_once(cluster: Cluster) -> None:
    start = time.monotonic()
    async with cluster.session(cluster.admin) as s:
        resp = await s.post(cluster.url("alpha", f"/v1/workloads/{WID}/stop"))
        text = await resp.text()
    elapsed = time.monotonic() - start
    assert resp.status == 503, (resp.status, text, elapsed)
    body = json.loads(text)
    assert "moved while the request was forwarded; retry" in body["error"]
    assert WID in body["error"]
    # One hop: alpha forwarded once, beta refused to forward again.
    assert [n.placement.asked for n in cluster.nodes.values()] == [1, 1]
    assert elapsed < REQUEST_TIMEOUT_S / 2, elapsed
    assert not any(n.runner.stopped for n in cluster.nodes.values())


@pytest.mark.parametrize("cluster", [BETA_OWNS], indirect=True)
async def test_a_forwarded_request_reaches_the_owner(cluster: Cluster) -> None:
    async with cluster.session(cluster.admin) as s:
        resp = await s.post(cluster.url("alpha", f"/v1/workloads/{WID}/stop"))
        body = await resp.json()
    assert (resp.status, body) == (200, {"id": WID, "state": "stopped"})
    assert cluster.nodes["beta"].runner.stopped == [WID]


@pytest.mark.parametrize("cluster", [BETA_OWNS], indirect=True)
async def test_only_a_node_certificate_can_mark_a_request_forwarded(cluster: Cluster) -> None:
    headers = {FORWARDED_HEADER: "1"}
    # An operator's mark is ignored: alpha still forwards to beta, the owner.
    async with cluster.session(cluster.admin) as s:
        resp = await s.post(cluster.url("alpha", f"/v1/workloads/{WID}/stop"), headers=headers)
        assert resp.status == 200, await resp.text()
    assert cluster.nodes["beta"].runner.stopped == [WID]
    # A node's mark is honoured: alpha is not the owner, so it answers at once.
    async with cluster.session(cluster.nodes["beta"].ident) as s:
        resp = await s.post(cluster.url("alpha", f"/v1/workloads/{WID}/stop"), headers=headers)
        body = await resp.json()
    assert resp.status == 503, body
    assert "moved while the request was forwarded" in body["error"]
    assert cluster.nodes["beta"].runner.stopped == [WID]


@pytest.mark.parametrize(
    ("peer", "headers", "relayed"),
    [
        (Peer("beta", "node", local=False), {FORWARDED_HEADER: "1"}, True),
        (Peer("beta", "node", local=False), {}, False),
        (Peer("ops", "admin", local=False), {FORWARDED_HEADER: "1"}, False),
        (Peer("ci", "tenant:acme", local=False), {FORWARDED_HEADER: "1"}, False),
        (Peer("local", "admin", local=True), {FORWARDED_HEADER: "1"}, False),
    ],
)
def test_who_can_mark_a_request_relayed(peer: Peer, headers: dict[str, str], relayed: bool) -> None:
    assert relayed_by_node(peer, headers) is relayed
