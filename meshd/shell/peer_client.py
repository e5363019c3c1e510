"""The mTLS client a node uses to post to other members' mesh-internal routes.

Messages that grow with the mesh or must not be lost as a datagram (push-pull state,
large awards, withdrawals, revocation and placement anti-entropy) go as one POST to
the member's TCP API, authenticated both ways by the mesh CA. Posting is fire and
forget: a refusal or a dropped connection is a debug line, because every protocol that
posts has its own retry or anti-entropy behind it.
"""

from __future__ import annotations

import logging

import aiohttp

from meshd.adapters import tls
from meshd.adapters.transport import Addr
from meshd.shell.context import NodeContext

logger = logging.getLogger(__name__)


class PeerClient:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self._http: aiohttp.ClientSession | None = None

    def start(self) -> None:
        ident = self.ctx.ident
        total = max(2.0, self.ctx.cfg.membership.probe_interval_s * 4)
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context(ident, ident.ca_cert)),
            timeout=aiohttp.ClientTimeout(total=total),
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def post(self, addr: Addr, path: str, body: bytes) -> None:
        """Send ``body`` to a member's mesh-internal route over mTLS (fire and forget)."""
        if self._http is None:
            return
        url = f"https://{addr[0]}:{addr[1]}{path}"
        try:
            async with self._http.post(
                url, data=body, headers={"Content-Type": "application/octet-stream"}
            ) as resp:
                if resp.status >= 300:
                    logger.debug("%s refused peer=%s:%s status=%s", path, *addr, resp.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            logger.debug("%s failed peer=%s:%s error=%s", path, *addr, exc)

    async def get(self, addr: Addr, path: str) -> bytes | None:
        """GET a member's mesh-internal route over mTLS; None (logged) if it fails."""
        if self._http is None:
            return None
        url = f"https://{addr[0]}:{addr[1]}{path}"
        try:
            async with self._http.get(url) as resp:
                if resp.status != 200:
                    logger.debug("%s refused peer=%s:%s status=%s", path, *addr, resp.status)
                    return None
                return await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            logger.debug("%s failed peer=%s:%s error=%s", path, *addr, exc)
            return None
