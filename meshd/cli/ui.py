"""``meshd ui``: a live dashboard of the local daemon's view, like ``nomad ui``.

A small HTTP server on loopback (``--listen``, default 127.0.0.1:8420) serves one page
(``ui.html``) and relays the page's read-only ``GET /v1/...`` requests to the daemon's
unix socket, the operator's own access (a browser can't speak to a unix socket, and the
TCP API wants a client certificate). The page redraws from the daemon's event stream
(``GET /v1/events?follow=1``, relayed as it arrives), so it shows a change as it
happens: members and their states, this node's capacity and allocation, placements with
their state and addresses, recent auctions with their bids, fence episodes, networks
and the addresses in use, the last events.

Only GET is relayed: the dashboard looks, it changes nothing. It binds loopback by
default; ``--listen 0.0.0.0:8420`` would show the mesh to anyone who can reach the
port, so that is the operator's explicit choice.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
from pathlib import Path

import aiohttp
from aiohttp import web

from meshd.api.relay import stream_back
from meshd.errors import DaemonError
from meshd.units import parse_hostport

logger = logging.getLogger(__name__)
PAGE = "ui.html"
DEFAULT_LISTEN = "127.0.0.1:8420"


def page() -> bytes:
    return importlib.resources.files("meshd.cli").joinpath(PAGE).read_bytes()


def make_app(socket_path: Path) -> web.Application:
    html = page()
    app = web.Application()
    session: dict[str, aiohttp.ClientSession] = {}

    async def start(_: web.Application) -> None:
        session["s"] = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(socket_path)),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        )

    async def stop(_: web.Application) -> None:
        await session["s"].close()

    async def index(_: web.Request) -> web.Response:
        return web.Response(
            body=html,
            content_type="text/html",
            headers={"Content-Security-Policy": "default-src 'self' 'unsafe-inline'"},
        )

    async def relay(request: web.Request) -> web.StreamResponse:
        url = f"http://meshd{request.rel_url}"
        try:
            async with session["s"].get(url) as resp:
                return await stream_back(request, resp)
        except (aiohttp.ClientConnectionError, FileNotFoundError) as exc:
            if isinstance(exc, aiohttp.ClientConnectorError | FileNotFoundError):
                return web.json_response(
                    {"error": f"meshd is not running here (no answer on {socket_path})"},
                    status=502,
                )
            raise  # the browser went away mid-stream: nothing to answer

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_get("/", index)
    app.router.add_get("/v1/{tail:.*}", relay)
    return app


async def serve(socket_path: Path, listen: str, ready: asyncio.Event | None = None) -> None:
    host, port = parse_hostport(listen, "--listen")
    runner = web.AppRunner(make_app(socket_path), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise DaemonError(f"can't serve the dashboard on {listen}: {exc.strerror or exc}") from exc
    bound = runner.addresses[0]
    print(f"meshd ui: http://{bound[0]}:{bound[1]}/ (Ctrl-C to stop)", flush=True)
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
