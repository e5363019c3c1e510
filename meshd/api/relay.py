"""Relaying an HTTP answer as it arrives: the API forwarding a workload's request to its
owner, and ``meshd ui`` relaying the page's reads to the daemon's socket."""

from __future__ import annotations

import aiohttp
from aiohttp import web


async def stream_back(request: web.Request, resp: aiohttp.ClientResponse) -> web.StreamResponse:
    """``resp`` (status, content type, body) to ``request``'s client, chunk by chunk, so a
    followed log or event stream flows through."""
    out = web.StreamResponse(status=resp.status)
    out.content_type = resp.content_type
    await out.prepare(request)
    async for chunk in resp.content.iter_any():
        await out.write(chunk)
    await out.write_eof()
    return out
